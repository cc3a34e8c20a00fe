//! The observation API, on the service's own port but outside Google's API space (`/_rig/`),
//! so that a checker outside the process (the service also runs as its own process and in a
//! container) can switch recording on per project and read what the service did:
//!
//! | Request | Answer |
//! |---|---|
//! | `POST /_rig/v1/projects/{project}/history:start` | `{"recording": true, "last": N}`: recording on; records so far end at `N` |
//! | `POST /_rig/v1/projects/{project}/history:stop` | `{"recording": false}`: recording off, records kept |
//! | `DELETE /_rig/v1/projects/{project}/history` | `{}`: records forgotten, recording off |
//! | `GET /_rig/v1/projects/{project}/history?after=SEQ&limit=N` | a page: `{"records": [...], "next": SEQ, "more": bool, "recording": bool, "dropped": N}` |
//!
//! The records are `history::Record`, documented in `docs/pubsub-service.md`.

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::error::ServiceError;
use crate::history;
use crate::rest::{self, RestResponse};
use crate::service::Shared;

pub const PREFIX: &str = "/_rig/";

pub fn handle(shared: &Shared, method: &Method, path: &str, query: Option<&str>) -> RestResponse {
    match route(shared, method, path, query) {
        Ok(value) => RestResponse {
            status: StatusCode::OK,
            body: Bytes::from(value.to_string()),
        },
        Err(e) => rest::error(&e),
    }
}

fn route(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Result<serde_json::Value, ServiceError> {
    let not_found = || {
        ServiceError::new(
            tonic::Code::NotFound,
            format!(
                "{method} {path}: not an observation endpoint (POST /_rig/v1/projects/P/history:start, :stop, GET /_rig/v1/projects/P/history?after=SEQ&limit=N, DELETE /_rig/v1/projects/P/history)"
            ),
        )
    };
    let rest = path
        .strip_prefix("/_rig/v1/projects/")
        .ok_or_else(not_found)?;
    let (project, what) = rest.split_once('/').ok_or_else(not_found)?;
    if project.is_empty() {
        return Err(not_found());
    }
    match (what, method) {
        ("history:start", &Method::POST) => {
            let last = shared.lock().history_start(project);
            Ok(serde_json::json!({ "recording": true, "last": last }))
        }
        ("history:stop", &Method::POST) => {
            shared.lock().history_stop(project);
            Ok(serde_json::json!({ "recording": false }))
        }
        ("history", &Method::DELETE) => {
            shared.lock().history_clear(project);
            Ok(serde_json::json!({}))
        }
        ("history", &Method::GET) => {
            let number = |name: &str, default: u64| -> Result<u64, ServiceError> {
                match rest::query_param(query, name) {
                    None => Ok(default),
                    Some(v) => v.parse().map_err(|e| {
                        ServiceError::invalid(format!("{name}={v:?}: expected a number"))
                            .with_source(e)
                    }),
                }
            };
            let after = number("after", 0)?;
            let limit = number("limit", history::DEFAULT_PAGE as u64)? as usize;
            let page = shared.lock().history_page(project, after, limit);
            serde_json::to_value(page).map_err(|e| {
                ServiceError::new(tonic::Code::Internal, "encoding the history page").with_source(e)
            })
        }
        _ => Err(not_found()),
    }
}

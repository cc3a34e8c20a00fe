//! The REST/JSON surface (HTTP/1.1, <https://cloud.google.com/pubsub/docs/reference/rest>):
//! what the official Rust client's `TopicAdmin` and `SubscriptionAdmin` speak, plus publish,
//! pull, acknowledge and modifyAckDeadline for tools and scripts.

use bytes::Bytes;
use google_cloud_pubsub::model;
use http::{Method, StatusCode};
use serde::Deserialize;
use tokio::time::Instant;

use crate::convert;
use crate::error::{Result, ServiceError};
use crate::grpc;
use crate::server::Shared;

pub struct RestResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

fn ok(value: serde_json::Value) -> RestResponse {
    RestResponse {
        status: StatusCode::OK,
        body: Bytes::from(value.to_string()),
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<RestResponse> {
    let v = serde_json::to_value(value)
        .map_err(|e| ServiceError::new(tonic::Code::Internal, e.to_string()))?;
    Ok(ok(v))
}

fn body<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    let bytes = if bytes.is_empty() {
        b"{}".as_slice()
    } else {
        bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| ServiceError::invalid(format!("Invalid JSON payload received. {e}")))
}

pub fn error(e: &ServiceError) -> RestResponse {
    RestResponse {
        status: StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body: Bytes::from(e.rest_body().to_string()),
    }
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct UpdateRequest<T> {
    topic: Option<T>,
    subscription: Option<T>,
    update_mask: Option<serde_json::Value>,
}

/// `updateMask` in JSON is one comma-separated string of camelCase paths.
fn mask_paths(v: Option<serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        Some(serde_json::Value::Object(o)) => o
            .get("paths")
            .and_then(|p| p.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PublishBody {
    messages: Vec<model::Message>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PullBody {
    max_messages: i32,
    return_immediately: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct AckBody {
    ack_ids: Vec<String>,
    ack_deadline_seconds: i32,
}

fn page<T>(items: Vec<T>, query: Option<&str>) -> Result<(Vec<T>, String)> {
    let size: usize = query_param(query, "pageSize")
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(usize::MAX);
    let start: usize = match query_param(query, "pageToken").filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => t
            .parse()
            .map_err(|_| ServiceError::invalid(format!("Invalid page_token {t:?}.")))?,
    };
    let end = start.saturating_add(size).min(items.len());
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    Ok((
        items
            .into_iter()
            .skip(start)
            .take(end.saturating_sub(start))
            .collect(),
        next,
    ))
}

pub async fn handle(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    payload: &[u8],
) -> RestResponse {
    match route(shared, method, path, query, payload).await {
        Ok(r) => r,
        Err(e) => error(&e),
    }
}

async fn route(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    payload: &[u8],
) -> Result<RestResponse> {
    let not_found = || {
        ServiceError::new(
            tonic::Code::NotFound,
            format!("{method} {path}: no such REST method on pubsub-service"),
        )
    };
    let path = percent_decode(path);
    let rest = path.strip_prefix("/v1/").ok_or_else(not_found)?;
    let (resource, verb) = match rest.rsplit_once(':') {
        Some((r, v)) if !v.contains('/') => (r, Some(v)),
        _ => (rest, None),
    };
    let parts: Vec<&str> = resource.split('/').collect();
    let now = Instant::now();
    match (parts.as_slice(), verb, method) {
        (["projects", p, "topics"], None, &Method::GET) => {
            let all: Vec<model::Topic> = shared
                .lock()
                .list_topics(p)
                .into_iter()
                .map(convert::topic_out)
                .collect();
            let (topics, next) = page(all, query)?;
            json(
                &model::ListTopicsResponse::new()
                    .set_topics(topics)
                    .set_next_page_token(next),
            )
        }
        (["projects", p, "subscriptions"], None, &Method::GET) => {
            let all: Vec<model::Subscription> = shared
                .lock()
                .list_subscriptions(p)
                .into_iter()
                .map(convert::subscription_out)
                .collect();
            let (subscriptions, next) = page(all, query)?;
            json(
                &model::ListSubscriptionsResponse::new()
                    .set_subscriptions(subscriptions)
                    .set_next_page_token(next),
            )
        }
        (["projects", _, "topics", _, "subscriptions"], None, &Method::GET) => {
            let topic = resource.trim_end_matches("/subscriptions");
            let all = shared.lock().topic_subscriptions(topic)?;
            let (subscriptions, next) = page(all, query)?;
            json(
                &model::ListTopicSubscriptionsResponse::new()
                    .set_subscriptions(subscriptions)
                    .set_next_page_token(next),
            )
        }
        (["projects", _, "topics", _], None, m) => {
            let name = resource;
            match *m {
                Method::PUT => {
                    let mut t = convert::topic_in(body::<model::Topic>(payload)?)?;
                    t.name = name.to_string();
                    json(&convert::topic_out(shared.lock().create_topic(t)?))
                }
                Method::GET => json(&convert::topic_out(shared.lock().get_topic(name)?)),
                Method::DELETE => {
                    shared.lock().delete_topic(name)?;
                    Ok(ok(serde_json::json!({})))
                }
                Method::PATCH => {
                    let r: UpdateRequest<model::Topic> = body(payload)?;
                    let mut t = convert::topic_in(
                        r.topic
                            .ok_or_else(|| ServiceError::invalid("The topic is required."))?,
                    )?;
                    t.name = name.to_string();
                    let paths = mask_paths(r.update_mask);
                    json(&convert::topic_out(shared.lock().update_topic(t, &paths)?))
                }
                _ => Err(not_found()),
            }
        }
        (["projects", _, "topics", _], Some("publish"), &Method::POST) => {
            let r: PublishBody = body(payload)?;
            let messages = r.messages.into_iter().map(convert::message_in).collect();
            let ids = shared.lock().publish(resource, messages, now)?;
            Ok(ok(serde_json::json!({ "messageIds": ids })))
        }
        (["projects", _, "subscriptions", _], None, m) => {
            let name = resource;
            match *m {
                Method::PUT => {
                    let mut s = convert::subscription_in(body::<model::Subscription>(payload)?)?;
                    s.name = name.to_string();
                    json(&convert::subscription_out(
                        shared.lock().create_subscription(s)?,
                    ))
                }
                Method::GET => json(&convert::subscription_out(
                    shared.lock().get_subscription(name)?,
                )),
                Method::DELETE => {
                    shared.lock().delete_subscription(name)?;
                    Ok(ok(serde_json::json!({})))
                }
                Method::PATCH => {
                    let r: UpdateRequest<model::Subscription> = body(payload)?;
                    let mut s =
                        convert::subscription_in(r.subscription.ok_or_else(|| {
                            ServiceError::invalid("The subscription is required.")
                        })?)?;
                    s.name = name.to_string();
                    let paths = mask_paths(r.update_mask);
                    json(&convert::subscription_out(
                        shared.lock().update_subscription(s, &paths)?,
                    ))
                }
                _ => Err(not_found()),
            }
        }
        (["projects", _, "subscriptions", _], Some(verb), &Method::POST) => match verb {
            "pull" => {
                let r: PullBody = body(payload)?;
                let got = grpc::unary_pull(shared, resource, r.max_messages, r.return_immediately)
                    .await
                    .map_err(|s| ServiceError::new(s.code(), s.message()))?;
                let received: Vec<serde_json::Value> = got
                    .into_iter()
                    .map(|r| {
                        let mut v = serde_json::json!({
                            "ackId": r.ack_id,
                            "message": serde_json::to_value(convert::message_out(
                                r.message.unwrap_or_default(),
                            ))
                            .unwrap_or_default(),
                        });
                        if r.delivery_attempt > 0 {
                            v["deliveryAttempt"] = r.delivery_attempt.into();
                        }
                        v
                    })
                    .collect();
                Ok(ok(serde_json::json!({ "receivedMessages": received })))
            }
            "acknowledge" => {
                let r: AckBody = body(payload)?;
                let outcome = shared.lock().acknowledge(resource, &r.ack_ids, now)?;
                exactly_once_check(shared, resource, outcome)
            }
            "modifyAckDeadline" => {
                let r: AckBody = body(payload)?;
                let outcome = shared.lock().modify_ack_deadline(
                    resource,
                    &r.ack_ids,
                    r.ack_deadline_seconds,
                    now,
                )?;
                exactly_once_check(shared, resource, outcome)
            }
            "detach" => {
                shared.lock().detach_subscription(resource)?;
                Ok(ok(serde_json::json!({})))
            }
            _ => Err(not_found()),
        },
        _ => Err(not_found()),
    }
}

fn exactly_once_check(
    shared: &Shared,
    subscription: &str,
    outcome: crate::broker::AckOutcome,
) -> Result<RestResponse> {
    let exactly_once = shared
        .lock()
        .subscription(subscription)
        .is_ok_and(|s| s.exactly_once());
    if exactly_once && !outcome.invalid.is_empty() {
        return Err(ServiceError::invalid(format!(
            "{} ack id(s) are invalid or expired: {}",
            outcome.invalid.len(),
            outcome.invalid.join(", ")
        )));
    }
    Ok(ok(serde_json::json!({})))
}

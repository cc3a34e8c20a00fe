//! The REST/JSON surface (HTTP/1.1, <https://cloud.google.com/pubsub/docs/reference/rest>):
//! what the official Rust client's `TopicAdmin` and `SubscriptionAdmin` and gcloud speak, plus
//! publish, pull, acknowledge, modifyAckDeadline, snapshots and seek for tools and scripts.
//! Bodies are the proto3 JSON mapping (`json.rs`); the operations are `service.rs`'s, shared
//! with gRPC.

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use crate::error::{Result, ServiceError};
use crate::history::Transport;
use crate::json::{self, Reader, Writer};
use crate::proto;
use crate::service::{self, Shared};

const REST: Transport = Transport::Rest;

pub struct RestResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

fn ok(value: Value) -> RestResponse {
    RestResponse {
        status: StatusCode::OK,
        body: Bytes::from(value.to_string()),
    }
}

fn empty() -> RestResponse {
    ok(Value::Object(serde_json::Map::new()))
}

pub fn error(e: &ServiceError) -> RestResponse {
    RestResponse {
        status: StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body: Bytes::from(e.rest_body().to_string()),
    }
}

pub fn percent_decode(s: &str) -> String {
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

pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(&v.replace('+', " ")))
}

/// `pageSize` and `pageToken` from the query string.
fn paging(query: Option<&str>) -> Result<(i32, String)> {
    let size = match query_param(query, "pageSize") {
        None => 0,
        Some(s) => s.trim().parse::<i32>().map_err(|e| {
            ServiceError::invalid(format!("Invalid value for pageSize: {s:?}.")).with_source(e)
        })?,
    };
    Ok((size, query_param(query, "pageToken").unwrap_or_default()))
}

/// The update mask: the body's `updateMask` wins over the query parameter.
fn update_mask(body: Option<&Value>, query: Option<&str>) -> Result<Vec<String>> {
    let from_body = json::field_mask(body)?;
    if !from_body.is_empty() {
        return Ok(from_body);
    }
    let from_query = query_param(query, "updateMask").map(Value::String);
    json::field_mask(from_query.as_ref())
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
    if matches!(
        verb,
        Some("getIamPolicy" | "setIamPolicy" | "testIamPermissions")
    ) {
        return Err(ServiceError::unsupported("IAM policy methods"));
    }
    if let ["projects", _, "schemas", ..] = parts.as_slice() {
        return Err(ServiceError::unsupported("Schemas"));
    }
    let body = json::parse(payload)?;
    let now = Instant::now();
    match (parts.as_slice(), verb, method) {
        (["projects", p, "topics"], None, &Method::GET) => {
            let (size, token) = paging(query)?;
            let all = shared.lock().list_topics(p);
            let (topics, next) = service::page(all, size, &token)?;
            Ok(ok(Writer::new()
                .messages("topics", topics.iter().map(json::topic_out).collect())
                .string("nextPageToken", &next)
                .done()))
        }
        (["projects", p, "subscriptions"], None, &Method::GET) => {
            let (size, token) = paging(query)?;
            let all = shared.lock().list_subscriptions(p);
            let (subs, next) = service::page(all, size, &token)?;
            Ok(ok(Writer::new()
                .messages(
                    "subscriptions",
                    subs.iter().map(json::subscription_out).collect(),
                )
                .string("nextPageToken", &next)
                .done()))
        }
        (["projects", p, "snapshots"], None, &Method::GET) => {
            let (size, token) = paging(query)?;
            let all = shared.lock().list_snapshots(p);
            let (snaps, next) = service::page(all, size, &token)?;
            Ok(ok(Writer::new()
                .messages("snapshots", snaps.iter().map(json::snapshot_out).collect())
                .string("nextPageToken", &next)
                .done()))
        }
        (
            [
                "projects",
                _,
                "topics",
                _,
                collection @ ("subscriptions" | "snapshots"),
            ],
            None,
            &Method::GET,
        ) => {
            let topic = resource
                .strip_suffix(&format!("/{collection}"))
                .unwrap_or(resource);
            let (size, token) = paging(query)?;
            let all = if *collection == "subscriptions" {
                shared.lock().topic_subscriptions(topic)?
            } else {
                shared.lock().topic_snapshots(topic)?
            };
            let (names, next) = service::page(all, size, &token)?;
            Ok(ok(Writer::new()
                .strings(collection, &names)
                .string("nextPageToken", &next)
                .done()))
        }
        (["projects", _, "topics", _], None, m) => topic(shared, m, resource, &body, query, now),
        (["projects", _, "topics", _], Some("publish"), &Method::POST) => {
            let mut r = Reader::new(&body, "")?;
            r.string("topic", "topic")?;
            let messages = r.messages("messages", "messages", json::message_in)?;
            r.finish()?;
            let ids = shared.lock().publish(resource, messages, REST, now)?;
            Ok(ok(Writer::new().strings("messageIds", &ids).done()))
        }
        (["projects", _, "subscriptions", _], None, m) => {
            subscription(shared, m, resource, &body, query)
        }
        (["projects", _, "subscriptions", _], Some(verb), &Method::POST) => {
            subscription_verb(shared, verb, resource, &body, now).await
        }
        (["projects", _, "snapshots", _], None, m) => {
            snapshot(shared, m, resource, &body, query, now)
        }
        _ => Err(not_found()),
    }
}

fn topic(
    shared: &Shared,
    method: &Method,
    name: &str,
    body: &Value,
    query: Option<&str>,
    now: Instant,
) -> Result<RestResponse> {
    match *method {
        Method::PUT => {
            let mut t = json::topic_in(Reader::new(body, "")?)?;
            t.name = name.to_string();
            Ok(ok(json::topic_out(&shared.lock().create_topic(t)?)))
        }
        Method::GET => Ok(ok(json::topic_out(&shared.lock().get_topic(name)?))),
        Method::DELETE => {
            shared.lock().delete_topic(name)?;
            Ok(empty())
        }
        Method::PATCH => {
            let mut r = Reader::new(body, "")?;
            let topic = r.message("topic", "topic", json::topic_in)?;
            let mask = r.present("updateMask", "update_mask")?.cloned();
            r.finish()?;
            let mut t = topic.ok_or_else(|| ServiceError::invalid("The topic is required."))?;
            t.name = name.to_string();
            let paths = update_mask(mask.as_ref(), query)?;
            Ok(ok(json::topic_out(
                &shared.lock().update_topic(t, &paths, now)?,
            )))
        }
        _ => Err(ServiceError::new(
            tonic::Code::NotFound,
            format!("{method} on a topic: no such REST method"),
        )),
    }
}

fn subscription(
    shared: &Shared,
    method: &Method,
    name: &str,
    body: &Value,
    query: Option<&str>,
) -> Result<RestResponse> {
    match *method {
        Method::PUT => {
            let mut s = json::subscription_in(Reader::new(body, "")?)?;
            s.name = name.to_string();
            Ok(ok(json::subscription_out(
                &shared.lock().create_subscription(s)?,
            )))
        }
        Method::GET => Ok(ok(json::subscription_out(
            &shared.lock().get_subscription(name)?,
        ))),
        Method::DELETE => {
            shared.lock().delete_subscription(name)?;
            Ok(empty())
        }
        Method::PATCH => {
            let mut r = Reader::new(body, "")?;
            let sub = r.message("subscription", "subscription", json::subscription_in)?;
            let mask = r.present("updateMask", "update_mask")?.cloned();
            r.finish()?;
            let mut s =
                sub.ok_or_else(|| ServiceError::invalid("The subscription is required."))?;
            s.name = name.to_string();
            let paths = update_mask(mask.as_ref(), query)?;
            Ok(ok(json::subscription_out(
                &shared.lock().update_subscription(s, &paths)?,
            )))
        }
        _ => Err(ServiceError::new(
            tonic::Code::NotFound,
            format!("{method} on a subscription: no such REST method"),
        )),
    }
}

async fn subscription_verb(
    shared: &Shared,
    verb: &str,
    name: &str,
    body: &Value,
    now: Instant,
) -> Result<RestResponse> {
    let mut r = Reader::new(body, "")?;
    r.string("subscription", "subscription")?;
    match verb {
        "pull" => {
            let return_immediately = r.bool("returnImmediately", "return_immediately")?;
            let max_messages = r.int32("maxMessages", "max_messages")?;
            r.finish()?;
            let got = service::pull(shared, name, max_messages, return_immediately, REST).await?;
            Ok(ok(Writer::new()
                .messages(
                    "receivedMessages",
                    got.iter().map(json::received_out).collect(),
                )
                .done()))
        }
        "acknowledge" => {
            let ack_ids = r.strings("ackIds", "ack_ids")?;
            r.finish()?;
            service::acknowledge(shared, name, &ack_ids, REST)?;
            Ok(empty())
        }
        "modifyAckDeadline" => {
            let ack_ids = r.strings("ackIds", "ack_ids")?;
            let seconds = r.int32("ackDeadlineSeconds", "ack_deadline_seconds")?;
            r.finish()?;
            service::modify_ack_deadline(shared, name, &ack_ids, seconds, REST)?;
            Ok(empty())
        }
        "modifyPushConfig" => {
            let config = r.message("pushConfig", "push_config", json::push_config_in)?;
            r.finish()?;
            // Reaching here the config is a pull one (push configs are refused as
            // unimplemented while being read): nothing changes.
            drop(config);
            shared.lock().subscription(name)?;
            Ok(empty())
        }
        "seek" => {
            let time = r.timestamp("time", "time")?;
            let snapshot = r.string("snapshot", "snapshot")?;
            r.finish()?;
            let target = match (time, snapshot.is_empty()) {
                (Some(_), false) => {
                    return Err(ServiceError::invalid(
                        "A Seek takes a time or a snapshot, not both.",
                    ));
                }
                (Some(t), true) => Some(proto::seek_request::Target::Time(t)),
                (None, false) => Some(proto::seek_request::Target::Snapshot(snapshot)),
                (None, true) => None,
            };
            shared.lock().seek(name, target, REST, now)?;
            Ok(empty())
        }
        "detach" => {
            r.finish()?;
            shared.lock().detach_subscription(name)?;
            Ok(empty())
        }
        other => Err(ServiceError::new(
            tonic::Code::NotFound,
            format!("POST {name}:{other}: no such REST method"),
        )),
    }
}

fn snapshot(
    shared: &Shared,
    method: &Method,
    name: &str,
    body: &Value,
    query: Option<&str>,
    now: Instant,
) -> Result<RestResponse> {
    match *method {
        Method::PUT => {
            let mut r = Reader::new(body, "")?;
            let subscription = r.string("subscription", "subscription")?;
            let labels = r.map("labels", "labels")?;
            r.map("tags", "tags")?;
            r.finish()?;
            let s = shared
                .lock()
                .create_snapshot(name.to_string(), &subscription, labels, now)?;
            Ok(ok(json::snapshot_out(&s)))
        }
        Method::GET => Ok(ok(json::snapshot_out(&shared.lock().get_snapshot(name)?))),
        Method::DELETE => {
            shared.lock().delete_snapshot(name)?;
            Ok(empty())
        }
        Method::PATCH => {
            let mut r = Reader::new(body, "")?;
            let snap = r.message("snapshot", "snapshot", json::snapshot_in)?;
            let mask = r.present("updateMask", "update_mask")?.cloned();
            r.finish()?;
            let mut s = snap.ok_or_else(|| ServiceError::invalid("The snapshot is required."))?;
            s.name = name.to_string();
            let paths = update_mask(mask.as_ref(), query)?;
            Ok(ok(json::snapshot_out(
                &shared.lock().update_snapshot(s, &paths)?,
            )))
        }
        _ => Err(ServiceError::new(
            tonic::Code::NotFound,
            format!("{method} on a snapshot: no such REST method"),
        )),
    }
}

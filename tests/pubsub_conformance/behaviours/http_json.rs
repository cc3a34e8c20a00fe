//! The REST surface's JSON: the proto3 JSON mapping (<https://protobuf.dev/programming-guides/json/>)
//! that gcloud and REST clients read, as <https://cloud.google.com/pubsub/docs/reference/rest>
//! serves it. Raw HTTP, since the official clients parse leniently.

use reqwest::Method;
use serde_json::json;

use super::{Behaviour, REST_API};
use crate::scope::{Findings, Scope, Verdict};

pub fn behaviours() -> Vec<Behaviour> {
    vec![
        Behaviour {
            name: "rest::enums_by_name_and_durations_with_3_6_or_9_digits",
            expectation: "Over HTTP/JSON a topic's and a subscription's state read back by name (\"ACTIVE\"), and a duration set as \"2.5s\" reads back as \"2.500s\" (0, 3, 6 or 9 fractional digits)",
            source: REST_API,
            check: enums_and_durations,
        },
        Behaviour {
            name: "rest::bytes_accepted_in_either_base64_alphabet",
            expectation: "Message data published over HTTP/JSON in URL-safe base64 is accepted and pulled back in standard base64",
            source: REST_API,
            check: base64_alphabets,
        },
        Behaviour {
            name: "rest::unknown_fields_refused",
            expectation: "A request body with a field the message does not have is refused with 400 INVALID_ARGUMENT, at the top level and nested",
            source: REST_API,
            check: unknown_fields,
        },
    ]
}

fn v1(scope: &Scope, rest: &str) -> String {
    format!("/v1/projects/{}/{rest}", scope.project())
}

fn enums_and_durations(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("json-enums").await?;
        let sub_id = scope.id("json-enums");
        let (status, created) = scope
            .rest(
                Method::PUT,
                &v1(scope, &format!("subscriptions/{sub_id}")),
                Some(json!({
                    "topic": topic,
                    "retryPolicy": {"minimumBackoff": "2.5s", "maximumBackoff": "10s"},
                })),
            )
            .await?;
        if status != 200 {
            return Err(format!(
                "creating the subscription over HTTP: {status} {created}"
            ));
        }
        scope.created_subscription(&scope.subscription_path("json-enums"));
        let mut findings = Findings::default();
        let (_, sub) = scope
            .rest(
                Method::GET,
                &v1(scope, &format!("subscriptions/{sub_id}")),
                None,
            )
            .await?;
        findings.check(sub["state"] == "ACTIVE", || {
            format!("subscription state reads {}", sub["state"])
        });
        findings.check(sub["retryPolicy"]["minimumBackoff"] == "2.500s", || {
            format!(
                "minimumBackoff reads {}",
                sub["retryPolicy"]["minimumBackoff"]
            )
        });
        findings.check(sub["retryPolicy"]["maximumBackoff"] == "10s", || {
            format!(
                "maximumBackoff reads {}",
                sub["retryPolicy"]["maximumBackoff"]
            )
        });
        let (_, t) = scope
            .rest(Method::GET, &format!("/v1/{topic}"), None)
            .await?;
        findings.check(t["state"] == "ACTIVE", || {
            format!("topic state reads {}", t["state"])
        });
        findings.verdict()
    })
}

fn base64_alphabets(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("json-bytes").await?;
        let sub = scope
            .create_subscription(scope.subscription("json-bytes", "json-bytes"))
            .await?;
        // 0xfb 0xff 0xbf: "-_-_" in the URL-safe alphabet, "+/+/" in the standard one.
        let (status, answer) = scope
            .rest(
                Method::POST,
                &format!("/v1/{topic}:publish"),
                Some(json!({"messages": [{"data": "-_-_"}]})),
            )
            .await?;
        if status != 200 {
            return Err(format!("publishing URL-safe base64: {status} {answer}"));
        }
        let got = scope
            .wire()
            .pull_some(&sub.name, crate::scope::PATIENCE)
            .await
            .map_err(|e| format!("pull: {e}"))?;
        let data = got
            .first()
            .and_then(|r| r.message.as_ref())
            .map(|m| m.data.clone())
            .unwrap_or_default();
        if let Some(r) = got.first() {
            let _ = scope
                .wire()
                .acknowledge(&sub.name, vec![r.ack_id.clone()])
                .await;
        }
        if data == [0xfb, 0xff, 0xbf] {
            Ok(())
        } else {
            Err(format!(
                "published -_-_ (0xfb 0xff 0xbf), delivered {data:02x?}"
            ))
        }
    })
}

fn unknown_fields(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("json-unknown").await?;
        let mut findings = Findings::default();
        for (what, name, body) in [
            (
                "at the top level",
                "json-unknown-a",
                json!({"topic": topic, "colour": "red"}),
            ),
            (
                "nested",
                "json-unknown-b",
                json!({"topic": topic, "retryPolicy": {"minimumBackof": "1s"}}),
            ),
        ] {
            let id = scope.id(name);
            let (status, answer) = scope
                .rest(
                    Method::PUT,
                    &v1(scope, &format!("subscriptions/{id}")),
                    Some(body),
                )
                .await?;
            if status == 200 {
                scope.created_subscription(&scope.subscription_path(name));
            }
            findings.check(
                status == 400 && answer["error"]["status"] == "INVALID_ARGUMENT",
                || format!("an unknown field {what}: {status} {answer}"),
            );
        }
        findings.verdict()
    })
}

//! Applies the [`Topology`] (read from the Terraform) to a target, and reads it back.
//!
//! On emulators the rig creates what Terraform creates in GCP; on GCP the rig only reads back.
//! Either way there is one description of the backbone: the Terraform.

use std::time::Duration;

use google_cloud_pubsub::model;

use crate::divergence::Divergence;
use crate::pubsub::{PubsubConnection, PubsubError};
use crate::storage::{StorageConnection, StorageError};
use crate::topology::{Bucket, Subscription, Topology};

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Pubsub(#[from] PubsubError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{action}: {detail}")]
    Request { action: String, detail: String },
}

fn request(action: String) -> impl FnOnce(google_cloud_pubsub::Error) -> ProvisionError {
    move |e| ProvisionError::Request {
        action,
        detail: e.to_string(),
    }
}

/// The Pub/Sub subscription the Terraform describes, as the API takes it.
pub fn subscription_model(conn: &PubsubConnection, s: &Subscription) -> model::Subscription {
    let mut sub = model::Subscription::new()
        .set_name(conn.subscription_path(&s.name))
        .set_topic(conn.topic_path(&s.topic))
        .set_ack_deadline_seconds(i32::try_from(s.ack_deadline_seconds).unwrap_or(i32::MAX))
        .set_enable_message_ordering(s.enable_message_ordering);
    if let Some(filter) = &s.filter {
        sub = sub.set_filter(filter.clone());
    }
    if let Some(dl) = &s.dead_letter {
        sub = sub.set_dead_letter_policy(
            model::DeadLetterPolicy::new()
                .set_dead_letter_topic(conn.topic_path(&dl.topic))
                .set_max_delivery_attempts(
                    i32::try_from(dl.max_delivery_attempts).unwrap_or(i32::MAX),
                ),
        );
    }
    if let Some(retry) = &s.retry {
        sub = sub.set_retry_policy(
            model::RetryPolicy::new()
                .set_minimum_backoff(wkt_duration(retry.minimum_backoff))
                .set_maximum_backoff(wkt_duration(retry.maximum_backoff)),
        );
    }
    sub
}

fn wkt_duration(d: Duration) -> google_cloud_wkt::Duration {
    google_cloud_wkt::Duration::clamp(
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        i32::try_from(d.subsec_nanos()).unwrap_or(0),
    )
}

/// Creates the topology's topics and subscriptions in `conn`'s project.
pub async fn apply_pubsub(
    conn: &PubsubConnection,
    topology: &Topology,
) -> Result<(), ProvisionError> {
    let topics = conn.topic_admin().await?;
    for topic in &topology.topics {
        let path = conn.topic_path(&topic.name);
        topics
            .create_topic()
            .set_name(path.clone())
            .send()
            .await
            .map_err(request(format!("creating topic {path}")))?;
    }
    let subscriptions = conn.subscription_admin().await?;
    for s in &topology.subscriptions {
        subscriptions
            .create_subscription()
            .with_request(subscription_model(conn, s))
            .send()
            .await
            .map_err(request(format!("creating subscription {}", s.name)))?;
    }
    Ok(())
}

/// Compares every subscription as the service reports it with the Terraform. Returns one line
/// per difference (empty: identical).
pub async fn read_back_pubsub(
    conn: &PubsubConnection,
    topology: &Topology,
) -> Result<Vec<String>, ProvisionError> {
    let admin = conn.subscription_admin().await?;
    let mut differences = Vec::new();
    for s in &topology.subscriptions {
        let path = conn.subscription_path(&s.name);
        let actual = admin
            .get_subscription()
            .set_subscription(path.clone())
            .send()
            .await
            .map_err(request(format!("reading subscription {path}")))?;
        differences.extend(
            subscription_differences(&subscription_model(conn, s), &actual)
                .into_iter()
                .map(|d| format!("{}: {d}", s.name)),
        );
    }
    Ok(differences)
}

/// Field-by-field differences between the wanted and the actual subscription.
pub fn subscription_differences(
    want: &model::Subscription,
    got: &model::Subscription,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |field: &str, w: String, g: String| {
        if w != g {
            out.push(format!("{field} is {g}, Terraform says {w}"));
        }
    };
    check("topic", want.topic.clone(), got.topic.clone());
    check(
        "enable_message_ordering",
        want.enable_message_ordering.to_string(),
        got.enable_message_ordering.to_string(),
    );
    check(
        "ack_deadline_seconds",
        want.ack_deadline_seconds.to_string(),
        got.ack_deadline_seconds.to_string(),
    );
    check(
        "filter",
        format!("{:?}", want.filter),
        format!("{:?}", got.filter),
    );
    let dl = |s: &model::Subscription| {
        s.dead_letter_policy
            .as_ref()
            .map(|p| format!("{} after {}", p.dead_letter_topic, p.max_delivery_attempts))
            .unwrap_or_else(|| "none".into())
    };
    check("dead_letter_policy", dl(want), dl(got));
    let retry = |s: &model::Subscription| {
        s.retry_policy
            .as_ref()
            .map(|p| {
                let d = |d: &Option<google_cloud_wkt::Duration>| {
                    d.as_ref()
                        .map(|d| format!("{}s{}ns", d.seconds(), d.nanos()))
                        .unwrap_or_else(|| "unset".into())
                };
                format!("{}..{}", d(&p.minimum_backoff), d(&p.maximum_backoff))
            })
            .unwrap_or_else(|| "none".into())
    };
    check("retry_policy", retry(want), retry(got));
    out
}

/// Creates the payload bucket on the emulator and reports every setting it did not keep.
pub async fn apply_bucket(
    storage: &StorageConnection,
    http: &reqwest::Client,
    name: &str,
    spec: &Bucket,
) -> Result<Vec<Divergence>, ProvisionError> {
    let kept = storage.create_bucket(http, name, spec).await?;
    let mut divergences = Vec::new();
    let mut compare = |feature: &str, asked: String, got: String| {
        if asked != got {
            divergences.push(Divergence {
                service: "fake-gcs-server".into(),
                feature: feature.into(),
                observed: format!("a bucket created with `{asked}` reads back with {got}"),
                real_service: format!(
                    "keeps `{asked}`; the Terraform policy checks and a run against GCP prove it"
                ),
            });
        }
    };
    let shown = |v: Option<String>| v.unwrap_or_else(|| "nothing".into());
    compare(
        "uniform bucket-level access",
        format!("enabled={}", spec.uniform_bucket_level_access),
        shown(
            kept.uniform_bucket_level_access
                .map(|v| format!("enabled={v}")),
        ),
    );
    compare(
        "public access prevention",
        spec.public_access_prevention.clone(),
        shown(kept.public_access_prevention.clone()),
    );
    compare(
        "lifecycle delete rule",
        shown(
            spec.delete_after_days
                .map(|d| format!("delete at {d} days")),
        ),
        shown(
            kept.delete_after_days
                .map(|d| format!("delete at {d} days")),
        ),
    );
    Ok(divergences)
}

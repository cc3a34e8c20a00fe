//! Reads what a target holds and compares it with the Terraform, field by field. Used by
//! validation and the tests; the rig's only opinion is the Terraform's.

use google_cloud_pubsub::model;

use rig_events::pubsub::{PubsubConnection, PubsubError};
use rig_topology::Topology;

/// Compares every subscription as the service reports it with the Terraform. Returns one line
/// per difference (empty: identical).
pub async fn read_back_pubsub(
    conn: &PubsubConnection,
    topology: &Topology,
) -> Result<Vec<String>, PubsubError> {
    let admin = conn.subscription_admin().await?;
    let mut differences = Vec::new();
    for s in &topology.subscriptions {
        let path = conn.subscription_path(&s.name);
        let actual = admin
            .get_subscription()
            .set_subscription(path.clone())
            .send()
            .await
            .map_err(|e| conn.request_error(format!("reading subscription {path}"), e))?;
        differences.extend(
            subscription_differences(&conn.subscription_model(s), &actual)
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

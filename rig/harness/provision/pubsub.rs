//! Topics and subscriptions, created exactly as the Terraform declares them.

use super::{ProvisionError, request};
use rig_events::pubsub::PubsubConnection;
use rig_topology::Topology;

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
            .with_request(conn.subscription_model(s))
            .send()
            .await
            .map_err(request(format!("creating subscription {}", s.name)))?;
    }
    Ok(())
}

//! What the run reads and writes, named once: the Terraform's topics and subscription (as the
//! worker's variables carry them and the history names them) and their full paths in the
//! deployment's project (as the Pub/Sub service's records name them).

use rig_events::worker::WorkerOptions;
use rig_topology::Topology;

#[derive(Debug, Clone)]
pub struct Names {
    pub project: String,
    pub raw_topic: String,
    pub raw_subscription: String,
    pub merged_topic: String,
    pub dead_letter_topic: String,
    pub max_delivery_attempts: u32,
    pub raw_topic_path: String,
    pub raw_subscription_path: String,
    pub merged_topic_path: String,
    pub dead_letter_topic_path: String,
}

impl Names {
    pub fn new(topology: &Topology, project: &str) -> anyhow::Result<Self> {
        let worker = WorkerOptions::from_topology(topology)?;
        let raw_topic = topology
            .subscription(&worker.subscription)
            .map(|s| s.topic.clone())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the Terraform's worker subscription {} has no topic",
                    worker.subscription
                )
            })?;
        let topic = |t: &str| format!("projects/{project}/topics/{t}");
        Ok(Self {
            project: project.to_string(),
            raw_topic_path: topic(&raw_topic),
            raw_subscription_path: format!(
                "projects/{project}/subscriptions/{}",
                worker.subscription
            ),
            merged_topic_path: topic(&worker.merged_topic),
            dead_letter_topic_path: topic(&worker.dead_letter_topic),
            raw_topic,
            raw_subscription: worker.subscription,
            merged_topic: worker.merged_topic,
            dead_letter_topic: worker.dead_letter_topic,
            max_delivery_attempts: worker.max_delivery_attempts.unwrap_or(5),
        })
    }

    /// The resource id of a full path (`projects/p/topics/t` → `t`).
    pub fn short<'a>(&self, path: &'a str) -> &'a str {
        path.rsplit('/').next().unwrap_or(path)
    }
}

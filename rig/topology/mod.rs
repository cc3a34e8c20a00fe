//! TEMPORARY STUB (not committed): replaced by the Terraform parser.
use std::path::{Path, PathBuf};
use std::time::Duration;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology { pub environment: String, pub topics: Vec<Topic>, pub subscriptions: Vec<Subscription>, pub bucket: Bucket }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic { pub name: String }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription { pub name: String, pub topic: String, pub enable_message_ordering: bool, pub ack_deadline_seconds: u32, pub dead_letter: Option<DeadLetterPolicy>, pub retry: Option<RetryPolicy>, pub filter: Option<String> }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterPolicy { pub topic: String, pub max_delivery_attempts: u32 }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy { pub minimum_backoff: Duration, pub maximum_backoff: Duration }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket { pub name: String, pub uniform_bucket_level_access: bool, pub public_access_prevention: String, pub delete_after_days: Option<u32> }
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TopologyError(String);
impl Topology {
    pub fn load(_root: &Path, environment: &str) -> Result<Topology, TopologyError> {
        let sub = |name: &str, topic: &str, filter: Option<&str>| Subscription { name: name.into(), topic: topic.into(), enable_message_ordering: topic != "events.dlq", ack_deadline_seconds: 20,
            dead_letter: (topic != "events.dlq").then(|| DeadLetterPolicy { topic: "events.dlq".into(), max_delivery_attempts: 5 }),
            retry: Some(RetryPolicy { minimum_backoff: Duration::from_secs(1), maximum_backoff: Duration::from_secs(60) }), filter: filter.map(Into::into) };
        Ok(Topology { environment: environment.into(), topics: ["events.raw", "events.merged", "events.dlq"].iter().map(|n| Topic { name: n.to_string() }).collect(),
            subscriptions: vec![sub("events.raw.worker", "events.raw", Some("NOT attributes:backbone_probe")), sub("events.raw.validation", "events.raw", Some("attributes:backbone_probe")), sub("events.merged.worker", "events.merged", None), sub("events.dlq.inspect", "events.dlq", None)],
            bucket: Bucket { name: format!("suitex-payload-snapshots-{environment}"), uniform_bucket_level_access: true, public_access_prevention: "enforced".into(), delete_after_days: Some(30) } })
    }
    pub fn default_root() -> PathBuf { std::env::var_os("RIG_TERRAFORM_ROOT").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/terraform")) }
    pub fn subscription(&self, name: &str) -> Option<&Subscription> { self.subscriptions.iter().find(|s| s.name == name) }
    pub fn worker_subscription(&self, topic: &str) -> Option<&Subscription> { self.subscriptions.iter().find(|s| s.topic == topic && !s.filter.as_deref().is_some_and(|f| !f.starts_with("NOT"))) }
    pub fn validation_subscription(&self) -> Option<&Subscription> { self.subscriptions.iter().find(|s| s.filter.as_deref().is_some_and(|f| !f.starts_with("NOT"))) }
    pub fn probe_attribute(&self) -> Option<String> { Some("backbone_probe".into()) }
}

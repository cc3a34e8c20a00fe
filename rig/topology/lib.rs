//! The backbone's topology, read from the Terraform under `infra/terraform`.
//!
//! Terraform is the single source of truth: the rig provisions emulators and checks real
//! environments from what this module reads, so there is no second list of topic or
//! subscription names anywhere. [`policy`] checks the same Terraform against the epic.

mod cloud;
mod parse;
pub mod policy;
mod summary;

pub use cloud::{CloudSpec, PrivateServicesSpec, ResourceGrant, ResourceKind, SqlInstanceSpec};

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parse::{Configuration, Value};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Topology {
    pub environment: String,
    pub topics: Vec<Topic>,
    pub subscriptions: Vec<Subscription>,
    pub bucket: Bucket,
}

/// A Pub/Sub topic; `name` is its id (`events.raw`), not a Terraform label.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Topic {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Subscription {
    /// Subscription id (`events.raw.worker`).
    pub name: String,
    /// Topic id (`events.raw`).
    pub topic: String,
    pub enable_message_ordering: bool,
    pub ack_deadline_seconds: u32,
    pub dead_letter: Option<DeadLetterPolicy>,
    pub retry: Option<RetryPolicy>,
    pub filter: Option<String>,
    /// The `purpose` label (`worker`, `validation`, `acceptance`, `inspect`), when set.
    pub purpose: Option<String>,
}

impl Subscription {
    /// Provisioned for staging acceptance runs only (dev and staging), never read by the worker
    /// or by `rig validate`'s epic check.
    pub fn is_acceptance(&self) -> bool {
        self.purpose.as_deref() == Some(ACCEPTANCE)
    }
}

/// The `purpose` label of what staging acceptance runs use.
pub const ACCEPTANCE: &str = "acceptance";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterPolicy {
    /// Topic id of the dead-letter topic (`events.dlq`).
    pub topic: String,
    pub max_delivery_attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RetryPolicy {
    #[serde(rename = "minimum_backoff_seconds", serialize_with = "as_seconds")]
    pub minimum_backoff: Duration,
    #[serde(rename = "maximum_backoff_seconds", serialize_with = "as_seconds")]
    pub maximum_backoff: Duration,
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Bucket {
    pub name: String,
    pub uniform_bucket_level_access: bool,
    pub public_access_prevention: String,
    /// Age in days at which a lifecycle rule deletes objects.
    pub delete_after_days: Option<u32>,
}

/// A place in a Terraform file; `line` is 1-based (0 when only the file is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
}

impl Location {
    pub fn new(file: PathBuf, line: usize) -> Location {
        Location { file, line }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file.display())
        } else {
            write!(f, "{}:{}", self.file.display(), self.line)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "cannot read {path}: {source}; point RIG_TERRAFORM_ROOT at the repository's infra/terraform"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no environment `{environment}` under {root}: expected envs/{environment}/ (found: {found})"
    )]
    UnknownEnvironment {
        root: PathBuf,
        environment: String,
        found: String,
    },
    #[error("{location}: HCL syntax error: {message}; `terraform fmt` shows it too")]
    Syntax { location: Location, message: String },
    #[error("{location}: {construct} is not understood by the topology parser: {hint}")]
    Unsupported {
        location: Location,
        construct: String,
        hint: String,
    },
    #[error("{location}: `{reference}` does not resolve: {hint}")]
    Unresolved {
        location: Location,
        reference: String,
        hint: String,
    },
    #[error("{location}: {message}")]
    Invalid { location: Location, message: String },
}

impl TopologyError {
    /// Where in the Terraform the problem is, when it is in a file.
    pub fn location(&self) -> Option<&Location> {
        match self {
            TopologyError::Syntax { location, .. }
            | TopologyError::Unsupported { location, .. }
            | TopologyError::Unresolved { location, .. }
            | TopologyError::Invalid { location, .. } => Some(location),
            TopologyError::Io { .. } | TopologyError::UnknownEnvironment { .. } => None,
        }
    }
}

/// The repository this crate was built from (the crate lives in `rig/topology`).
pub fn repository_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

impl Topology {
    /// Reads `infra/terraform/envs/<environment>` (+ the modules it calls) under `terraform_root`.
    pub fn load(terraform_root: &Path, environment: &str) -> Result<Topology, TopologyError> {
        let config = parse::load_environment(terraform_root, environment)?;
        Topology::from_configuration(&config, environment)
    }

    /// `environment`'s topology from [`Topology::default_root`]: what every caller reads.
    pub fn of_repository(environment: &str) -> Result<Topology, TopologyError> {
        Topology::load(&Topology::default_root(), environment)
    }

    /// `infra/terraform` in this repository, or `RIG_TERRAFORM_ROOT` when set.
    pub fn default_root() -> PathBuf {
        std::env::var_os("RIG_TERRAFORM_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| repository_root().join("infra/terraform"))
    }

    /// Environment names: the directories under `<terraform_root>/envs`.
    pub fn environments(terraform_root: &Path) -> Vec<String> {
        parse::list_environments(&terraform_root.join("envs"))
    }

    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.iter().find(|t| t.name == name)
    }

    pub fn subscription(&self, name: &str) -> Option<&Subscription> {
        self.subscriptions.iter().find(|s| s.name == name)
    }

    pub fn subscriptions_on<'a, 'b>(
        &'a self,
        topic: &'b str,
    ) -> impl Iterator<Item = &'a Subscription> + use<'a, 'b> {
        self.subscriptions.iter().filter(move |s| s.topic == topic)
    }

    /// The subscription a consumer of `topic` reads: on that topic and not selecting probes.
    /// Prefers one that dead-letters, so a real consumer never reads an inspection copy.
    pub fn worker_subscription(&self, topic: &str) -> Option<&Subscription> {
        let candidates = || {
            self.subscriptions_on(topic)
                .filter(|s| probe_filter(s.filter.as_deref()) != ProbeFilter::Selects)
        };
        candidates()
            .find(|s| s.dead_letter.is_some())
            .or_else(|| candidates().next())
    }

    /// The subscription whose filter selects probe messages only (on `events.raw`), for the
    /// epic's validation; acceptance subscriptions are not it.
    pub fn validation_subscription(&self) -> Option<&Subscription> {
        self.subscriptions.iter().find(|s| {
            probe_filter(s.filter.as_deref()) == ProbeFilter::Selects && !s.is_acceptance()
        })
    }

    /// The acceptance subscription on `topic` (dev and staging only).
    pub fn acceptance_subscription(&self, topic: &str) -> Option<&Subscription> {
        self.subscriptions_on(topic).find(|s| s.is_acceptance())
    }

    /// The attribute that marks probes (`backbone_probe`), read from the validation filter.
    pub fn probe_attribute(&self) -> Option<String> {
        self.validation_subscription()
            .and_then(|s| s.filter.as_deref())
            .and_then(filter_attribute)
            .map(str::to_string)
    }

    fn from_configuration(
        config: &Configuration,
        environment: &str,
    ) -> Result<Topology, TopologyError> {
        let mut topics: Vec<Topic> = config
            .managed("google_pubsub_topic")
            .map(|topic| {
                Ok(Topic {
                    name: required_str(&topic.body, "name", &topic.location)?,
                })
            })
            .collect::<Result<_, TopologyError>>()?;
        topics.sort_by(|a, b| a.name.cmp(&b.name));

        let mut subscriptions = Vec::new();
        for sub in config.managed("google_pubsub_subscription") {
            let body = &sub.body;
            let topic_attr = body
                .attr("topic")
                .ok_or_else(|| missing("topic", &sub.location))?;
            let topic = config
                .resolve_name(&topic_attr.value, "google_pubsub_topic")
                .ok_or_else(|| unresolved_topic(&topic_attr.value, &topic_attr.location))?;
            let dead_letter = match body.block("dead_letter_policy") {
                None => None,
                Some(block) => {
                    let attr = block
                        .body
                        .attr("dead_letter_topic")
                        .ok_or_else(|| missing("dead_letter_topic", &block.location))?;
                    Some(DeadLetterPolicy {
                        topic: config
                            .resolve_name(&attr.value, "google_pubsub_topic")
                            .ok_or_else(|| unresolved_topic(&attr.value, &attr.location))?,
                        // Pub/Sub applies 5 when the attribute is left out.
                        max_delivery_attempts: optional_u32(&block.body, "max_delivery_attempts")?
                            .unwrap_or(5),
                    })
                }
            };
            let retry = match body.block("retry_policy") {
                None => None,
                Some(block) => Some(RetryPolicy {
                    // Pub/Sub's defaults when the block is present but a bound is not.
                    minimum_backoff: optional_duration(&block.body, "minimum_backoff")?
                        .unwrap_or(Duration::from_secs(10)),
                    maximum_backoff: optional_duration(&block.body, "maximum_backoff")?
                        .unwrap_or(Duration::from_secs(600)),
                }),
            };
            subscriptions.push(Subscription {
                name: required_str(body, "name", &sub.location)?,
                topic,
                enable_message_ordering: optional_bool(body, "enable_message_ordering")?
                    .unwrap_or(false),
                // Pub/Sub's default ack deadline.
                ack_deadline_seconds: optional_u32(body, "ack_deadline_seconds")?.unwrap_or(10),
                dead_letter,
                retry,
                filter: optional_str(body, "filter")?.filter(|f| !f.is_empty()),
                purpose: match body.value("labels") {
                    Some(Value::Map(labels)) => labels
                        .get("purpose")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    _ => None,
                },
            });
        }
        subscriptions.sort_by(|a, b| a.name.cmp(&b.name));

        let buckets: Vec<_> = config.managed("google_storage_bucket").collect();
        let bucket = match buckets.as_slice() {
            [bucket] => bucket,
            _ => {
                return Err(TopologyError::Invalid {
                    location: Location::new(config.environment_dir.clone(), 0),
                    message: format!(
                        "expected exactly one google_storage_bucket (the payload bucket), found {}",
                        buckets.len()
                    ),
                });
            }
        };
        let mut delete_after_days = None;
        for rule in bucket.body.blocks("lifecycle_rule") {
            let deletes = rule
                .body
                .block("action")
                .and_then(|a| a.body.value("type"))
                .and_then(Value::as_str)
                == Some("Delete");
            if let (true, Some(condition)) = (deletes, rule.body.block("condition"))
                && let Some(age) = optional_u32(&condition.body, "age")?
            {
                delete_after_days = Some(delete_after_days.map_or(age, |d: u32| d.min(age)));
            }
        }
        let bucket = Bucket {
            name: required_str(&bucket.body, "name", &bucket.location)?,
            uniform_bucket_level_access: optional_bool(
                &bucket.body,
                "uniform_bucket_level_access",
            )?
            .unwrap_or(false),
            public_access_prevention: optional_str(&bucket.body, "public_access_prevention")?
                .unwrap_or_else(|| "inherited".into()),
            delete_after_days,
        };

        Ok(Topology {
            environment: environment.to_string(),
            topics,
            subscriptions,
            bucket,
        })
    }
}

/// How a subscription filter treats probe messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeFilter {
    /// `attributes:NAME`: receives probes only.
    Selects,
    /// `NOT attributes:NAME`: receives everything but probes.
    Excludes,
    /// No filter: receives everything.
    All,
    /// A filter of another shape.
    Other,
}

pub(crate) fn probe_filter(filter: Option<&str>) -> ProbeFilter {
    let Some(filter) = filter.map(str::trim).filter(|f| !f.is_empty()) else {
        return ProbeFilter::All;
    };
    if let Some(rest) = filter.strip_prefix("NOT ") {
        if is_has_attribute(rest.trim()) {
            return ProbeFilter::Excludes;
        }
    } else if is_has_attribute(filter) {
        return ProbeFilter::Selects;
    }
    ProbeFilter::Other
}

fn is_has_attribute(filter: &str) -> bool {
    filter.strip_prefix("attributes:").is_some_and(|name| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

/// The attribute name in `attributes:NAME` or `NOT attributes:NAME`.
pub(crate) fn filter_attribute(filter: &str) -> Option<&str> {
    let filter = filter.trim();
    let filter = filter.strip_prefix("NOT ").map(str::trim).unwrap_or(filter);
    filter
        .strip_prefix("attributes:")
        .filter(|_| is_has_attribute(filter))
}

/// Parses a Pub/Sub duration such as `"10s"` or `"0.5s"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let seconds = text.trim().strip_suffix('s')?;
    if seconds.is_empty() || !seconds.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    seconds
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

fn missing(name: &str, location: &Location) -> TopologyError {
    TopologyError::Invalid {
        location: location.clone(),
        message: format!("`{name}` is required here; set it"),
    }
}

fn unresolved_topic(value: &Value, location: &Location) -> TopologyError {
    TopologyError::Unresolved {
        location: location.clone(),
        reference: value.render().unwrap_or_else(|| format!("{value:?}")),
        hint: "refer to a google_pubsub_topic of this configuration (`.id` or `.name`) or give the topic id".into(),
    }
}

fn wrong_type(name: &str, expected: &str, attr: &parse::EvalAttr) -> TopologyError {
    TopologyError::Invalid {
        location: attr.location.clone(),
        message: format!(
            "`{name}` must be a {expected} known before apply, found {}",
            attr.value
                .render()
                .unwrap_or_else(|| format!("{:?}", attr.value))
        ),
    }
}

fn required_str(
    body: &parse::EvalBody,
    name: &str,
    location: &Location,
) -> Result<String, TopologyError> {
    optional_str(body, name)?.ok_or_else(|| missing(name, location))
}

fn optional_str(body: &parse::EvalBody, name: &str) -> Result<Option<String>, TopologyError> {
    match body.attr(name) {
        None => Ok(None),
        Some(attr) => match &attr.value {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(wrong_type(name, "string", attr)),
        },
    }
}

fn optional_bool(body: &parse::EvalBody, name: &str) -> Result<Option<bool>, TopologyError> {
    match body.attr(name) {
        None => Ok(None),
        Some(attr) => match &attr.value {
            Value::Null => Ok(None),
            value => value
                .as_bool()
                .map(Some)
                .ok_or_else(|| wrong_type(name, "bool", attr)),
        },
    }
}

fn optional_u32(body: &parse::EvalBody, name: &str) -> Result<Option<u32>, TopologyError> {
    match body.attr(name) {
        None => Ok(None),
        Some(attr) => match &attr.value {
            Value::Null => Ok(None),
            value => value
                .as_u32()
                .map(Some)
                .ok_or_else(|| wrong_type(name, "whole number", attr)),
        },
    }
}

fn optional_duration(
    body: &parse::EvalBody,
    name: &str,
) -> Result<Option<Duration>, TopologyError> {
    match optional_str(body, name)? {
        None => Ok(None),
        Some(text) => parse_duration(&text)
            .map(Some)
            .ok_or_else(|| TopologyError::Invalid {
                location: body
                    .attr(name)
                    .map(|a| a.location.clone())
                    .unwrap_or_else(|| Location::new(PathBuf::new(), 0)),
                message: format!(
                    "`{name}` = {text:?} is not a duration; write seconds like \"10s\""
                ),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_seconds() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("0.5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("600"), None);
        assert_eq!(parse_duration("1m"), None);
        assert_eq!(parse_duration("s"), None);
    }

    #[test]
    fn probe_filters_are_classified() {
        assert_eq!(
            probe_filter(Some("attributes:backbone_probe")),
            ProbeFilter::Selects
        );
        assert_eq!(
            probe_filter(Some("NOT attributes:backbone_probe")),
            ProbeFilter::Excludes
        );
        assert_eq!(probe_filter(None), ProbeFilter::All);
        assert_eq!(probe_filter(Some("")), ProbeFilter::All);
        assert_eq!(
            probe_filter(Some("attributes.kind = \"x\"")),
            ProbeFilter::Other
        );
        assert_eq!(
            filter_attribute("NOT attributes:backbone_probe"),
            Some("backbone_probe")
        );
    }
}

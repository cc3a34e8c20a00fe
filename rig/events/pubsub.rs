//! Pub/Sub clients for a target: the emulator (anonymous, explicit endpoint) or real GCP
//! (Application Default Credentials, default endpoint). The official crate does not read
//! `PUBSUB_EMULATOR_HOST` itself, so the endpoint is always passed explicitly.

use std::time::Duration;

use google_cloud_auth::credentials::Credentials;
use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model;

use rig_topology::Subscription;

#[derive(Debug, thiserror::Error)]
pub enum PubsubError {
    #[error(
        "Pub/Sub credentials: {0}. For real GCP run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
    )]
    Credentials(String),
    #[error("Pub/Sub client for {endpoint}")]
    Client {
        endpoint: String,
        #[source]
        source: google_cloud_gax::client_builder::Error,
    },
    #[error("{action}")]
    Request {
        action: String,
        #[source]
        source: google_cloud_pubsub::Error,
    },
}

/// Which Pub/Sub a target talks to. The local target runs our own service unless
/// `RIG_PUBSUB=google-emulator` (or `--pubsub google-emulator`) asks for Google's emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PubsubImplementation {
    /// `pubsub-service` (rig/pubsub-service), in process.
    #[default]
    PubsubService,
    /// Google's emulator from the Cloud CLI, with its known defects (docs/feature-support.md).
    GoogleEmulator,
    /// The real service.
    Google,
}

/// The variable that picks the local target's Pub/Sub (also written by `rig up`).
pub const RIG_PUBSUB: &str = "RIG_PUBSUB";

impl PubsubImplementation {
    /// The local target's choice: `RIG_PUBSUB`, else our own service.
    pub fn chosen() -> Result<Self, String> {
        match std::env::var(RIG_PUBSUB) {
            Ok(v) if !v.is_empty() => v.parse(),
            _ => Ok(Self::default()),
        }
    }

    /// What answers at an endpoint a target was pointed at (not started): Google without one;
    /// with one, what `RIG_PUBSUB` says (`rig up` exports it), else Google's emulator, whose
    /// known defects are then excused — the reading of env files from before our service.
    pub fn behind(endpoint: Option<&str>) -> Result<Self, String> {
        match (endpoint, std::env::var(RIG_PUBSUB)) {
            (None, _) => Ok(Self::Google),
            (Some(_), Ok(v)) if !v.is_empty() => v.parse(),
            (Some(_), _) => Ok(Self::GoogleEmulator),
        }
    }
}

impl std::fmt::Display for PubsubImplementation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PubsubService => "pubsub-service",
            Self::GoogleEmulator => "google-emulator",
            Self::Google => "google",
        })
    }
}

impl std::str::FromStr for PubsubImplementation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pubsub-service" => Ok(Self::PubsubService),
            "google-emulator" => Ok(Self::GoogleEmulator),
            "google" => Ok(Self::Google),
            other => Err(format!(
                "unknown Pub/Sub `{other}` ({RIG_PUBSUB} or --pubsub): expected `pubsub-service` (our own, the default) or `google-emulator`"
            )),
        }
    }
}

/// Where a target's Pub/Sub lives and which project the backbone uses there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubsubConnection {
    /// `http://127.0.0.1:PORT` for a local service; `None` for Google's endpoint.
    pub endpoint: Option<String>,
    pub project_id: String,
    /// What answers at `endpoint`.
    pub implementation: PubsubImplementation,
}

impl PubsubConnection {
    /// Any local stand-in (anonymous credentials, explicit endpoint).
    pub fn is_emulator(&self) -> bool {
        self.endpoint.is_some()
    }

    /// Google's emulator, whose known defects the scenarios report as divergences rather
    /// than failures. Our own service gets no such excuse.
    pub fn is_google_emulator(&self) -> bool {
        self.is_emulator() && self.implementation == PubsubImplementation::GoogleEmulator
    }

    /// `host:port`, as `PUBSUB_EMULATOR_HOST` expects.
    pub fn emulator_host(&self) -> Option<&str> {
        self.endpoint.as_deref().map(|e| {
            e.trim_start_matches("http://")
                .trim_start_matches("https://")
        })
    }

    pub fn topic_path(&self, topic: &str) -> String {
        format!("projects/{}/topics/{topic}", self.project_id)
    }

    pub fn subscription_path(&self, subscription: &str) -> String {
        format!("projects/{}/subscriptions/{subscription}", self.project_id)
    }

    fn credentials(&self) -> Result<Credentials, PubsubError> {
        if self.is_emulator() {
            Ok(google_cloud_auth::credentials::anonymous::Builder::new().build())
        } else {
            google_cloud_auth::credentials::Builder::default()
                .build()
                .map_err(|e| PubsubError::Credentials(e.to_string()))
        }
    }

    fn client_error(&self, source: google_cloud_gax::client_builder::Error) -> PubsubError {
        PubsubError::Client {
            endpoint: self
                .endpoint
                .clone()
                .unwrap_or_else(|| "pubsub.googleapis.com".into()),
            source,
        }
    }

    pub async fn publisher(&self, topic: &str) -> Result<Publisher, PubsubError> {
        let mut builder =
            Publisher::builder(self.topic_path(topic)).with_credentials(self.credentials()?);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        builder.build().await.map_err(|e| self.client_error(e))
    }

    pub async fn subscriber(&self) -> Result<Subscriber, PubsubError> {
        let mut builder = Subscriber::builder().with_credentials(self.credentials()?);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        builder.build().await.map_err(|e| self.client_error(e))
    }

    pub async fn topic_admin(&self) -> Result<TopicAdmin, PubsubError> {
        let mut builder = TopicAdmin::builder().with_credentials(self.credentials()?);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        builder.build().await.map_err(|e| self.client_error(e))
    }

    pub async fn subscription_admin(&self) -> Result<SubscriptionAdmin, PubsubError> {
        let mut builder = SubscriptionAdmin::builder().with_credentials(self.credentials()?);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        builder.build().await.map_err(|e| self.client_error(e))
    }
}

/// The Terraform's subscriptions in the API's terms: provisioning creates them this way, and
/// read-backs compare against the same mapping.
impl PubsubConnection {
    /// The Pub/Sub subscription the Terraform describes, as the API takes it.
    pub fn subscription_model(&self, s: &Subscription) -> model::Subscription {
        let mut sub = model::Subscription::new()
            .set_name(self.subscription_path(&s.name))
            .set_topic(self.topic_path(&s.topic))
            .set_ack_deadline_seconds(i32::try_from(s.ack_deadline_seconds).unwrap_or(i32::MAX))
            .set_enable_message_ordering(s.enable_message_ordering);
        if let Some(filter) = &s.filter {
            sub = sub.set_filter(filter.clone());
        }
        if let Some(dl) = &s.dead_letter {
            sub = sub.set_dead_letter_policy(
                model::DeadLetterPolicy::new()
                    .set_dead_letter_topic(self.topic_path(&dl.topic))
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

    /// A failed admin request, named by what was being done.
    pub fn request_error(&self, action: String, source: google_cloud_pubsub::Error) -> PubsubError {
        PubsubError::Request { action, source }
    }
}

fn wkt_duration(d: Duration) -> google_cloud_wkt::Duration {
    google_cloud_wkt::Duration::clamp(
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        i32::try_from(d.subsec_nanos()).unwrap_or(0),
    )
}

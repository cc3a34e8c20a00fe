//! Pub/Sub clients for a target: the emulator (anonymous, explicit endpoint) or real GCP
//! (Application Default Credentials, default endpoint). The official crate does not read
//! `PUBSUB_EMULATOR_HOST` itself, so the endpoint is always passed explicitly.

use google_cloud_auth::credentials::Credentials;
use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};

#[derive(Debug, thiserror::Error)]
pub enum PubsubError {
    #[error(
        "Pub/Sub credentials: {0}. For real GCP run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
    )]
    Credentials(String),
    #[error("Pub/Sub client for {endpoint}: {detail}")]
    Client { endpoint: String, detail: String },
}

/// Where a target's Pub/Sub lives and which project the backbone uses there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubsubConnection {
    /// `http://127.0.0.1:PORT` for the emulator; `None` for Google's endpoint.
    pub endpoint: Option<String>,
    pub project_id: String,
}

impl PubsubConnection {
    pub fn is_emulator(&self) -> bool {
        self.endpoint.is_some()
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

    fn client_error(&self, e: impl std::fmt::Display) -> PubsubError {
        PubsubError::Client {
            endpoint: self
                .endpoint
                .clone()
                .unwrap_or_else(|| "pubsub.googleapis.com".into()),
            detail: e.to_string(),
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

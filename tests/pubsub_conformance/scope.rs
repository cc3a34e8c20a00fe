//! A check's isolated world on one implementation: its own project locally (any id works on
//! both local implementations), uniquely prefixed resource names on real GCP, removed after
//! the check there. Plus the few client operations every check needs, each with a timeout.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{self, Message};
use rig_events::pubsub::PubsubConnection;

use crate::implementation::{Endpoint, Implementation};
use crate::wire::Wire;

pub type Verdict = Result<(), String>;

/// How long any single wait on a delivery may take before the check gives up.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Scope {
    pub implementation: Implementation,
    pub conn: PubsubConnection,
    /// Resource ids start with this: unique per check and run.
    prefix: String,
    runtime: tokio::runtime::Handle,
    topics: TopicAdmin,
    subscriptions: SubscriptionAdmin,
    subscriber: Subscriber,
    wire: Wire,
    http: reqwest::Client,
    /// `Bearer ...` on real GCP; local implementations take anonymous calls.
    authorization: Option<String>,
    created: Mutex<Vec<Created>>,
}

enum Created {
    Topic(String),
    Subscription(String),
    Snapshot(String),
}

impl Scope {
    pub fn new(
        implementation: Implementation,
        endpoint: &Endpoint,
        behaviour: &str,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, String> {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let (project_id, prefix) = match &endpoint.gcp_project {
            Some(project) => (
                project.clone(),
                format!("rig-conformance-{}-{}", short(behaviour), &unique[..8]),
            ),
            None => (format!("conf-{}", &unique[..12]), "c".to_string()),
        };
        let conn = PubsubConnection {
            endpoint: endpoint.url.clone(),
            project_id,
            implementation: implementation.rig_name(),
        };
        let (topics, subscriptions, subscriber, wire, authorization) = runtime.block_on(async {
            let topics = conn.topic_admin().await.map_err(|e| e.to_string())?;
            let subscriptions = conn.subscription_admin().await.map_err(|e| e.to_string())?;
            let subscriber = conn.subscriber().await.map_err(|e| e.to_string())?;
            let (wire, authorization) = match &endpoint.url {
                Some(url) => (Wire::plaintext(url).await?, None),
                None => {
                    let token = gcp_authorization().await?;
                    (Wire::google(token.clone()).await?, Some(token))
                }
            };
            Ok::<_, String>((topics, subscriptions, subscriber, wire, authorization))
        })?;
        Ok(Self {
            implementation,
            conn,
            prefix,
            runtime,
            topics,
            subscriptions,
            subscriber,
            wire,
            http: reqwest::Client::new(),
            authorization,
            created: Mutex::new(Vec::new()),
        })
    }

    /// One HTTP/JSON request to the implementation's REST surface (`path` from `/v1/`): the
    /// status and the answer as JSON (a string when it is not JSON).
    pub async fn rest(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), String> {
        let base = self
            .conn
            .endpoint
            .clone()
            .unwrap_or_else(|| "https://pubsub.googleapis.com".to_string());
        let mut request = self
            .http
            .request(method.clone(), format!("{base}{path}"))
            .timeout(PATIENCE);
        if let Some(token) = &self.authorization {
            request = request.header("authorization", token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| format!("{method} {path}: reading the answer: {e}"))?;
        let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, value))
    }

    /// Remembers a resource made outside the admin helpers, for clean-up on GCP.
    pub fn created_topic(&self, path: &str) {
        self.remember(Created::Topic(path.to_string()));
    }

    pub fn created_subscription(&self, path: &str) {
        self.remember(Created::Subscription(path.to_string()));
    }

    pub fn created_snapshot(&self, path: &str) {
        self.remember(Created::Snapshot(path.to_string()));
    }

    /// `projects/{project}/snapshots/{prefix}-{name}`.
    pub fn snapshot_path(&self, name: &str) -> String {
        format!("projects/{}/snapshots/{}", self.project(), self.id(name))
    }

    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    pub fn wire(&self) -> &Wire {
        &self.wire
    }

    pub fn topics(&self) -> &TopicAdmin {
        &self.topics
    }

    pub fn subscriptions(&self) -> &SubscriptionAdmin {
        &self.subscriptions
    }

    pub fn project(&self) -> &str {
        &self.conn.project_id
    }

    pub fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    pub fn topic_path(&self, name: &str) -> String {
        self.conn.topic_path(&self.id(name))
    }

    pub fn subscription_path(&self, name: &str) -> String {
        self.conn.subscription_path(&self.id(name))
    }

    pub async fn create_topic(&self, name: &str) -> Result<String, String> {
        let path = self.topic_path(name);
        self.topics
            .create_topic()
            .set_name(path.clone())
            .send()
            .await
            .map_err(|e| format!("creating topic {path}: {e}"))?;
        self.remember(Created::Topic(path.clone()));
        Ok(path)
    }

    /// A subscription named `name` on topic `topic` (both scope-local names), for the caller
    /// to set more fields on.
    pub fn subscription(&self, name: &str, topic: &str) -> model::Subscription {
        model::Subscription::new()
            .set_name(self.subscription_path(name))
            .set_topic(self.topic_path(topic))
    }

    pub async fn try_create_subscription(
        &self,
        subscription: model::Subscription,
    ) -> Result<model::Subscription, google_cloud_pubsub::Error> {
        let path = subscription.name.clone();
        let created = self
            .subscriptions
            .create_subscription()
            .with_request(subscription)
            .send()
            .await?;
        self.remember(Created::Subscription(path));
        Ok(created)
    }

    pub async fn create_subscription(
        &self,
        subscription: model::Subscription,
    ) -> Result<model::Subscription, String> {
        let path = subscription.name.clone();
        self.try_create_subscription(subscription)
            .await
            .map_err(|e| format!("creating subscription {path}: {e}"))
    }

    fn remember(&self, resource: Created) {
        if let Ok(mut created) = self.created.lock() {
            created.push(resource);
        }
    }

    pub async fn publisher(&self, topic_path: &str) -> Result<Publisher, String> {
        let mut builder = Publisher::builder(topic_path.to_string());
        if let Some(url) = &self.conn.endpoint {
            builder = builder.with_endpoint(url).with_credentials(
                google_cloud_auth::credentials::anonymous::Builder::new().build(),
            );
        }
        builder
            .build()
            .await
            .map_err(|e| format!("publisher for {topic_path}: {e}"))
    }

    /// Publishes through the official client, in order, and waits for every message id.
    pub async fn publish(
        &self,
        topic_path: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<String>, String> {
        let publisher = self.publisher(topic_path).await?;
        let pending: Vec<_> = messages.into_iter().map(|m| publisher.publish(m)).collect();
        let mut ids = Vec::with_capacity(pending.len());
        for future in pending {
            let id = tokio::time::timeout(PATIENCE, future)
                .await
                .map_err(|_| format!("publish to {topic_path} did not answer within {PATIENCE:?}"))?
                .map_err(|e| format!("publish to {topic_path}: {}", describe_publish_error(&e)))?;
            ids.push(id);
        }
        Ok(ids)
    }

    /// Streams `subscription` through the official client. `decide` sees every delivery and
    /// says what to do with it; streaming stops when it says `Stop`, when nothing arrives for
    /// `quiet`, or when `limit` passes. Deliveries are recorded in arrival order.
    pub async fn stream(
        &self,
        subscription_path: &str,
        limit: Duration,
        quiet: Duration,
        mut decide: impl FnMut(&Delivery, &[Delivery]) -> Decision,
    ) -> Streamed {
        let mut stream = self
            .subscriber
            .subscribe(subscription_path.to_string())
            .set_max_outstanding_messages(100)
            .build();
        let started = Instant::now();
        let mut deliveries: Vec<Delivery> = Vec::new();
        let mut ended = End::Limit;
        loop {
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left.min(quiet), stream.next()).await {
                Err(_) if left <= quiet => break,
                Err(_) => {
                    ended = End::Quiet;
                    break;
                }
                Ok(None) => {
                    ended = End::Closed;
                    break;
                }
                Ok(Some(Err(e))) => {
                    ended = End::Error(e.to_string());
                    break;
                }
                Ok(Some(Ok((message, handler)))) => {
                    let delivery = Delivery {
                        data: String::from_utf8_lossy(&message.data).into_owned(),
                        ordering_key: message.ordering_key.clone(),
                        attributes: message.attributes.clone(),
                        attempt: handler.delivery_attempt(),
                        at: started.elapsed(),
                    };
                    let decision = decide(&delivery, &deliveries);
                    deliveries.push(delivery);
                    match decision {
                        Decision::Ack => handler.ack(),
                        Decision::Nack => handler.nack(),
                        Decision::AckAndStop => {
                            handler.ack();
                            ended = End::Stopped;
                            break;
                        }
                    }
                }
            }
        }
        // Acks and nacks are sent in the background: give them a moment before the stream goes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(stream);
        Streamed { deliveries, ended }
    }

    /// Removes what the check created (only matters on real GCP; local scopes die with the
    /// implementation). Best effort: a leftover is reported on stderr with its name.
    pub fn clean_up(&self) {
        if self.implementation.is_local() {
            return;
        }
        let created = self
            .created
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        self.block_on(async {
            for resource in created.into_iter().rev() {
                let result = match &resource {
                    Created::Subscription(path) => self
                        .subscriptions
                        .delete_subscription()
                        .set_subscription(path.clone())
                        .send()
                        .await
                        .map(|_| ()),
                    Created::Topic(path) => self
                        .topics
                        .delete_topic()
                        .set_topic(path.clone())
                        .send()
                        .await
                        .map(|_| ()),
                    Created::Snapshot(path) => self
                        .subscriptions
                        .delete_snapshot()
                        .set_snapshot(path.clone())
                        .send()
                        .await
                        .map(|_| ()),
                };
                if let Err(e) = result {
                    let name = match &resource {
                        Created::Subscription(p) | Created::Topic(p) | Created::Snapshot(p) => p,
                    };
                    eprintln!("conformance: could not delete {name}: {e}; delete it by hand");
                }
            }
        });
    }
}

fn short(behaviour: &str) -> String {
    behaviour
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(24)
        .collect()
}

async fn gcp_authorization() -> Result<String, String> {
    let credentials = google_cloud_auth::credentials::Builder::default()
        .build_access_token_credentials()
        .map_err(|e| {
            format!(
                "Application Default Credentials: {e}; run `gcloud auth application-default login`"
            )
        })?;
    let token = credentials
        .access_token()
        .await
        .map_err(|e| format!("access token: {e}"))?;
    Ok(format!("Bearer {}", token.token))
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub data: String,
    pub ordering_key: String,
    pub attributes: HashMap<String, String>,
    pub attempt: Option<i32>,
    /// Since the stream opened.
    pub at: Duration,
}

pub enum Decision {
    Ack,
    Nack,
    AckAndStop,
}

#[derive(Debug)]
pub enum End {
    Stopped,
    Quiet,
    Limit,
    Closed,
    Error(String),
}

pub struct Streamed {
    pub deliveries: Vec<Delivery>,
    pub ended: End,
}

impl Streamed {
    /// `Some(reason)` when the stream failed or closed rather than being stopped or idle.
    pub fn failure(&self) -> Option<String> {
        match &self.ended {
            End::Error(e) => Some(format!("the streaming pull failed: {e}")),
            End::Closed => Some("the streaming pull closed".into()),
            _ => None,
        }
    }

    pub fn summary(&self) -> String {
        let shown: Vec<String> = self
            .deliveries
            .iter()
            .take(40)
            .map(|d| match d.attempt {
                Some(a) => format!("{}#{a}@{:.1}s", d.data, d.at.as_secs_f64()),
                None => format!("{}@{:.1}s", d.data, d.at.as_secs_f64()),
            })
            .collect();
        format!(
            "{} deliveries [{}{}], ended: {:?}",
            self.deliveries.len(),
            shown.join(", "),
            if self.deliveries.len() > 40 {
                ", …"
            } else {
                ""
            },
            self.ended
        )
    }
}

pub fn message(data: &str) -> Message {
    Message::new().set_data(bytes::Bytes::from(data.to_string()))
}

/// The gRPC/HTTP status code of a client error, if the service answered with one.
pub fn code_of(error: &google_cloud_pubsub::Error) -> Option<Code> {
    error.status().map(|s| s.code)
}

pub fn publish_code(error: &google_cloud_pubsub::error::PublishError) -> Option<Code> {
    match error {
        google_cloud_pubsub::error::PublishError::Rpc(e) => code_of(e),
        _ => None,
    }
}

fn describe_publish_error(error: &google_cloud_pubsub::error::PublishError) -> String {
    match error {
        google_cloud_pubsub::error::PublishError::Rpc(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// Expects `result` to be refused with `expected`.
pub fn expect_code<T>(what: &str, result: Result<T, Option<Code>>, expected: Code) -> Verdict {
    match result {
        Ok(_) => Err(format!("{what}: accepted; expected {expected:?}")),
        Err(Some(code)) if code == expected => Ok(()),
        Err(Some(code)) => Err(format!(
            "{what}: refused with {code:?}; expected {expected:?}"
        )),
        Err(None) => Err(format!(
            "{what}: failed without a status from the service; expected {expected:?}"
        )),
    }
}

/// The gax code for a tonic status code, to compare raw-gRPC answers in one vocabulary.
pub fn grpc_code(status: &tonic::Status) -> Code {
    Code::from(status.code() as i32)
}

/// Collects every failed condition instead of stopping at the first.
#[derive(Default)]
pub struct Findings(Vec<String>);

impl Findings {
    pub fn check(&mut self, condition: bool, failure: impl FnOnce() -> String) {
        if !condition {
            self.0.push(failure());
        }
    }

    pub fn add(&mut self, verdict: Verdict) {
        if let Err(e) = verdict {
            self.0.push(e);
        }
    }

    pub fn verdict(self) -> Verdict {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0.join("; "))
        }
    }
}

//! Reads live resources from Google's APIs, as the person running `rig drift` (Application
//! Default Credentials) and, for `testIamPermissions`, as the worker (impersonated).
//!
//! Pub/Sub goes through the official crate (subscriptions, and IAM through its IAM mixin);
//! Cloud SQL Admin, Service Networking, Resource Manager and the Storage JSON API are plain
//! REST GETs/POSTs with reqwest (README, "Why some things are hand-written"). Every endpoint can
//! be pointed at a stand-in; an overridden endpoint gets anonymous credentials.

use google_cloud_auth::credentials::{CacheableResource, Credentials};
use google_cloud_pubsub::client::SchemaService;
use google_cloud_pubsub::model;
use serde::de::DeserializeOwned;

use rig_events::pubsub::PubsubConnection;
pub use rig_harness::targets::{ENDPOINT_VARIABLES, GcpEndpoints};

use crate::compare::{BucketMetadata, Connections, SqlInstance};

/// Whose permissions `testIamPermissions` tests: it always answers for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerIdentity {
    /// Impersonate this service account from Application Default Credentials (needs
    /// `iam.serviceAccounts.getAccessToken` on it, e.g. roles/iam.serviceAccountTokenCreator).
    Impersonate(String),
    /// Application Default Credentials already are the worker (e.g. on the worker's VM).
    Adc,
}

/// Why a read failed, with what to do next, and the error that made it fail. Its text is a
/// finding's note, so it says the cause too: a note stands alone in the report.
#[derive(Debug, Clone)]
pub struct ReadError {
    pub message: String,
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl ReadError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// `message`, caused by `source`.
    pub fn caused(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(std::sync::Arc::new(source)),
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

pub struct LiveReader {
    pub project_id: String,
    pub endpoints: GcpEndpoints,
    http: reqwest::Client,
    reader: Result<Credentials, String>,
    worker: Result<Credentials, String>,
    pub worker_identity: WorkerIdentity,
}

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl LiveReader {
    /// Builds credentials once: ADC for reading, and the worker's for `testIamPermissions`.
    /// Missing credentials are not an error here: every read that needs them reports it.
    pub fn new(project_id: &str, endpoints: GcpEndpoints, worker_identity: WorkerIdentity) -> Self {
        // With every endpoint at a stand-in nothing needs Google credentials: none are looked
        // for (ADC would otherwise fall back to the metadata server).
        let adc = if endpoints.overridden().len() == ENDPOINT_VARIABLES.len() {
            Err("no Google endpoint is used".to_string())
        } else {
            google_cloud_auth::credentials::Builder::default()
                .build()
                .map_err(|e| {
                    format!("Application Default Credentials: {e}; run `gcloud auth application-default login`")
                })
        };
        let worker = match (&worker_identity, &adc) {
            (WorkerIdentity::Adc, adc) => adc.clone(),
            (WorkerIdentity::Impersonate(email), Ok(source)) => {
                google_cloud_auth::credentials::impersonated::Builder::from_source_credentials(
                    source.clone(),
                )
                .with_target_principal(email.clone())
                .build()
                .map_err(|e| format!("impersonating {email}: {e}; you need roles/iam.serviceAccountTokenCreator on it"))
            }
            (WorkerIdentity::Impersonate(_), Err(e)) => Err(e.clone()),
        };
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .unwrap_or_default();
        LiveReader {
            project_id: project_id.to_string(),
            endpoints,
            http,
            reader: adc,
            worker,
            worker_identity,
        }
    }

    fn credentials(
        &self,
        endpoint: &Option<String>,
        as_worker: bool,
    ) -> Result<Credentials, ReadError> {
        if endpoint.is_some() {
            return Ok(google_cloud_auth::credentials::anonymous::Builder::new().build());
        }
        let chosen = if as_worker {
            &self.worker
        } else {
            &self.reader
        };
        chosen.clone().map_err(ReadError::new)
    }

    fn pubsub(&self) -> PubsubConnection {
        PubsubConnection {
            endpoint: self.endpoints.pubsub.clone(),
            project_id: self.project_id.clone(),
            implementation: rig_events::pubsub::PubsubImplementation::behind(
                self.endpoints.pubsub.as_deref(),
            )
            .unwrap_or(rig_events::pubsub::PubsubImplementation::GoogleEmulator),
        }
    }

    pub async fn subscription(&self, name: &str) -> Result<model::Subscription, ReadError> {
        let conn = self.pubsub();
        let admin = conn
            .subscription_admin()
            .await
            .map_err(|e| ReadError::caused("Pub/Sub", e))?;
        admin
            .get_subscription()
            .set_subscription(conn.subscription_path(name))
            .send()
            .await
            .map_err(|e| {
                google_error(
                    "pubsub",
                    &e.to_string(),
                    "pubsub.subscriptions.get (roles/pubsub.viewer)",
                )
            })
    }

    /// Every subscription attached to `topic`, as full paths (they may live in other projects).
    pub async fn topic_subscriptions(&self, topic: &str) -> Result<Vec<String>, ReadError> {
        let conn = self.pubsub();
        let admin = conn
            .topic_admin()
            .await
            .map_err(|e| ReadError::caused("Pub/Sub", e))?;
        let mut names = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = admin
                .list_topic_subscriptions()
                .set_topic(conn.topic_path(topic))
                .set_page_token(page_token.clone())
                .send()
                .await
                .map_err(|e| {
                    google_error(
                        "pubsub",
                        &e.to_string(),
                        "pubsub.topics.get (roles/pubsub.viewer)",
                    )
                })?;
            names.extend(page.subscriptions);
            if page.next_page_token.is_empty() {
                return Ok(names);
            }
            page_token = page.next_page_token;
        }
    }

    async fn pubsub_iam(&self, as_worker: bool) -> Result<SchemaService, ReadError> {
        let mut builder = SchemaService::builder()
            .with_credentials(self.credentials(&self.endpoints.pubsub, as_worker)?);
        if let Some(endpoint) = &self.endpoints.pubsub {
            builder = builder.with_endpoint(endpoint);
        }
        builder
            .build()
            .await
            .map_err(|e| ReadError::caused("Pub/Sub IAM client", e))
    }

    /// `testIamPermissions` on a topic or subscription path, as the worker.
    pub async fn pubsub_permissions(
        &self,
        resource: &str,
        permissions: &[&str],
    ) -> Result<Vec<String>, ReadError> {
        let client = self.pubsub_iam(true).await?;
        let response = client
            .test_iam_permissions()
            .set_resource(resource)
            .set_permissions(permissions.iter().map(|p| p.to_string()))
            .send()
            .await
            .map_err(|e| google_error("pubsub", &e.to_string(), &self.worker_hint()))?;
        Ok(response.permissions)
    }

    /// A topic's or subscription's IAM policy, as the reader.
    pub async fn pubsub_policy(
        &self,
        resource: &str,
    ) -> Result<google_cloud_iam_v1::model::Policy, ReadError> {
        let client = self.pubsub_iam(false).await?;
        client
            .get_iam_policy()
            .set_resource(resource)
            .send()
            .await
            .map_err(|e| {
                google_error(
                    "pubsub",
                    &e.to_string(),
                    "pubsub.topics.getIamPolicy / pubsub.subscriptions.getIamPolicy (roles/pubsub.viewer)",
                )
            })
    }

    fn worker_hint(&self) -> String {
        match &self.worker_identity {
            WorkerIdentity::Impersonate(email) => {
                format!("impersonating {email} (roles/iam.serviceAccountTokenCreator on it)")
            }
            WorkerIdentity::Adc => "Application Default Credentials of the worker".into(),
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        api: Api<'_>,
        path_and_query: &str,
        body: Option<serde_json::Value>,
        as_worker: bool,
        needs: &str,
    ) -> Result<T, ReadError> {
        let Api {
            service,
            endpoint,
            default_base,
        } = api;
        let base = endpoint.as_deref().unwrap_or(default_base);
        let url = format!("{}{path_and_query}", base.trim_end_matches('/'));
        let credentials = self.credentials(endpoint, as_worker)?;
        let headers = match credentials
            .headers(Default::default())
            .await
            .map_err(|e| ReadError::caused(format!("{service}: credentials"), e))?
        {
            CacheableResource::New { data, .. } => data,
            CacheableResource::NotModified => Default::default(),
        };
        let request = match body {
            Some(body) => self.http.post(&url).json(&body),
            None => self.http.get(&url),
        };
        let response = request
            .headers(headers)
            .send()
            .await
            .map_err(|e| ReadError::caused(format!("{service}: {url}"), e))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ReadError::caused(format!("{service}: {url}"), e))?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(google_error(
                service,
                &format!("HTTP {status}: {message}"),
                needs,
            ));
        }
        serde_json::from_str(&text).map_err(|e| {
            ReadError::caused(format!("{service}: {url}: unexpected response {text}"), e)
        })
    }

    /// Cloud SQL Admin `instances.get`.
    pub async fn sql_instance(&self, instance: &str) -> Result<SqlInstance, ReadError> {
        self.json(
            Api {
                service: "sqladmin",
                endpoint: &self.endpoints.sqladmin,
                default_base: "https://sqladmin.googleapis.com",
            },
            &format!("/v1/projects/{}/instances/{instance}", self.project_id),
            None,
            false,
            "cloudsql.instances.get (roles/cloudsql.viewer)",
        )
        .await
    }

    /// Storage JSON API bucket metadata.
    pub async fn bucket(&self, bucket: &str) -> Result<BucketMetadata, ReadError> {
        self.json(
            Api {
                service: "storage",
                endpoint: &self.endpoints.storage,
                default_base: "https://storage.googleapis.com",
            },
            &format!("/storage/v1/b/{bucket}"),
            None,
            false,
            "storage.buckets.get (roles/storage.bucketViewer)",
        )
        .await
    }

    /// Storage JSON API `buckets.testIamPermissions`, as the worker.
    pub async fn bucket_permissions(
        &self,
        bucket: &str,
        permissions: &[&str],
    ) -> Result<Vec<String>, ReadError> {
        let query: Vec<String> = permissions
            .iter()
            .map(|p| format!("permissions={p}"))
            .collect();
        let response: PermissionsResponse = self
            .json(
                Api {
                    service: "storage",
                    endpoint: &self.endpoints.storage,
                    default_base: "https://storage.googleapis.com",
                },
                &format!(
                    "/storage/v1/b/{bucket}/iam/testPermissions?{}",
                    query.join("&")
                ),
                None,
                true,
                &self.worker_hint(),
            )
            .await?;
        Ok(response.permissions)
    }

    /// Resource Manager `projects.get`: the project number (the Pub/Sub service agent and the
    /// servicenetworking network path are named by it).
    pub async fn project_number(&self) -> Result<String, ReadError> {
        #[derive(serde::Deserialize)]
        struct Project {
            name: String,
        }
        let project: Project = self
            .json(
                Api {
                    service: "resourcemanager",
                    endpoint: &self.endpoints.resourcemanager,
                    default_base: "https://cloudresourcemanager.googleapis.com",
                },
                &format!("/v3/projects/{}", self.project_id),
                None,
                false,
                "resourcemanager.projects.get (roles/browser)",
            )
            .await?;
        project
            .name
            .strip_prefix("projects/")
            .map(str::to_string)
            .ok_or_else(|| {
                ReadError::new(format!(
                    "resourcemanager: unexpected project name {:?}",
                    project.name
                ))
            })
    }

    /// Resource Manager `projects.testIamPermissions`, as the worker.
    pub async fn project_permissions(
        &self,
        permissions: &[&str],
    ) -> Result<Vec<String>, ReadError> {
        let response: PermissionsResponse = self
            .json(
                Api {
                    service: "resourcemanager",
                    endpoint: &self.endpoints.resourcemanager,
                    default_base: "https://cloudresourcemanager.googleapis.com",
                },
                &format!("/v3/projects/{}:testIamPermissions", self.project_id),
                Some(serde_json::json!({ "permissions": permissions })),
                true,
                &self.worker_hint(),
            )
            .await?;
        Ok(response.permissions)
    }

    /// Service Networking `services.connections.list` for the VPC.
    pub async fn private_services_connections(
        &self,
        project_number: &str,
        network: &str,
    ) -> Result<Connections, ReadError> {
        self.json(
            Api { service: "servicenetworking", endpoint: &self.endpoints.servicenetworking, default_base: "https://servicenetworking.googleapis.com" },
            &format!(
                "/v1/services/servicenetworking.googleapis.com/connections?network=projects/{project_number}/global/networks/{network}"
            ),
            None,
            false,
            "servicenetworking.services.get on the project (see docs/gcp.md)",
        )
        .await
    }
}

/// One Google API: its name in messages, its stand-in (if any) and Google's base URL.
struct Api<'a> {
    service: &'static str,
    endpoint: &'a Option<String>,
    default_base: &'static str,
}

/// `testIamPermissions` answers (Pub/Sub, Storage, Resource Manager share this shape; an empty
/// object when nothing is held).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct PermissionsResponse {
    pub permissions: Vec<String>,
}

fn google_error(service: &str, detail: &str, needs: &str) -> ReadError {
    let upper = detail.to_ascii_uppercase();
    if upper.contains("PERMISSION_DENIED") || upper.contains("403") {
        ReadError::new(format!(
            "{service}: permission denied ({detail}); this read needs {needs}"
        ))
    } else if upper.contains("NOT_FOUND") || upper.contains("404") {
        ReadError::new(format!(
            "{service}: not found ({detail}); is it created (terraform apply) and are --project/--environment right?"
        ))
    } else {
        ReadError::new(format!("{service}: {detail}"))
    }
}

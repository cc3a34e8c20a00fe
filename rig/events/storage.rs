//! GCS for a target: objects through the official `google-cloud-storage` client, and — on the
//! emulator only — bucket creation through the JSON API. (The official crate manages buckets
//! over gRPC, which fake-gcs-server does not speak; in GCP, Terraform owns the bucket.)

use google_cloud_storage::client::Storage;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("GCS credentials: {0}. For real GCP run `gcloud auth application-default login`")]
    Credentials(String),
    #[error("GCS client for {endpoint}")]
    Client {
        endpoint: String,
        #[source]
        source: google_cloud_gax::client_builder::Error,
    },
    #[error("GCS at {endpoint}: {action}")]
    Request {
        endpoint: String,
        action: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GCS at {endpoint}: {action}: {answer}")]
    Answered {
        endpoint: String,
        action: String,
        /// The HTTP status, and the body when it explains.
        answer: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConnection {
    /// `http://127.0.0.1:PORT` for fake-gcs-server; `None` for Google's endpoint.
    pub endpoint: Option<String>,
    pub project_id: String,
}

/// What a bucket reports about the settings the Terraform asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSettings {
    pub uniform_bucket_level_access: Option<bool>,
    pub public_access_prevention: Option<String>,
    pub delete_after_days: Option<u32>,
}

impl StorageConnection {
    pub fn is_emulator(&self) -> bool {
        self.endpoint.is_some()
    }

    pub fn endpoint_name(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| "storage.googleapis.com".into())
    }

    pub fn bucket_path(bucket: &str) -> String {
        format!("projects/_/buckets/{bucket}")
    }

    pub async fn client(&self) -> Result<Storage, StorageError> {
        let credentials = if self.is_emulator() {
            google_cloud_auth::credentials::anonymous::Builder::new().build()
        } else {
            google_cloud_auth::credentials::Builder::default()
                .build()
                .map_err(|e| StorageError::Credentials(e.to_string()))?
        };
        let mut builder = Storage::builder().with_credentials(credentials);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        builder
            .build()
            .await
            .map_err(|source| StorageError::Client {
                endpoint: self.endpoint_name(),
                source,
            })
    }

    /// The bucket's settings as the JSON API reports them.
    pub async fn bucket_settings(
        &self,
        http: &reqwest::Client,
        name: &str,
    ) -> Result<BucketSettings, StorageError> {
        let endpoint = self
            .endpoint
            .as_deref()
            .unwrap_or("https://storage.googleapis.com");
        let action = || format!("reading bucket {name}");
        let request_err = |source| StorageError::Request {
            endpoint: endpoint.to_string(),
            action: action(),
            source,
        };
        let response = http
            .get(format!("{endpoint}/storage/v1/b/{name}"))
            .send()
            .await
            .map_err(request_err)?;
        if !response.status().is_success() {
            return Err(StorageError::Answered {
                endpoint: endpoint.to_string(),
                action: action(),
                answer: format!("HTTP {}", response.status()),
            });
        }
        let bucket: serde_json::Value = response.json().await.map_err(request_err)?;
        Ok(parse_bucket_settings(&bucket))
    }
}

/// Percent-encodes an object name for a JSON API path (slashes included).
fn encode_object_name(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl StorageConnection {
    /// Deletes an object through the JSON API (the official crate deletes over gRPC, which
    /// fake-gcs-server does not speak). Used by scenarios to play a lost claim-check object,
    /// and by staging acceptance to remove the objects it wrote. Against Google the request
    /// carries Application Default Credentials.
    pub async fn delete_object(
        &self,
        http: &reqwest::Client,
        bucket: &str,
        object: &str,
    ) -> Result<(), StorageError> {
        let endpoint = self
            .endpoint
            .as_deref()
            .unwrap_or("https://storage.googleapis.com");
        let headers = if self.is_emulator() {
            Default::default()
        } else {
            let credentials = google_cloud_auth::credentials::Builder::default()
                .build()
                .map_err(|e| StorageError::Credentials(e.to_string()))?;
            match credentials
                .headers(Default::default())
                .await
                .map_err(|e| StorageError::Credentials(e.to_string()))?
            {
                google_cloud_auth::credentials::CacheableResource::New { data, .. } => data,
                google_cloud_auth::credentials::CacheableResource::NotModified => {
                    Default::default()
                }
            }
        };
        let response = http
            .delete(format!(
                "{endpoint}/storage/v1/b/{bucket}/o/{}",
                encode_object_name(object)
            ))
            .headers(headers)
            .send()
            .await
            .map_err(|source| StorageError::Request {
                endpoint: endpoint.to_string(),
                action: format!("deleting {object}"),
                source,
            })?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(StorageError::Answered {
                endpoint: endpoint.to_string(),
                action: format!("deleting {object}"),
                answer: format!("HTTP {}", response.status()),
            })
        }
    }
}

fn parse_bucket_settings(bucket: &serde_json::Value) -> BucketSettings {
    let iam = &bucket["iamConfiguration"];
    let delete_after_days = bucket["lifecycle"]["rule"].as_array().and_then(|rules| {
        rules.iter().find_map(|rule| {
            (rule["action"]["type"] == "Delete")
                .then(|| rule["condition"]["age"].as_u64())
                .flatten()
                .and_then(|age| u32::try_from(age).ok())
        })
    });
    BucketSettings {
        uniform_bucket_level_access: iam["uniformBucketLevelAccess"]["enabled"].as_bool(),
        public_access_prevention: iam["publicAccessPrevention"].as_str().map(str::to_string),
        delete_after_days,
    }
}

/// The HTTP client for the JSON API calls the official crate does not make against an emulator.
/// No proxy: every emulator endpoint is local.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    use anyhow::Context;
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("building an HTTP client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_settings_gcs_reports() {
        let bucket = serde_json::json!({
            "iamConfiguration": {
                "uniformBucketLevelAccess": { "enabled": true },
                "publicAccessPrevention": "enforced"
            },
            "lifecycle": { "rule": [
                { "action": { "type": "SetStorageClass" }, "condition": { "age": 7 } },
                { "action": { "type": "Delete" }, "condition": { "age": 30 } }
            ]}
        });
        assert_eq!(
            parse_bucket_settings(&bucket),
            BucketSettings {
                uniform_bucket_level_access: Some(true),
                public_access_prevention: Some("enforced".into()),
                delete_after_days: Some(30),
            }
        );
        let bare = parse_bucket_settings(&serde_json::json!({ "name": "b" }));
        assert_eq!(bare.uniform_bucket_level_access, None);
        assert_eq!(bare.delete_after_days, None);
    }
}

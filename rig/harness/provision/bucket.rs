//! The payload bucket, created with the Terraform's settings through the JSON API (the official
//! crate manages buckets over gRPC, which fake-gcs-server does not speak). In GCP, Terraform
//! owns the bucket and the rig only reads it.

use super::ProvisionError;
use crate::divergence::Divergence;
use rig_events::storage::{BucketSettings, StorageConnection, StorageError};
use rig_topology::Bucket;

/// Creates the payload bucket on the emulator and reports every setting it did not keep.
pub async fn apply_bucket(
    storage: &StorageConnection,
    http: &reqwest::Client,
    name: &str,
    spec: &Bucket,
) -> Result<Vec<Divergence>, ProvisionError> {
    let kept = create_bucket(storage, http, name, spec).await?;
    let mut divergences = Vec::new();
    let mut compare = |feature: &str, asked: String, got: String| {
        if asked != got {
            divergences.push(Divergence {
                service: "fake-gcs-server".into(),
                feature: feature.into(),
                observed: format!("a bucket created with `{asked}` reads back with {got}"),
                real_service: format!(
                    "keeps `{asked}`; the Terraform policy checks and a run against GCP prove it"
                ),
            });
        }
    };
    let shown = |v: Option<String>| v.unwrap_or_else(|| "nothing".into());
    compare(
        "uniform bucket-level access",
        format!("enabled={}", spec.uniform_bucket_level_access),
        shown(
            kept.uniform_bucket_level_access
                .map(|v| format!("enabled={v}")),
        ),
    );
    compare(
        "public access prevention",
        spec.public_access_prevention.clone(),
        shown(kept.public_access_prevention.clone()),
    );
    compare(
        "lifecycle delete rule",
        shown(
            spec.delete_after_days
                .map(|d| format!("delete at {d} days")),
        ),
        shown(
            kept.delete_after_days
                .map(|d| format!("delete at {d} days")),
        ),
    );
    Ok(divergences)
}

/// Creates `name` with the settings of `spec` (emulator only) and returns what the
/// server then reports, so the caller can compare what was asked with what was kept.
async fn create_bucket(
    storage: &StorageConnection,
    http: &reqwest::Client,
    name: &str,
    spec: &Bucket,
) -> Result<BucketSettings, StorageError> {
    let endpoint = storage
        .endpoint
        .as_deref()
        .ok_or_else(|| StorageError::Answered {
            endpoint: storage.endpoint_name(),
            action: format!("creating bucket {name}"),
            answer: "buckets in GCP are created by Terraform, not by the rig".into(),
        })?;
    let mut body = serde_json::json!({
        "name": name,
        "iamConfiguration": {
            "uniformBucketLevelAccess": { "enabled": spec.uniform_bucket_level_access },
            "publicAccessPrevention": spec.public_access_prevention,
        },
    });
    if let Some(days) = spec.delete_after_days {
        body["lifecycle"] = serde_json::json!({
            "rule": [{ "action": { "type": "Delete" }, "condition": { "age": days } }]
        });
    }
    let request_err = |source| StorageError::Request {
        endpoint: endpoint.to_string(),
        action: format!("creating bucket {name}"),
        source,
    };
    let response = http
        .post(format!(
            "{endpoint}/storage/v1/b?project={}",
            storage.project_id
        ))
        .json(&body)
        .send()
        .await
        .map_err(request_err)?;
    let status = response.status();
    let created: serde_json::Value = response.json().await.map_err(request_err)?;
    if !status.is_success() && status.as_u16() != 409 {
        return Err(StorageError::Answered {
            endpoint: endpoint.to_string(),
            action: format!("creating bucket {name}"),
            answer: format!("HTTP {status}: {created}"),
        });
    }
    storage.bucket_settings(http, name).await
}

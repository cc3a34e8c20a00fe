//! The claim check for oversized payloads: the producer writes the payload to the environment's
//! bucket and publishes a reference; the worker reads it back and verifies size and SHA-256.
//! The ledger keeps the full payload: bucket objects expire after 30 days, the ledger must not.

use google_cloud_storage::client::Storage;

use crate::envelope::{self, ClaimRef};
use crate::event_store::NewEvent;
use crate::event_store::storable::MAX_PAYLOAD_BYTES;
use crate::storage::StorageConnection;

/// Default threshold: well under Pub/Sub's 10 MB request limit, which also counts attributes,
/// and small enough that the publisher's batches stay efficient.
pub const DEFAULT_THRESHOLD_BYTES: usize = 256 * 1024;

/// Why a claim could not be honoured.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The object is missing or does not match its reference: permanent, dead-letter it.
    #[error("{0}")]
    Rejected(String),
    /// GCS could not be reached or failed: retry.
    #[error("GCS: {0}")]
    Transient(String),
}

/// Statuses that answer for the object or the request itself, the same on every retry.
/// 401/403 are not among them: a missing permission is the deployment's to fix, not the
/// event's fault, and nothing must be dead-lettered while it is being fixed.
const PERMANENT_STATUSES: &[u16] = &[400, 404, 410, 411, 412, 413, 414, 416];

/// Tells a GCS failure that no retry can fix from one that a retry may.
pub fn classify(status: Option<u16>, uri: &str, error: &dyn std::fmt::Display) -> ClaimError {
    match status {
        Some(code) if PERMANENT_STATUSES.contains(&code) => {
            ClaimError::Rejected(format!("GCS refused {uri} with HTTP {code}: {error}"))
        }
        _ => ClaimError::Transient(format!("reading {uri}: {error}")),
    }
}

/// Writes the payload of `event` to `bucket` and returns its reference.
pub async fn put(
    storage: &Storage,
    bucket: &str,
    event: &NewEvent,
) -> Result<ClaimRef, ClaimError> {
    let object = envelope::claim_object_name(event);
    let bytes = bytes::Bytes::from(event.payload.clone().into_bytes());
    let claim = ClaimRef {
        bucket: bucket.to_string(),
        object: object.clone(),
        size: bytes.len() as u64,
        sha256: envelope::sha256_hex(&bytes),
    };
    storage
        .write_object(StorageConnection::bucket_path(bucket), object, bytes)
        .set_content_type("application/json")
        .send_buffered()
        .await
        .map_err(|e| ClaimError::Transient(format!("writing {}: {e}", claim.uri())))?;
    Ok(claim)
}

/// Reads a claimed payload and (when `verify`) checks it against its reference.
pub async fn fetch(
    storage: &Storage,
    claim: &ClaimRef,
    verify: bool,
) -> Result<String, ClaimError> {
    let mut response = match storage
        .read_object(
            StorageConnection::bucket_path(&claim.bucket),
            claim.object.clone(),
        )
        .send()
        .await
    {
        Ok(r) => r,
        Err(e)
            if e.http_status_code() == Some(404)
                || e.status()
                    .is_some_and(|s| s.code == google_cloud_gax::error::rpc::Code::NotFound) =>
        {
            return Err(ClaimError::Rejected(format!(
                "payload object {} does not exist (deleted, expired, or never written)",
                claim.uri()
            )));
        }
        Err(e) => return Err(classify(e.http_status_code(), &claim.uri(), &e)),
    };
    // Never more than the reference promises (nor than the ledger takes): a lying reference
    // must not make the worker download, and hold, an arbitrary object.
    let limit = if verify {
        claim.size
    } else {
        MAX_PAYLOAD_BYTES as u64
    };
    let mut data = Vec::with_capacity(usize::try_from(claim.size).unwrap_or(0).min(64 << 20));
    while let Some(chunk) = response.next().await {
        let chunk = chunk.map_err(|e| classify(e.http_status_code(), &claim.uri(), &e))?;
        if (data.len() + chunk.len()) as u64 > limit {
            return Err(ClaimError::Rejected(format!(
                "payload object {} is larger than the {limit} bytes the message says",
                claim.uri()
            )));
        }
        data.extend_from_slice(&chunk);
    }
    if verify && data.len() as u64 != claim.size {
        return Err(ClaimError::Rejected(format!(
            "payload object {} is {} bytes, the message says {}",
            claim.uri(),
            data.len(),
            claim.size
        )));
    }
    let digest = envelope::sha256_hex(&data);
    if verify && digest != claim.sha256 {
        return Err(ClaimError::Rejected(format!(
            "payload object {} has SHA-256 {digest}, the message says {}: it was modified",
            claim.uri(),
            claim.sha256
        )));
    }
    String::from_utf8(data).map_err(|e| {
        ClaimError::Rejected(format!("payload object {} is not UTF-8: {e}", claim.uri()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_split_into_permanent_and_transient() {
        for code in [400, 404, 410, 412, 416] {
            assert!(
                matches!(classify(Some(code), "gs://b/o", &"x"), ClaimError::Rejected(r) if r.contains(&code.to_string()))
            );
        }
        for code in [
            Some(401),
            Some(403),
            Some(408),
            Some(429),
            Some(500),
            Some(503),
            None,
        ] {
            assert!(matches!(
                classify(code, "gs://b/o", &"x"),
                ClaimError::Transient(_)
            ));
        }
    }
}

//! Snapshots: a subscription's unacknowledged messages at one moment, plus every message
//! published to its topic afterwards, for `Seek` to restore
//! (<https://cloud.google.com/pubsub/docs/replay-overview>: "A snapshot retains the
//! unacknowledged messages of the source subscription at the time of creation of the
//! snapshot, and any messages published to the topic after the snapshot is created."
//! Its lifetime is 7 days minus the age of the oldest unacknowledged message; "You cannot
//! create a snapshot that would expire in less than 1 hour after creation").

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Result, ServiceError};
use crate::proto;
use crate::subscription::Retained;

pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MIN_LIFETIME: Duration = Duration::from_secs(3600);

pub struct SnapshotState {
    pub config: proto::Snapshot,
    /// The topic's uid when the snapshot was taken: a seek needs the same topic, and a topic
    /// re-created under the same name is not.
    pub topic_uid: u64,
    pub messages: BTreeMap<u64, Retained>,
    pub expires_at: Instant,
}

/// When a snapshot taken `now` of a backlog whose oldest message was published at `oldest`
/// expires; refused when that is within the hour.
pub fn expiry(oldest: Option<Instant>, now: Instant) -> Result<Instant> {
    let expires_at = oldest.unwrap_or(now).min(now) + MAX_LIFETIME;
    if expires_at < now + MIN_LIFETIME {
        return Err(ServiceError::failed_precondition(
            "The snapshot would expire in less than 1 hour: the subscription's oldest unacknowledged message is too old.",
        ));
    }
    Ok(expires_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_lives_seven_days_minus_the_age_of_its_oldest_message() {
        let now = Instant::now() + Duration::from_secs(10 * 24 * 3600);
        assert_eq!(expiry(None, now).expect("empty"), now + MAX_LIFETIME);
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(
            expiry(Some(now - day), now).expect("a day old"),
            now + MAX_LIFETIME - day
        );
        let almost = MAX_LIFETIME - Duration::from_secs(1800);
        let e = expiry(Some(now - almost), now).expect_err("expires within the hour");
        assert_eq!(e.code, tonic::Code::FailedPrecondition);
    }
}

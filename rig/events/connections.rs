//! Where a sync worker finds the backbone: exactly what `rig up` exports to one.

use crate::event_store::DbConfig;
use crate::pubsub::PubsubConnection;
use crate::storage::StorageConnection;

/// The backbone as a worker or a producer reaches it: Pub/Sub, the bucket's storage, the
/// payload bucket and the worker's event store connection (`DB_EVENT_STORE_*`).
#[derive(Debug, Clone)]
pub struct Connections {
    pub pubsub: PubsubConnection,
    pub storage: StorageConnection,
    /// The payload bucket's name: the only one a claim check may point into.
    pub bucket: String,
    /// The worker's connection (`DB_EVENT_STORE_*`): SELECT and INSERT on the ledger only.
    pub event_store: DbConfig,
}

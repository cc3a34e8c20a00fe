//! The event store: an append-only ledger in its own MySQL instance.
//!
//! Appends are idempotent on `event_id`: a replay of an event already stored is reported as such;
//! the same `event_id` with different content is a [`AppendError::Conflict`] and nothing is
//! overwritten (the worker's grants and the ledger's triggers would refuse it anyway).

pub mod config;
mod event;
pub mod refusal;
pub mod storable;

use std::collections::{HashMap, HashSet};

use sqlx::mysql::MySqlPool;
use sqlx::{AssertSqlSafe, QueryBuilder, Row};

pub use config::{
    APP_USER, DbConfig, EVENT_STORE_PREFIX, PRIMARY_PREFIX, WORKER_USER, mysql_error_number,
};
pub use event::{InvalidEvent, NewEvent, StoredEvent};

/// The migrations in `migrations/`, embedded at build time: the rig, CI and the real
/// environments all apply these same files.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

const DUPLICATE_KEY: u16 = 1062;
/// Rows per multi-row INSERT: large enough to amortise round trips, small enough that one
/// statement stays far below `max_allowed_packet` for ordinary payloads.
const BATCH_ROWS: usize = 500;
/// A batch statement is also cut when its payloads reach this many bytes.
const BATCH_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// A new row.
    Stored,
    /// An identical event was already in the ledger (a replay or redelivery).
    AlreadyStored,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Invalid(#[from] InvalidEvent),
    #[error(
        "event {event_id} is already stored with different content ({differs}); the ledger is immutable, so nothing was written"
    )]
    Conflict {
        event_id: uuid::Uuid,
        differs: String,
    },
    /// The database refused this event's data (see [`refusal::PERMANENT`]): permanent.
    // The cause is in the text too: it becomes the dead letter's reason, read on its own.
    #[error("the event store refused event {event_id} ({what}): {source}")]
    Refused {
        event_id: uuid::Uuid,
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The database is unavailable, busy or misconfigured: retry.
    #[error("event store: {0}")]
    Database(#[from] sqlx::Error),
}

impl AppendError {
    /// Whether retrying the same append could succeed (the database was unavailable, say).
    pub fn is_transient(&self) -> bool {
        matches!(self, AppendError::Database(_))
    }

    fn from_insert(event_id: uuid::Uuid, error: sqlx::Error) -> Self {
        match refusal::permanent(&error) {
            Some(what) => AppendError::Refused {
                event_id,
                what,
                source: error,
            },
            None => AppendError::Database(error),
        }
    }
}

/// A connection pool to the event store, opened with the worker's credentials.
#[derive(Clone)]
pub struct EventStore {
    pool: MySqlPool,
}

impl EventStore {
    pub async fn connect(config: &DbConfig, max_connections: u32) -> Result<Self, sqlx::Error> {
        Ok(Self {
            pool: config.pool(max_connections).await?,
        })
    }

    pub fn from_pool(pool: MySqlPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Appends one event (validated first; one INSERT).
    pub async fn append(&self, event: &NewEvent) -> Result<Appended, AppendError> {
        event.validate()?;
        let result = sqlx::query(
            "INSERT INTO event_store (account_id, event_id, aggregate_type, aggregate_id, payload, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&event.account_id)
        .bind(event.event_id.hyphenated().to_string())
        .bind(&event.aggregate_type)
        .bind(&event.aggregate_id)
        .bind(&event.payload)
        .bind(event.ledger_created_at())
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(Appended::Stored),
            Err(e) if mysql_error_number(&e) == Some(DUPLICATE_KEY) => {
                let existing = self.find(&[event.event_id]).await?;
                compare_with_stored(event, existing.get(&event.event_id))
            }
            Err(e) => Err(AppendError::from_insert(event.event_id, e)),
        }
    }

    /// Appends many events with multi-row INSERTs. Each event gets its own outcome, in input
    /// order: invalid events and conflicts are reported without stopping the others. A database
    /// failure fails the whole call (nothing is half-reported: retry the batch, it is idempotent).
    pub async fn append_batch(
        &self,
        events: &[NewEvent],
    ) -> Result<Vec<Result<Appended, AppendError>>, sqlx::Error> {
        let mut outcomes: Vec<Option<Result<Appended, AppendError>>> =
            events.iter().map(|_| None).collect();
        // The first occurrence of each valid event_id is written; later copies in the batch are
        // judged against whatever the ledger holds afterwards, like any replay.
        let mut seen: HashSet<uuid::Uuid> = HashSet::new();
        let mut pending = Vec::new();
        let mut later_copies = Vec::new();
        for (i, event) in events.iter().enumerate() {
            if let Err(e) = event.validate() {
                outcomes[i] = Some(Err(e.into()));
            } else if seen.insert(event.event_id) {
                pending.push(i);
            } else {
                later_copies.push(i);
            }
        }
        for chunk in chunks_by_size(&pending, events) {
            self.insert_chunk(events, &chunk, &mut outcomes).await?;
        }
        if !later_copies.is_empty() {
            let ids: Vec<uuid::Uuid> = later_copies.iter().map(|&i| events[i].event_id).collect();
            let stored = self.find(&ids).await?;
            for i in later_copies {
                outcomes[i] = Some(compare_with_stored(
                    &events[i],
                    stored.get(&events[i].event_id),
                ));
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Ok(Appended::AlreadyStored)))
            .collect())
    }

    async fn insert_chunk(
        &self,
        events: &[NewEvent],
        chunk: &[usize],
        outcomes: &mut [Option<Result<Appended, AppendError>>],
    ) -> Result<(), sqlx::Error> {
        let mut remaining: Vec<usize> = chunk.to_vec();
        // Concurrent writers can insert an event between our lookup and our INSERT; each round
        // removes at least one event from `remaining`, so this terminates.
        while !remaining.is_empty() {
            let mut builder = QueryBuilder::<sqlx::MySql>::new(
                "INSERT INTO event_store (account_id, event_id, aggregate_type, aggregate_id, payload, created_at) ",
            );
            builder.push_values(remaining.iter().map(|&i| &events[i]), |mut row, e| {
                row.push_bind(&e.account_id)
                    .push_bind(e.event_id.hyphenated().to_string())
                    .push_bind(&e.aggregate_type)
                    .push_bind(&e.aggregate_id)
                    .push_bind(&e.payload)
                    .push_bind(e.ledger_created_at());
            });
            match builder.build().execute(&self.pool).await {
                Ok(_) => {
                    for &i in &remaining {
                        outcomes[i] = Some(Ok(Appended::Stored));
                    }
                    return Ok(());
                }
                Err(e) if mysql_error_number(&e) == Some(DUPLICATE_KEY) => {
                    let ids: Vec<uuid::Uuid> =
                        remaining.iter().map(|&i| events[i].event_id).collect();
                    let existing = self.find(&ids).await?;
                    remaining.retain(|&i| match existing.get(&events[i].event_id) {
                        Some(stored) => {
                            outcomes[i] = Some(compare_with_stored(&events[i], Some(stored)));
                            false
                        }
                        None => true,
                    });
                }
                // One event's data spoils the whole statement: find out which, one by one.
                Err(e) if refusal::permanent(&e).is_some() => {
                    for &i in &remaining {
                        outcomes[i] = Some(match self.append(&events[i]).await {
                            Err(AppendError::Database(e)) => return Err(e),
                            outcome => outcome,
                        });
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The stored rows for these event_ids.
    pub async fn find(
        &self,
        event_ids: &[uuid::Uuid],
    ) -> Result<HashMap<uuid::Uuid, StoredEvent>, sqlx::Error> {
        if event_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut builder = QueryBuilder::<sqlx::MySql>::new(
            "SELECT id, account_id, event_id, aggregate_type, aggregate_id, payload, created_at \
             FROM event_store WHERE event_id IN (",
        );
        let mut list = builder.separated(", ");
        for id in event_ids {
            list.push_bind(id.hyphenated().to_string());
        }
        builder.push(")");
        let rows = builder.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(StoredEvent::from_row)
            .map(|r| r.map(|e| (e.event_id, e)))
            .collect()
    }

    /// One aggregate's events in ledger order.
    pub async fn stream(
        &self,
        account_id: &str,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<StoredEvent>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, account_id, event_id, aggregate_type, aggregate_id, payload, created_at \
             FROM event_store WHERE account_id = ? AND aggregate_type = ? AND aggregate_id = ? ORDER BY id",
        )
        .bind(account_id)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(StoredEvent::from_row).collect()
    }

    /// Every event in ledger order (for scenarios; the ledger of a scenario is small).
    pub async fn all(&self) -> Result<Vec<StoredEvent>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, account_id, event_id, aggregate_type, aggregate_id, payload, created_at \
             FROM event_store ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(StoredEvent::from_row).collect()
    }

    pub async fn count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) FROM event_store")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)
    }

    /// The events whose `account_id` starts with `prefix`, in ledger order: one scenario
    /// case's rows in a ledger that many runs share (GCP's `events_acceptance`, append-only).
    pub async fn all_with_account_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<StoredEvent>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, account_id, event_id, aggregate_type, aggregate_id, payload, created_at \
             FROM event_store WHERE account_id LIKE ? ORDER BY id",
        )
        .bind(like_prefix(prefix))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(StoredEvent::from_row).collect()
    }

    /// How many events have an `account_id` starting with `prefix`.
    pub async fn count_with_account_prefix(&self, prefix: &str) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) FROM event_store WHERE account_id LIKE ?")
            .bind(like_prefix(prefix))
            .fetch_one(&self.pool)
            .await?
            .try_get(0)
    }
}

/// A LIKE pattern matching text that starts with `prefix` (its `%`, `_` and backslashes taken
/// literally: the backslash is LIKE's default escape character in both engines).
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Splits `indices` into INSERT statements bounded by rows and payload bytes.
fn chunks_by_size(indices: &[usize], events: &[NewEvent]) -> Vec<Vec<usize>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for &i in indices {
        let size = events[i].payload.len();
        if !current.is_empty() && (current.len() >= BATCH_ROWS || bytes + size > BATCH_BYTES) {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(i);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

fn compare_with_stored(
    event: &NewEvent,
    stored: Option<&StoredEvent>,
) -> Result<Appended, AppendError> {
    let Some(stored) = stored else {
        // A duplicate-key error for an event we can't see: only possible if the row's
        // visibility differs (e.g. a concurrent transaction). Surface it, don't guess.
        return Err(AppendError::Database(sqlx::Error::Protocol(format!(
            "event {} reported as duplicate but not found",
            event.event_id
        ))));
    };
    match event.differences(&stored.as_new_event()) {
        None => Ok(Appended::AlreadyStored),
        Some(differs) => Err(AppendError::Conflict {
            event_id: event.event_id,
            differs,
        }),
    }
}

/// Runs a dynamic statement the rig built from identifiers it validated itself.
pub fn trusted_sql(sql: String) -> AssertSqlSafe<String> {
    AssertSqlSafe(sql)
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_prefixes_take_wildcards_literally() {
        assert_eq!(super::like_prefix("run.case."), "run.case.%");
        assert_eq!(super::like_prefix(r"a_b%c\"), r"a\_b\%c\\%");
    }
}

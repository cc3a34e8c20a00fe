//! What the stores hold, read from outside the worker: `events.merged` and `events.dlq` as
//! they arrive (ordered tap subscriptions made before anything is published, read live), the
//! ledger's rows and their count, and the primary database's checksums and row counts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rig_events::envelope;
use rig_events::event_store::{DbConfig, trusted_sql};
use rig_verify::history::{DatabaseState, LedgerRow, TopicMessage};
use rig_verify::plan::canonical_json;
use sqlx::{ConnectOptions, Connection, Row};

use super::journal::now_ms;
use super::task::Task;
use crate::environment::Environment;

/// A subscription of the rig's own on a topic the worker publishes to, read as the run goes.
pub struct Tap {
    messages: Arc<Mutex<Vec<TopicMessage>>>,
    last_arrival: Arc<Mutex<Instant>>,
    error: Arc<Mutex<Option<String>>>,
    _task: Task,
}

/// The tap subscriptions' names: one per topic, in the run's own project.
pub fn tap_name(topic: &str) -> String {
    format!("rig-verify-tap-{}", topic.replace('.', "-"))
}

impl Tap {
    /// Creates the tap on `topic` (ordered, so each key's copies arrive in publish order) and
    /// starts reading it.
    pub async fn start(env: &Environment, topic: &str) -> anyhow::Result<Self> {
        let name = tap_name(topic);
        let admin = env.pubsub.subscription_admin().await?;
        admin
            .create_subscription()
            .set_name(env.pubsub.subscription_path(&name))
            .set_topic(env.pubsub.topic_path(topic))
            .set_ack_deadline_seconds(60)
            .set_enable_message_ordering(true)
            .send()
            .await
            .with_context(|| format!("creating the tap subscription {name} on {topic}"))?;
        let subscriber = env.pubsub.subscriber().await?;
        let mut stream = subscriber
            .subscribe(env.pubsub.subscription_path(&name))
            .build();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let last_arrival = Arc::new(Mutex::new(Instant::now()));
        let error = Arc::new(Mutex::new(None));
        let (sink, last, failure) = (messages.clone(), last_arrival.clone(), error.clone());
        let task = Task::spawn(async move {
            let _keep = subscriber;
            loop {
                match stream.next().await {
                    Some(Ok((message, handler))) => {
                        handler.ack();
                        let received = TopicMessage {
                            message_id: message.message_id.clone(),
                            ordering_key: message.ordering_key.clone(),
                            attributes: message.attributes.clone().into_iter().collect(),
                            data_sha256: Some(envelope::sha256_hex(&message.data)),
                            data_bytes: message.data.len() as u64,
                            received_at_ms: Some(now_ms()),
                        };
                        if let Ok(mut all) = sink.lock() {
                            all.push(received);
                        }
                        if let Ok(mut at) = last.lock() {
                            *at = Instant::now();
                        }
                    }
                    Some(Err(e)) => {
                        if let Ok(mut f) = failure.lock() {
                            *f = Some(format!("{e}"));
                        }
                        break;
                    }
                    None => break,
                }
            }
        });
        Ok(Self {
            messages,
            last_arrival,
            error,
            _task: task,
        })
    }

    /// Waits until nothing has arrived for `quiet` (at most `limit`), then hands back what
    /// arrived, in arrival order.
    pub async fn drain(
        self,
        quiet: Duration,
        limit: Duration,
    ) -> anyhow::Result<Vec<TopicMessage>> {
        let started = Instant::now();
        loop {
            if let Some(e) = self.error.lock().ok().and_then(|e| e.clone()) {
                anyhow::bail!("reading a tap subscription failed: {e}");
            }
            let since = self
                .last_arrival
                .lock()
                .map(|at| at.elapsed())
                .unwrap_or_default();
            if since >= quiet || started.elapsed() >= limit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let messages = self.messages.lock().map(|m| m.clone()).unwrap_or_default();
        Ok(messages)
    }
}

async fn connect(config: &DbConfig) -> anyhow::Result<sqlx::MySqlConnection> {
    config.connect_options().connect().await.with_context(|| {
        format!(
            "connecting to {}:{} as {}",
            config.host, config.port, config.username
        )
    })
}

/// Rows in the ledger, or `None` when the event store does not answer within `timeout` (it
/// is down or frozen: a fault is on).
pub async fn ledger_count(
    conn: &mut Option<sqlx::MySqlConnection>,
    admin: &DbConfig,
    timeout: Duration,
) -> Option<u64> {
    let work = async {
        if conn.is_none() {
            *conn = Some(connect(admin).await.ok()?);
        }
        let c = conn.as_mut()?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_store")
            .fetch_one(c)
            .await
            .ok()?;
        Some(n as u64)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Some(n)) => Some(n),
        _ => {
            // A connection that failed or hung is not trusted again.
            *conn = None;
            None
        }
    }
}

/// Every row of the ledger, its payload as [`rig_verify::plan::payload_digest`] hashes it.
pub async fn ledger(admin: &DbConfig) -> anyhow::Result<Vec<LedgerRow>> {
    let mut conn = connect(admin).await.context("reading the ledger")?;
    let rows = sqlx::query(
        "SELECT id, event_id, account_id, aggregate_type, aggregate_id, CAST(payload AS CHAR), \
         DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%sZ') FROM event_store ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .context("reading the ledger's rows")?;
    let mut ledger = Vec::with_capacity(rows.len());
    for row in rows {
        let payload: String = row.try_get(5)?;
        let digest = canonical_json(&payload).map_or_else(
            || "not-json".to_string(),
            |c| envelope::sha256_hex(c.as_bytes()),
        );
        ledger.push(LedgerRow {
            id: row.try_get::<u64, _>(0)?,
            event_id: row.try_get(1)?,
            account_id: row.try_get(2)?,
            aggregate_type: row.try_get(3)?,
            aggregate_id: row.try_get(4)?,
            payload_sha256: digest,
            payload_bytes: payload.len() as u64,
            created_at: row.try_get(6)?,
        });
    }
    let _ = conn.close().await;
    Ok(ledger)
}

/// Every table of the primary database: rows, and one checksum over all of them.
pub async fn primary(admin: &DbConfig) -> anyhow::Result<DatabaseState> {
    let mut conn = connect(admin)
        .await
        .context("reading the primary database")?;
    let tables: Vec<String> = sqlx::query("SHOW TABLES")
        .fetch_all(&mut conn)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
    let mut rows = BTreeMap::new();
    let mut sums = Vec::new();
    for table in tables {
        let quoted = format!("`{}`", table.replace('`', "``"));
        let count: i64 = sqlx::query_scalar(trusted_sql(format!("SELECT COUNT(*) FROM {quoted}")))
            .fetch_one(&mut conn)
            .await?;
        let sum = sqlx::query(trusted_sql(format!("CHECKSUM TABLE {quoted}")))
            .fetch_one(&mut conn)
            .await?
            .try_get::<Option<i64>, _>(1)?;
        sums.push(format!("{table}={}", sum.unwrap_or(-1)));
        rows.insert(table, count as u64);
    }
    let _ = conn.close().await;
    Ok(DatabaseState {
        checksum: envelope::sha256_hex(sums.join(";").as_bytes())[..16].to_string(),
        rows,
    })
}

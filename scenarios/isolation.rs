//! Scenario 4 — connection isolation (the epic's Scenario 2).
//!
//! Random interleavings of primary-database work (committed and rolled-back transactions,
//! reads) and event-store appends: the primary holds exactly what primary operations
//! committed, the event store exactly the appended events; worker credentials are refused on
//! the primary and the application's credentials on the event store; no transaction on one
//! connection is visible on the other, and an open primary transaction does not block appends.
//! Also reports the primary's query latency with and without concurrent append load.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sqlx::{ConnectOptions, Connection, Executor, Row};

use super::fixtures::{self, Aggregate};
use super::support::block_on;
use super::{CaseNotes, Context, Scenario, ScenarioReport, property};
use rig_events::event_store::{DbConfig, EventStore, refusal};

pub const SCENARIO: Scenario = Scenario {
    name: "connection_isolation",
    invariant: "the primary holds exactly its committed work and the event store exactly the appended events; each side's credentials are refused on the other; no transaction crosses",
    conditions: "random interleavings of primary transactions (committed, rolled back) and event-store appends, an open primary transaction during appends; prints the primary's p50/p99 latency with and without append load",
    default_cases: 3,
    run,
    not_on_gcp: Some(
        "it creates a table and commits rows in the SuiteX primary database and needs an event store database of its own; an acceptance run never writes to the primary (`rig validate --target gcp` checks there, without writing, that the worker's credentials are refused on the primary and that the primary is untouched)",
    ),
};

#[derive(Debug, Clone)]
pub enum PrimaryOp {
    Commit(u8),
    Rollback(u8),
    Read,
}

#[derive(Debug, Clone)]
pub struct Plan {
    primary: Vec<(PrimaryOp, u8)>,
    appends: Vec<(u8, u8)>,
}

fn plan() -> impl Strategy<Value = Plan> {
    let op = prop_oneof![
        3 => (1u8..5).prop_map(PrimaryOp::Commit),
        1 => (1u8..5).prop_map(PrimaryOp::Rollback),
        2 => Just(PrimaryOp::Read),
    ];
    (
        prop::collection::vec((op, 0u8..4), 1..=12),
        prop::collection::vec((1u8..=20, 0u8..4), 1..=8),
    )
        .prop_map(|(primary, appends)| Plan { primary, appends })
}

fn run(ctx: &Context) -> ScenarioReport {
    property(ctx, &SCENARIO, plan(), |ctx, n, plan| {
        block_on(ctx, check(ctx, n, plan)).map_err(|e| format!("{e:#}"))?
    })
}

async fn connect(config: &DbConfig) -> Result<sqlx::MySqlConnection, sqlx::Error> {
    config.connect_options().connect().await
}

async fn check(ctx: &Context, n: usize, plan: &Plan) -> anyhow::Result<Result<CaseNotes, String>> {
    let env = ctx.deploy(&format!("isolation-{n}")).await?;
    let mut violations = Vec::new();
    let mut app = connect(&env.primary).await?;
    app.execute(
        "CREATE TABLE tenant_orders (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            order_ref VARCHAR(64) NOT NULL UNIQUE,
            amount DECIMAL(12, 2) NOT NULL
        ) ENGINE = InnoDB",
    )
    .await?;
    let store = EventStore::connect(&env.event_store, 4).await?;

    let primary_work = async {
        let mut committed = BTreeSet::new();
        for (i, (op, pause)) in plan.primary.iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(u64::from(*pause))).await;
            match op {
                PrimaryOp::Commit(rows) | PrimaryOp::Rollback(rows) => {
                    let mut tx = app.begin().await?;
                    let mut refs = Vec::new();
                    for r in 0..*rows {
                        let order_ref = format!("op{i}-row{r}");
                        sqlx::query("INSERT INTO tenant_orders (order_ref, amount) VALUES (?, ?)")
                            .bind(&order_ref)
                            .bind(f64::from(r) * 10.5)
                            .execute(&mut *tx)
                            .await?;
                        refs.push(order_ref);
                    }
                    if matches!(op, PrimaryOp::Commit(_)) {
                        tx.commit().await?;
                        committed.extend(refs);
                    } else {
                        tx.rollback().await?;
                    }
                }
                PrimaryOp::Read => {
                    sqlx::query("SELECT COUNT(*) FROM tenant_orders")
                        .fetch_one(&mut app)
                        .await?;
                }
            }
        }
        Ok::<_, anyhow::Error>(committed)
    };
    let event_work = async {
        let mut appended = BTreeSet::new();
        for (i, (count, pause)) in plan.appends.iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(u64::from(*pause))).await;
            let batch: Vec<_> = (0..*count)
                .map(|k| {
                    fixtures::event(
                        &Aggregate {
                            account: 2,
                            record: usize::from(k),
                            id: i as u16,
                        },
                        u32::from(k),
                    )
                })
                .collect();
            for outcome in store.append_batch(&batch).await? {
                outcome?;
            }
            appended.extend(batch.iter().map(|e| e.event_id));
        }
        Ok::<_, anyhow::Error>(appended)
    };
    let (committed, appended) = tokio::join!(primary_work, event_work);
    let (mut committed, mut appended) = (committed?, appended?);

    // An open primary transaction: invisible to other primary sessions, and no obstacle to
    // appends on the event store.
    let mut holder = connect(&env.primary).await?;
    let mut open = holder.begin().await?;
    sqlx::query("INSERT INTO tenant_orders (order_ref, amount) VALUES ('open-tx', 1)")
        .execute(&mut *open)
        .await?;
    let started = Instant::now();
    let during: Vec<_> = (0..5)
        .map(|k| {
            fixtures::event(
                &Aggregate {
                    account: 2,
                    record: k,
                    id: 999,
                },
                k as u32,
            )
        })
        .collect();
    let appended_during =
        tokio::time::timeout(Duration::from_secs(5), store.append_batch(&during)).await;
    match appended_during {
        Ok(Ok(outcomes)) if outcomes.iter().all(Result::is_ok) => {
            appended.extend(during.iter().map(|e| e.event_id))
        }
        Ok(Ok(outcomes)) => violations.push(format!(
            "appends during an open primary transaction failed: {outcomes:?}"
        )),
        Ok(Err(e)) => violations.push(format!(
            "appends during an open primary transaction failed: {e}"
        )),
        Err(_) => violations.push("appends were blocked by an open primary transaction".into()),
    }
    let append_ms = started.elapsed().as_millis();
    let seen_elsewhere: i64 =
        sqlx::query("SELECT COUNT(*) FROM tenant_orders WHERE order_ref = 'open-tx'")
            .fetch_one(&mut app)
            .await?
            .try_get(0)?;
    if seen_elsewhere != 0 {
        violations.push("an uncommitted primary row was visible to another primary session".into());
    }
    open.commit().await?;
    committed.insert("open-tx".to_string());

    // Exact contents on both sides.
    let primary_refs: BTreeSet<String> = sqlx::query("SELECT order_ref FROM tenant_orders")
        .fetch_all(&mut app)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
    if primary_refs != committed {
        violations.push(format!(
            "the primary holds {} order rows, {} were committed (difference {:?})",
            primary_refs.len(),
            committed.len(),
            primary_refs
                .symmetric_difference(&committed)
                .take(5)
                .collect::<Vec<_>>()
        ));
    }
    let stored: BTreeSet<uuid::Uuid> = store.all().await?.into_iter().map(|r| r.event_id).collect();
    if stored != appended {
        violations.push(format!(
            "the event store holds {} events, {} were appended",
            stored.len(),
            appended.len()
        ));
    }
    let tables = |rows: Vec<sqlx::mysql::MySqlRow>| -> Result<BTreeSet<String>, sqlx::Error> {
        rows.iter().map(|r| r.try_get::<String, _>(0)).collect()
    };
    let primary_tables = tables(sqlx::query("SHOW TABLES").fetch_all(&mut app).await?)?;
    if primary_tables.contains("event_store") {
        violations.push(format!(
            "the primary database has an event_store table ({primary_tables:?})"
        ));
    }
    let mut worker = connect(&env.event_store).await?;
    let store_tables = tables(sqlx::query("SHOW TABLES").fetch_all(&mut worker).await?)?;
    if store_tables.iter().any(|t| t.starts_with("tenant_")) {
        violations.push(format!(
            "the event store database has primary tables ({store_tables:?})"
        ));
    }

    // Credentials do not cross. Only the server's refusal shows it: a connection that fails
    // for another reason (the server gone, a timeout) leaves the question unanswered, and
    // the case fails saying so.
    let worker_on_primary = DbConfig {
        username: env.event_store.username.clone(),
        password: env.event_store.password.clone(),
        ..env.primary.clone()
    };
    match connect(&worker_on_primary).await {
        Ok(conn) => {
            let _ = conn.close().await;
            violations.push(format!(
                "the worker's credentials ({}) were accepted by the primary",
                env.event_store.username
            ));
        }
        Err(e) if refusal::refused_by_server(&e, &[]).is_some() => {}
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context("could not ask the primary whether it refuses the worker's credentials"));
        }
    }
    let app_on_store = DbConfig {
        username: env.primary.username.clone(),
        password: env.primary.password.clone(),
        ..env.event_store.clone()
    };
    match connect(&app_on_store).await {
        Ok(mut conn) => {
            let write = sqlx::query(
                "INSERT INTO event_store (account_id, event_id, aggregate_type, aggregate_id, payload, created_at) \
                 VALUES ('x', UUID(), 'x', 'x', '{}', NOW())",
            )
            .execute(&mut conn)
            .await;
            match write {
                Ok(_) => violations.push(format!(
                    "the application's credentials ({}) could write the event store",
                    env.primary.username
                )),
                Err(e) if refusal::refused_by_server(&e, &[]).is_some() => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(
                        "could not ask the event store whether it refuses the application's write",
                    ));
                }
            }
        }
        Err(e) if refusal::refused_by_server(&e, &[]).is_some() => {}
        Err(e) => {
            return Err(anyhow::Error::new(e).context(
                "could not ask the event store whether it refuses the application's credentials",
            ));
        }
    }

    let mut notes = CaseNotes::default();
    if n == 0 && violations.is_empty() {
        let (idle, loaded) = primary_latency(&env, &store).await?;
        notes.figures.push(format!(
            "primary SELECT latency p50/p99: {:.2}/{:.2} ms idle, {:.2}/{:.2} ms under append load; 5 appends during an open primary transaction took {append_ms} ms",
            idle.0, idle.1, loaded.0, loaded.1
        ));
    }
    Ok(if violations.is_empty() {
        Ok(notes)
    } else {
        Err(violations.join("; "))
    })
}

/// (p50, p99) in milliseconds of a primary point query, idle and under append load.
async fn primary_latency(
    env: &rig_harness::environment::Environment,
    store: &EventStore,
) -> anyhow::Result<((f64, f64), (f64, f64))> {
    let mut app = connect(&env.primary).await?;
    let mut sample = async |samples: usize| -> anyhow::Result<(f64, f64)> {
        let mut times = Vec::with_capacity(samples);
        for i in 0..samples {
            let started = Instant::now();
            sqlx::query("SELECT account_id, name FROM tenant_accounts WHERE id = ?")
                .bind((i % 3 + 1) as i64)
                .fetch_optional(&mut app)
                .await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        Ok((times[samples / 2], times[samples * 99 / 100]))
    };
    let idle = sample(300).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load_store = store.clone();
    let load = tokio::spawn(async move {
        let mut i = 0u16;
        while !*stopped.borrow() {
            let batch: Vec<_> = (0..200)
                .map(|k| {
                    fixtures::event(
                        &Aggregate {
                            account: 1,
                            record: k % 4,
                            id: i,
                        },
                        k as u32,
                    )
                })
                .collect();
            let _ = load_store.append_batch(&batch).await;
            i = i.wrapping_add(1);
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let loaded = sample(300).await?;
    let _ = stop.send(true);
    let _ = load.await;
    Ok((idle, loaded))
}

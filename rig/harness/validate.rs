//! The epic's connection validation: as the worker identity, publish a probe to `events.raw`
//! and read it back from the validation subscription, insert a dummy row into the event store
//! through the secondary connection, and show that the primary database was not touched.
//!
//! Probes carry the Terraform's probe attribute, so against staging or prod they only reach
//! the validation subscription; the dummy row is marked `aggregate_type = backbone_probe`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use google_cloud_pubsub::model::Message;
use sqlx::{ConnectOptions, Connection, Row};

use crate::divergence::Divergence;
use crate::environment::Environment;
use crate::readback;
use crate::report::{Outcome, Table, seconds};
use rig_events::event_store::{Appended, EVENT_STORE_PREFIX, EventStore, NewEvent, refusal};
use rig_topology::Topology;

/// How long a probe may take to arrive before the check fails.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the worker subscription is watched for the probe.
const WORKER_WINDOW: Duration = Duration::from_secs(3);
/// How the ledger's triggers refuse UPDATE and DELETE, besides a missing grant.
const TRIGGER_REFUSAL: &[(u16, &str)] = &[(refusal::SIGNALLED, "the append-only trigger")];

#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
    #[serde(serialize_with = "as_seconds")]
    pub took: Duration,
    pub detail: String,
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Validation {
    pub target: String,
    pub engine: String,
    /// Which Pub/Sub answered (`pubsub-service`, `google-emulator`, `google`).
    pub pubsub: String,
    pub checks: Vec<Check>,
    pub divergences: Vec<Divergence>,
}

impl Validation {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.outcome != Outcome::Fail)
    }

    pub fn render(&self) -> String {
        let mut table = Table::new(&["check", "result", "time", "detail"]);
        for c in &self.checks {
            table.row(vec![
                c.name.clone(),
                c.outcome.label().into(),
                seconds(c.took),
                c.detail.clone(),
            ]);
        }
        let mut out = format!(
            "target: {}   event store engine: {}   pubsub: {}\n\n",
            self.target, self.engine, self.pubsub
        );
        out.push_str(&table.render());
        if !self.divergences.is_empty() {
            out.push_str("\nknown emulator divergences (not passes; prove these against GCP):\n");
            for d in &self.divergences {
                out.push_str(&format!("  - {d}\n"));
            }
        }
        out.push_str(&format!("\n{}\n", self.summary()));
        out
    }

    /// The last line of the table: the checks by outcome, then the known divergences listed
    /// above it (a check that diverged is one of them).
    pub fn summary(&self) -> String {
        let count = |o: Outcome| self.checks.iter().filter(|c| c.outcome == o).count();
        let mut line = format!(
            "{} passed, {} failed",
            count(Outcome::Pass),
            count(Outcome::Fail)
        );
        if count(Outcome::Skipped) > 0 {
            line.push_str(&format!(", {} skipped", count(Outcome::Skipped)));
        }
        line.push_str(&format!(
            ", {} known divergence(s)",
            self.divergences.len().max(count(Outcome::Divergence))
        ));
        line
    }
}

struct Recorder {
    checks: Vec<Check>,
    divergences: Vec<Divergence>,
}

impl Recorder {
    fn record(&mut self, name: &str, started: Instant, result: anyhow::Result<Verdict>) {
        let (outcome, detail) = match result {
            Ok(Verdict::Pass(detail)) => (Outcome::Pass, detail),
            Ok(Verdict::Divergence(d)) => {
                let detail = d.observed.clone();
                self.divergences.push(d);
                (Outcome::Divergence, detail)
            }
            Ok(Verdict::Skipped(why)) => (Outcome::Skipped, why),
            Err(e) => (Outcome::Fail, format!("{e:#}")),
        };
        tracing::info!(check = name, result = outcome.label(), "{detail}");
        self.checks.push(Check {
            name: name.into(),
            outcome,
            took: started.elapsed(),
            detail,
        });
    }
}

enum Verdict {
    Pass(String),
    Divergence(Divergence),
    Skipped(String),
}

/// Runs every check against `env`. `prior` carries checks done before (e.g. bringing the
/// backbone up) so that they appear in the same table.
pub async fn run(
    env: &Environment,
    topology: &Topology,
    prior: Vec<Check>,
    divergences: Vec<Divergence>,
) -> Validation {
    let mut rec = Recorder {
        checks: prior,
        divergences,
    };
    let run_id = uuid::Uuid::new_v4().to_string();
    let probe_attribute = topology.probe_attribute();
    // Asked once, up front: a check on a service that does not answer is not attempted (and
    // fails saying so) instead of waiting out its own timeouts and retries.
    let dead = Dead::of(env).await;

    if let Some(why) = &dead.storage {
        // No check reads the bucket; the worker would.
        tracing::warn!("{why}");
    }

    let t = Instant::now();
    let before = match &dead.primary {
        Some(why) => Err(anyhow!("not attempted: {why}")),
        None => primary_snapshot(env).await,
    };
    rec.record(
        "primary database observed before",
        t,
        before
            .as_ref()
            .map(|s| Verdict::Pass(format!("{} table(s), up {}s", s.tables.len(), s.uptime)))
            .map_err(|e| anyhow!("{e:#}")),
    );

    let t = Instant::now();
    if let Some(why) = &dead.pubsub {
        let not_attempted = || Err(anyhow!("not attempted: {why}"));
        for name in [
            "subscriptions match the Terraform".to_string(),
            format!(
                "publish a probe to {}",
                raw_topic(topology).unwrap_or_else(|_| "the raw topic".into())
            ),
            "read the probe from the validation subscription".to_string(),
        ] {
            rec.record(&name, t, not_attempted());
        }
        if acceptance_on_raw(topology).next().is_some() {
            rec.record(
                "the probe is acknowledged on the acceptance subscriptions",
                t,
                not_attempted(),
            );
        }
        rec.record(
            "the worker subscription does not see probes",
            t,
            not_attempted(),
        );
    } else {
        pubsub_checks(env, topology, probe_attribute.as_deref(), &run_id, &mut rec).await;
    }

    let t = Instant::now();
    let inserted = match &dead.event_store {
        Some(why) => Err(anyhow!("not attempted: {why}")),
        None => insert_dummy_row(env, &run_id).await,
    };
    rec.record("insert a dummy row via DB_EVENT_STORE_*", t, inserted);

    let t = Instant::now();
    rec.record(
        "the ledger refuses UPDATE and DELETE",
        t,
        match &dead.event_store {
            Some(why) => Err(anyhow!("not attempted: {why}")),
            None => ledger_is_append_only(env).await,
        },
    );

    let t = Instant::now();
    rec.record(
        "worker credentials are refused on the primary",
        t,
        match &dead.primary {
            Some(why) => Err(anyhow!("not attempted: {why}")),
            None => worker_refused_on_primary(env).await,
        },
    );

    let t = Instant::now();
    let after = match &dead.primary {
        Some(why) => Err(anyhow!("not attempted: {why}")),
        None => primary_snapshot(env).await,
    };
    let untouched = match (&before, &after) {
        (Ok(b), Ok(a)) => b.unchanged_to(a),
        (Err(e), _) | (_, Err(e)) => Err(anyhow!("{e:#}")),
    };
    rec.record("primary database untouched and not restarted", t, untouched);

    Validation {
        target: format!("{} (scope {})", env.target, env.scope),
        engine: env.engine.clone(),
        pubsub: env.pubsub.implementation.to_string(),
        checks: rec.checks,
        divergences: rec.divergences,
    }
}

/// Which of the environment's services did not answer the up-front probe, with the line that
/// says so.
#[derive(Default)]
struct Dead {
    pubsub: Option<String>,
    storage: Option<String>,
    event_store: Option<String>,
    primary: Option<String>,
}

impl Dead {
    async fn of(env: &Environment) -> Dead {
        let remedy = "is the backbone still running?";
        let endpoints = env.endpoints(remedy);
        let Err(unreachable) = rig_events::reach::probe_all(&endpoints).await else {
            return Dead::default();
        };
        let mut dead = Dead::default();
        for d in unreachable.dead {
            let line = d.to_string();
            match d.endpoint.variable.as_str() {
                "PUBSUB_EMULATOR_HOST" => dead.pubsub = Some(line),
                "STORAGE_EMULATOR_HOST" => dead.storage = Some(line),
                v if v.starts_with(EVENT_STORE_PREFIX) => dead.event_store = Some(line),
                _ => dead.primary = Some(line),
            }
        }
        dead
    }
}

/// The checks through Pub/Sub: read-back, publish, the probe on the validation, acceptance and
/// worker subscriptions.
async fn pubsub_checks(
    env: &Environment,
    topology: &Topology,
    probe_attribute: Option<&str>,
    run_id: &str,
    rec: &mut Recorder,
) {
    let t = Instant::now();
    let readback = readback::read_back_pubsub(&env.pubsub, topology).await;
    // The worker identity holds publisher/subscriber only, which does not include reading a
    // subscription's settings: against GCP that is expected, and the Terraform policy checks
    // cover the settings instead.
    if let Err(e) = &readback
        && !env.pubsub.is_emulator()
        && e.to_string()
            .to_ascii_uppercase()
            .contains("PERMISSION_DENIED")
    {
        rec.record(
            "subscriptions match the Terraform",
            t,
            Ok(Verdict::Skipped(
                "this identity may not read subscription settings (needs roles/pubsub.viewer); the Terraform policy checks cover them".into(),
            )),
        );
    } else {
        rec.record(
            "subscriptions match the Terraform",
            t,
            readback.map_err(anyhow::Error::from).and_then(|diffs| {
                if diffs.is_empty() {
                    Ok(Verdict::Pass(format!(
                        "{} subscriptions: ordering, dead-letter after {} attempts, retry, filters",
                        topology.subscriptions.len(),
                        topology
                            .subscriptions
                            .iter()
                            .find_map(|s| s.dead_letter.as_ref().map(|d| d.max_delivery_attempts))
                            .unwrap_or(0)
                    )))
                } else {
                    Err(anyhow!("{}", diffs.join("; ")))
                }
            }),
        );
    }

    let t = Instant::now();
    let published = publish_probe(env, topology, probe_attribute, run_id).await;
    let publish_ok = published.is_ok();
    let publish_check = format!(
        "publish a probe to {}",
        raw_topic(topology).unwrap_or_else(|_| "the raw topic".into())
    );
    rec.record(
        &publish_check,
        t,
        published.map(|id| Verdict::Pass(format!("message id {id}"))),
    );

    let t = Instant::now();
    let received = if publish_ok {
        receive_probe(env, topology, probe_attribute, run_id).await
    } else {
        Err(anyhow!("not attempted: the probe was not published"))
    };
    let received_ok = received.is_ok();
    rec.record(
        "read the probe from the validation subscription",
        t,
        received,
    );

    // In dev and staging the probe also reaches the acceptance subscriptions (they select
    // probes too): it is acknowledged there, so the run leaves nothing behind.
    if acceptance_on_raw(topology).next().is_some() {
        let t = Instant::now();
        let drained = if publish_ok {
            acknowledge_on_acceptance(env, topology, probe_attribute, run_id).await
        } else {
            Err(anyhow!("not attempted: the probe was not published"))
        };
        rec.record(
            "the probe is acknowledged on the acceptance subscriptions",
            t,
            drained,
        );
    }

    let t = Instant::now();
    // "Not seen" is evidence only if the probe was there to be seen: it reached the
    // validation subscription of the same topic.
    let filtered = if received_ok {
        probe_kept_from_worker(env, topology, probe_attribute, run_id).await
    } else {
        Err(anyhow!(
            "not attempted: the probe was not read from the validation subscription, so its absence elsewhere would prove nothing"
        ))
    };
    rec.record("the worker subscription does not see probes", t, filtered);
}

fn probe_message(probe_attribute: Option<&str>, run_id: &str) -> anyhow::Result<Message> {
    let attribute = probe_attribute.ok_or_else(|| {
        anyhow!("the Terraform declares no probe filter on a validation subscription")
    })?;
    Ok(Message::new()
        .set_data(serde_json::json!({ "probe": run_id }).to_string())
        .set_ordering_key(format!("probe-{run_id}"))
        .set_attributes([(attribute.to_string(), run_id.to_string())]))
}

async fn publish_probe(
    env: &Environment,
    topology: &Topology,
    probe_attribute: Option<&str>,
    run_id: &str,
) -> anyhow::Result<String> {
    let publisher = env.pubsub.publisher(&raw_topic(topology)?).await?;
    let message = probe_message(probe_attribute, run_id)?;
    let id = tokio::time::timeout(PROBE_TIMEOUT, publisher.publish(message))
        .await
        .map_err(|_| anyhow!("publish did not complete within {PROBE_TIMEOUT:?}"))??;
    Ok(id)
}

fn raw_topic(topology: &Topology) -> anyhow::Result<String> {
    topology
        .validation_subscription()
        .map(|s| s.topic.clone())
        .ok_or_else(|| anyhow!("the Terraform declares no validation subscription"))
}

async fn receive_probe(
    env: &Environment,
    topology: &Topology,
    probe_attribute: Option<&str>,
    run_id: &str,
) -> anyhow::Result<Verdict> {
    let attribute = probe_attribute.unwrap_or_default();
    let subscription = topology
        .validation_subscription()
        .ok_or_else(|| anyhow!("the Terraform declares no validation subscription"))?;
    let subscriber = env.pubsub.subscriber().await?;
    let mut stream = subscriber
        .subscribe(env.pubsub.subscription_path(&subscription.name))
        .build();
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut others = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(remaining, stream.next())
            .await
            .map_err(|_| anyhow!("no probe within {PROBE_TIMEOUT:?} on {}", subscription.name))?;
        let (message, handler) = next
            .ok_or_else(|| anyhow!("the stream on {} ended", subscription.name))?
            .context("streaming pull")?;
        let is_probe = message.attributes.contains_key(attribute);
        let is_ours = message.attributes.get(attribute).map(String::as_str) == Some(run_id);
        if is_ours || is_probe {
            // Probes from earlier runs are acknowledged too: they exist only to be read.
            handler.ack();
        } else {
            // Real traffic on a validation subscription means its filter is not applied.
            handler.nack();
            others += 1;
        }
        if is_ours {
            let data: serde_json::Value =
                serde_json::from_slice(&message.data).context("probe payload")?;
            if data["probe"] != run_id {
                bail!("probe arrived with a different payload: {data}");
            }
            let detail = format!("received and acknowledged on {}", subscription.name);
            if others > 0 && env.pubsub.is_google_emulator() {
                return Ok(Verdict::Divergence(filter_divergence(format!(
                    "{others} non-probe message(s) delivered on the probe-only subscription {}",
                    subscription.name
                ))));
            }
            if others > 0 {
                bail!(
                    "{others} non-probe message(s) reached {}: its filter is not applied",
                    subscription.name
                );
            }
            return Ok(Verdict::Pass(detail));
        }
    }
}

fn acceptance_on_raw(topology: &Topology) -> impl Iterator<Item = &rig_topology::Subscription> {
    let raw = raw_topic(topology).unwrap_or_default();
    topology
        .subscriptions
        .iter()
        .filter(move |s| s.topic == raw && s.is_acceptance())
}

/// Reads each acceptance subscription on the raw topic until this run's probe arrives and
/// acknowledges it. Other messages are released (nacked) for their own runs.
async fn acknowledge_on_acceptance(
    env: &Environment,
    topology: &Topology,
    probe_attribute: Option<&str>,
    run_id: &str,
) -> anyhow::Result<Verdict> {
    let attribute = probe_attribute.unwrap_or_default();
    let subscriber = env.pubsub.subscriber().await?;
    let mut names = Vec::new();
    for subscription in acceptance_on_raw(topology) {
        let mut stream = subscriber
            .subscribe(env.pubsub.subscription_path(&subscription.name))
            .build();
        let deadline = Instant::now() + PROBE_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(remaining, stream.next())
                .await
                .map_err(|_| {
                    anyhow!(
                        "the probe did not arrive on {} within {PROBE_TIMEOUT:?}; it stays there unacknowledged",
                        subscription.name
                    )
                })?;
            let (message, handler) = next
                .ok_or_else(|| anyhow!("the stream on {} ended", subscription.name))?
                .context("streaming pull")?;
            if message.attributes.get(attribute).map(String::as_str) == Some(run_id) {
                handler.ack();
                names.push(subscription.name.clone());
                break;
            }
            handler.nack();
        }
    }
    Ok(Verdict::Pass(format!(
        "acknowledged on {}",
        names.join(", ")
    )))
}

fn filter_divergence(observed: String) -> Divergence {
    Divergence {
        service: "pubsub-emulator".into(),
        feature: "subscription filter".into(),
        observed,
        real_service: "delivers only matching messages and acknowledges the rest automatically"
            .into(),
    }
}

/// On the emulator, reads the worker subscription briefly to see whether the probe leaks into
/// it. Against GCP the worker subscription carries real traffic, so it is not touched: the
/// filter read back from the service (previous check) is the evidence there.
async fn probe_kept_from_worker(
    env: &Environment,
    topology: &Topology,
    probe_attribute: Option<&str>,
    run_id: &str,
) -> anyhow::Result<Verdict> {
    let raw = raw_topic(topology)?;
    let worker = topology
        .worker_subscription(&raw)
        .ok_or_else(|| anyhow!("the Terraform declares no worker subscription on {raw}"))?;
    if !env.pubsub.is_emulator() {
        return Ok(Verdict::Skipped(format!(
            "{} carries real traffic; its filter was read back from the service",
            worker.name
        )));
    }
    let attribute = probe_attribute.unwrap_or_default();
    let subscriber = env.pubsub.subscriber().await?;
    let mut stream = subscriber
        .subscribe(env.pubsub.subscription_path(&worker.name))
        .build();
    let deadline = Instant::now() + WORKER_WINDOW;
    loop {
        let next = match tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            stream.next(),
        )
        .await
        {
            Err(_) => break,
            Ok(None) => bail!(
                "the stream on {} ended within {WORKER_WINDOW:?}: nothing was shown either way",
                worker.name
            ),
            Ok(Some(next)) => next.context("streaming pull")?,
        };
        let (message, handler) = next;
        if message.attributes.contains_key(attribute) {
            // The worker drops probe-marked messages itself, as this does.
            handler.ack();
            if message.attributes.get(attribute).map(String::as_str) == Some(run_id) {
                if !env.pubsub.is_google_emulator() {
                    bail!(
                        "the probe was delivered on {} despite its filter `{}`",
                        worker.name,
                        worker.filter.clone().unwrap_or_default()
                    );
                }
                return Ok(Verdict::Divergence(filter_divergence(format!(
                    "the probe was delivered on {} despite its filter `{}`",
                    worker.name,
                    worker.filter.clone().unwrap_or_default()
                ))));
            }
        } else {
            handler.nack();
        }
    }
    // Silence is evidence only from a service that was there to speak: the streaming client
    // retries a lost connection quietly, so ask the service about the subscription itself.
    let path = env.pubsub.subscription_path(&worker.name);
    env.pubsub
        .subscription_admin()
        .await?
        .get_subscription()
        .set_subscription(path.clone())
        .send()
        .await
        .map_err(|e| {
            env.pubsub
                .request_error(format!("asking for {path} after the wait"), e)
        })?;
    Ok(Verdict::Pass(format!(
        "no probe on {} within {}s; the service answered for it",
        worker.name,
        WORKER_WINDOW.as_secs()
    )))
}

async fn insert_dummy_row(env: &Environment, run_id: &str) -> anyhow::Result<Verdict> {
    let store = tokio::time::timeout(CONNECT_TIMEOUT, EventStore::connect(&env.event_store, 2))
        .await
        .map_err(|_| anyhow!("the event store did not answer within {CONNECT_TIMEOUT:?}"))?
        .with_context(|| {
            format!(
                "connecting as {} to {}",
                env.event_store.username, env.event_store.database
            )
        })?;
    let event = NewEvent {
        account_id: "backbone-validation".into(),
        event_id: uuid::Uuid::new_v4(),
        aggregate_type: "backbone_probe".into(),
        aggregate_id: run_id.into(),
        payload: serde_json::json!({ "probe": run_id, "source": "rig validate" }).to_string(),
        created_at: chrono::Utc::now(),
    };
    let first = store.append(&event).await?;
    if first != Appended::Stored {
        bail!("a fresh event was reported as {first:?}");
    }
    let replay = store.append(&event).await?;
    if replay != Appended::AlreadyStored {
        bail!("a replay was reported as {replay:?}, not as already stored");
    }
    let found = store.find(&[event.event_id]).await?;
    let row = found
        .get(&event.event_id)
        .ok_or_else(|| anyhow!("the row was not read back"))?;
    Ok(Verdict::Pass(format!(
        "row id {} as {}; replay reported as already stored",
        row.id, env.event_store.username
    )))
}

/// Tries to change and remove the validation's own dummy rows, inside a transaction that is
/// always rolled back: even against a ledger whose grants and triggers were lost, this check
/// can never change real events.
async fn ledger_is_append_only(env: &Environment) -> anyhow::Result<Verdict> {
    let mut conn = connect(&env.event_store).await?;
    let mut refused = Vec::new();
    for sql in [
        "UPDATE event_store SET aggregate_id = aggregate_id WHERE aggregate_type = 'backbone_probe'",
        "DELETE FROM event_store WHERE aggregate_type = 'backbone_probe'",
    ] {
        let mut tx = conn.begin().await?;
        let result = sqlx::query(sql).execute(&mut *tx).await;
        tx.rollback().await?;
        match result {
            Ok(done) => bail!(
                "`{sql}` was allowed for {} ({} rows; rolled back)",
                env.event_store.username,
                done.rows_affected()
            ),
            Err(e) => match refusal::refused_by_server(&e, TRIGGER_REFUSAL) {
                Some((number, reason)) => refused.push(format!("{number} ({reason})")),
                None => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "`{sql}` failed without the server refusing it: nothing was shown"
                    )));
                }
            },
        }
    }
    conn.close().await?;
    Ok(Verdict::Pass(format!(
        "refused with errors {}",
        refused.join(", ")
    )))
}

/// One connection, given up after 15 s (an unreachable private IP would otherwise wait for the
/// operating system's TCP timeout).
async fn connect(
    config: &rig_events::event_store::DbConfig,
) -> anyhow::Result<sqlx::MySqlConnection> {
    tokio::time::timeout(CONNECT_TIMEOUT, config.connect_options().connect())
        .await
        .map_err(|_| {
            anyhow!(
                "no answer from {}:{} within {CONNECT_TIMEOUT:?} (against Cloud SQL, run from a machine on the VPC)",
                config.host,
                config.port
            )
        })?
        .with_context(|| format!("connecting as {} to {}:{}/{}", config.username, config.host, config.port, config.database))
}

async fn worker_refused_on_primary(env: &Environment) -> anyhow::Result<Verdict> {
    let worker_on_primary = rig_events::event_store::DbConfig {
        username: env.event_store.username.clone(),
        password: env.event_store.password.clone(),
        ..env.primary.clone()
    };
    let attempt = tokio::time::timeout(
        CONNECT_TIMEOUT,
        worker_on_primary.connect_options().connect(),
    )
    .await
    .map_err(|_| anyhow!("the primary did not answer within {CONNECT_TIMEOUT:?}"))?;
    match attempt {
        Ok(conn) => {
            let _ = conn.close().await;
            bail!(
                "{} could connect to the primary database {}",
                env.event_store.username,
                env.primary.database
            )
        }
        Err(e) => match refusal::refused_by_server(&e, &[]) {
            Some((number, reason)) => Ok(Verdict::Pass(format!(
                "refused by the server: error {number} ({reason})"
            ))),
            None => Err(anyhow::Error::new(e).context(format!(
                "could not ask the primary at {}:{} whether it refuses {}: only the server's refusal shows it",
                env.primary.host, env.primary.port, env.event_store.username
            ))),
        },
    }
}

/// What "untouched" is measured by: every table's checksum, and the server's uptime (a restart
/// resets it).
#[derive(Debug)]
struct PrimarySnapshot {
    tables: BTreeMap<String, Option<i64>>,
    uptime: u64,
}

impl PrimarySnapshot {
    fn unchanged_to(&self, after: &PrimarySnapshot) -> anyhow::Result<Verdict> {
        if after.uptime < self.uptime {
            bail!(
                "the primary server restarted (uptime {}s, was {}s)",
                after.uptime,
                self.uptime
            );
        }
        if self.tables != after.tables {
            bail!(
                "the primary's tables changed: before {:?}, after {:?}",
                self.tables,
                after.tables
            );
        }
        let compared = if self.tables.values().any(Option::is_some) {
            "table checksum(s) identical"
        } else {
            "table(s) still there (a live primary's data is not compared)"
        };
        Ok(Verdict::Pass(format!(
            "{} {compared}; up {}s without restart",
            self.tables.len(),
            after.uptime
        )))
    }
}

/// On a primary the rig owns, every table's checksum; on a live one (`--target env`) only
/// the table list and uptime: its data changes under the app, and checksums would scan it all.
async fn primary_snapshot(env: &Environment) -> anyhow::Result<PrimarySnapshot> {
    let mut conn = connect(&env.primary_admin)
        .await
        .context("connecting to the primary database")?;
    let checksums = env.capabilities.owns_primary;
    let names: Vec<String> = sqlx::query("SHOW TABLES")
        .fetch_all(&mut conn)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
    let mut tables = BTreeMap::new();
    for name in names {
        if !checksums {
            tables.insert(name, None);
            continue;
        }
        let row = sqlx::query(rig_events::event_store::trusted_sql(format!(
            "CHECKSUM TABLE `{}`",
            name.replace('`', "``")
        )))
        .fetch_one(&mut conn)
        .await?;
        tables.insert(name, row.try_get::<Option<i64>, _>(1)?);
    }
    let uptime: String = sqlx::query("SHOW GLOBAL STATUS LIKE 'Uptime'")
        .fetch_one(&mut conn)
        .await?
        .try_get(1)?;
    conn.close().await?;
    Ok(PrimarySnapshot {
        tables,
        // An uptime that cannot be read would make "not restarted" true of anything.
        uptime: uptime
            .parse()
            .with_context(|| format!("the primary reported uptime {uptime:?}"))?,
    })
}

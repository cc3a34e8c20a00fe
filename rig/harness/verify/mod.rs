//! `rig verify`: any worker command checked black-box against an isolated, provisioned
//! backbone, in the manner of Jepsen and Maelstrom. A seed expands to a plan (the workload and
//! a fault schedule triggered by progress) or a plan file is replayed; the backbone comes up
//! on the local or containers target; the worker runs as N child processes with the
//! environment `rig up` exports; the workload is published as a SuiteX producer would; the
//! faults are injected from outside as the run reaches their triggers; everything our Pub/Sub
//! service sees is recorded; once everything has healed and gone quiet the ledger,
//! `events.merged`, `events.dlq` and the primary are read; and rig-verify's checker — a pure
//! function of the saved history and snapshot — judges the run.
//!
//! [`run`] is the entry point for the CLI and for Rust tests. It returns an [`Outcome`]
//! (passed or not: exit 0 or 1) or an [`Error`] when the run could not be made (bad input, a
//! worker that never gets ready: exit 2). Whatever happens — also when the future is dropped
//! on a signal — the workers, the services and the backbone's temp dir go with it; the output
//! directory stays.
//!
//! Concerns, one file each: the worker's processes (`worker_process`), the workload
//! (`workload`, `poison`), the fault schedule (`faults`), the history (`recorder`,
//! `journal`), the stores (`snapshot`), where the run stands (`live`).
//!
//! Architecture invariant: data flows one way — this module uses the targets, the
//! environment and the backbone; nothing below it imports it.

mod faults;
mod journal;
mod live;
mod names;
pub mod poison;
mod recorder;
mod snapshot;
mod task;
mod worker_process;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use rig_events::pubsub::PubsubImplementation;
use rig_topology::Topology;
use rig_verify::history::{Event, Header, History, Primary, Progress, Snapshot, Timings};
use rig_verify::plan::{Fixtures, Plan, PlanConfig};
use rig_verify::{Verdict, report};

pub use faults::Injected;
pub use worker_process::{WorkerCommand, WorkerError};

use crate::backbone::Backbone;
use crate::targets::TargetKind;
use journal::{Journal, now_ms};
use live::Live;
use names::Names;
use recorder::Recorder;
use worker_process::SharedWorkers;
use workload::Gate;

/// What `--target gcp` would mean, and why it is refused.
pub const GCP_REFUSAL: &str = "rig verify --target gcp is refused: a run injects faults from outside (it kills the worker and the event store, freezes GCS, sets fault labels on the raw subscription) and records what our own Pub/Sub service sees, and neither is possible on GCP. Without injected faults, a worker is checked on GCP through the acceptance resources of dev and staging: `rig validate --target gcp` and `rig scenarios --target gcp --environment staging --project PROJECT` do it for the reference worker (docs/gcp.md); docs/bring-your-own-worker.md (\"On GCP\") says how a worker of your own is checked there. For rig verify use --target local or --target containers.";

/// Where the plan comes from.
#[derive(Debug, Clone)]
pub enum PlanSource {
    /// Expanded from a seed (`--seed`, `--events`).
    Seed { seed: u64, config: PlanConfig },
    /// Replayed from a plan file (`--plan`).
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The worker's command line, run by `sh -c` in `workdir`.
    pub worker: String,
    pub replicas: u32,
    pub plan: PlanSource,
    /// `local`, `containers` or `auto`.
    pub target: TargetKind,
    /// The Terraform the backbone is provisioned from (its raw subscription's ack deadline
    /// becomes the plan's, so that a freeze lasts past it).
    pub topology: Topology,
    /// Where the run's files go: plan.json, history.jsonl, snapshot.json, summary.txt,
    /// junit.xml, results.json, run.svg and the worker's stdout/stderr.
    pub out: PathBuf,
    /// A line on the worker's stdout that says it is ready, besides its first pull.
    pub ready_line: Option<String>,
    /// How long the worker may take to get ready (each start).
    pub ready_timeout: Duration,
    /// The directory the worker runs in.
    pub workdir: PathBuf,
    /// The repository's `fixtures/` (NetSuite records and the poison corpus).
    pub fixtures: PathBuf,
    /// How the replay command starts (`rig verify`).
    pub program: String,
}

impl Options {
    /// The defaults: one replica, seed 1 with the default plan (about 10,000 events, every
    /// fault kind once), the local target, `READY` as the ready line, 60 s to get ready, run
    /// from the repository's root.
    pub fn new(worker: &str, topology: Topology, out: &Path) -> Self {
        let root = rig_topology::repository_root();
        Self {
            worker: worker.to_string(),
            replicas: 1,
            plan: PlanSource::Seed {
                seed: 1,
                config: PlanConfig::default(),
            },
            target: TargetKind::Local,
            topology,
            out: out.to_path_buf(),
            ready_line: Some("READY".into()),
            ready_timeout: Duration::from_secs(60),
            fixtures: root.join("fixtures"),
            workdir: root,
            program: "rig verify".into(),
        }
    }
}

/// Why a run could not be made (exit status 2). A run that was made and found anomalies is
/// an [`Outcome`] that did not pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The inputs are wrong; nothing was started.
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error("the verify run failed: {0:#}")]
    Run(#[source] anyhow::Error),
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Error::Run(e)
    }
}

/// A run that was made, and its verdict.
#[derive(Debug)]
pub struct Outcome {
    pub verdict: Verdict,
    /// What summary.txt says: a line per property, the anomalies, notes, the replay command.
    pub summary: String,
    pub replay: String,
    pub out: PathBuf,
    /// How long each phase took.
    pub phases: Vec<(&'static str, Duration)>,
    pub faults: Vec<Injected>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.verdict.passed()
    }

    /// 0 when every property passed, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.passed() { 0 } else { 1 }
    }
}

/// `'…'` for a POSIX shell.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The command that replays this run from its plan file.
fn replay_command(options: &Options, plan_file: &Path) -> String {
    let mut command = format!(
        "{} --worker {} --plan {} --target {}",
        options.program,
        quoted(&options.worker),
        quoted(&plan_file.display().to_string()),
        options.target
    );
    if options.replicas != 1 {
        command.push_str(&format!(" --replicas {}", options.replicas));
    }
    match &options.ready_line {
        Some(line) if line != "READY" => {
            command.push_str(&format!(" --ready-line {}", quoted(line)))
        }
        None => command.push_str(" --no-ready-line"),
        Some(_) => {}
    }
    command
}

/// The plan, from its seed or its file, checked against the fixtures.
fn load_plan(options: &Options, fixtures: &Fixtures) -> Result<Plan, Error> {
    match &options.plan {
        PlanSource::Seed { seed, config } => Ok(Plan::generate(*seed, config, fixtures)),
        PlanSource::File(path) => {
            let plan = Plan::load(path).map_err(|e| {
                Error::BadInput(format!(
                    "the plan file does not parse: {e}. A plan file is what `rig verify --out DIR` wrote to DIR/plan.json"
                ))
            })?;
            plan.check_against(fixtures, path)
                .map_err(|e| Error::BadInput(e.to_string()))?;
            Ok(plan)
        }
    }
}

fn check_target(target: TargetKind) -> Result<(), Error> {
    match target {
        TargetKind::Local | TargetKind::Containers | TargetKind::Auto => Ok(()),
        TargetKind::Gcp => Err(Error::BadInput(GCP_REFUSAL.into())),
        TargetKind::Env => Err(Error::BadInput(
            "rig verify brings up its own isolated backbone: use --target local or --target containers (a backbone you run yourself is validated with `rig validate --target env`)".into(),
        )),
    }
}

/// The topology as the run provisions it: the raw subscription's ack deadline is the plan's.
fn run_topology(options: &Options, plan: &Plan, names: &Names) -> Topology {
    let mut topology = options.topology.clone();
    let seconds = (plan.generated_with.ack_deadline_ms / 1000).clamp(10, 600) as u32;
    for s in &mut topology.subscriptions {
        if s.name == names.raw_subscription {
            s.ack_deadline_seconds = seconds;
        }
    }
    topology
}

struct Phases {
    started: Instant,
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            done: Vec::new(),
        }
    }

    fn end(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.done.push((phase, now - self.last));
        self.last = now;
    }

    fn finish(mut self) -> Vec<(&'static str, Duration)> {
        let total = self.started.elapsed();
        self.done.push(("total", total));
        self.done
    }
}

/// Merges the service's records and the runner's journal by time (the service's first on a
/// tie: a runner record is placed after what the service did in the same millisecond).
fn assemble(header: Header, service: Vec<(u64, Event)>, mut runner: Vec<(u64, Event)>) -> History {
    runner.sort_by_key(|(at, _)| *at);
    let mut history = History::new(header);
    history.records.reserve(service.len() + runner.len());
    let mut runner = runner.into_iter().peekable();
    for (at, event) in service {
        while let Some((r_at, r_event)) = runner.next_if(|(r_at, _)| *r_at < at) {
            history.push(r_at, r_event);
        }
        history.push(at, event);
    }
    for (at, event) in runner {
        history.push(at, event);
    }
    history
}

/// Brings the backbone up, runs the worker under the plan, and judges the run.
pub async fn run(options: &Options) -> Result<Outcome, Error> {
    let mut phases = Phases::new();
    check_target(options.target)?;
    if options.replicas == 0 {
        return Err(Error::BadInput("--replicas must be at least 1".into()));
    }
    let fixtures = Fixtures::load(&options.fixtures).map_err(|e| {
        Error::BadInput(format!(
            "reading the fixtures: {e} (the NetSuite records and the poison corpus of the repository's fixtures/)"
        ))
    })?;
    let plan = load_plan(options, &fixtures)?;
    let command = WorkerCommand::parse(&options.worker, &options.workdir)?;
    let names_here = Names::new(&options.topology, "")
        .map_err(|e| Error::BadInput(format!("the Terraform: {e:#}")))?;
    let topology = run_topology(options, &plan, &names_here);
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating the output directory {}", options.out.display()))?;
    let out = options
        .out
        .canonicalize()
        .with_context(|| format!("resolving {}", options.out.display()))?;
    let plan_file = out.join("plan.json");
    if !matches!(&options.plan, PlanSource::File(p) if p.canonicalize().is_ok_and(|p| p == plan_file))
    {
        plan.save(&plan_file)
            .with_context(|| format!("writing {}", plan_file.display()))?;
    }
    let replay = replay_command(options, &plan_file);
    phases.end("plan");

    let (backbone, deployment) = Backbone::up(options.target, "verify", &topology)
        .await
        .context("bringing up the backbone")?;
    let env = &deployment.environment;
    if env.pubsub.implementation != PubsubImplementation::PubsubService {
        return Err(Error::BadInput(format!(
            "rig verify records what the Pub/Sub service sees and injects Pub/Sub faults through it: that needs our own Pub/Sub service, and this backbone runs {}. Unset RIG_PUBSUB (or set it to pubsub-service)",
            env.pubsub.implementation
        )));
    }
    let endpoint = env
        .pubsub
        .endpoint
        .clone()
        .context("the backbone's Pub/Sub has no endpoint")?;
    let names = Names::new(&topology, &env.pubsub.project_id)?;
    phases.end("backbone up");

    let producer = rig_events::producer::Producer::connect(&env.connections(), &names.raw_topic)
        .await?
        .with_threshold(rig_verify::plan::CLAIM_CHECK_THRESHOLD as usize);
    let corpus = options.fixtures.join("bad");
    let workload = workload::prepare(&plan, &fixtures, &corpus, &producer, &env.bucket).await?;
    let annotations = Arc::new(workload.annotations.clone());
    let recorder = Recorder::start(&endpoint, names.clone(), annotations).await?;
    let merged_tap = snapshot::Tap::start(env, &names.merged_topic).await?;
    let dead_letter_tap = snapshot::Tap::start(env, &names.dead_letter_topic).await?;
    let primary_before = snapshot::primary(&env.primary_admin).await?;
    let labels = faults::SubscriptionLabels::read(&endpoint, &names.raw_subscription_path).await?;
    phases.end("workload prepared");

    let journal = Journal::default();
    let worker_env = env.worker_env_vars(&options.topology)?;
    let workers: SharedWorkers = std::sync::Mutex::new(worker_process::Workers::new(
        worker_process::WorkerSpec {
            command,
            env: worker_env,
            workdir: options.workdir.clone(),
            out: out.clone(),
            ready_line: options.ready_line.clone(),
            ready_timeout: options.ready_timeout,
            subscription: names.raw_subscription.clone(),
        },
        options.replicas,
        journal.clone(),
    ));
    let started_at_ms = now_ms();
    let pulled = |since| recorder.with(|o| o.pulled_since(since));
    for replica in 0..options.replicas {
        worker_process::start_ready(&workers, replica, pulled).await?;
    }
    phases.end("worker ready");

    let live = Live::new(&plan);
    let schedule = faults::Schedule {
        control: backbone.control(),
        labels: &labels,
        workers: &workers,
        recorder: &recorder,
        journal: &journal,
        live: &live,
        keys: plan.aggregates.iter().map(|a| a.ordering_key()).collect(),
        term_grace: Duration::from_secs(15),
    };
    let gate = |published: u64| {
        if live.since_progress_ms(&recorder) > live.drain_bound.as_millis() as u64 {
            Gate::GiveUp
        } else if live.may_publish(&recorder, published) {
            Gate::Publish
        } else {
            Gate::Wait
        }
    };
    let work = async {
        let (_, injected) = tokio::try_join!(
            workload::publish(&workload, &producer, &live.publishing, gate),
            schedule.run(&plan.faults),
        )?;
        if plan.faults.is_empty() {
            live.healed_at_ms.store(now_ms(), Ordering::SeqCst);
        }
        let drained = wait_for_the_end(&live, &recorder).await;
        Ok::<_, anyhow::Error>((injected, drained))
    };
    let sample = sample_ledger(env, &live, &journal, &recorder);
    let supervise = supervise(&workers, &recorder);
    let (injected, drained_at_ms) = tokio::select! {
        r = work => r?,
        r = sample => return Err(Error::Run(r)),
        r = supervise => return Err(Error::Run(r)),
    };
    phases.end("workload, faults and drain");

    for replica in 0..options.replicas {
        worker_process::stop(&workers, replica, Duration::from_secs(15)).await;
    }
    let ended_at_ms = now_ms();
    let tap_quiet = live.quiet.min(Duration::from_secs(1));
    let merged = merged_tap.drain(tap_quiet, Duration::from_secs(30)).await?;
    let dead_letters = dead_letter_tap
        .drain(tap_quiet, Duration::from_secs(30))
        .await?;
    let ledger = snapshot::ledger(&env.event_store_admin).await?;
    let primary_after = snapshot::primary(&env.primary_admin).await?;
    let observed = recorder.finish().await?;
    drop(backbone);
    phases.end("stop and snapshot");

    let header = Header {
        version: rig_verify::history::VERSION,
        seed: Some(plan.seed),
        raw_topic: names.raw_topic.clone(),
        raw_subscription: names.raw_subscription.clone(),
        merged_topic: names.merged_topic.clone(),
        dead_letter_topic: names.dead_letter_topic.clone(),
        max_delivery_attempts: names.max_delivery_attempts,
        drain_bound_ms: plan.settle.drain_bound_ms,
        worker: Some(options.worker.clone()),
        replay: Some(replay.clone()),
    };
    let history = assemble(header, observed.records, journal.take());
    let healed = live.healed_at_ms.load(Ordering::SeqCst);
    let snapshot = Snapshot {
        version: rig_verify::history::VERSION,
        ledger,
        merged,
        dead_letters,
        primary: Primary {
            before: primary_before,
            after: primary_after,
        },
        timings: Timings {
            started_at_ms,
            ended_at_ms,
            faults_healed_at_ms: (!plan.faults.is_empty() && healed > 0).then_some(healed),
            backlog_drained_at_ms: drained_at_ms,
            raw_backlog_at_end: None,
        },
    };
    history
        .save(&out.join("history.jsonl"))
        .map_err(|e| Error::Run(e.into()))?;
    snapshot
        .save(&out.join("snapshot.json"))
        .map_err(|e| Error::Run(e.into()))?;
    let verdict = rig_verify::check(&history, &snapshot);
    let suite = format!("rig verify: {}", options.worker);
    report::write_all(&out, &verdict, &suite, &replay).map_err(|e| Error::Run(e.into()))?;
    let mut summary = report::summary(&verdict, &replay);
    let notes = notes(&injected, &live, &history);
    if !notes.is_empty() {
        // The replay line stays last.
        let replay_line = summary.lines().last().unwrap_or_default().to_string();
        summary.truncate(summary.len() - replay_line.len() - 1);
        for note in &notes {
            summary.push_str(&format!("note: {note}\n"));
        }
        summary.push_str(&replay_line);
        summary.push('\n');
        std::fs::write(out.join("summary.txt"), &summary)
            .with_context(|| format!("writing {}", out.join("summary.txt").display()))?;
    }
    phases.end("check and report");
    Ok(Outcome {
        verdict,
        summary,
        replay,
        out,
        phases: phases.finish(),
        faults: injected,
    })
}

/// What the verdict does not say about how the run went.
fn notes(injected: &[Injected], live: &Live, history: &History) -> Vec<String> {
    let mut notes = Vec::new();
    for f in injected.iter().filter(|f| f.late) {
        notes.push(format!(
            "fault {}#{} fired late: its trigger was not reached, so it was injected when the run would have settled",
            f.kind, f.id
        ));
    }
    if let Ok(refused) = live.publishing.refused.lock()
        && !refused.is_empty()
    {
        notes.push(format!(
            "{} poison item(s) refused at publish by Pub/Sub (never delivered, not judged): {}",
            refused.len(),
            refused.join(", ")
        ));
    }
    let unpublished = live.publishing.unpublished.load(Ordering::SeqCst);
    if unpublished > 0 {
        notes.push(format!(
            "{unpublished} item(s) of the plan were never published: the worker stopped settling messages"
        ));
    }
    let unexpected = history
        .records
        .iter()
        .filter(|r| matches!(&r.event, Event::WorkerExit(e) if !e.expected))
        .count();
    if unexpected > 0 {
        notes.push(format!(
            "the worker exited on its own {unexpected} time(s) and was started again (see worker-N.stderr)"
        ));
    }
    notes
}

/// Until everything published is settled and quiet — or the drain bound has passed since the
/// faults healed and the producer finished (liveness then fails). Returns when it drained.
async fn wait_for_the_end(live: &Live, recorder: &Recorder) -> Option<u64> {
    loop {
        if live.drained(recorder) {
            return Some(now_ms());
        }
        let clock = live
            .healed_at_ms
            .load(Ordering::SeqCst)
            .max(live.publishing.finished_ms.load(Ordering::SeqCst));
        let limit = (live.drain_bound + live.quiet).as_millis() as u64;
        if now_ms().saturating_sub(clock) > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Samples the ledger's row count for the triggers and the picture; fails the run when the
/// service's history cannot be read.
async fn sample_ledger(
    env: &crate::environment::Environment,
    live: &Live,
    journal: &Journal,
    recorder: &Recorder,
) -> anyhow::Error {
    let mut conn = None;
    let mut last = None;
    loop {
        if let Some(failure) = recorder.with(|o| o.failure.clone()) {
            return anyhow::anyhow!(failure);
        }
        if let Some(n) =
            snapshot::ledger_count(&mut conn, &env.event_store_admin, Duration::from_secs(1)).await
        {
            live.set_stored(n);
            if last != Some(n) {
                journal.record(Event::Progress(Progress { stored: n }));
                last = Some(n);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts again a replica that exited on its own, as a deployment's supervisor would (at
/// most `MAX_RESTARTS` times); ends the run when one cannot be started.
async fn supervise(workers: &SharedWorkers, recorder: &Recorder) -> anyhow::Error {
    loop {
        for (replica, status) in worker_process::exited_on_their_own(workers) {
            tracing::warn!("worker replica {replica} exited on its own ({status})");
            if worker_process::may_restart(workers, replica) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let pulled = |since| recorder.with(|o| o.pulled_since(since));
                if let Err(e) = worker_process::start_ready(workers, replica, pulled).await {
                    return anyhow::Error::new(e).context("starting a worker that exited again");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_commands_quote_the_worker_for_the_shell() {
        let topology = Topology::of_repository("dev").expect("the dev topology");
        let mut options = Options::new("php -d x='1' w.php", topology, Path::new("/tmp/o"));
        assert_eq!(
            replay_command(&options, Path::new("/tmp/o/plan.json")),
            r"rig verify --worker 'php -d x='\''1'\'' w.php' --plan '/tmp/o/plan.json' --target local"
        );
        options.replicas = 3;
        options.ready_line = None;
        assert!(replay_command(&options, Path::new("p")).ends_with("--replicas 3 --no-ready-line"));
    }

    #[test]
    fn runner_records_go_after_the_service_records_of_their_millisecond() {
        let header = Header {
            version: 1,
            seed: None,
            raw_topic: "r".into(),
            raw_subscription: "s".into(),
            merged_topic: "m".into(),
            dead_letter_topic: "d".into(),
            max_delivery_attempts: 5,
            drain_bound_ms: 1,
            worker: None,
            replay: None,
        };
        let progress = |n| Event::Progress(Progress { stored: n });
        let history = assemble(
            header,
            vec![(10, progress(1)), (20, progress(2))],
            vec![(20, progress(100)), (5, progress(50)), (30, progress(200))],
        );
        let order: Vec<(u64, u64)> = history
            .records
            .iter()
            .map(|r| match &r.event {
                Event::Progress(p) => (r.seq, p.stored),
                _ => (0, 0),
            })
            .collect();
        assert_eq!(order, vec![(1, 50), (2, 1), (3, 2), (4, 100), (5, 200)]);
    }
}

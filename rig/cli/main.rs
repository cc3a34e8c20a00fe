//! `rig`: the backbone rig's command line. Argument parsing and printing over the library
//! crates (`rig-harness`, `rig-events`, `rig-drift`, `rig-scenarios`).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rig_events::pubsub::PubsubImplementation;
use rig_harness::backbone::Backbone;
use rig_harness::env_file::{EnvFile, Ownership};
use rig_harness::environment::shell_export;
use rig_harness::provision::DEFAULT_SCOPE;
use rig_harness::report::Outcome;
use rig_harness::targets::{GcpOptions, TargetKind};
use rig_harness::validate::{self, Check};
use rig_topology::Topology;
use scenarios::suite;

#[derive(Parser)]
#[command(
    name = "rig",
    version,
    about = "The event backbone's rig: bring it up, validate it, prove it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct TargetArgs {
    /// Which environment's Terraform to provision from (infra/terraform/envs/<ENV>).
    #[arg(long, short, default_value = "dev", env = "BACKBONE_ENVIRONMENT")]
    environment: String,
    /// Where the backbone runs: `local` (emulators + MariaDB/MySQL as processes, started here),
    /// `containers` (the same services as containers on a Docker engine: docs/containers.md),
    /// `auto` (containers when a Docker engine answers, else local), `env` (whatever the
    /// environment variables point at: a running `rig up`, or real GCP with
    /// GOOGLE_CLOUD_PROJECT, Application Default Credentials and DB_EVENT_STORE_*/DB_*) or
    /// `gcp` (the Terraform's deployment in --project, through its acceptance resources in dev
    /// and staging: docs/gcp.md).
    #[arg(long, default_value = "local", env = "RIG_TARGET")]
    target: TargetKind,
    /// With `--target gcp`: the GCP project (must be the one envs/<ENV>/terraform.tfvars names).
    #[arg(long, env = "GOOGLE_CLOUD_PROJECT")]
    project: Option<String>,
    /// With `--target gcp`: allow prod, where only read-only checks run.
    #[arg(long)]
    allow_prod: bool,
    /// With `--target gcp` (dev, staging): also prove ordered dead-lettering on the real
    /// service through the acceptance subscriptions; waits up to this many seconds (staging's
    /// 10-600 s backoff needs a few minutes).
    #[arg(long, value_name = "SECONDS")]
    dead_letter: Option<u64>,
    /// The local target's Pub/Sub: `pubsub-service` (our own, in process) or
    /// `google-emulator` (Google's, from the Cloud CLI; needs Java).
    #[arg(long, default_value = "pubsub-service", env = "RIG_PUBSUB")]
    pubsub: PubsubImplementation,
}

// What each command's `--help` says its exit status means. Throughout: 1 means the thing
// under test failed, 2 that the command could not run it (`rig drift` kept its 0/1/2).
const UP_EXIT: &str = concat!(
    "Exit status:\n",
    "  0    stopped by SIGINT, SIGTERM or SIGHUP once up: every process stopped, the temp dir and the env file removed\n",
    "  2    refused or could not start: bad arguments, an --env-file another running backbone owns or a directory that cannot take it, a target that starts nothing, a service that would not start\n",
    "  130, 143, 129  a signal during start-up: whatever had started is stopped, its temp dir removed"
);
const VALIDATE_EXIT: &str = concat!(
    "Exit status:\n",
    "  0    every check passed (a known divergence or a skipped check is not a failure)\n",
    "  1    a check failed\n",
    "  2    nothing was checked: bad arguments, a stale environment, an endpoint that does not answer, no Google credentials, a backbone that would not start\n",
    "  130, 143, 129  interrupted by SIGINT, SIGTERM or SIGHUP; whatever the command started is stopped and its temp dirs removed"
);
const SCENARIOS_EXIT: &str = concat!(
    "Exit status:\n",
    "  0    nothing failed (a divergence or a scenario not run on this target is not a failure)\n",
    "  1    a scenario or mutation test failed, or the acceptance subscriptions could not be drained\n",
    "  2    refused before running: `--target env`, `--cases 0`, an unknown name, an endpoint that does not answer, no Google credentials, a backbone that would not start\n",
    "  130, 143, 129  interrupted by SIGINT, SIGTERM or SIGHUP: the backbone is stopped and its datadir removed"
);
const WORKER_EXIT: &str = concat!(
    "Exit status:\n",
    "  0    stopped by SIGINT, SIGTERM or SIGHUP after finishing the messages in hand\n",
    "  2    not started: a variable unset or invalid (each one named), a stale environment, an endpoint that does not answer, no Google credentials, a login the event store refuses\n",
    "  130, 143, 129  a signal during those start-up checks"
);
const DRIFT_EXIT: &str = concat!(
    "Exit status:\n",
    "  0    everything matches\n",
    "  1    drift: a live field differs from the Terraform (or a grant from the migrations)\n",
    "  2    something could not be read, or nothing was: refused arguments, an endpoint that does not answer, no Google credentials\n",
    "  130, 143, 129  interrupted by SIGINT, SIGTERM or SIGHUP"
);
const PROVISION_EXIT: &str = concat!(
    "Exit status:\n",
    "  0    provisioned; the `export` lines are on stdout\n",
    "  2    bad arguments, RIG_MYSQL_ROOT_PASSWORD unset, a service that does not answer within --wait-for-services (each one named), or provisioning failed\n",
    "  130, 143, 129  interrupted by SIGINT, SIGTERM or SIGHUP (the stack keeps running, perhaps half provisioned: compose/up.sh starts it afresh)"
);
const TOPOLOGY_EXIT: &str = concat!(
    "Exit status:\n",
    "  0    printed\n",
    "  2    the Terraform could not be read"
);

#[derive(Subcommand)]
enum Command {
    /// Bring the backbone up (local processes, or containers with `--target containers`),
    /// provision it from the Terraform, print `export` lines on stdout, and keep it running
    /// until Ctrl-C, SIGTERM or SIGHUP.
    #[command(after_help = UP_EXIT)]
    Up {
        #[command(flatten)]
        target: TargetArgs,
        /// Also write the `export` lines to this file (then `source` it from another shell).
        /// The file is marked with this process's pid (RIG_BACKBONE_PID) and removed when the
        /// backbone stops; a file another running backbone wrote is refused.
        #[arg(long)]
        env_file: Option<std::path::PathBuf>,
        /// Overwrite --env-file even if the backbone that wrote it is still running.
        #[arg(long, requires = "env_file")]
        replace_env_file: bool,
    },
    /// The epic's connection validation: probe through Pub/Sub, a dummy row through the
    /// event-store connection, the primary untouched.
    #[command(after_help = VALIDATE_EXIT)]
    Validate {
        #[command(flatten)]
        target: TargetArgs,
        /// Print the result as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the property-based scenarios (and with --mutations, their mutation tests) and
    /// print a results table; divergences are listed apart.
    #[command(after_help = SCENARIOS_EXIT)]
    Scenarios {
        #[command(flatten)]
        target: TargetArgs,
        /// Only these scenarios (see --list); all when none is given.
        names: Vec<String>,
        /// List the scenarios and mutations, then exit.
        #[arg(long)]
        list: bool,
        /// Also run the mutation tests (each scenario against a broken world must fail).
        #[arg(long)]
        mutations: bool,
        /// Generated cases per scenario, at least 1 (default: each scenario's own; also
        /// PROPTEST_CASES).
        #[arg(long)]
        cases: Option<u32>,
        /// Write a JUnit XML report here.
        #[arg(long)]
        junit: Option<std::path::PathBuf>,
        /// With `--target gcp`: the longest one wait of a case may take, in seconds (default
        /// from the Terraform's retry policy: 150 in dev, 420 in staging).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
        /// With `--target gcp`: at the end, drain the acceptance subscriptions until nothing of
        /// this run arrives for this many seconds (default: ack deadline + longest retry
        /// backoff + 10 s: 80 in dev, 670 in staging).
        #[arg(long, value_name = "SECONDS")]
        drain_seconds: Option<u64>,
        /// Record the scenarios' results into docs/fidelity/scenarios/ and regenerate the
        /// matrix in docs/fidelity.md (also RIG_FIDELITY_RECORD=1). `--target gcp` records the
        /// GCP column; a stand-in for GCP is never recorded.
        #[arg(long)]
        record_fidelity: bool,
    },
    /// Run the reference ingest worker against the backbone described by the environment
    /// (`rig up`'s variables, or real GCP credentials and DB_EVENT_STORE_*), until Ctrl-C,
    /// SIGTERM or SIGHUP. A dependency that does not answer, or refuses, is warned about with
    /// its cause and variable when it starts and every --warn-every seconds while it lasts.
    #[command(after_help = WORKER_EXIT)]
    Worker {
        #[arg(long, short, default_value = "dev", env = "BACKBONE_ENVIRONMENT")]
        environment: String,
        /// How often a lasting problem is warned about again, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        warn_every: u64,
    },
    /// Read the live backbone in GCP and compare every field with the Terraform (and the
    /// worker's grants with the migrations). Read-only.
    #[command(after_help = DRIFT_EXIT)]
    Drift(DriftArgs),
    /// Provision services that are already running — the compose stack `compose/up.sh` starts —
    /// from the Terraform, print the same `export` lines as `rig up`, and exit (the services
    /// keep running). The databases' root password comes from RIG_MYSQL_ROOT_PASSWORD.
    #[command(after_help = PROVISION_EXIT)]
    Provision {
        #[arg(long, short, default_value = "dev", env = "BACKBONE_ENVIRONMENT")]
        environment: String,
        /// The Pub/Sub emulator, `http://HOST:PORT`.
        #[arg(long)]
        pubsub: String,
        /// fake-gcs-server, `http://HOST:PORT`.
        #[arg(long)]
        storage: String,
        /// The event store's MySQL server, `HOST:PORT`.
        #[arg(long)]
        event_store_db: String,
        /// The primary's MySQL server, `HOST:PORT`.
        #[arg(long)]
        primary_db: String,
        /// Also write the `export` lines to this file (a file a running `rig up` owns is
        /// refused).
        #[arg(long)]
        env_file: Option<std::path::PathBuf>,
        /// How long the services may take to start accepting connections (a stack just
        /// started), in seconds; past it, each that does not is named.
        #[arg(long, value_name = "SECONDS", default_value_t = 5)]
        wait_for_services: u64,
    },
    /// Check any worker command black-box: bring up an isolated backbone, run the worker as
    /// child processes, publish a seeded workload, inject faults as the run reaches their
    /// triggers, record everything, and judge the run (docs/bring-your-own-worker.md). Exit 0
    /// when every property passes, 1 when one fails, 2 when the run could not be made.
    Verify(VerifyArgs),
    /// Print the topology the rig reads from the Terraform: topics, each subscription's
    /// settings, the bucket.
    #[command(after_help = TOPOLOGY_EXIT)]
    Topology {
        #[arg(long, short, default_value = "dev", env = "BACKBONE_ENVIRONMENT")]
        environment: String,
        /// Print it as JSON, for tools.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// The worker's command line, run by `sh -c` from the repository's root, e.g.
    /// 'php laravel/bin/worker.php'.
    #[arg(long)]
    worker: String,
    /// How many copies of the worker run side by side.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// The seed the plan (workload and fault schedule) expands from (default: from the clock;
    /// the report says which).
    #[arg(long, conflicts_with = "plan")]
    seed: Option<u64>,
    /// Replay this plan file (a run's DIR/plan.json) instead of expanding a seed.
    #[arg(long)]
    plan: Option<std::path::PathBuf>,
    /// Valid events in the generated plan (producer retries and poison come on top).
    #[arg(long, conflicts_with = "plan", default_value_t = 10_000)]
    events: u64,
    /// Aggregates (ordering keys) in the generated plan.
    #[arg(long, conflicts_with = "plan")]
    aggregates: Option<u32>,
    /// Poison messages from fixtures/bad/ in the generated plan.
    #[arg(long, conflicts_with = "plan")]
    poison: Option<u32>,
    /// The faults of the generated plan, comma-separated (`all`, `none`, or kinds:
    /// worker_kill, worker_term, event_store_kill, event_store_freeze, gcs_unavailable,
    /// pubsub_duplicates, pubsub_stream_resets, pubsub_delays, pubsub_lost_acks).
    #[arg(long, conflicts_with = "plan", default_value = "all")]
    faults: String,
    /// How long after the faults heal and the producer finishes the backlog must drain, in
    /// seconds (the liveness bound).
    #[arg(long, conflicts_with = "plan")]
    drain_bound: Option<u64>,
    /// Where the run's files go (plan.json, history.jsonl, snapshot.json, summary.txt,
    /// junit.xml, results.json, run.svg, the worker's stdout and stderr).
    #[arg(long, default_value = "rig-verify")]
    out: std::path::PathBuf,
    /// `local` or `containers` (or `auto`). `gcp` is refused with what to do instead.
    #[arg(long, default_value = "local")]
    target: TargetKind,
    /// Which environment's Terraform to provision from.
    #[arg(long, short, default_value = "dev", env = "BACKBONE_ENVIRONMENT")]
    environment: String,
    /// A line on the worker's stdout that says it is ready (besides its first pull).
    #[arg(long, default_value = "READY")]
    ready_line: String,
    /// Ready only when our Pub/Sub service sees the worker pull.
    #[arg(long)]
    no_ready_line: bool,
    /// How long the worker may take to get ready, in seconds.
    #[arg(long, default_value_t = 60)]
    ready_timeout: u64,
}

#[derive(clap::Args)]
struct DriftArgs {
    /// The GCP project; must be the one the environment's terraform.tfvars names.
    #[arg(long, env = "GOOGLE_CLOUD_PROJECT")]
    project: String,
    /// Which environment's Terraform to compare with (infra/terraform/envs/<ENV>).
    #[arg(long, short, env = "BACKBONE_ENVIRONMENT")]
    environment: String,
    /// Print the result as JSON (versioned: `version`) instead of a table.
    #[arg(long)]
    json: bool,
    /// Whose permissions testIamPermissions reports: `impersonate` (the Terraform's worker
    /// service account, from your Application Default Credentials), `adc` (your ADC already
    /// are the worker), or a service account e-mail to impersonate.
    #[arg(long, default_value = "impersonate")]
    worker_identity: String,
    /// Allow reading prod (drift only ever reads).
    #[arg(long)]
    allow_prod: bool,
}

/// The command could not do its job: bad input, a refusal, something unreachable.
const COULD_NOT_RUN: u8 = 2;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RIG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("rig=info")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(COULD_NOT_RUN);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e).replace('\n', "\nerror: "));
            ExitCode::from(COULD_NOT_RUN)
        }
    };
    // Work still running after a signal (a scenario in its blocking thread) gets a moment, not
    // forever; its child processes die with the rig either way (see rig/process.rs).
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    code
}

/// The error and its sources, each source only where the text so far does not already say it
/// (many messages quote their cause); one line per cause where the error lists several.
fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
    }
    text
}

/// Writes to stdout; a reader that went away (`rig topology | head`) is not an error.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// SIGINT, SIGTERM and SIGHUP (the terminal went away), listened to from the start: a signal
/// that arrives at any point, even between two steps, is kept until someone asks for it. All
/// three stop the rig the same orderly way.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// A signal that arrived, and the exit status it gives a command it interrupts (128 + its
/// number, as shells report it).
#[derive(Debug, Clone, Copy)]
struct Caught {
    name: &'static str,
    code: u8,
}

impl Caught {
    fn exit(self, what: &str) -> ExitCode {
        eprintln!("{}: {what}", self.name);
        ExitCode::from(self.code)
    }
}

impl Signals {
    fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("listening for SIGHUP")?,
        })
    }

    async fn next(&mut self) -> Caught {
        tokio::select! {
            _ = self.term.recv() => Caught { name: "SIGTERM", code: 143 },
            _ = self.int.recv() => Caught { name: "SIGINT", code: 130 },
            _ = self.hup.recv() => Caught { name: "SIGHUP", code: 129 },
        }
    }

    /// Runs `work` unless a signal comes first; then `work` is dropped, which stops (and
    /// removes) whatever it had started.
    async fn or_stop<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, Caught> {
        tokio::select! {
            done = work => Ok(done),
            caught = self.next() => Err(caught),
        }
    }
}

/// The environment as `export` lines on stdout, and into `env_file` when given.
fn print_exports(
    env: &rig_harness::environment::Environment,
    topology: &Topology,
    env_file: Option<&mut EnvFile>,
) -> anyhow::Result<()> {
    let mut vars = env.worker_env_vars(topology)?;
    if let Some((name, value)) = env_file.as_ref().and_then(|f| f.owner_export()) {
        // First: a reader waits for the DB_PASSWORD line as the last one.
        vars.insert(0, (name, value));
    }
    let exports: Vec<String> = vars
        .iter()
        .map(|(name, value)| shell_export(name, value))
        .collect();
    out(&(exports.join("\n") + "\n"));
    if let Some(file) = env_file {
        file.write(&(exports.join("\n") + "\n"))?;
    }
    Ok(())
}

fn load_topology(environment: &str) -> anyhow::Result<Topology> {
    Topology::of_repository(environment).with_context(|| {
        format!(
            "reading the {environment} topology from {}",
            Topology::default_root().display()
        )
    })
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::listen()?;
    match cli.command {
        Command::Provision {
            environment,
            pubsub,
            storage,
            event_store_db,
            primary_db,
            env_file,
            wait_for_services,
        } => {
            let topology = load_topology(&environment)?;
            let root_password = std::env::var("RIG_MYSQL_ROOT_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty())
                .context("RIG_MYSQL_ROOT_PASSWORD is not set: export the databases' root password (compose/up.sh does)")?;
            let host_port = |flag: &str, value: &str| {
                value
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                    .with_context(|| format!("--{flag} {value}: expected HOST:PORT"))
            };
            let mut env_file = env_file
                .map(|path| EnvFile::claim(&path, Ownership::Nobody, false))
                .transpose()?;
            let services = rig_harness::targets::AttachedServices {
                pubsub,
                storage,
                event_store_db: host_port("event-store-db", &event_store_db)?,
                primary_db: host_port("primary-db", &primary_db)?,
                root_password,
                patience: std::time::Duration::from_secs(wait_for_services),
            };
            let started = Instant::now();
            let work = async {
                let attached = rig_harness::targets::ContainersBackbone::attach(services).await?;
                let backbone =
                    Backbone::with_target(TargetKind::Containers, Box::new(attached)).await?;
                backbone.deploy(DEFAULT_SCOPE, &topology).await
            };
            let deployment = match signals.or_stop(work).await {
                Ok(deployment) => deployment?,
                Err(caught) => return Ok(caught.exit("provisioning stopped")),
            };
            let env = &deployment.environment;
            print_exports(env, &topology, env_file.as_mut())?;
            eprintln!(
                "compose stack provisioned in {:.2}s — event store engine: {}",
                started.elapsed().as_secs_f64(),
                env.engine
            );
            for d in &deployment.divergences {
                eprintln!("known emulator divergence: {d}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Topology { environment, json } => {
            let topology = load_topology(&environment)?;
            if json {
                out(&(serde_json::to_string_pretty(&topology)? + "\n"));
            } else {
                out(&topology.summary());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Up {
            target: args,
            env_file,
            replace_env_file,
        } => {
            if matches!(args.target, TargetKind::Env | TargetKind::Gcp) {
                anyhow::bail!(
                    "`rig up` starts a backbone, and target {} starts nothing: use it with `rig validate --target {}` or `rig worker`",
                    args.target,
                    if args.target == TargetKind::Gcp {
                        "gcp"
                    } else {
                        "env"
                    }
                );
            }
            let topology = load_topology(&args.environment)?;
            // Before anything starts: a file that cannot be written, or is another running
            // backbone's, is refused now rather than after the start-up.
            let mut env_file = env_file
                .map(|path| EnvFile::claim(&path, Ownership::ThisProcess, replace_env_file))
                .transpose()?;
            let started = Instant::now();
            let up = Backbone::up_with(args.target, args.pubsub, DEFAULT_SCOPE, &topology);
            let (backbone, deployment) = match signals.or_stop(up).await {
                Ok(up) => up?,
                Err(caught) => return Ok(caught.exit("stopped during start-up")),
            };
            let env = &deployment.environment;
            print_exports(env, &topology, env_file.as_mut())?;
            if let Some(file) = &env_file {
                eprintln!(
                    "environment written to {}: `source {}` in another shell (removed when this backbone stops)",
                    file.path().display(),
                    file.path().display()
                );
            }
            eprintln!(
                "backbone up in {:.2}s on target {} — event store engine: {} — pubsub: {}",
                started.elapsed().as_secs_f64(),
                env.target,
                env.engine,
                env.pubsub.implementation
            );
            for d in &deployment.divergences {
                eprintln!("known emulator divergence: {d}");
            }
            for (name, pid, log) in backbone.processes() {
                eprintln!("  {name:<16} pid {pid:<7} log {}", log.display());
            }
            for (name, id) in backbone.containers() {
                eprintln!("  {name:<16} container {id:.12}  (docker logs {id:.12})");
            }
            eprintln!("Ctrl-C, SIGTERM or SIGHUP stops everything.");
            let caught = signals.next().await;
            eprintln!("{}: stopping the backbone", caught.name);
            drop(backbone);
            drop(env_file);
            Ok(ExitCode::SUCCESS)
        }
        Command::Scenarios {
            target,
            names,
            list,
            mutations,
            cases,
            junit,
            timeout,
            drain_seconds,
            record_fidelity,
        } => {
            let gcp = match (target.target, &target.project) {
                (TargetKind::Gcp, Some(project)) => Some(GcpOptions {
                    project: project.clone(),
                    environment: target.environment.clone(),
                    allow_prod: target.allow_prod,
                }),
                _ => None,
            };
            let options = suite::Options {
                environment: target.environment,
                target: target.target,
                pubsub: target.pubsub,
                names,
                mutations,
                cases,
                junit,
                gcp,
                timeout: timeout.map(std::time::Duration::from_secs),
                drain: drain_seconds.map(std::time::Duration::from_secs),
                record_fidelity,
            };
            if list {
                out(&suite::list());
                return Ok(ExitCode::SUCCESS);
            }
            let prepared = match signals.or_stop(suite::prepare(&options)).await {
                Ok(prepared) => prepared?,
                Err(caught) => return Ok(caught.exit("scenarios stopped during start-up")),
            };
            let stopper = prepared.stopper();
            let handle = tokio::runtime::Handle::current();
            let mut run =
                tokio::task::spawn_blocking(move || suite::run(&options, prepared, handle));
            tokio::select! {
                r = &mut run => Ok(if r?? { ExitCode::SUCCESS } else { ExitCode::from(1) }),
                caught = signals.next() => {
                    // The scenario under way runs in a blocking thread that cannot be
                    // cancelled: the backbone is stopped and its datadir removed under it,
                    // which makes it end soon; it gets a moment to drop what it holds.
                    stopper.stop();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), run).await;
                    Ok(caught.exit("scenarios stopped; the backbone is stopped and its temp dir removed"))
                }
            }
        }
        Command::Drift(args) => drift(args, &mut signals).await,
        Command::Verify(args) => verify(args, &mut signals).await,
        Command::Worker {
            environment,
            warn_every,
        } => {
            let topology = load_topology(&environment)?;
            let connections = match signals
                .or_stop(rig_harness::worker::connections(&topology))
                .await
            {
                Ok(connections) => connections?,
                Err(caught) => return Ok(caught.exit("stopped before the worker started")),
            };
            rig_events::worker::run_until(
                &connections,
                &topology,
                std::time::Duration::from_secs(warn_every),
                async move { signals.next().await.name },
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { target, json } => {
            let topology = load_topology(&target.environment)?;
            let work = async {
                if target.target == TargetKind::Gcp {
                    let options = GcpOptions {
                        project: target.project.clone().ok_or_else(|| {
                            anyhow::anyhow!(
                                "--target gcp needs --project (or GOOGLE_CLOUD_PROJECT)"
                            )
                        })?,
                        environment: target.environment.clone(),
                        allow_prod: target.allow_prod,
                    };
                    let dead_letter = target.dead_letter.map(std::time::Duration::from_secs);
                    return rig_drift::validate_gcp(&options, &topology, dead_letter).await;
                }
                let started = Instant::now();
                let (backbone, deployment) =
                    Backbone::up_with(target.target, target.pubsub, DEFAULT_SCOPE, &topology)
                        .await?;
                // A backbone the rig brought up is the first check; one it only reached is not.
                let up = backbone.capabilities().provisions.then(|| Check {
                    name: format!("bring up and provision the {} backbone", target.target),
                    outcome: Outcome::Pass,
                    took: started.elapsed(),
                    detail: backbone
                        .startup_times()
                        .iter()
                        .map(|(n, d)| format!("{n} {:.2}s", d.as_secs_f64()))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
                let validation = validate::run(
                    &deployment.environment,
                    &topology,
                    up.into_iter().collect(),
                    deployment.divergences.clone(),
                )
                .await;
                let runs_services =
                    !backbone.processes().is_empty() || !backbone.containers().is_empty();
                if !validation.passed() && runs_services {
                    eprintln!("service logs (last lines):\n{}", backbone.log_tails(1500));
                }
                Ok::<_, anyhow::Error>(validation)
            };
            let validation = match signals.or_stop(work).await {
                Ok(validation) => validation?,
                Err(caught) => return Ok(caught.exit("validation stopped")),
            };
            if json {
                out(&(serde_json::to_string_pretty(&validation)? + "\n"));
            } else {
                out(&validation.render());
            }
            Ok(if validation.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn fault_kinds(text: &str) -> Result<Vec<rig_verify::plan::FaultKind>, String> {
    use rig_verify::plan::FaultKind;
    match text.trim() {
        "all" => return Ok(FaultKind::ALL.to_vec()),
        "none" | "" => return Ok(Vec::new()),
        _ => {}
    }
    text.split(',')
        .map(|name| {
            let name = name.trim();
            FaultKind::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| {
                    format!(
                        "--faults: unknown fault `{name}`; known: all, none, {}",
                        FaultKind::ALL.map(|k| k.name()).join(", ")
                    )
                })
        })
        .collect()
}

/// A run that could not be made: its reason on stderr, exit 2 (as each `--help` states).
fn refuse(message: String) -> anyhow::Result<ExitCode> {
    eprintln!("error: {message}");
    Ok(ExitCode::from(2))
}

async fn verify(args: VerifyArgs, signals: &mut Signals) -> anyhow::Result<ExitCode> {
    use rig_harness::verify::{self, Options, PlanSource};
    let topology = match load_topology(&args.environment) {
        Ok(t) => t,
        Err(e) => return refuse(format!("{e:#}")),
    };
    let plan = match &args.plan {
        Some(path) => PlanSource::File(path.clone()),
        None => {
            let faults = match fault_kinds(&args.faults) {
                Ok(f) => f,
                Err(e) => return refuse(e),
            };
            let mut config = rig_verify::plan::PlanConfig {
                events: args.events,
                faults,
                ..Default::default()
            };
            if let Some(n) = args.aggregates {
                config.aggregates = n;
            }
            if let Some(n) = args.poison {
                config.poison = n;
            }
            if let Some(s) = args.drain_bound {
                config.drain_bound_ms = s * 1000;
            }
            let seed = args.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs() % 1_000_000)
            });
            eprintln!("rig verify: seed {seed}");
            PlanSource::Seed { seed, config }
        }
    };
    let mut options = Options::new(&args.worker, topology, &args.out);
    options.replicas = args.replicas;
    options.plan = plan;
    options.target = args.target;
    options.ready_line = (!args.no_ready_line).then_some(args.ready_line);
    options.ready_timeout = std::time::Duration::from_secs(args.ready_timeout);
    let outcome = tokio::select! {
        r = verify::run(&options) => r,
        caught = signals.next() => {
            // Dropping the run stopped the worker and the backbone and removed its temp dir.
            return Ok(caught.exit("rig verify stopped; the worker and the backbone are stopped"));
        }
    };
    match outcome {
        Ok(outcome) => {
            print!("{}", outcome.summary);
            eprintln!(
                "files in {}: summary.txt, junit.xml, results.json, run.svg, history.jsonl, snapshot.json, plan.json",
                outcome.out.display()
            );
            Ok(ExitCode::from(outcome.exit_code()))
        }
        Err(e) => refuse(format!("{e}")),
    }
}

async fn drift(args: DriftArgs, signals: &mut Signals) -> anyhow::Result<ExitCode> {
    use rig_drift::live::{GcpEndpoints as Endpoints, LiveReader, WorkerIdentity};
    if args.environment == "prod" && !args.allow_prod {
        return refuse("refusing to touch prod without --allow-prod (drift only reads; the flag says you mean it)".into());
    }
    let root = Topology::default_root();
    let topology = load_topology(&args.environment)?;
    let spec = rig_topology::CloudSpec::load(&root, &args.environment).with_context(|| {
        format!(
            "reading the {} Terraform from {}",
            args.environment,
            root.display()
        )
    })?;
    if spec.project_id != args.project {
        return refuse(format!(
            "--project {} but envs/{}/terraform.tfvars names project_id {}: pass --project {} (or the right --environment)",
            args.project, args.environment, spec.project_id, spec.project_id
        ));
    }
    let worker = match args.worker_identity.as_str() {
        "impersonate" => WorkerIdentity::Impersonate(spec.worker_service_account.clone()),
        "adc" => WorkerIdentity::Adc,
        email if email.contains('@') => WorkerIdentity::Impersonate(email.to_string()),
        other => {
            return refuse(format!(
                "--worker-identity {other}: expected `impersonate`, `adc` or a service account e-mail"
            ));
        }
    };
    let endpoints = Endpoints::from_env();
    let event_store = std::env::var_os("DB_EVENT_STORE_HOST")
        .map(|_| {
            rig_events::event_store::DbConfig::from_env(rig_events::event_store::EVENT_STORE_PREFIX)
        })
        .transpose()?;
    let work = async {
        rig_drift::preflight(&endpoints, event_store.as_ref()).await?;
        let reader = LiveReader::new(&args.project, endpoints.clone(), worker);
        Ok::<_, anyhow::Error>(
            rig_drift::run(&reader, &topology, &spec, event_store.as_ref()).await,
        )
    };
    let report = match signals.or_stop(work).await {
        Ok(report) => report?,
        Err(caught) => return Ok(caught.exit("drift stopped")),
    };
    if args.json {
        out(&(serde_json::to_string_pretty(&report)? + "\n"));
    } else {
        out(&report.render());
    }
    Ok(ExitCode::from(report.exit_code()))
}

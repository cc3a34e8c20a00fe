//! `--target gcp` end to end except authentication: a local backbone stands in for GCP (our
//! Pub/Sub service and fake-gcs-server at overridden endpoints, provisioned from the dev
//! Terraform — acceptance resources included — under the project the Terraform names; MariaDB
//! with the acceptance database), and the real `rig validate --target gcp` and
//! `rig scenarios --target gcp` run against it.

mod support;

use rig_events::event_store::{EVENT_STORE_PREFIX, PRIMARY_PREFIX};
use sqlx::Row;

const PROJECT: &str = "suitex-dev";

async fn probe_rows(config: &rig_events::event_store::DbConfig) -> i64 {
    let mut conn = support::connect(config).await;
    sqlx::query("SELECT COUNT(*) FROM event_store WHERE aggregate_type = 'backbone_probe'")
        .fetch_one(&mut conn)
        .await
        .expect("counting probe rows")
        .try_get(0)
        .expect("count")
}

/// A local backbone standing in for the dev project: the dev Terraform provisioned under
/// `suitex-dev` on the emulator and fake-gcs-server, and a migrated `events_acceptance`.
async fn standin(
    scope: &str,
) -> (
    rig_harness::backbone::Backbone,
    rig_harness::environment::Environment,
) {
    standin_with(scope, &support::dev_topology()).await
}

/// [`standin`] provisioned from another dev topology (an edited copy of the Terraform).
async fn standin_with(
    scope: &str,
    topology: &rig_topology::Topology,
) -> (
    rig_harness::backbone::Backbone,
    rig_harness::environment::Environment,
) {
    let (backbone, env) = support::deployed_with(scope, topology).await;
    // Provisioned as the Terraform would be, under the project it names.
    let pubsub = rig_events::pubsub::PubsubConnection {
        project_id: PROJECT.into(),
        ..env.pubsub.clone()
    };
    rig_harness::provision::apply_pubsub(&pubsub, topology)
        .await
        .expect("provisioning suitex-dev on the emulator");
    rig_harness::provision::apply_bucket(
        &env.storage,
        &reqwest::Client::new(),
        &topology.bucket.name,
        &topology.bucket,
    )
    .await
    .expect("creating the dev bucket on fake-gcs-server");
    let mut admin = support::connect(&env.event_store_admin).await;
    sqlx::query(
        "CREATE DATABASE events_acceptance CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
    )
    .execute(&mut admin)
    .await
    .expect("creating events_acceptance");
    let acceptance_admin = env.event_store_admin.with_database("events_acceptance");
    let pool = acceptance_admin.pool(1).await.expect("acceptance pool");
    rig_events::event_store::MIGRATOR
        .run(&pool)
        .await
        .expect("migrating events_acceptance");
    pool.close().await;

    (backbone, env)
}

/// `rig validate --target gcp` against the stand-in, the worker's connection on `database`.
fn validate_gcp(
    standin: &rig_harness::environment::Environment,
    database: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec!["validate", "--json"];
    args.extend_from_slice(extra);
    rig_on_gcp(standin, None, database, &args)
}

/// `rig <args> --target gcp --project suitex-dev --environment dev` against the stand-in, the
/// worker's connection on `database`, reading the Terraform at `terraform_root` (default: the
/// repository's).
fn rig_on_gcp(
    standin: &rig_harness::environment::Environment,
    terraform_root: Option<&std::path::Path>,
    database: &str,
    args: &[&str],
) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rig"));
    command.args(args);
    if let Some(root) = terraform_root {
        command.env("RIG_TERRAFORM_ROOT", root);
    }
    command.args([
        "--target",
        "gcp",
        "--project",
        PROJECT,
        "--environment",
        "dev",
    ]);
    for variable in [
        "PUBSUB_EMULATOR_HOST",
        "STORAGE_EMULATOR_HOST",
        "RIG_TARGET",
        "GOOGLE_CLOUD_PROJECT",
        "RIG_FIDELITY_RECORD",
        "PROPTEST_CASES",
    ] {
        command.env_remove(variable);
    }
    command
        .env(
            "RIG_GCP_PUBSUB_ENDPOINT",
            standin.pubsub.endpoint.clone().expect("emulator endpoint"),
        )
        .env("RIG_PUBSUB", standin.pubsub.implementation.to_string())
        .env(
            "RIG_GCP_STORAGE_ENDPOINT",
            standin.storage.endpoint.clone().expect("fake-gcs endpoint"),
        );
    for (name, value) in standin
        .event_store
        .with_database(database)
        .env_vars(EVENT_STORE_PREFIX)
    {
        command.env(name, value);
    }
    for (name, value) in standin.primary.env_vars(PRIMARY_PREFIX) {
        command.env(name, value);
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("running rig {args:?} --target gcp: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_on_target_gcp_writes_only_to_the_acceptance_database_and_acknowledges_everything()
{
    let (backbone, env) = standin("gcpstandin").await;
    let standin_env = env.clone();
    let run = move |database: &str| validate_gcp(&standin_env, database, &[]);

    let ledger_before = probe_rows(&env.event_store).await;
    let output = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run("events_acceptance")
    })
    .await
    .expect("validate task");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("--json output");
    assert!(
        json["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("gcp")),
        "{stdout}"
    );
    let check = |name: &str| {
        json["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name:?}: {stdout}"))
            .clone()
    };
    assert_eq!(
        check("the probe is acknowledged on the acceptance subscriptions")["outcome"],
        "pass",
        "{stdout}"
    );
    assert_eq!(
        check("insert a dummy row via DB_EVENT_STORE_*")["outcome"],
        "pass"
    );
    // The row went to the acceptance database, never to the ledger.
    assert_eq!(
        probe_rows(&env.event_store.with_database("events_acceptance")).await,
        1
    );
    assert_eq!(probe_rows(&env.event_store).await, ledger_before);

    // Pointed at the ledger, the run is refused before anything is contacted.
    let ledger = env.event_store.database.clone();
    let refused = tokio::task::spawn_blocking(move || run(&ledger))
        .await
        .expect("validate task");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("events_acceptance"), "{stderr}");
    assert_eq!(probe_rows(&env.event_store).await, ledger_before);
    drop(backbone);
}

#[test]
fn target_gcp_refuses_prod_without_allow_prod_and_a_project_the_terraform_does_not_name() {
    for (project, environment, expected) in [
        ("suitex-prod", "prod", "--allow-prod"),
        ("suitex-dev", "staging", "suitex-staging"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_rig"))
            .args([
                "validate",
                "--target",
                "gcp",
                "--project",
                project,
                "--environment",
                environment,
            ])
            .env_remove("RIG_TARGET")
            .output()
            .expect("running rig validate");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{environment}: {stderr}");
    }
}

/// Ordered dead-lettering is what the emulator cannot do: against the stand-in the check must
/// come out as a divergence (or a pass, should the emulator ever get it right), never a pass
/// that hides a failure, and never a failed run.
#[tokio::test(flavor = "multi_thread")]
async fn the_ordered_dead_letter_check_is_a_divergence_on_the_emulator() {
    let (backbone, env) = standin("gcpdeadletter").await;
    let output = tokio::task::spawn_blocking(move || {
        validate_gcp(&env, "events_acceptance", &["--dead-letter", "45"])
    })
    .await
    .expect("validate task");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("--json output");
    let check = json["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == rig_harness::acceptance::ORDERED_DEAD_LETTER)
        .unwrap_or_else(|| panic!("no dead-letter check: {stdout}"))
        .clone();
    eprintln!("ordered dead-letter on the stand-in: {check}");
    match check["outcome"].as_str() {
        Some("divergence") => assert!(
            json["divergences"]
                .as_array()
                .expect("divergences")
                .iter()
                .any(|d| d["feature"] == "dead-lettering on an ordered subscription"),
            "{stdout}"
        ),
        Some("pass") => assert!(
            check["detail"]
                .as_str()
                .is_some_and(|d| d.contains("acknowledged on events.dlq.acceptance")),
            "{stdout}"
        ),
        other => panic!("outcome {other:?}: {stdout}"),
    }
    drop(backbone);
}

/// Every message a consumer of `subscription` (in the stand-in's `suitex-dev`) receives within
/// `window`, acknowledged: `(probe value or "", ...)` per message.
async fn drain_for(
    pubsub: &rig_events::pubsub::PubsubConnection,
    subscription: &str,
    attribute: &str,
    window: std::time::Duration,
) -> Vec<String> {
    let subscriber = pubsub.subscriber().await.expect("subscriber");
    let mut stream = subscriber
        .subscribe(pubsub.subscription_path(subscription))
        .build();
    let token = stream.shutdown_token();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(next)) = tokio::time::timeout_at(deadline, stream.next()).await {
        let (message, handler) =
            next.unwrap_or_else(|e| panic!("streaming pull on {subscription}: {e}"));
        handler.ack();
        seen.push(
            message
                .attributes
                .get(attribute)
                .cloned()
                .unwrap_or_default(),
        );
    }
    token.shutdown().await;
    seen
}

async fn count_rows(
    config: &rig_events::event_store::DbConfig,
    account_prefix: Option<&str>,
) -> i64 {
    let mut conn = support::connect(config).await;
    let query = match account_prefix {
        None => sqlx::query("SELECT COUNT(*) FROM event_store"),
        Some(prefix) => sqlx::query(
            "SELECT COUNT(*) FROM event_store WHERE LEFT(account_id, CHAR_LENGTH(?)) = ?",
        )
        .bind(prefix.to_string())
        .bind(prefix.to_string()),
    };
    query
        .fetch_one(&mut conn)
        .await
        .expect("counting rows")
        .try_get(0)
        .expect("count")
}

/// Staging acceptance of the scenarios, as `rig scenarios --target gcp` runs it on dev: the
/// staging-safe scenarios pass through the acceptance resources, the others are reported as
/// not run (never as passes); no probe reaches the worker's or the operators' subscriptions,
/// rows land only in `events_acceptance` under the run's account ids, and nothing of the run is
/// left on the probe-only subscriptions afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn scenarios_on_target_gcp_use_only_the_acceptance_resources_and_leave_nothing_behind() {
    // The dev Terraform with the shortest timings Pub/Sub accepts (ack deadline 10 s, backoff
    // 1 s): what is under test is which resources the run touches and what it leaves, and the
    // run waits out its subscriptions' redelivery bound twice (its drain, then this read-back).
    // On dev's own 60 s + 10 s that alone took ~150 s, the whole suite's longest wait.
    let terraform = scenarios::mutations::terraform_copy(&[
        ("tf", "default     = 60", "default     = 10"),
        (
            "tfvars",
            "retry_maximum_backoff = \"10s\"",
            "retry_maximum_backoff = \"1s\"",
        ),
    ])
    .expect("copying the Terraform with short timings");
    let topology = rig_topology::Topology::load(terraform.path(), "dev")
        .expect("loading the short-timed dev topology");
    for subscription in &topology.subscriptions {
        assert!(
            rig_harness::acceptance::redelivery_bound(subscription)
                <= std::time::Duration::from_secs(11),
            "{}: the copy's edits no longer shorten its timings",
            subscription.name
        );
    }
    let (backbone, env) = standin_with("gcpscenarios", &topology).await;
    let attribute = topology.probe_attribute().expect("probe attribute");
    let acceptance_db = env.event_store.with_database("events_acceptance");
    let ledger_before = count_rows(&env.event_store, None).await;
    let acceptance_before = count_rows(&acceptance_db, None).await;

    let standin_env = env.clone();
    let terraform_root = terraform.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        rig_on_gcp(
            &standin_env,
            Some(&terraform_root),
            "events_acceptance",
            // The drain's default adds 10 s to the redelivery bound for real GCP's latencies;
            // the read-back below checks that the bound alone (+1 s) left nothing behind.
            &["scenarios", "--drain-seconds", "12"],
        )
    })
    .await
    .expect("scenarios task");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"))
            .to_string()
    };
    let mut staging_safe = 0;
    for scenario in scenarios::all() {
        let row = row(scenario.name);
        assert!(row.contains(" gcp "), "{row}");
        match scenario.not_on_gcp {
            // Our Pub/Sub service has no excused defects: a staging-safe scenario passes.
            None => {
                assert!(row.contains("PASS"), "{row}\n{stdout}\n{stderr}");
                staging_safe += 1;
            }
            Some(reason) => {
                assert!(row.contains("NOT RUN"), "{row}");
                assert!(
                    stdout.contains(&format!("{} — not run on GCP: {reason}", scenario.name)),
                    "{stdout}"
                );
            }
        }
    }
    assert!(staging_safe >= 5, "{stdout}");
    let run_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("acceptance run: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no acceptance run line:\n{stdout}"))
        .to_string();
    assert!(
        stdout.contains("acceptance subscriptions drained:"),
        "{stdout}"
    );

    // Rows: only in events_acceptance, all under this run's account ids; the ledger untouched.
    assert_eq!(count_rows(&env.event_store, None).await, ledger_before);
    let ours = count_rows(&acceptance_db, Some(&format!("{run_id}."))).await;
    assert!(ours > 0, "no row of {run_id} in events_acceptance");
    assert_eq!(
        count_rows(&acceptance_db, None).await,
        acceptance_before + ours,
        "rows in events_acceptance that are not the run's"
    );

    // Messages: the worker's and the operators' subscriptions never saw a probe; the
    // probe-only ones hold nothing of the run (read for longer than any redelivery takes).
    let pubsub = rig_events::pubsub::PubsubConnection {
        project_id: PROJECT.into(),
        ..env.pubsub.clone()
    };
    let window = topology
        .subscriptions
        .iter()
        .map(rig_harness::acceptance::redelivery_bound)
        .max()
        .expect("subscriptions")
        + std::time::Duration::from_secs(5);
    let mut reads = Vec::new();
    for subscription in &topology.subscriptions {
        let (pubsub, name, attribute) =
            (pubsub.clone(), subscription.name.clone(), attribute.clone());
        reads.push((
            subscription.clone(),
            tokio::spawn(async move { drain_for(&pubsub, &name, &attribute, window).await }),
        ));
    }
    let probe_only = |s: &rig_topology::Subscription| {
        s.is_acceptance() || topology.validation_subscription() == Some(s)
    };
    for (subscription, read) in reads {
        let seen = read.await.expect("read task");
        if probe_only(&subscription) {
            let left: Vec<&String> = seen
                .iter()
                .filter(|v| v.starts_with(&format!("{run_id}/")))
                .collect();
            assert!(
                left.is_empty(),
                "{} still held {} message(s) of the run after it ended, e.g. {:?}",
                subscription.name,
                left.len(),
                &left[..left.len().min(5)]
            );
        } else {
            // Nothing else publishes on the stand-in: whatever is here came from the run,
            // with or without the probe attribute.
            assert!(
                seen.is_empty(),
                "{} message(s) of the acceptance run reached {} (probe values {:?}): its filter keeps probes out, so the run published something unmarked or the filter is not applied",
                seen.len(),
                subscription.name,
                &seen[..seen.len().min(5)]
            );
        }
    }
    drop(backbone);
}

/// A stand-in for GCP is never recorded as GCP, and prod is refused before anything is reached.
#[test]
fn scenarios_on_target_gcp_refuse_prod_and_do_not_record_a_standin_as_gcp() {
    let prod = std::process::Command::new(env!("CARGO_BIN_EXE_rig"))
        .args([
            "scenarios",
            "--target",
            "gcp",
            "--project",
            "suitex-prod",
            "--environment",
            "prod",
        ])
        .env_remove("RIG_TARGET")
        .output()
        .expect("running rig scenarios");
    assert!(!prod.status.success());
    let stderr = String::from_utf8_lossy(&prod.stderr);
    assert!(stderr.contains("prod"), "{stderr}");

    let gcp_json = rig_topology::repository_root().join("docs/fidelity/scenarios/gcp.json");
    let recorded_before = std::fs::read_to_string(&gcp_json).ok();
    // Endpoints at a stand-in (nothing answers there: the refusal comes first).
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rig"));
    command
        .args([
            "scenarios",
            "ordering",
            "--record-fidelity",
            "--target",
            "gcp",
            "--project",
            PROJECT,
            "--environment",
            "dev",
        ])
        .env_remove("RIG_TARGET")
        .env("RIG_GCP_PUBSUB_ENDPOINT", "http://127.0.0.1:9")
        .env("RIG_GCP_STORAGE_ENDPOINT", "http://127.0.0.1:9")
        .env("RIG_PUBSUB", "pubsub-service");
    for (prefix, database) in [
        (EVENT_STORE_PREFIX, "events_acceptance"),
        (PRIMARY_PREFIX, "suitex"),
    ] {
        for (name, value) in [
            ("CONNECTION", "mysql"),
            ("HOST", "127.0.0.1"),
            ("PORT", "9"),
            ("DATABASE", database),
            ("USERNAME", "nobody"),
            ("PASSWORD", "x"),
        ] {
            command.env(format!("{prefix}{name}"), value);
        }
    }
    let output = command.output().expect("running rig scenarios");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("not recorded in the GCP column"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&gcp_json).ok(), recorded_before);
}

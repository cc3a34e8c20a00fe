//! `--target gcp` end to end except authentication: a local backbone stands in for GCP (the
//! emulator and fake-gcs-server at overridden endpoints, provisioned from the dev Terraform
//! under the project the Terraform names; MariaDB with the acceptance database), and the real
//! `rig validate --target gcp` runs against it.

mod support;

use rig::event_store::{EVENT_STORE_PREFIX, PRIMARY_PREFIX};
use sqlx::Row;

const PROJECT: &str = "suitex-dev";

async fn probe_rows(config: &rig::event_store::DbConfig) -> i64 {
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
async fn standin(scope: &str) -> (rig::targets::Backbone, rig::environment::Environment) {
    let (backbone, env) = support::deployed(scope).await;
    let topology = support::dev_topology();
    // Provisioned as the Terraform would be, under the project it names.
    let pubsub = rig::pubsub::PubsubConnection {
        project_id: PROJECT.into(),
        ..env.pubsub.clone()
    };
    rig::provision::apply_pubsub(&pubsub, &topology)
        .await
        .expect("provisioning suitex-dev on the emulator");
    rig::provision::apply_bucket(
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
    rig::event_store::MIGRATOR
        .run(&pool)
        .await
        .expect("migrating events_acceptance");
    pool.close().await;

    (backbone, env)
}

/// `rig validate --target gcp` against the stand-in, the worker's connection on `database`.
fn validate_gcp(
    standin: &rig::environment::Environment,
    database: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rig"));
    command.args([
        "validate",
        "--target",
        "gcp",
        "--project",
        PROJECT,
        "--environment",
        "dev",
        "--json",
    ]);
    command.args(extra);
    for variable in [
        "PUBSUB_EMULATOR_HOST",
        "STORAGE_EMULATOR_HOST",
        "RIG_TARGET",
        "GOOGLE_CLOUD_PROJECT",
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
    command.output().expect("running rig validate --target gcp")
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
        .find(|c| c["name"] == rig::acceptance::ORDERED_DEAD_LETTER)
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

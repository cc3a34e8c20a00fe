//! Laravel and the rig agree, proven in the Rust suite: the Laravel migration and `migrations/` leave identical
//! tables and triggers on the event store server (and an altered Laravel migration is caught),
//! and Scenario 2 of the epic — the `EventStore` model writing through the secondary connection
//! while the primary runs its own transactions — passes against the local backbone.
//!
//! The PHP scripts in laravel/bin are run with a cleared environment: only PATH and the
//! variables laravel/README.md documents reach them.

mod support;
use support::{connect, deployed};

use std::path::{Path, PathBuf};
use std::process::Command;

use rig_events::event_store::{DbConfig, EVENT_STORE_PREFIX, EventStore, PRIMARY_PREFIX};
use sqlx::{AssertSqlSafe, Row};

const PHP_MISSING: &str = "php not found: apt-get install --no-install-recommends php-cli php-mysql php-illuminate-database";
const LARAVEL_MIGRATION: &str =
    "database/migrations/2026_11_27_000001_create_event_store_table.php";
const LARAVEL_EXACT_IDS: &str = "database/migrations/2026_11_27_000004_event_store_exact_ids.php";

fn laravel_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("laravel")
}

/// What a PHP script printed and how it exited.
struct PhpRun {
    code: Option<i32>,
    json: Option<serde_json::Value>,
    stdout: String,
    stderr: String,
}

/// Runs `php laravel/bin/<script> args` with only PATH and the documented variables for
/// `event_store` (`DB_EVENT_STORE_*`) and, when given, the primary (`DB_*`).
fn php(script: &str, args: &[&str], event_store: &DbConfig, primary: Option<&DbConfig>) -> PhpRun {
    let mut command = Command::new("php");
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(laravel_dir())
        .arg(laravel_dir().join("bin").join(script))
        .args(args);
    let documented = |config: &DbConfig, prefix: &str| {
        config
            .env_vars(prefix)
            .into_iter()
            // The bin scripts read HOST/PORT/DATABASE/USERNAME/PASSWORD only (laravel/README.md).
            .filter(|(name, _)| !name.ends_with("_CONNECTION"))
            .collect::<Vec<_>>()
    };
    command.envs(documented(event_store, EVENT_STORE_PREFIX));
    if let Some(primary) = primary {
        command.envs(documented(primary, PRIMARY_PREFIX));
    }
    let output = match command.output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{PHP_MISSING}"),
        Err(e) => panic!("running php {script}: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    PhpRun {
        code: output.status.code(),
        json: serde_json::from_str(stdout.trim()).ok(),
        stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn create_database(admin: &DbConfig, name: &str) -> DbConfig {
    let mut conn = connect(&admin.with_database("")).await;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    )))
    .execute(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
    admin.with_database(name)
}

/// Runs these Laravel migration files in order (all of `laravel/database/migrations/` when
/// none is given).
fn migrate_with_laravel(admin: &DbConfig, migrations: &[&Path]) {
    let files: Vec<String> = migrations.iter().map(|p| p.display().to_string()).collect();
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let run = php("migrate.php", &args, admin, None);
    assert_eq!(
        run.code,
        Some(0),
        "migrate.php into {} failed:\nstdout: {}\nstderr: {}",
        admin.database,
        run.stdout,
        run.stderr
    );
    assert_eq!(
        run.json,
        Some(serde_json::json!({ "migrated": true })),
        "{}",
        run.stdout
    );
}

/// The parts of a ledger that must be identical whichever tool created it.
#[derive(Debug, PartialEq, Eq)]
struct LedgerShape {
    /// `SHOW CREATE TABLE event_store`, the AUTO_INCREMENT counter stripped.
    create_table: String,
    /// `SHOW TRIGGERS`: name, event, timing, statement. (sql_mode and the client character set
    /// depend on the creating session, not on the migration.)
    triggers: Vec<[String; 4]>,
}

async fn ledger_shape(config: &DbConfig) -> LedgerShape {
    let mut conn = connect(config).await;
    let ddl: String = sqlx::query("SHOW CREATE TABLE event_store")
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("SHOW CREATE TABLE in {}: {e}", config.database))
        .get(1);
    let mut triggers: Vec<[String; 4]> = sqlx::query("SHOW TRIGGERS")
        .fetch_all(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("SHOW TRIGGERS in {}: {e}", config.database))
        .iter()
        .map(|r| {
            ["Trigger", "Event", "Timing", "Statement"].map(|column| {
                r.try_get::<String, _>(column)
                    .unwrap_or_else(|e| panic!("SHOW TRIGGERS {column}: {e}"))
            })
        })
        .collect();
    triggers.sort();
    LedgerShape {
        create_table: strip_auto_increment(&ddl),
        triggers,
    }
}

fn strip_auto_increment(ddl: &str) -> String {
    let marker = " AUTO_INCREMENT=";
    match ddl.find(marker) {
        Some(start) => {
            let rest = &ddl[start + marker.len()..];
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            format!("{}{}", &ddl[..start], &rest[digits..])
        }
        None => ddl.to_string(),
    }
}

/// `Ok` when both ledgers have the same shape; otherwise every differing line, as `-` (the
/// sqlx side) and `+` (the other side).
fn compare(sqlx_side: &LedgerShape, other: &LedgerShape) -> Result<(), Vec<String>> {
    let mut differences = Vec::new();
    let a: Vec<&str> = sqlx_side.create_table.lines().collect();
    let b: Vec<&str> = other.create_table.lines().collect();
    differences.extend(
        a.iter()
            .filter(|l| !b.contains(l))
            .map(|l| format!("- {}", l.trim())),
    );
    differences.extend(
        b.iter()
            .filter(|l| !a.contains(l))
            .map(|l| format!("+ {}", l.trim())),
    );
    if sqlx_side.create_table != other.create_table && differences.is_empty() {
        differences.push("SHOW CREATE TABLE differs in line order".into());
    }
    if sqlx_side.triggers != other.triggers {
        differences.push(format!("- triggers {:?}", sqlx_side.triggers));
        differences.push(format!("+ triggers {:?}", other.triggers));
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(differences)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_laravel_migration_and_the_sqlx_migrations_leave_identical_ledgers() {
    let (_backbone, env) = deployed("parity").await;
    let admin = &env.event_store_admin;
    assert_eq!(
        admin.database, "events_parity",
        "the sqlx-migrated database of scope `parity`"
    );
    let sqlx_side = ledger_shape(admin).await;
    assert_eq!(sqlx_side.triggers.len(), 2, "{sqlx_side:#?}");

    // The Laravel migration, as the migration owner (never the worker) runs it.
    let laravel = create_database(admin, "events_laravel").await;
    migrate_with_laravel(&laravel, &[]);
    let laravel_side = ledger_shape(&laravel).await;
    if let Err(differences) = compare(&sqlx_side, &laravel_side) {
        panic!(
            "Laravel and sqlx disagree on the ledger:\n{}",
            differences.join("\n")
        );
    }

    // The comparison must be able to fail: one column made nullable on the Laravel side.
    let original = std::fs::read_to_string(laravel_dir().join(LARAVEL_MIGRATION))
        .expect("reading the Laravel migration");
    let column = "$table->timestamp('created_at');";
    assert_eq!(
        original.matches(column).count(),
        1,
        "the migration declares {column} once"
    );
    let dir = tempfile::tempdir().expect("temp dir for the altered migration");
    let altered = dir.path().join("altered_create_event_store_table.php");
    std::fs::write(
        &altered,
        original.replace(column, "$table->timestamp('created_at')->nullable();"),
    )
    .expect("writing the altered migration");
    let mutant = create_database(admin, "events_laravel_altered").await;
    let exact_ids = laravel_dir().join(LARAVEL_EXACT_IDS);
    migrate_with_laravel(&mutant, &[&altered, &exact_ids]);
    let differences = compare(&sqlx_side, &ledger_shape(&mutant).await)
        .expect_err("a nullable created_at must not pass as parity");
    assert_eq!(
        differences,
        vec![
            "- `created_at` timestamp NOT NULL,".to_string(),
            "+ `created_at` timestamp NULL DEFAULT NULL,".to_string(),
        ],
        "exactly the altered column differs"
    );

    // Without the exact-ids migration the id columns keep the folding collation: caught too.
    let folding = create_database(admin, "events_laravel_folding").await;
    migrate_with_laravel(&folding, &[&laravel_dir().join(LARAVEL_MIGRATION)]);
    let differences = compare(&sqlx_side, &ledger_shape(&folding).await)
        .expect_err("case-folding id columns must not pass as parity");
    for column in ["account_id", "aggregate_type", "aggregate_id"] {
        assert!(
            differences.iter().any(|d| d.starts_with("- ")
                && d.contains(&format!("`{column}`"))
                && d.contains("_bin")),
            "the binary collation of {column} is missing from the differences: {differences:?}"
        );
    }

    // The worker cannot run the migration (it needs DDL): the README's warning holds.
    let worker_target = DbConfig {
        username: env.event_store.username.clone(),
        password: env.event_store.password.clone(),
        ..create_database(admin, "events_worker_attempt").await
    };
    let run = php("migrate.php", &[], &worker_target, None);
    assert_eq!(
        run.code,
        Some(2),
        "migrate.php as the worker must fail:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        run.stderr.contains("1044") || run.stderr.contains("1142"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_2_eloquent_writes_through_the_secondary_connection_without_touching_the_primary()
{
    let (_backbone, env) = deployed("scenario2").await;
    // The worker's grant (migration 0003) exists on the sqlx-migrated database.
    let run = php(
        "scenario2.php",
        &["200"],
        &env.event_store,
        Some(&env.primary),
    );
    let report = run.json.clone().unwrap_or_else(|| {
        panic!(
            "scenario2.php printed no JSON (exit {:?}):\nstdout: {}\nstderr: {}",
            run.code, run.stdout, run.stderr
        )
    });
    assert_eq!(
        run.code,
        Some(0),
        "scenario2.php failed: {report:#}\nstderr: {}",
        run.stderr
    );
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["failed"], serde_json::json!([]), "{report:#}");
    let checks = report["checks"].as_object().expect("a `checks` object");
    for name in [
        "events_counted_via_event_store",
        "payload_round_trip",
        "primary_rows_equal_committed",
        "primary_has_no_rolled_back_rows",
        "primary_has_no_event_store_table",
        "primary_has_no_event_columns_or_rows",
        "events_written_while_primary_holds_locks",
        "primary_uncommitted_row_hidden_from_other_sessions",
        "primary_transaction_intact_after_event_writes",
        "worker_cannot_connect_to_primary",
    ] {
        assert_eq!(
            checks.get(name),
            Some(&serde_json::Value::Bool(true)),
            "check {name}: {report:#}"
        );
    }
    assert!(checks.values().all(|v| v == true), "{report:#}");
    assert_eq!(report["events"]["requested"], 200);
    assert_eq!(report["events"]["counted_via_event_store"], 200);
    assert!(
        report["primary"]["transactions_rolled_back"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{report:#}"
    );
    assert_eq!(report["primary"]["rolled_back_rows_found"], 0);
    assert_eq!(report["worker_on_primary"]["denied"], true);
    assert_eq!(
        report["worker_on_primary"]["error_code"], 1045,
        "sync_worker does not exist on the primary server"
    );

    // Seen from the Rust side: the ledger holds the 200 events, the primary only its own rows.
    let store = EventStore::connect(&env.event_store, 1)
        .await
        .expect("connecting as the worker");
    assert_eq!(store.count().await.expect("counting the ledger"), 200);
    let mut primary = connect(&env.primary_admin).await;
    let rows: i64 = sqlx::query("SELECT COUNT(*) FROM tenant_orders")
        .fetch_one(&mut primary)
        .await
        .expect("counting tenant_orders")
        .get(0);
    assert_eq!(
        Some(rows as u64),
        report["primary"]["rows_committed"].as_u64(),
        "{report:#}"
    );
    let ledgers: i64 = sqlx::query(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_NAME = 'event_store'",
    )
    .fetch_one(&mut primary)
    .await
    .expect("looking for event_store on the primary server")
    .get(0);
    assert_eq!(ledgers, 0, "the primary server has no event_store table");
}

#[test]
fn the_comparison_names_what_differs() {
    let shape = |ddl: &str| LedgerShape {
        create_table: ddl.to_string(),
        triggers: vec![],
    };
    let a = shape("CREATE TABLE t (\n  `x` int,\n  `y` int\n) AUTO_INCREMENT=3");
    assert_eq!(
        strip_auto_increment(&a.create_table),
        "CREATE TABLE t (\n  `x` int,\n  `y` int\n)"
    );
    assert_eq!(compare(&a, &shape(&a.create_table)), Ok(()));
    assert_eq!(
        compare(
            &a,
            &shape("CREATE TABLE t (\n  `x` int,\n  `y` bigint\n) AUTO_INCREMENT=3")
        ),
        Err(vec!["- `y` int".to_string(), "+ `y` bigint".to_string()])
    );
    assert!(
        compare(
            &a,
            &shape("CREATE TABLE t (\n  `y` int\n  `x` int,\n) AUTO_INCREMENT=3")
        )
        .is_err()
    );
}

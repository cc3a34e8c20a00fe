//! No one let in and nothing left behind: no database account opens without a password,
//! the rig's files are its user's alone, and a signal at any moment of start-up leaves no
//! temp dir (docs/reliability.md).

mod support;
use support::processes::{signal, wait_exit};
use support::rig_dirs;
use support::{connect, deployed};

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use rig_events::event_store::DbConfig;
use sqlx::{ConnectOptions, Row};

/// `config`'s server, reached at `host` as `user` with an empty password.
fn login(config: &DbConfig, host: &str, user: &str) -> DbConfig {
    DbConfig {
        host: host.to_string(),
        username: user.to_string(),
        password: String::new(),
        database: String::new(),
        ..config.clone()
    }
}

/// No account of either server opens without a password — root over TCP
/// (IPv4 and IPv6 loopback) and over the socket — and the rig's dir and everything in it is
/// the rig user's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_database_account_opens_without_a_password_and_the_rig_dir_is_private() {
    let (backbone, env) = deployed("accounts").await;
    // Every service logs into the rig's dir.
    let dir = backbone.processes()[0]
        .2
        .parent()
        .expect("a log inside the rig's dir")
        .to_path_buf();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} has mode {mode:o}", dir.display());
    for (name, admin) in [
        ("event-store-db", &env.event_store_admin),
        ("primary-db", &env.primary_admin),
    ] {
        let socket = dir.join(format!("{name}.sock"));
        assert!(socket.exists(), "{} is missing", socket.display());
        let mut attempts = Vec::new();
        for host in ["127.0.0.1", "::1"] {
            for user in [
                "root",
                "",
                "mysql",
                "mariadb.sys",
                "rig_admin",
                "sync_worker",
            ] {
                let config = login(admin, host, user);
                attempts.push((
                    format!("{user}@{host}"),
                    config.connect_options().connect().await.map(|_| ()),
                ));
            }
        }
        for user in ["root", "", "rig_admin"] {
            let options = sqlx::mysql::MySqlConnectOptions::new()
                .socket(&socket)
                .username(user);
            attempts.push((
                format!("{user} over {name}.sock"),
                options.connect().await.map(|_| ()),
            ));
        }
        let opened: Vec<&String> = attempts
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(who, _)| who)
            .collect();
        assert!(
            opened.is_empty(),
            "{name}: logged in without a password as {opened:?}"
        );
        // Every account left is one the rig made, with a password, or the locked system one.
        let mut conn = connect(admin).await;
        let accounts: Vec<(String, String)> = sqlx::query(
            "SELECT CAST(User AS CHAR), CAST(Host AS CHAR) FROM mysql.user \
             WHERE User <> 'mariadb.sys' AND (authentication_string = '' AND Password = '')",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        assert!(
            accounts.is_empty(),
            "{name}: accounts without a password: {accounts:?}"
        );
    }
}

fn the_rig() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rig"));
    command.env("RIG_LOG", "rig=info");
    command
}

/// An env file that exists with mode 0644 is 0600 once passwords are in it.
#[test]
fn an_existing_world_readable_env_file_is_made_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let env_file = tmp.path().join("backbone.env");
    std::fs::write(&env_file, "# old\n").unwrap();
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = the_rig()
        .args(["up", "--env-file"])
        .arg(&env_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting `rig up`");
    let stdout = child.stdout.take().unwrap();
    let printed = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.starts_with("export DB_PASSWORD="));
    // The file is written right after stdout: give it a moment.
    let ready = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::read_to_string(&env_file).is_ok_and(|t| t.contains("DB_PASSWORD="))
    });
    let mode = std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777;
    signal(child.id(), libc::SIGTERM);
    let _ = wait_exit(&mut child, Duration::from_secs(30));
    assert!(printed && ready, "rig up wrote no environment");
    assert_eq!(mode, 0o600, "the env file has mode {mode:o}");
}

/// SIGTERM or SIGHUP at any moment of start-up — while the datadirs are being
/// copied, the servers starting, the users being made — leaves no dir behind once the rig
/// has exited. Runs in its own TMPDIR so other rigs' dirs don't count.
#[test]
fn a_signal_at_any_moment_of_start_up_leaves_no_temp_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let mut left = Vec::new();
    // The first run builds this TMPDIR's datadir template; the others copy it.
    let moments = [1500u64, 100, 200, 300, 400, 500, 700];
    for (i, ms) in moments.iter().enumerate() {
        let sig = if i % 2 == 0 {
            libc::SIGTERM
        } else {
            libc::SIGHUP
        };
        let mut child = the_rig()
            .arg("up")
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting `rig up`");
        std::thread::sleep(Duration::from_millis(*ms));
        signal(child.id(), sig);
        let status = wait_exit(&mut child, Duration::from_secs(30));
        let dirs = rig_dirs(tmp.path());
        if !dirs.is_empty() {
            left.push(format!("signal {sig} at {ms} ms ({status}): {dirs:?}"));
            for d in dirs {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    assert!(left.is_empty(), "dirs left behind:\n{}", left.join("\n"));
}

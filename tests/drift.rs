//! `rig drift` without GCP credentials: against recorded responses in the shapes Google
//! documents (tests/recorded/gcp, served by a small stand-in on loopback), each with a drifted
//! variant that must be reported field by field; and against a local backbone (the Pub/Sub
//! emulator, fake-gcs-server, MariaDB) for subscriptions and the worker's grants.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rig_drift::live::{GcpEndpoints as Endpoints, LiveReader, WorkerIdentity};
use rig_drift::{DriftReport, FindingResult};
use rig_topology::{CloudSpec, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn recorded_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/recorded/gcp")
}

/// Serves recorded responses: a file in `drifted/` (when asked for) wins over the clean one.
/// `testIamPermissions` answers with the recorded permissions that were asked for, as Google
/// does (the answer is always a subset of the request).
struct Recorded {
    base: String,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_recorded(drifted: bool) -> Recorded {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port for the recorded responses");
    let base = format!("http://{}", listener.local_addr().expect("local address"));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 8192];
                let header_end = loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                while buffer.len() < header_end + length {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buffer[header_end..]).to_string();
                let mut request_line = head.lines().next().unwrap_or_default().split(' ');
                let method = request_line.next().unwrap_or_default().to_string();
                let target = request_line.next().unwrap_or_default().to_string();
                seen.lock()
                    .expect("request log")
                    .push(format!("{method} {target}"));
                let (status, response) = answer(drifted, &method, &target, &body);
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{response}",
                    response.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Recorded {
        base,
        requests,
        task,
    }
}

fn answer(drifted: bool, method: &str, target: &str, body: &str) -> (&'static str, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = path.replace("%3A", ":");
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (file, asked): (Option<String>, Option<Vec<String>>) = match segments.as_slice() {
        ["v1", "projects", _, "instances", _] => (Some("sqladmin.instances.get".into()), None),
        ["storage", "v1", "b", _, "iam", "testPermissions"] => (
            Some("storage.buckets.testIamPermissions".into()),
            Some(
                query
                    .split('&')
                    .filter_map(|p| p.strip_prefix("permissions="))
                    .map(str::to_string)
                    .collect(),
            ),
        ),
        ["storage", "v1", "b", _] => (Some("storage.buckets.get".into()), None),
        ["v3", "projects", p] if p.ends_with(":testIamPermissions") => (
            Some("resourcemanager.projects.testIamPermissions".into()),
            Some(asked_in_body(body)),
        ),
        ["v3", "projects", _] => (Some("resourcemanager.projects.get".into()), None),
        [
            "v1",
            "services",
            "servicenetworking.googleapis.com",
            "connections",
        ] => (
            Some("servicenetworking.services.connections.list".into()),
            None,
        ),
        ["v1", "projects", _, "topics", topic, "subscriptions"] if method == "GET" => (
            Some(format!("pubsub.topics.subscriptions.list.{topic}")),
            None,
        ),
        [
            "v1",
            "projects",
            _,
            kind @ ("topics" | "subscriptions"),
            name,
        ] => {
            let (name, verb) = name.split_once(':').unwrap_or((name, ""));
            match verb {
                "testIamPermissions" => (
                    Some(format!("pubsub.{kind}.testIamPermissions")),
                    Some(asked_in_body(body)),
                ),
                "getIamPolicy" if *kind == "topics" => {
                    (Some(format!("pubsub.topics.getIamPolicy.{name}")), None)
                }
                "getIamPolicy" => (Some("pubsub.subscriptions.getIamPolicy".into()), None),
                "" if *kind == "subscriptions" && method == "GET" => {
                    (Some(format!("pubsub.subscriptions.get.{name}")), None)
                }
                _ => (None, None),
            }
        }
        _ => (None, None),
    };
    let text = file.and_then(|f| {
        let clean = recorded_dir().join(format!("{f}.json"));
        let variant = recorded_dir().join(format!("drifted/{f}.json"));
        let chosen = if drifted && variant.is_file() {
            variant
        } else {
            clean
        };
        std::fs::read_to_string(chosen).ok()
    });
    let Some(text) = text else {
        return (
            "404 Not Found",
            serde_json::json!({"error": {"code": 404, "message": format!("no recorded response for {method} {target}"), "status": "NOT_FOUND"}}).to_string(),
        );
    };
    match asked {
        None => ("200 OK", text),
        Some(asked) => {
            let mut recorded: serde_json::Value =
                serde_json::from_str(&text).expect("recorded testIamPermissions response");
            let held: Vec<serde_json::Value> = recorded["permissions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p.as_str().is_some_and(|p| asked.iter().any(|a| a == p)))
                .collect();
            match recorded.as_object_mut() {
                Some(object) if held.is_empty() => {
                    object.remove("permissions");
                }
                Some(object) => {
                    object.insert("permissions".into(), held.into());
                }
                None => {}
            }
            ("200 OK", recorded.to_string())
        }
    }
}

fn asked_in_body(body: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["permissions"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect()
}

fn staging() -> (Topology, CloudSpec) {
    let root = Topology::default_root();
    (
        Topology::load(&root, "staging").expect("staging topology"),
        CloudSpec::load(&root, "staging").expect("staging cloud spec"),
    )
}

async fn drift_against_recorded(drifted: bool) -> (DriftReport, Vec<String>) {
    let recorded = serve_recorded(drifted).await;
    let (topology, spec) = staging();
    let reader = LiveReader::new(
        &spec.project_id,
        Endpoints::all_at(&recorded.base),
        WorkerIdentity::Impersonate(spec.worker_service_account.clone()),
    );
    let report = rig_drift::run(&reader, &topology, &spec, None).await;
    let requests = recorded.requests.lock().expect("request log").clone();
    (report, requests)
}

fn drifted_fields(report: &DriftReport) -> BTreeSet<(String, String)> {
    report
        .drifted()
        .map(|f| (f.resource.clone(), f.field.clone()))
        .collect()
}

fn finding<'r>(report: &'r DriftReport, resource: &str, field: &str) -> &'r rig_drift::Finding {
    report
        .findings
        .iter()
        .find(|f| f.resource == resource && f.field == field)
        .unwrap_or_else(|| panic!("no finding for {resource} / {field}:\n{}", report.render()))
}

#[tokio::test]
async fn recorded_staging_responses_match_the_terraform() {
    let (report, _) = drift_against_recorded(false).await;
    let unreadable: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.result == FindingResult::Unreadable)
        .collect();
    assert!(unreadable.is_empty(), "unreadable:\n{}", report.render());
    assert!(drifted_fields(&report).is_empty(), "{}", report.render());
    assert_eq!(report.exit_code(), 0, "{}", report.render());
    // Every family was compared, not skipped.
    for (resource, field) in [
        ("subscription events.raw.worker", "filter"),
        (
            "subscription events.raw.worker",
            "dead_letter_policy.max_delivery_attempts",
        ),
        (
            "bucket suitex-payload-snapshots-staging",
            "iamConfiguration.publicAccessPrevention",
        ),
        (
            "Cloud SQL instance event-store-staging",
            "settings.ipConfiguration.sslMode",
        ),
        (
            "Cloud SQL instance event-store-staging",
            "settings.availabilityType",
        ),
        ("IAM on project suitex-staging", "worker lacks"),
        (
            "IAM on topic events.dlq",
            "Pub/Sub service agent holds roles/pubsub.publisher",
        ),
    ] {
        assert_eq!(
            finding(&report, resource, field).result,
            FindingResult::Match,
            "{resource} / {field}"
        );
    }
    assert!(
        report.count(FindingResult::Match) >= 60,
        "{}",
        report.render()
    );
    // Without DB_EVENT_STORE_* the grants are skipped, loudly.
    assert_eq!(report.count(FindingResult::Skipped), 1);
}

#[tokio::test]
async fn drifted_recorded_responses_are_reported_field_by_field() {
    let (report, _) = drift_against_recorded(true).await;
    let sql = "Cloud SQL instance event-store-staging";
    let sub = "subscription events.raw.worker";
    let bucket = "bucket suitex-payload-snapshots-staging";
    let peering = "private services connection on suitex-vpc (servicenetworking)";
    let mut expected: BTreeSet<(String, String)> = [
        (sql, "databaseVersion"),
        (sql, "settings.availabilityType"),
        (sql, "settings.backupConfiguration.enabled"),
        (sql, "settings.backupConfiguration.binaryLogEnabled (PITR)"),
        (sql, "settings.backupConfiguration.transactionLogRetentionDays"),
        (sql, "settings.ipConfiguration.ipv4Enabled"),
        (sql, "ipAddresses of type PRIMARY (public IPv4)"),
        (sql, "settings.ipConfiguration.privateNetwork"),
        (sql, "settings.ipConfiguration.allocatedIpRange"),
        (sql, "settings.ipConfiguration.sslMode"),
        (sub, "enable_message_ordering"),
        (sub, "ack_deadline_seconds"),
        (sub, "filter"),
        (sub, "dead_letter_policy.max_delivery_attempts"),
        (sub, "retry_policy.minimum_backoff"),
        (sub, "retry_policy.maximum_backoff"),
        ("topic events.raw", "subscriptions"),
        (bucket, "iamConfiguration.uniformBucketLevelAccess.enabled"),
        (bucket, "iamConfiguration.publicAccessPrevention"),
        (bucket, "lifecycle.rule"),
        ("IAM on bucket suitex-payload-snapshots-staging", "worker holds"),
        ("IAM on bucket suitex-payload-snapshots-staging", "worker lacks"),
        ("IAM on project suitex-staging", "worker lacks"),
        (peering, "reserves suitex-staging-private-services (existing SuiteX range, from existing_peering_ranges)"),
        (peering, "reservedPeeringRanges (whole list)"),
        ("IAM on topic events.dlq", "Pub/Sub service agent holds roles/pubsub.publisher"),
    ]
    .into_iter()
    .map(|(r, f)| (r.to_string(), f.to_string()))
    .collect();
    // Every topic: the worker gained administration; every subscription: it lost consume.
    let (topology, _) = staging();
    for topic in &topology.topics {
        expected.insert((
            format!("IAM on topic {}", topic.name),
            "worker lacks".into(),
        ));
    }
    for s in &topology.subscriptions {
        expected.insert((
            format!("IAM on subscription {}", s.name),
            "worker holds".into(),
        ));
    }
    assert_eq!(drifted_fields(&report), expected, "{}", report.render());
    assert_eq!(report.exit_code(), 1);

    // Both sides are named.
    let ssl = finding(&report, sql, "settings.ipConfiguration.sslMode");
    assert_eq!(ssl.live, "ALLOW_UNENCRYPTED_AND_ENCRYPTED");
    assert_eq!(ssl.declared, "ENCRYPTED_ONLY");
    let public = finding(&report, sql, "ipAddresses of type PRIMARY (public IPv4)");
    assert_eq!(public.live, "34.70.12.34");
    let range = finding(&report, peering, "reservedPeeringRanges (whole list)");
    assert_eq!(
        range.live,
        "suitex-staging-psa-legacy, event-store-psa-staging"
    );
    assert_eq!(
        range.declared,
        "suitex-staging-private-services, event-store-psa-staging"
    );
    let project = finding(&report, "IAM on project suitex-staging", "worker lacks");
    assert_eq!(
        project.live,
        "HOLDS cloudsql.instances.update, cloudsql.users.update"
    );
    let extra = finding(&report, "topic events.raw", "subscriptions");
    assert!(
        extra
            .note
            .contains("projects/suitex-analytics/subscriptions/raw-copy"),
        "{}",
        extra.note
    );
    let attempts = finding(&report, sub, "dead_letter_policy.max_delivery_attempts");
    assert_eq!(
        (attempts.live.as_str(), attempts.declared.as_str()),
        ("10", "5")
    );
}

#[tokio::test]
async fn drift_only_reads() {
    let (_, requests) = drift_against_recorded(false).await;
    assert!(!requests.is_empty());
    for request in &requests {
        let ok = request.starts_with("GET ")
            || (request.starts_with("POST ") && request.contains(":testIamPermissions"));
        assert!(
            ok,
            "drift sent a request that is neither a read nor a permission test: {request}"
        );
    }
}

#[tokio::test]
async fn the_drift_command_prints_json_and_exits_by_result() {
    for (drifted, code) in [(false, 0), (true, 1)] {
        let recorded = serve_recorded(drifted).await;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rig"));
        command.args([
            "drift",
            "--project",
            "suitex-staging",
            "--environment",
            "staging",
            "--json",
        ]);
        for (variable, _) in rig_drift::live::ENDPOINT_VARIABLES {
            command.env(variable, &recorded.base);
        }
        for variable in ["DB_EVENT_STORE_HOST", "RIG_TARGET"] {
            command.env_remove(variable);
        }
        let output = command.output().await.expect("running rig drift");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(code),
            "drifted={drifted}\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value = serde_json::from_str(&stdout).expect("--json output");
        assert_eq!(json["version"], 1);
        assert_eq!(json["project"], "suitex-staging");
        let drift = json["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .filter(|f| f["result"] == "drift")
            .count();
        assert_eq!(drift > 0, drifted, "{stdout}");
    }
}

#[tokio::test]
async fn the_drift_command_refuses_prod_unless_told() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rig"))
        .args(["drift", "--project", "suitex-prod", "--environment", "prod"])
        .env("RIG_GCP_SQLADMIN_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .await
        .expect("running rig drift");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-prod"), "{stderr}");
}

#[tokio::test]
async fn the_drift_command_refuses_a_project_the_terraform_does_not_name() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rig"))
        .args([
            "drift",
            "--project",
            "suitex-dev",
            "--environment",
            "staging",
        ])
        .output()
        .await
        .expect("running rig drift");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("suitex-staging"), "{stderr}");
}

/// The GCP code path against a local backbone: subscriptions from the Pub/Sub emulator, the
/// bucket from fake-gcs-server, the worker's grants from MariaDB; the reads no emulator serves
/// from the recorded responses.
#[tokio::test(flavor = "multi_thread")]
async fn drift_against_a_local_backbone_reports_subscription_and_grant_drift() {
    let (backbone, env) = support::deployed("driftlocal").await;
    let recorded = serve_recorded(false).await;
    let root = Topology::default_root();
    let mut spec = CloudSpec::load(&root, "dev").expect("dev cloud spec");
    // Locally the ledger lives in the scope's own database, and there is no acceptance one.
    spec.event_store.database = env.event_store.database.clone();
    spec.event_store.acceptance_databases.clear();
    let mut topology = support::dev_topology();
    topology.bucket.name = env.bucket.clone();
    let endpoints = Endpoints {
        pubsub: env.pubsub.endpoint.clone(),
        storage: env.storage.endpoint.clone(),
        ..Endpoints::all_at(&recorded.base)
    };
    let reader = LiveReader::new(
        &env.pubsub.project_id,
        endpoints.clone(),
        WorkerIdentity::Adc,
    );

    let clean = rig_drift::run(&reader, &topology, &spec, Some(&env.event_store)).await;
    for s in &topology.subscriptions {
        let resource = format!("subscription {}", s.name);
        let rows: Vec<_> = clean
            .findings
            .iter()
            .filter(|f| f.resource == resource)
            .collect();
        assert!(rows.len() >= 8, "{}", clean.render());
        assert!(
            rows.iter().all(|f| f.result == FindingResult::Match),
            "{}",
            clean.render()
        );
    }
    let grants: Vec<_> = clean
        .findings
        .iter()
        .filter(|f| f.resource.starts_with("event store user sync_worker"))
        .collect();
    assert_eq!(grants.len(), 3, "{}", clean.render());
    assert!(
        grants.iter().all(|f| f.result == FindingResult::Match),
        "{}",
        clean.render()
    );
    // fake-gcs-server keeps none of the bucket's settings: that is reported, never hidden.
    assert_eq!(
        finding(
            &clean,
            &format!("bucket {}", env.bucket),
            "iamConfiguration.publicAccessPrevention"
        )
        .result,
        FindingResult::Drift
    );

    // Drift the emulator's subscriptions: provision a second project from a changed topology
    // and compare it with the Terraform's.
    let mut changed = support::dev_topology();
    for s in changed
        .subscriptions
        .iter_mut()
        .filter(|s| s.name == "events.raw.worker")
    {
        s.enable_message_ordering = false;
        s.filter = None;
        if let Some(dl) = s.dead_letter.as_mut() {
            dl.max_delivery_attempts = 6;
        }
    }
    let drifted_project = rig_events::pubsub::PubsubConnection {
        project_id: format!("{}-drifted", env.pubsub.project_id),
        ..env.pubsub.clone()
    };
    rig_harness::provision::apply_pubsub(&drifted_project, &changed)
        .await
        .expect("provisioning the drifted project on the emulator");
    // Widen the worker the way Cloud SQL can: a role.
    let mut admin = support::connect(&env.event_store_admin).await;
    for sql in [
        "CREATE ROLE IF NOT EXISTS cloudsqlsuperuser",
        "GRANT cloudsqlsuperuser TO 'sync_worker'@'%'",
    ] {
        sqlx::query(sql).execute(&mut admin).await.expect(sql);
    }
    let reader = LiveReader::new(&drifted_project.project_id, endpoints, WorkerIdentity::Adc);
    let drifted = rig_drift::run(&reader, &topology, &spec, Some(&env.event_store)).await;
    let sub = "subscription events.raw.worker";
    let fields: BTreeSet<String> = drifted
        .drifted()
        .filter(|f| f.resource == sub)
        .map(|f| f.field.clone())
        .collect();
    assert_eq!(
        fields,
        [
            "enable_message_ordering",
            "filter",
            "dead_letter_policy.max_delivery_attempts"
        ]
        .into_iter()
        .map(str::to_string)
        .collect(),
        "{}",
        drifted.render()
    );
    let roles = drifted
        .findings
        .iter()
        .find(|f| {
            f.resource.starts_with("event store user sync_worker") && f.field == "roles granted"
        })
        .unwrap_or_else(|| panic!("no roles finding:\n{}", drifted.render()));
    assert_eq!(roles.result, FindingResult::Drift, "{}", drifted.render());
    assert_eq!(roles.live, "cloudsqlsuperuser");
    drop(backbone);
}

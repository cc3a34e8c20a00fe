//! The Terraform under infra/terraform against the epic: the topology the rig reads from it,
//! the policy checks, and proof that each check fails when its requirement is removed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rig_topology::policy::{self, CHECKS};
use rig_topology::{Topology, TopologyError};

fn terraform_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/terraform")
}

const ENVIRONMENTS: [&str; 3] = ["dev", "staging", "prod"];

#[test]
fn every_environment_parses_into_the_agreed_topology() {
    for env in ENVIRONMENTS {
        let topology =
            Topology::load(&terraform_root(), env).unwrap_or_else(|e| panic!("{env}: {e}"));
        assert_eq!(topology.environment, env);
        let topics: Vec<&str> = topology.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            topics,
            ["events.dlq", "events.merged", "events.raw"],
            "{env}"
        );

        let names: Vec<&str> = topology
            .subscriptions
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        let mut expected = vec![
            "events.dlq.inspect",
            "events.merged.worker",
            "events.raw.validation",
            "events.raw.worker",
        ];
        // Staging acceptance exists in dev and staging only.
        if env != "prod" {
            expected.extend([
                "events.dlq.acceptance",
                "events.merged.acceptance",
                "events.raw.acceptance",
            ]);
            expected.sort_unstable();
        }
        assert_eq!(names, expected, "{env}");
        for name in names.iter().filter(|n| n.ends_with(".acceptance")) {
            let sub = topology.subscription(name).expect("listed");
            assert!(sub.is_acceptance(), "{env}: {name} purpose label");
            assert_eq!(sub.filter.as_deref(), Some("attributes:backbone_probe"));
        }
        for (name, topic) in [
            ("events.raw.worker", "events.raw"),
            ("events.raw.validation", "events.raw"),
            ("events.merged.worker", "events.merged"),
        ] {
            let sub = topology
                .subscription(name)
                .unwrap_or_else(|| panic!("{env}: {name} missing"));
            assert_eq!(sub.topic, topic);
            assert!(sub.enable_message_ordering, "{env}: {name} ordering");
            let dead_letter = sub
                .dead_letter
                .as_ref()
                .unwrap_or_else(|| panic!("{env}: {name} has no dead-letter policy"));
            assert_eq!(dead_letter.topic, "events.dlq");
            assert_eq!(dead_letter.max_delivery_attempts, 5);
            let retry = sub
                .retry
                .as_ref()
                .unwrap_or_else(|| panic!("{env}: {name} has no retry policy"));
            // dev redelivers quickly (its terraform.tfvars); staging and prod keep the defaults.
            let (min, max) = if env == "dev" { (1, 10) } else { (10, 600) };
            assert_eq!(
                retry.minimum_backoff,
                Duration::from_secs(min),
                "{env}: {name}"
            );
            assert_eq!(
                retry.maximum_backoff,
                Duration::from_secs(max),
                "{env}: {name}"
            );
            assert_eq!(sub.ack_deadline_seconds, 60);
        }
        let dlq = topology
            .subscription("events.dlq.inspect")
            .unwrap_or_else(|| panic!("{env}: dlq subscription"));
        assert_eq!(dlq.topic, "events.dlq");
        assert_eq!(dlq.dead_letter, None);

        assert_eq!(
            topology.probe_attribute().as_deref(),
            Some("backbone_probe")
        );
        assert_eq!(
            topology.validation_subscription().map(|s| s.name.as_str()),
            Some("events.raw.validation")
        );
        assert_eq!(
            topology
                .subscription("events.raw.validation")
                .and_then(|s| s.filter.as_deref()),
            Some("attributes:backbone_probe")
        );
        assert_eq!(
            topology
                .worker_subscription("events.raw")
                .map(|s| s.name.as_str()),
            Some("events.raw.worker")
        );
        assert_eq!(
            topology
                .subscription("events.raw.worker")
                .and_then(|s| s.filter.as_deref()),
            Some("NOT attributes:backbone_probe")
        );
        assert_eq!(
            topology
                .worker_subscription("events.merged")
                .map(|s| s.name.as_str()),
            Some("events.merged.worker")
        );
        assert_eq!(
            topology
                .subscription("events.merged.worker")
                .and_then(|s| s.filter.as_deref()),
            Some("NOT attributes:backbone_probe")
        );

        assert_eq!(
            topology.bucket.name,
            format!("suitex-payload-snapshots-{env}")
        );
        assert!(topology.bucket.uniform_bucket_level_access);
        assert_eq!(topology.bucket.public_access_prevention, "enforced");
        assert_eq!(topology.bucket.delete_after_days, Some(30));
    }
}

#[test]
fn environments_are_discovered_from_the_tree() {
    assert_eq!(
        Topology::environments(&terraform_root()),
        ["dev", "prod", "staging"]
    );
}

#[test]
fn every_policy_check_passes_on_the_real_tree() {
    let violations = policy::check_all(&terraform_root()).unwrap_or_else(|e| panic!("{e}"));
    let report: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(
        report.is_empty(),
        "policy violations:\n{}",
        report.join("\n")
    );
}

#[test]
fn unknown_environment_is_a_clear_error() {
    let err = Topology::load(&terraform_root(), "qa").expect_err("qa does not exist");
    let message = err.to_string();
    assert!(
        message.contains("envs/qa") && message.contains("dev"),
        "{message}"
    );
}

// ---- mutation tests: each check must fail, alone, when its requirement is removed ----

/// A private copy of the Terraform tree to break.
struct Copy {
    dir: tempfile::TempDir,
}

impl Copy {
    fn new() -> Copy {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_tree(&terraform_root(), dir.path());
        Copy { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.root().join(file), text).unwrap_or_else(|e| panic!("{file}: {e}"));
    }

    /// Replaces `key = old` (any alignment) with `key = new`; the line must occur exactly once.
    fn set(&self, file: &str, key: &str, old: &str, new: &str) {
        let text = self.read(file);
        let mut hits = 0;
        let lines: Vec<String> = text
            .lines()
            .map(|line| {
                let trimmed = line.trim_start();
                let matches = trimmed
                    .strip_prefix(key)
                    .and_then(|rest| rest.trim_start().strip_prefix('='))
                    .is_some_and(|value| value.trim() == old);
                if matches {
                    hits += 1;
                    let indent = &line[..line.len() - trimmed.len()];
                    format!("{indent}{key} = {new}")
                } else {
                    line.to_string()
                }
            })
            .collect();
        assert_eq!(hits, 1, "{file}: expected exactly one `{key} = {old}`");
        self.write(file, &(lines.join("\n") + "\n"));
    }

    /// Replaces text that must occur exactly once.
    fn replace(&self, file: &str, old: &str, new: &str) {
        let text = self.read(file);
        assert_eq!(
            text.matches(old).count(),
            1,
            "{file}: expected exactly one `{old}`"
        );
        self.write(file, &text.replacen(old, new, 1));
    }

    fn remove_line(&self, file: &str, starts_with: &str) {
        let text = self.read(file);
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with(starts_with))
            .collect();
        assert_eq!(
            kept.len() + 1,
            text.lines().count(),
            "{file}: expected exactly one line starting `{starts_with}`"
        );
        self.write(file, &(kept.join("\n") + "\n"));
    }

    fn append(&self, file: &str, text: &str) {
        let mut current = std::fs::read_to_string(self.root().join(file)).unwrap_or_default();
        current.push_str(text);
        self.write(file, &current);
    }

    fn delete(&self, file: &str) {
        std::fs::remove_file(self.root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    }

    fn failing_checks(&self) -> BTreeSet<&'static str> {
        policy::check(self.root(), "dev")
            .unwrap_or_else(|e| panic!("mutated tree must still load: {e}"))
            .into_iter()
            .map(|v| v.check)
            .collect()
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name == ".terraform" {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name)).expect("copy");
        }
    }
}

const M: &str = "modules/backbone";

struct Mutation {
    check: &'static str,
    what: &'static str,
    apply: fn(&Copy),
}

const MUTATIONS: &[Mutation] = &[
    Mutation {
        check: "sql-public-ip-disabled",
        what: "public IP on",
        apply: |c| c.set(&format!("{M}/sql.tf"), "ipv4_enabled", "false", "true"),
    },
    Mutation {
        check: "sql-regional-ha",
        what: "zonal instance",
        apply: |c| {
            c.set(
                &format!("{M}/sql.tf"),
                "availability_type",
                "\"REGIONAL\"",
                "\"ZONAL\"",
            )
        },
    },
    Mutation {
        check: "sql-backups-pitr",
        what: "binary log off",
        apply: |c| {
            c.set(
                &format!("{M}/sql.tf"),
                "binary_log_enabled",
                "true",
                "false",
            )
        },
    },
    Mutation {
        check: "sql-backups-pitr",
        what: "no log retention",
        apply: |c| c.remove_line(&format!("{M}/sql.tf"), "transaction_log_retention_days"),
    },
    Mutation {
        check: "sql-mysql-8",
        what: "MySQL 8.0",
        apply: |c| {
            c.set(
                &format!("{M}/sql.tf"),
                "database_version",
                "\"MYSQL_8_4\"",
                "\"MYSQL_8_0\"",
            )
        },
    },
    Mutation {
        check: "sql-tls-required",
        what: "TLS optional",
        apply: |c| {
            c.set(
                &format!("{M}/sql.tf"),
                "ssl_mode",
                "\"ENCRYPTED_ONLY\"",
                "\"ALLOW_UNENCRYPTED_AND_ENCRYPTED\"",
            )
        },
    },
    Mutation {
        check: "sql-deletion-protection",
        what: "deletion protection off",
        apply: |c| {
            c.set(
                &format!("{M}/sql.tf"),
                "deletion_protection",
                "true",
                "false",
            )
        },
    },
    Mutation {
        check: "sql-deletion-protection",
        what: "API deletion protection off",
        apply: |c| {
            c.set(
                &format!("{M}/sql.tf"),
                "deletion_protection_enabled",
                "true",
                "false",
            )
        },
    },
    Mutation {
        check: "sql-existing-vpc",
        what: "VPC created here",
        apply: |c| {
            c.write(
                &format!("{M}/extra_network.tf"),
                "resource \"google_compute_network\" \"suitex\" {\n  name = var.network_name\n}\n",
            )
        },
    },
    Mutation {
        check: "sql-existing-vpc",
        what: "private network hard-coded",
        apply: |c| {
            c.set(
                &format!("{M}/sql.tf"),
                "private_network",
                "data.google_compute_network.suitex.id",
                "\"projects/p/global/networks/suitex-vpc\"",
            )
        },
    },
    Mutation {
        check: "sql-trigger-flag",
        what: "trigger flag off",
        apply: |c| c.set(&format!("{M}/sql.tf"), "value", "\"on\"", "\"off\""),
    },
    Mutation {
        check: "sql-database-and-user",
        what: "database renamed",
        apply: |c| {
            c.set(
                &format!("{M}/sql.tf"),
                "name",
                "\"events\"",
                "\"event_store\"",
            )
        },
    },
    Mutation {
        check: "sql-database-and-user",
        what: "user renamed",
        apply: |c| {
            c.set(
                &format!("{M}/sql.tf"),
                "name",
                "\"sync_worker\"",
                "\"worker\"",
            )
        },
    },
    Mutation {
        check: "peering-ranges-protected",
        what: "existing ranges dropped",
        apply: |c| {
            c.set(&format!("{M}/network.tf"), "reserved_peering_ranges", "concat(var.existing_peering_ranges, [google_compute_global_address.event_store.name])", "[google_compute_global_address.event_store.name]")
        },
    },
    Mutation {
        check: "peering-ranges-protected",
        what: "peering deleted on destroy",
        apply: |c| {
            c.set(
                &format!("{M}/network.tf"),
                "deletion_policy",
                "\"ABANDON\"",
                "\"\"",
            )
        },
    },
    Mutation {
        check: "pubsub-topics-present",
        what: "merged topic renamed",
        apply: |c| {
            c.set(
                &format!("{M}/main.tf"),
                "merged",
                "\"events.merged\"",
                "\"events.combined\"",
            )
        },
    },
    Mutation {
        check: "pubsub-ordering",
        what: "ordering off",
        apply: |c| {
            c.set(
                &format!("{M}/pubsub.tf"),
                "enable_message_ordering",
                "true",
                "false",
            )
        },
    },
    Mutation {
        check: "pubsub-dead-letter-5",
        what: "6 attempts",
        apply: |c| c.set(&format!("{M}/pubsub.tf"), "max_delivery_attempts", "5", "6"),
    },
    Mutation {
        check: "pubsub-dead-letter-5",
        what: "dead letters to merged",
        apply: |c| {
            c.set(
                &format!("{M}/pubsub.tf"),
                "dead_letter_topic",
                "google_pubsub_topic.this[\"dlq\"].id",
                "google_pubsub_topic.this[\"merged\"].id",
            )
        },
    },
    Mutation {
        check: "pubsub-retry-and-ack",
        what: "no ack deadline",
        apply: |c| c.remove_line(&format!("{M}/pubsub.tf"), "ack_deadline_seconds"),
    },
    Mutation {
        check: "pubsub-retry-and-ack",
        what: "no maximum backoff",
        apply: |c| c.remove_line(&format!("{M}/pubsub.tf"), "maximum_backoff"),
    },
    Mutation {
        check: "pubsub-dlq-subscription",
        what: "dlq subscription removed",
        apply: |c| c.delete(&format!("{M}/pubsub_dlq.tf")),
    },
    Mutation {
        check: "pubsub-probe-filters",
        what: "worker sees probes",
        apply: |c| {
            c.replace(
                &format!("{M}/main.tf"),
                "name    = \"events.raw.worker\"\n      topic   = \"raw\"\n      filter  = \"NOT attributes:${local.probe_attribute}\"",
                "name    = \"events.raw.worker\"\n      topic   = \"raw\"\n      filter  = null",
            )
        },
    },
    Mutation {
        check: "pubsub-probe-filters",
        what: "downstream consumer sees probes",
        apply: |c| {
            c.replace(
                &format!("{M}/main.tf"),
                "name    = \"events.merged.worker\"\n      topic   = \"merged\"\n      filter  = \"NOT attributes:${local.probe_attribute}\"",
                "name    = \"events.merged.worker\"\n      topic   = \"merged\"\n      filter  = null",
            )
        },
    },
    Mutation {
        check: "pubsub-probe-filters",
        what: "validation sees everything",
        apply: |c| {
            c.replace(
                &format!("{M}/main.tf"),
                "name    = \"events.raw.validation\"\n      topic   = \"raw\"\n      filter  = \"attributes:${local.probe_attribute}\"",
                "name    = \"events.raw.validation\"\n      topic   = \"raw\"\n      filter  = null",
            )
        },
    },
    Mutation {
        check: "acceptance-dev-staging-only",
        what: "acceptance off in dev",
        apply: |c| {
            c.set(
                "envs/dev/terraform.tfvars",
                "acceptance_enabled",
                "true",
                "false",
            )
        },
    },
    Mutation {
        check: "acceptance-dev-staging-only",
        what: "no acceptance database",
        apply: |c| {
            c.replace(
                &format!("{M}/sql.tf"),
                "for_each = var.acceptance_enabled ? toset([\"events_acceptance\"]) : toset([])",
                "for_each = toset([])",
            )
        },
    },
    Mutation {
        check: "operators-read-only",
        what: "the drift reader may update subscriptions",
        apply: |c| {
            c.replace(
                &format!("{M}/iam_operators.tf"),
                "\"pubsub.subscriptions.get\",",
                "\"pubsub.subscriptions.get\",\n    \"pubsub.subscriptions.update\",",
            )
        },
    },
    Mutation {
        check: "operators-read-only",
        what: "acceptance runners get the worker's admin role",
        apply: |c| {
            c.replace(
                &format!("{M}/iam_operators.tf"),
                "role               = \"roles/iam.serviceAccountTokenCreator\"",
                "role               = \"roles/iam.serviceAccountAdmin\"",
            );
            // Grants exist only for listed members.
            c.append(
                "envs/dev/terraform.tfvars",
                "acceptance_runners = [\"user:tester@example.com\"]\n",
            );
        },
    },
    Mutation {
        check: "acceptance-mirrors-worker",
        what: "acceptance sees real traffic",
        apply: |c| {
            c.replace(
                &format!("{M}/main.tf"),
                "name    = \"events.raw.acceptance\"\n      topic   = \"raw\"\n      filter  = \"attributes:${local.probe_attribute}\"",
                "name    = \"events.raw.acceptance\"\n      topic   = \"raw\"\n      filter  = null",
            )
        },
    },
    Mutation {
        check: "acceptance-mirrors-worker",
        what: "acceptance without ordering",
        apply: |c| {
            c.replace(
                &format!("{M}/pubsub.tf"),
                "enable_message_ordering = true",
                "enable_message_ordering = contains(keys(local.acceptance_subscriptions), each.key) ? false : true",
            )
        },
    },
    Mutation {
        check: "pubsub-service-agent-iam",
        what: "service agent grants removed",
        apply: |c| c.delete(&format!("{M}/iam_pubsub_service_agent.tf")),
    },
    Mutation {
        check: "pubsub-service-agent-iam",
        what: "wrong service agent",
        apply: |c| {
            c.replace(
                &format!("{M}/main.tf"),
                "@gcp-sa-pubsub.iam",
                "@gcp-sa-pubsub-typo.iam",
            )
        },
    },
    Mutation {
        check: "worker-roles-resource-level",
        what: "bucket role downgraded",
        apply: |c| {
            c.replace(
                &format!("{M}/iam_worker.tf"),
                "roles/storage.objectAdmin",
                "roles/storage.objectViewer",
            )
        },
    },
    Mutation {
        check: "worker-roles-resource-level",
        what: "project-wide grant",
        apply: |c| {
            c.write(&format!("{M}/extra_iam.tf"), "resource \"google_project_iam_member\" \"worker\" {\n  project = var.project_id\n  role    = \"roles/pubsub.publisher\"\n  member  = local.worker_member\n}\n")
        },
    },
    Mutation {
        check: "bucket-settings",
        what: "not enforced",
        apply: |c| {
            c.set(
                &format!("{M}/bucket.tf"),
                "public_access_prevention",
                "\"enforced\"",
                "\"inherited\"",
            )
        },
    },
    Mutation {
        check: "bucket-settings",
        what: "uniform access off",
        apply: |c| {
            c.set(
                &format!("{M}/bucket.tf"),
                "uniform_bucket_level_access",
                "true",
                "false",
            )
        },
    },
    Mutation {
        check: "bucket-settings",
        what: "90-day lifecycle",
        apply: |c| c.set(&format!("{M}/bucket.tf"), "age", "30", "90"),
    },
    Mutation {
        check: "bucket-settings",
        what: "name without environment",
        apply: |c| {
            c.set(
                &format!("{M}/bucket.tf"),
                "name",
                "\"suitex-payload-snapshots-${var.environment}\"",
                "\"suitex-payload-snapshots\"",
            )
        },
    },
    Mutation {
        check: "no-password-in-tfvars",
        what: "literal password",
        apply: |c| {
            c.set(
                &format!("{M}/sql.tf"),
                "password",
                "random_password.sync_worker.result",
                "\"hunter2-hunter2\"",
            )
        },
    },
    Mutation {
        check: "no-password-in-tfvars",
        what: "password in tfvars",
        apply: |c| {
            for env in ["dev", "staging", "prod"] {
                c.append(
                    &format!("envs/{env}/variables.tf"),
                    "\nvariable \"db_password\" {\n  type    = string\n  default = null\n}\n",
                );
            }
            c.append("envs/dev/terraform.tfvars", "db_password = \"hunter2\"\n");
        },
    },
    Mutation {
        check: "env-roots-identical",
        what: "prod root edited",
        apply: |c| c.append("envs/prod/main.tf", "# prod only\n"),
    },
    Mutation {
        check: "env-roots-identical",
        what: "extra file in staging",
        apply: |c| c.write("envs/staging/extra.tf", "locals {}\n"),
    },
];

#[test]
fn each_check_fails_alone_on_its_mutation() {
    let mut failures = Vec::new();
    for mutation in MUTATIONS {
        let copy = Copy::new();
        (mutation.apply)(&copy);
        let failing = copy.failing_checks();
        let expected = BTreeSet::from([mutation.check]);
        if failing != expected {
            failures.push(format!(
                "{} ({}): expected {expected:?}, got {failing:?}",
                mutation.check, mutation.what
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "mutations not caught exactly:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_check_has_a_mutation() {
    let covered: BTreeSet<&str> = MUTATIONS.iter().map(|m| m.check).collect();
    let all: BTreeSet<&str> = CHECKS.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        covered, all,
        "add a mutation for each check (and a check for each mutation)"
    );
}

#[test]
fn violations_name_check_file_and_fix() {
    let copy = Copy::new();
    copy.set(&format!("{M}/pubsub.tf"), "max_delivery_attempts", "5", "6");
    let violations = policy::check(copy.root(), "dev").expect("loads");
    let violation = violations.first().expect("one violation");
    let text = violation.to_string();
    assert!(text.starts_with("[pubsub-dead-letter-5] "), "{text}");
    assert!(text.contains("pubsub.tf:"), "{text}");
    assert!(text.contains("max_delivery_attempts = 5"), "{text}");
}

// ---- parser errors carry file:line ----

fn load_error(mutate: impl Fn(&Copy)) -> TopologyError {
    let copy = Copy::new();
    mutate(&copy);
    Topology::load(copy.root(), "dev").expect_err("the mutated tree must not load")
}

fn assert_points_at(err: &TopologyError, file: &str, line: usize) {
    let location = err
        .location()
        .unwrap_or_else(|| panic!("no location in: {err}"));
    assert!(location.file.ends_with(file), "{err}");
    assert_eq!(location.line, line, "{err}");
    assert!(err.to_string().contains(&format!("{file}:{line}")), "{err}");
}

#[test]
fn unknown_function_is_an_error_with_file_and_line() {
    let err = load_error(|c| {
        c.write(
            &format!("{M}/extra.tf"),
            "locals {\n  hashed = sha256(\"x\")\n}\n",
        )
    });
    assert_points_at(&err, "extra.tf", 2);
    assert!(err.to_string().contains("sha256"), "{err}");
}

#[test]
fn unresolvable_reference_is_an_error_with_file_and_line() {
    let err = load_error(|c| {
        c.set(
            &format!("{M}/pubsub.tf"),
            "dead_letter_topic",
            "google_pubsub_topic.this[\"dlq\"].id",
            "google_pubsub_topic.missing.id",
        )
    });
    let text = err.to_string();
    assert!(text.contains("google_pubsub_topic.missing"), "{text}");
    assert!(text.contains("pubsub.tf:"), "{text}");
}

#[test]
fn dynamic_block_is_an_error_with_file_and_line() {
    let err = load_error(|c| {
        c.write(&format!("{M}/extra.tf"), "resource \"google_pubsub_topic\" \"extra\" {\n  name = \"events.extra\"\n\n  dynamic \"schema_settings\" {\n    for_each = []\n    content {}\n  }\n}\n")
    });
    assert_points_at(&err, "extra.tf", 4);
}

#[test]
fn unknown_top_level_block_is_an_error_with_file_and_line() {
    let err = load_error(|c| {
        c.write(
            &format!("{M}/extra.tf"),
            "\nmoved {\n  from = a.b\n  to   = a.c\n}\n",
        )
    });
    assert_points_at(&err, "extra.tf", 2);
}

#[test]
fn syntax_error_is_an_error_with_file_and_line() {
    let err = load_error(|c| {
        c.write(
            &format!("{M}/extra.tf"),
            "locals {\n  a = 1\n  b = = 2\n}\n",
        )
    });
    assert_points_at(&err, "extra.tf", 3);
}

#[test]
fn missing_and_undeclared_values_are_errors() {
    let err = load_error(|c| c.remove_line("envs/dev/terraform.tfvars", "network_name"));
    assert!(
        err.to_string().contains("network_name") && err.to_string().contains("terraform.tfvars"),
        "{err}"
    );
    let tfvars = Topology::default_root().join("envs/dev/terraform.tfvars");
    let appended_line = std::fs::read_to_string(&tfvars)
        .expect("reading dev tfvars")
        .lines()
        .count()
        + 1;
    let err = load_error(|c| c.append("envs/dev/terraform.tfvars", "typo_variable = 1\n"));
    assert_points_at(&err, "terraform.tfvars", appended_line);
}

#[test]
fn variable_validation_is_enforced() {
    let err = load_error(|c| {
        c.set(
            "envs/dev/terraform.tfvars",
            "existing_peering_ranges",
            "[\"suitex-dev-private-services\"]",
            "[]",
        )
    });
    assert!(err.to_string().contains("existing_peering_ranges"), "{err}");
}

#[test]
fn terraform_fmt_check_passes() {
    let Ok(output) = std::process::Command::new("terraform")
        .args(["fmt", "-check", "-recursive"])
        .arg(terraform_root())
        .output()
    else {
        eprintln!(
            "SKIPPED terraform_fmt_check_passes: `terraform` is not on PATH; install Terraform >= 1.7 to run `terraform fmt -check -recursive infra/terraform`"
        );
        return;
    };
    assert!(
        output.status.success(),
        "terraform fmt -check -recursive failed; run `terraform fmt -recursive infra/terraform`:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

//! Static checks that the Terraform still declares what the epic requires. Each check has a
//! stable name (tests and CI output refer to it) and reports the file to fix.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use super::parse::{self, Configuration, EvalAttr, EvalBody, Mode, ResourceInstance, Value};
use super::{
    Location, ProbeFilter, Subscription, Topology, TopologyError, filter_attribute, probe_filter,
};

/// Topic ids the epic names. They are requirements checked against the Terraform, not a
/// second source for provisioning (that is always [`Topology`]).
const RAW: &str = "events.raw";
const MERGED: &str = "events.merged";
const DLQ: &str = "events.dlq";

const PUBLISHER: &str = "roles/pubsub.publisher";
const SUBSCRIBER: &str = "roles/pubsub.subscriber";
const OBJECT_ADMIN: &str = "roles/storage.objectAdmin";

/// Every check, with the requirement it guards.
pub const CHECKS: &[(&str, &str)] = &[
    (
        "sql-public-ip-disabled",
        "Cloud SQL has no public IP (ipv4_enabled = false)",
    ),
    (
        "sql-regional-ha",
        "Cloud SQL is highly available (availability_type = REGIONAL)",
    ),
    (
        "sql-backups-pitr",
        "automated backups with binary logging and a stated log retention (PITR)",
    ),
    (
        "sql-mysql-8",
        "MySQL 8.x, not the end-of-life 8.0 (MYSQL_8_4)",
    ),
    (
        "sql-tls-required",
        "connections must use TLS (ssl_mode = ENCRYPTED_ONLY)",
    ),
    (
        "sql-deletion-protection",
        "deletion_protection and settings.deletion_protection_enabled are on",
    ),
    (
        "sql-existing-vpc",
        "private IP on the existing SuiteX VPC, looked up by a data source, never created",
    ),
    (
        "sql-trigger-flag",
        "log_bin_trust_function_creators = on, so the migrations can create triggers",
    ),
    (
        "sql-database-and-user",
        "database `events` and user `sync_worker` exist",
    ),
    (
        "peering-ranges-protected",
        "the servicenetworking connection keeps the existing peering ranges and is never deleted",
    ),
    (
        "pubsub-topics-present",
        "topics events.raw, events.merged and events.dlq exist",
    ),
    (
        "pubsub-ordering",
        "subscriptions on events.raw and events.merged enable message ordering",
    ),
    (
        "pubsub-dead-letter-5",
        "subscriptions on events.raw and events.merged dead-letter to events.dlq after 5 attempts",
    ),
    (
        "pubsub-retry-and-ack",
        "subscriptions on events.raw and events.merged state a retry policy and an ack deadline",
    ),
    (
        "pubsub-dlq-subscription",
        "events.dlq has a subscription, so dead letters are kept",
    ),
    (
        "pubsub-probe-filters",
        "one subscription on events.raw selects probes; the others exclude them",
    ),
    (
        "acceptance-dev-staging-only",
        "dev and staging declare the acceptance subscriptions (raw, merged, dlq) and the events_acceptance database; prod declares none",
    ),
    (
        "acceptance-mirrors-worker",
        "acceptance subscriptions select probes only, with the worker's ordering, ack deadline, dead-letter and retry settings",
    ),
    (
        "operators-read-only",
        "the drift reader role (rig drift) holds only get/getIamPolicy permissions, and people get nothing beyond it but impersonation of the worker",
    ),
    (
        "pubsub-service-agent-iam",
        "the Pub/Sub service agent can publish to events.dlq and subscribe to each dead-lettering subscription",
    ),
    (
        "worker-roles-resource-level",
        "the worker account holds publisher, subscriber and objectAdmin on the backbone's own resources, not project-wide",
    ),
    (
        "bucket-settings",
        "suitex-payload-snapshots-<env>: uniform access, public access prevention enforced, delete at 30 days",
    ),
    (
        "no-password-in-tfvars",
        "passwords are generated, kept in Secret Manager, and never written in tfvars or literals",
    ),
    (
        "env-roots-identical",
        "dev, staging and prod roots differ only in their values files",
    ),
];

/// A requirement the Terraform no longer meets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyViolation {
    /// Name from [`CHECKS`].
    pub check: &'static str,
    pub location: Location,
    /// What is wrong and what to change.
    pub message: String,
}

impl fmt::Display for PolicyViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.check, self.location, self.message)
    }
}

/// Runs every check against one environment. An error means the Terraform could not be read
/// at all; violations mean it was read and misses a requirement.
pub fn check(
    terraform_root: &Path,
    environment: &str,
) -> Result<Vec<PolicyViolation>, TopologyError> {
    let config = parse::load_environment(terraform_root, environment)?;
    let topology = Topology::from_configuration(&config, environment)?;
    let mut run = Run {
        config: &config,
        topology: &topology,
        out: Vec::new(),
    };
    run.sql();
    run.peering();
    run.pubsub();
    run.service_agent();
    run.worker();
    run.bucket();
    run.passwords();
    run.acceptance();
    run.operators();
    run.out.extend(env_roots_identical(terraform_root)?);
    Ok(run.out)
}

/// [`check`] over every directory under `envs/`.
pub fn check_all(terraform_root: &Path) -> Result<Vec<PolicyViolation>, TopologyError> {
    let mut out = Vec::new();
    for environment in Topology::environments(terraform_root) {
        for violation in check(terraform_root, &environment)? {
            if !out.contains(&violation) {
                out.push(violation);
            }
        }
    }
    Ok(out)
}

struct Run<'a> {
    config: &'a Configuration,
    topology: &'a Topology,
    out: Vec<PolicyViolation>,
}

/// One IAM grant on a resource (from `*_iam_member` or `*_iam_binding`).
struct Grant {
    target: Option<String>,
    role: String,
    member: String,
}

impl<'a> Run<'a> {
    fn fail(&mut self, check: &'static str, location: &Location, message: impl Into<String>) {
        self.out.push(PolicyViolation {
            check,
            location: location.clone(),
            message: message.into(),
        });
    }

    fn env_location(&self) -> Location {
        Location::new(self.config.environment_dir.clone(), 0)
    }

    fn sql(&mut self) {
        let instances: Vec<&ResourceInstance> = self
            .config
            .managed("google_sql_database_instance")
            .collect();
        if instances.is_empty() {
            let location = self.env_location();
            for check in [
                "sql-public-ip-disabled",
                "sql-regional-ha",
                "sql-backups-pitr",
                "sql-mysql-8",
                "sql-tls-required",
                "sql-deletion-protection",
                "sql-existing-vpc",
                "sql-trigger-flag",
                "sql-database-and-user",
            ] {
                self.fail(check, &location, "no google_sql_database_instance is declared; declare the event store instance in the backbone module");
            }
            return;
        }
        for instance in instances {
            let body = &instance.body;
            let at = |path: &[&str]| lookup(body, path);
            let loc =
                |path: &[&str]| at(path).map_or(instance.location.clone(), |a| a.location.clone());

            if at(&["settings", "ip_configuration", "ipv4_enabled"]).map(|a| &a.value)
                != Some(&Value::Bool(false))
            {
                self.fail("sql-public-ip-disabled", &loc(&["settings", "ip_configuration", "ipv4_enabled"]), format!("{}: set settings.ip_configuration.ipv4_enabled = false (a public IP is the default)", instance.address));
            }
            if str_at(body, &["settings", "availability_type"]) != Some("REGIONAL") {
                self.fail(
                    "sql-regional-ha",
                    &loc(&["settings", "availability_type"]),
                    format!(
                        "{}: set settings.availability_type = \"REGIONAL\"",
                        instance.address
                    ),
                );
            }
            let backups = ["settings", "backup_configuration"];
            let retention = at(&[
                "settings",
                "backup_configuration",
                "transaction_log_retention_days",
            ])
            .and_then(|a| a.value.as_u32());
            if bool_at(body, &[backups[0], backups[1], "enabled"]) != Some(true)
                || bool_at(body, &[backups[0], backups[1], "binary_log_enabled"]) != Some(true)
                || retention.is_none_or(|days| days < 1)
            {
                self.fail("sql-backups-pitr", &loc(&["settings", "backup_configuration", "binary_log_enabled"]), format!("{}: backup_configuration needs enabled = true, binary_log_enabled = true and transaction_log_retention_days >= 1", instance.address));
            }
            match str_at(body, &["database_version"]) {
                Some(v) if v.starts_with("MYSQL_8_") && !v.starts_with("MYSQL_8_0") => {}
                other => self.fail(
                    "sql-mysql-8",
                    &loc(&["database_version"]),
                    format!(
                        "{}: database_version is {}; use \"MYSQL_8_4\" (8.0 is past end of life)",
                        instance.address,
                        other.unwrap_or("unset")
                    ),
                ),
            }
            if !matches!(
                str_at(body, &["settings", "ip_configuration", "ssl_mode"]),
                Some("ENCRYPTED_ONLY" | "TRUSTED_CLIENT_CERTIFICATE_REQUIRED")
            ) {
                self.fail(
                    "sql-tls-required",
                    &loc(&["settings", "ip_configuration", "ssl_mode"]),
                    format!(
                        "{}: set settings.ip_configuration.ssl_mode = \"ENCRYPTED_ONLY\"",
                        instance.address
                    ),
                );
            }
            if bool_at(body, &["deletion_protection"]) != Some(true)
                || bool_at(body, &["settings", "deletion_protection_enabled"]) != Some(true)
            {
                self.fail("sql-deletion-protection", &instance.location, format!("{}: set deletion_protection = true and settings.deletion_protection_enabled = true", instance.address));
            }
            let network = at(&["settings", "ip_configuration", "private_network"]);
            if !network.is_some_and(|a| is_data_network(&a.value)) {
                self.fail("sql-existing-vpc", &loc(&["settings", "ip_configuration", "private_network"]), format!("{}: set settings.ip_configuration.private_network = data.google_compute_network.<name>.id (the existing SuiteX VPC)", instance.address));
            }
            let flag_on = body.block("settings").is_some_and(|s| {
                s.body.blocks("database_flags").any(|f| {
                    f.body.value("name").and_then(Value::as_str)
                        == Some("log_bin_trust_function_creators")
                        && f.body.value("value").and_then(Value::as_str) == Some("on")
                })
            });
            if !flag_on {
                self.fail("sql-trigger-flag", &instance.location, format!("{}: add settings.database_flags {{ name = \"log_bin_trust_function_creators\", value = \"on\" }}; with binary logging on, the append-only migration cannot create its triggers otherwise", instance.address));
            }
        }
        for network in self.config.managed("google_compute_network") {
            self.fail("sql-existing-vpc", &network.location, format!("{} creates a VPC; the SuiteX VPC exists already: look it up with a data \"google_compute_network\" block", network.address));
        }
        let has = |rtype: &str, name: &str| {
            self.config
                .managed(rtype)
                .any(|r| r.body.value("name").and_then(Value::as_str) == Some(name))
        };
        if !has("google_sql_database", "events") || !has("google_sql_user", "sync_worker") {
            let location = self.env_location();
            self.fail("sql-database-and-user", &location, "declare google_sql_database \"events\" and google_sql_user \"sync_worker\" on the event store instance");
        }
    }

    fn peering(&mut self) {
        let existing: Vec<String> = match self.config.root_variables.get("existing_peering_ranges")
        {
            Some(Value::List(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let connections: Vec<&ResourceInstance> = self
            .config
            .managed("google_service_networking_connection")
            .collect();
        for connection in connections {
            let body = &connection.body;
            let location = body
                .attr("reserved_peering_ranges")
                .map_or(connection.location.clone(), |a| a.location.clone());
            if existing.is_empty() {
                self.fail("peering-ranges-protected", &location, format!("{} replaces the peering's whole range list, but the root variable existing_peering_ranges is missing or empty: list the current ranges (gcloud services vpc-peerings list) in terraform.tfvars", connection.address));
                continue;
            }
            let ranges: Vec<&Value> = match body.value("reserved_peering_ranges") {
                Some(Value::List(items)) => items.iter().collect(),
                _ => Vec::new(),
            };
            let dropped: Vec<&String> = existing
                .iter()
                .filter(|r| !ranges.contains(&&Value::String((*r).clone())))
                .collect();
            if !dropped.is_empty() {
                self.fail("peering-ranges-protected", &location, format!("{} would drop the existing peering range(s) {dropped:?} that the SuiteX database uses: pass concat(var.existing_peering_ranges, [<new range>]) to reserved_peering_ranges", connection.address));
            }
            if body.value("deletion_policy").and_then(Value::as_str) != Some("ABANDON")
                || body
                    .value("update_on_creation_fail")
                    .and_then(Value::as_bool)
                    != Some(true)
            {
                self.fail("peering-ranges-protected", &connection.location, format!("{}: set deletion_policy = \"ABANDON\" (a destroy must never remove the shared peering) and update_on_creation_fail = true (the peering already exists)", connection.address));
            }
        }
    }

    fn pubsub(&mut self) {
        let topology = self.topology;
        let env = self.env_location();
        for topic in [RAW, MERGED, DLQ] {
            if topology.topic(topic).is_none() {
                self.fail(
                    "pubsub-topics-present",
                    &env,
                    format!(
                        "no google_pubsub_topic named {topic}; declare it in the backbone module"
                    ),
                );
            }
        }
        let mut source_subscriptions = Vec::new();
        for sub in self.config.managed("google_pubsub_subscription") {
            let name = sub
                .body
                .value("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let Some(parsed) = topology.subscription(&name) else {
                continue;
            };
            // Acceptance subscriptions are held to the worker's settings by their own check.
            if (parsed.topic == RAW || parsed.topic == MERGED) && !parsed.is_acceptance() {
                source_subscriptions.push((sub, parsed.clone()));
            }
        }
        for (sub, parsed) in &source_subscriptions {
            let body = &sub.body;
            let name = &parsed.name;
            if body.value("enable_message_ordering") != Some(&Value::Bool(true)) {
                let location = attr_location(body, "enable_message_ordering", &sub.location);
                self.fail(
                    "pubsub-ordering",
                    &location,
                    format!(
                        "subscription {name} on {}: set enable_message_ordering = true",
                        parsed.topic
                    ),
                );
            }
            let dead_letter = body.block("dead_letter_policy");
            let attempts = dead_letter
                .and_then(|d| d.body.value("max_delivery_attempts"))
                .and_then(Value::as_u32);
            if parsed.dead_letter.as_ref().map(|d| d.topic.as_str()) != Some(DLQ)
                || attempts != Some(5)
            {
                let location = dead_letter.map_or(sub.location.clone(), |d| {
                    attr_location(&d.body, "max_delivery_attempts", &d.location)
                });
                self.fail("pubsub-dead-letter-5", &location, format!("subscription {name}: dead_letter_policy must send to {DLQ} with max_delivery_attempts = 5"));
            }
            let retry = body.block("retry_policy");
            let backoffs = retry.map(|r| {
                (
                    r.body
                        .value("minimum_backoff")
                        .and_then(Value::as_str)
                        .and_then(super::parse_duration),
                    r.body
                        .value("maximum_backoff")
                        .and_then(Value::as_str)
                        .and_then(super::parse_duration),
                )
            });
            let retry_ok = matches!(backoffs, Some((Some(min), Some(max))) if min <= max);
            let ack_ok = body
                .value("ack_deadline_seconds")
                .and_then(Value::as_u32)
                .is_some_and(|s| (10..=600).contains(&s));
            if !retry_ok || !ack_ok {
                self.fail("pubsub-retry-and-ack", &sub.location, format!("subscription {name}: state retry_policy {{ minimum_backoff, maximum_backoff }} (min <= max, e.g. \"10s\"/\"600s\") and ack_deadline_seconds between 10 and 600"));
            }
        }
        // The acceptance subscription keeps probes only; real dead letters need another.
        if !topology.subscriptions_on(DLQ).any(|s| !s.is_acceptance()) {
            self.fail("pubsub-dlq-subscription", &env, format!("nothing subscribes to {DLQ}, so dead letters are dropped: declare a google_pubsub_subscription on it"));
        }
        self.probe_filters();
    }

    fn probe_filters(&mut self) {
        let topology = self.topology;
        let location = self
            .config
            .managed("google_pubsub_subscription")
            .next()
            .map_or_else(|| self.env_location(), |s| s.location.clone());
        let selecting: Vec<_> = topology
            .subscriptions_on(RAW)
            .filter(|s| probe_filter(s.filter.as_deref()) == ProbeFilter::Selects)
            .filter(|s| !s.is_acceptance())
            .collect();
        let [validation] = selecting.as_slice() else {
            self.fail("pubsub-probe-filters", &location, format!("expected exactly one subscription on {RAW} with filter \"attributes:<probe attribute>\" besides the acceptance ones, found {}", selecting.len()));
            return;
        };
        let attribute = validation
            .filter
            .as_deref()
            .and_then(filter_attribute)
            .unwrap_or_default()
            .to_string();
        // Acceptance runs publish probe-marked events on every topic, so every subscription
        // that is neither the validation one nor an acceptance one must exclude probes.
        for sub in topology
            .subscriptions
            .iter()
            .filter(|s| s.name != validation.name && !s.is_acceptance())
        {
            let excludes = probe_filter(sub.filter.as_deref()) == ProbeFilter::Excludes
                && sub.filter.as_deref().and_then(filter_attribute) == Some(attribute.as_str());
            if !excludes {
                self.fail("pubsub-probe-filters", &location, format!("subscription {} on {} must not see probes: set filter = \"NOT attributes:{attribute}\" (built from the same local as the validation filter)", sub.name, sub.topic));
            }
        }
    }

    /// Staging acceptance: probe-only subscriptions mirroring the worker's, and a database of
    /// its own, in dev and staging; none of it in prod.
    fn acceptance(&mut self) {
        let topology = self.topology;
        let env = self.env_location();
        let environment = topology.environment.clone();
        let acceptance: Vec<&Subscription> = topology
            .subscriptions
            .iter()
            .filter(|s| s.is_acceptance())
            .collect();
        let databases: Vec<String> = self
            .config
            .managed("google_sql_database")
            .filter_map(|d| d.body.value("name").and_then(Value::as_str))
            .filter(|n| *n != "events")
            .map(str::to_string)
            .collect();
        if environment == "prod" {
            if !acceptance.is_empty() || !databases.is_empty() {
                self.fail("acceptance-dev-staging-only", &env, format!("prod declares acceptance resources ({}): set acceptance_enabled = false in envs/prod/terraform.tfvars", acceptance.iter().map(|s| s.name.clone()).chain(databases.clone()).collect::<Vec<_>>().join(", ")));
            }
            return;
        }
        let attribute = topology.probe_attribute().unwrap_or_default();
        // A missing topic is pubsub-topics-present's to report.
        for topic in [RAW, MERGED, DLQ]
            .into_iter()
            .filter(|t| topology.topic(t).is_some())
        {
            let found: Vec<&&Subscription> =
                acceptance.iter().filter(|s| s.topic == topic).collect();
            let [sub] = found.as_slice() else {
                self.fail("acceptance-dev-staging-only", &env, format!("{environment}: expected one acceptance subscription on {topic} (labels.purpose = \"acceptance\"), found {}: set acceptance_enabled = true in envs/{environment}/terraform.tfvars", found.len()));
                continue;
            };
            // Without a validation filter the attribute is unknown (pubsub-probe-filters says so).
            let selects = probe_filter(sub.filter.as_deref()) == ProbeFilter::Selects
                && (attribute.is_empty()
                    || sub.filter.as_deref().and_then(filter_attribute)
                        == Some(attribute.as_str()));
            if !selects {
                self.fail("acceptance-mirrors-worker", &env, format!("acceptance subscription {} must select probes only: filter = \"attributes:{attribute}\"", sub.name));
            }
            if topic == DLQ {
                continue;
            }
            let Some(worker) = topology.worker_subscription(topic) else {
                continue;
            };
            let mut differs = Vec::new();
            if sub.enable_message_ordering != worker.enable_message_ordering {
                differs.push("enable_message_ordering");
            }
            if sub.ack_deadline_seconds != worker.ack_deadline_seconds {
                differs.push("ack_deadline_seconds");
            }
            if sub.dead_letter != worker.dead_letter {
                differs.push("dead_letter_policy");
            }
            if sub.retry != worker.retry {
                differs.push("retry_policy");
            }
            if !differs.is_empty() {
                self.fail("acceptance-mirrors-worker", &env, format!("acceptance subscription {} differs from {} in {}: acceptance must exercise the worker's exact settings", sub.name, worker.name, differs.join(", ")));
            }
        }
        if databases.is_empty() {
            self.fail("acceptance-dev-staging-only", &env, format!("{environment}: declare the acceptance database (google_sql_database \"acceptance\", events_acceptance) so acceptance rows never enter the real ledger"));
        }
    }

    /// `rig drift` needs to read, never to write: a permission that is not a `get` in the
    /// drift reader role would let everyone who may check the backbone change it.
    fn operators(&mut self) {
        let env = self.env_location();
        let roles: Vec<&ResourceInstance> = self
            .config
            .managed("google_project_iam_custom_role")
            .collect();
        if roles.is_empty() {
            self.fail("operators-read-only", &env, "declare the drift reader role (google_project_iam_custom_role \"drift_reader\" in the backbone module), so people who run rig drift need nothing broader");
        }
        for role in roles {
            let permissions: Vec<String> = match role.body.value("permissions") {
                Some(Value::List(items)) => items.iter().filter_map(Value::render).collect(),
                _ => Vec::new(),
            };
            let writes: Vec<&String> = permissions
                .iter()
                .filter(|p| !(p.ends_with(".get") || p.ends_with(".getIamPolicy")))
                .collect();
            if !writes.is_empty() {
                self.fail("operators-read-only", &role.location, format!("{} grants more than reads: {}; rig drift needs only get and getIamPolicy permissions", role.address, writes.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")));
            }
        }
        for grant in self.config.managed("google_service_account_iam_member") {
            let role = grant
                .body
                .value("role")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if role != "roles/iam.serviceAccountTokenCreator" {
                self.fail("operators-read-only", &grant.location, format!("{} grants {role} on the worker's service account; people may only impersonate it (roles/iam.serviceAccountTokenCreator)", grant.address));
            }
        }
    }

    fn grants(
        &self,
        member_type: &str,
        binding_type: &str,
        target_attr: &str,
        target_type: &str,
    ) -> Vec<Grant> {
        let config = self.config;
        let mut out = Vec::new();
        for resource in config
            .managed(member_type)
            .chain(config.managed(binding_type))
        {
            let target = resource
                .body
                .value(target_attr)
                .and_then(|v| config.resolve_name(v, target_type));
            let role = resource
                .body
                .value("role")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let members: Vec<String> = match (
                resource.body.value("member"),
                resource.body.value("members"),
            ) {
                (Some(member), _) => member.render().into_iter().collect(),
                (None, Some(Value::List(items))) => {
                    items.iter().filter_map(Value::render).collect()
                }
                _ => Vec::new(),
            };
            for member in members {
                out.push(Grant {
                    target: target.clone(),
                    role: role.clone(),
                    member,
                });
            }
        }
        out
    }

    fn topic_grants(&self) -> Vec<Grant> {
        self.grants(
            "google_pubsub_topic_iam_member",
            "google_pubsub_topic_iam_binding",
            "topic",
            "google_pubsub_topic",
        )
    }

    fn subscription_grants(&self) -> Vec<Grant> {
        self.grants(
            "google_pubsub_subscription_iam_member",
            "google_pubsub_subscription_iam_binding",
            "subscription",
            "google_pubsub_subscription",
        )
    }

    fn service_agent(&mut self) {
        let is_agent = |m: &str| {
            m.strip_prefix("serviceAccount:service-${")
                .and_then(|m| m.strip_suffix(".number}@gcp-sa-pubsub.iam.gserviceaccount.com"))
                .is_some_and(|project| project.contains("data.google_project."))
        };
        let env = self.env_location();
        let topic_grants = self.topic_grants();
        if !topic_grants
            .iter()
            .any(|g| g.target.as_deref() == Some(DLQ) && g.role == PUBLISHER && is_agent(&g.member))
        {
            self.fail("pubsub-service-agent-iam", &env, format!("grant {PUBLISHER} on {DLQ} to serviceAccount:service-${{data.google_project.<p>.number}}@gcp-sa-pubsub.iam.gserviceaccount.com, or dead-lettering silently never happens"));
        }
        let subscription_grants = self.subscription_grants();
        let dead_lettering: Vec<String> = self
            .topology
            .subscriptions
            .iter()
            .filter(|s| s.dead_letter.is_some())
            .map(|s| s.name.clone())
            .collect();
        for name in dead_lettering {
            if !subscription_grants.iter().any(|g| {
                g.target.as_deref() == Some(name.as_str())
                    && g.role == SUBSCRIBER
                    && is_agent(&g.member)
            }) {
                self.fail("pubsub-service-agent-iam", &env, format!("grant {SUBSCRIBER} on subscription {name} to the Pub/Sub service agent, so it can ack what it dead-letters"));
            }
        }
    }

    fn worker(&mut self) {
        let is_worker = |m: &str| {
            let account = m
                .strip_prefix("serviceAccount:${")
                .and_then(|m| m.strip_suffix(".email}"))
                .or_else(|| {
                    m.strip_prefix("${")
                        .and_then(|m| m.strip_suffix(".member}"))
                });
            account.is_some_and(|a| a.contains("google_service_account."))
        };
        let env = self.env_location();
        if self
            .config
            .managed("google_service_account")
            .next()
            .is_none()
        {
            self.fail(
                "worker-roles-resource-level",
                &env,
                "declare the worker's google_service_account in the backbone module",
            );
        }
        let topic_grants = self.topic_grants();
        for topic in [RAW, MERGED, DLQ]
            .into_iter()
            .filter(|t| self.topology.topic(t).is_some())
        {
            if !topic_grants.iter().any(|g| {
                g.target.as_deref() == Some(topic) && g.role == PUBLISHER && is_worker(&g.member)
            }) {
                self.fail("worker-roles-resource-level", &env, format!("grant {PUBLISHER} on topic {topic} to the worker with a google_pubsub_topic_iam_member"));
            }
        }
        let subscription_grants = self.subscription_grants();
        let wanted: Vec<String> = self
            .topology
            .subscriptions
            .iter()
            .filter(|s| [RAW, MERGED, DLQ].contains(&s.topic.as_str()))
            .map(|s| s.name.clone())
            .collect();
        for name in wanted {
            if !subscription_grants.iter().any(|g| {
                g.target.as_deref() == Some(name.as_str())
                    && g.role == SUBSCRIBER
                    && is_worker(&g.member)
            }) {
                self.fail("worker-roles-resource-level", &env, format!("grant {SUBSCRIBER} on subscription {name} to the worker with a google_pubsub_subscription_iam_member"));
            }
        }
        let bucket_grants = self.grants(
            "google_storage_bucket_iam_member",
            "google_storage_bucket_iam_binding",
            "bucket",
            "google_storage_bucket",
        );
        let bucket = self.topology.bucket.name.clone();
        if !bucket_grants.iter().any(|g| {
            g.target.as_deref() == Some(bucket.as_str())
                && g.role == OBJECT_ADMIN
                && is_worker(&g.member)
        }) {
            self.fail("worker-roles-resource-level", &env, format!("grant {OBJECT_ADMIN} on bucket {bucket} to the worker with a google_storage_bucket_iam_member"));
        }
        let project_level: Vec<&ResourceInstance> = [
            "google_project_iam_member",
            "google_project_iam_binding",
            "google_project_iam_policy",
        ]
        .iter()
        .flat_map(|t| self.config.managed(t))
        .collect();
        for resource in project_level {
            let role = resource
                .body
                .value("role")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let members: Vec<String> = match (
                resource.body.value("member"),
                resource.body.value("members"),
            ) {
                (Some(m), _) => m.render().into_iter().collect(),
                (None, Some(Value::List(items))) => {
                    items.iter().filter_map(Value::render).collect()
                }
                _ => Vec::new(),
            };
            if [PUBLISHER, SUBSCRIBER, OBJECT_ADMIN].contains(&role)
                || members.iter().any(|m| is_worker(m))
                || resource.address.rtype == "google_project_iam_policy"
            {
                self.fail("worker-roles-resource-level", &resource.location, format!("{} grants {role} project-wide; grant it on the backbone's topics, subscriptions or bucket instead", resource.address));
            }
        }
    }

    fn bucket(&mut self) {
        let bucket = &self.topology.bucket;
        let expected = format!("suitex-payload-snapshots-{}", self.topology.environment);
        let location = self
            .config
            .managed("google_storage_bucket")
            .next()
            .map_or_else(|| self.env_location(), |b| b.location.clone());
        let mut problems = Vec::new();
        if bucket.name != expected {
            problems.push(format!("name is {}, expected {expected}", bucket.name));
        }
        if !bucket.uniform_bucket_level_access {
            problems.push("set uniform_bucket_level_access = true".to_string());
        }
        if bucket.public_access_prevention != "enforced" {
            problems.push("set public_access_prevention = \"enforced\"".to_string());
        }
        if bucket.delete_after_days != Some(30) {
            problems.push(
                "add lifecycle_rule { condition { age = 30 } action { type = \"Delete\" } }"
                    .to_string(),
            );
        }
        if !problems.is_empty() {
            self.fail(
                "bucket-settings",
                &location,
                format!("payload bucket: {}", problems.join("; ")),
            );
        }
    }

    fn passwords(&mut self) {
        for (name, location) in &self.config.root_variable_locations {
            let lower = name.to_ascii_lowercase();
            let from_values_file = location.file.extension().is_some_and(|e| e == "tfvars");
            if from_values_file
                && ["password", "passwd", "secret", "token"]
                    .iter()
                    .any(|w| lower.contains(w))
            {
                let location = location.clone();
                self.fail("no-password-in-tfvars", &location, format!("`{name}` is set in a tfvars file; generate it with random_password and keep it in Secret Manager instead"));
            }
        }
        let stored: BTreeSet<String> = self
            .config
            .managed("google_secret_manager_secret_version")
            .filter_map(|v| match v.body.value("secret_data") {
                Some(Value::Ref(r)) => Some(r.address.to_string()),
                _ => None,
            })
            .collect();
        let users: Vec<&ResourceInstance> = self.config.managed("google_sql_user").collect();
        for user in users {
            let password = user.body.attr("password");
            let generated = match password.map(|a| &a.value) {
                Some(Value::Ref(r))
                    if r.address.rtype == "random_password" && r.address.mode == Mode::Managed =>
                {
                    Some(r.address.to_string())
                }
                _ => None,
            };
            let location = password.map_or(user.location.clone(), |a| a.location.clone());
            match generated {
                Some(address) if stored.contains(&address) => {}
                Some(address) => self.fail("no-password-in-tfvars", &location, format!("{}: {address} is not stored in a google_secret_manager_secret_version; add one with secret_data = {address}.result", user.address)),
                None => self.fail("no-password-in-tfvars", &location, format!("{}: password must be random_password.<name>.result, generated here and stored in Secret Manager, never a literal or a variable", user.address)),
            }
        }
    }
}

fn lookup<'b>(body: &'b EvalBody, path: &[&str]) -> Option<&'b EvalAttr> {
    body.lookup(path)
}

fn str_at<'b>(body: &'b EvalBody, path: &[&str]) -> Option<&'b str> {
    body.lookup(path).and_then(|a| a.value.as_str())
}

fn bool_at(body: &EvalBody, path: &[&str]) -> Option<bool> {
    body.lookup(path).and_then(|a| a.value.as_bool())
}

fn attr_location(body: &EvalBody, name: &str, fallback: &Location) -> Location {
    body.attr(name)
        .map_or(fallback.clone(), |a| a.location.clone())
}

fn is_data_network(value: &Value) -> bool {
    matches!(value, Value::Ref(r) if r.address.mode == Mode::Data
        && r.address.rtype == "google_compute_network"
        && matches!(r.path.as_slice(), [attr] if attr == "id" || attr == "self_link"))
}

/// Compares every environment root with the first one, byte for byte, except the values files.
fn env_roots_identical(terraform_root: &Path) -> Result<Vec<PolicyViolation>, TopologyError> {
    let envs_dir = terraform_root.join("envs");
    let environments = parse::list_environments(&envs_dir);
    let mut out = Vec::new();
    let Some((first, rest)) = environments.split_first() else {
        return Ok(out);
    };
    let files = |env: &str| -> Result<BTreeSet<String>, TopologyError> {
        let dir = envs_dir.join(env);
        let entries = std::fs::read_dir(&dir).map_err(|source| TopologyError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !parse::VALUES_FILES.contains(&n.as_str()))
            .collect())
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TopologyError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let reference = files(first)?;
    for env in rest {
        let these = files(env)?;
        for name in reference.symmetric_difference(&these) {
            let (has, lacks) = if reference.contains(name) {
                (first, env)
            } else {
                (env, first)
            };
            out.push(PolicyViolation {
                check: "env-roots-identical",
                location: Location::new(envs_dir.join(has).join(name), 0),
                message: format!("{name} exists in envs/{has} but not in envs/{lacks}; roots may differ only in {:?}", parse::VALUES_FILES),
            });
        }
        for name in reference.intersection(&these) {
            let ours = envs_dir.join(env).join(name);
            if read(&envs_dir.join(first).join(name))? != read(&ours)? {
                out.push(PolicyViolation {
                    check: "env-roots-identical",
                    location: Location::new(ours, 0),
                    message: format!("differs from envs/{first}/{name}; move the difference into terraform.tfvars (roots may differ only in {:?})", parse::VALUES_FILES),
                });
            }
        }
    }
    Ok(out)
}

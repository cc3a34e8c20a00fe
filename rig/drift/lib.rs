//! Read-only checks of the live backbone in GCP. `rig drift` ([`run`]) reads it and compares
//! it, field by field, with the Terraform ([`Topology`] and [`CloudSpec`]) and the migrations'
//! grants; [`validate_gcp`] is `rig validate --target gcp`: the epic's validation through the
//! acceptance resources in dev and staging, these comparisons in prod.
//!
//! Architecture invariant: nothing here creates, changes or deletes anything in GCP (the only
//! writes are the acceptance probes [`validate_gcp`] sends through the acceptance resources);
//! `testIamPermissions` and `SHOW GRANTS` are questions. API boundary: [`run`],
//! [`validate_gcp`], [`DriftReport`] and its `--json` shape ([`JSON_VERSION`]), and
//! [`live::LiveReader`] for tests that point it at recorded responses.

pub mod compare;
pub mod grants;
pub mod live;

use compare::Findings;
use live::LiveReader;

use rig_events::event_store::DbConfig;
use rig_harness::report::Table;
use rig_topology::{CloudSpec, ResourceKind, Topology};

/// The version of the `--json` shape; bumped on any incompatible change.
pub const JSON_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FindingResult {
    Match,
    Drift,
    /// The live value could not be read (permissions, network): the note says what to do.
    Unreadable,
    Skipped,
}

impl FindingResult {
    pub fn label(self) -> &'static str {
        match self {
            FindingResult::Match => "ok",
            FindingResult::Drift => "DRIFT",
            FindingResult::Unreadable => "UNREADABLE",
            FindingResult::Skipped => "skipped",
        }
    }
}

/// One field of one resource: what is live and what the Terraform (or the migrations) says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub resource: String,
    pub field: String,
    pub live: String,
    /// What the Terraform (for the event store's grants: the migrations) declares.
    pub declared: String,
    pub result: FindingResult,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DriftReport {
    pub version: u32,
    pub project: String,
    pub environment: String,
    /// `service=url` for every API read from a stand-in instead of Google.
    pub endpoints_overridden: Vec<String>,
    pub findings: Vec<Finding>,
}

impl DriftReport {
    pub fn count(&self, result: FindingResult) -> usize {
        self.findings.iter().filter(|f| f.result == result).count()
    }

    pub fn drifted(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.result == FindingResult::Drift)
    }

    /// 0: everything matches; 1: drift; 2: no drift found but something could not be read.
    pub fn exit_code(&self) -> u8 {
        if self.count(FindingResult::Drift) > 0 {
            1
        } else if self.count(FindingResult::Unreadable) > 0 {
            2
        } else {
            0
        }
    }

    /// The same findings as a validation table: prod's `rig validate --target gcp --allow-prod`
    /// runs only these read-only comparisons.
    pub fn as_validation(&self) -> rig_harness::validate::Validation {
        use rig_harness::report::Outcome;
        let checks = self
            .findings
            .iter()
            .map(|f| rig_harness::validate::Check {
                name: format!("{}: {}", f.resource, f.field),
                outcome: match f.result {
                    FindingResult::Match => Outcome::Pass,
                    FindingResult::Drift | FindingResult::Unreadable => Outcome::Fail,
                    FindingResult::Skipped => Outcome::Skipped,
                },
                took: std::time::Duration::ZERO,
                detail: if f.result == FindingResult::Skipped {
                    f.note.clone()
                } else {
                    format!(
                        "live {}; terraform says {}{}",
                        f.live,
                        f.declared,
                        if f.note.is_empty() {
                            String::new()
                        } else {
                            format!("; {}", f.note)
                        }
                    )
                },
            })
            .collect();
        rig_harness::validate::Validation {
            target: format!("gcp {} (read-only)", self.project),
            engine: "Cloud SQL (read-only: nothing written)".into(),
            pubsub: "google (read-only)".into(),
            checks,
            divergences: Vec::new(),
        }
    }

    pub fn render(&self) -> String {
        let mut table = Table::new(&["resource", "field", "live", "terraform says", "result"]);
        for f in &self.findings {
            let mut result = f.result.label().to_string();
            if !f.note.is_empty() {
                result.push_str(": ");
                result.push_str(&f.note);
            }
            table.row(vec![
                f.resource.clone(),
                f.field.clone(),
                f.live.clone(),
                f.declared.clone(),
                result,
            ]);
        }
        let mut out = format!(
            "project: {}   environment: {}\n",
            self.project, self.environment
        );
        if !self.endpoints_overridden.is_empty() {
            out.push_str(&format!(
                "stand-in endpoints (not Google): {}\n",
                self.endpoints_overridden.join(", ")
            ));
        }
        out.push('\n');
        out.push_str(&table.render());
        out.push_str(&format!(
            "\n{} match, {} drift, {} unreadable, {} skipped\n",
            self.count(FindingResult::Match),
            self.count(FindingResult::Drift),
            self.count(FindingResult::Unreadable),
            self.count(FindingResult::Skipped),
        ));
        out
    }
}

/// Every comparison. `event_store` is the worker's connection (`DB_EVENT_STORE_*`), when known.
pub async fn run(
    reader: &LiveReader,
    topology: &Topology,
    spec: &CloudSpec,
    event_store: Option<&DbConfig>,
) -> DriftReport {
    let mut out = Findings::default();
    let project = &reader.project_id;

    for topic in &topology.topics {
        let declared: Vec<String> = topology
            .subscriptions_on(&topic.name)
            .map(|s| format!("projects/{project}/subscriptions/{}", s.name))
            .collect();
        match reader.topic_subscriptions(&topic.name).await {
            Ok(live) => compare::topic_subscriptions(&mut out, &topic.name, &declared, &live),
            Err(e) => out.unreadable(
                &format!("topic {}", topic.name),
                "subscriptions",
                declared.join(", "),
                e.to_string(),
            ),
        }
    }

    for declared in &topology.subscriptions {
        match reader.subscription(&declared.name).await {
            Ok(live) => compare::subscription(&mut out, declared, &live, project),
            Err(e) => out.unreadable(
                &format!("subscription {}", declared.name),
                "settings",
                "as in the Terraform".into(),
                e.to_string(),
            ),
        }
    }

    match reader.bucket(&topology.bucket.name).await {
        Ok(live) => compare::bucket(&mut out, &topology.bucket, &live),
        Err(e) => out.unreadable(
            &format!("bucket {}", topology.bucket.name),
            "metadata",
            "as in the Terraform".into(),
            e.to_string(),
        ),
    }

    let number = reader.project_number().await;
    let number_text = number.as_ref().ok().cloned();
    match reader.sql_instance(&spec.event_store.name).await {
        Ok(live) => compare::sql_instance(
            &mut out,
            &spec.event_store,
            &live,
            project,
            number_text.as_deref(),
        ),
        Err(e) => out.unreadable(
            &format!("Cloud SQL instance {}", spec.event_store.name),
            "settings",
            "as in the Terraform".into(),
            e.to_string(),
        ),
    }

    let network = &spec.private_services.network;
    let connection_resource =
        format!("private services connection on {network} (servicenetworking)");
    match &number {
        Ok(number) => match reader.private_services_connections(number, network).await {
            Ok(live) => compare::private_services(&mut out, spec, &live),
            Err(e) => out.unreadable(
                &connection_resource,
                "reservedPeeringRanges",
                spec.private_services.reserved_peering_ranges.join(", "),
                e.to_string(),
            ),
        },
        Err(e) => out.unreadable(
            &connection_resource,
            "reservedPeeringRanges",
            spec.private_services.reserved_peering_ranges.join(", "),
            format!("the project number is needed to name the network: {e}"),
        ),
    }

    worker_iam(&mut out, reader, topology, spec).await;
    service_agent_iam(
        &mut out,
        reader,
        spec,
        number.as_ref().ok().map(String::as_str),
    )
    .await;

    match event_store {
        Some(config) => {
            let declared = grants::declared_grants(&rig_events::event_store::MIGRATOR);
            let mut databases = spec.event_store.acceptance_databases.clone();
            databases.push(spec.event_store.database.clone());
            grants::check(&mut out, config, &declared, &databases).await;
        }
        None => out.skipped(
            "event store user sync_worker",
            "grants",
            "DB_EVENT_STORE_* is not set: export the worker's connection (password from Secret Manager) and run from a machine on the VPC to check that sync_worker holds SELECT and INSERT only".into(),
        ),
    }

    DriftReport {
        version: JSON_VERSION,
        project: project.clone(),
        environment: topology.environment.clone(),
        endpoints_overridden: reader.endpoints.overridden(),
        findings: out.0,
    }
}

/// `testIamPermissions` as the worker on every topic, subscription and the bucket, and on the
/// project: it holds what its Terraform roles give, and no administration.
async fn worker_iam(
    out: &mut Findings,
    reader: &LiveReader,
    topology: &Topology,
    spec: &CloudSpec,
) {
    let needed_on = |kind: ResourceKind, name: &str| -> Vec<&'static str> {
        let mut needed: Vec<&'static str> = spec
            .worker_grants
            .iter()
            .filter(|g| g.kind == kind && g.resource == name)
            .flat_map(|g| compare::role_permissions(&g.role).iter().copied())
            .collect();
        needed.sort_unstable();
        needed.dedup();
        needed
    };
    let project = &reader.project_id;
    let mut resources: Vec<(ResourceKind, String, String)> = Vec::new();
    for topic in &topology.topics {
        resources.push((
            ResourceKind::Topic,
            topic.name.clone(),
            format!("projects/{project}/topics/{}", topic.name),
        ));
    }
    for sub in &topology.subscriptions {
        resources.push((
            ResourceKind::Subscription,
            sub.name.clone(),
            format!("projects/{project}/subscriptions/{}", sub.name),
        ));
    }
    for (kind, name, path) in resources {
        let needed = needed_on(kind, &name);
        let forbidden = compare::admin_permissions(kind);
        let asked: Vec<&str> = needed.iter().chain(forbidden).copied().collect();
        let label = match kind {
            ResourceKind::Topic => format!("IAM on topic {name}"),
            _ => format!("IAM on subscription {name}"),
        };
        match reader.pubsub_permissions(&path, &asked).await {
            Ok(held) => compare::worker_permissions(out, &label, &needed, forbidden, &held),
            Err(e) => out.unreadable(
                &label,
                "worker permissions",
                asked.join(", "),
                e.to_string(),
            ),
        }
    }
    let bucket = &topology.bucket.name;
    let needed = needed_on(ResourceKind::Bucket, bucket);
    let forbidden = compare::admin_permissions(ResourceKind::Bucket);
    let asked: Vec<&str> = needed.iter().chain(forbidden).copied().collect();
    let label = format!("IAM on bucket {bucket}");
    match reader.bucket_permissions(bucket, &asked).await {
        Ok(held) => compare::worker_permissions(out, &label, &needed, forbidden, &held),
        Err(e) => out.unreadable(
            &label,
            "worker permissions",
            asked.join(", "),
            e.to_string(),
        ),
    }
    let label = format!("IAM on project {project}");
    match reader.project_permissions(compare::PROJECT_FORBIDDEN).await {
        Ok(held) => {
            compare::worker_permissions(out, &label, &[], compare::PROJECT_FORBIDDEN, &held)
        }
        Err(e) => out.unreadable(
            &label,
            "worker permissions",
            compare::PROJECT_FORBIDDEN.join(", "),
            e.to_string(),
        ),
    }
}

/// The Pub/Sub service agent can dead-letter: the IAM policies of the dead-letter topic and of
/// each dead-lettering subscription bind it. (`testIamPermissions` answers only for the caller,
/// and nobody can call as the service agent, so its grants are read from the policies.)
async fn service_agent_iam(
    out: &mut Findings,
    reader: &LiveReader,
    spec: &CloudSpec,
    project_number: Option<&str>,
) {
    let project = &reader.project_id;
    let Some(number) = project_number else {
        out.unreadable(
            "Pub/Sub service agent",
            "dead-letter grants",
            format!("{} grant(s)", spec.service_agent_grants.len()),
            "the project number (from Resource Manager) is needed to name the service agent".into(),
        );
        return;
    };
    let member = format!("serviceAccount:service-{number}@gcp-sa-pubsub.iam.gserviceaccount.com");
    for grant in &spec.service_agent_grants {
        let (label, path) = match grant.kind {
            ResourceKind::Topic => (
                format!("IAM on topic {}", grant.resource),
                format!("projects/{project}/topics/{}", grant.resource),
            ),
            ResourceKind::Subscription => (
                format!("IAM on subscription {}", grant.resource),
                format!("projects/{project}/subscriptions/{}", grant.resource),
            ),
            ResourceKind::Bucket => continue,
        };
        let field = format!("Pub/Sub service agent holds {}", grant.role);
        match reader.pubsub_policy(&path).await {
            Ok(policy) => {
                let holds = compare::policy_grants(&policy, &grant.role, &member);
                out.judged(
                    &label,
                    &field,
                    member.clone(),
                    if holds {
                        member.clone()
                    } else {
                        "not bound".into()
                    },
                    holds,
                    if holds {
                        String::new()
                    } else {
                        "without it dead-lettering silently never happens: terraform apply restores the grant".into()
                    },
                );
            }
            Err(e) => out.unreadable(&label, &field, member.clone(), e.to_string()),
        }
    }
}

/// Before anything is read: every stand-in endpoint (`RIG_GCP_*_ENDPOINT`) and the event
/// store (when `DB_EVENT_STORE_*` is given) answer, and where a Google endpoint is read,
/// Application Default Credentials give a token — each asked once, within seconds.
pub async fn preflight(
    endpoints: &live::GcpEndpoints,
    event_store: Option<&DbConfig>,
) -> Result<(), rig_harness::backbone::Unready> {
    use rig_events::reach::Endpoint;
    let overridden = [
        &endpoints.pubsub,
        &endpoints.storage,
        &endpoints.sqladmin,
        &endpoints.servicenetworking,
        &endpoints.resourcemanager,
    ];
    let mut probed: Vec<Endpoint> = live::ENDPOINT_VARIABLES
        .iter()
        .zip(overridden)
        .filter_map(|((variable, service), url)| {
            url.as_deref().map(|url| {
                Endpoint::from_url(
                    *variable,
                    format!("the {service} stand-in"),
                    url,
                    "start the stand-in, or unset the variable to read Google",
                )
            })
        })
        .collect();
    if let Some(config) = event_store {
        probed.push(rig_harness::environment::db_endpoint(
            rig_events::event_store::EVENT_STORE_PREFIX,
            "the event store's Cloud SQL instance",
            config,
            "run from a machine on the SuiteX VPC (Cloud SQL has a private IP only), or unset DB_EVENT_STORE_HOST to skip the grants",
        ));
    }
    let needs_google = overridden.iter().any(|e| e.is_none());
    rig_harness::backbone::probe(needs_google, &probed).await
}

/// `rig validate --target gcp`: the epic's validation through the acceptance resources in dev
/// and staging (with `dead_letter`, also the ordered dead-letter check, waiting up to that
/// long); in prod (with `--allow-prod`) the read-only drift comparison instead.
pub async fn validate_gcp(
    options: &rig_harness::targets::GcpOptions,
    topology: &Topology,
    dead_letter: Option<std::time::Duration>,
) -> anyhow::Result<rig_harness::validate::Validation> {
    use rig_harness::backbone::Backbone;
    use rig_harness::targets::Access;
    let spec = options.spec()?;
    match options.admit(&spec)? {
        Access::Acceptance => {
            let backbone = Backbone::reach_gcp(options).await?;
            let deployment = backbone
                .deploy(rig_harness::provision::DEFAULT_SCOPE, topology)
                .await?;
            let env = &deployment.environment;
            let mut validation =
                rig_harness::validate::run(env, topology, Vec::new(), Vec::new()).await;
            if let Some(timeout) = dead_letter {
                let (check, divergence) =
                    rig_harness::acceptance::ordered_dead_letter(env, topology, timeout).await;
                validation.checks.push(check);
                validation.divergences.extend(divergence);
            }
            Ok(validation)
        }
        Access::ReadOnly => {
            preflight(&live::GcpEndpoints::from_env(), None).await?;
            let reader = LiveReader::new(
                &options.project,
                live::GcpEndpoints::from_env(),
                live::WorkerIdentity::Impersonate(spec.worker_service_account.clone()),
            );
            let report = run(&reader, topology, &spec, None).await;
            Ok(report.as_validation())
        }
    }
}

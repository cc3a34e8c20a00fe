//! Field-by-field comparison of live resources (as Google's APIs return them) with what the
//! Terraform declares. Pure functions: the readers in `live.rs` fetch, these judge.

use std::collections::BTreeSet;

use google_cloud_pubsub::model;
use serde::Deserialize;

use crate::{Finding, FindingResult};
use rig_topology::{Bucket, CloudSpec, ResourceKind, SqlInstanceSpec, Subscription};

/// Findings in the order they were made.
#[derive(Debug, Default)]
pub struct Findings(pub Vec<Finding>);

impl Findings {
    /// A field whose live value must equal the declared one.
    pub fn field(&mut self, resource: &str, field: &str, declared: String, live: String) {
        let result = if declared == live {
            FindingResult::Match
        } else {
            FindingResult::Drift
        };
        self.push(resource, field, declared, live, result, String::new());
    }

    /// A field judged by the caller (e.g. "holds at least these").
    pub fn judged(
        &mut self,
        resource: &str,
        field: &str,
        declared: String,
        live: String,
        ok: bool,
        note: String,
    ) {
        let result = if ok {
            FindingResult::Match
        } else {
            FindingResult::Drift
        };
        self.push(resource, field, declared, live, result, note);
    }

    pub fn unreadable(&mut self, resource: &str, field: &str, declared: String, why: String) {
        self.push(
            resource,
            field,
            declared,
            "?".into(),
            FindingResult::Unreadable,
            why,
        );
    }

    pub fn skipped(&mut self, resource: &str, field: &str, why: String) {
        self.push(
            resource,
            field,
            String::new(),
            String::new(),
            FindingResult::Skipped,
            why,
        );
    }

    fn push(
        &mut self,
        resource: &str,
        field: &str,
        declared: String,
        live: String,
        result: FindingResult,
        note: String,
    ) {
        self.0.push(Finding {
            resource: resource.into(),
            field: field.into(),
            live,
            declared,
            result,
            note,
        });
    }
}

fn shown<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "unset".into(), |v| v.to_string())
}

fn duration(d: Option<&google_cloud_wkt::Duration>) -> String {
    match d {
        None => "unset".into(),
        Some(d) if d.nanos() == 0 => format!("{}s", d.seconds()),
        Some(d) => format!("{}.{:09}s", d.seconds(), d.nanos()),
    }
}

/// The last segment of `projects/P/topics/T` (or the text itself).
fn short(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A subscription as the Pub/Sub API returns it, against the Terraform's.
pub fn subscription(
    out: &mut Findings,
    declared: &Subscription,
    live: &model::Subscription,
    project_id: &str,
) {
    let r = format!("subscription {}", declared.name);
    out.field(
        &r,
        "topic",
        format!("projects/{project_id}/topics/{}", declared.topic),
        live.topic.clone(),
    );
    out.field(
        &r,
        "enable_message_ordering",
        declared.enable_message_ordering.to_string(),
        live.enable_message_ordering.to_string(),
    );
    out.field(
        &r,
        "ack_deadline_seconds",
        declared.ack_deadline_seconds.to_string(),
        live.ack_deadline_seconds.to_string(),
    );
    out.field(
        &r,
        "filter",
        declared.filter.clone().unwrap_or_default(),
        live.filter.clone(),
    );
    let live_dl = live.dead_letter_policy.as_ref();
    out.field(
        &r,
        "dead_letter_policy.dead_letter_topic",
        shown(
            declared
                .dead_letter
                .as_ref()
                .map(|d| format!("projects/{project_id}/topics/{}", d.topic)),
        ),
        shown(
            live_dl
                .map(|d| d.dead_letter_topic.clone())
                .filter(|t| !t.is_empty()),
        ),
    );
    out.field(
        &r,
        "dead_letter_policy.max_delivery_attempts",
        shown(
            declared
                .dead_letter
                .as_ref()
                .map(|d| d.max_delivery_attempts),
        ),
        // The API reports 0 when the policy is set without attempts; Pub/Sub then applies 5.
        shown(live_dl.map(|d| {
            if d.max_delivery_attempts == 0 {
                5
            } else {
                d.max_delivery_attempts
            }
        })),
    );
    let live_retry = live.retry_policy.as_ref();
    let declared_retry = |f: fn(&rig_topology::RetryPolicy) -> std::time::Duration| {
        declared.retry.as_ref().map_or_else(
            || "unset".to_string(),
            |p| {
                let d = f(p);
                if d.subsec_nanos() == 0 {
                    format!("{}s", d.as_secs())
                } else {
                    format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
                }
            },
        )
    };
    out.field(
        &r,
        "retry_policy.minimum_backoff",
        declared_retry(|p| p.minimum_backoff),
        duration(live_retry.and_then(|p| p.minimum_backoff.as_ref())),
    );
    out.field(
        &r,
        "retry_policy.maximum_backoff",
        declared_retry(|p| p.maximum_backoff),
        duration(live_retry.and_then(|p| p.maximum_backoff.as_ref())),
    );
}

/// Who receives a topic's messages: exactly the Terraform's subscriptions. An extra one takes
/// a copy of everything (an unfiltered one, probes included); a missing one means lost work.
pub fn topic_subscriptions(out: &mut Findings, topic: &str, declared: &[String], live: &[String]) {
    let declared_set: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
    let live_set: BTreeSet<&str> = live.iter().map(String::as_str).collect();
    let shown = |set: &BTreeSet<&str>| {
        if set.is_empty() {
            "none".to_string()
        } else {
            set.iter().map(|p| short(p)).collect::<Vec<_>>().join(", ")
        }
    };
    let extra: Vec<&str> = live_set.difference(&declared_set).copied().collect();
    out.judged(
        &format!("topic {topic}"),
        "subscriptions",
        shown(&declared_set),
        shown(&live_set),
        declared_set == live_set,
        if extra.is_empty() {
            String::new()
        } else {
            format!(
                "not in the Terraform: {} (they receive a copy of every message)",
                extra.join(", ")
            )
        },
    );
}

/// Storage JSON API bucket metadata (`GET storage/v1/b/BUCKET`), the parts the rig compares.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BucketMetadata {
    pub name: String,
    pub iam_configuration: Option<IamConfiguration>,
    pub lifecycle: Option<Lifecycle>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IamConfiguration {
    pub uniform_bucket_level_access: Option<Enabled>,
    pub public_access_prevention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Enabled {
    pub enabled: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Lifecycle {
    pub rule: Vec<LifecycleRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LifecycleRule {
    pub action: LifecycleAction,
    pub condition: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LifecycleAction {
    #[serde(rename = "type")]
    pub kind: String,
}

pub fn bucket(out: &mut Findings, declared: &Bucket, live: &BucketMetadata) {
    let r = format!("bucket {}", declared.name);
    let iam = live.iam_configuration.as_ref();
    out.field(
        &r,
        "iamConfiguration.uniformBucketLevelAccess.enabled",
        declared.uniform_bucket_level_access.to_string(),
        shown(
            iam.and_then(|i| i.uniform_bucket_level_access.as_ref())
                .map(|u| u.enabled),
        ),
    );
    out.field(
        &r,
        "iamConfiguration.publicAccessPrevention",
        declared.public_access_prevention.clone(),
        shown(iam.and_then(|i| i.public_access_prevention.clone())),
    );
    let rules: Vec<String> = live
        .lifecycle
        .as_ref()
        .map(|l| {
            l.rule
                .iter()
                .map(|rule| {
                    let condition: Vec<String> = rule
                        .condition
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    format!("{} if {}", rule.action.kind, condition.join(" and "))
                })
                .collect()
        })
        .unwrap_or_default();
    out.field(
        &r,
        "lifecycle.rule",
        declared
            .delete_after_days
            .map_or_else(|| "none".into(), |d| format!("Delete if age={d}")),
        if rules.is_empty() {
            "none".into()
        } else {
            rules.join("; ")
        },
    );
}

/// Cloud SQL Admin `instances.get` (a `DatabaseInstance`), the parts the rig compares.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SqlInstance {
    pub name: String,
    pub database_version: String,
    pub settings: SqlSettings,
    pub ip_addresses: Vec<IpMapping>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SqlSettings {
    pub availability_type: Option<String>,
    pub backup_configuration: BackupConfiguration,
    pub ip_configuration: IpConfiguration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BackupConfiguration {
    pub enabled: Option<bool>,
    pub binary_log_enabled: Option<bool>,
    pub transaction_log_retention_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IpConfiguration {
    pub ipv4_enabled: Option<bool>,
    pub private_network: Option<String>,
    pub allocated_ip_range: Option<String>,
    pub ssl_mode: Option<String>,
    pub require_ssl: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IpMapping {
    #[serde(rename = "type")]
    pub kind: String,
    pub ip_address: String,
}

pub fn sql_instance(
    out: &mut Findings,
    declared: &SqlInstanceSpec,
    live: &SqlInstance,
    project_id: &str,
    project_number: Option<&str>,
) {
    let r = format!("Cloud SQL instance {}", declared.name);
    out.field(
        &r,
        "databaseVersion",
        declared.database_version.clone(),
        live.database_version.clone(),
    );
    out.field(
        &r,
        "settings.availabilityType",
        declared.availability_type.clone(),
        shown(live.settings.availability_type.clone()),
    );
    let backups = &live.settings.backup_configuration;
    out.field(
        &r,
        "settings.backupConfiguration.enabled",
        declared.backups_enabled.to_string(),
        shown(backups.enabled),
    );
    out.field(
        &r,
        "settings.backupConfiguration.binaryLogEnabled (PITR)",
        declared.binary_log_enabled.to_string(),
        shown(backups.binary_log_enabled),
    );
    out.field(
        &r,
        "settings.backupConfiguration.transactionLogRetentionDays",
        shown(declared.transaction_log_retention_days),
        shown(backups.transaction_log_retention_days),
    );
    let ip = &live.settings.ip_configuration;
    out.field(
        &r,
        "settings.ipConfiguration.ipv4Enabled",
        declared.ipv4_enabled.to_string(),
        shown(ip.ipv4_enabled),
    );
    // `PRIMARY` is the public address in Cloud SQL's vocabulary; `PRIVATE` the VPC one.
    let public: Vec<&str> = live
        .ip_addresses
        .iter()
        .filter(|a| a.kind == "PRIMARY")
        .map(|a| a.ip_address.as_str())
        .collect();
    out.field(
        &r,
        "ipAddresses of type PRIMARY (public IPv4)",
        if declared.ipv4_enabled {
            "any".into()
        } else {
            "none".into()
        },
        if public.is_empty() {
            if declared.ipv4_enabled {
                "any".into()
            } else {
                "none".into()
            }
        } else {
            public.join(", ")
        },
    );
    // The API names the network by project id or number; either is the same VPC.
    let live_network = ip.private_network.clone().unwrap_or_default();
    let same_network = live_network
        .strip_prefix("projects/")
        .and_then(|rest| rest.split_once("/global/networks/"))
        .is_some_and(|(project, name)| {
            name == declared.private_network
                && (project == project_id || Some(project) == project_number)
        });
    out.judged(
        &r,
        "settings.ipConfiguration.privateNetwork",
        format!(
            "projects/{project_id}/global/networks/{}",
            declared.private_network
        ),
        if live_network.is_empty() {
            "unset".into()
        } else {
            live_network
        },
        same_network,
        String::new(),
    );
    if let Some(range) = &declared.allocated_ip_range {
        out.field(
            &r,
            "settings.ipConfiguration.allocatedIpRange",
            range.clone(),
            shown(ip.allocated_ip_range.clone()),
        );
    }
    out.judged(
        &r,
        "settings.ipConfiguration.sslMode",
        declared.ssl_mode.clone(),
        shown(ip.ssl_mode.clone()),
        ip.ssl_mode.as_deref() == Some(declared.ssl_mode.as_str()),
        format!("requireSsl is {}", shown(ip.require_ssl)),
    );
}

/// One entry of Service Networking `services.connections.list`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Connection {
    pub network: String,
    pub reserved_peering_ranges: Vec<String>,
    pub peering: String,
    pub service: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Connections {
    pub connections: Vec<Connection>,
}

pub fn private_services(out: &mut Findings, spec: &CloudSpec, live: &Connections) {
    let declared = &spec.private_services;
    let r = format!(
        "private services connection on {} (servicenetworking)",
        declared.network
    );
    let connection = live
        .connections
        .iter()
        .find(|c| c.service.ends_with("servicenetworking.googleapis.com"));
    let live_ranges: Vec<String> = connection
        .map(|c| c.reserved_peering_ranges.clone())
        .unwrap_or_default();
    let live_shown = if connection.is_none() {
        "no connection".to_string()
    } else {
        live_ranges.join(", ")
    };
    for range in &declared.reserved_peering_ranges {
        let existing = declared.existing_ranges.contains(range);
        let present = live_ranges.contains(range);
        out.judged(
            &r,
            &format!(
                "reserves {range} ({})",
                if existing {
                    "existing SuiteX range, from existing_peering_ranges"
                } else {
                    "the event store's range"
                }
            ),
            "reserved".into(),
            if present {
                "reserved".into()
            } else {
                format!("absent (live: {live_shown})")
            },
            present,
            if present || !existing {
                String::new()
            } else {
                "a wrong or missing name in existing_peering_ranges would drop the existing SuiteX database's range on the next apply: copy the live names into terraform.tfvars".into()
            },
        );
    }
    let declared_set: BTreeSet<&String> = declared.reserved_peering_ranges.iter().collect();
    let live_set: BTreeSet<&String> = live_ranges.iter().collect();
    out.judged(
        &r,
        "reservedPeeringRanges (whole list)",
        declared.reserved_peering_ranges.join(", "),
        live_shown,
        connection.is_some() && declared_set == live_set,
        if live_set.difference(&declared_set).next().is_some() {
            "live ranges missing from the Terraform would be removed by the next apply".into()
        } else {
            String::new()
        },
    );
}

/// Permissions a predefined role gives that `rig drift` tests for (a subset: what the worker
/// needs from it). Unknown roles contribute nothing, so a check can only get stricter.
pub fn role_permissions(role: &str) -> &'static [&'static str] {
    match role {
        "roles/pubsub.publisher" => &["pubsub.topics.publish"],
        "roles/pubsub.subscriber" => &["pubsub.subscriptions.consume"],
        "roles/storage.objectAdmin" => &[
            "storage.objects.create",
            "storage.objects.get",
            "storage.objects.delete",
        ],
        _ => &[],
    }
}

/// Administration the worker must never hold, per kind of resource.
pub fn admin_permissions(kind: ResourceKind) -> &'static [&'static str] {
    match kind {
        ResourceKind::Topic => &[
            "pubsub.topics.update",
            "pubsub.topics.delete",
            "pubsub.topics.setIamPolicy",
        ],
        ResourceKind::Subscription => &[
            "pubsub.subscriptions.update",
            "pubsub.subscriptions.delete",
            "pubsub.subscriptions.setIamPolicy",
        ],
        ResourceKind::Bucket => &[
            "storage.buckets.update",
            "storage.buckets.delete",
            "storage.buckets.setIamPolicy",
        ],
    }
}

/// Project-level permissions the worker must lack: any Cloud SQL administration, creating
/// backbone resources, and the data-plane permissions project-wide (its grants are per resource).
pub const PROJECT_FORBIDDEN: &[&str] = &[
    "cloudsql.instances.create",
    "cloudsql.instances.update",
    "cloudsql.instances.delete",
    "cloudsql.instances.restart",
    "cloudsql.instances.failover",
    "cloudsql.instances.restoreBackup",
    "cloudsql.backupRuns.delete",
    "cloudsql.databases.delete",
    "cloudsql.users.create",
    "cloudsql.users.update",
    "cloudsql.users.delete",
    "pubsub.topics.create",
    "pubsub.subscriptions.create",
    "storage.buckets.create",
    "pubsub.topics.publish",
    "pubsub.subscriptions.consume",
    "storage.objects.create",
];

/// What `testIamPermissions` answered for one resource, judged both ways.
pub fn worker_permissions(
    out: &mut Findings,
    resource: &str,
    needed: &[&str],
    forbidden: &[&str],
    held: &[String],
) {
    let held: BTreeSet<&str> = held.iter().map(String::as_str).collect();
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|p| !held.contains(p))
        .collect();
    let has = if needed.is_empty() {
        "nothing".to_string()
    } else {
        needed.join(", ")
    };
    out.judged(
        resource,
        "worker holds",
        has.clone(),
        if missing.is_empty() {
            has
        } else {
            format!("missing {}", missing.join(", "))
        },
        missing.is_empty(),
        String::new(),
    );
    let widened: Vec<&str> = forbidden
        .iter()
        .copied()
        .filter(|p| held.contains(p))
        .collect();
    out.judged(
        resource,
        "worker lacks",
        forbidden.join(", "),
        if widened.is_empty() {
            "none of them".into()
        } else {
            format!("HOLDS {}", widened.join(", "))
        },
        widened.is_empty(),
        if widened.is_empty() {
            String::new()
        } else {
            "remove the grant that gives these (project-level roles or a broader role on the resource)".into()
        },
    );
}

/// Whether an IAM policy grants `role` (or a role that includes it) to `member`.
pub fn policy_grants(
    policy: &google_cloud_iam_v1::model::Policy,
    role: &str,
    member: &str,
) -> bool {
    let covering: &[&str] = match role {
        "roles/pubsub.publisher" | "roles/pubsub.subscriber" => {
            &["roles/pubsub.editor", "roles/pubsub.admin"]
        }
        _ => &[],
    };
    policy.bindings.iter().any(|b| {
        (b.role == role || covering.contains(&b.role.as_str()))
            && b.members.iter().any(|m| m == member)
            && b.condition.is_none()
    })
}

pub fn short_name(path: &str) -> &str {
    short(path)
}

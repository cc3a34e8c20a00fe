//! What the Terraform says about the parts of the backbone that only exist in GCP: the Cloud SQL
//! instance, the private services connection, and who holds which role on which resource.
//! `rig drift` compares live resources with this and with [`Topology`](super::Topology).

use super::parse::{self, Configuration, Value};
use super::{Location, TopologyError};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudSpec {
    pub environment: String,
    /// The GCP project (root variable `project_id`).
    pub project_id: String,
    pub event_store: SqlInstanceSpec,
    pub private_services: PrivateServicesSpec,
    /// The worker's service account e-mail (`<account_id>@<project>.iam.gserviceaccount.com`).
    pub worker_service_account: String,
    /// Role grants to the worker on the backbone's own resources.
    pub worker_grants: Vec<ResourceGrant>,
    /// Role grants to the Pub/Sub service agent (dead-lettering).
    pub service_agent_grants: Vec<ResourceGrant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlInstanceSpec {
    pub name: String,
    pub database_version: String,
    pub availability_type: String,
    pub backups_enabled: bool,
    pub binary_log_enabled: bool,
    pub transaction_log_retention_days: Option<u32>,
    pub ipv4_enabled: bool,
    /// Name of the VPC (`suitex-vpc`) its private IP lives on.
    pub private_network: String,
    pub allocated_ip_range: Option<String>,
    pub ssl_mode: String,
    pub database: String,
    /// Databases staging acceptance writes to (dev and staging only), with the same grants.
    pub acceptance_databases: Vec<String>,
    pub worker_user: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateServicesSpec {
    pub network: String,
    /// Every range the connection reserves, in the Terraform's order: the existing SuiteX
    /// ranges from `existing_peering_ranges`, then the event store's own.
    pub reserved_peering_ranges: Vec<String>,
    /// The subset that comes from `existing_peering_ranges` (what must never be dropped).
    pub existing_ranges: Vec<String>,
}

/// One role on one resource, e.g. `roles/pubsub.publisher` on topic `events.dlq`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResourceGrant {
    pub kind: ResourceKind,
    /// Topic or subscription id, or bucket name.
    pub resource: String,
    pub role: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResourceKind {
    Topic,
    Subscription,
    Bucket,
}

impl CloudSpec {
    pub fn load(terraform_root: &Path, environment: &str) -> Result<CloudSpec, TopologyError> {
        let config = parse::load_environment(terraform_root, environment)?;
        CloudSpec::from_configuration(&config, environment)
    }

    fn from_configuration(
        config: &Configuration,
        environment: &str,
    ) -> Result<CloudSpec, TopologyError> {
        let env_location = Location::new(config.environment_dir.clone(), 0);
        let invalid = |location: &Location, message: String| TopologyError::Invalid {
            location: location.clone(),
            message,
        };
        let project_id = config
            .root_variables
            .get("project_id")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                invalid(
                    &env_location,
                    "the root variable `project_id` is not set; set it in terraform.tfvars".into(),
                )
            })?
            .to_string();

        let instance = single(config, "google_sql_database_instance", &env_location)?;
        let body = &instance.body;
        let text = |path: &[&str]| -> Option<String> {
            body.lookup(path)
                .and_then(|a| a.value.as_str())
                .map(str::to_string)
        };
        let flag = |path: &[&str]| body.lookup(path).and_then(|a| a.value.as_bool());
        let private_network_value = body
            .lookup(&["settings", "ip_configuration", "private_network"])
            .map(|a| a.value.clone());
        let private_network = private_network_value
            .as_ref()
            .and_then(|v| network_name(config, v))
            .ok_or_else(|| {
                invalid(
                    &instance.location,
                    format!("{}: settings.ip_configuration.private_network must refer to a google_compute_network (data source) with a known name", instance.address),
                )
            })?;
        let allocated_ip_range = body
            .lookup(&["settings", "ip_configuration", "allocated_ip_range"])
            .and_then(|a| config.resolve_name(&a.value, "google_compute_global_address"));
        let named = |rtype: &str| {
            config
                .managed(rtype)
                .filter_map(|r| r.body.value("name").and_then(Value::as_str))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let event_store = SqlInstanceSpec {
            name: text(&["name"]).ok_or_else(|| {
                invalid(
                    &instance.location,
                    format!("{}: `name` must be known before apply", instance.address),
                )
            })?,
            database_version: text(&["database_version"]).unwrap_or_default(),
            availability_type: text(&["settings", "availability_type"])
                .unwrap_or_else(|| "ZONAL".into()),
            backups_enabled: flag(&["settings", "backup_configuration", "enabled"])
                .unwrap_or(false),
            binary_log_enabled: flag(&["settings", "backup_configuration", "binary_log_enabled"])
                .unwrap_or(false),
            transaction_log_retention_days: body
                .lookup(&[
                    "settings",
                    "backup_configuration",
                    "transaction_log_retention_days",
                ])
                .and_then(|a| a.value.as_u32()),
            // Cloud SQL gives an instance a public IP unless told otherwise.
            ipv4_enabled: flag(&["settings", "ip_configuration", "ipv4_enabled"]).unwrap_or(true),
            private_network,
            allocated_ip_range,
            ssl_mode: text(&["settings", "ip_configuration", "ssl_mode"])
                .unwrap_or_else(|| "ALLOW_UNENCRYPTED_AND_ENCRYPTED".into()),
            database: named("google_sql_database")
                .into_iter()
                .find(|n| n == "events")
                .unwrap_or_default(),
            acceptance_databases: named("google_sql_database")
                .into_iter()
                .filter(|n| n != "events")
                .collect(),
            worker_user: named("google_sql_user")
                .into_iter()
                .find(|n| n == "sync_worker")
                .unwrap_or_default(),
        };

        let connection = single(
            config,
            "google_service_networking_connection",
            &env_location,
        )?;
        let network = connection
            .body
            .value("network")
            .and_then(|v| network_name(config, v))
            .ok_or_else(|| {
                invalid(
                    &connection.location,
                    format!(
                        "{}: `network` must refer to the SuiteX VPC's data source",
                        connection.address
                    ),
                )
            })?;
        let reserved_peering_ranges = match connection.body.value("reserved_peering_ranges") {
            Some(Value::List(items)) => items
                .iter()
                .map(|v| {
                    config
                        .resolve_name(v, "google_compute_global_address")
                        .ok_or_else(|| {
                            invalid(
                                &connection.location,
                                format!(
                                    "{}: a reserved peering range ({}) does not resolve to a name",
                                    connection.address,
                                    v.render().unwrap_or_default()
                                ),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => {
                return Err(invalid(
                    &connection.location,
                    format!(
                        "{}: `reserved_peering_ranges` must be a list",
                        connection.address
                    ),
                ));
            }
        };
        let existing_ranges = match config.root_variables.get("existing_peering_ranges") {
            Some(Value::List(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };

        let account = single(config, "google_service_account", &env_location)?;
        let account_id = account
            .body
            .value("account_id")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                invalid(
                    &account.location,
                    format!(
                        "{}: `account_id` must be known before apply",
                        account.address
                    ),
                )
            })?;
        let worker_service_account = format!("{account_id}@{project_id}.iam.gserviceaccount.com");

        let mut worker_grants = Vec::new();
        let mut service_agent_grants = Vec::new();
        for (kind, member_type, target_attr, target_type) in [
            (
                ResourceKind::Topic,
                "google_pubsub_topic_iam_member",
                "topic",
                "google_pubsub_topic",
            ),
            (
                ResourceKind::Subscription,
                "google_pubsub_subscription_iam_member",
                "subscription",
                "google_pubsub_subscription",
            ),
            (
                ResourceKind::Bucket,
                "google_storage_bucket_iam_member",
                "bucket",
                "google_storage_bucket",
            ),
        ] {
            for grant in config.managed(member_type) {
                let (Some(resource), Some(role), Some(member)) = (
                    grant
                        .body
                        .value(target_attr)
                        .and_then(|v| config.resolve_name(v, target_type)),
                    grant.body.value("role").and_then(Value::as_str),
                    grant.body.value("member").and_then(Value::render),
                ) else {
                    continue;
                };
                let grant = ResourceGrant {
                    kind,
                    resource,
                    role: role.to_string(),
                };
                if member.contains("google_service_account.") {
                    worker_grants.push(grant);
                } else if member.contains("@gcp-sa-pubsub.iam.gserviceaccount.com") {
                    service_agent_grants.push(grant);
                }
            }
        }
        worker_grants.sort();
        worker_grants.dedup();
        service_agent_grants.sort();
        service_agent_grants.dedup();

        Ok(CloudSpec {
            environment: environment.to_string(),
            project_id,
            event_store,
            private_services: PrivateServicesSpec {
                network,
                reserved_peering_ranges,
                existing_ranges,
            },
            worker_service_account,
            worker_grants,
            service_agent_grants,
        })
    }
}

fn single<'c>(
    config: &'c Configuration,
    rtype: &str,
    location: &Location,
) -> Result<&'c parse::ResourceInstance, TopologyError> {
    let found: Vec<_> = config.managed(rtype).collect();
    match found.as_slice() {
        [one] => Ok(one),
        _ => Err(TopologyError::Invalid {
            location: location.clone(),
            message: format!("expected exactly one {rtype}, found {}", found.len()),
        }),
    }
}

/// The VPC name behind `data.google_compute_network.X.id` (or a literal network path).
fn network_name(config: &Configuration, value: &Value) -> Option<String> {
    match value {
        Value::String(s) => s.rsplit('/').next().map(str::to_string),
        Value::Ref(r) if r.address.rtype == "google_compute_network" => config
            .find(&r.address)?
            .body
            .value("name")?
            .as_str()
            .map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> std::path::PathBuf {
        crate::Topology::default_root()
    }

    #[test]
    fn staging_spec_is_read_from_the_terraform() {
        let spec = CloudSpec::load(&root(), "staging").expect("staging Terraform");
        assert_eq!(spec.project_id, "suitex-staging");
        assert_eq!(spec.event_store.name, "event-store-staging");
        assert_eq!(spec.event_store.database_version, "MYSQL_8_4");
        assert_eq!(spec.event_store.availability_type, "REGIONAL");
        assert!(spec.event_store.backups_enabled && spec.event_store.binary_log_enabled);
        assert_eq!(spec.event_store.transaction_log_retention_days, Some(7));
        assert!(!spec.event_store.ipv4_enabled);
        assert_eq!(spec.event_store.private_network, "suitex-vpc");
        assert_eq!(spec.event_store.ssl_mode, "ENCRYPTED_ONLY");
        assert_eq!(spec.event_store.database, "events");
        assert_eq!(
            spec.event_store.acceptance_databases,
            vec!["events_acceptance"]
        );
        let prod = CloudSpec::load(&root(), "prod").expect("prod Terraform");
        assert!(prod.event_store.acceptance_databases.is_empty());
        assert_eq!(
            spec.private_services.reserved_peering_ranges,
            vec!["suitex-staging-private-services", "event-store-psa-staging"]
        );
        assert_eq!(
            spec.private_services.existing_ranges,
            vec!["suitex-staging-private-services"]
        );
        assert_eq!(
            spec.worker_service_account,
            "backbone-worker-staging@suitex-staging.iam.gserviceaccount.com"
        );
        assert!(spec.worker_grants.contains(&ResourceGrant {
            kind: ResourceKind::Topic,
            resource: "events.raw".into(),
            role: "roles/pubsub.publisher".into()
        }));
        assert!(spec.service_agent_grants.contains(&ResourceGrant {
            kind: ResourceKind::Topic,
            resource: "events.dlq".into(),
            role: "roles/pubsub.publisher".into()
        }));
        assert!(
            spec.worker_grants
                .iter()
                .any(|g| g.kind == ResourceKind::Bucket && g.role == "roles/storage.objectAdmin")
        );
    }
}

//! Scenarios on a backbone that provisions nothing: GCP's dev and staging acceptance resources
//! (`rig scenarios --target gcp`). There are no per-case scopes there, so every case shares the
//! fixed acceptance resources and is told apart from everything else by marks:
//!
//! - every message it publishes carries the probe attribute with the value `<run>/<case>`, so
//!   only the probe-only acceptance subscriptions receive it (never the worker's, never
//!   operators'), and the worker in acceptance mode processes only that case's messages;
//! - every account id it writes starts with `<run>.<case>.`, so the case's ordering keys are
//!   its own and its rows in the shared, append-only `events_acceptance` are found by prefix;
//! - it reads merged events and dead letters back through the acceptance subscriptions,
//!   acknowledging everything of this run it sees and releasing other runs' probes; at the end
//!   of the run [`AcceptanceRun::drain`] consumes whatever the run left there.

use std::time::Duration;

use google_cloud_pubsub::model::Message;

use rig_harness::acceptance::{self, Belongs, Drained};
use rig_harness::environment::Environment;
use rig_topology::Topology;

/// One acceptance run: the reached environment and what marks this run's messages and rows.
#[derive(Debug, Clone)]
pub struct AcceptanceRun {
    /// The fixed acceptance environment (its event store is an acceptance database).
    pub environment: Environment,
    /// `scenarios-<8 hex digits>`, new for every run.
    pub run_id: String,
    pub probe_attribute: String,
    /// The Terraform's acceptance databases: the only ones the worker may write to.
    pub databases: Vec<String>,
    /// The longest one wait of a case may take (the scenarios' local limits are the floor).
    pub timeout: Duration,
    /// How long the final drain waits for nothing more of this run to arrive.
    pub drain_quiet: Duration,
}

/// What marks one case's messages and rows (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub attribute: String,
    /// `<run>/<case>`: the probe attribute's value on every message of the case.
    pub value: String,
    /// `<run>/`: what every probe value of the run starts with.
    pub run_prefix: String,
    /// `<run>.<case>.`: put before every account id of the case.
    pub account_prefix: String,
}

impl Mark {
    pub fn new(run_id: &str, attribute: &str, case: &str) -> Mark {
        // Account ids and probe values take it as it is; keep it to [a-z0-9-].
        let case: String = case
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        Mark {
            attribute: attribute.to_string(),
            value: format!("{run_id}/{case}"),
            run_prefix: format!("{run_id}/"),
            account_prefix: format!("{run_id}.{case}."),
        }
    }

    pub fn belongs(&self, message: &Message) -> Belongs {
        acceptance::belongs(
            &message.attributes,
            &self.attribute,
            &self.value,
            &self.run_prefix,
        )
    }

    pub fn account(&self, account_id: &str) -> String {
        format!("{}{account_id}", self.account_prefix)
    }
}

impl AcceptanceRun {
    /// Checks that `topology` declares what an acceptance run uses (the probe attribute and an
    /// acceptance subscription on every topic) and that `environment`'s event store is one of
    /// `databases`; `timeout` and `drain_quiet` default to what the Terraform's subscriptions
    /// imply ([`default_timeout`], [`default_drain_quiet`]).
    pub fn new(
        environment: Environment,
        topology: &Topology,
        databases: Vec<String>,
        timeout: Option<Duration>,
        drain_quiet: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let probe_attribute = topology.probe_attribute().ok_or_else(|| {
            anyhow::anyhow!("the Terraform declares no probe attribute (a validation subscription filtering on it)")
        })?;
        for topic in &topology.topics {
            anyhow::ensure!(
                topology.acceptance_subscription(&topic.name).is_some(),
                "the {} Terraform has no acceptance subscription on {}: staging acceptance needs acceptance_enabled = true in envs/{}/terraform.tfvars (dev and staging only)",
                topology.environment,
                topic.name,
                topology.environment
            );
        }
        rig_events::worker::AcceptanceMode {
            probe_value: String::new(),
            databases: databases.clone(),
        }
        .admit_database(&environment.event_store.database)?;
        let run_id = format!(
            "scenarios-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Ok(Self {
            environment,
            run_id,
            probe_attribute,
            databases,
            timeout: timeout.unwrap_or_else(|| default_timeout(topology)),
            drain_quiet: drain_quiet.unwrap_or_else(|| default_drain_quiet(topology)),
        })
    }

    pub fn run_prefix(&self) -> String {
        format!("{}/", self.run_id)
    }

    /// The marks of case `case` (a name unique within the run, e.g. `ordering-0`).
    pub fn mark(&self, case: &str) -> Mark {
        Mark::new(&self.run_id, &self.probe_attribute, case)
    }

    /// Consumes what the run left on the acceptance subscriptions (see [`acceptance::drain`]).
    pub async fn drain(&self, topology: &Topology) -> anyhow::Result<Vec<Drained>> {
        acceptance::drain(
            &self.environment,
            topology,
            &self.run_prefix(),
            self.drain_quiet,
            |line| eprintln!("  {line}"),
        )
        .await
    }
}

/// The acceptance subscriptions, each with the wait its messages may need.
fn acceptance_subscriptions(
    topology: &Topology,
) -> impl Iterator<Item = &rig_topology::Subscription> {
    topology.subscriptions.iter().filter(|s| s.is_acceptance())
}

/// The longest one wait of a case may take by default: twice the time an event failing every
/// delivery takes to exhaust the raw acceptance subscription's attempts (Google does not
/// document its backoff factor), plus its ack deadline and a minute. dev: 2.5 min; staging,
/// with its 10–600 s backoff: 7 min.
pub fn default_timeout(topology: &Topology) -> Duration {
    acceptance_subscriptions(topology)
        .filter(|s| s.dead_letter.is_some())
        .map(|s| {
            acceptance::exhaustion_time(s) * 2
                + Duration::from_secs(u64::from(s.ack_deadline_seconds))
                + Duration::from_secs(60)
        })
        .max()
        .unwrap_or(Duration::from_secs(600))
}

/// How long the final drain waits for nothing more of the run to arrive: the longest an
/// acceptance subscription may take to hand a message out again (ack deadline plus longest
/// backoff) and a margin. dev: 80 s; staging: 11 min 10 s.
pub fn default_drain_quiet(topology: &Topology) -> Duration {
    acceptance_subscriptions(topology)
        .map(acceptance::redelivery_bound)
        .max()
        .unwrap_or(Duration::from_secs(600))
        + Duration::from_secs(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_each_environments_retry_policy() {
        let dev = Topology::of_repository("dev").unwrap();
        let staging = Topology::of_repository("staging").unwrap();
        // dev: backoffs 1+2+4+8 s, ack deadline 60 s.
        assert_eq!(default_timeout(&dev), Duration::from_secs(2 * 15 + 60 + 60));
        assert_eq!(default_drain_quiet(&dev), Duration::from_secs(60 + 10 + 10));
        // staging: 10+20+40+80 s, up to 600 s.
        assert_eq!(
            default_timeout(&staging),
            Duration::from_secs(2 * 150 + 60 + 60)
        );
        assert_eq!(
            default_drain_quiet(&staging),
            Duration::from_secs(60 + 600 + 10)
        );
    }

    #[test]
    fn marks_tell_cases_and_runs_apart() {
        let mark = |run: &str, case: &str| Mark::new(run, "backbone_probe", case);
        let ours = mark("scenarios-1", "ordering-0");
        assert_eq!(ours.value, "scenarios-1/ordering-0");
        assert_eq!(ours.account("TSTDRV1"), "scenarios-1.ordering-0.TSTDRV1");
        let message = |value: Option<&str>| {
            let m = Message::new().set_data("x");
            match value {
                Some(v) => m.set_attributes([("backbone_probe", v)]),
                None => m,
            }
        };
        assert_eq!(ours.belongs(&message(Some(&ours.value))), Belongs::Ours);
        assert_eq!(
            ours.belongs(&message(Some(&mark("scenarios-1", "bad-input-1").value))),
            Belongs::ThisRun
        );
        assert_eq!(
            ours.belongs(&message(Some(&mark("scenarios-2", "ordering-0").value))),
            Belongs::OtherRun
        );
        assert_eq!(ours.belongs(&message(None)), Belongs::NotProbe);
        assert_eq!(mark("r", "Bad_Input 1").value, "r/bad-input-1");
    }
}

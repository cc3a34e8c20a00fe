//! The documented Pub/Sub behaviours the suite checks: each with its name, what Google's
//! documentation promises, the page that promises it, and a check that observes it through the
//! official client (plus raw gRPC where that client cannot express the request).

mod acks;
mod admin;
mod delivery;
mod filters;
mod http_json;
mod limits;
mod python;
mod replay;
mod resources;

use crate::scope::{Scope, Verdict};

pub struct Behaviour {
    /// Stable: trial names, the fidelity JSON and docs/fidelity.md key on it. Behaviours
    /// observed through Google's Python client start with `python::`.
    pub name: &'static str,
    pub expectation: &'static str,
    pub source: &'static str,
    pub check: fn(&Scope) -> Verdict,
}

/// The official client a behaviour is observed through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// google-cloud-pubsub (Rust), with raw gRPC or HTTP where it cannot express a request.
    Rust,
    /// google-cloud-pubsub (Python), as a subprocess.
    Python,
}

impl Behaviour {
    pub fn client(&self) -> Client {
        if self.name.starts_with("python::") {
            Client::Python
        } else {
            Client::Rust
        }
    }
}

pub const ORDERING: &str = "https://cloud.google.com/pubsub/docs/ordering";
pub const DEAD_LETTER: &str = "https://cloud.google.com/pubsub/docs/handling-failures";
pub const FILTERING: &str = "https://cloud.google.com/pubsub/docs/subscription-message-filter";
pub const LEASES: &str = "https://cloud.google.com/pubsub/docs/lease-management";
pub const EXACTLY_ONCE: &str = "https://cloud.google.com/pubsub/docs/exactly-once-delivery";
pub const LIMITS: &str = "https://cloud.google.com/pubsub/quotas#resource_limits";
pub const ERROR_CODES: &str = "https://cloud.google.com/pubsub/docs/reference/error-codes";
pub const RESOURCE_NAMES: &str =
    "https://cloud.google.com/pubsub/docs/pubsub-basics#resource_names";
pub const DEAD_LETTER_POLICY: &str = "https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions#deadletterpolicy";
pub const SUBSCRIPTION_API: &str =
    "https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions";
pub const TOPIC_API: &str =
    "https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.topics";
pub const ACKNOWLEDGE_REQUEST: &str =
    "https://cloud.google.com/pubsub/docs/reference/rpc/google.pubsub.v1#acknowledgerequest";
pub const FLOW_CONTROL: &str = "https://cloud.google.com/pubsub/docs/flow-control-messages";
pub const DETACH: &str = "https://cloud.google.com/pubsub/docs/detach-subscriptions";
pub const SUBSCRIBER: &str = "https://cloud.google.com/pubsub/docs/subscriber";
pub const PUBLISHER: &str = "https://cloud.google.com/pubsub/docs/publisher";
pub const REPLAY: &str = "https://cloud.google.com/pubsub/docs/replay-overview";
pub const REST_API: &str = "https://cloud.google.com/pubsub/docs/reference/rest";

pub fn all() -> Vec<Behaviour> {
    let mut all = Vec::new();
    all.extend(delivery::behaviours());
    all.extend(acks::behaviours());
    all.extend(filters::behaviours());
    all.extend(limits::behaviours());
    all.extend(admin::behaviours());
    all.extend(resources::behaviours());
    all.extend(replay::behaviours());
    all.extend(http_json::behaviours());
    all.extend(python::behaviours());
    all
}

/// Cases per property-based check: `PROPTEST_CASES`, else a few (each case is a round trip
/// through a real service).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default)
}

/// Runs a property over generated cases, each checked against the implementation; a failing
/// case is shrunk a little (each shrink step is another round trip) and reported minimal.
pub fn property<S>(
    strategy: S,
    cases_default: u32,
    check: impl FnMut(S::Value) -> Verdict,
) -> Verdict
where
    S: proptest::strategy::Strategy,
    S::Value: std::fmt::Debug,
{
    use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
    let config = Config {
        cases: cases(cases_default),
        max_shrink_iters: 2,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    // proptest wants `Fn`; the checks count their cases to name each case's resources.
    let check = std::cell::RefCell::new(check);
    match runner.run(&strategy, |value| {
        (check.borrow_mut())(value).map_err(TestCaseError::fail)
    }) {
        Ok(()) => Ok(()),
        Err(TestError::Fail(reason, value)) => Err(format!("{reason} (case {value:?})")),
        Err(TestError::Abort(reason)) => Err(format!("aborted: {reason}")),
    }
}

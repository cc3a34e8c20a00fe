//! `docs/fidelity.md`, generated: each run can record its outcomes as JSON, one file per
//! implementation (`docs/fidelity/<implementation>.json`), and the markdown is a pure function
//! of those files and the behaviour list. A real-GCP run fills its column the same way.
//! The page's last part, from `scenarios::fidelity::MARKER` on, is the scenario matrix, which
//! `scenarios/fidelity.rs` generates: this suite writes and checks only what comes before it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::behaviours::Behaviour;
use crate::implementation::{Implementation, repository_root};
use scenarios::fidelity::with_lock_file;

pub const RECORD_VAR: &str = "RIG_FIDELITY_RECORD";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Divergence,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Recorded {
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Results {
    /// How the implementation is named in the table, with its version where known.
    pub label: String,
    pub results: BTreeMap<String, Recorded>,
}

pub fn recording() -> bool {
    std::env::var(RECORD_VAR).is_ok_and(|v| v == "1")
}

fn json_path(implementation: Implementation) -> PathBuf {
    repository_root()
        .join("docs/fidelity")
        .join(format!("{}.json", implementation.id()))
}

pub fn doc_path() -> PathBuf {
    repository_root().join("docs/fidelity.md")
}

pub fn label(implementation: Implementation) -> String {
    match implementation {
        Implementation::OurService => "Our service".into(),
        Implementation::GoogleEmulator => format!(
            "Google's emulator {}",
            crate::implementation::emulator_version().unwrap_or_else(|| "(version unknown)".into())
        ),
        Implementation::Gcp => "Real Pub/Sub (GCP)".into(),
    }
}

fn load(implementation: Implementation) -> Result<Option<Results>, String> {
    scenarios::fidelity::read_results(&json_path(implementation))
}

/// Stores one outcome and regenerates the markdown, under a lock shared by every trial process
/// of the run.
pub fn record(
    implementation: Implementation,
    behaviour: &str,
    recorded: Recorded,
    behaviours: &[Behaviour],
) -> Result<(), String> {
    let lock = std::env::temp_dir().join("rig-pubsub-fidelity.lock");
    with_lock_file(&lock, || {
        let mut results = load(implementation)?.unwrap_or_default();
        results.label = label(implementation);
        results.results.insert(behaviour.to_string(), recorded);
        // Behaviours that no longer exist go with the next recording.
        results
            .results
            .retain(|name, _| behaviours.iter().any(|b| b.name == name));
        scenarios::fidelity::write_results(&json_path(implementation), &results)?;
        write_doc(behaviours)
    })
}

/// Writes this suite's part of the page, keeping the scenario section after it as it is.
fn write_doc(behaviours: &[Behaviour]) -> Result<(), String> {
    let have = std::fs::read_to_string(doc_path()).unwrap_or_default();
    let (_, scenario_section) = scenarios::fidelity::split(&have);
    let doc = render(behaviours)? + scenario_section;
    std::fs::write(doc_path(), doc).map_err(|e| format!("{}: {e}", doc_path().display()))
}

/// Why docs/fidelity.md does not match the behaviour list and the recorded results, if it
/// doesn't.
pub fn staleness(behaviours: &[Behaviour]) -> Result<(), String> {
    // The lock keeps a recording run's writes from being read half-done.
    let lock = std::env::temp_dir().join("rig-pubsub-fidelity.lock");
    with_lock_file(&lock, || {
        // Recording: the page is regenerated from what is recorded (the header or the behaviour
        // texts may have changed without a re-run).
        if recording() {
            write_doc(behaviours)?;
        }
        stale_now(behaviours)
    })
}

fn stale_now(behaviours: &[Behaviour]) -> Result<(), String> {
    let names: Vec<&str> = behaviours.iter().map(|b| b.name).collect();
    let mut problems = Vec::new();
    for implementation in Implementation::ALL {
        let Some(results) = load(implementation)? else {
            continue;
        };
        problems.extend(scenarios::fidelity::coverage(
            &format!("docs/fidelity/{}.json", implementation.id()),
            results.results.keys(),
            &names,
            implementation.is_local(),
        ));
    }
    let wanted = render(behaviours)?;
    let have = std::fs::read_to_string(doc_path()).unwrap_or_default();
    if wanted != scenarios::fidelity::split(&have).0 {
        problems.push(
            "docs/fidelity.md is not what the behaviour list and the recorded results generate"
                .to_string(),
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}. Re-run and record: `{RECORD_VAR}=1 cargo nextest run --profile conformance --test pubsub_conformance`",
            problems.join("; ")
        ))
    }
}

fn cell(implementation: Implementation, results: &Option<Results>, name: &str) -> String {
    match results.as_ref().and_then(|r| r.results.get(name)) {
        Some(Recorded {
            outcome: Outcome::Pass,
            ..
        }) => "✅".into(),
        Some(Recorded {
            outcome: Outcome::Fail,
            ..
        }) => "❌".into(),
        Some(Recorded {
            outcome: Outcome::Divergence,
            ..
        }) => "⚠️ divergence".into(),
        None if results.is_none() && implementation == Implementation::Gcp => "not run here".into(),
        None => "not run".into(),
    }
}

pub fn render(behaviours: &[Behaviour]) -> Result<String, String> {
    let loaded: Vec<(Implementation, Option<Results>)> = Implementation::ALL
        .iter()
        .map(|&i| load(i).map(|r| (i, r)))
        .collect::<Result<_, _>>()?;
    let mut out = String::new();
    out.push_str(HEADER);
    out.push_str("| Behaviour | Client | Expectation |");
    for (implementation, results) in &loaded {
        let label = results
            .as_ref()
            .map(|r| r.label.clone())
            .unwrap_or_else(|| label(*implementation));
        out.push_str(&format!(" {label} |"));
    }
    out.push_str(" Source |\n|---|---|---|");
    for _ in &loaded {
        out.push_str("---|");
    }
    out.push_str("---|\n");
    for behaviour in behaviours {
        let client = match behaviour.client() {
            crate::behaviours::Client::Rust => "Rust",
            crate::behaviours::Client::Python => "Python",
        };
        out.push_str(&format!(
            "| `{}` | {client} | {} |",
            behaviour.name,
            behaviour.expectation.replace('|', "\\|")
        ));
        for (implementation, results) in &loaded {
            out.push_str(&format!(
                " {} |",
                cell(*implementation, results, behaviour.name)
            ));
        }
        let page = behaviour
            .source
            .trim_start_matches("https://cloud.google.com/pubsub/");
        out.push_str(&format!(" [{page}]({}) |\n", behaviour.source));
    }
    out.push_str("\n## What differs, as observed\n\n");
    let mut any = false;
    for (implementation, results) in &loaded {
        let Some(results) = results else { continue };
        let notes: Vec<String> = behaviours
            .iter()
            .filter_map(|b| {
                let r = results.results.get(b.name)?;
                (r.outcome != Outcome::Pass).then(|| {
                    format!(
                        "- `{}` ({}): {}\n",
                        b.name,
                        match r.outcome {
                            Outcome::Fail => "fails",
                            _ => "divergence",
                        },
                        r.detail.replace('\n', " ")
                    )
                })
            })
            .collect();
        if notes.is_empty() {
            continue;
        }
        any = true;
        out.push_str(&format!("### {}\n\n", results.label));
        for note in notes {
            out.push_str(&note);
        }
        out.push('\n');
        let _ = implementation;
    }
    if !any {
        out.push_str("Nothing: every recorded behaviour passed.\n");
    }
    out.push_str(RECORDED_ELSEWHERE);
    Ok(out)
}

const HEADER: &str = "# Pub/Sub fidelity: documented behaviours × implementations

<!-- Generated by tests/pubsub_conformance from docs/fidelity/*.json: do not edit by hand. -->

What the conformance suite (`tests/pubsub_conformance/`) observed on each Pub/Sub
implementation, one row per documented behaviour, with the client that observed it and the
Google page the expectation comes from. ✅ behaves as documented; ❌ does not (a failing test
for our service); ⚠️ divergence: Google's emulator does not (recorded, never counted as a pass);
*not run here*: needs credentials.

- Clients: **Rust** is Google's `google-cloud-pubsub` crate (with raw gRPC or HTTP/JSON for
  requests it never sends as such); **Python** is Google's `google-cloud-pubsub` package, run
  as a subprocess (`tests/pubsub_conformance/python/driver.py`). The Python client
  acknowledges, nacks and extends leases with unary calls while its stream is open, so the
  subscriber's behaviours (ordering, nack and redelivery, dead-lettering, flow control, leases,
  exactly-once) are checked through both. Without the Python package (`pip install
  google-cloud-pubsub`, or `./x install`) the `python::` trials fail for our service and say
  SKIPPED for the others.
- Run it: `cargo nextest run --profile conformance --test pubsub_conformance` (one trial per
  behaviour × implementation, named `<implementation>::<behaviour>`; filter with e.g.
  `google_emulator::`). The profile runs 16 at a time: the checks mostly wait on ack
  deadlines. `./x test` runs them too, with the rest of the suite.
- Record a run into `docs/fidelity/<implementation>.json` and regenerate this page:
  `RIG_FIDELITY_RECORD=1 cargo nextest run --profile conformance --test pubsub_conformance`.
  `fidelity::doc_is_current` fails when this page is stale against the behaviour list or the
  recorded results; `RIG_FIDELITY_RECORD=1 cargo nextest run --test pubsub_conformance
  fidelity::` regenerates it from the recorded results alone.
- Against real Pub/Sub (creates and deletes only its own `rig-conformance-*` topics,
  subscriptions and snapshots): `RIG_TARGET=env GOOGLE_CLOUD_PROJECT=<project>
  RIG_FIDELITY_RECORD=1 cargo nextest run --test pubsub_conformance gcp::` with Application
  Default Credentials and no `PUBSUB_EMULATOR_HOST` (`RIG_TARGET=gcp` works too).
  The dead-letter checks need the Pub/Sub service agent's publish/subscribe grants in that
  project (see `infra/terraform/modules/backbone/iam_pubsub_service_agent.tf`).
- The last part of this page, [Scenarios × implementations](#scenarios--implementations), is
  the property-based scenarios' results on the same implementations, recorded by their own runs.

";

/// Facts from another project's recorded answers of Google's emulator (0.8.33) where our
/// service follows Google's documentation instead, and what our service leaves unimplemented.
const RECORDED_ELSEWHERE: &str = "
## Where Google's documentation and the emulator's recorded answers differ

The Fireside project's oracle corpus (`conformance/fixtures/pubsub-v1/` in
github.com/firenook-dev/firenook: 42 programs recorded against Google's emulator 0.8.33) was
read as a source of facts; the behaviours above that it suggested are this suite's own, each
checked against Google's documentation. Where the recording and the documentation disagree,
our service follows the documentation:

| The recording (emulator 0.8.33) | The documentation, and our service | Source |
|---|---|---|
| a nacked message of an ordering key is queued behind the key's later messages (`d3` before `d2`) | redelivered first, then every later message of its key, acknowledged ones included | [docs/ordering](https://cloud.google.com/pubsub/docs/ordering) |
| subscription `messageRetentionDuration` above 7 days refused | 10 minutes to 31 days, on topics and subscriptions | [projects.subscriptions](https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions) |
| `ackDeadlineSeconds` of 1..9 accepted | 10..600 (0 means the default, 10) | [projects.subscriptions](https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions) |
| `expirationPolicy.ttl` of 1 s accepted | at least 1 day; no ttl (or 0) never expires | [projects.subscriptions](https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions) |
| `DetachSubscription` and `UpdateSnapshot` answer UNIMPLEMENTED | both served; a detached subscription's pulls fail with FAILED_PRECONDITION | [docs/detach-subscriptions](https://cloud.google.com/pubsub/docs/detach-subscriptions), [projects.snapshots](https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.snapshots) |
| UpdateTopic refuses `labels`, `kms_key_name`, `message_storage_policy` | updatable fields of a topic | [projects.topics/patch](https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.topics/patch) |
| `state` left out of topics and subscriptions | reported (`ACTIVE`), with the default expiration policy (31 days) | [projects.subscriptions](https://cloud.google.com/pubsub/docs/reference/rest/v1/projects.subscriptions) |
| a filter that does not parse: UNKNOWN | INVALID_ARGUMENT | [docs/subscription-message-filter](https://cloud.google.com/pubsub/docs/subscription-message-filter) |
| out-of-range `maxDeliveryAttempts`: OUT_OF_RANGE | INVALID_ARGUMENT (as the rows above record) | [docs/handling-failures](https://cloud.google.com/pubsub/docs/handling-failures) |
| 10 MB+ messages, 101 attributes, 257-byte keys accepted | refused with INVALID_ARGUMENT | [quotas#resource_limits](https://cloud.google.com/pubsub/quotas#resource_limits) |
| with topic retention, a subscription created later is handed the retained messages at once | retention makes them reachable by seeking back; our service delivers them after a Seek | [docs/replay-overview](https://cloud.google.com/pubsub/docs/replay-overview) |

Not implemented by our service, and answered `UNIMPLEMENTED` (HTTP 501), never with a hang or
a wrong success: push and export (BigQuery, Cloud Storage, Bigtable) subscriptions, schemas
(SchemaService, topics' `schemaSettings`), IAM policy methods, message transforms and
ingestion. The corpus's 194 steps in those areas were not used.
";

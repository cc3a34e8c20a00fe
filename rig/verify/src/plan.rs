//! A run's plan: the workload a SuiteX producer would publish and the faults to inject, both
//! expanded from a seed, saved as a file that replays the run exactly (`--plan FILE`).
//!
//! The workload is a list of items in publish order. Each valid event belongs to an aggregate
//! (its ordering key) and carries the next revision of it; its payload is a NetSuite record
//! from `fixtures/netsuite/` with its id and revision stamped in ([`payload`]), padded past the
//! claim-check threshold for a few. A producer retry publishes an earlier event again, later.
//! Poison is a case of the corpus in `fixtures/bad/` (see its README), built on an event of
//! its aggregate.
//!
//! Faults start when the run reaches a point of progress (so many events stored, an attempt of
//! a key or an item delivered), never at a time on the clock: on a loaded machine a time means
//! a different point of the run every time, a count of stored events the same one. Some last
//! for a time (a freeze past the ack deadline), others until so many more events are stored.
//!
//! On disk the plan is one JSON document whose aggregates, faults and items sit one per line,
//! so that a diff of two plans, or a hand edit (drop a fault to bisect a failure), is a line.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::FileError;
pub use crate::terms::{Aggregate, FaultKind};

/// The plan format this build reads and writes.
pub const VERSION: u32 = 1;

/// Pub/Sub's claim-check threshold in the producer: payloads above it go through the bucket.
pub const CLAIM_CHECK_THRESHOLD: u64 = 256 * 1024;

/// The labels our Pub/Sub service reads its faults from (`rig/pubsub-service/src/faults.rs`).
pub mod labels {
    pub const SEED: &str = "rig-fault-seed";
    pub const DUPLICATE: &str = "rig-fault-duplicate-permille";
    pub const STREAM_RESET: &str = "rig-fault-stream-reset-permille";
    pub const DELAY_MS: &str = "rig-fault-delay-ms";
    pub const DELAY: &str = "rig-fault-delay-permille";
    pub const LOST_ACK: &str = "rig-fault-lost-ack-permille";
    pub const LOST_ACK_LEASE_MS: &str = "rig-fault-lost-ack-lease-ms";
    pub const ALL: &[&str] = &[
        SEED,
        DUPLICATE,
        STREAM_RESET,
        DELAY_MS,
        DELAY,
        LOST_ACK,
        LOST_ACK_LEASE_MS,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub version: u32,
    pub seed: u64,
    /// What the plan was generated with (kept for the reader; replay uses the lists below).
    pub generated_with: PlanConfig,
    pub settle: Settle,
    pub aggregates: Vec<Aggregate>,
    pub faults: Vec<PlannedFault>,
    pub items: Vec<Item>,
}

/// How the run ends: every fault healed and every item published, then a quiet period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settle {
    /// The run ends once nothing was delivered for this long.
    pub quiet_ms: u64,
    /// The backlog must have drained this long after the last fault healed (liveness).
    pub drain_bound_ms: u64,
}

/// One message the producer publishes, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// Its place in the publish order (= its index), set as the message's `rig_item`.
    pub n: u64,
    /// Index into the plan's aggregates.
    pub aggregate: u32,
    pub event_id: String,
    /// The event's place among its aggregate's events (1, 2, ...); 0 for poison.
    pub revision: u32,
    /// RFC 3339, whole seconds.
    pub created_at: String,
    /// Claim-checked: the payload is padded to this many bytes (above the threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_bytes: Option<u64>,
    /// A case of `fixtures/bad/` (its file name without `.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poison: Option<String>,
    /// A producer retry of this earlier item: the same event, published again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<u64>,
}

impl Item {
    pub fn is_valid_event(&self) -> bool {
        self.poison.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedFault {
    pub id: u32,
    pub kind: FaultKind,
    pub target: String,
    pub trigger: Trigger,
    pub hold: Hold,
    /// For the Pub/Sub faults: the labels to set on the raw subscription while it lasts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// When a fault starts: a point of the run's progress. A trigger the run never reaches (the
/// key it waits for had no second attempt) fires when the run would otherwise settle, so
/// every planned fault happens; the report says which ones fired late.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// Once the ledger holds this many rows.
    Stored(u64),
    /// Once the producer has published this many items.
    Published(u64),
    /// Once a message of this aggregate is delivered with this attempt (or a later one).
    KeyAttempt { aggregate: u32, attempt: u32 },
    /// Once this item is delivered with this attempt (or a later one): the worker holds it.
    Delivered { item: u64, attempt: u32 },
}

/// How long a fault lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Hold {
    /// A kill and a restart: over once the restarted process is up.
    Instant,
    /// This many milliseconds (a freeze past the ack deadline).
    Ms(u64),
    /// Until this many more rows are in the ledger and as many more raw messages settled.
    Stored(u64),
}

/// What a plan is generated from, besides the seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanConfig {
    /// Valid events (producer retries and poison come on top).
    pub events: u64,
    pub aggregates: u32,
    pub claim_checked_permille: u16,
    pub retry_permille: u16,
    /// Poison items: each corpus case in turn, as many as asked.
    pub poison: u32,
    pub faults: Vec<FaultKind>,
    /// The raw subscription's ack deadline: a freeze lasts past it.
    pub ack_deadline_ms: u64,
    pub quiet_ms: u64,
    pub drain_bound_ms: u64,
}

impl Default for PlanConfig {
    /// About 10,000 events and every fault kind once.
    fn default() -> Self {
        Self {
            events: 10_000,
            aggregates: 200,
            claim_checked_permille: 5,
            retry_permille: 10,
            poison: 90,
            faults: FaultKind::ALL.to_vec(),
            ack_deadline_ms: 10_000,
            quiet_ms: 2_000,
            drain_bound_ms: 30_000,
        }
    }
}

/// The inputs a plan draws on: the NetSuite record types and the poison corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixtures {
    /// Record type (`salesorder`) → the record's JSON, from `fixtures/netsuite/*.json`.
    pub records: BTreeMap<String, String>,
    /// `fixtures/bad/*.json`, by name.
    pub corpus: Vec<CorpusCase>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CorpusCase {
    #[serde(skip)]
    pub name: String,
    pub why: String,
    /// A phrase the dead letter's reason must contain (the reference worker's wording).
    pub expect: String,
}

impl Fixtures {
    /// Reads `fixtures/netsuite/` and `fixtures/bad/` under `dir` (the repository's
    /// `fixtures/`).
    pub fn load(dir: &Path) -> Result<Fixtures, FileError> {
        let mut records = BTreeMap::new();
        for (path, text) in json_files(&dir.join("netsuite"))? {
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| FileError::parse(&path, 0, e))?;
            records.insert(stem(&path), text);
        }
        let mut corpus = Vec::new();
        for (path, text) in json_files(&dir.join("bad"))? {
            let mut case: CorpusCase =
                serde_json::from_str(&text).map_err(|e| FileError::parse(&path, 0, e))?;
            case.name = stem(&path);
            corpus.push(case);
        }
        if records.is_empty() {
            return Err(FileError::invalid(
                &dir.join("netsuite"),
                "directory",
                "no NetSuite records (*.json)".into(),
            ));
        }
        Ok(Fixtures { records, corpus })
    }

    pub fn case(&self, name: &str) -> Option<&CorpusCase> {
        self.corpus.iter().find(|c| c.name == name)
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn json_files(dir: &Path) -> Result<Vec<(std::path::PathBuf, String)>, FileError> {
    let entries = std::fs::read_dir(dir).map_err(|e| FileError::io(dir, "listing", e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| FileError::io(dir, "listing", e))?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text =
                std::fs::read_to_string(&path).map_err(|e| FileError::io(&path, "reading", e))?;
            files.push((path, text));
        }
    }
    files.sort();
    Ok(files)
}

/// SplitMix64: small, seedable, the same sequence on every machine (as our Pub/Sub service's
/// fault rolls).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    pub fn permille(&mut self, p: u16) -> bool {
        self.below(1000) < u64::from(p)
    }

    /// A random (version 4) UUID in canonical form.
    pub fn uuid(&mut self) -> String {
        let (a, b) = (self.next_u64(), self.next_u64());
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&a.to_be_bytes());
        bytes[8..].copy_from_slice(&b.to_be_bytes());
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

/// `seconds` since the epoch as RFC 3339 (UTC, whole seconds).
pub fn rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn canonical_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
        && text != "00000000-0000-0000-0000-000000000000"
}

/// The payload of a valid event: its record with the aggregate's id, the record type and the
/// revision stamped in, padded to `claim_bytes` for a claim-checked one. Deterministic, so the
/// runner can rebuild it to publish and the checker's digest of it never needs the bytes kept.
pub fn payload(item: &Item, aggregate: &Aggregate, record_json: &str) -> Result<String, String> {
    let mut value: serde_json::Value = serde_json::from_str(record_json)
        .map_err(|e| format!("the {} record: {e}", aggregate.aggregate_type))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| format!("the {} record is not an object", aggregate.aggregate_type))?;
    object.insert("id".into(), aggregate.aggregate_id.clone().into());
    object.insert("recordType".into(), aggregate.aggregate_type.clone().into());
    object.insert("revision".into(), item.revision.into());
    let mut text = value.to_string();
    if let Some(target) = item.claim_bytes {
        // `,"attachment":"…"` before the closing brace brings it to exactly `target` bytes.
        let overhead = r#","attachment":"""#.len() as u64;
        let pad = target.saturating_sub(text.len() as u64 + overhead);
        text.pop();
        text.push_str(r#","attachment":""#);
        text.extend(std::iter::repeat_n('x', pad as usize));
        text.push_str("\"}");
    }
    Ok(text)
}

/// The form of a JSON payload that is hashed for the ledger comparison: keys sorted, no
/// insignificant whitespace. MySQL normalises stored JSON (MariaDB keeps the text), so a row
/// and its event are compared as values, not bytes. `None` for text that is not JSON.
/// The runner hashes this with SHA-256 for `payload_sha256`.
pub fn canonical_json(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let mut out = String::with_capacity(text.len());
    write_canonical(&value, &mut out);
    Some(out)
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        // JSON has one number type: 500.0 and 500 are one value (PHP's json_encode and
        // MySQL write 500.0 as 500), so integral doubles are written as integers.
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                out.push_str(&(f as i64).to_string())
            }
            _ => out.push_str(&n.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

/// One item while the workload is being laid out, before numbering.
struct Draft {
    aggregate: u32,
    event_id: String,
    revision: u32,
    created_at: String,
    claim_bytes: Option<u64>,
    poison: Option<String>,
    /// Index (in the drafts) of the event a retry repeats.
    retry_of: Option<usize>,
}

impl Plan {
    /// Expands `seed` into a plan. Only the record types and corpus case names of `fixtures`
    /// are used, so the plan is a function of the seed, the config and those names.
    pub fn generate(seed: u64, config: &PlanConfig, fixtures: &Fixtures) -> Plan {
        let mut rng = Rng::new(seed);
        let types: Vec<&String> = fixtures.records.keys().collect();
        let aggregates: Vec<Aggregate> = (0..config.aggregates.max(1))
            .map(|i| Aggregate {
                account_id: format!("TSTDRV{:07}", 1_000_001 + i % 3),
                aggregate_type: types
                    .get(i as usize % types.len().max(1))
                    .map_or_else(|| "salesorder".to_string(), |t| t.to_string()),
                aggregate_id: format!("{}", 40_000 + i),
            })
            .collect();
        let mut revisions = vec![0u32; aggregates.len()];
        let mut drafts: Vec<Draft> = Vec::new();
        // Retries due at a later position: (position, index of the original).
        let mut due: Vec<(usize, usize)> = Vec::new();
        let base_time = 1_795_000_000i64;
        for _ in 0..config.events {
            let aggregate = rng.below(aggregates.len() as u64) as u32;
            revisions[aggregate as usize] += 1;
            let revision = revisions[aggregate as usize];
            let claim_bytes = rng
                .permille(config.claim_checked_permille)
                .then(|| CLAIM_CHECK_THRESHOLD + 1 + rng.below(CLAIM_CHECK_THRESHOLD));
            let index = drafts.len();
            drafts.push(Draft {
                aggregate,
                event_id: rng.uuid(),
                revision,
                created_at: rfc3339(base_time + index as i64),
                claim_bytes,
                poison: None,
                retry_of: None,
            });
            if rng.permille(config.retry_permille) {
                // A producer retries soon after: its ack was lost, or it timed out waiting.
                due.push((index + 1 + rng.below(20) as usize, index));
            }
            let now = drafts.len();
            let mut ready: Vec<usize> = Vec::new();
            due.retain(|&(at, original)| {
                let fire = at <= now;
                if fire {
                    ready.push(original);
                }
                !fire
            });
            for original in ready {
                drafts.push(Draft {
                    aggregate: drafts[original].aggregate,
                    event_id: drafts[original].event_id.clone(),
                    revision: drafts[original].revision,
                    created_at: drafts[original].created_at.clone(),
                    claim_bytes: drafts[original].claim_bytes,
                    poison: None,
                    retry_of: Some(original),
                });
            }
        }
        for (_, original) in std::mem::take(&mut due) {
            drafts.push(Draft {
                aggregate: drafts[original].aggregate,
                event_id: drafts[original].event_id.clone(),
                revision: drafts[original].revision,
                created_at: drafts[original].created_at.clone(),
                claim_bytes: drafts[original].claim_bytes,
                poison: None,
                retry_of: Some(original),
            });
        }
        // Poison goes in at random places, each on an aggregate that also has valid events.
        let mut poison_at: Vec<(usize, String)> = (0..config.poison as usize)
            .filter_map(|i| fixtures.corpus.get(i % fixtures.corpus.len().max(1)))
            .map(|case| {
                (
                    rng.below(drafts.len() as u64 + 1) as usize,
                    case.name.clone(),
                )
            })
            .collect();
        poison_at.sort_by_key(|(at, _)| *at);
        let mut laid_out: Vec<Draft> = Vec::with_capacity(drafts.len() + poison_at.len());
        // Draft index → its place in the laid-out list, for retries.
        let mut place = vec![0usize; drafts.len()];
        let mut poison = poison_at.into_iter().peekable();
        for (index, draft) in drafts.into_iter().enumerate() {
            while let Some((_, case)) = poison.next_if(|(at, _)| *at <= index) {
                laid_out.push(poison_draft(&mut rng, &aggregates, laid_out.len(), case));
            }
            place[index] = laid_out.len();
            laid_out.push(Draft {
                retry_of: draft.retry_of.map(|o| place[o]),
                ..draft
            });
        }
        for (_, case) in poison {
            laid_out.push(poison_draft(&mut rng, &aggregates, laid_out.len(), case));
        }
        let items: Vec<Item> = laid_out
            .into_iter()
            .enumerate()
            .map(|(n, d)| Item {
                n: n as u64,
                aggregate: d.aggregate,
                event_id: d.event_id,
                revision: d.revision,
                created_at: d.created_at,
                claim_bytes: d.claim_bytes,
                poison: d.poison,
                retry_of: d.retry_of.map(|r| r as u64),
            })
            .collect();
        let faults = schedule_faults(&mut rng, config, &items, aggregates.len() as u32);
        Plan {
            version: VERSION,
            seed,
            generated_with: config.clone(),
            settle: Settle {
                quiet_ms: config.quiet_ms,
                drain_bound_ms: config.drain_bound_ms,
            },
            aggregates,
            faults,
            items,
        }
    }

    pub fn aggregate(&self, item: &Item) -> Option<&Aggregate> {
        self.aggregates.get(item.aggregate as usize)
    }

    /// The ordering key the producer sets on `item`'s message (a poison case may override it).
    pub fn ordering_key(&self, item: &Item) -> String {
        self.aggregate(item)
            .map(Aggregate::ordering_key)
            .unwrap_or_default()
    }

    /// The history's annotation of `item`'s publish; the runner fills in the message id, the
    /// topic, the ordering key it set and the payload's digest.
    pub fn annotate(&self, item: &Item, fixtures: Option<&Fixtures>) -> crate::history::Publish {
        crate::history::Publish {
            item: Some(item.n),
            ordering_key: self.ordering_key(item),
            event_id: Some(item.event_id.clone()),
            aggregate: self.aggregate(item).cloned(),
            poison: item.poison.as_ref().map(|case| crate::history::Poison {
                case: case.clone(),
                why: fixtures
                    .and_then(|f| f.case(case))
                    .map_or_else(String::new, |c| c.why.clone()),
            }),
            claim_checked: item.claim_bytes.is_some(),
            retry_of: item.retry_of,
            ..Default::default()
        }
    }

    /// The plan as its file: the scalars pretty-printed, the lists one element per line.
    pub fn to_file_text(&self) -> String {
        fn line<T: Serialize>(value: &T) -> String {
            serde_json::to_string(value).unwrap_or_else(|e| format!("\"unserializable: {e}\""))
        }
        fn list<T: Serialize>(out: &mut String, name: &str, items: &[T], last: bool) {
            let _ = write!(out, "  \"{name}\": [");
            for (i, item) in items.iter().enumerate() {
                let _ = write!(
                    out,
                    "\n    {}{}",
                    line(item),
                    if i + 1 < items.len() { "," } else { "" }
                );
            }
            let _ = writeln!(
                out,
                "{}]{}",
                if items.is_empty() { "" } else { "\n  " },
                if last { "" } else { "," }
            );
        }
        let mut out = String::new();
        let _ = writeln!(out, "{{");
        let _ = writeln!(out, "  \"version\": {},", self.version);
        let _ = writeln!(out, "  \"seed\": {},", self.seed);
        let _ = writeln!(out, "  \"generated_with\": {},", line(&self.generated_with));
        let _ = writeln!(out, "  \"settle\": {},", line(&self.settle));
        list(&mut out, "aggregates", &self.aggregates, false);
        list(&mut out, "faults", &self.faults, false);
        list(&mut out, "items", &self.items, true);
        out.push_str("}\n");
        out
    }

    /// Reads a plan; `path` names it in errors (syntax and shape: line and column and what was
    /// expected; consistency: the element at fault).
    pub fn from_file_text(text: &str, path: &Path) -> Result<Plan, FileError> {
        let plan: Plan = serde_json::from_str(text).map_err(|e| FileError::parse(path, 0, e))?;
        plan.validate()
            .map_err(|(location, message)| FileError::invalid(path, location, message))?;
        Ok(plan)
    }

    pub fn load(path: &Path) -> Result<Plan, FileError> {
        let text = std::fs::read_to_string(path).map_err(|e| FileError::io(path, "reading", e))?;
        Self::from_file_text(&text, path)
    }

    pub fn save(&self, path: &Path) -> Result<(), FileError> {
        std::fs::write(path, self.to_file_text()).map_err(|e| FileError::io(path, "writing", e))
    }

    /// Every poison case names a case of the corpus.
    pub fn check_against(&self, fixtures: &Fixtures, path: &Path) -> Result<(), FileError> {
        for item in &self.items {
            if let Some(case) = &item.poison
                && fixtures.case(case).is_none()
            {
                return Err(FileError::invalid(
                    path,
                    format!("items[{}].poison", item.n),
                    format!("no corpus case {case:?} in fixtures/bad/"),
                ));
            }
            if let Some(aggregate) = self.aggregate(item)
                && !fixtures.records.contains_key(&aggregate.aggregate_type)
            {
                return Err(FileError::invalid(
                    path,
                    format!("aggregates[{}].aggregate_type", item.aggregate),
                    format!(
                        "no NetSuite record {:?} in fixtures/netsuite/",
                        aggregate.aggregate_type
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What serde cannot check: numbering, references between elements, unique event ids.
    fn validate(&self) -> Result<(), (String, String)> {
        if self.version != VERSION {
            return Err((
                "version".into(),
                format!(
                    "plan version {} (this build reads version {VERSION})",
                    self.version
                ),
            ));
        }
        let mut seen_ids = HashSet::new();
        for (i, item) in self.items.iter().enumerate() {
            let at = |field: &str| format!("items[{i}]{field}");
            if item.n != i as u64 {
                return Err((
                    at(".n"),
                    format!(
                        "is {}, expected {i} (items are numbered in publish order)",
                        item.n
                    ),
                ));
            }
            if item.aggregate as usize >= self.aggregates.len() {
                return Err((
                    at(".aggregate"),
                    format!(
                        "is {}, but the plan has {} aggregates",
                        item.aggregate,
                        self.aggregates.len()
                    ),
                ));
            }
            if !canonical_uuid(&item.event_id) {
                return Err((
                    at(".event_id"),
                    format!(
                        "{:?} is not a UUID in canonical form (lowercase, hyphenated, not nil); a poison case that spells it otherwise does so on the wire",
                        item.event_id
                    ),
                ));
            }
            if let Some(bytes) = item.claim_bytes
                && bytes <= CLAIM_CHECK_THRESHOLD
            {
                return Err((
                    at(".claim_bytes"),
                    format!(
                        "{bytes} is not above the claim-check threshold ({CLAIM_CHECK_THRESHOLD})"
                    ),
                ));
            }
            match item.retry_of {
                Some(original) => {
                    let Some(o) = self
                        .items
                        .get(original as usize)
                        .filter(|_| original < item.n)
                    else {
                        return Err((
                            at(".retry_of"),
                            format!("{original} is not an earlier item"),
                        ));
                    };
                    if o.poison.is_some() || item.poison.is_some() {
                        return Err((
                            at(".retry_of"),
                            "a producer retry repeats a valid event, not poison".into(),
                        ));
                    }
                    if (o.aggregate, &o.event_id, o.revision, &o.claim_bytes)
                        != (
                            item.aggregate,
                            &item.event_id,
                            item.revision,
                            &item.claim_bytes,
                        )
                    {
                        return Err((
                            at(""),
                            format!(
                                "a retry of item {original} must repeat its aggregate, event_id, revision and claim_bytes"
                            ),
                        ));
                    }
                }
                None => {
                    if !seen_ids.insert(item.event_id.as_str()) {
                        return Err((
                            at(".event_id"),
                            format!(
                                "{} is already another item's (only a retry repeats an event)",
                                item.event_id
                            ),
                        ));
                    }
                }
            }
        }
        let mut fault_ids = HashSet::new();
        for (i, fault) in self.faults.iter().enumerate() {
            let at = |field: &str| format!("faults[{i}]{field}");
            if !fault_ids.insert(fault.id) {
                return Err((
                    at(".id"),
                    format!("{} is already another fault's", fault.id),
                ));
            }
            match &fault.trigger {
                Trigger::KeyAttempt { aggregate, .. }
                    if *aggregate as usize >= self.aggregates.len() =>
                {
                    return Err((
                        at(".trigger.key_attempt.aggregate"),
                        format!(
                            "is {aggregate}, but the plan has {} aggregates",
                            self.aggregates.len()
                        ),
                    ));
                }
                Trigger::Delivered { item, .. } if *item as usize >= self.items.len() => {
                    return Err((
                        at(".trigger.delivered.item"),
                        format!("is {item}, but the plan has {} items", self.items.len()),
                    ));
                }
                Trigger::KeyAttempt { attempt: 0, .. } | Trigger::Delivered { attempt: 0, .. } => {
                    return Err((at(".trigger"), "attempts count from 1".into()));
                }
                _ => {}
            }
            if !fault.kind.is_pubsub() && !fault.labels.is_empty() {
                return Err((
                    at(".labels"),
                    format!(
                        "only the Pub/Sub faults set subscription labels, not {}",
                        fault.kind
                    ),
                ));
            }
            if fault.kind.is_pubsub() && fault.labels.is_empty() {
                return Err((
                    at(".labels"),
                    format!("{} needs the rig-fault-* labels that make it", fault.kind),
                ));
            }
            for (key, value) in &fault.labels {
                if !labels::ALL.contains(&key.as_str()) {
                    return Err((
                        at(&format!(".labels.{key}")),
                        format!("unknown label; known: {}", labels::ALL.join(", ")),
                    ));
                }
                if value.parse::<u64>().is_err() {
                    return Err((
                        at(&format!(".labels.{key}")),
                        format!("{value:?} is not a non-negative integer"),
                    ));
                }
            }
            if matches!(
                fault.kind,
                FaultKind::WorkerKill | FaultKind::WorkerTerm | FaultKind::EventStoreKill
            ) != matches!(fault.hold, Hold::Instant)
            {
                return Err((
                    at(".hold"),
                    format!(
                        "{}: kills hold \"instant\" (over once restarted); other faults hold for ms or stored rows",
                        fault.kind
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn poison_draft(rng: &mut Rng, aggregates: &[Aggregate], index: usize, case: String) -> Draft {
    Draft {
        aggregate: rng.below(aggregates.len() as u64) as u32,
        event_id: rng.uuid(),
        revision: 0,
        created_at: rfc3339(1_795_000_000 + index as i64),
        claim_bytes: None,
        poison: Some(case),
        retry_of: None,
    }
}

/// Each asked kind once, in a seeded order, spread evenly over the run's stored count, one
/// after another (each starts after the previous one's window, as the counts keep rising).
fn schedule_faults(
    rng: &mut Rng,
    config: &PlanConfig,
    items: &[Item],
    aggregates: u32,
) -> Vec<PlannedFault> {
    let mut kinds = config.faults.clone();
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let slots = kinds.len() as u64 + 1;
    // A fault held until so many more rows are stored needs that many left after its trigger:
    // the triggers are spread over the run less that tail.
    let pubsub_rows = (config.events / (2 * slots))
        .max(50)
        .min((config.events / 8).max(1));
    let spacing = (config.events.saturating_sub(pubsub_rows) / slots).max(1);
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| {
            let at = spacing * (i as u64 + 1) + rng.below(spacing / 5 + 1);
            let seed = rng.below(1 << 32).to_string();
            let trigger = match kind {
                // Killed while it holds a given message: the crash between receive and ack.
                FaultKind::WorkerKill => {
                    let target = (at as usize * items.len() / config.events.max(1) as usize)
                        .min(items.len().saturating_sub(1));
                    match items[target.min(items.len().saturating_sub(1))..]
                        .iter()
                        .find(|it| it.is_valid_event())
                    {
                        Some(item) => Trigger::Delivered {
                            item: item.n,
                            attempt: 1,
                        },
                        None => Trigger::Stored(at),
                    }
                }
                _ => Trigger::Stored(at),
            };
            let _ = aggregates;
            // Long enough on a small plan that each Pub/Sub fault is rolled for (and so
            // injected on) a few dozen messages, within a quarter of the run.
            let pubsub_hold = Hold::Stored(pubsub_rows);
            let (hold, labels): (Hold, Vec<(&str, String)>) = match kind {
                FaultKind::WorkerKill | FaultKind::WorkerTerm | FaultKind::EventStoreKill => {
                    (Hold::Instant, vec![])
                }
                FaultKind::EventStoreFreeze => (Hold::Ms(config.ack_deadline_ms + 2_000), vec![]),
                FaultKind::GcsUnavailable => (Hold::Ms(5_000), vec![]),
                FaultKind::PubsubDuplicates => (
                    pubsub_hold.clone(),
                    // 10 %: each duplicate also sends the rest of its key back. Those
                    // redeliveries no longer raise a message's attempt
                    // (rig/pubsub-service/tests/delivery_attempts.rs), but a worker's own
                    // nacks behind them still do; 10 % keeps a run readable.
                    vec![(labels::SEED, seed), (labels::DUPLICATE, "100".into())],
                ),
                FaultKind::PubsubStreamResets => (
                    pubsub_hold.clone(),
                    // Rolled whenever a stream could be sent a batch; each reset leaves its
                    // leases to run out (10 s and more for the keys they hold).
                    vec![(labels::SEED, seed), (labels::STREAM_RESET, "50".into())],
                ),
                FaultKind::PubsubDelays => (
                    pubsub_hold.clone(),
                    vec![
                        (labels::SEED, seed),
                        (labels::DELAY_MS, "500".into()),
                        (labels::DELAY, "200".into()),
                    ],
                ),
                FaultKind::PubsubLostAcks => (
                    pubsub_hold,
                    vec![
                        (labels::SEED, seed),
                        (labels::LOST_ACK, "100".into()),
                        (labels::LOST_ACK_LEASE_MS, "1000".into()),
                    ],
                ),
            };
            PlannedFault {
                id: i as u32 + 1,
                kind,
                target: kind.default_target().into(),
                trigger,
                hold,
                labels: labels
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> Fixtures {
        Fixtures {
            records: [
                (
                    "customer".to_string(),
                    r#"{"id":"1","companyName":"Acme"}"#.to_string(),
                ),
                (
                    "salesorder".to_string(),
                    r#"{"id":"2","total":10.5}"#.to_string(),
                ),
            ]
            .into_iter()
            .collect(),
            corpus: ["json-nan", "event-id-urn", "claim-modified"]
                .iter()
                .map(|n| CorpusCase {
                    name: n.to_string(),
                    why: format!("why {n}"),
                    expect: "x".into(),
                })
                .collect(),
        }
    }

    fn small() -> PlanConfig {
        PlanConfig {
            events: 400,
            aggregates: 12,
            claim_checked_permille: 20,
            retry_permille: 50,
            poison: 5,
            ..PlanConfig::default()
        }
    }

    #[test]
    fn a_seed_expands_to_the_same_plan_and_another_seed_to_another() {
        let a = Plan::generate(7, &small(), &fixtures());
        assert_eq!(a, Plan::generate(7, &small(), &fixtures()));
        assert_ne!(a.items, Plan::generate(8, &small(), &fixtures()).items);
    }

    #[test]
    fn the_workload_is_what_a_suitex_producer_makes() {
        let plan = Plan::generate(11, &small(), &fixtures());
        let valid: Vec<&Item> = plan
            .items
            .iter()
            .filter(|i| i.is_valid_event() && i.retry_of.is_none())
            .collect();
        assert_eq!(valid.len(), 400);
        assert_eq!(plan.items.iter().filter(|i| i.poison.is_some()).count(), 5);
        let retries: Vec<&Item> = plan.items.iter().filter(|i| i.retry_of.is_some()).collect();
        assert!(!retries.is_empty());
        for r in &retries {
            let o = &plan.items[r.retry_of.unwrap() as usize];
            assert!(o.n < r.n && o.event_id == r.event_id && o.retry_of.is_none());
        }
        assert!(plan.items.iter().any(|i| i.claim_bytes.is_some()));
        // Each aggregate's revisions rise by one in publish order: the ordering key's order.
        for a in 0..plan.aggregates.len() as u32 {
            let revs: Vec<u32> = valid
                .iter()
                .filter(|i| i.aggregate == a)
                .map(|i| i.revision)
                .collect();
            assert_eq!(revs, (1..=revs.len() as u32).collect::<Vec<_>>());
        }
        assert_eq!(
            plan.aggregates[0].ordering_key(),
            "TSTDRV1000001:customer:40000"
        );
        // Every fault kind once, triggered by progress, in rising order.
        let kinds: HashSet<FaultKind> = plan.faults.iter().map(|f| f.kind).collect();
        assert_eq!(kinds.len(), FaultKind::ALL.len());
        assert!(
            plan.faults
                .iter()
                .any(|f| matches!(f.trigger, Trigger::Delivered { .. }))
        );
        let freeze = plan
            .faults
            .iter()
            .find(|f| f.kind == FaultKind::EventStoreFreeze)
            .unwrap();
        assert_eq!(freeze.hold, Hold::Ms(12_000), "past the 10 s ack deadline");
        let dup = plan
            .faults
            .iter()
            .find(|f| f.kind == FaultKind::PubsubDuplicates)
            .unwrap();
        assert_eq!(
            dup.labels.get(labels::DUPLICATE).map(String::as_str),
            Some("100")
        );
        // Each fault held for rows has as many rows left after its trigger.
        for f in &plan.faults {
            if let (Trigger::Stored(at), Hold::Stored(rows)) = (&f.trigger, &f.hold) {
                assert!(at + rows <= 400, "{f:?}");
            }
        }
    }

    #[test]
    fn the_default_plan_is_about_ten_thousand_events_with_every_fault_once() {
        let plan = Plan::generate(1, &PlanConfig::default(), &fixtures());
        let events = plan
            .items
            .iter()
            .filter(|i| i.poison.is_none() && i.retry_of.is_none())
            .count();
        assert_eq!(events, 10_000);
        assert_eq!(plan.faults.len(), 9);
        let stored: Vec<u64> = plan
            .faults
            .iter()
            .filter_map(|f| match f.trigger {
                Trigger::Stored(n) => Some(n),
                _ => None,
            })
            .collect();
        assert!(stored.windows(2).all(|w| w[0] < w[1]), "{stored:?}");
        assert!(stored.iter().all(|&n| n < 10_000));
    }

    #[test]
    fn a_plan_round_trips_through_its_file_one_element_per_line() {
        let plan = Plan::generate(3, &small(), &fixtures());
        let text = plan.to_file_text();
        assert!(text.lines().count() > plan.items.len(), "one item per line");
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("{\"n\":17,"))
        );
        assert_eq!(
            Plan::from_file_text(&text, Path::new("p.json")).unwrap(),
            plan
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.json");
        plan.save(&path).unwrap();
        assert_eq!(Plan::load(&path).unwrap(), plan);
    }

    #[test]
    fn a_broken_plan_file_says_where_and_what_was_expected() {
        let plan = Plan::generate(3, &small(), &fixtures());
        let text = plan.to_file_text();
        let path = Path::new("results/plan.json");
        let err = |t: &str| Plan::from_file_text(t, path).unwrap_err().to_string();

        let typo = text.replacen("\"worker_kill\"", "\"worker_kil\"", 1);
        let e = err(&typo);
        let line = typo
            .lines()
            .position(|l| l.contains("worker_kil\""))
            .unwrap()
            + 1;
        assert!(e.starts_with(&format!("results/plan.json:{line}:")), "{e}");
        assert!(
            e.contains("unknown variant `worker_kil`, expected one of"),
            "{e}"
        );

        let e = err(&text.replacen("\"seed\": 3", "\"seed\": \"three\"", 1));
        assert!(e.starts_with("results/plan.json:3:"), "{e}");
        assert!(e.contains("expected u64"), "{e}");

        let e = err(&text.replacen("\"quiet_ms\"", "\"quiet\"", 1));
        assert!(e.contains("unknown field `quiet`"), "{e}");

        let e = err(&text[..text.len() / 2]);
        assert!(e.contains("EOF"), "{e}");

        let retry = plan.items.iter().find(|i| i.retry_of.is_some()).unwrap();
        let bad = text.replacen(
            &format!("\"retry_of\":{}}}", retry.retry_of.unwrap()),
            &format!("\"retry_of\":{}}}", retry.n + 1),
            1,
        );
        let e = err(&bad);
        assert!(
            e.contains(&format!("items[{}].retry_of", retry.n))
                && e.contains("not an earlier item"),
            "{e}"
        );

        let e = err(&text.replacen("\"version\": 1", "\"version\": 9", 1));
        assert!(e.contains("plan version 9"), "{e}");
    }

    #[test]
    fn a_plan_names_a_poison_case_the_corpus_lacks() {
        let mut plan = Plan::generate(3, &small(), &fixtures());
        let n = plan.items.iter().position(|i| i.poison.is_some()).unwrap();
        plan.items[n].poison = Some("json-nope".into());
        let e = plan
            .check_against(&fixtures(), Path::new("p.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("items[{n}].poison")) && e.contains("json-nope"),
            "{e}"
        );
    }

    #[test]
    fn payloads_are_stamped_records_and_claim_checked_ones_reach_their_size() {
        let plan = Plan::generate(5, &small(), &fixtures());
        let f = fixtures();
        let item = plan.items.iter().find(|i| i.claim_bytes.is_some()).unwrap();
        let aggregate = plan.aggregate(item).unwrap();
        let text = payload(item, aggregate, &f.records[&aggregate.aggregate_type]).unwrap();
        assert_eq!(text.len() as u64, item.claim_bytes.unwrap());
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["id"], aggregate.aggregate_id.as_str());
        assert_eq!(value["revision"], item.revision);
        let small_item = plan
            .items
            .iter()
            .find(|i| i.claim_bytes.is_none() && i.poison.is_none())
            .unwrap();
        let a = plan.aggregate(small_item).unwrap();
        assert!(
            payload(small_item, a, &f.records[&a.aggregate_type])
                .unwrap()
                .len()
                < 1000
        );
    }

    #[test]
    fn canonical_json_ignores_key_order_and_whitespace_only() {
        assert_eq!(
            canonical_json(r#"{ "b": 1, "a": [ {"d":2,"c":"é"} ] }"#).unwrap(),
            r#"{"a":[{"c":"é","d":2}],"b":1}"#
        );
        assert_ne!(canonical_json(r#"{"a":1}"#), canonical_json(r#"{"a":2}"#));
        assert_eq!(canonical_json("NaN"), None);
        assert_eq!(
            canonical_json(r#"{"a":500.0,"b":12.5}"#).unwrap(),
            r#"{"a":500,"b":12.5}"#
        );
    }

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn uuids_are_canonical_version_4() {
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            let id = rng.uuid();
            assert!(canonical_uuid(&id), "{id}");
            assert_eq!(&id[14..15], "4");
        }
        assert!(!canonical_uuid("00000000-0000-0000-0000-000000000000"));
        assert!(!canonical_uuid("0B5C1B4E-8A8E-4A4E-9F0E-1A2B3C4D5E6F"));
    }

    #[test]
    fn the_repository_fixtures_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        let f = Fixtures::load(&dir).unwrap();
        assert!(f.records.contains_key("salesorder"));
        assert!(f.corpus.len() >= 90, "{}", f.corpus.len());
        let plan = Plan::generate(1, &PlanConfig::default(), &f);
        plan.check_against(&f, Path::new("p")).unwrap();
        assert_eq!(
            plan.items.iter().filter(|i| i.poison.is_some()).count(),
            f.corpus.len().min(90)
        );
    }
}

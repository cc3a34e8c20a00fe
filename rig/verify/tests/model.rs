//! Property tests over the model: any correct run passes every property, and a correct run
//! with one anomaly injected fails with that anomaly's name. Also: the checker is a function
//! of the files (a run saved and loaded gets the same verdict), and reports are complete.

use proptest::prelude::*;

use rig_verify::model::{self, INJECTABLE, ModelOptions};
use rig_verify::plan::{Plan, PlanConfig};
use rig_verify::{AnomalyKind, History, Snapshot, check, report};

fn run() -> impl Strategy<Value = (Plan, ModelOptions)> {
    (
        any::<u64>(),
        20u64..300,
        1u32..25,
        1u32..6,
        0u16..80,
        0u16..100,
        0u16..200,
        0u16..200,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                seed,
                events,
                aggregates,
                poison,
                claim,
                retry,
                nack,
                duplicate,
                by_policy,
                faults,
            )| {
                let config = PlanConfig {
                    events,
                    aggregates,
                    poison,
                    claim_checked_permille: claim,
                    retry_permille: retry,
                    ..PlanConfig::default()
                };
                let plan = Plan::generate(seed, &config, &model::fixtures());
                let options = ModelOptions {
                    seed: seed.rotate_left(17),
                    nack_permille: nack,
                    duplicate_permille: duplicate,
                    poison_by_policy: by_policy,
                    faults,
                    ..ModelOptions::default()
                };
                (plan, options)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_correct_run_passes_every_property((plan, options) in run()) {
        let (history, snapshot) = model::simulate(&plan, &options);
        let verdict = check(&history, &snapshot);
        prop_assert!(verdict.passed(), "{}", report::summary(&verdict, "model"));
    }

    #[test]
    fn one_injected_anomaly_is_caught_by_its_name((plan, options) in run(), which in 0..INJECTABLE.len()) {
        let kind = INJECTABLE[which];
        let (mut history, mut snapshot) = model::simulate(&plan, &options);
        prop_assume!(model::inject(kind, &mut history, &mut snapshot));
        let verdict = check(&history, &snapshot);
        prop_assert!(
            verdict.failing_kinds().contains(&kind),
            "{kind} injected, found {:?}\n{}",
            verdict.failing_kinds(),
            report::summary(&verdict, "model")
        );
    }
}

/// Every injectable anomaly is caught on one fixed, rich run (none is skipped by assumption).
#[test]
fn every_injectable_anomaly_is_caught_on_a_rich_run() {
    let config = PlanConfig {
        events: 600,
        aggregates: 10,
        poison: 5,
        claim_checked_permille: 30,
        retry_permille: 40,
        ..PlanConfig::default()
    };
    let plan = Plan::generate(99, &config, &model::fixtures());
    for by_policy in [false, true] {
        let options = ModelOptions {
            poison_by_policy: by_policy,
            duplicate_permille: 50,
            ..ModelOptions::default()
        };
        let (history, snapshot) = model::simulate(&plan, &options);
        assert!(check(&history, &snapshot).passed());
        for kind in INJECTABLE {
            let (mut h, mut s) = (history.clone(), snapshot.clone());
            assert!(
                model::inject(kind, &mut h, &mut s),
                "{kind} could not be injected"
            );
            let verdict = check(&h, &s);
            assert!(
                verdict.failing_kinds().contains(&kind),
                "{kind} (poison by policy: {by_policy}): found {:?}",
                verdict.failing_kinds()
            );
        }
    }
}

#[test]
fn the_verdict_is_a_function_of_the_saved_files() {
    let plan = Plan::generate(
        5,
        &PlanConfig {
            events: 300,
            aggregates: 8,
            poison: 3,
            ..PlanConfig::default()
        },
        &model::fixtures(),
    );
    let (mut history, mut snapshot) = model::simulate(&plan, &ModelOptions::default());
    model::inject(AnomalyKind::Reordered, &mut history, &mut snapshot);
    let dir = tempfile::tempdir().unwrap();
    history.save(&dir.path().join("history.jsonl")).unwrap();
    snapshot.save(&dir.path().join("snapshot.json")).unwrap();
    let again = check(
        &History::load(&dir.path().join("history.jsonl")).unwrap(),
        &Snapshot::load(&dir.path().join("snapshot.json")).unwrap(),
    );
    assert_eq!(again, check(&history, &snapshot));
    assert!(!again.passed());
}

#[test]
fn reports_say_every_property_each_anomaly_and_the_replay_command() {
    let plan = Plan::generate(
        8,
        &PlanConfig {
            events: 400,
            aggregates: 6,
            poison: 4,
            ..PlanConfig::default()
        },
        &model::fixtures(),
    );
    let (mut history, mut snapshot) = model::simulate(&plan, &ModelOptions::default());
    model::inject(AnomalyKind::Lost, &mut history, &mut snapshot);
    let verdict = check(&history, &snapshot);
    let replay = "rig verify --plan results/plan.json --worker 'python3 workers/python/worker.py'";

    let text = report::summary(&verdict, replay);
    for p in &verdict.properties {
        assert!(
            text.lines().any(|l| l.contains(p.property.name())
                && (l.starts_with("PASS") || l.starts_with("FAIL"))),
            "{text}"
        );
    }
    assert!(text.contains("FAIL  no-loss"), "{text}");
    assert!(
        text.contains("lost (1):") && text.contains("is in neither the ledger nor events.dlq"),
        "{text}"
    );
    assert!(text.trim_end().ends_with(replay), "{text}");

    let junit = report::junit(&verdict, "python-worker", replay);
    assert_eq!(
        junit.matches("<testcase ").count(),
        verdict.properties.len()
    );
    assert_eq!(
        junit.matches("<failure ").count(),
        verdict
            .properties
            .iter()
            .filter(|p| p.outcome == rig_verify::Outcome::Fail)
            .count()
    );
    assert!(
        junit.contains("replay with: rig verify --plan results/plan.json --worker &apos;python3"),
        "{junit}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&report::results_json(&verdict, replay).unwrap()).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["outcome"], "FAIL");
    assert_eq!(json["replay"], replay);
    assert!(
        json["failing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == "lost")
    );
    assert_eq!(
        json["properties"].as_array().unwrap().len(),
        verdict.properties.len()
    );

    let svg = report::svg(&verdict, "model run").unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
    assert!(
        svg.contains("backlog") && svg.contains("rows stored"),
        "legend"
    );
    for window in &verdict.figures.faults {
        assert!(
            svg.contains(&window.label()),
            "fault window {} shaded and labelled",
            window.label()
        );
    }
    assert!(svg.matches("<polyline").count() >= 3, "three series");

    let dir = tempfile::tempdir().unwrap();
    let written = report::write_all(dir.path(), &verdict, "model", replay).unwrap();
    for path in [
        &written.summary,
        &written.junit,
        &written.results,
        &written.picture,
    ] {
        assert!(
            std::fs::metadata(path).unwrap().len() > 0,
            "{}",
            path.display()
        );
    }
}

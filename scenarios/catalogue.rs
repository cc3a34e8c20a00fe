//! `docs/scenarios.md`, generated from the scenarios and mutations themselves, so the page
//! cannot drift from the code: a unit test fails when it is stale, and
//! `RIG_WRITE_DOCS=1 cargo nextest run --workspace -E 'test(catalogue)'` rewrites it.

use std::fmt::Write as _;
use std::path::PathBuf;

/// The variable that makes the staleness test rewrite the page instead of failing.
pub const WRITE_VAR: &str = "RIG_WRITE_DOCS";

/// Where the page lives in the repository.
pub fn page_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/scenarios.md")
}

/// The page, as the code describes the scenarios today.
pub fn render() -> String {
    let mutations = crate::mutations::all();
    let mut page = String::from(
        "# Scenarios: what the rig proves\n\n\
         <!-- Generated from scenarios/*.rs by scenarios/catalogue.rs: edit the code, then\n\
         `RIG_WRITE_DOCS=1 cargo nextest run --workspace -E 'test(catalogue)'`. -->\n\n\
         Each scenario states one guarantee as an invariant and checks it over generated cases\n\
         (proptest) against a deployed backbone, driving the reference worker\n\
         (`rig/events/worker/`). Every case deploys its own scope (Pub/Sub project, databases,\n\
         bucket), so scenarios are independent of order and parallelism. A scenario the\n\
         Pub/Sub under test cannot decide reports a *divergence*, never a pass.\n\n\
         | Scenario | Invariant | Cases put the backbone through | Default cases | On `--target gcp` |\n\
         |---|---|---|---|---|\n",
    );
    for s in crate::all() {
        let gcp = s.not_on_gcp.map_or_else(
            || "runs on the acceptance resources".to_string(),
            |why| format!("not run: {why}"),
        );
        let _ = writeln!(
            page,
            "| `{}` | {} | {} | {} | {} |",
            s.name,
            cell(s.invariant),
            cell(s.conditions),
            s.default_cases,
            cell(&gcp)
        );
    }
    page.push_str(
        "\n## Each scenario can fail\n\n\
         A mutation is a broken copy of the world (the Terraform, `migrations/` or the wiring,\n\
         never the repository's files); its scenario must fail on it (`rig scenarios --mutations`,\n\
         `cargo nextest run --test scenarios mutation::`).\n\n\
         | Mutation | Breaks | Must fail |\n|---|---|---|\n",
    );
    for m in &mutations {
        let _ = writeln!(
            page,
            "| `{}` | {} | `{}` |",
            m.name,
            cell(m.what),
            m.scenario
        );
    }
    page.push_str(
        "\n## Running them\n\n\
         ```sh\n\
         cargo nextest run --test scenarios                  # every scenario and mutation\n\
         cargo nextest run --test scenarios scenario::ordering\n\
         cargo run -- scenarios                              # a results table\n\
         cargo run -- scenarios --mutations --junit scenarios.xml\n\
         cargo run -- scenarios --target gcp --project suitex-staging -e staging   # docs/gcp.md\n\
         ```\n\n\
         - `PROPTEST_CASES=N` (or `--cases N`) sets the cases per scenario.\n\
         - A failure prints the shrunk case and the command that replays it\n  \
           (`RIG_SCENARIO_SEED=<64 hex digits> PROPTEST_CASES=N cargo test --test scenarios -- --exact scenario::NAME`).\n\
         - Divergences are their own result: a `DIVERGENCE` row in `rig scenarios`, *ignored* with\n  \
           the reason under `cargo test`, `skipped` in JUnit. nextest has no runtime skip, so\n  \
           `.config/nextest.toml` prints the scenario tests' output at the end of every run.\n\
         - What each scenario did on our service, Google's emulator and GCP: the scenario matrix\n  \
           of [fidelity.md](fidelity.md).\n",
    );
    page
}

/// A table cell: pipes would end it.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scenarios_page_is_generated_from_the_code() {
        let path = page_path();
        let fresh = render();
        if std::env::var(WRITE_VAR).as_deref() == Ok("1") {
            std::fs::write(&path, &fresh).expect("writing docs/scenarios.md");
            return;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == fresh,
            "{} is stale: run `{WRITE_VAR}=1 cargo nextest run --workspace -E 'test(catalogue)'`",
            path.display()
        );
    }

    #[test]
    fn every_scenario_and_mutation_is_on_the_page() {
        let page = render();
        for s in crate::all() {
            assert!(page.contains(&format!("| `{}` |", s.name)), "{}", s.name);
        }
        for m in crate::mutations::all() {
            assert!(page.contains(&format!("| `{}` |", m.name)), "{}", m.name);
        }
    }
}

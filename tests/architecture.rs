//! The structure ARCHITECTURE.md states, checked: which workspace crate may use which, no
//! import circle between the files of any crate, and every dependency's licence one we accept.
//! Cargo forbids circles between crates but not a crate reaching down the wrong way, nor a
//! circle inside one crate; these tests do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace crates that each crate may depend on (normal dependencies): the one-way flow
/// Terraform → topology → events → harness → drift / scenarios → the CLI.
const MAY_USE: &[(&str, &[&str])] = &[
    ("rig-topology", &[]),
    ("pubsub-service", &[]),
    ("rig-verify", &[]),
    ("rig-events", &["rig-topology"]),
    (
        "rig-harness",
        &["rig-topology", "rig-events", "pubsub-service", "rig-verify"],
    ),
    ("rig-drift", &["rig-topology", "rig-events", "rig-harness"]),
    (
        "rig-scenarios",
        &["rig-topology", "rig-events", "rig-harness"],
    ),
    (
        "backbone-rig",
        &[
            "rig-topology",
            "rig-events",
            "rig-harness",
            "rig-drift",
            "rig-scenarios",
            "rig-verify",
        ],
    ),
];

fn cargo(args: &[&str]) -> String {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root())
        .output()
        .expect("running cargo");
    assert!(
        output.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("cargo's output is UTF-8")
}

/// Each workspace crate: its manifest dir, its library's root file, and the workspace crates
/// it depends on (normal dependencies only; tests may use anything).
fn workspace() -> Vec<(String, PathBuf, Option<PathBuf>, BTreeSet<String>)> {
    let metadata: serde_json::Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--format-version",
        "1",
        "--offline",
        "--no-deps",
    ]))
    .expect("cargo metadata is JSON");
    let members: BTreeSet<String> = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect();
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap_or_default());
            let lib = p["targets"].as_array().into_iter().flatten().find_map(|t| {
                let kinds = t["kind"].as_array()?;
                kinds
                    .iter()
                    .any(|k| k == "lib")
                    .then(|| PathBuf::from(t["src_path"].as_str().unwrap_or_default()))
            });
            let uses = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| d["name"].as_str())
                .filter(|name| members.contains(*name))
                .map(String::from)
                .collect();
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                manifest.parent().unwrap_or(Path::new(".")).to_path_buf(),
                lib,
                uses,
            )
        })
        .collect()
}

#[test]
fn each_crate_uses_only_the_crates_before_it_in_the_flow() {
    let allowed: BTreeMap<&str, &[&str]> = MAY_USE.iter().copied().collect();
    let mut wrong = Vec::new();
    for (name, _, _, uses) in workspace() {
        let Some(may) = allowed.get(name.as_str()) else {
            wrong.push(format!(
                "{name} is not in MAY_USE: say in tests/architecture.rs (and ARCHITECTURE.md) where it sits in the flow"
            ));
            continue;
        };
        for dep in uses {
            if !may.contains(&dep.as_str()) {
                wrong.push(format!("{name} depends on {dep}, which comes after it"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A crate's modules as files: module path (`["targets", "local"]`) → file.
fn modules(lib: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let dir = lib.parent().expect("a library root has a directory");
    let mut found = BTreeMap::new();
    let mut pending = vec![(Vec::<String>::new(), lib.to_path_buf())];
    while let Some((path, file)) = pending.pop() {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        // A module's children live beside a `lib.rs`/`mod.rs`, else in a dir named after it.
        let base = if path.is_empty() || file.ends_with("mod.rs") {
            file.parent().unwrap_or(dir).to_path_buf()
        } else {
            file.with_extension("")
        };
        for line in code_lines(&text) {
            let line = line
                .trim_start_matches("pub ")
                .trim_start_matches("pub(crate) ");
            let Some(name) = line
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'))
            else {
                continue;
            };
            let candidates = [
                base.join(format!("{name}.rs")),
                base.join(name).join("mod.rs"),
            ];
            if let Some(child) = candidates.into_iter().find(|c| c.is_file()) {
                let mut child_path = path.clone();
                child_path.push(name.to_string());
                pending.push((child_path, child));
            }
        }
        found.insert(path, file);
    }
    found
}

/// Lines of code, without comments and without the `#[cfg(test)]` module at the end of a
/// file (tests may reach anywhere in their crate).
fn code_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut previous_cfg_test = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if previous_cfg_test && trimmed.starts_with("mod ") {
            break;
        }
        previous_cfg_test = trimmed == "#[cfg(test)]";
        if !trimmed.starts_with("//") {
            lines.push(trimmed);
        }
    }
    lines
}

/// The module paths a file's code names through `crate::` and `super::`.
fn references(module: &[String], text: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let code = code_lines(text).join(" ");
    for (anchor, relative) in [("crate::", false), ("super::", true)] {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(anchor) {
            let before = rest[..at].chars().last();
            rest = &rest[at + anchor.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let mut path: Vec<String> = if relative {
                module[..module.len().saturating_sub(1)].to_vec()
            } else {
                Vec::new()
            };
            let mut tail = rest;
            // `super::super::`
            while relative && tail.starts_with("super::") {
                path.pop();
                tail = &tail["super::".len()..];
            }
            let groups: Vec<String> = if let Some(group) = tail.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end]
                    .split(',')
                    .map(|item| item.trim().to_string())
                    .collect()
            } else {
                vec![
                    tail.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                ]
            };
            for item in groups {
                let mut full = path.clone();
                full.extend(
                    item.split("::")
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty() && s != "self"),
                );
                found.push(full);
            }
        }
    }
    found
}

/// The circles of `edges`, each as its files (Tarjan's strongly connected components).
fn circles(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct State<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        found: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a PathBuf) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    state.found
}

/// The file-level import graph of one crate. A module's own `mod` declarations and
/// re-exports of its children are how it is made of them, not a use, so a parent's edges to
/// its own children are left out; a child naming its parent (`super::`) is a use.
fn import_graph(lib: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let modules = modules(lib);
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (path, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let entry = edges.entry(file.clone()).or_default();
        for reference in references(path, &text) {
            // The deepest module file the path names (the rest is items inside it).
            let target = (0..=reference.len())
                .rev()
                .find_map(|n| modules.get(&reference[..n]).map(|f| (n, f)));
            let Some((n, target)) = target else { continue };
            let names_own_child = reference[..n].starts_with(path) && n > path.len();
            if target != file && !names_own_child {
                entry.insert(target.clone());
            }
        }
    }
    edges
}

#[test]
fn no_crate_has_an_import_circle_between_its_files() {
    let mut found = Vec::new();
    for (name, _, lib, _) in workspace() {
        let Some(lib) = lib else { continue };
        for circle in circles(&import_graph(&lib)) {
            let files: Vec<String> = circle
                .iter()
                .map(|f| f.strip_prefix(root()).unwrap_or(f).display().to_string())
                .collect();
            found.push(format!("{name}: {}", files.join(" <-> ")));
        }
    }
    assert!(
        found.is_empty(),
        "import circles (move what both sides need below both):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let (a, b, c) = (PathBuf::from("a"), PathBuf::from("b"), PathBuf::from("c"));
    let mut edges = BTreeMap::new();
    edges.insert(a.clone(), BTreeSet::from([b.clone()]));
    edges.insert(b.clone(), BTreeSet::from([c.clone()]));
    edges.insert(c.clone(), BTreeSet::from([a.clone()]));
    assert_eq!(circles(&edges), vec![vec![a.clone(), b.clone(), c.clone()]]);
    edges.insert(c.clone(), BTreeSet::new());
    assert!(circles(&edges).is_empty());
    // And reads `super::` and grouped `crate::` uses as edges.
    let refs = references(
        &["targets".into(), "local".into()],
        "use super::{Capabilities, workdir::WorkDir};\nuse crate::process::Service;",
    );
    assert!(refs.contains(&vec!["targets".into(), "Capabilities".into()]));
    assert!(refs.contains(&vec!["targets".into(), "workdir".into(), "WorkDir".into()]));
    assert!(refs.contains(&vec!["process".into(), "Service".into()]));
}

/// Licences we accept for what the rig is built from (SPDX ids; exceptions after WITH).
const ACCEPTED: &[&str] = &[
    "MIT",
    "MIT-0",
    "Apache-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Unicode-3.0",
    "Zlib",
    "CC0-1.0",
    "BSL-1.0",
    "Unlicense",
];

/// Whether an SPDX expression (`A OR B`, `A AND (B OR C)`, `A WITH exception`, and the old
/// `A/B`) can be met with accepted licences.
fn acceptable(expression: &str) -> bool {
    let tokens: Vec<String> = expression
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace('/', " OR ")
        .split_whitespace()
        .map(String::from)
        .collect();
    fn any(tokens: &[String], at: &mut usize) -> bool {
        let mut ok = all(tokens, at);
        while tokens.get(*at).map(String::as_str) == Some("OR") {
            *at += 1;
            ok |= all(tokens, at);
        }
        ok
    }
    fn all(tokens: &[String], at: &mut usize) -> bool {
        let mut ok = one(tokens, at);
        while tokens.get(*at).map(String::as_str) == Some("AND") {
            *at += 1;
            ok &= one(tokens, at);
        }
        ok
    }
    fn one(tokens: &[String], at: &mut usize) -> bool {
        let Some(token) = tokens.get(*at) else {
            return false;
        };
        *at += 1;
        let ok = if token == "(" {
            let inner = any(tokens, at);
            *at += 1; // ")"
            inner
        } else {
            ACCEPTED.contains(&token.as_str())
        };
        if tokens.get(*at).map(String::as_str) == Some("WITH") {
            *at += 2;
        }
        ok
    }
    let mut at = 0;
    !tokens.is_empty() && any(&tokens, &mut at) && at == tokens.len()
}

#[test]
fn every_dependency_is_under_a_licence_we_accept() {
    let members: BTreeSet<String> = workspace().into_iter().map(|(name, ..)| name).collect();
    let tree = cargo(&[
        "tree",
        "--offline",
        "--workspace",
        "-e",
        "normal,build,dev",
        "--prefix",
        "none",
        "-f",
        "{p}|{l}",
    ]);
    let mut refused = BTreeSet::new();
    let mut seen = 0;
    for line in tree.lines().filter(|l| !l.trim().is_empty()) {
        let (package, licence) = line.split_once('|').unwrap_or((line, ""));
        let licence = licence.trim_end_matches("(*)").trim();
        let name = package.split_whitespace().next().unwrap_or_default();
        if members.contains(name) {
            continue;
        }
        seen += 1;
        if !acceptable(licence) {
            refused.insert(format!("{package}: {licence:?}"));
        }
    }
    assert!(seen > 100, "read only {seen} dependencies from cargo tree");
    assert!(
        refused.is_empty(),
        "dependencies under a licence not in ACCEPTED (tests/architecture.rs):\n{}",
        refused.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn licence_expressions_are_read_as_spdx_says() {
    assert!(acceptable("MIT OR Apache-2.0"));
    assert!(acceptable("MIT/Apache-2.0"));
    assert!(acceptable("Apache-2.0 WITH LLVM-exception OR MIT"));
    assert!(acceptable("(MIT OR Apache-2.0) AND Unicode-3.0"));
    assert!(!acceptable("GPL-3.0-only"));
    assert!(!acceptable("MIT AND GPL-3.0-only"));
    assert!(acceptable("GPL-3.0-only OR MIT"));
    assert!(!acceptable(""));
}

/// `./x test` runs the `quick` profile, then `faults`: together they must be the whole
/// suite, each test in exactly one, so `quick`'s filter is `not (` `faults`' filter `)`.
#[test]
fn the_quick_and_fault_profiles_split_the_suite_without_overlap_or_gap() {
    let config =
        std::fs::read_to_string(root().join(".config/nextest.toml")).expect(".config/nextest.toml");
    let filter = |profile: &str| -> String {
        let section = config
            .split(&format!("[profile.{profile}]"))
            .nth(1)
            .unwrap_or_else(|| panic!("no [profile.{profile}] in .config/nextest.toml"));
        let value = section
            .split("default-filter = \"\"\"")
            .nth(1)
            .and_then(|rest| rest.split("\"\"\"").next())
            .unwrap_or_else(|| panic!("[profile.{profile}] has no default-filter"));
        value.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let (quick, faults) = (filter("quick"), filter("faults"));
    assert!(!faults.is_empty(), "the faults profile selects nothing");
    assert_eq!(
        quick,
        format!("not ( {faults} )"),
        "the quick profile must be exactly the complement of the faults profile"
    );
}

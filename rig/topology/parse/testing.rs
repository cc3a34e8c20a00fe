//! Small configurations for the parser's unit tests: parsed in memory when one file is
//! enough, written to a temporary directory when environments, tfvars or modules matter.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::module::ModuleEval;
use super::module::Provided;
use super::source::ModuleSource;
use super::{Configuration, Value, load_environment};
use crate::{Location, TopologyError};

/// The directory an in-memory module claims to live in.
pub(super) const MEMORY_DIR: &str = "mem";

fn memory_location() -> Location {
    Location::new(PathBuf::from(MEMORY_DIR), 0)
}

/// The root module made of one `mem/main.tf` holding `text`, with its variables bound.
pub(super) fn module(text: &str) -> Result<ModuleEval, TopologyError> {
    let src = ModuleSource::from_text(Path::new(MEMORY_DIR), &[("main.tf", text)])?;
    ModuleEval::new(
        Rc::new(src),
        String::new(),
        Provided::new(),
        &memory_location(),
    )
}

/// `local.<name>` of the module `text`.
pub(super) fn local(text: &str, name: &str) -> Result<Value, TopologyError> {
    module(text)?.local(name, &memory_location())
}

/// `expr` evaluated as a local on line 2 of `mem/main.tf`, next to the blocks in `rest`.
pub(super) fn eval_with(rest: &str, expr: &str) -> Result<Value, TopologyError> {
    local(&format!("locals {{\n  x = {expr}\n}}\n{rest}"), "x")
}

/// `expr` evaluated as a local on line 2 of `mem/main.tf`.
pub(super) fn eval(expr: &str) -> Result<Value, TopologyError> {
    eval_with("", expr)
}

/// Asserts that `result` failed at `line` of a file whose path ends with `file`, and returns
/// the error as the user sees it.
#[track_caller]
pub(super) fn error_at<T>(result: Result<T, TopologyError>, file: &str, line: usize) -> String {
    let err = match result {
        Ok(_) => panic!("expected an error at {file}:{line}, got a value"),
        Err(err) => err,
    };
    let location = err
        .location()
        .unwrap_or_else(|| panic!("error without a location: {err}"));
    assert!(location.file.ends_with(file), "wrong file in: {err}");
    assert_eq!(location.line, line, "wrong line in: {err}");
    err.to_string()
}

pub(super) fn s(text: &str) -> Value {
    Value::String(text.to_string())
}

pub(super) fn n(number: f64) -> Value {
    Value::Number(number)
}

pub(super) fn list<const N: usize>(items: [Value; N]) -> Value {
    Value::List(items.into())
}

pub(super) fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// A Terraform tree in a temporary directory; the environment is always `envs/test`.
pub(super) struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    /// `files` are `(path under the root, contents)`, e.g. `("modules/m/main.tf", "...")`.
    pub(super) fn new(files: &[(&str, &str)]) -> Tree {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("a file under the root"))
                .expect("create the file's directory");
            std::fs::write(&path, text).expect("write the file");
        }
        Tree { dir }
    }

    pub(super) fn root(&self) -> &Path {
        self.dir.path()
    }

    pub(super) fn load(&self) -> Result<Configuration, TopologyError> {
        load_environment(self.root(), "test")
    }
}

/// The value of `attr` on the instance printed as `address` (`google_x.y["k"]`).
#[track_caller]
pub(super) fn attr(config: &Configuration, address: &str, attr: &str) -> Value {
    let instance = config
        .resources
        .iter()
        .find(|r| r.address.to_string() == address)
        .unwrap_or_else(|| panic!("no instance {address}"));
    instance
        .body
        .value(attr)
        .unwrap_or_else(|| panic!("{address} has no attribute {attr}"))
        .clone()
}

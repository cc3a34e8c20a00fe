//! Reads a Terraform root module and the local modules it calls, and evaluates every
//! expression the way `terraform plan` would before any resource exists: variables (defaults,
//! the environment's `*.tfvars`, module inputs), locals, `for_each`, references between
//! resources and a small set of functions. What only the provider knows (ids, emails, IPs)
//! stays a [`Value::Ref`] naming the resource attribute it comes from.
//!
//! Anything outside that subset is a [`TopologyError`] naming file and line: a silent skip
//! would let the rig and the policy checks disagree with what `terraform apply` creates.
//!
//! Where things are:
//! - [`source`]: reading and indexing `.tf` files, byte spans to file:line;
//! - [`value`]: [`Value`], and the [`Address`]/[`Reference`] of values known after apply;
//! - [`module`]: one module instance (locals, `for_each` instances, outputs, child modules);
//! - [`variables`]: `*.tfvars`, defaults, module inputs and `validation` blocks;
//! - [`expressions`], [`functions`], [`references`]: evaluating one expression.

mod expressions;
mod functions;
mod module;
mod references;
mod source;
#[cfg(test)]
mod testing;
mod value;
mod variables;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::{Location, TopologyError};
use module::ModuleEval;
use source::{ModuleSource, sp};
use variables::read_values;

pub(crate) use value::{Address, Mode, Reference, Value};

/// Files in an environment directory that hold its values; every other file of a root must be
/// identical across environments.
pub(crate) const VALUES_FILES: &[&str] = &["terraform.tfvars", "backend.hcl"];

#[derive(Debug, Clone)]
pub(crate) struct EvalAttr {
    pub value: Value,
    pub location: Location,
}

#[derive(Debug, Clone)]
pub(crate) struct EvalBlock {
    pub ident: String,
    pub body: EvalBody,
    pub location: Location,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct EvalBody {
    pub attrs: BTreeMap<String, EvalAttr>,
    pub blocks: Vec<EvalBlock>,
}

impl EvalBody {
    pub(crate) fn attr(&self, name: &str) -> Option<&EvalAttr> {
        self.attrs.get(name)
    }

    pub(crate) fn value(&self, name: &str) -> Option<&Value> {
        self.attrs.get(name).map(|a| &a.value)
    }

    pub(crate) fn blocks<'a, 'b>(
        &'a self,
        ident: &'b str,
    ) -> impl Iterator<Item = &'a EvalBlock> + use<'a, 'b> {
        self.blocks.iter().filter(move |b| b.ident == ident)
    }

    pub(crate) fn block(&self, ident: &str) -> Option<&EvalBlock> {
        self.blocks(ident).next()
    }

    /// Follows nested blocks (first of each name) down to an attribute.
    pub(crate) fn lookup(&self, path: &[&str]) -> Option<&EvalAttr> {
        match path {
            [] => None,
            [last] => self.attr(last),
            [first, rest @ ..] => self.block(first)?.body.lookup(rest),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ResourceInstance {
    pub address: Address,
    pub location: Location,
    pub body: EvalBody,
}

/// Every resource and data source of an environment, fully evaluated.
#[derive(Debug, Clone)]
pub(crate) struct Configuration {
    pub environment_dir: PathBuf,
    /// The root module's variables after applying the environment's values.
    pub root_variables: BTreeMap<String, Value>,
    /// Where each root variable got its value (the tfvars line, or the declaration).
    pub root_variable_locations: BTreeMap<String, Location>,
    pub resources: Vec<ResourceInstance>,
}

impl Configuration {
    pub(crate) fn managed<'a, 'b>(
        &'a self,
        rtype: &'b str,
    ) -> impl Iterator<Item = &'a ResourceInstance> + use<'a, 'b> {
        self.resources
            .iter()
            .filter(move |r| r.address.mode == Mode::Managed && r.address.rtype == rtype)
    }

    pub(crate) fn find(&self, address: &Address) -> Option<&ResourceInstance> {
        self.resources.iter().find(|r| &r.address == address)
    }

    /// The `name` a value refers to: a literal id (`events.raw`, or a full
    /// `projects/p/topics/events.raw`), or a reference to a resource of `rtype` whose
    /// configured `name` is known.
    pub(crate) fn resolve_name(&self, value: &Value, rtype: &str) -> Option<String> {
        match value {
            Value::String(s) => Some(s.rsplit('/').next().unwrap_or(s).to_string()),
            Value::Ref(r) if r.address.rtype == rtype && r.path.len() <= 1 => self
                .find(&r.address)?
                .body
                .value("name")?
                .as_str()
                .map(str::to_string),
            _ => None,
        }
    }
}

/// Loads `<terraform_root>/envs/<environment>` and every module it calls.
pub(crate) fn load_environment(
    terraform_root: &Path,
    environment: &str,
) -> Result<Configuration, TopologyError> {
    let envs = terraform_root.join("envs");
    let environment_dir = envs.join(environment);
    if !environment_dir.is_dir() {
        return Err(TopologyError::UnknownEnvironment {
            root: terraform_root.to_path_buf(),
            environment: environment.to_string(),
            found: list_environments(&envs).join(", "),
        });
    }
    let source = Rc::new(ModuleSource::load(&environment_dir)?);
    let (values, locations) = read_values(&environment_dir)?;
    let root = ModuleEval::new(
        source,
        String::new(),
        values,
        &Location::new(environment_dir.clone(), 0),
    )?;
    let mut resources = Vec::new();
    root.evaluate_all(&mut resources)?;
    let root_variable_locations = root
        .vars
        .keys()
        .map(|name| {
            let location = locations
                .get(name)
                .cloned()
                .or_else(|| {
                    root.src
                        .variables
                        .get(name)
                        .map(|v| root.src.loc(v.file, sp(&v.block)))
                })
                .unwrap_or_else(|| Location::new(environment_dir.clone(), 0));
            (name.clone(), location)
        })
        .collect();
    Ok(Configuration {
        environment_dir,
        root_variables: root.vars.clone(),
        root_variable_locations,
        resources,
    })
}

/// Directory names under `envs/`, sorted.
pub(crate) fn list_environments(envs: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(envs)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

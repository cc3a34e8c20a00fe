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

#[cfg(test)]
mod tests {
    use super::testing::{Tree, s};
    use super::*;

    const MAIN: &str = r#"
resource "google_pubsub_topic" "raw" {
  name = "events.raw"
}

resource "google_pubsub_topic" "unnamed" {}

data "google_pubsub_topic" "external" {
  name = "external"
}

resource "google_pubsub_subscription" "worker" {
  name  = "events.raw.worker"
  topic = google_pubsub_topic.raw.id

  dead_letter_policy {
    dead_letter_topic     = "projects/p/topics/events.dlq"
    max_delivery_attempts = 5
  }

  retry_policy {
    minimum_backoff = "10s"
  }
}
"#;

    fn config() -> Configuration {
        Tree::new(&[("envs/test/main.tf", MAIN)]).load().unwrap()
    }

    #[test]
    fn an_unknown_environment_names_the_ones_there_are() {
        let tree = Tree::new(&[
            ("envs/prod/main.tf", MAIN),
            ("envs/dev/main.tf", MAIN),
            ("envs/README.md", "a file, not an environment"),
        ]);
        assert_eq!(
            list_environments(&tree.root().join("envs")),
            ["dev", "prod"]
        );
        let err = tree.load().unwrap_err();
        assert!(
            matches!(err, TopologyError::UnknownEnvironment { .. }),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with("no environment `test` under "),
            "{message}"
        );
        assert!(
            message.ends_with(": expected envs/test/ (found: dev, prod)"),
            "{message}"
        );
        assert!(list_environments(&tree.root().join("missing")).is_empty());
    }

    #[test]
    fn the_configuration_lists_every_instance_with_its_location() {
        let config = config();
        let addresses: Vec<String> = config
            .resources
            .iter()
            .map(|r| r.address.to_string())
            .collect();
        assert_eq!(
            addresses,
            [
                "google_pubsub_subscription.worker",
                "google_pubsub_topic.raw",
                "google_pubsub_topic.unnamed",
                "data.google_pubsub_topic.external",
            ]
        );
        let managed: Vec<&str> = config
            .managed("google_pubsub_topic")
            .map(|r| r.address.name.as_str())
            .collect();
        assert_eq!(managed, ["raw", "unnamed"]);
        let worker = config.managed("google_pubsub_subscription").next().unwrap();
        assert!(worker.location.file.ends_with("envs/test/main.tf"));
        assert_eq!(worker.location.line, 12);
        assert!(config.environment_dir.ends_with("envs/test"));
    }

    #[test]
    fn nested_blocks_are_reached_by_path() {
        let config = config();
        let worker = &config
            .managed("google_pubsub_subscription")
            .next()
            .unwrap()
            .body;
        assert_eq!(
            worker
                .lookup(&["retry_policy", "minimum_backoff"])
                .map(|a| &a.value),
            Some(&s("10s"))
        );
        let attempts = worker
            .lookup(&["dead_letter_policy", "max_delivery_attempts"])
            .unwrap();
        assert_eq!(attempts.value.as_u32(), Some(5));
        assert_eq!(attempts.location.line, 18);
        assert!(
            worker
                .lookup(&["retry_policy", "maximum_backoff"])
                .is_none()
        );
        assert!(worker.lookup(&["expiration_policy", "ttl"]).is_none());
        assert!(worker.lookup(&[]).is_none());
        assert_eq!(worker.blocks("retry_policy").count(), 1);
        assert_eq!(
            worker.block("dead_letter_policy").map(|b| b.location.line),
            Some(16)
        );
    }

    #[test]
    fn names_resolve_from_ids_and_references_to_named_resources() {
        let config = config();
        let worker = &config
            .managed("google_pubsub_subscription")
            .next()
            .unwrap()
            .body;
        let topic = worker.value("topic").unwrap();
        assert_eq!(
            config.resolve_name(topic, "google_pubsub_topic").as_deref(),
            Some("events.raw")
        );
        assert_eq!(config.resolve_name(topic, "google_storage_bucket"), None);
        let dead_letter = worker
            .lookup(&["dead_letter_policy", "dead_letter_topic"])
            .unwrap();
        assert_eq!(
            config
                .resolve_name(&dead_letter.value, "google_pubsub_topic")
                .as_deref(),
            Some("events.dlq")
        );
        let unnamed = Value::Ref(Reference {
            address: config.resources[2].address.clone(),
            path: vec!["id".into()],
        });
        assert_eq!(config.resolve_name(&unnamed, "google_pubsub_topic"), None);
        let deep = Value::Ref(Reference {
            address: config.resources[1].address.clone(),
            path: vec!["labels".into(), "team".into()],
        });
        assert_eq!(config.resolve_name(&deep, "google_pubsub_topic"), None);
        assert_eq!(
            config.resolve_name(&Value::Number(1.0), "google_pubsub_topic"),
            None
        );
    }
}

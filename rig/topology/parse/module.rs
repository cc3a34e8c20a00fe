//! One module instance being evaluated: its locals (lazily, with cycle detection), resource
//! instances expanded by `for_each`, outputs, and the child modules it calls.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use hcl::edit::expr::Expression;
use hcl::edit::structure::{Body, Structure};

use super::source::{Item, ModuleSource, Sp, normalize, sp};
use super::{Address, EvalAttr, EvalBlock, EvalBody, Mode, ResourceInstance, Value};
use crate::{Location, TopologyError};

/// Values given for a module's variables (from tfvars or a module block), with where each was set.
pub(super) type Provided = BTreeMap<String, (Value, Location)>;

/// Bindings visible to one expression.
#[derive(Debug, Clone)]
pub(super) struct Scope {
    pub(super) file: usize,
    pub(super) each: Option<(Value, Value)>,
    pub(super) names: Vec<(String, Value)>,
}

impl Scope {
    pub(super) fn file(file: usize) -> Scope {
        Scope {
            file,
            each: None,
            names: Vec::new(),
        }
    }

    pub(super) fn name(&self, name: &str) -> Option<&Value> {
        self.names
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

pub(super) type Instances = Rc<Option<BTreeMap<String, Value>>>;

/// `each.key` and `each.value` of one instance.
pub(super) type Binding = (Value, Value);

/// One module instance being evaluated.
pub(super) struct ModuleEval {
    pub(super) src: Rc<ModuleSource>,
    /// `""` for the root, `module.backbone` for a child.
    pub(super) path: String,
    pub(super) vars: BTreeMap<String, Value>,
    locals: RefCell<BTreeMap<String, Value>>,
    /// What is being evaluated right now, to report reference cycles instead of overflowing.
    resolving: RefCell<Vec<String>>,
    instances: RefCell<BTreeMap<(Mode, String, String), Instances>>,
    children: RefCell<BTreeMap<String, Rc<ModuleEval>>>,
}

impl ModuleEval {
    pub(super) fn bare(src: Rc<ModuleSource>) -> ModuleEval {
        ModuleEval {
            src,
            path: String::new(),
            vars: BTreeMap::new(),
            locals: RefCell::default(),
            resolving: RefCell::default(),
            instances: RefCell::default(),
            children: RefCell::default(),
        }
    }

    pub(super) fn loc(&self, scope: &Scope, span: Sp) -> Location {
        self.src.loc(scope.file, span)
    }

    pub(super) fn unsupported(
        &self,
        scope: &Scope,
        span: Sp,
        construct: impl Into<String>,
        hint: &str,
    ) -> TopologyError {
        TopologyError::Unsupported {
            location: self.loc(scope, span),
            construct: construct.into(),
            hint: hint.into(),
        }
    }

    pub(super) fn invalid(
        &self,
        scope: &Scope,
        span: Sp,
        message: impl Into<String>,
    ) -> TopologyError {
        TopologyError::Invalid {
            location: self.loc(scope, span),
            message: message.into(),
        }
    }

    pub(super) fn enter(&self, key: String, location: &Location) -> Result<(), TopologyError> {
        let mut resolving = self.resolving.borrow_mut();
        if resolving.contains(&key) {
            let chain = resolving.join(" -> ");
            return Err(TopologyError::Invalid {
                location: location.clone(),
                message: format!("reference cycle: {chain} -> {key}; break the cycle"),
            });
        }
        resolving.push(key);
        Ok(())
    }

    pub(super) fn leave(&self) {
        self.resolving.borrow_mut().pop();
    }

    /// Evaluates everything in the module (and its children), so that a construct the parser
    /// does not understand fails the load even where the topology never looks.
    pub(super) fn evaluate_all(
        &self,
        out: &mut Vec<ResourceInstance>,
    ) -> Result<(), TopologyError> {
        for name in self.src.locals.keys() {
            self.local(name, &Location::new(self.src.dir.clone(), 0))?;
        }
        for provider in &self.src.providers {
            self.eval_body(&provider.block.body, &Scope::file(provider.file), false)?;
        }
        for name in self.src.modules.keys() {
            let child = self.child(name, &Scope::file(0), None)?;
            child.evaluate_all(out)?;
        }
        for ((mode, rtype, name), item) in &self.src.resources {
            let instances = self.instances(*mode, rtype, name, item)?;
            let entries: Vec<(Option<String>, Option<Binding>)> = match instances.as_ref() {
                None => vec![(None, None)],
                Some(map) => map
                    .iter()
                    .map(|(k, v)| (Some(k.clone()), Some((Value::String(k.clone()), v.clone()))))
                    .collect(),
            };
            for (key, each) in entries {
                let scope = Scope {
                    file: item.file,
                    each,
                    names: Vec::new(),
                };
                let body = self.eval_body(&item.block.body, &scope, true)?;
                out.push(ResourceInstance {
                    address: Address {
                        module: self.path.clone(),
                        mode: *mode,
                        rtype: rtype.clone(),
                        name: name.clone(),
                        key,
                    },
                    location: self.src.loc(item.file, sp(&item.block)),
                    body,
                });
            }
        }
        for name in self.src.outputs.keys() {
            self.output(name, &Location::new(self.src.dir.clone(), 0))?;
        }
        Ok(())
    }

    pub(super) fn eval_body(
        &self,
        body: &Body,
        scope: &Scope,
        resource: bool,
    ) -> Result<EvalBody, TopologyError> {
        let mut out = EvalBody::default();
        for structure in body.iter() {
            match structure {
                Structure::Attribute(attr) => {
                    let key = attr.key.as_str();
                    let value = match (resource, key) {
                        // Already expanded into instances by the caller.
                        (true, "for_each") => continue,
                        (true, "count") => {
                            return Err(self.unsupported(
                                scope,
                                sp(attr),
                                "`count`",
                                "use `for_each` over a map or set",
                            ));
                        }
                        (true, "depends_on" | "provider") => self.addresses(&attr.value, scope)?,
                        _ => self.eval(&attr.value, scope)?,
                    };
                    out.attrs.insert(
                        key.to_string(),
                        EvalAttr {
                            value,
                            location: self.loc(scope, sp(attr)),
                        },
                    );
                }
                Structure::Block(block) => {
                    let ident = block.ident.as_str();
                    let location = self.loc(scope, sp(block));
                    let nested = match (resource, ident) {
                        (_, "dynamic") => {
                            return Err(self.unsupported(scope, sp(block), "a `dynamic` block", "write the nested blocks out literally; the topology parser does not expand dynamic blocks"));
                        }
                        (true, "provisioner" | "connection") => {
                            return Err(self.unsupported(
                                scope,
                                sp(block),
                                format!("a `{ident}` block"),
                                "provisioners are outside what the backbone declares",
                            ));
                        }
                        (true, "lifecycle") => self.lifecycle(&block.body, scope)?,
                        _ => self.eval_body(&block.body, scope, false)?,
                    };
                    out.blocks.push(EvalBlock {
                        ident: ident.to_string(),
                        body: nested,
                        location,
                    });
                }
            }
        }
        Ok(out)
    }

    /// `lifecycle` names attributes and resources instead of reading them.
    pub(super) fn lifecycle(&self, body: &Body, scope: &Scope) -> Result<EvalBody, TopologyError> {
        let mut out = EvalBody::default();
        for structure in body.iter() {
            let Structure::Attribute(attr) = structure else {
                return Err(self.unsupported(
                    scope,
                    sp(structure),
                    "a lifecycle precondition or postcondition",
                    "express the rule as a variable validation",
                ));
            };
            let value = match attr.key.as_str() {
                "prevent_destroy" | "create_before_destroy" => self.eval(&attr.value, scope)?,
                "ignore_changes" | "replace_triggered_by" => self.addresses(&attr.value, scope)?,
                other => {
                    return Err(self.unsupported(
                        scope,
                        sp(attr),
                        format!("lifecycle argument `{other}`"),
                        "see the Terraform lifecycle documentation",
                    ));
                }
            };
            out.attrs.insert(
                attr.key.to_string(),
                EvalAttr {
                    value,
                    location: self.loc(scope, sp(attr)),
                },
            );
        }
        Ok(out)
    }

    /// A list of names (`depends_on = [a.b]`), kept as their source text.
    pub(super) fn addresses(
        &self,
        expr: &Expression,
        scope: &Scope,
    ) -> Result<Value, TopologyError> {
        let text = |e: &Expression| Value::Unknown(self.src.files[scope.file].snippet(sp(e)));
        match expr {
            Expression::Array(items) => Ok(Value::List(items.iter().map(text).collect())),
            Expression::Traversal(_) | Expression::Variable(_) => Ok(text(expr)),
            other => Err(self.unsupported(
                scope,
                sp(other),
                "this meta-argument value",
                "list resource or attribute names, e.g. `[google_x.y]`",
            )),
        }
    }

    pub(super) fn local(&self, name: &str, from: &Location) -> Result<Value, TopologyError> {
        if let Some(value) = self.locals.borrow().get(name) {
            return Ok(value.clone());
        }
        let item = self
            .src
            .locals
            .get(name)
            .ok_or_else(|| TopologyError::Unresolved {
                location: from.clone(),
                reference: format!("local.{name}"),
                hint: "declare it in a `locals` block of this module".into(),
            })?;
        self.enter(format!("local.{name}"), from)?;
        let value = self.eval(&item.attr.value, &Scope::file(item.file));
        self.leave();
        let value = value?;
        self.locals
            .borrow_mut()
            .insert(name.to_string(), value.clone());
        Ok(value)
    }

    pub(super) fn output(&self, name: &str, from: &Location) -> Result<Value, TopologyError> {
        let item = self
            .src
            .outputs
            .get(name)
            .ok_or_else(|| TopologyError::Unresolved {
                location: from.clone(),
                reference: format!("{}.{name}", self.path),
                hint: format!("declare `output \"{name}\"` in {}", self.src.dir.display()),
            })?;
        let scope = Scope::file(item.file);
        for attr in item.block.body.attributes() {
            if !matches!(
                attr.key.as_str(),
                "value" | "description" | "sensitive" | "depends_on" | "ephemeral"
            ) {
                return Err(self.unsupported(
                    &scope,
                    sp(attr),
                    format!("output argument `{}`", attr.key.as_str()),
                    "use value, description, sensitive or depends_on",
                ));
            }
        }
        let value = item.block.body.get_attribute("value").ok_or_else(|| {
            self.invalid(
                &scope,
                sp(&item.block),
                format!("output `{name}` has no `value`"),
            )
        })?;
        self.enter(format!("output.{name}"), from)?;
        let result = self.eval(&value.value, &scope);
        self.leave();
        result
    }

    pub(super) fn child(
        &self,
        name: &str,
        scope: &Scope,
        span: Sp,
    ) -> Result<Rc<ModuleEval>, TopologyError> {
        if let Some(child) = self.children.borrow().get(name) {
            return Ok(child.clone());
        }
        let item = self
            .src
            .modules
            .get(name)
            .ok_or_else(|| TopologyError::Unresolved {
                location: self.loc(scope, span),
                reference: format!("module.{name}"),
                hint: "declare the module block in this directory".into(),
            })?;
        let mscope = Scope::file(item.file);
        let call_location = self.src.loc(item.file, sp(&item.block));
        let mut source_dir = None;
        let mut inputs = Provided::new();
        for structure in item.block.body.iter() {
            let Structure::Attribute(attr) = structure else {
                return Err(self.unsupported(
                    &mscope,
                    sp(structure),
                    "a block inside a module call",
                    "pass inputs as attributes",
                ));
            };
            match attr.key.as_str() {
                "source" => {
                    let source = match self.eval(&attr.value, &mscope)? {
                        Value::String(s) if s.starts_with("./") || s.starts_with("../") => s,
                        _ => {
                            return Err(self.unsupported(
                                &mscope,
                                sp(attr),
                                "a module source that is not a local path",
                                "the topology parser reads local modules (`../../modules/x`) only",
                            ));
                        }
                    };
                    source_dir = Some(normalize(&self.src.dir.join(source)));
                }
                key @ ("for_each" | "count" | "providers" | "version" | "depends_on") => {
                    return Err(self.unsupported(
                        &mscope,
                        sp(attr),
                        format!("module meta-argument `{key}`"),
                        "call the module once per root without meta-arguments",
                    ));
                }
                key => {
                    let value = self.eval(&attr.value, &mscope)?;
                    inputs.insert(key.to_string(), (value, self.src.loc(item.file, sp(attr))));
                }
            }
        }
        let source_dir = source_dir.ok_or_else(|| {
            self.invalid(
                &mscope,
                sp(&item.block),
                format!("module `{name}` has no `source`"),
            )
        })?;
        self.enter(format!("module.{name}"), &call_location)?;
        let result = ModuleSource::load(&source_dir).and_then(|src| {
            let path = if self.path.is_empty() {
                format!("module.{name}")
            } else {
                format!("{}.module.{name}", self.path)
            };
            ModuleEval::new(Rc::new(src), path, inputs, &call_location)
        });
        self.leave();
        let child = Rc::new(result?);
        self.children
            .borrow_mut()
            .insert(name.to_string(), child.clone());
        Ok(child)
    }

    /// `for_each` keys and values of a resource, or `None` for a single instance.
    pub(super) fn instances(
        &self,
        mode: Mode,
        rtype: &str,
        name: &str,
        item: &Item,
    ) -> Result<Instances, TopologyError> {
        let key = (mode, rtype.to_string(), name.to_string());
        if let Some(found) = self.instances.borrow().get(&key) {
            return Ok(found.clone());
        }
        let scope = Scope::file(item.file);
        let result = match item.block.body.get_attribute("for_each") {
            None => None,
            Some(attr) => {
                self.enter(
                    format!("{rtype}.{name}.for_each"),
                    &self.loc(&scope, sp(attr)),
                )?;
                let value = self.eval(&attr.value, &scope);
                self.leave();
                Some(match value? {
                    Value::Map(map) => map,
                    Value::List(items) => items
                        .into_iter()
                        .map(|v| match v {
                            Value::String(s) => Ok((s.clone(), Value::String(s))),
                            other => Err(self.invalid(
                                &scope,
                                sp(attr),
                                format!(
                                    "for_each over a set needs strings, found a {}",
                                    other.type_name()
                                ),
                            )),
                        })
                        .collect::<Result<_, _>>()?,
                    other => {
                        return Err(self.invalid(&scope, sp(attr), format!("for_each needs a map or a set of strings known before apply, found a {}", other.type_name())));
                    }
                })
            }
        };
        let result = Rc::new(result);
        self.instances.borrow_mut().insert(key, result.clone());
        Ok(result)
    }
}

impl ModuleEval {
    /// Binds the module's variables: provided values win over defaults, a variable with
    /// neither is an error, and every `validation` block is checked.
    pub(super) fn new(
        src: Rc<ModuleSource>,
        path: String,
        mut provided: Provided,
        caller: &Location,
    ) -> Result<ModuleEval, TopologyError> {
        let mut me = ModuleEval::bare(src.clone());
        me.path = path;
        let mut vars = BTreeMap::new();
        let mut value_locations = BTreeMap::new();
        for (name, item) in &src.variables {
            let scope = Scope::file(item.file);
            for attr in item.block.body.attributes() {
                let key = attr.key.as_str();
                if !matches!(
                    key,
                    "type" | "default" | "description" | "sensitive" | "nullable" | "ephemeral"
                ) {
                    return Err(TopologyError::Unsupported {
                        location: src.loc(item.file, sp(attr)),
                        construct: format!("variable argument `{key}`"),
                        hint: "use type, default, description, sensitive, nullable or validation"
                            .into(),
                    });
                }
            }
            let value = match provided.remove(name) {
                Some((value, location)) => {
                    value_locations.insert(name.clone(), location);
                    value
                }
                None => match item.block.body.get_attribute("default") {
                    Some(default) => me.eval(&default.value, &scope)?,
                    None => {
                        return Err(TopologyError::Invalid {
                            location: caller.clone(),
                            message: if me.path.is_empty() {
                                format!(
                                    "no value for required variable `{name}`: set it in {}",
                                    src.dir.join("terraform.tfvars").display()
                                )
                            } else {
                                format!(
                                    "{} needs input `{name}` (declared at {}): pass it in the module block",
                                    me.path,
                                    src.loc(item.file, sp(&item.block))
                                )
                            },
                        });
                    }
                },
            };
            vars.insert(name.clone(), value);
        }
        if let Some((name, (_, location))) = provided.into_iter().next() {
            return Err(TopologyError::Invalid {
                location,
                message: format!(
                    "`{name}` is not a declared variable of {}: declare it in variables.tf or remove it",
                    src.dir.display()
                ),
            });
        }
        me.vars = vars;
        for (name, item) in &src.variables {
            for validation in item.block.body.get_blocks("validation") {
                let scope = Scope::file(item.file);
                let location = value_locations
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| src.loc(item.file, sp(validation)));
                let condition = validation.body.get_attribute("condition").ok_or_else(|| {
                    TopologyError::Invalid {
                        location: src.loc(item.file, sp(validation)),
                        message: "validation block without `condition`".into(),
                    }
                })?;
                match me.eval(&condition.value, &scope)? {
                    Value::Bool(true) => {}
                    Value::Bool(false) => {
                        let message = match validation.body.get_attribute("error_message") {
                            Some(m) => me.eval(&m.value, &scope)?.render().unwrap_or_default(),
                            None => "validation failed".into(),
                        };
                        return Err(TopologyError::Invalid {
                            location,
                            message: format!("variable `{name}`: {message}"),
                        });
                    }
                    other => {
                        return Err(TopologyError::Invalid {
                            location: src.loc(item.file, sp(condition)),
                            message: format!(
                                "validation condition is a {}, not a bool",
                                other.type_name()
                            ),
                        });
                    }
                }
            }
        }
        Ok(me)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Tree, attr, error_at, list, local, module, n, s};
    use super::*;

    fn resources(text: &str) -> Result<Vec<ResourceInstance>, TopologyError> {
        let mut out = Vec::new();
        module(text)?.evaluate_all(&mut out)?;
        Ok(out)
    }

    fn keys(instances: &[ResourceInstance]) -> Vec<String> {
        instances.iter().map(|r| r.address.to_string()).collect()
    }

    #[test]
    fn locals_are_evaluated_on_demand_in_any_order() {
        let text = "locals {\n  a = \"${local.b}-x\"\n  b = \"y\"\n  broken = var.missing\n}\n";
        assert_eq!(local(text, "a").unwrap(), s("y-x"));
        // `broken` is never read on the way to `a`, so it does not fail `a`.
        let message = error_at(local(text, "broken"), "mem/main.tf", 4);
        assert!(
            message.contains("`var.missing` does not resolve"),
            "{message}"
        );
    }

    #[test]
    fn local_cycles_are_reported_with_their_chain() {
        let text = "locals {\n  a = local.b\n  b = [local.a]\n}\n";
        let message = error_at(local(text, "a"), "mem/main.tf", 3);
        assert!(
            message.ends_with("reference cycle: local.a -> local.b -> local.a; break the cycle"),
            "{message}"
        );
        let message = error_at(local("locals {\n  a = local.a\n}\n", "a"), "mem/main.tf", 2);
        assert!(
            message.contains("reference cycle: local.a -> local.a"),
            "{message}"
        );
    }

    #[test]
    fn for_each_over_a_map_binds_each_key_and_value() {
        let text = r#"
resource "google_pubsub_subscription" "s" {
  for_each             = { raw = 10, merged = 20 }
  name                 = "events.${each.key}.worker"
  ack_deadline_seconds = each.value
}
"#;
        let out = resources(text).unwrap();
        assert_eq!(
            keys(&out),
            [
                r#"google_pubsub_subscription.s["merged"]"#,
                r#"google_pubsub_subscription.s["raw"]"#
            ]
        );
        assert_eq!(out[0].body.value("name"), Some(&s("events.merged.worker")));
        assert_eq!(out[0].body.value("ack_deadline_seconds"), Some(&n(20.0)));
        assert_eq!(out[1].body.value("ack_deadline_seconds"), Some(&n(10.0)));
        assert!(
            out[0].body.attr("for_each").is_none(),
            "for_each is expanded, not kept"
        );
        assert_eq!(out[0].location.line, 2);
    }

    #[test]
    fn for_each_over_a_set_binds_the_same_key_and_value() {
        let text = r#"
resource "google_pubsub_topic" "t" {
  for_each = toset(["raw", "dlq", "raw"])
  name     = "${each.key}/${each.value}"
}
"#;
        let out = resources(text).unwrap();
        assert_eq!(
            keys(&out),
            [
                r#"google_pubsub_topic.t["dlq"]"#,
                r#"google_pubsub_topic.t["raw"]"#
            ]
        );
        assert_eq!(out[1].body.value("name"), Some(&s("raw/raw")));
    }

    #[test]
    fn for_each_needs_strings_or_a_map_known_before_apply() {
        let cases = [
            ("[1]", "for_each over a set needs strings, found a number"),
            (
                r#""raw""#,
                "for_each needs a map or a set of strings known before apply, found a string",
            ),
            (
                "google_pubsub_topic.other.labels",
                "found a value known only after apply",
            ),
        ];
        for (for_each, expected) in cases {
            let text = format!(
                "resource \"google_pubsub_topic\" \"other\" {{}}\nresource \"google_pubsub_topic\" \"t\" {{\n  for_each = {for_each}\n}}\n"
            );
            let message = error_at(resources(&text), "mem/main.tf", 3);
            assert!(message.contains(expected), "{for_each}: {message}");
        }
    }

    #[test]
    fn each_has_only_key_and_value() {
        let text = "resource \"google_pubsub_topic\" \"t\" {\n  for_each = toset([\"a\"])\n  name = each.index\n}\n";
        let message = error_at(resources(text), "mem/main.tf", 3);
        assert!(
            message.contains("`each.index` does not resolve: use each.key or each.value"),
            "{message}"
        );
    }

    #[test]
    fn meta_arguments_are_kept_as_names_or_rejected() {
        let text = r#"
resource "google_pubsub_topic" "t" {}

resource "google_pubsub_topic" "u" {
  depends_on = [google_pubsub_topic.t]
  lifecycle {
    prevent_destroy = true
    ignore_changes  = [labels]
  }
}
"#;
        let out = resources(text).unwrap();
        let u = &out[1].body;
        assert_eq!(
            u.value("depends_on"),
            Some(&list([Value::Unknown("google_pubsub_topic.t".into())]))
        );
        assert_eq!(
            u.lookup(&["lifecycle", "prevent_destroy"])
                .map(|a| &a.value),
            Some(&Value::Bool(true))
        );
        assert_eq!(
            u.lookup(&["lifecycle", "ignore_changes"]).map(|a| &a.value),
            Some(&list([Value::Unknown("labels".into())]))
        );
        assert_eq!(
            u.lookup(&["lifecycle", "ignore_changes"])
                .map(|a| a.location.line),
            Some(8)
        );
    }

    #[test]
    fn constructs_outside_the_subset_are_errors_with_file_and_line() {
        let cases = [
            ("count = 2", "`count` is not understood"),
            (
                "depends_on = \"x\"",
                "this meta-argument value is not understood",
            ),
            (
                "dynamic \"d\" {\n  }",
                "a `dynamic` block is not understood",
            ),
            (
                "provisioner \"local-exec\" {\n  }",
                "a `provisioner` block is not understood",
            ),
            (
                "lifecycle {\n    precondition {\n    }\n  }",
                "a lifecycle precondition or postcondition",
            ),
            (
                "lifecycle {\n    create = true\n  }",
                "lifecycle argument `create` is not understood",
            ),
        ];
        for (body, expected) in cases {
            let text = format!("resource \"google_pubsub_topic\" \"t\" {{\n  {body}\n}}\n");
            let line = if body.starts_with("lifecycle") { 3 } else { 2 };
            let message = error_at(resources(&text), "mem/main.tf", line);
            assert!(message.contains(expected), "{body}: {message}");
        }
    }

    #[test]
    fn providers_and_outputs_are_evaluated_even_when_unused() {
        let provider = "provider \"google\" {\n  project = var.project\n}\n";
        let message = error_at(resources(provider), "mem/main.tf", 2);
        assert!(
            message.contains("`var.project` does not resolve"),
            "{message}"
        );
        let output = "output \"o\" {\n  value = 1\n  foo   = 2\n}\n";
        let message = error_at(resources(output), "mem/main.tf", 3);
        assert!(
            message.contains("output argument `foo` is not understood"),
            "{message}"
        );
        let output = "output \"o\" {\n  description = \"d\"\n}\n";
        let message = error_at(resources(output), "mem/main.tf", 1);
        assert!(message.ends_with("output `o` has no `value`"), "{message}");
    }

    const CHILD: &str = r#"
variable "prefix" {}

resource "google_pubsub_topic" "t" {
  for_each = toset(["raw"])
  name     = "${var.prefix}.${each.key}"
}

output "topic_id" {
  value = google_pubsub_topic.t["raw"].id
}

output "names" {
  value = [for t in google_pubsub_topic.t : t.name]
}
"#;

    #[test]
    fn child_modules_hand_out_outputs_and_their_resources() {
        let root = r#"
module "backbone" {
  source = "../../modules/backbone"
  prefix = "events"
}

resource "google_pubsub_subscription" "s" {
  name   = module.backbone.names[0]
  topic  = module.backbone.topic_id
}
"#;
        let tree = Tree::new(&[
            ("envs/test/main.tf", root),
            ("modules/backbone/main.tf", CHILD),
        ]);
        let config = tree.load().unwrap();
        assert_eq!(
            attr(
                &config,
                r#"module.backbone.google_pubsub_topic.t["raw"]"#,
                "name"
            ),
            s("events.raw")
        );
        assert_eq!(
            attr(&config, "google_pubsub_subscription.s", "name"),
            s("events.raw")
        );
        let topic = attr(&config, "google_pubsub_subscription.s", "topic");
        assert_eq!(
            topic.render().as_deref(),
            Some(r#"${module.backbone.google_pubsub_topic.t["raw"].id}"#)
        );
        assert_eq!(
            config
                .resolve_name(&topic, "google_pubsub_topic")
                .as_deref(),
            Some("events.raw")
        );
    }

    #[test]
    fn nested_modules_get_nested_addresses() {
        let root = "module \"a\" {\n  source = \"../../modules/a\"\n}\n";
        let a = "module \"b\" {\n  source = \"../b\"\n  prefix = \"x\"\n}\n";
        let tree = Tree::new(&[
            ("envs/test/main.tf", root),
            ("modules/a/main.tf", a),
            ("modules/b/main.tf", CHILD),
        ]);
        let config = tree.load().unwrap();
        assert_eq!(
            attr(
                &config,
                r#"module.a.module.b.google_pubsub_topic.t["raw"]"#,
                "name"
            ),
            s("x.raw")
        );
    }

    #[test]
    fn module_calls_outside_the_subset_are_errors() {
        let cases = [
            (
                "source = \"hashicorp/x/google\"",
                2,
                "a module source that is not a local path",
            ),
            (
                "source = \"../../modules/backbone\"\n  for_each = {}",
                3,
                "module meta-argument `for_each`",
            ),
            (
                "prefix = \"events\"",
                1,
                "module `backbone` has no `source`",
            ),
            (
                "source = \"../../modules/backbone\"\n  providers {\n  }",
                3,
                "a block inside a module call",
            ),
            (
                "source = \"../../modules/backbone\"\n  prefix = \"e\"\n  other = 1",
                4,
                "`other` is not a declared variable of",
            ),
        ];
        for (body, line, expected) in cases {
            let root = format!("module \"backbone\" {{\n  {body}\n}}\n");
            let tree = Tree::new(&[
                ("envs/test/main.tf", &root),
                ("modules/backbone/main.tf", CHILD),
            ]);
            let message = error_at(tree.load(), "envs/test/main.tf", line);
            assert!(message.contains(expected), "{body}: {message}");
        }
        let root = "module \"backbone\" {\n  source = \"../../modules/backbone\"\n  prefix = \"e\"\n}\nlocals {\n  x = module.backbone.nope\n}\n";
        let tree = Tree::new(&[
            ("envs/test/main.tf", root),
            ("modules/backbone/main.tf", CHILD),
        ]);
        let message = error_at(tree.load(), "envs/test/main.tf", 6);
        assert!(
            message.contains("`module.backbone.nope` does not resolve: declare `output \"nope\"`"),
            "{message}"
        );
    }
}

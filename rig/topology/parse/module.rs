//! One module instance being evaluated: its locals (lazily, with cycle detection), resource
//! instances expanded by `for_each`, outputs, and the child modules it calls.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use hcl::edit::expr::Expression;
use hcl::edit::structure::{Body, Structure};

use super::source::{Item, ModuleSource, Sp, normalize, sp};
use super::variables::Provided;
use super::{Address, EvalAttr, EvalBlock, EvalBody, Mode, ResourceInstance, Value};
use crate::{Location, TopologyError};

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

//! References: `var.`, `local.`, `each.`, `module.`, `data.` and resource addresses, indexing
//! into instances, and reading a resource's attributes. An attribute the configuration does
//! not set stays a [`Value::Ref`] to what the provider computes after apply.

use hcl::edit::expr::{Expression, Traversal, TraversalOperator};

use super::module::{ModuleEval, Scope};
use super::source::{Sp, sp};
use super::{Address, Mode, Reference, Value};
use crate::TopologyError;

impl ModuleEval {
    pub(super) fn traversal(&self, t: &Traversal, scope: &Scope) -> Result<Value, TopologyError> {
        let span = sp(t);
        let ops: Vec<&TraversalOperator> = t.operators.iter().map(|o| o.value()).collect();
        let attr_at = |i: usize| {
            match ops.get(i) {
            Some(TraversalOperator::GetAttr(name)) => Ok(name.as_str().to_string()),
            _ => Err(self.unsupported(scope, span, format!("reference `{}`", self.src.files[scope.file].snippet(span)), "write it as var.x, local.x, each.key/value, module.m.output, data.t.n.attr or t.n.attr")),
        }
        };
        let Expression::Variable(root) = &t.expr else {
            let value = self.eval(&t.expr, scope)?;
            return self.apply(value, &ops, scope, span);
        };
        let root = root.as_str();
        if let Some(value) = scope.name(root) {
            return self.apply(value.clone(), &ops, scope, span);
        }
        let unresolved = |reference: String, hint: &str| TopologyError::Unresolved {
            location: self.loc(scope, span),
            reference,
            hint: hint.to_string(),
        };
        match root {
            "var" => {
                let name = attr_at(0)?;
                let value = self.vars.get(&name).cloned().ok_or_else(|| {
                    unresolved(
                        format!("var.{name}"),
                        "declare the variable in this module's variables.tf",
                    )
                })?;
                self.apply(value, &ops[1..], scope, span)
            }
            "local" => {
                let name = attr_at(0)?;
                let value = self.local(&name, &self.loc(scope, span))?;
                self.apply(value, &ops[1..], scope, span)
            }
            "each" => {
                let (key, value) = scope.each.clone().ok_or_else(|| {
                    unresolved(
                        "each".into(),
                        "`each` is only valid in a resource with for_each",
                    )
                })?;
                let value = match attr_at(0)?.as_str() {
                    "key" => key,
                    "value" => value,
                    other => {
                        return Err(unresolved(
                            format!("each.{other}"),
                            "use each.key or each.value",
                        ));
                    }
                };
                self.apply(value, &ops[1..], scope, span)
            }
            "module" => {
                let name = attr_at(0)?;
                let output = attr_at(1)?;
                let child = self.child(&name, scope, span)?;
                let value = child.output(&output, &self.loc(scope, span))?;
                self.apply(value, &ops[2..], scope, span)
            }
            "data" => {
                let rtype = attr_at(0)?;
                let name = attr_at(1)?;
                self.resource(Mode::Data, &rtype, &name, &ops[2..], scope, span)
            }
            "path" | "terraform" | "count" | "self" => Err(self.unsupported(
                scope,
                span,
                format!("`{root}.` references"),
                "pass the value in as a variable",
            )),
            rtype => {
                let name = attr_at(0)?;
                self.resource(Mode::Managed, rtype, &name, &ops[1..], scope, span)
            }
        }
    }

    pub(super) fn resource(
        &self,
        mode: Mode,
        rtype: &str,
        name: &str,
        ops: &[&TraversalOperator],
        scope: &Scope,
        span: Sp,
    ) -> Result<Value, TopologyError> {
        let prefix = if mode == Mode::Data { "data." } else { "" };
        let item = self
            .src
            .resources
            .get(&(mode, rtype.to_string(), name.to_string()))
            .ok_or_else(|| TopologyError::Unresolved {
                location: self.loc(scope, span),
                reference: format!("{prefix}{rtype}.{name}"),
                hint: format!(
                    "no such {} in {}; check the name",
                    if mode == Mode::Data {
                        "data source"
                    } else {
                        "resource"
                    },
                    self.src.dir.display()
                ),
            })?;
        let address = |key: Option<String>| Address {
            module: self.path.clone(),
            mode,
            rtype: rtype.to_string(),
            name: name.to_string(),
            key,
        };
        let instances = self.instances(mode, rtype, name, item)?;
        match instances.as_ref() {
            None => self.apply(
                Value::Ref(Reference {
                    address: address(None),
                    path: Vec::new(),
                }),
                ops,
                scope,
                span,
            ),
            Some(map) => match ops.first() {
                Some(TraversalOperator::Index(key_expr)) => {
                    let key = match self.eval(key_expr, scope)? {
                        Value::String(k) => k,
                        other => {
                            return Err(self.invalid(
                                scope,
                                sp(key_expr),
                                format!("instance key is a {}, not a string", other.type_name()),
                            ));
                        }
                    };
                    if !map.contains_key(&key) {
                        return Err(TopologyError::Unresolved {
                            location: self.loc(scope, span),
                            reference: format!("{prefix}{rtype}.{name}[{key:?}]"),
                            hint: format!("for_each has keys {:?}", map.keys().collect::<Vec<_>>()),
                        });
                    }
                    self.apply(
                        Value::Ref(Reference {
                            address: address(Some(key)),
                            path: Vec::new(),
                        }),
                        &ops[1..],
                        scope,
                        span,
                    )
                }
                _ => {
                    let all = map
                        .keys()
                        .map(|k| {
                            (
                                k.clone(),
                                Value::Ref(Reference {
                                    address: address(Some(k.clone())),
                                    path: Vec::new(),
                                }),
                            )
                        })
                        .collect();
                    self.apply(Value::Map(all), ops, scope, span)
                }
            },
        }
    }

    /// Reads `attr` of a resource instance: its configured value when the configuration sets
    /// it, otherwise a reference to what the provider will compute.
    pub(super) fn resource_attr(
        &self,
        reference: &Reference,
        attr: &str,
        scope: &Scope,
        span: Sp,
    ) -> Result<Value, TopologyError> {
        let address = &reference.address;
        if address.module != self.path {
            // Outputs of a child can hand out its resources; their configuration is not in scope here.
            return Ok(Value::Ref(Reference {
                address: address.clone(),
                path: vec![attr.to_string()],
            }));
        }
        let item = self
            .src
            .resources
            .get(&(address.mode, address.rtype.clone(), address.name.clone()))
            .ok_or_else(|| {
                self.invalid(scope, span, format!("{address} vanished while evaluating"))
            })?;
        let Some(configured) = item.block.body.get_attribute(attr) else {
            return Ok(Value::Ref(Reference {
                address: address.clone(),
                path: vec![attr.to_string()],
            }));
        };
        let each = match &address.key {
            None => None,
            Some(key) => {
                let instances =
                    self.instances(address.mode, &address.rtype, &address.name, item)?;
                let value = instances
                    .as_ref()
                    .as_ref()
                    .and_then(|m| m.get(key))
                    .cloned()
                    .unwrap_or(Value::Null);
                Some((Value::String(key.clone()), value))
            }
        };
        let inner = Scope {
            file: item.file,
            each,
            names: Vec::new(),
        };
        self.enter(format!("{address}.{attr}"), &self.loc(scope, span))?;
        let value = self.eval(&configured.value, &inner);
        self.leave();
        value
    }

    pub(super) fn apply(
        &self,
        mut value: Value,
        ops: &[&TraversalOperator],
        scope: &Scope,
        span: Sp,
    ) -> Result<Value, TopologyError> {
        for op in ops {
            value = match (op, value) {
                (TraversalOperator::GetAttr(name), Value::Ref(r)) if r.path.is_empty() => {
                    self.resource_attr(&r, name.as_str(), scope, span)?
                }
                (TraversalOperator::GetAttr(name), Value::Ref(mut r)) => {
                    r.path.push(name.to_string());
                    Value::Ref(r)
                }
                (TraversalOperator::Index(e), Value::Ref(mut r)) => {
                    let index = self.eval(e, scope)?.render().unwrap_or_default();
                    match r.path.last_mut() {
                        Some(last) => last.push_str(&format!("[{index}]")),
                        None => r.path.push(format!("[{index}]")),
                    }
                    Value::Ref(r)
                }
                (TraversalOperator::LegacyIndex(i), Value::Ref(mut r)) => {
                    r.path.push(format!("[{}]", i.value()));
                    Value::Ref(r)
                }
                (TraversalOperator::GetAttr(name), Value::Map(mut map)) => map
                    .remove(name.as_str())
                    .ok_or_else(|| TopologyError::Unresolved {
                        location: self.loc(scope, span),
                        reference: self.src.files[scope.file].snippet(span),
                        hint: format!("the object has no attribute `{}`", name.as_str()),
                    })?,
                (TraversalOperator::Index(e), container) => {
                    let key = self.eval(e, scope)?;
                    self.index(container, &key, scope, span)?
                }
                (TraversalOperator::LegacyIndex(i), container) => {
                    self.index(container, &Value::Number(*i.value() as f64), scope, span)?
                }
                (TraversalOperator::AttrSplat(_) | TraversalOperator::FullSplat(_), _) => {
                    return Err(self.unsupported(
                        scope,
                        span,
                        "a splat expression",
                        "use a for expression",
                    ));
                }
                (TraversalOperator::GetAttr(name), other) => {
                    return Err(self.invalid(
                        scope,
                        span,
                        format!(
                            "cannot read `.{}` of a {}",
                            name.as_str(),
                            other.type_name()
                        ),
                    ));
                }
            };
        }
        Ok(value)
    }

    pub(super) fn index(
        &self,
        container: Value,
        key: &Value,
        scope: &Scope,
        span: Sp,
    ) -> Result<Value, TopologyError> {
        let missing = || TopologyError::Unresolved {
            location: self.loc(scope, span),
            reference: self.src.files[scope.file].snippet(span),
            hint: format!("no element {}", key.render().unwrap_or_default()),
        };
        match (container, key) {
            (Value::List(items), Value::Number(n)) if n.fract() == 0.0 && *n >= 0.0 => {
                items.into_iter().nth(*n as usize).ok_or_else(missing)
            }
            (Value::Map(mut map), Value::String(k)) => map.remove(k).ok_or_else(missing),
            (other, _) => Err(self.invalid(
                scope,
                span,
                format!(
                    "cannot index a {} with a {}",
                    other.type_name(),
                    key.type_name()
                ),
            )),
        }
    }
}

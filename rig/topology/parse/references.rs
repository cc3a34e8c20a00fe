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

#[cfg(test)]
mod tests {
    use super::super::testing::{error_at, eval_with, list, map, n, s};
    use super::*;

    const TOPICS: &str = r#"
resource "google_pubsub_topic" "t" {
  for_each = toset(["raw", "dlq"])
  name     = "events.${each.key}"
  labels   = { env = "dev" }
}

resource "google_pubsub_topic" "single" {}

resource "google_pubsub_subscription" "s" {
  for_each             = { raw = { ack = 10 } }
  ack_deadline_seconds = each.value.ack
}

data "google_project" "p" {}

locals {
  l   = ["a", "b"]
  m   = { a = 1 }
  str = "text"
}
"#;

    fn topics(expr: &str) -> Result<Value, TopologyError> {
        eval_with(TOPICS, expr)
    }

    fn topic_ref(key: Option<&str>, path: &[&str]) -> Value {
        Value::Ref(Reference {
            address: Address {
                module: String::new(),
                mode: Mode::Managed,
                rtype: "google_pubsub_topic".into(),
                name: if key.is_some() { "t" } else { "single" }.into(),
                key: key.map(str::to_string),
            },
            path: path.iter().map(|p| p.to_string()).collect(),
        })
    }

    #[test]
    fn configured_attributes_are_read_with_each_bound_to_the_instance() {
        assert_eq!(
            topics(r#"google_pubsub_topic.t["raw"].name"#).unwrap(),
            s("events.raw")
        );
        assert_eq!(
            topics(r#"google_pubsub_topic.t["dlq"].labels.env"#).unwrap(),
            s("dev")
        );
        assert_eq!(
            topics(r#"google_pubsub_subscription.s["raw"].ack_deadline_seconds"#).unwrap(),
            n(10.0)
        );
    }

    #[test]
    fn attributes_only_the_provider_knows_stay_references() {
        assert_eq!(
            topics(r#"google_pubsub_topic.t["raw"].id"#).unwrap(),
            topic_ref(Some("raw"), &["id"])
        );
        assert_eq!(
            topics("google_pubsub_topic.single.id").unwrap(),
            topic_ref(None, &["id"])
        );
        let nested = topics("google_pubsub_topic.single.a.b[0]").unwrap();
        assert_eq!(nested, topic_ref(None, &["a", "b[0]"]));
        assert_eq!(
            nested.render().as_deref(),
            Some("${google_pubsub_topic.single.a.b[0]}")
        );
        let data = topics("data.google_project.p.number").unwrap();
        assert_eq!(
            data.render().as_deref(),
            Some("${data.google_project.p.number}")
        );
        assert!(matches!(&data, Value::Ref(r) if r.address.mode == Mode::Data));
    }

    #[test]
    fn a_resource_with_for_each_is_a_map_of_its_instances() {
        assert_eq!(
            topics("google_pubsub_topic.t").unwrap(),
            map([
                ("dlq", topic_ref(Some("dlq"), &[])),
                ("raw", topic_ref(Some("raw"), &[]))
            ])
        );
        assert_eq!(
            topics("[for t in google_pubsub_topic.t : t.name]").unwrap(),
            list([s("events.dlq"), s("events.raw")])
        );
    }

    #[test]
    fn instance_keys_must_exist_and_be_strings() {
        let message = error_at(
            topics(r#"google_pubsub_topic.t["x"].name"#),
            "mem/main.tf",
            2,
        );
        assert!(
            message.contains(
                r#"`google_pubsub_topic.t["x"]` does not resolve: for_each has keys ["dlq", "raw"]"#
            ),
            "{message}"
        );
        let message = error_at(topics("google_pubsub_topic.t[1].name"), "mem/main.tf", 2);
        assert!(
            message.ends_with("instance key is a number, not a string"),
            "{message}"
        );
    }

    #[test]
    fn unknown_resources_and_roots_are_errors() {
        let cases = [
            (
                "google_pubsub_topic.missing.id",
                "`google_pubsub_topic.missing` does not resolve: no such resource in mem",
            ),
            (
                "data.google_project.q.id",
                "`data.google_project.q` does not resolve: no such data source in mem",
            ),
            (
                "var.nope",
                "`var.nope` does not resolve: declare the variable",
            ),
            (
                "local.nope",
                "`local.nope` does not resolve: declare it in a `locals` block",
            ),
            ("module.nope.out", "`module.nope` does not resolve"),
            (
                "each.key",
                "`each` does not resolve: `each` is only valid in a resource with for_each",
            ),
            ("path.module", "`path.` references is not understood"),
            (
                "google_pubsub_topic.single[*].id",
                "a splat expression is not understood",
            ),
        ];
        for (expr, expected) in cases {
            let message = error_at(topics(expr), "mem/main.tf", 2);
            assert!(message.contains(expected), "{expr}: {message}");
        }
    }

    #[test]
    fn indexing_and_attributes_of_known_values() {
        assert_eq!(topics("local.l[1]").unwrap(), s("b"));
        assert_eq!(topics("local.l.0").unwrap(), s("a"));
        assert_eq!(topics(r#"local.m["a"]"#).unwrap(), n(1.0));
        let cases = [
            ("local.l[5]", "`local.l[5]` does not resolve: no element 5"),
            (r#"local.l["a"]"#, "cannot index a list with a string"),
            (
                "local.m.b",
                "`local.m.b` does not resolve: the object has no attribute `b`",
            ),
            ("local.str.x", "cannot read `.x` of a string"),
        ];
        for (expr, expected) in cases {
            let message = error_at(topics(expr), "mem/main.tf", 2);
            assert!(message.contains(expected), "{expr}: {message}");
        }
    }

    #[test]
    fn resources_reading_each_other_in_a_circle_are_a_cycle() {
        let text = r#"
resource "google_pubsub_topic" "a" {
  name = google_pubsub_topic.b.name
}

resource "google_pubsub_topic" "b" {
  name = google_pubsub_topic.a.name
}
"#;
        let message = error_at(
            eval_with(text, "google_pubsub_topic.a.name"),
            "mem/main.tf",
            10,
        );
        assert!(
            message.contains("google_pubsub_topic.a.name -> google_pubsub_topic.b.name -> google_pubsub_topic.a.name; break the cycle"),
            "{message}"
        );
    }
}

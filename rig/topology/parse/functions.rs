//! The Terraform functions the parser supports; any other is an error naming file and line.

use std::collections::{BTreeMap, BTreeSet};

use hcl::edit::expr::FuncCall;

use super::Value;
use super::module::{ModuleEval, Scope};
use super::source::sp;
use super::value::format_number;
use crate::TopologyError;

impl ModuleEval {
    pub(super) fn call(&self, call: &FuncCall, scope: &Scope) -> Result<Value, TopologyError> {
        let span = sp(call);
        let name = call.name.name.as_str();
        let hint = "the topology parser knows merge, concat, contains, length, keys, values, toset, tolist, tomap, tostring, tonumber, lower, upper, join and distinct; rewrite the expression or add the function to rig/topology/parse/functions.rs";
        if call.name.is_namespaced() || call.args.expand_final() {
            return Err(self.unsupported(
                scope,
                span,
                format!("call to `{}`", self.src.files[scope.file].snippet(span)),
                hint,
            ));
        }
        let args: Vec<Value> = call
            .args
            .iter()
            .map(|a| self.eval(a, scope))
            .collect::<Result<_, _>>()?;
        let bad = |what: &str| self.invalid(scope, span, format!("{name}(): {what}"));
        let arity = |n: usize| {
            if args.len() == n {
                Ok(())
            } else {
                Err(bad(&format!("takes {n} argument(s), got {}", args.len())))
            }
        };
        let string_list = |v: &Value| -> Result<Vec<String>, TopologyError> {
            match v {
                Value::List(items) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| bad("needs a list of strings"))
                    })
                    .collect(),
                _ => Err(bad("needs a list of strings")),
            }
        };
        match name {
            "merge" => {
                let mut out = BTreeMap::new();
                for arg in args {
                    match arg {
                        Value::Map(map) => out.extend(map),
                        Value::Null => {}
                        other => {
                            return Err(bad(&format!("needs maps, found a {}", other.type_name())));
                        }
                    }
                }
                Ok(Value::Map(out))
            }
            "concat" => {
                let mut out = Vec::new();
                for arg in args {
                    match arg {
                        Value::List(items) => out.extend(items),
                        other => {
                            return Err(bad(&format!(
                                "needs lists, found a {}",
                                other.type_name()
                            )));
                        }
                    }
                }
                Ok(Value::List(out))
            }
            "contains" => {
                arity(2)?;
                match &args[0] {
                    Value::List(items) => Ok(Value::Bool(items.contains(&args[1]))),
                    other => Err(bad(&format!("needs a list, found a {}", other.type_name()))),
                }
            }
            "length" => {
                arity(1)?;
                match &args[0] {
                    Value::List(items) => Ok(Value::Number(items.len() as f64)),
                    Value::Map(map) => Ok(Value::Number(map.len() as f64)),
                    Value::String(s) => Ok(Value::Number(s.chars().count() as f64)),
                    other => Err(bad(&format!(
                        "needs a list, map or string, found a {}",
                        other.type_name()
                    ))),
                }
            }
            "keys" | "values" => {
                arity(1)?;
                match &args[0] {
                    Value::Map(map) if name == "keys" => Ok(Value::List(
                        map.keys().cloned().map(Value::String).collect(),
                    )),
                    Value::Map(map) => Ok(Value::List(map.values().cloned().collect())),
                    other => Err(bad(&format!("needs a map, found a {}", other.type_name()))),
                }
            }
            "toset" | "distinct" => {
                arity(1)?;
                let mut items = string_list(&args[0])?;
                if name == "toset" {
                    // Terraform iterates a set of strings in lexical order.
                    items.sort();
                }
                let mut seen = BTreeSet::new();
                items.retain(|i| seen.insert(i.clone()));
                Ok(Value::List(items.into_iter().map(Value::String).collect()))
            }
            "tolist" | "tomap" | "tostring" | "tonumber" => {
                arity(1)?;
                match (name, &args[0]) {
                    ("tolist", v @ Value::List(_))
                    | ("tomap", v @ Value::Map(_))
                    | ("tostring", v @ Value::String(_))
                    | ("tonumber", v @ Value::Number(_)) => Ok(v.clone()),
                    ("tostring", Value::Number(n)) => Ok(Value::String(format_number(*n))),
                    ("tostring", Value::Bool(b)) => Ok(Value::String(b.to_string())),
                    ("tonumber", Value::String(s)) => s
                        .parse()
                        .map(Value::Number)
                        .map_err(|_| bad(&format!("`{s}` is not a number"))),
                    (_, other) => Err(bad(&format!("cannot convert a {}", other.type_name()))),
                }
            }
            "lower" | "upper" => {
                arity(1)?;
                let s = args[0].as_str().ok_or_else(|| bad("needs a string"))?;
                Ok(Value::String(if name == "lower" {
                    s.to_lowercase()
                } else {
                    s.to_uppercase()
                }))
            }
            "join" => {
                arity(2)?;
                let separator = args[0]
                    .as_str()
                    .ok_or_else(|| bad("needs a separator string"))?;
                Ok(Value::String(string_list(&args[1])?.join(separator)))
            }
            _ => Err(self.unsupported(scope, span, format!("function `{name}`"), hint)),
        }
    }
}

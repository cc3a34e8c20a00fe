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

#[cfg(test)]
mod tests {
    use super::super::testing::{error_at, eval, eval_with, list, map, n, s};
    use super::*;

    #[test]
    fn merge_lets_later_maps_win_and_skips_null() {
        assert_eq!(
            eval(r#"merge({ a = 1, b = 2 }, null, { b = 3, c = "x" })"#).unwrap(),
            map([("a", n(1.0)), ("b", n(3.0)), ("c", s("x"))])
        );
        let message = error_at(eval("merge({}, [1])"), "mem/main.tf", 2);
        assert!(
            message.contains("merge(): needs maps, found a list"),
            "{message}"
        );
    }

    #[test]
    fn concat_joins_lists_in_order() {
        assert_eq!(
            eval(r#"concat(["a"], [], ["b", "a"])"#).unwrap(),
            list([s("a"), s("b"), s("a")])
        );
        let message = error_at(eval(r#"concat(["a"], "b")"#), "mem/main.tf", 2);
        assert!(
            message.contains("concat(): needs lists, found a string"),
            "{message}"
        );
    }

    #[test]
    fn contains_compares_whole_values() {
        assert_eq!(
            eval(r#"contains(["a", "b"], "b")"#).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            eval(r#"contains(["a", "b"], "c")"#).unwrap(),
            Value::Bool(false)
        );
        assert_eq!(eval(r#"contains([1], "1")"#).unwrap(), Value::Bool(false));
        let message = error_at(eval(r#"contains("ab", "a")"#), "mem/main.tf", 2);
        assert!(
            message.contains("contains(): needs a list, found a string"),
            "{message}"
        );
    }

    #[test]
    fn length_counts_items_entries_and_characters() {
        assert_eq!(eval("length([1, 2, 3])").unwrap(), n(3.0));
        assert_eq!(eval("length({ a = 1 })").unwrap(), n(1.0));
        assert_eq!(eval(r#"length("héllo")"#).unwrap(), n(5.0));
        let message = error_at(eval("length([1], [2])"), "mem/main.tf", 2);
        assert!(
            message.contains("length(): takes 1 argument(s), got 2"),
            "{message}"
        );
        let message = error_at(eval("length(true)"), "mem/main.tf", 2);
        assert!(
            message.contains("needs a list, map or string, found a bool"),
            "{message}"
        );
    }

    #[test]
    fn keys_and_values_follow_key_order() {
        assert_eq!(
            eval("keys({ b = 1, a = 2 })").unwrap(),
            list([s("a"), s("b")])
        );
        assert_eq!(
            eval("values({ b = 1, a = 2 })").unwrap(),
            list([n(2.0), n(1.0)])
        );
        let message = error_at(eval("keys([1])"), "mem/main.tf", 2);
        assert!(
            message.contains("keys(): needs a map, found a list"),
            "{message}"
        );
    }

    #[test]
    fn toset_sorts_and_distinct_keeps_first_occurrences() {
        assert_eq!(
            eval(r#"toset(["b", "a", "b"])"#).unwrap(),
            list([s("a"), s("b")])
        );
        assert_eq!(
            eval(r#"distinct(["b", "a", "b"])"#).unwrap(),
            list([s("b"), s("a")])
        );
        let message = error_at(eval("toset([1])"), "mem/main.tf", 2);
        assert!(
            message.contains("toset(): needs a list of strings"),
            "{message}"
        );
    }

    #[test]
    fn conversions_accept_what_terraform_converts() {
        assert_eq!(eval("tostring(5)").unwrap(), s("5"));
        assert_eq!(eval("tostring(true)").unwrap(), s("true"));
        assert_eq!(eval(r#"tostring("x")"#).unwrap(), s("x"));
        assert_eq!(eval(r#"tonumber("2.5")"#).unwrap(), n(2.5));
        assert_eq!(eval("tolist([1])").unwrap(), list([n(1.0)]));
        assert_eq!(eval("tomap({ a = 1 })").unwrap(), map([("a", n(1.0))]));
        let message = error_at(eval(r#"tonumber("ten")"#), "mem/main.tf", 2);
        assert!(
            message.contains("tonumber(): `ten` is not a number"),
            "{message}"
        );
        let message = error_at(eval("tolist({})"), "mem/main.tf", 2);
        assert!(
            message.contains("tolist(): cannot convert a map"),
            "{message}"
        );
    }

    #[test]
    fn case_and_join_work_on_strings() {
        assert_eq!(eval(r#"lower("Events.RAW")"#).unwrap(), s("events.raw"));
        assert_eq!(eval(r#"upper("dlq")"#).unwrap(), s("DLQ"));
        assert_eq!(
            eval(r#"join(".", ["events", "raw"])"#).unwrap(),
            s("events.raw")
        );
        let message = error_at(eval(r#"join(".", [1])"#), "mem/main.tf", 2);
        assert!(
            message.contains("join(): needs a list of strings"),
            "{message}"
        );
        let message = error_at(eval("upper(1)"), "mem/main.tf", 2);
        assert!(message.contains("upper(): needs a string"), "{message}");
    }

    #[test]
    fn an_unsupported_function_is_an_error_naming_file_and_line() {
        let message = error_at(eval(r#"format("%s", "a")"#), "mem/main.tf", 2);
        assert!(
            message.starts_with("mem/main.tf:2: function `format` is not understood"),
            "{message}"
        );
        assert!(
            message.contains("rig/topology/parse/functions.rs"),
            "{message}"
        );
        let message = error_at(eval("merge([{}]...)"), "mem/main.tf", 2);
        assert!(message.contains("call to `merge([{}]...)`"), "{message}");
        let message = error_at(eval(r#"provider::p::f("a")"#), "mem/main.tf", 2);
        assert!(
            message.contains(r#"call to `provider::p::f("a")`"#),
            "{message}"
        );
    }

    #[test]
    fn arguments_are_evaluated_before_the_call() {
        let message = error_at(eval("length(var.missing)"), "mem/main.tf", 2);
        assert!(
            message.contains("`var.missing` does not resolve"),
            "{message}"
        );
        // A value known after apply is not a string, so string functions refuse it.
        let resource = r#"resource "google_pubsub_topic" "t" {}"#;
        let message = error_at(
            eval_with(resource, "lower(google_pubsub_topic.t.id)"),
            "mem/main.tf",
            2,
        );
        assert!(message.contains("lower(): needs a string"), "{message}");
    }
}

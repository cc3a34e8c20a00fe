//! Expressions known before apply: literals, collections, templates, conditionals, operators
//! and `for` expressions.

use std::collections::BTreeMap;

use hcl::edit::expr::{BinaryOperator, Expression, ForExpr, ObjectKey, UnaryOperator};
use hcl::edit::template::{Element, Template};

use super::Value;
use super::module::{ModuleEval, Scope};
use super::source::{Sp, sp};
use super::value::format_number;
use crate::TopologyError;

impl ModuleEval {
    pub(super) fn eval(&self, expr: &Expression, scope: &Scope) -> Result<Value, TopologyError> {
        let span = sp(expr);
        match expr {
            Expression::Null(_) => Ok(Value::Null),
            Expression::Bool(b) => Ok(Value::Bool(*b.value())),
            Expression::Number(n) => n
                .value()
                .as_f64()
                .map(Value::Number)
                .ok_or_else(|| self.invalid(scope, span, "number out of range")),
            Expression::String(s) => Ok(Value::String(s.value().clone())),
            Expression::Array(items) => items
                .iter()
                .map(|e| self.eval(e, scope))
                .collect::<Result<_, _>>()
                .map(Value::List),
            Expression::Object(object) => {
                let mut map = BTreeMap::new();
                for (key, value) in object.iter() {
                    let key = match key {
                        ObjectKey::Ident(ident) => ident.to_string(),
                        ObjectKey::Expression(e) => match self.eval(e, scope)? {
                            Value::String(s) => s,
                            Value::Number(n) => format_number(n),
                            other => {
                                return Err(self.invalid(
                                    scope,
                                    sp(e),
                                    format!("object key is a {}, not a string", other.type_name()),
                                ));
                            }
                        },
                    };
                    map.insert(key, self.eval(value.expr(), scope)?);
                }
                Ok(Value::Map(map))
            }
            Expression::StringTemplate(t) => self.template(t, scope, span),
            Expression::HeredocTemplate(h) => {
                let mut heredoc = (**h).clone();
                heredoc.dedent();
                self.template(&heredoc.template, scope, span)
            }
            Expression::Parenthesis(p) => self.eval(p.inner(), scope),
            Expression::Variable(v) => {
                let name = v.as_str();
                scope.name(name).cloned().ok_or_else(|| TopologyError::Unresolved {
                    location: self.loc(scope, span),
                    reference: name.to_string(),
                    hint: "a bare name is only valid inside a `for` expression; use var., local., each. or a resource address".into(),
                })
            }
            Expression::Conditional(c) => match self.eval(&c.cond_expr, scope)? {
                Value::Bool(true) => self.eval(&c.true_expr, scope),
                Value::Bool(false) => self.eval(&c.false_expr, scope),
                other => Err(self.invalid(
                    scope,
                    span,
                    format!(
                        "condition is a {}, not a bool known before apply",
                        other.type_name()
                    ),
                )),
            },
            Expression::FuncCall(call) => self.call(call, scope),
            Expression::Traversal(t) => self.traversal(t, scope),
            Expression::UnaryOp(op) => {
                let value = self.eval(&op.expr, scope)?;
                match (op.operator.value(), value) {
                    (UnaryOperator::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
                    (UnaryOperator::Neg, Value::Number(n)) => Ok(Value::Number(-n)),
                    (operator, other) => Err(self.invalid(
                        scope,
                        span,
                        format!("`{operator}` cannot apply to a {}", other.type_name()),
                    )),
                }
            }
            Expression::BinaryOp(op) => {
                let lhs = self.eval(&op.lhs_expr, scope)?;
                let rhs = self.eval(&op.rhs_expr, scope)?;
                self.binary(*op.operator.value(), lhs, rhs, scope, span)
            }
            Expression::ForExpr(f) => self.for_expr(f, scope),
        }
    }

    pub(super) fn template(
        &self,
        template: &Template,
        scope: &Scope,
        span: Sp,
    ) -> Result<Value, TopologyError> {
        let mut text = String::new();
        let mut known = true;
        for element in template.iter() {
            match element {
                Element::Literal(literal) => text.push_str(literal.value()),
                Element::Interpolation(interpolation) => {
                    let value = self.eval(&interpolation.expr, scope)?;
                    known &= !matches!(value, Value::Ref(_) | Value::Unknown(_));
                    match value.render() {
                        Some(part) => text.push_str(&part),
                        None => {
                            return Err(self.invalid(
                                scope,
                                sp(&interpolation.expr),
                                format!("cannot interpolate a {} into a string", value.type_name()),
                            ));
                        }
                    }
                }
                Element::Directive(_) => {
                    return Err(self.unsupported(
                        scope,
                        span,
                        "a template directive (%{if}/%{for})",
                        "build the string with a conditional or a for expression",
                    ));
                }
            }
        }
        Ok(if known {
            Value::String(text)
        } else {
            Value::Unknown(text)
        })
    }

    pub(super) fn binary(
        &self,
        operator: BinaryOperator,
        lhs: Value,
        rhs: Value,
        scope: &Scope,
        span: Sp,
    ) -> Result<Value, TopologyError> {
        use BinaryOperator as B;
        if matches!(lhs, Value::Ref(_) | Value::Unknown(_))
            || matches!(rhs, Value::Ref(_) | Value::Unknown(_))
        {
            return Err(self.unsupported(
                scope,
                span,
                format!("`{operator}` on a value known only after apply"),
                "compare values known before apply (variables, locals, literals)",
            ));
        }
        match (operator, lhs, rhs) {
            (B::Eq, l, r) => Ok(Value::Bool(l == r)),
            (B::NotEq, l, r) => Ok(Value::Bool(l != r)),
            (B::And, Value::Bool(l), Value::Bool(r)) => Ok(Value::Bool(l && r)),
            (B::Or, Value::Bool(l), Value::Bool(r)) => Ok(Value::Bool(l || r)),
            (op, Value::Number(l), Value::Number(r)) => Ok(match op {
                B::Less => Value::Bool(l < r),
                B::LessEq => Value::Bool(l <= r),
                B::Greater => Value::Bool(l > r),
                B::GreaterEq => Value::Bool(l >= r),
                B::Plus => Value::Number(l + r),
                B::Minus => Value::Number(l - r),
                B::Mul => Value::Number(l * r),
                B::Div => Value::Number(l / r),
                B::Mod => Value::Number(l % r),
                _ => {
                    return Err(self.invalid(
                        scope,
                        span,
                        format!("`{op}` cannot apply to numbers"),
                    ));
                }
            }),
            (op, l, r) => Err(self.invalid(
                scope,
                span,
                format!(
                    "`{op}` cannot apply to a {} and a {}",
                    l.type_name(),
                    r.type_name()
                ),
            )),
        }
    }

    pub(super) fn for_expr(&self, f: &ForExpr, scope: &Scope) -> Result<Value, TopologyError> {
        let span = sp(f);
        if f.grouping {
            return Err(self.unsupported(
                scope,
                span,
                "a grouping `...` for expression",
                "build the map without grouping",
            ));
        }
        let items: Vec<(Value, Value)> = match self.eval(&f.intro.collection_expr, scope)? {
            Value::List(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (Value::Number(i as f64), v))
                .collect(),
            Value::Map(map) => map
                .into_iter()
                .map(|(k, v)| (Value::String(k), v))
                .collect(),
            other => {
                return Err(self.invalid(
                    scope,
                    span,
                    format!(
                        "`for` needs a list or map known before apply, found a {}",
                        other.type_name()
                    ),
                ));
            }
        };
        let mut list = Vec::new();
        let mut map = BTreeMap::new();
        for (key, value) in items {
            let mut inner = scope.clone();
            if let Some(key_var) = &f.intro.key_var {
                inner.names.push((key_var.to_string(), key));
            }
            inner.names.push((f.intro.value_var.to_string(), value));
            if let Some(cond) = &f.cond {
                match self.eval(&cond.expr, &inner)? {
                    Value::Bool(true) => {}
                    Value::Bool(false) => continue,
                    other => {
                        return Err(self.invalid(
                            scope,
                            sp(&cond.expr),
                            format!("`if` clause is a {}, not a bool", other.type_name()),
                        ));
                    }
                }
            }
            let value = self.eval(&f.value_expr, &inner)?;
            match &f.key_expr {
                None => list.push(value),
                Some(key_expr) => match self.eval(key_expr, &inner)? {
                    Value::String(k) => {
                        if map.insert(k.clone(), value).is_some() {
                            return Err(self.invalid(
                                scope,
                                span,
                                format!("duplicate key `{k}` in for expression"),
                            ));
                        }
                    }
                    other => {
                        return Err(self.invalid(
                            scope,
                            sp(key_expr),
                            format!("map key is a {}, not a string", other.type_name()),
                        ));
                    }
                },
            }
        }
        Ok(if f.key_expr.is_some() {
            Value::Map(map)
        } else {
            Value::List(list)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{error_at, eval, eval_with, list, local, map, n, s};
    use super::*;

    const TOPIC: &str = r#"resource "google_pubsub_topic" "t" {}"#;

    #[test]
    fn literals_and_collections_evaluate_to_values() {
        assert_eq!(eval("null").unwrap(), Value::Null);
        assert_eq!(eval("true").unwrap(), Value::Bool(true));
        assert_eq!(eval("2.5").unwrap(), n(2.5));
        assert_eq!(eval(r#""events.raw""#).unwrap(), s("events.raw"));
        assert_eq!(
            eval(r#"[1, "a", [true]]"#).unwrap(),
            list([n(1.0), s("a"), list([Value::Bool(true)])])
        );
        assert_eq!(eval("(((3)))").unwrap(), n(3.0));
    }

    #[test]
    fn object_keys_may_be_names_strings_or_expressions() {
        let value = eval_with(
            "locals {\n  k = \"kk\"\n}\n",
            r#"{ a = 1, "b.c" = 2, (local.k) = 3, (1 + 1) = 4 }"#,
        )
        .unwrap();
        assert_eq!(
            value,
            map([
                ("a", n(1.0)),
                ("b.c", n(2.0)),
                ("kk", n(3.0)),
                ("2", n(4.0))
            ])
        );
        let message = error_at(eval("{ (true) = 1 }"), "mem/main.tf", 2);
        assert!(
            message.ends_with("object key is a bool, not a string"),
            "{message}"
        );
    }

    #[test]
    fn templates_are_strings_until_a_part_is_known_only_after_apply() {
        assert_eq!(
            eval_with(
                "locals {\n  env = \"dev\"\n}\n",
                r#""events-${local.env}-${2 + 1}""#
            )
            .unwrap(),
            s("events-dev-3")
        );
        assert_eq!(
            eval_with(
                TOPIC,
                r#""projects/p/topics/${google_pubsub_topic.t.name}""#
            )
            .unwrap(),
            Value::Unknown("projects/p/topics/${google_pubsub_topic.t.name}".into())
        );
        let named = r#"resource "google_pubsub_topic" "t" { name = "events.raw" }"#;
        assert_eq!(
            eval_with(
                named,
                r#""projects/p/topics/${google_pubsub_topic.t.name}""#
            )
            .unwrap(),
            s("projects/p/topics/events.raw")
        );
    }

    #[test]
    fn template_errors_point_at_the_interpolation() {
        let text = "locals {\n  x = <<-EOT\n    a\n    ${[1]}\n    EOT\n}\n";
        let message = error_at(local(text, "x"), "mem/main.tf", 4);
        assert!(
            message.ends_with("cannot interpolate a list into a string"),
            "{message}"
        );
        let message = error_at(eval(r#""%{ if true }a%{ endif }""#), "mem/main.tf", 2);
        assert!(
            message.contains("a template directive (%{if}/%{for}) is not understood"),
            "{message}"
        );
    }

    #[test]
    fn heredocs_are_dedented() {
        let text = "locals {\n  x = <<-EOT\n    a\n      b\n    EOT\n}\n";
        assert_eq!(local(text, "x").unwrap(), s("a\n  b\n"));
    }

    #[test]
    fn conditionals_need_a_bool_known_before_apply() {
        let on = "variable \"on\" {\n  default = false\n}\n";
        assert_eq!(eval_with(on, r#"var.on ? "a" : "b""#).unwrap(), s("b"));
        assert_eq!(eval(r#"!false ? "a" : "b""#).unwrap(), s("a"));
        let message = error_at(eval(r#"1 ? "a" : "b""#), "mem/main.tf", 2);
        assert!(
            message.ends_with("condition is a number, not a bool known before apply"),
            "{message}"
        );
        let message = error_at(
            eval_with(TOPIC, "google_pubsub_topic.t.id ? 1 : 2"),
            "mem/main.tf",
            2,
        );
        assert!(
            message.contains("condition is a value known only after apply"),
            "{message}"
        );
    }

    #[test]
    fn operators_follow_terraform_precedence_and_types() {
        assert_eq!(eval("1 + 2 * 3").unwrap(), n(7.0));
        assert_eq!(eval("10 % 4 - 7 / 2").unwrap(), n(-1.5));
        assert_eq!(eval("3 >= 3 && 2 < 1").unwrap(), Value::Bool(false));
        assert_eq!(eval("false || 1 != 2").unwrap(), Value::Bool(true));
        assert_eq!(eval(r#""1" == 1"#).unwrap(), Value::Bool(false));
        assert_eq!(eval("[1, 2] == [1, 2]").unwrap(), Value::Bool(true));
        assert_eq!(eval("-(2 + 1)").unwrap(), n(-3.0));
        let message = error_at(eval(r#""a" + 1"#), "mem/main.tf", 2);
        assert!(
            message.ends_with("`+` cannot apply to a string and a number"),
            "{message}"
        );
        let message = error_at(eval("1 && 2"), "mem/main.tf", 2);
        assert!(
            message.ends_with("`&&` cannot apply to numbers"),
            "{message}"
        );
        let message = error_at(eval("!1"), "mem/main.tf", 2);
        assert!(
            message.ends_with("`!` cannot apply to a number"),
            "{message}"
        );
        let message = error_at(
            eval_with(TOPIC, r#"google_pubsub_topic.t.id == "x""#),
            "mem/main.tf",
            2,
        );
        assert!(
            message.contains("`==` on a value known only after apply is not understood"),
            "{message}"
        );
    }

    #[test]
    fn for_expressions_build_lists_and_maps() {
        assert_eq!(
            eval(r#"[for s in ["a", "b"] : upper(s)]"#).unwrap(),
            list([s("A"), s("B")])
        );
        assert_eq!(
            eval(r#"[for i, s in ["a", "b"] : i]"#).unwrap(),
            list([n(0.0), n(1.0)])
        );
        assert_eq!(
            eval(r#"{ for k, v in { a = 1, b = 2 } : "${k}x" => v * 10 }"#).unwrap(),
            map([("ax", n(10.0)), ("bx", n(20.0))])
        );
        assert_eq!(
            eval(r#"[for s in ["a", "bb", "c"] : s if length(s) == 1]"#).unwrap(),
            list([s("a"), s("c")])
        );
        // The innermost binding of a name wins.
        assert_eq!(
            eval(r#"[for s in ["a"] : [for s in ["b"] : s]]"#).unwrap(),
            list([list([s("b")])])
        );
    }

    #[test]
    fn for_expression_errors_name_the_problem() {
        let cases = [
            (
                r#"[for s in ["a"] : s if s]"#,
                "`if` clause is a string, not a bool",
            ),
            (
                r#"{ for s in ["a", "a"] : s => 1 }"#,
                "duplicate key `a` in for expression",
            ),
            (
                r#"{ for k, v in { a = 1 } : v => k }"#,
                "map key is a number, not a string",
            ),
            (
                r#"[for c in "abc" : c]"#,
                "`for` needs a list or map known before apply, found a string",
            ),
            (
                r#"{ for s in ["a"] : s => s... }"#,
                "a grouping `...` for expression is not understood",
            ),
        ];
        for (expr, expected) in cases {
            let message = error_at(eval(expr), "mem/main.tf", 2);
            assert!(message.contains(expected), "{expr}: {message}");
        }
    }

    #[test]
    fn a_bare_name_outside_a_for_expression_does_not_resolve() {
        let message = error_at(eval("s"), "mem/main.tf", 2);
        assert!(
            message.contains(
                "`s` does not resolve: a bare name is only valid inside a `for` expression"
            ),
            "{message}"
        );
    }
}

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

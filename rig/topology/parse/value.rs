//! What an expression evaluates to, and the addresses of resource instances that values
//! known only after apply refer to.

use std::collections::BTreeMap;
use std::fmt;

/// An evaluated Terraform value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
    /// An attribute (or a whole instance, when `path` is empty) that only exists after apply.
    Ref(Reference),
    /// A string built from values known only after apply, rendered with `${...}` placeholders.
    Unknown(String),
}

impl Value {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub(crate) fn as_u32(&self) -> Option<u32> {
        match self {
            Value::Number(n) if n.fract() == 0.0 && *n >= 0.0 && *n <= f64::from(u32::MAX) => {
                Some(*n as u32)
            }
            _ => None,
        }
    }

    /// Text of a string or of a value known after apply, as Terraform would interpolate it.
    pub(crate) fn render(&self) -> Option<String> {
        match self {
            Value::String(s) | Value::Unknown(s) => Some(s.clone()),
            Value::Ref(r) => Some(format!("${{{r}}}")),
            Value::Number(n) => Some(format_number(*n)),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Ref(_) | Value::Unknown(_) => "value known only after apply",
        }
    }
}

pub(super) fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Mode {
    Managed,
    Data,
}

/// One resource instance: `module.backbone.google_pubsub_topic.this["raw"]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Address {
    pub module: String,
    pub mode: Mode,
    pub rtype: String,
    pub name: String,
    pub key: Option<String>,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.module.is_empty() {
            write!(f, "{}.", self.module)?;
        }
        if self.mode == Mode::Data {
            f.write_str("data.")?;
        }
        write!(f, "{}.{}", self.rtype, self.name)?;
        if let Some(key) = &self.key {
            write!(f, "[{key:?}]")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    pub address: Address,
    pub path: Vec<String>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.address)?;
        for part in &self.path {
            write!(f, ".{part}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(module: &str, key: Option<&str>) -> Address {
        Address {
            module: module.into(),
            mode: Mode::Managed,
            rtype: "google_pubsub_topic".into(),
            name: "this".into(),
            key: key.map(str::to_string),
        }
    }

    #[test]
    fn addresses_print_as_terraform_writes_them() {
        assert_eq!(topic("", None).to_string(), "google_pubsub_topic.this");
        assert_eq!(
            topic("module.backbone", Some("raw")).to_string(),
            r#"module.backbone.google_pubsub_topic.this["raw"]"#
        );
        let data = Address {
            mode: Mode::Data,
            rtype: "google_project".into(),
            name: "current".into(),
            ..topic("module.a.module.b", None)
        };
        assert_eq!(
            data.to_string(),
            "module.a.module.b.data.google_project.current"
        );
    }

    #[test]
    fn references_print_their_attribute_path() {
        let reference = Reference {
            address: topic("", Some("raw")),
            path: vec!["labels".into(), "team".into()],
        };
        assert_eq!(
            reference.to_string(),
            r#"google_pubsub_topic.this["raw"].labels.team"#
        );
        assert_eq!(
            Value::Ref(reference).render().as_deref(),
            Some(r#"${google_pubsub_topic.this["raw"].labels.team}"#)
        );
    }

    #[test]
    fn numbers_render_without_a_fraction_when_whole() {
        assert_eq!(format_number(3.0), "3");
        assert_eq!(format_number(-2.0), "-2");
        assert_eq!(format_number(0.5), "0.5");
        assert_eq!(format_number(1e15), "1000000000000000");
        assert_eq!(Value::Number(600.0).render().as_deref(), Some("600"));
        assert_eq!(Value::Bool(false).render().as_deref(), Some("false"));
        assert_eq!(
            Value::Unknown("${x}-y".into()).render().as_deref(),
            Some("${x}-y")
        );
        assert_eq!(Value::List(Vec::new()).render(), None);
        assert_eq!(Value::Null.render(), None);
    }

    #[test]
    fn whole_numbers_in_range_convert_to_u32() {
        assert_eq!(Value::Number(10.0).as_u32(), Some(10));
        assert_eq!(Value::Number(0.0).as_u32(), Some(0));
        assert_eq!(Value::Number(f64::from(u32::MAX)).as_u32(), Some(u32::MAX));
        assert_eq!(Value::Number(f64::from(u32::MAX) + 1.0).as_u32(), None);
        assert_eq!(Value::Number(1.5).as_u32(), None);
        assert_eq!(Value::Number(-1.0).as_u32(), None);
        assert_eq!(Value::String("10".into()).as_u32(), None);
    }

    #[test]
    fn accessors_match_only_their_own_type() {
        assert_eq!(Value::String("a".into()).as_str(), Some("a"));
        assert_eq!(Value::Unknown("a".into()).as_str(), None);
        assert_eq!(Value::Bool(true).as_bool(), Some(true));
        assert_eq!(Value::String("true".into()).as_bool(), None);
        assert_eq!(
            Value::Unknown(String::new()).type_name(),
            "value known only after apply"
        );
        assert_eq!(Value::Map(BTreeMap::new()).type_name(), "map");
    }
}

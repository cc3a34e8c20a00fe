//! Reads a Terraform root module and the local modules it calls, and evaluates every
//! expression the way `terraform plan` would before any resource exists: variables (defaults,
//! the environment's `*.tfvars`, module inputs), locals, `for_each`, references between
//! resources and a small set of functions. What only the provider knows (ids, emails, IPs)
//! stays a [`Value::Ref`] naming the resource attribute it comes from.
//!
//! Anything outside that subset is a [`TopologyError`] naming file and line: a silent skip
//! would let the rig and the policy checks disagree with what `terraform apply` creates.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use hcl::edit::Span;
use hcl::edit::expr::{
    BinaryOperator, Expression, ForExpr, FuncCall, ObjectKey, Traversal, TraversalOperator,
    UnaryOperator,
};
use hcl::edit::structure::{Attribute, Block, Body, Structure};
use hcl::edit::template::{Element, Template};

use super::{Location, TopologyError};

/// Files in an environment directory that hold its values; every other file of a root must be
/// identical across environments.
pub(crate) const VALUES_FILES: &[&str] = &["terraform.tfvars", "backend.hcl"];

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

    fn type_name(&self) -> &'static str {
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

/// A byte range in a source file; `Copy`, unlike the parser's `Range`.
type Sp = Option<(usize, usize)>;

fn sp<T: Span>(node: &T) -> Sp {
    node.span().map(|r| (r.start, r.end))
}

fn format_number(n: f64) -> String {
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

type Provided = BTreeMap<String, (Value, Location)>;

/// `terraform.tfvars` then `*.auto.tfvars` in name order, as Terraform reads them.
fn read_values(dir: &Path) -> Result<(Provided, BTreeMap<String, Location>), TopologyError> {
    let mut files: Vec<PathBuf> = read_dir_sorted(dir)?
        .into_iter()
        .filter(|p| file_name(p).ends_with(".auto.tfvars"))
        .collect();
    let main = dir.join("terraform.tfvars");
    if main.is_file() {
        files.insert(0, main);
    }
    let mut provided = Provided::new();
    let mut locations = BTreeMap::new();
    for path in files {
        // tfvars hold literals only, so they are evaluated in an empty module.
        let file = SourceFile::load(&path)?;
        let empty = ModuleEval::bare(Rc::new(ModuleSource::from_files(dir, vec![file.clone()])));
        for structure in file.body.iter() {
            match structure {
                Structure::Attribute(attr) => {
                    let location = file.loc(sp(attr));
                    let value = empty.eval(&attr.value, &Scope::file(0))?;
                    locations.insert(attr.key.to_string(), location.clone());
                    provided.insert(attr.key.to_string(), (value, location));
                }
                Structure::Block(block) => {
                    return Err(TopologyError::Unsupported {
                        location: file.loc(sp(block)),
                        construct: format!("block `{}` in a variables file", block.ident.as_str()),
                        hint: "a tfvars file holds only `name = value` lines".into(),
                    });
                }
            }
        }
    }
    Ok((provided, locations))
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, TopologyError> {
    let entries = std::fs::read_dir(dir).map_err(|source| TopologyError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

#[derive(Debug, Clone)]
struct SourceFile {
    path: PathBuf,
    text: String,
    line_starts: Vec<usize>,
    body: Body,
}

impl SourceFile {
    fn load(path: &Path) -> Result<SourceFile, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let body = hcl::edit::parser::parse_body(&text).map_err(|err| TopologyError::Syntax {
            location: Location::new(path.to_path_buf(), err.location().line()),
            message: err.message().to_string(),
        })?;
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Ok(SourceFile {
            path: path.to_path_buf(),
            text,
            line_starts,
            body,
        })
    }

    fn loc(&self, span: Sp) -> Location {
        let line = span.map_or(0, |(start, _)| {
            match self.line_starts.binary_search(&start) {
                Ok(i) => i + 1,
                Err(i) => i,
            }
        });
        Location::new(self.path.clone(), line)
    }

    fn snippet(&self, span: Sp) -> String {
        span.and_then(|(start, end)| self.text.get(start..end))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "<expression>".into())
    }
}

#[derive(Debug, Clone)]
struct Item {
    file: usize,
    block: Block,
}

#[derive(Debug, Clone)]
struct AttrItem {
    file: usize,
    attr: Attribute,
}

/// The parsed (not yet evaluated) `.tf` files of one directory.
#[derive(Debug)]
struct ModuleSource {
    dir: PathBuf,
    files: Vec<SourceFile>,
    variables: BTreeMap<String, Item>,
    locals: BTreeMap<String, AttrItem>,
    resources: BTreeMap<(Mode, String, String), Item>,
    modules: BTreeMap<String, Item>,
    outputs: BTreeMap<String, Item>,
    providers: Vec<Item>,
}

impl ModuleSource {
    fn load(dir: &Path) -> Result<ModuleSource, TopologyError> {
        let mut files = Vec::new();
        for path in read_dir_sorted(dir)? {
            let name = file_name(&path);
            if name.ends_with(".tf.json") || name.ends_with("_override.tf") || name == "override.tf"
            {
                return Err(TopologyError::Unsupported {
                    location: Location::new(path.clone(), 0),
                    construct: format!("file `{name}`"),
                    hint:
                        "write the configuration as plain .tf files (no JSON syntax, no overrides)"
                            .into(),
                });
            }
            if name.ends_with(".tf") {
                files.push(SourceFile::load(&path)?);
            }
        }
        if files.is_empty() {
            return Err(TopologyError::Invalid {
                location: Location::new(dir.to_path_buf(), 0),
                message: "no .tf files here: check the module `source` or the environment name"
                    .into(),
            });
        }
        let mut source = ModuleSource::from_files(dir, files);
        source.index()?;
        Ok(source)
    }

    fn from_files(dir: &Path, files: Vec<SourceFile>) -> ModuleSource {
        ModuleSource {
            dir: dir.to_path_buf(),
            files,
            variables: BTreeMap::new(),
            locals: BTreeMap::new(),
            resources: BTreeMap::new(),
            modules: BTreeMap::new(),
            outputs: BTreeMap::new(),
            providers: Vec::new(),
        }
    }

    fn loc(&self, file: usize, span: Sp) -> Location {
        self.files[file].loc(span)
    }

    fn index(&mut self) -> Result<(), TopologyError> {
        for (file_index, file) in self.files.iter().enumerate() {
            for structure in file.body.iter() {
                let block = match structure {
                    Structure::Block(block) => block,
                    Structure::Attribute(attr) => {
                        return Err(TopologyError::Unsupported {
                            location: file.loc(sp(attr)),
                            construct: format!("top-level attribute `{}`", attr.key.as_str()),
                            hint: "put values in a `locals` block or a variable".into(),
                        });
                    }
                };
                let location = file.loc(sp(block));
                let labels: Vec<&str> = block.labels.iter().map(|l| l.as_str()).collect();
                let item = || Item {
                    file: file_index,
                    block: block.clone(),
                };
                let duplicate = |what: String| TopologyError::Invalid {
                    location: location.clone(),
                    message: format!("{what} is declared twice in this module; remove one"),
                };
                match (block.ident.as_str(), labels.as_slice()) {
                    ("terraform", []) => {}
                    ("provider", [_]) => self.providers.push(item()),
                    ("variable", [name]) => {
                        if self.variables.insert(name.to_string(), item()).is_some() {
                            return Err(duplicate(format!("variable `{name}`")));
                        }
                    }
                    ("locals", []) => {
                        for structure in block.body.iter() {
                            let Structure::Attribute(attr) = structure else {
                                return Err(TopologyError::Unsupported {
                                    location: file.loc(sp(structure)),
                                    construct: "a block inside `locals`".into(),
                                    hint: "locals hold `name = value` only".into(),
                                });
                            };
                            let name = attr.key.to_string();
                            let entry = AttrItem {
                                file: file_index,
                                attr: attr.clone(),
                            };
                            if self.locals.insert(name.clone(), entry).is_some() {
                                return Err(duplicate(format!("local `{name}`")));
                            }
                        }
                    }
                    (kind @ ("resource" | "data"), [rtype, name]) => {
                        let mode = if kind == "data" {
                            Mode::Data
                        } else {
                            Mode::Managed
                        };
                        let key = (mode, rtype.to_string(), name.to_string());
                        if self.resources.insert(key, item()).is_some() {
                            return Err(duplicate(format!("{kind} `{rtype}.{name}`")));
                        }
                    }
                    ("module", [name]) => {
                        if self.modules.insert(name.to_string(), item()).is_some() {
                            return Err(duplicate(format!("module `{name}`")));
                        }
                    }
                    ("output", [name]) => {
                        if self.outputs.insert(name.to_string(), item()).is_some() {
                            return Err(duplicate(format!("output `{name}`")));
                        }
                    }
                    (ident, _) => {
                        return Err(TopologyError::Unsupported {
                            location,
                            construct: format!("top-level block `{ident}` with {} label(s)", labels.len()),
                            hint: "the topology parser reads terraform, provider, variable, locals, resource, data, module and output blocks; extend rig/topology/parse.rs to read this one".into(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Bindings visible to one expression.
#[derive(Debug, Clone)]
struct Scope {
    file: usize,
    each: Option<(Value, Value)>,
    names: Vec<(String, Value)>,
}

impl Scope {
    fn file(file: usize) -> Scope {
        Scope {
            file,
            each: None,
            names: Vec::new(),
        }
    }

    fn name(&self, name: &str) -> Option<&Value> {
        self.names
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

type Instances = Rc<Option<BTreeMap<String, Value>>>;

/// `each.key` and `each.value` of one instance.
type Binding = (Value, Value);

/// One module instance being evaluated.
struct ModuleEval {
    src: Rc<ModuleSource>,
    /// `""` for the root, `module.backbone` for a child.
    path: String,
    vars: BTreeMap<String, Value>,
    locals: RefCell<BTreeMap<String, Value>>,
    /// What is being evaluated right now, to report reference cycles instead of overflowing.
    resolving: RefCell<Vec<String>>,
    instances: RefCell<BTreeMap<(Mode, String, String), Instances>>,
    children: RefCell<BTreeMap<String, Rc<ModuleEval>>>,
}

impl ModuleEval {
    fn bare(src: Rc<ModuleSource>) -> ModuleEval {
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

    /// Binds the module's variables: provided values win over defaults, a variable with
    /// neither is an error, and every `validation` block is checked.
    fn new(
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

    fn loc(&self, scope: &Scope, span: Sp) -> Location {
        self.src.loc(scope.file, span)
    }

    fn unsupported(
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

    fn invalid(&self, scope: &Scope, span: Sp, message: impl Into<String>) -> TopologyError {
        TopologyError::Invalid {
            location: self.loc(scope, span),
            message: message.into(),
        }
    }

    fn enter(&self, key: String, location: &Location) -> Result<(), TopologyError> {
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

    fn leave(&self) {
        self.resolving.borrow_mut().pop();
    }

    /// Evaluates everything in the module (and its children), so that a construct the parser
    /// does not understand fails the load even where the topology never looks.
    fn evaluate_all(&self, out: &mut Vec<ResourceInstance>) -> Result<(), TopologyError> {
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

    fn eval_body(
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
    fn lifecycle(&self, body: &Body, scope: &Scope) -> Result<EvalBody, TopologyError> {
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
    fn addresses(&self, expr: &Expression, scope: &Scope) -> Result<Value, TopologyError> {
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

    fn local(&self, name: &str, from: &Location) -> Result<Value, TopologyError> {
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

    fn output(&self, name: &str, from: &Location) -> Result<Value, TopologyError> {
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

    fn child(&self, name: &str, scope: &Scope, span: Sp) -> Result<Rc<ModuleEval>, TopologyError> {
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
    fn instances(
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

    fn eval(&self, expr: &Expression, scope: &Scope) -> Result<Value, TopologyError> {
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

    fn template(
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

    fn binary(
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

    fn for_expr(&self, f: &ForExpr, scope: &Scope) -> Result<Value, TopologyError> {
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

    fn call(&self, call: &FuncCall, scope: &Scope) -> Result<Value, TopologyError> {
        let span = sp(call);
        let name = call.name.name.as_str();
        let hint = "the topology parser knows merge, concat, contains, length, keys, values, toset, tolist, tomap, tostring, tonumber, lower, upper, join and distinct; rewrite the expression or add the function to rig/topology/parse.rs";
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

    fn traversal(&self, t: &Traversal, scope: &Scope) -> Result<Value, TopologyError> {
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

    fn resource(
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
    fn resource_attr(
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

    fn apply(
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

    fn index(
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

/// Resolves `..` without touching the file system, so error messages show the path as written.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

//! Input variables: the environment's `*.tfvars`, defaults, module inputs and `validation`
//! blocks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use hcl::edit::structure::Structure;

use super::Value;
use super::module::{ModuleEval, Scope};
use super::source::{ModuleSource, SourceFile, file_name, read_dir_sorted, sp};
use crate::{Location, TopologyError};

pub(super) type Provided = BTreeMap<String, (Value, Location)>;

/// `terraform.tfvars` then `*.auto.tfvars` in name order, as Terraform reads them.
pub(super) fn read_values(
    dir: &Path,
) -> Result<(Provided, BTreeMap<String, Location>), TopologyError> {
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

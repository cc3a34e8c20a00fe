//! Input variables: the environment's `*.tfvars`, defaults, module inputs and `validation`
//! blocks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use hcl::edit::structure::Structure;

use super::module::{ModuleEval, Provided, Scope};
use super::source::{ModuleSource, SourceFile, file_name, read_dir_sorted, sp};
use crate::{Location, TopologyError};

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

#[cfg(test)]
mod tests {
    use super::super::testing::{Tree, attr, error_at, eval_with, module, n, s};

    const VARIABLES: &str =
        "variable \"a\" {\n  default = 0\n}\n\nvariable \"b\" {\n  type = string\n}\n";

    #[test]
    fn defaults_apply_when_no_value_is_given() {
        let text = "variable \"ack\" {\n  type    = number\n  default = 10\n}\n";
        assert_eq!(eval_with(text, "var.ack").unwrap(), n(10.0));
    }

    #[test]
    fn tfvars_override_defaults_and_later_files_win() {
        let tree = Tree::new(&[
            ("envs/test/variables.tf", VARIABLES),
            ("envs/test/terraform.tfvars", "a = 1\nb = \"from-tfvars\"\n"),
            ("envs/test/b.auto.tfvars", "\na = 3\n"),
            ("envs/test/a.auto.tfvars", "a = 2\n"),
            ("envs/test/ignored.tfvars", "a = 4\n"),
        ]);
        let config = tree.load().unwrap();
        assert_eq!(config.root_variables.get("a"), Some(&n(3.0)));
        assert_eq!(config.root_variables.get("b"), Some(&s("from-tfvars")));
        let a = &config.root_variable_locations["a"];
        assert!(a.file.ends_with("envs/test/b.auto.tfvars"), "{a}");
        assert_eq!(a.line, 2);
        let b = &config.root_variable_locations["b"];
        assert!(b.file.ends_with("envs/test/terraform.tfvars"), "{b}");
        assert_eq!(b.line, 2);
    }

    #[test]
    fn a_variable_left_at_its_default_is_located_at_its_declaration() {
        let tree = Tree::new(&[
            ("envs/test/variables.tf", VARIABLES),
            ("envs/test/terraform.tfvars", "b = \"x\"\n"),
        ]);
        let config = tree.load().unwrap();
        let a = &config.root_variable_locations["a"];
        assert!(a.file.ends_with("envs/test/variables.tf"), "{a}");
        assert_eq!(a.line, 1);
    }

    #[test]
    fn a_required_root_variable_without_a_value_is_an_error() {
        let tree = Tree::new(&[("envs/test/variables.tf", VARIABLES)]);
        let message = error_at(tree.load(), "envs/test", 0);
        assert!(
            message.contains("no value for required variable `b`: set it in"),
            "{message}"
        );
        assert!(message.ends_with("envs/test/terraform.tfvars"), "{message}");
    }

    #[test]
    fn tfvars_hold_declared_literals_only() {
        let cases = [
            ("b = \"x\"\nc = 1\n", 2, "`c` is not a declared variable of"),
            (
                "b = \"x\"\nlocals {\n}\n",
                2,
                "block `locals` in a variables file is not understood",
            ),
            ("b = var.a\n", 1, "`var.a` does not resolve"),
        ];
        for (tfvars, line, expected) in cases {
            let tree = Tree::new(&[
                ("envs/test/variables.tf", VARIABLES),
                ("envs/test/terraform.tfvars", tfvars),
            ]);
            let message = error_at(tree.load(), "envs/test/terraform.tfvars", line);
            assert!(message.contains(expected), "{tfvars}: {message}");
        }
    }

    #[test]
    fn module_inputs_override_defaults_and_required_ones_must_be_passed() {
        let child = "variable \"prefix\" {}\n\nvariable \"ack\" {\n  default = 10\n}\n\nresource \"google_pubsub_topic\" \"t\" {\n  name = \"${var.prefix}-${var.ack}\"\n}\n";
        let passed = "module \"m\" {\n  source = \"../../modules/m\"\n  prefix = \"events\"\n  ack    = 20\n}\n";
        let tree = Tree::new(&[("envs/test/main.tf", passed), ("modules/m/main.tf", child)]);
        let config = tree.load().unwrap();
        assert_eq!(
            attr(&config, "module.m.google_pubsub_topic.t", "name"),
            s("events-20")
        );
        let missing = "module \"m\" {\n  source = \"../../modules/m\"\n}\n";
        let tree = Tree::new(&[("envs/test/main.tf", missing), ("modules/m/main.tf", child)]);
        let message = error_at(tree.load(), "envs/test/main.tf", 1);
        assert!(
            message.contains("module.m needs input `prefix` (declared at "),
            "{message}"
        );
        assert!(
            message.ends_with("modules/m/main.tf:1): pass it in the module block"),
            "{message}"
        );
    }

    #[test]
    fn validations_are_checked_against_the_value_given() {
        let declared = "variable \"env\" {\n  default = \"dev\"\n  validation {\n    condition     = contains([\"dev\", \"prod\"], var.env)\n    error_message = \"env must be dev or prod\"\n  }\n}\n";
        let tree = Tree::new(&[("envs/test/variables.tf", declared)]);
        assert_eq!(tree.load().unwrap().root_variables["env"], s("dev"));
        let tree = Tree::new(&[
            ("envs/test/variables.tf", declared),
            ("envs/test/terraform.tfvars", "\nenv = \"qa\"\n"),
        ]);
        let message = error_at(tree.load(), "envs/test/terraform.tfvars", 2);
        assert!(
            message.ends_with("variable `env`: env must be dev or prod"),
            "{message}"
        );
    }

    #[test]
    fn malformed_validations_and_variable_arguments_are_errors() {
        let cases = [
            (
                "default = 1\n  validation {\n    condition = var.v\n  }",
                5,
                "validation condition is a number, not a bool",
            ),
            (
                "default = 1\n  validation {\n    error_message = \"x\"\n  }",
                4,
                "validation block without `condition`",
            ),
            (
                "default = 1 > 2\n  validation {\n    condition = var.v\n  }",
                4,
                "variable `v`: validation failed",
            ),
            (
                "default = 1\n  foo = 2",
                4,
                "variable argument `foo` is not understood",
            ),
        ];
        for (body, line, expected) in cases {
            let text = format!("\nvariable \"v\" {{\n  {body}\n}}\n");
            let message = error_at(module(&text), "mem/main.tf", line);
            assert!(message.contains(expected), "{body}: {message}");
        }
    }
}

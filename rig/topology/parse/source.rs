//! Reading `.tf` files: parsing, indexing a module's blocks by kind and name, and turning byte
//! spans into file:line locations. Nothing here evaluates an expression.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use hcl::edit::Span;
use hcl::edit::structure::{Attribute, Block, Body, Structure};

use super::Mode;
use crate::{Location, TopologyError};

/// A byte range in a source file; `Copy`, unlike the parser's `Range`.
pub(super) type Sp = Option<(usize, usize)>;

pub(super) fn sp<T: Span>(node: &T) -> Sp {
    node.span().map(|r| (r.start, r.end))
}

pub(super) fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, TopologyError> {
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

pub(super) fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

#[derive(Debug, Clone)]
pub(super) struct SourceFile {
    pub(super) path: PathBuf,
    text: String,
    line_starts: Vec<usize>,
    pub(super) body: Body,
}

impl SourceFile {
    pub(super) fn load(path: &Path) -> Result<SourceFile, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        SourceFile::parse(path, text)
    }

    /// `text` as the contents of the file at `path`.
    pub(super) fn parse(path: &Path, text: String) -> Result<SourceFile, TopologyError> {
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

    pub(super) fn loc(&self, span: Sp) -> Location {
        let line = span.map_or(0, |(start, _)| {
            match self.line_starts.binary_search(&start) {
                Ok(i) => i + 1,
                Err(i) => i,
            }
        });
        Location::new(self.path.clone(), line)
    }

    pub(super) fn snippet(&self, span: Sp) -> String {
        span.and_then(|(start, end)| self.text.get(start..end))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "<expression>".into())
    }
}

#[derive(Debug, Clone)]
pub(super) struct Item {
    pub(super) file: usize,
    pub(super) block: Block,
}

#[derive(Debug, Clone)]
pub(super) struct AttrItem {
    pub(super) file: usize,
    pub(super) attr: Attribute,
}

/// The parsed (not yet evaluated) `.tf` files of one directory.
#[derive(Debug)]
pub(super) struct ModuleSource {
    pub(super) dir: PathBuf,
    pub(super) files: Vec<SourceFile>,
    pub(super) variables: BTreeMap<String, Item>,
    pub(super) locals: BTreeMap<String, AttrItem>,
    pub(super) resources: BTreeMap<(Mode, String, String), Item>,
    pub(super) modules: BTreeMap<String, Item>,
    pub(super) outputs: BTreeMap<String, Item>,
    pub(super) providers: Vec<Item>,
}

impl ModuleSource {
    pub(super) fn load(dir: &Path) -> Result<ModuleSource, TopologyError> {
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

    /// A module whose files are given as `(name, text)`, not read from `dir`.
    #[cfg(test)]
    pub(super) fn from_text(
        dir: &Path,
        files: &[(&str, &str)],
    ) -> Result<ModuleSource, TopologyError> {
        let files = files
            .iter()
            .map(|(name, text)| SourceFile::parse(&dir.join(name), text.to_string()))
            .collect::<Result<_, _>>()?;
        let mut source = ModuleSource::from_files(dir, files);
        source.index()?;
        Ok(source)
    }

    pub(super) fn from_files(dir: &Path, files: Vec<SourceFile>) -> ModuleSource {
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

    pub(super) fn loc(&self, file: usize, span: Sp) -> Location {
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
                            hint: "the topology parser reads terraform, provider, variable, locals, resource, data, module and output blocks; extend rig/topology/parse/source.rs to read this one".into(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Resolves `..` without touching the file system, so error messages show the path as written.
pub(super) fn normalize(path: &Path) -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::super::testing::{Tree, error_at};
    use super::*;

    fn in_memory(text: &str) -> Result<ModuleSource, TopologyError> {
        ModuleSource::from_text(Path::new("mem"), &[("main.tf", text)])
    }

    #[test]
    fn blocks_are_indexed_by_kind_and_name_with_their_line() {
        let text = "terraform {\n}\n\nprovider \"google\" {\n}\n\nvariable \"v\" {}\n\nlocals {\n  a = 1\n  b = 2\n}\n\nresource \"google_pubsub_topic\" \"t\" {}\ndata \"google_pubsub_topic\" \"t\" {}\nmodule \"m\" {}\noutput \"o\" {}\n";
        let src = in_memory(text).unwrap();
        assert_eq!(src.variables.keys().collect::<Vec<_>>(), ["v"]);
        assert_eq!(src.locals.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(src.providers.len(), 1);
        assert_eq!(src.modules.keys().collect::<Vec<_>>(), ["m"]);
        assert_eq!(src.outputs.keys().collect::<Vec<_>>(), ["o"]);
        // A resource and a data source may share type and name.
        let line = |mode: Mode| {
            let item = &src.resources[&(mode, "google_pubsub_topic".into(), "t".into())];
            src.loc(item.file, sp(&item.block)).line
        };
        assert_eq!(line(Mode::Managed), 14);
        assert_eq!(line(Mode::Data), 15);
        let b = &src.locals["b"];
        assert_eq!(src.loc(b.file, sp(&b.attr)).line, 11);
        assert_eq!(src.files[b.file].snippet(sp(&b.attr.value)), "2");
    }

    #[test]
    fn locations_count_lines_from_one() {
        let file = SourceFile::parse(Path::new("f.tf"), "locals {\n  a = 1\n}\n".into()).unwrap();
        assert_eq!(file.loc(Some((0, 1))).line, 1);
        assert_eq!(file.loc(Some((9, 10))).line, 2, "the first byte of line 2");
        assert_eq!(file.loc(Some((8, 9))).line, 1, "the newline ends line 1");
        assert_eq!(file.loc(None).line, 0);
        assert_eq!(file.loc(None).to_string(), "f.tf");
        assert_eq!(file.snippet(Some((9, 16))), "a = 1");
        assert_eq!(file.snippet(None), "<expression>");
    }

    #[test]
    fn duplicates_are_errors_at_the_second_declaration() {
        let cases = [
            (
                "variable \"x\" {}\nvariable \"x\" {}\n",
                "variable `x` is declared twice",
            ),
            (
                "locals {\n  a = 1\n}\nlocals {\n  a = 2\n}\n",
                "local `a` is declared twice",
            ),
            (
                "resource \"t\" \"n\" {}\nresource \"t\" \"n\" {}\n",
                "resource `t.n` is declared twice",
            ),
            (
                "data \"t\" \"n\" {}\ndata \"t\" \"n\" {}\n",
                "data `t.n` is declared twice",
            ),
            (
                "module \"m\" {}\nmodule \"m\" {}\n",
                "module `m` is declared twice",
            ),
            (
                "output \"o\" {}\noutput \"o\" {}\n",
                "output `o` is declared twice",
            ),
        ];
        for (text, expected) in cases {
            let line = if text.starts_with("locals") { 4 } else { 2 };
            let message = error_at(in_memory(text), "mem/main.tf", line);
            assert!(message.contains(expected), "{text}: {message}");
            assert!(message.ends_with("in this module; remove one"), "{message}");
        }
    }

    #[test]
    fn unknown_top_level_constructs_are_errors_naming_where_to_extend() {
        let message = error_at(in_memory("\nmoved {\n}\n"), "mem/main.tf", 2);
        assert!(
            message.contains("top-level block `moved` with 0 label(s) is not understood"),
            "{message}"
        );
        assert!(
            message.contains("rig/topology/parse/source.rs"),
            "{message}"
        );
        let message = error_at(in_memory("resource \"only_type\" {}\n"), "mem/main.tf", 1);
        assert!(
            message.contains("top-level block `resource` with 1 label(s)"),
            "{message}"
        );
        let message = error_at(in_memory("x = 1\n"), "mem/main.tf", 1);
        assert!(
            message.contains("top-level attribute `x` is not understood"),
            "{message}"
        );
        let message = error_at(
            in_memory("locals {\n  a = 1\n  b {\n  }\n}\n"),
            "mem/main.tf",
            3,
        );
        assert!(
            message.contains("a block inside `locals` is not understood"),
            "{message}"
        );
    }

    #[test]
    fn syntax_errors_carry_file_and_line() {
        let message = error_at(
            in_memory("locals {\n  a = 1\n  b = \n}\n"),
            "mem/main.tf",
            3,
        );
        assert!(message.contains("HCL syntax error"), "{message}");
    }

    #[test]
    fn a_directory_is_its_tf_files_in_name_order() {
        let tree = Tree::new(&[
            ("m/b.tf", "locals {\n  b = 1\n}\n"),
            ("m/a.tf", "locals {\n  a = 1\n}\n"),
            ("m/README.md", "not terraform"),
            ("m/terraform.tfvars", "a = 1\n"),
            ("m/sub/c.tf", "not read {"),
        ]);
        let src = ModuleSource::load(&tree.root().join("m")).unwrap();
        let names: Vec<&str> = src.files.iter().map(|f| file_name(&f.path)).collect();
        assert_eq!(names, ["a.tf", "b.tf"]);
        assert_eq!(src.locals["b"].file, 1);
    }

    #[test]
    fn json_override_and_empty_directories_are_errors() {
        for name in ["main.tf.json", "override.tf", "topics_override.tf"] {
            let tree = Tree::new(&[("m/main.tf", "locals {}\n"), (&format!("m/{name}"), "{}")]);
            let message = error_at(ModuleSource::load(&tree.root().join("m")), name, 0);
            assert!(
                message.contains(&format!("file `{name}` is not understood")),
                "{message}"
            );
        }
        let tree = Tree::new(&[("m/notes.txt", "")]);
        let message = error_at(ModuleSource::load(&tree.root().join("m")), "m", 0);
        assert!(
            message.contains("no .tf files here: check the module `source`"),
            "{message}"
        );
    }

    #[test]
    fn normalize_resolves_dots_without_the_file_system() {
        assert_eq!(
            normalize(Path::new("envs/dev/../../modules/b")),
            PathBuf::from("modules/b")
        );
        assert_eq!(normalize(Path::new("./a/./b")), PathBuf::from("a/b"));
        assert_eq!(normalize(Path::new("../x")), PathBuf::from("../x"));
        assert_eq!(
            normalize(Path::new("/r/envs/dev/../../m")),
            PathBuf::from("/r/m")
        );
    }
}

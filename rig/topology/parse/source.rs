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

//! Errors reading and writing a run's files. Each names the file and, for a parse error, the
//! line and column and what was expected there, so a hand-edited plan is fixed in one go.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Not JSON, or JSON of the wrong shape: serde's message says what was expected.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        #[source]
        source: serde_json::Error,
    },
    /// Well-formed, but not a consistent plan or history (a retry of an item that does not
    /// exist, a version this build does not read, ...).
    #[error("{}: {location}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        location: String,
        message: String,
    },
}

impl FileError {
    pub(crate) fn io(path: &Path, action: &'static str, source: std::io::Error) -> Self {
        FileError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }

    /// A serde_json error at `line_offset` lines into the file (JSON lines are parsed one
    /// line at a time, so serde's line is always 1 there).
    pub(crate) fn parse(path: &Path, line_offset: usize, source: serde_json::Error) -> Self {
        let text = source.to_string();
        // serde_json appends " at line L column C"; the position is shown in front instead.
        let message = match text.rfind(" at line ") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        FileError::Parse {
            path: path.to_path_buf(),
            line: line_offset + source.line(),
            column: source.column(),
            message,
            source,
        }
    }

    pub(crate) fn invalid(path: &Path, location: impl Into<String>, message: String) -> Self {
        FileError::Invalid {
            path: path.to_path_buf(),
            location: location.into(),
            message,
        }
    }
}

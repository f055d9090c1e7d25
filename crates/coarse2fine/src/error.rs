//! The library's error type.
//!
//! Every variant renders as one line that names the file, key or value at fault, so the CLI
//! can print it as-is. Underlying errors are folded into the message rather than exposed as
//! `source()`, because a chained report would otherwise repeat them.

use std::path::{Path, PathBuf};

/// Errors raised by coarse2fine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {err}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// What the operating system said.
        err: std::io::Error,
    },
    /// A file exists but its content is not what it should be.
    #[error("{}: {msg}", path.display())]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A configuration, name or value given by the user cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The user asked to stop; what was done is saved.
    #[error("{0}")]
    Interrupted(String),
    /// Training diverged (a non-finite loss or weights); what was kept is said.
    #[error("{0}")]
    Diverged(String),
    /// The deep-learning backend failed.
    #[error("backend: {0}")]
    Backend(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            err,
        }
    }

    /// A content error in `path`.
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    /// An invalid user-supplied value.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

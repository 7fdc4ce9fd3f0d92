//! What both binaries' configuration loading shares: reading the file, parsing TOML, and errors
//! that name the file or the key to fix.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is invalid or has unknown/missing keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// toml's message (names the key and line).
        message: String,
    },
    /// A value is unusable.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, dotted (`domains[0].urls`).
        key: String,
        /// What to fix.
        message: String,
    },
}

impl ConfigError {
    /// A value at `key` is unusable.
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { key: key.into(), message: message.into() }
    }

    /// Names `path` in a parse error (parsing works on text and does not know the file).
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            Self::Parse { message, .. } => Self::Parse { path: path.display().to_string(), message },
            other => other,
        }
    }
}

/// Reads a configuration file.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })
}

/// Parses TOML into `T` (which should deny unknown fields).
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse { path: "<config>".into(), message: e.to_string() })
}

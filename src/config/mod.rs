//! The TOML config file.
//!
//! This step reads the ordered `[[middleware]]` list; the node, p2p, rpc,
//! metrics, logging and chain sections join it in the next step. Unknown
//! keys are errors, and every error names the key or entry it is about.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::layers::stack::{parse_entries, MiddlewareConfig, StackError};

/// Largest config file read, in bytes.
pub const MAX_CONFIG_FILE_LEN: u64 = 1024 * 1024;

/// Errors loading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is too large to be a config file.
    #[error("config file {path} is larger than {max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// The file is not valid TOML or has an unknown or badly typed key.
    #[error("config file {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// toml's message, naming the key and line.
        message: String,
    },
    /// A `[[middleware]]` entry is wrong.
    #[error("config file {path}: {source}")]
    Middleware {
        /// The file.
        path: PathBuf,
        /// The entry's error.
        #[source]
        source: StackError,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    middleware: Option<Vec<toml::Value>>,
}

/// A loaded config.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The middleware stack, outermost first (the default stack when the
    /// file has no `[[middleware]]` entry).
    pub middleware: Vec<MiddlewareConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            middleware: MiddlewareConfig::default_stack(),
        }
    }
}

impl Config {
    /// Parses config text; `path` is only used in error messages.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the bad key or entry.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let middleware = match raw.middleware {
            Some(entries) => parse_entries(&entries).map_err(|source| ConfigError::Middleware {
                path: path.to_owned(),
                source,
            })?,
            None => MiddlewareConfig::default_stack(),
        };
        Ok(Config { middleware })
    }

    /// Reads and parses a config file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and the bad key or entry.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_CONFIG_FILE_LEN {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                max: MAX_CONFIG_FILE_LEN,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_default_stack() {
        assert_eq!(
            Config::parse("", Path::new("x")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn errors_name_the_key_or_layer() {
        let e = Config::parse("colour = 1\n", Path::new("c.toml")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = Config::parse("[[middleware]]\nname = \"firewall\"\n", Path::new("c.toml"))
            .unwrap_err();
        assert!(
            e.to_string().contains("firewall") && e.to_string().contains("c.toml"),
            "{e}"
        );
        let e = Config::parse(
            "[[middleware]]\nname = \"auth\"\nmax_batch = 0\n",
            Path::new("c.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_batch"), "{e}");
    }
}

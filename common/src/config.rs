//! Configuration loading shared by the binaries.
//!
//! Order of precedence: the TOML file, then environment variables, then command-line flags
//! (each binary applies the last two). Unknown keys are errors (`deny_unknown_fields` on every
//! config struct), so a misspelt key is reported with its line instead of being ignored.
//! Secrets are never inline: the config names a file, whose permissions are checked on load.
//! Relative paths in a config file are resolved against the file's directory.

use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Reads and parses a TOML config file. The error names the file and, for syntax errors and
/// unknown keys, the line and column.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Resolves `p` against the directory holding the config file at `config_path`.
pub fn resolve(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        config_path.parent().unwrap_or(Path::new(".")).join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Demo {
        name: String,
    }

    #[test]
    fn misspelt_key_is_reported_with_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        fs::write(&p, "nmae = \"x\"\n").expect("write");
        let e = load_toml::<Demo>(&p).expect_err("must fail").to_string();
        assert!(e.contains("nmae") && e.contains("c.toml"), "{e}");
        let e = load_toml::<Demo>(&dir.path().join("missing.toml"))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_dir() {
        assert_eq!(
            resolve(Path::new("/etc/lb/agent.toml"), Path::new("ca.pem")),
            PathBuf::from("/etc/lb/ca.pem")
        );
        assert_eq!(
            resolve(Path::new("/etc/lb/agent.toml"), Path::new("/x")),
            PathBuf::from("/x")
        );
    }
}

//! Loading a daemon's TOML config from `/etc/uncloud/<daemon>.toml`.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Directory that holds every daemon's config file.
pub const CONFIG_DIR: &str = "/etc/uncloud";
/// Directory under which each daemon keeps its data (`<dir>/<daemon>/`).
pub const DATA_DIR: &str = "/var/lib/uncloud";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is part of the message (not a `source`), so printing the error chain does not
    // repeat it.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("config file {path} is not valid: {reason}")]
    Parse {
        path: PathBuf,
        reason: Box<toml::de::Error>,
    },
}

/// A setting that makes no sense, named by its key.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {key}: {why}")]
pub struct ConfigInvalid {
    pub key: &'static str,
    pub why: String,
}

/// `Err(ConfigInvalid)` for `key`, for the body of a `validate`.
pub fn invalid<T>(key: &'static str, why: impl Into<String>) -> Result<T, ConfigInvalid> {
    Err(ConfigInvalid {
        key,
        why: why.into(),
    })
}

/// A daemon's configuration: TOML where every key has a default, checked after loading.
pub trait DaemonConfig: DeserializeOwned + Default + std::fmt::Debug {
    fn validate(&self) -> Result<(), ConfigInvalid>;
}

/// Reads `path` as TOML. A missing file gives the defaults (`T::default()`): a fresh machine
/// runs without any config; any other read error or a malformed file is an error naming it.
pub fn load<T: DeserializeOwned + Default>(path: &Path) -> Result<T, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|reason| ConfigError::Parse {
            path: path.to_owned(),
            reason: Box::new(reason),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(reason) => Err(ConfigError::Read {
            path: path.to_owned(),
            reason,
        }),
    }
}

/// Checks a daemon's shipped config file (`dist/<daemon>.toml`, every key commented out with
/// its default): as shipped it must give the defaults, and with every `#key = value` line
/// uncommented it must parse and validate, so each documented key exists and its example has
/// the right type. For the daemons' unit tests.
pub fn check_shipped_config<T: DaemonConfig + PartialEq>(text: &str) -> Result<(), String> {
    let shipped: T = toml::from_str(text).map_err(|e| format!("as shipped: {e}"))?;
    if shipped != T::default() {
        return Err(format!("as shipped it is not the defaults: {shipped:?}"));
    }
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if !rest.starts_with([' ', '#']) && rest.contains(" = ") => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    if uncommented == text {
        return Err("no commented-out `#key = value` lines".into());
    }
    let all: T = toml::from_str(&uncommented).map_err(|e| format!("uncommented: {e}"))?;
    all.validate()
        .map_err(|e| format!("uncommented, it does not validate: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        port: u16,
    }

    #[test]
    fn missing_file_gives_defaults_and_bad_file_names_itself() {
        let dir = std::env::temp_dir().join(format!("uncloud-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.toml");
        assert_eq!(load::<Sample>(&missing).unwrap(), Sample::default());

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "port = \"eighty\"\n").unwrap();
        let err = load::<Sample>(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.toml"), "{err}");

        let unknown = dir.join("unknown.toml");
        std::fs::write(&unknown, "prot = 80\n").unwrap();
        let err = load::<Sample>(&unknown).unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");

        let good = dir.join("good.toml");
        std::fs::write(&good, "port = 80\n").unwrap();
        assert_eq!(load::<Sample>(&good).unwrap(), Sample { port: 80 });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

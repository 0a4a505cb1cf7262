//! The machine's stable id, kept in `<data_dir>/machine-id`.
//!
//! It is created once, on first start, and written atomically (temp file, fsync, rename), so a
//! crash never leaves a half-written id that would make the machine a stranger to its network.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot create data directory {path}: {reason}")]
    CreateDir {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("cannot read machine id {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("machine id file {path} holds {content:?}, not a machine id")]
    Invalid { path: PathBuf, content: String },
    #[error("cannot write machine id {path}: {reason}")]
    Write {
        path: PathBuf,
        reason: std::io::Error,
    },
}

/// Reads the machine id, creating a random one on first start.
pub fn load_or_create(data_dir: &Path) -> Result<String, IdentityError> {
    std::fs::create_dir_all(data_dir).map_err(|reason| IdentityError::CreateDir {
        path: data_dir.to_owned(),
        reason,
    })?;
    let path = data_dir.join("machine-id");
    match std::fs::read_to_string(&path) {
        Ok(content) => {
            let id = content.trim();
            if uncloud_common::model::validate_id("machine id", id).is_err() {
                return Err(IdentityError::Invalid {
                    path,
                    content: content.chars().take(80).collect(),
                });
            }
            Ok(id.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("{:016x}", rand::random::<u64>());
            write_atomically(&path, format!("{id}\n").as_bytes())
                .map_err(|reason| IdentityError::Write { path, reason })?;
            Ok(id)
        }
        Err(reason) => Err(IdentityError::Read { path, reason }),
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never a mix.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    uncloud_common::durable::write_atomically(path, bytes, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        assert_eq!(a.len(), 16);
        assert_eq!(load_or_create(dir.path()).unwrap(), a);
        std::fs::write(dir.path().join("machine-id"), "not/an id").unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("machine-id"), "{err}");
    }
}

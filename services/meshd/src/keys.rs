//! The machine's WireGuard key pair: generated on first start, kept across restarts.
//!
//! The private key is stored base64-encoded in `<data_dir>/private.key`, mode 0600, in a 0700
//! directory, written atomically (temp file, fsync, rename, fsync of the directory) so a
//! power cut never leaves half a key. An unreadable or malformed key file is an error, never
//! silently replaced: the network knows this machine by its public key, and replacing it
//! would cut the machine off until the new key propagates.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use gotatun::x25519::{PublicKey, StaticSecret};
use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the private key {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error(
        "the private key file {path} is malformed ({why}); move it away to generate a new key \
         (this machine's peers then need the new public key from the state)"
    )]
    Malformed { path: PathBuf, why: String },
    #[error("cannot store the private key in {path}: {reason}")]
    Write {
        path: PathBuf,
        reason: std::io::Error,
    },
}

/// Decodes a base64 WireGuard key (32 bytes), as in `wg` configs and the state.
pub fn decode(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{} bytes, expected 32", bytes.len()))
}

pub fn encode(key: &[u8; 32]) -> String {
    STANDARD.encode(key)
}

/// The public key of `secret`, base64.
pub fn public_of(secret: &StaticSecret) -> String {
    encode(PublicKey::from(secret).as_bytes())
}

/// Loads the private key at `path`, creating it (and its directory) on first start.
/// Returns the key and whether it was just created.
pub fn load_or_create(path: &Path) -> Result<(StaticSecret, bool), KeyError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let key = decode(&text).map_err(|why| KeyError::Malformed {
                path: path.to_owned(),
                why,
            })?;
            tighten_mode(path);
            Ok((StaticSecret::from(key), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            write_atomically(path, &encode(&key)).map_err(|reason| KeyError::Write {
                path: path.to_owned(),
                reason,
            })?;
            Ok((StaticSecret::from(key), true))
        }
        Err(reason) => Err(KeyError::Read {
            path: path.to_owned(),
            reason,
        }),
    }
}

/// A key file readable by others (copied in by hand, say) is made private again.
fn tighten_mode(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "private key was readable by others; setting mode 0600");
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
        }
    }
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    uncloud_common::durable::write_atomically(path, format!("{text}\n").as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meshd/private.key");
        let (a, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let (b, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(public_of(&a), public_of(&b));
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn a_malformed_key_is_an_error_and_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.key");
        fs::write(&path, "not a key").unwrap();
        let Err(e) = load_or_create(&path) else {
            panic!("a malformed key was accepted")
        };
        assert!(e.to_string().contains("malformed"), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "not a key");
        fs::write(&path, &encode(&[7; 32])[..20]).unwrap();
        assert!(load_or_create(&path).is_err());
    }

    #[test]
    fn loose_permissions_are_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.key");
        fs::write(&path, encode(&[9; 32])).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        load_or_create(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn decode_checks_length_and_alphabet() {
        assert_eq!(decode(&encode(&[1; 32])).unwrap(), [1; 32]);
        assert!(decode("!!!").unwrap_err().contains("base64"));
        assert!(decode(&STANDARD.encode([1u8; 31]))
            .unwrap_err()
            .contains("31"));
    }
}

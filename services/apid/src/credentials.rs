//! This machine's CA and apid's server certificate, kept in apid's data directory.
//!
//! | file | what |
//! |---|---|
//! | `ca.key` (0600) | the machine CA's private key; never leaves the machine |
//! | `ca.crt` | its certificate |
//! | `server.key` (0600), `server.crt` | apid's member-mode certificate, issued by that CA |
//!
//! Made once when the machine becomes a member (decision 0009: one CA per machine).

use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use uncloud_common::durable;
use uncloud_pki::MachineCa;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the credentials in {dir} are unusable: {reason}")]
    Unusable { dir: PathBuf, reason: String },
}

pub struct Credentials {
    pub ca: MachineCa,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

const FILES: [&str; 4] = ["ca.key", "ca.crt", "server.key", "server.crt"];

impl Credentials {
    /// The credentials in `dir`, `None` if there are none yet.
    pub fn load(dir: &Path) -> Result<Option<Credentials>, CredentialsError> {
        if !dir.join(FILES[3]).exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CredentialsError::Io {
                what: "read",
                path,
                source,
            })
        };
        let ca = MachineCa::from_pem(&read(FILES[0])?, &read(FILES[1])?).map_err(|e| {
            CredentialsError::Unusable {
                dir: dir.to_owned(),
                reason: e.to_string(),
            }
        })?;
        Ok(Some(Credentials {
            ca,
            server_key_pem: read(FILES[2])?,
            server_cert_pem: read(FILES[3])?,
        }))
    }

    /// Makes and stores new credentials for `machine_id` of `network_id`. The server
    /// certificate is written last, so a crash half-way leaves "none yet".
    pub fn create(
        dir: &Path,
        network_id: &str,
        machine_id: &str,
        names: &[String],
    ) -> Result<Credentials, CredentialsError> {
        let unusable = |e: uncloud_pki::PkiError| CredentialsError::Unusable {
            dir: dir.to_owned(),
            reason: e.to_string(),
        };
        let now = OffsetDateTime::now_utc();
        let ca = MachineCa::generate(network_id, machine_id, now).map_err(unusable)?;
        let server = ca.issue_server(names, now).map_err(unusable)?;
        let creds = Credentials {
            server_key_pem: server.key_pem.expect("issue_server makes the key"),
            server_cert_pem: server.cert_pem,
            ca,
        };
        std::fs::create_dir_all(dir).map_err(|source| CredentialsError::Io {
            what: "create",
            path: dir.to_owned(),
            source,
        })?;
        let contents = [
            (FILES[0], creds.ca.key_pem(), 0o600),
            (FILES[1], creds.ca.cert_pem().to_owned(), 0o644),
            (FILES[2], creds.server_key_pem.clone(), 0o600),
            (FILES[3], creds.server_cert_pem.clone(), 0o644),
        ];
        for (name, text, mode) in contents {
            let path = dir.join(name);
            durable::write_atomically(&path, text.as_bytes(), mode).map_err(|source| {
                CredentialsError::Io {
                    what: "write",
                    path,
                    source,
                }
            })?;
        }
        Ok(creds)
    }

    /// The stored credentials, or new ones.
    pub fn load_or_create(
        dir: &Path,
        network_id: &str,
        machine_id: &str,
        names: &[String],
    ) -> Result<Credentials, CredentialsError> {
        match Credentials::load(dir)? {
            Some(c) => Ok(c),
            None => Credentials::create(dir, network_id, machine_id, names),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_with_secret_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(Credentials::load(dir.path()).unwrap().is_none());
        let names = ["localhost".to_string()];
        let a = Credentials::load_or_create(dir.path(), "net", "m1", &names).unwrap();
        let b = Credentials::load_or_create(dir.path(), "net", "m1", &names).unwrap();
        assert_eq!(a.ca.fingerprint(), b.ca.fingerprint());
        assert_eq!(a.server_cert_pem, b.server_cert_pem);
        for secret in ["ca.key", "server.key"] {
            let mode = std::fs::metadata(dir.path().join(secret))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{secret}");
        }
    }
}

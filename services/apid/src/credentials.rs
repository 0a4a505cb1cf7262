//! This machine's CA and apid's server certificate, kept in apid's data directory.
//!
//! | file | what |
//! |---|---|
//! | `ca.key` (0600) | the machine CA's private key; never leaves the machine |
//! | `ca.crt` | its certificate |
//! | `server.key` (0600), `server.crt` | apid's member-mode certificate, issued by that CA |
//!
//! Made once when the machine becomes a member (decision 0009: one CA per machine). The
//! server certificate is issued again when it nears its end or is not valid by this
//! machine's clock (see [`Credentials::server_cert_due`]).

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

    /// Makes and stores new credentials for `machine_id` of `network_id`, dated `now`. The
    /// server certificate is written last, so a crash half-way leaves "none yet".
    pub fn create(
        dir: &Path,
        network_id: &str,
        machine_id: &str,
        names: &[String],
        now: OffsetDateTime,
    ) -> Result<Credentials, CredentialsError> {
        let unusable = |e: uncloud_pki::PkiError| CredentialsError::Unusable {
            dir: dir.to_owned(),
            reason: e.to_string(),
        };
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
        store(
            dir,
            &[
                (FILES[0], &creds.ca.key_pem(), 0o600),
                (FILES[1], creds.ca.cert_pem(), 0o644),
                (FILES[2], &creds.server_key_pem, 0o600),
                (FILES[3], &creds.server_cert_pem, 0o644),
            ],
        )?;
        Ok(creds)
    }

    /// The stored credentials, or new ones dated `now`. A stored server certificate that
    /// [`Credentials::server_cert_due`] is issued again, dated `now`.
    pub fn load_or_create(
        dir: &Path,
        network_id: &str,
        machine_id: &str,
        names: &[String],
        now: OffsetDateTime,
    ) -> Result<Credentials, CredentialsError> {
        match Credentials::load(dir)? {
            Some(mut c) => {
                if c.server_cert_due(now) {
                    c.renew_server_cert(dir, names, now)?;
                }
                Ok(c)
            }
            None => Credentials::create(dir, network_id, machine_id, names, now),
        }
    }

    /// Whether the server certificate must be issued again at `now`: it is not valid yet
    /// (it was dated by a clock that was ahead), has less than [`RENEW_BEFORE`] left (dated
    /// by a clock that was behind, or simply old), is unreadable, or is not the key's (a
    /// renewal cut short between its two files).
    pub fn server_cert_due(&self, now: OffsetDateTime) -> bool {
        let Ok(der) = uncloud_pki::pem_to_der(&self.server_cert_pem) else {
            return true;
        };
        let Ok(info) = uncloud_pki::CertInfo::parse(&der) else {
            return true;
        };
        let matches = uncloud_pki::Fingerprint::of_key_pem(&self.server_key_pem)
            .is_ok_and(|key| key == info.key);
        !matches || now < info.not_before || info.not_after - now < RENEW_BEFORE
    }

    /// Issues the server certificate again (new key), dated `now`, and stores it.
    pub fn renew_server_cert(
        &mut self,
        dir: &Path,
        names: &[String],
        now: OffsetDateTime,
    ) -> Result<(), CredentialsError> {
        let server = self
            .ca
            .issue_server(names, now)
            .map_err(|e| CredentialsError::Unusable {
                dir: dir.to_owned(),
                reason: e.to_string(),
            })?;
        let key_pem = server.key_pem.expect("issue_server makes the key");
        // Two files cannot change at once: a crash between them leaves a key and a
        // certificate that do not match, which `server_cert_due` sees at the next start.
        store(
            dir,
            &[
                (FILES[2], &key_pem, 0o600),
                (FILES[3], &server.cert_pem, 0o644),
            ],
        )?;
        self.server_key_pem = key_pem;
        self.server_cert_pem = server.cert_pem;
        tracing::info!("issued apid's server certificate again");
        Ok(())
    }
}

/// Writes each (file name, contents, mode) in `dir`, durably, in order.
fn store(dir: &Path, files: &[(&str, &str, u32)]) -> Result<(), CredentialsError> {
    for (name, text, mode) in files {
        let path = dir.join(name);
        durable::write_atomically(&path, text.as_bytes(), *mode).map_err(|source| {
            CredentialsError::Io {
                what: "write",
                path,
                source,
            }
        })?;
    }
    Ok(())
}

/// A server certificate with less than this left is issued again (it is valid a year).
pub const RENEW_BEFORE: time::Duration = time::Duration::days(30);

/// The time to date this machine's credentials by when it joins: its own clock, unless the
/// issuer's (`issuer_secs`, 0 when unknown) differs by more than [`MAX_SKEW`]. A Raspberry Pi
/// has no real-time clock: its first boot may think it is 1970 or the image's build day.
pub fn credentials_time(local: OffsetDateTime, issuer_secs: u64) -> OffsetDateTime {
    if issuer_secs == 0 {
        return local;
    }
    match OffsetDateTime::from_unix_timestamp(issuer_secs.min(i64::MAX as u64) as i64) {
        Ok(issuer) if (issuer - local).abs() > MAX_SKEW => issuer,
        _ => local,
    }
}

/// Clock differences up to this are left alone (certificates are back-dated two days).
pub const MAX_SKEW: time::Duration = time::Duration::minutes(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_with_secret_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert!(Credentials::load(dir.path()).unwrap().is_none());
        let names = ["localhost".to_string()];
        let now = OffsetDateTime::now_utc();
        let a = Credentials::load_or_create(dir.path(), "net", "m1", &names, now).unwrap();
        let b = Credentials::load_or_create(dir.path(), "net", "m1", &names, now).unwrap();
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

    #[test]
    fn a_server_certificate_is_issued_again_when_the_clock_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["localhost".to_string()];
        let now = OffsetDateTime::now_utc();
        // Dated two years ago (a clock that was behind at the first boot).
        let old = now - time::Duration::days(730);
        let a = Credentials::load_or_create(dir.path(), "net", "m1", &names, old).unwrap();
        assert!(!a.server_cert_due(old + time::Duration::days(1)));
        assert!(a.server_cert_due(now), "expired by the right clock");
        assert!(
            a.server_cert_due(old + time::Duration::days(340)),
            "in its last month"
        );
        assert!(
            a.server_cert_due(old - time::Duration::days(3)),
            "not valid yet (certificates are back-dated two days)"
        );
        let b = Credentials::load_or_create(dir.path(), "net", "m1", &names, now).unwrap();
        assert_eq!(a.ca.fingerprint(), b.ca.fingerprint(), "the CA stays");
        assert!(!b.server_cert_due(now), "issued again, valid now");
        let c = Credentials::load(dir.path()).unwrap().unwrap();
        assert_eq!(c.server_cert_pem, b.server_cert_pem, "and stored");
        assert_eq!(c.server_key_pem, b.server_key_pem);
        // A renewal cut short after the key: the pair no longer matches, so it is due.
        std::fs::write(dir.path().join("server.key"), &a.server_key_pem).unwrap();
        let torn = Credentials::load(dir.path()).unwrap().unwrap();
        assert!(torn.server_cert_due(now));
        let healed = Credentials::load_or_create(dir.path(), "net", "m1", &names, now).unwrap();
        assert!(!healed.server_cert_due(now));
    }

    #[test]
    fn a_far_off_clock_is_replaced_by_the_issuers() {
        let now = OffsetDateTime::now_utc();
        let secs = |t: OffsetDateTime| t.unix_timestamp() as u64;
        assert_eq!(
            credentials_time(now, 0),
            now,
            "an older issuer says nothing"
        );
        let close = now + time::Duration::minutes(2);
        assert_eq!(
            credentials_time(now, secs(close)),
            now,
            "small skew: own clock"
        );
        let pi_at_boot = OffsetDateTime::UNIX_EPOCH + time::Duration::days(3);
        let used = credentials_time(pi_at_boot, secs(now));
        assert_eq!(
            used.unix_timestamp(),
            now.unix_timestamp(),
            "the issuer's clock"
        );
        let ahead = now + time::Duration::days(400);
        assert_eq!(
            credentials_time(ahead, secs(now)).unix_timestamp(),
            now.unix_timestamp()
        );
    }
}

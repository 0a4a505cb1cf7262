//! Where a machine's local identity lives: the files `uncloud-firstboot init` prepares at
//! boot and `apid` serves from.
//!
//! | file in [`DIR`] | written by | what |
//! |---|---|---|
//! | [`TLS_KEY`] | firstboot, once | PEM private key (ECDSA P-256), 0600 |
//! | [`TLS_CERT`] | firstboot, once | self-signed PEM certificate for that key, CN and SAN the hostname |
//! | [`SETUP_TOKEN`] | firstboot, once | one line: the one-time token `uc machine init` must present |
//! | [`JOIN_TICKET`] | firstboot, when given | one line: a join ticket from `uc machine add`, for apid to consume |
//! | [`INITIALISED`] | apid | empty marker: the machine belongs to a network (no maintenance mode) |
//!
//! The directory is 0700 and every secret 0600, all owned by root.

use std::path::{Path, PathBuf};

/// The identity directory, mode 0700.
pub const DIR: &str = "/var/lib/uncloud/identity";
/// File names inside [`DIR`].
pub const TLS_KEY: &str = "tls.key";
pub const TLS_CERT: &str = "tls.crt";
pub const SETUP_TOKEN: &str = "setup-token";
pub const JOIN_TICKET: &str = "join-ticket";
pub const INITIALISED: &str = "initialised";

/// The identity files under some root: `/` on a machine, a temporary directory in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPaths {
    pub dir: PathBuf,
}

impl IdentityPaths {
    /// The identity directory under `root` (`/` gives [`DIR`] itself).
    pub fn under(root: &Path) -> Self {
        IdentityPaths {
            dir: root.join(DIR.trim_start_matches('/')),
        }
    }

    pub fn tls_key(&self) -> PathBuf {
        self.dir.join(TLS_KEY)
    }

    pub fn tls_cert(&self) -> PathBuf {
        self.dir.join(TLS_CERT)
    }

    pub fn setup_token(&self) -> PathBuf {
        self.dir.join(SETUP_TOKEN)
    }

    pub fn join_ticket(&self) -> PathBuf {
        self.dir.join(JOIN_TICKET)
    }

    pub fn initialised(&self) -> PathBuf {
        self.dir.join(INITIALISED)
    }
}

impl Default for IdentityPaths {
    fn default() -> Self {
        IdentityPaths::under(Path::new("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_a_root() {
        assert_eq!(
            IdentityPaths::default().setup_token(),
            Path::new("/var/lib/uncloud/identity/setup-token")
        );
        assert_eq!(
            IdentityPaths::under(Path::new("/tmp/r")).tls_cert(),
            Path::new("/tmp/r/var/lib/uncloud/identity/tls.crt")
        );
    }
}

//! `uncloud-firstboot init`: prepares the machine's identity before the daemons start. Runs at
//! every boot and only fills in what is missing or newly given, so it is safe to repeat.
//!
//! Inputs, in the order they are read (a later one wins):
//! 1. the Pi's boot partition: `/boot/firmware/uncloud-setup.toml` (hostname, token, ticket);
//! 2. cloud-init's `write_files`: `/etc/uncloud/setup-token`, `/etc/uncloud/join-ticket`.
//!
//! A valid secret is moved into `/var/lib/uncloud/identity/` (0600) and removed from where it
//! was given. A bad one is left where it is, untouched, and reported as a warning (journal
//! and console banner), so nothing the user wrote is lost.

use std::path::{Path, PathBuf};

use uncloud_common::identity::IdentityPaths;

use crate::setup_file::{self, SetupFile};
use crate::store::{self, StoreError};
use crate::tls::{self, TlsError};
use crate::token::{self, SecretError};

/// Where cloud-init's user-data puts a token and a ticket (`write_files`).
pub const ETC_SETUP_TOKEN: &str = "etc/uncloud/setup-token";
pub const ETC_JOIN_TICKET: &str = "etc/uncloud/join-ticket";
/// Warnings of the last run, for the console banner (cleared at boot: under /run).
pub const WARNINGS: &str = "run/uncloud/firstboot-warnings";
/// What the boot partition's file is reset to when its secrets cannot be scrubbed line by line.
const SETUP_TEMPLATE: &str = include_str!("../dist/uncloud-setup.toml");
const DEFAULT_HOSTNAME: &str = "uncloud";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("cannot set the hostname to {0}: {1}")]
    Hostname(String, nix::Error),
}

/// One run of `init`.
pub struct Init {
    /// `/` on a machine; a temporary directory in tests.
    pub root: PathBuf,
    /// Also call sethostname(2) when the boot partition names a hostname (not in tests).
    pub apply_hostname: bool,
}

/// What a run did (without any secret), and what it could not use.
#[derive(Debug, Default)]
pub struct Outcome {
    pub done: Vec<String>,
    pub warnings: Vec<String>,
}

impl Init {
    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    pub fn run(&self) -> Result<Outcome, InitError> {
        let mut out = Outcome::default();
        let id = IdentityPaths::under(&self.root);
        store::ensure_dir(&id.dir, 0o700)?;

        let mut token: Option<(String, String)> = None; // (value, where from)
        let mut ticket: Option<(String, String)> = None;
        let mut consumed: Vec<PathBuf> = Vec::new();

        if let Some(warning) = self.boot_partition_missing() {
            out.warnings.push(warning);
        }
        let boot_file = self.path(setup_file::PATH.trim_start_matches('/'));
        let mut boot_text = None;
        if let Some(text) = store::read_optional(&boot_file)? {
            match SetupFile::parse(&text) {
                Ok(f) => {
                    if let Some(h) = &f.hostname {
                        self.set_hostname(h, &mut out)?;
                    }
                    let from = boot_file.display().to_string();
                    token = f.setup_token.map(|t| (t, from.clone()));
                    ticket = f.join_ticket.map(|t| (t, from));
                    boot_text = Some(text);
                }
                Err(e) => out.warnings.push(format!(
                    "{}: {e}; the file was left as it is and nothing in it was used",
                    boot_file.display()
                )),
            }
        }
        for (rel, slot, check) in [
            (
                ETC_SETUP_TOKEN,
                &mut token,
                token::check_token as fn(&str) -> _,
            ),
            (ETC_JOIN_TICKET, &mut ticket, token::check_ticket),
        ] {
            let path = self.path(rel);
            if let Some(text) = store::read_optional(&path)? {
                match check(&text) {
                    Ok(v) => {
                        *slot = Some((v, path.display().to_string()));
                        consumed.push(path);
                    }
                    Err(e) => out.warnings.push(format!(
                        "{}: {e}; the file was left as it is and not used",
                        path.display()
                    )),
                }
            }
        }

        // Secrets first onto the machine's disk, then removed from where they were given.
        if let Some((value, from)) = &token {
            store::write_atomic(&id.setup_token(), format!("{value}\n").as_bytes(), 0o600)?;
            out.done.push(format!("setup token taken from {from}"));
        }
        if let Some((value, from)) = &ticket {
            store::write_atomic(&id.join_ticket(), format!("{value}\n").as_bytes(), 0o600)?;
            out.done.push(format!("join ticket taken from {from}"));
        }
        // Failing to remove a source leaves a copy behind, but the machine has its secret:
        // a warning, and the rest of the setup goes on.
        for path in consumed {
            if let Err(e) = store::remove(&path) {
                out.warnings.push(format!("{e}; remove it by hand"));
            }
        }
        if let Some(text) = boot_text {
            if SetupFile::parse(&text).is_ok_and(|f| f.has_secrets()) {
                let scrubbed =
                    setup_file::without_secrets(&text).unwrap_or_else(|| SETUP_TEMPLATE.to_owned());
                // FAT has no modes; the partition is mounted 0077 anyway.
                match store::write_atomic(&boot_file, scrubbed.as_bytes(), 0o600) {
                    Ok(()) => out
                        .done
                        .push(format!("secrets removed from {}", boot_file.display())),
                    Err(e) => out.warnings.push(format!(
                        "{e}: the secrets are still on the boot partition; remove them by hand"
                    )),
                }
            }
        }

        if store::read_optional(&id.setup_token())?.is_none() {
            let t = token::generate_token()?;
            store::write_atomic(&id.setup_token(), format!("{t}\n").as_bytes(), 0o600)?;
            out.done.push("setup token generated".into());
        }
        if store::read_optional(&id.tls_key())?.is_none()
            || store::read_optional(&id.tls_cert())?.is_none()
        {
            let host = self.hostname()?;
            let identity = tls::generate(&host)?;
            // The key before the certificate: a certificate never exists without its key.
            store::write_atomic(&id.tls_key(), identity.key_pem.as_bytes(), 0o600)?;
            store::write_atomic(&id.tls_cert(), identity.cert_pem.as_bytes(), 0o644)?;
            out.done.push(format!(
                "TLS key and certificate generated for {host} (sha256 {})",
                tls::fingerprint(&identity.cert_pem)?
            ));
        }

        let warnings = self.path(WARNINGS);
        store::ensure_dir(warnings.parent().unwrap(), 0o755)?;
        if out.warnings.is_empty() {
            store::remove(&warnings)?;
        } else {
            store::write_atomic(&warnings, out.warnings.join("\n").as_bytes(), 0o600)?;
        }
        Ok(out)
    }

    /// The hostname the certificate names: `/etc/hostname`, else the default.
    /// A machine with a boot partition (the Pi: fstab mounts it at `/boot/firmware`) whose
    /// partition is not mounted would silently lose the setup file on it. The unit waits for
    /// the mount (fstab gives the device minutes to appear); if it still is not there, say so.
    fn boot_partition_missing(&self) -> Option<String> {
        let mount = setup_file::BOOT_MOUNT;
        let fstab = std::fs::read_to_string(self.path("etc/fstab")).ok()?;
        let listed = fstab
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .any(|l| l.split_whitespace().nth(1) == Some(mount));
        if !listed {
            return None;
        }
        let mountinfo =
            std::fs::read_to_string(self.path("proc/self/mountinfo")).unwrap_or_default();
        let mounted = mountinfo
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some(mount));
        (!mounted).then(|| {
            format!(
                "the boot partition ({mount}) is not mounted, so {} could not be read: its \
                 hostname, token and ticket were not used; check the SD card and reboot",
                setup_file::PATH
            )
        })
    }

    fn hostname(&self) -> Result<String, InitError> {
        let text = store::read_optional(&self.path("etc/hostname"))?.unwrap_or_default();
        let h = text.trim();
        Ok(if setup_file::check_hostname(h).is_ok() {
            h.to_owned()
        } else {
            DEFAULT_HOSTNAME.to_owned()
        })
    }

    fn set_hostname(&self, host: &str, out: &mut Outcome) -> Result<(), InitError> {
        let etc = self.path("etc/hostname");
        if store::read_optional(&etc)?.as_deref().map(str::trim) == Some(host) {
            return Ok(());
        }
        // The kernel first: a name it refuses is not written to /etc/hostname either.
        if self.apply_hostname {
            nix::unistd::sethostname(host).map_err(|e| InitError::Hostname(host.to_owned(), e))?;
        }
        store::write_atomic(&etc, format!("{host}\n").as_bytes(), 0o644)?;
        out.done.push(format!("hostname set to {host}"));
        Ok(())
    }
}

/// The warnings the last `init` left for the banner.
pub fn last_warnings(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join(WARNINGS))
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn init(root: &Path) -> Init {
        Init {
            root: root.to_owned(),
            apply_hostname: false,
        }
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn read(root: &Path, rel: &str) -> Option<String> {
        fs::read_to_string(root.join(rel)).ok()
    }

    fn mode(p: PathBuf) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_bare_machine_gets_a_token_and_a_key_and_keeps_them_on_the_next_boot() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "etc/hostname", "vps-1\n");
        let out = init(root).run().unwrap();
        assert!(out.warnings.is_empty(), "{out:?}");
        let id = IdentityPaths::under(root);
        let token = fs::read_to_string(id.setup_token()).unwrap();
        let cert = fs::read_to_string(id.tls_cert()).unwrap();
        assert_eq!(mode(id.dir.clone()), 0o700);
        assert_eq!(mode(id.setup_token()), 0o600);
        assert_eq!(mode(id.tls_key()), 0o600);
        assert!(out.done.iter().any(|d| d.contains("for vps-1")), "{out:?}");
        // No secret in what is reported (it goes to the journal).
        assert!(!format!("{out:?}").contains(token.trim()));

        let again = init(root).run().unwrap();
        assert!(again.done.is_empty(), "{again:?}");
        assert_eq!(fs::read_to_string(id.setup_token()).unwrap(), token);
        assert_eq!(fs::read_to_string(id.tls_cert()).unwrap(), cert);
    }

    #[test]
    fn cloud_init_files_are_moved_into_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, ETC_SETUP_TOKEN, "pick-a-long-random-token\n");
        write(root, ETC_JOIN_TICKET, "ticket.abc.def\n");
        let out = init(root).run().unwrap();
        let id = IdentityPaths::under(root);
        assert_eq!(
            fs::read_to_string(id.setup_token()).unwrap(),
            "pick-a-long-random-token\n"
        );
        assert_eq!(
            fs::read_to_string(id.join_ticket()).unwrap(),
            "ticket.abc.def\n"
        );
        assert_eq!(read(root, ETC_SETUP_TOKEN), None);
        assert_eq!(read(root, ETC_JOIN_TICKET), None);
        assert!(!out
            .done
            .iter()
            .any(|d| d.contains("generated") && d.contains("token")));
        // A new token given later replaces the old one.
        write(root, ETC_SETUP_TOKEN, "another-long-random-token");
        init(root).run().unwrap();
        assert_eq!(
            fs::read_to_string(id.setup_token()).unwrap(),
            "another-long-random-token\n"
        );
    }

    #[test]
    fn a_bad_token_is_left_in_place_and_warned_about_and_one_is_generated() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, ETC_SETUP_TOKEN, "short\n");
        let out = init(root).run().unwrap();
        assert_eq!(read(root, ETC_SETUP_TOKEN).as_deref(), Some("short\n"));
        assert_eq!(out.warnings.len(), 1, "{out:?}");
        assert!(out.warnings[0].contains("16 to 128"), "{out:?}");
        assert_eq!(last_warnings(root), out.warnings);
        assert!(out.done.contains(&"setup token generated".to_string()));
        // Fixed: the warning goes away.
        write(root, ETC_SETUP_TOKEN, "now-a-long-enough-token");
        assert!(init(root).run().unwrap().warnings.is_empty());
        assert!(last_warnings(root).is_empty());
    }

    #[test]
    fn the_pi_boot_file_sets_the_hostname_and_gives_up_its_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let boot = setup_file::PATH.trim_start_matches('/');
        fs::create_dir(root.join("etc")).unwrap();
        write(
            root,
            boot,
            "# mine\nhostname = \"pi-kitchen\"\nsetup_token = \"pick-a-long-random-token\"\njoin_ticket = \"t.1\"\n",
        );
        let out = init(root).run().unwrap();
        assert!(out.warnings.is_empty(), "{out:?}");
        assert_eq!(read(root, "etc/hostname").as_deref(), Some("pi-kitchen\n"));
        let id = IdentityPaths::under(root);
        assert_eq!(
            fs::read_to_string(id.setup_token()).unwrap(),
            "pick-a-long-random-token\n"
        );
        assert_eq!(fs::read_to_string(id.join_ticket()).unwrap(), "t.1\n");
        let left = read(root, boot).unwrap();
        assert!(left.contains("# mine\nhostname = \"pi-kitchen\""), "{left}");
        assert!(
            !left.contains("pick-a-long") && !left.contains("t.1"),
            "{left}"
        );
        assert!(
            out.done.iter().any(|d| d.contains("for pi-kitchen")),
            "{out:?}"
        );
    }

    #[test]
    fn a_broken_pi_boot_file_is_left_alone_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let boot = setup_file::PATH.trim_start_matches('/');
        let text = "setup_token = \"unterminated\n";
        write(root, boot, text);
        let out = init(root).run().unwrap();
        assert_eq!(read(root, boot).as_deref(), Some(text));
        assert!(out.warnings[0].contains("uncloud-setup.toml"), "{out:?}");
        assert_eq!(read(root, "etc/hostname"), None);
    }

    #[test]
    fn a_boot_partition_that_did_not_mount_is_named_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let fstab = "LABEL=rootfs / ext4 defaults 0 1\n\
                     LABEL=RASPIFIRM /boot/firmware vfat defaults,nofail 0 2\n";
        write(dir.path(), "etc/fstab", fstab);
        write(
            dir.path(),
            "proc/self/mountinfo",
            "22 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n",
        );
        let out = init(dir.path()).run().unwrap();
        assert!(
            out.warnings
                .iter()
                .any(|w| w.contains("/boot/firmware) is not mounted")),
            "{:?}",
            out.warnings
        );
        // Mounted: no warning. A machine without a boot partition: none either.
        write(
            dir.path(),
            "proc/self/mountinfo",
            "22 1 254:1 / / rw - ext4 /dev/vda1 rw\n\
             30 22 179:1 / /boot/firmware rw - vfat /dev/mmcblk0p1 rw\n",
        );
        assert!(init(dir.path()).run().unwrap().warnings.is_empty());
        write(
            dir.path(),
            "etc/fstab",
            "LABEL=rootfs / ext4 defaults 0 1\n",
        );
        write(dir.path(), "proc/self/mountinfo", "");
        assert!(init(dir.path()).run().unwrap().warnings.is_empty());
    }

    #[test]
    fn cloud_init_wins_over_the_boot_partition() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            setup_file::PATH.trim_start_matches('/'),
            "setup_token = \"token-from-the-sd-card\"\n",
        );
        write(root, ETC_SETUP_TOKEN, "token-from-cloud-init");
        init(root).run().unwrap();
        assert_eq!(
            fs::read_to_string(IdentityPaths::under(root).setup_token()).unwrap(),
            "token-from-cloud-init\n"
        );
    }
}

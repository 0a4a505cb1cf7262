//! Files services mount (Compose `secrets` and `configs`): their digests, how their contents
//! are stored in the state, which mounts a spec may ask for, and when a stored content may go.
//!
//! A content is stored once in [`NetworkState::files`] under its digest and never changes; a
//! spec names it by digest ([`FileMount`]). Pure functions: `uc` computes digests, apid and
//! stated check them, the shim checks what it writes.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;

use crate::model::{FileMount, ModelError, NetworkState, Service, ServiceSpec, StoredFile};

/// Largest content of one file. Every machine holds every file, and the state keeps what it
/// once held in its history; a bigger file belongs in the image or a volume.
pub const MAX_FILE_BYTES: usize = 64 * 1024;

/// Most files one service may mount.
pub const MAX_MOUNTS: usize = 64;

/// How long a stored content must stay unnamed by every spec before it is removed: long
/// enough that a deploy which stored it has written its specs.
pub const UNREFERENCED_GRACE: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// What a secret's digest reads as for those who may not see it (the reader role): an
/// unsalted digest of a weak password can be guessed offline.
pub const HIDDEN_DIGEST: &str = "hidden";

/// The digest that keys a content: `sha256-<64 hex digits>`.
pub fn digest(content: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, content);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256-");
    for b in d.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A content ready to be stored.
pub fn stored(content: &[u8], now_ms: u64) -> StoredFile {
    StoredFile {
        digest: digest(content),
        content: base64::engine::general_purpose::STANDARD.encode(content),
        stored_at_ms: now_ms,
    }
}

/// The bytes of a stored content, checked against the digest it should have.
pub fn decode(content_b64: &str, digest_wanted: &str) -> Result<Vec<u8>, ModelError> {
    // Base64 of MAX_FILE_BYTES, rounded up: refuse before decoding anything bigger.
    let max_b64 = MAX_FILE_BYTES.div_ceil(3) * 4;
    if content_b64.len() > max_b64 {
        return Err(ModelError::TooLarge {
            what: "file content",
            len: content_b64.len() / 4 * 3,
            max: MAX_FILE_BYTES,
        });
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(content_b64)
        .map_err(|_| ModelError::Invalid {
            what: "file content",
            value: String::new(),
            why: "not base64",
        })?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(ModelError::TooLarge {
            what: "file content",
            len: bytes.len(),
            max: MAX_FILE_BYTES,
        });
    }
    if digest(&bytes) != digest_wanted {
        return Err(ModelError::Invalid {
            what: "file digest",
            value: digest_wanted.chars().take(80).collect(),
            why: "does not match the content",
        });
    }
    Ok(bytes)
}

/// Checks the files a spec mounts: absolute, distinct targets outside the paths Docker owns,
/// well-formed digests, sane modes.
pub fn validate_mounts(mounts: &[FileMount]) -> Result<(), ModelError> {
    if mounts.len() > MAX_MOUNTS {
        return Err(ModelError::TooLarge {
            what: "list of mounted files",
            len: mounts.len(),
            max: MAX_MOUNTS,
        });
    }
    let mut targets = BTreeSet::new();
    for m in mounts {
        let invalid = |what, value: &str, why| ModelError::Invalid {
            what,
            value: value.chars().take(200).collect(),
            why,
        };
        if m.name.is_empty() || m.name.len() > 1024 || m.name.contains('\0') {
            return Err(invalid(
                "mounted file name",
                &m.name,
                "1 to 1024 characters",
            ));
        }
        if !is_digest(&m.digest) {
            return Err(invalid(
                "mounted file digest",
                &m.digest,
                "expected sha256-<64 hex digits>",
            ));
        }
        if !m.target.starts_with('/')
            || m.target.len() > 1024
            || m.target.contains('\0')
            || m.target.split('/').any(|c| c == "..")
            || m.target.ends_with('/')
        {
            return Err(invalid(
                "mounted file target",
                &m.target,
                "an absolute path to a file, without '..'",
            ));
        }
        if ["/", "/proc", "/sys", "/dev"]
            .iter()
            .any(|p| m.target == *p || m.target.starts_with(&format!("{p}/")) && *p != "/")
        {
            return Err(invalid(
                "mounted file target",
                &m.target,
                "inside /proc, /sys or /dev",
            ));
        }
        if !targets.insert(m.target.as_str()) {
            return Err(invalid(
                "mounted file target",
                &m.target,
                "two files mounted at one path",
            ));
        }
        if m.mode > 0o7777 {
            return Err(invalid(
                "mounted file mode",
                &format!("{:o}", m.mode),
                "permission bits are at most 7777 (octal)",
            ));
        }
    }
    Ok(())
}

fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256-").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// Every digest some service's spec, current or in its history, names.
pub fn referenced(services: &BTreeMap<String, Service>) -> BTreeSet<String> {
    services
        .values()
        .flat_map(|s| {
            std::iter::once(&s.spec)
                .chain(s.history.iter().map(|r| &r.spec))
                .flat_map(|spec| spec.files.iter().map(|f| f.digest.clone()))
        })
        .collect()
}

/// Stored contents no spec (nor a spec in a history) names.
pub fn unreferenced(state: &NetworkState) -> BTreeSet<String> {
    let named = referenced(&state.services);
    state
        .files
        .keys()
        .filter(|d| !named.contains(*d))
        .cloned()
        .collect()
}

/// The contents one machine has seen unnamed, and since when, by its own monotonic clock (so
/// machines whose wall clocks disagree never make a content look old).
#[derive(Debug, Default)]
pub struct Forgetting {
    since: BTreeMap<String, std::time::Instant>,
}

impl Forgetting {
    /// Takes this pass's [`unreferenced`] contents; returns those unnamed in every pass for at
    /// least `grace`: what may be removed now. A content named again starts over.
    pub fn due(
        &mut self,
        unreferenced: &BTreeSet<String>,
        now: std::time::Instant,
        grace: std::time::Duration,
    ) -> Vec<String> {
        self.since.retain(|d, _| unreferenced.contains(d));
        for d in unreferenced {
            self.since.entry(d.clone()).or_insert(now);
        }
        self.since
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) >= grace)
            .map(|(d, _)| d.clone())
            .collect()
    }
}

/// Hides the digests of a spec's secrets (for the reader role).
pub fn hide_secret_digests(spec: &mut ServiceSpec) {
    for f in spec.files.iter_mut().filter(|f| f.secret) {
        f.digest = HIDDEN_DIGEST.to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ServiceRevision, ServiceSpec};

    fn mount(target: &str, content: &[u8]) -> FileMount {
        FileMount {
            name: "pw".into(),
            target: target.into(),
            digest: digest(content),
            ..Default::default()
        }
    }

    #[test]
    fn a_content_round_trips_only_under_its_own_digest() {
        let f = stored(b"hunter2\n", 5);
        assert!(f.digest.starts_with("sha256-") && f.digest.len() == 71);
        assert_eq!(decode(&f.content, &f.digest).unwrap(), b"hunter2\n");
        f.validate().unwrap();
        let other = digest(b"hunter3\n");
        assert!(decode(&f.content, &other).is_err());
        assert!(decode("not base64!", &f.digest).is_err());
        let big = stored(&vec![b'x'; MAX_FILE_BYTES + 1], 0);
        assert!(matches!(
            decode(&big.content, &big.digest),
            Err(ModelError::TooLarge { .. })
        ));
        // Its debug form never shows the content.
        assert!(!format!("{f:?}").contains(&f.content));
    }

    #[test]
    fn mounts_need_absolute_distinct_targets_outside_the_kernel_paths() {
        validate_mounts(&[mount("/run/secrets/pw", b"a"), mount("/etc/app.conf", b"b")]).unwrap();
        for bad in [
            "run/secrets/pw",
            "/run/../etc/passwd",
            "/proc/self/x",
            "/dev/x",
            "/",
            "/etc/",
        ] {
            assert!(validate_mounts(&[mount(bad, b"a")]).is_err(), "{bad}");
        }
        assert!(validate_mounts(&[mount("/a", b"a"), mount("/a", b"b")]).is_err());
        let mut m = mount("/a", b"a");
        m.digest = "sha256-xyz".into();
        assert!(validate_mounts(&[m]).is_err());
        let mut m = mount("/a", b"a");
        m.mode = 0o10000;
        assert!(validate_mounts(&[m]).is_err());
    }

    #[test]
    fn a_content_goes_only_when_no_spec_or_history_names_it_for_the_whole_grace() {
        let (old, current, orphan) = (stored(b"v1", 0), stored(b"v2", 0), stored(b"x", 0));
        let spec = |f: &StoredFile| ServiceSpec {
            files: vec![FileMount {
                digest: f.digest.clone(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let service = Service {
            id: "web".into(),
            spec: spec(&current),
            history: vec![ServiceRevision {
                revision: 1,
                spec: spec(&old),
            }],
            ..Default::default()
        };
        let mut state = NetworkState::default();
        state.services.insert("web".into(), service);
        for f in [&old, &current, &orphan] {
            state.files.insert(f.digest.clone(), f.clone());
        }
        let grace = std::time::Duration::from_secs(3600);
        let t0 = std::time::Instant::now();
        let mut forgetting = Forgetting::default();
        assert_eq!(
            unreferenced(&state),
            BTreeSet::from([orphan.digest.clone()])
        );
        assert!(forgetting.due(&unreferenced(&state), t0, grace).is_empty());
        assert_eq!(
            forgetting.due(&unreferenced(&state), t0 + grace, grace),
            vec![orphan.digest.clone()]
        );
        // Named again in between: the count starts over.
        let mut named = state.clone();
        named.services.get_mut("web").unwrap().spec = spec(&orphan);
        let mut forgetting = Forgetting::default();
        forgetting.due(&unreferenced(&state), t0, grace);
        forgetting.due(&unreferenced(&named), t0 + grace / 2, grace);
        assert!(forgetting
            .due(&unreferenced(&state), t0 + grace, grace)
            .is_empty());
        state.services.clear();
        assert_eq!(unreferenced(&state).len(), 3);
    }

    #[test]
    fn readers_do_not_see_the_digests_of_secrets() {
        let mut spec = ServiceSpec {
            files: vec![
                FileMount {
                    digest: digest(b"pw"),
                    secret: true,
                    ..Default::default()
                },
                FileMount {
                    digest: digest(b"conf"),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        hide_secret_digests(&mut spec);
        assert_eq!(spec.files[0].digest, HIDDEN_DIGEST);
        assert_eq!(spec.files[1].digest, digest(b"conf"));
    }
}

//! Contexts: how `uc` reaches a network and proves who it is.
//!
//! Kept under `$XDG_CONFIG_HOME/uncloud/` (or `~/.config/uncloud/`):
//!
//! | path | what |
//! |---|---|
//! | `current` | the name of the context used when none is given |
//! | `contexts/<name>/context.toml` | network id, the endpoints tried in turn |
//! | `contexts/<name>/ca.pem` | the CA certificates of the network's machines |
//! | `contexts/<name>/client.pem`, `client.key` (0600) | this client's certificate and key |

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{path} is not a context file from `uc cert issue`: {reason}")]
    BadBundle { path: PathBuf, reason: String },
    #[error("no context named {0:?}; `uc ctx ls` lists them, `uc machine init` makes one")]
    Missing(String),
    #[error("no context yet: run `uc machine init HOST --fingerprint … --token …` first (or pass --context)")]
    NoCurrent,
    #[error("{0:?} is not a usable context name (letters, digits, `-`, `_`, `.`)")]
    BadName(String),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not readable: {reason}")]
    Unreadable { path: PathBuf, reason: String },
}

/// Where contexts live.
pub struct Store {
    dir: PathBuf,
}

/// One network as this client knows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Context {
    #[serde(skip)]
    pub name: String,
    pub network_id: String,
    /// `host:port` of apid on machines of the network, tried in turn.
    pub endpoints: Vec<String>,
    #[serde(skip)]
    pub ca_pem: String,
    #[serde(skip)]
    pub cert_pem: String,
    #[serde(skip)]
    pub key_pem: String,
    /// Key fingerprints of removed machines' CAs: never trusted again, even if a machine that
    /// has not heard of the removal yet lists it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_cas: Vec<String>,
}

/// The key fingerprint of a PEM CA certificate, if it reads.
fn ca_fingerprint(pem: &str) -> Option<String> {
    let der = uncloud_pki::pem_to_der(pem).ok()?;
    uncloud_pki::Fingerprint::of_certificate(&der)
        .ok()
        .map(|f| f.to_string())
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ContextError + 'a {
    move |source| ContextError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

impl Store {
    /// `UNCLOUD_CONFIG_DIR`, else `$XDG_CONFIG_HOME/uncloud`, else `~/.config/uncloud`.
    pub fn default_location() -> Store {
        let dir = std::env::var_os("UNCLOUD_CONFIG_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CONFIG_HOME").map(|d| PathBuf::from(d).join("uncloud"))
            })
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/uncloud")))
            .unwrap_or_else(|| PathBuf::from(".uncloud"));
        Store { dir }
    }

    #[cfg(test)]
    pub fn at(dir: PathBuf) -> Store {
        Store { dir }
    }

    fn context_dir(&self, name: &str) -> PathBuf {
        self.dir.join("contexts").join(name)
    }

    pub fn names(&self) -> Result<Vec<String>, ContextError> {
        let dir = self.dir.join("contexts");
        let mut names = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries.flatten() {
                    if e.path().join("context.toml").exists() {
                        names.push(e.file_name().to_string_lossy().into_owned());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("list", &dir)(e)),
        }
        names.sort();
        Ok(names)
    }

    pub fn current(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("current"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    pub fn set_current(&self, name: &str) -> Result<(), ContextError> {
        if !self.context_dir(name).join("context.toml").exists() {
            return Err(ContextError::Missing(name.into()));
        }
        write_file(
            &self.dir.join("current"),
            format!("{name}\n").as_bytes(),
            0o644,
        )
    }

    /// The context named `name`, else `UNCLOUD_CONTEXT`, else the current one.
    pub fn load(&self, name: Option<&str>) -> Result<Context, ContextError> {
        let name = match name {
            Some(n) => n.to_string(),
            None => self.current().ok_or(ContextError::NoCurrent)?,
        };
        let dir = self.context_dir(&name);
        let meta = dir.join("context.toml");
        let text = match std::fs::read_to_string(&meta) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ContextError::Missing(name))
            }
            Err(e) => return Err(io("read", &meta)(e)),
        };
        let mut ctx: Context = toml::from_str(&text).map_err(|e| ContextError::Unreadable {
            path: meta.clone(),
            reason: e.to_string(),
        })?;
        let read = |file: &str| {
            let p = dir.join(file);
            std::fs::read_to_string(&p).map_err(|e| io("read", &p)(e))
        };
        ctx.name = name;
        ctx.ca_pem = read("ca.pem")?;
        ctx.cert_pem = read("client.pem")?;
        ctx.key_pem = read("client.key")?;
        Ok(ctx)
    }

    /// Writes `ctx` (the key file 0600 and first, so a half-written context has no
    /// certificate without its key).
    pub fn save(&self, ctx: &Context) -> Result<(), ContextError> {
        valid_name(&ctx.name)?;
        let dir = self.context_dir(&ctx.name);
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        write_file(&dir.join("client.key"), ctx.key_pem.as_bytes(), 0o600)?;
        write_file(&dir.join("client.pem"), ctx.cert_pem.as_bytes(), 0o644)?;
        write_file(&dir.join("ca.pem"), ctx.ca_pem.as_bytes(), 0o644)?;
        let meta = toml::to_string(ctx).expect("a context serializes");
        write_file(&dir.join("context.toml"), meta.as_bytes(), 0o644)
    }

    /// Forgets context `name` (its key included); it is no longer current.
    pub fn remove(&self, name: &str) -> Result<(), ContextError> {
        valid_name(name)?;
        let dir = self.context_dir(name);
        if !self.exists(name) {
            return Err(ContextError::Missing(name.into()));
        }
        std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
        if self.current().as_deref() == Some(name) {
            let current = self.dir.join("current");
            std::fs::remove_file(&current).map_err(io("remove", &current))?;
        }
        Ok(())
    }

    pub fn exists(&self, name: &str) -> bool {
        self.context_dir(name).join("context.toml").exists()
    }
}

impl Context {
    /// Adds CA certificates (PEM) not in the bundle yet; whether any was new.
    pub fn add_cas<'a>(&mut self, pems: impl IntoIterator<Item = &'a str>) -> bool {
        let mut added = false;
        for pem in pems {
            let pem = pem.trim();
            if pem.is_empty() || self.ca_pem.contains(pem) {
                continue;
            }
            if ca_fingerprint(pem).is_some_and(|f| self.removed_cas.contains(&f)) {
                continue;
            }
            if !self.ca_pem.is_empty() && !self.ca_pem.ends_with('\n') {
                self.ca_pem.push('\n');
            }
            self.ca_pem.push_str(pem);
            self.ca_pem.push('\n');
            added = true;
        }
        added
    }

    /// Forgets a removed machine: its CA leaves the bundle (it is no longer trusted to speak
    /// for the network) and endpoints at its addresses leave the list. Whether anything
    /// changed.
    pub fn forget_machine(&mut self, ca_pem: &str, ips: &[std::net::IpAddr]) -> bool {
        let before = (self.ca_pem.len(), self.endpoints.len());
        let ca = ca_pem.trim();
        if let Some(f) = ca_fingerprint(ca) {
            if !self.removed_cas.contains(&f) {
                self.removed_cas.push(f);
            }
        }
        if !ca.is_empty() {
            self.ca_pem = self.ca_pem.replace(ca, "").replace("\n\n", "\n");
            if self.ca_pem.trim().is_empty() {
                self.ca_pem.clear();
            }
        }
        self.endpoints.retain(|e| {
            crate::remote::resolve(e)
                .map(|a| !ips.contains(&a.ip()))
                .unwrap_or(true)
        });
        before != (self.ca_pem.len(), self.endpoints.len())
    }

    pub fn add_endpoint(&mut self, endpoint: &str) -> bool {
        if self.endpoints.iter().any(|e| e == endpoint) {
            return false;
        }
        self.endpoints.push(endpoint.to_string());
        true
    }
}

pub fn valid_name(name: &str) -> Result<(), ContextError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ContextError::BadName(name.into()))
    }
}

/// A context as one file, to hand to someone (`uc cert issue`) and import (`uc ctx import`).
/// It holds a private key: it is written 0600.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Bundle {
    /// Format version of the file.
    pub uncloud_context: u32,
    pub name: String,
    pub network_id: String,
    pub endpoints: Vec<String>,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Bundle {
    pub fn of(ctx: &Context) -> Bundle {
        Bundle {
            uncloud_context: 1,
            name: ctx.name.clone(),
            network_id: ctx.network_id.clone(),
            endpoints: ctx.endpoints.clone(),
            ca_pem: ctx.ca_pem.clone(),
            cert_pem: ctx.cert_pem.clone(),
            key_pem: ctx.key_pem.clone(),
        }
    }

    /// Writes the bundle to a new file (never over an existing one), 0600.
    pub fn write_new(&self, path: &Path) -> Result<(), ContextError> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io("create", path))?;
        let text = serde_json::to_string_pretty(self).expect("a bundle serializes");
        f.write_all(text.as_bytes()).map_err(io("write", path))?;
        f.sync_all().map_err(io("write", path))
    }

    pub fn read(path: &Path) -> Result<Bundle, ContextError> {
        let text = std::fs::read_to_string(path).map_err(io("read", path))?;
        let b: Bundle = serde_json::from_str(&text).map_err(|e| ContextError::BadBundle {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if b.uncloud_context != 1 {
            return Err(ContextError::BadBundle {
                path: path.to_owned(),
                reason: format!("format {} is newer than this uc knows", b.uncloud_context),
            });
        }
        Ok(b)
    }

    pub fn into_context(self, name: String) -> Context {
        Context {
            name,
            network_id: self.network_id,
            endpoints: self.endpoints,
            ca_pem: self.ca_pem,
            cert_pem: self.cert_pem,
            key_pem: self.key_pem,
            removed_cas: Vec::new(),
        }
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ContextError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("write", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Context {
        Context {
            name: name.into(),
            network_id: "net".into(),
            endpoints: vec!["192.0.2.1:7443".into()],
            ca_pem: "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n".into(),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_bundle_round_trips_secretly_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bob.uccontext");
        let b = Bundle::of(&sample("bob"));
        b.write_new(&path).unwrap();
        assert_eq!(Bundle::read(&path).unwrap(), b);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(b.write_new(&path).is_err(), "an existing file is kept");
        std::fs::write(&path, "{\"not\": 1}").unwrap();
        assert!(matches!(
            Bundle::read(&path),
            Err(ContextError::BadBundle { .. })
        ));
    }

    #[test]
    fn a_removed_machine_leaves_the_bundle_and_the_endpoints() {
        let mut ctx = sample("home");
        let b = uncloud_pki::MachineCa::generate("net", "m2", time::OffsetDateTime::now_utc())
            .unwrap()
            .cert_pem()
            .to_string();
        ctx.add_cas([b.as_str()]);
        ctx.add_endpoint("192.0.2.2:7443");
        let removed_ip = "192.0.2.2".parse().unwrap();
        assert!(ctx.forget_machine(&b, &[removed_ip]));
        assert_eq!(ctx.endpoints, vec!["192.0.2.1:7443"]);
        assert!(ctx.ca_pem.contains("\nA\n") && !ctx.ca_pem.contains(b.trim()));
        assert!(
            !ctx.forget_machine(&b, &[removed_ip]),
            "nothing left to forget"
        );
        // A machine that has not heard of the removal yet still lists it: it stays out.
        assert!(!ctx.add_cas([b.as_str()]));
        assert!(!ctx.ca_pem.contains(b.trim()));
    }

    #[test]
    fn a_context_round_trips_with_a_private_key_file_and_becomes_current_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().to_owned());
        assert!(matches!(store.load(None), Err(ContextError::NoCurrent)));
        let ctx = sample("home");
        store.save(&ctx).unwrap();
        assert_eq!(store.load(Some("home")).unwrap(), ctx);
        assert!(matches!(
            store.load(Some("work")),
            Err(ContextError::Missing(_))
        ));
        store.set_current("home").unwrap();
        assert_eq!(store.load(None).unwrap().name, "home");
        assert!(store.set_current("nope").is_err());
        assert_eq!(store.names().unwrap(), vec!["home"]);
        let mode = std::fs::metadata(dir.path().join("contexts/home/client.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(store.save(&sample("../escape")).is_err());
        store.remove("home").unwrap();
        assert!(matches!(store.load(None), Err(ContextError::NoCurrent)));
        assert!(store.names().unwrap().is_empty());
        assert!(matches!(
            store.remove("home"),
            Err(ContextError::Missing(_))
        ));
    }

    #[test]
    fn ca_bundles_and_endpoints_grow_without_duplicates() {
        let mut ctx = sample("x");
        let b = "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----";
        assert!(ctx.add_cas([b, b]));
        assert!(!ctx.add_cas([b]));
        assert_eq!(ctx.ca_pem.matches("BEGIN").count(), 2);
        assert!(!ctx.add_endpoint("192.0.2.1:7443"));
        assert!(ctx.add_endpoint("192.0.2.2:7443"));
    }
}

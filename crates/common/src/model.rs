//! The replicated state of one Uncloud network.
//!
//! Every machine holds the whole [`NetworkState`]. Entities are keyed by stable ids (never by
//! names, which may change when a conflict is resolved). Each entity has one owner that writes
//! it, so concurrent edits rarely touch the same fields:
//! - a [`Machine`] is written by the machine itself (and once by the member that adds it);
//! - a [`Container`] only by the machine that runs it;
//! - a [`Service`] by whichever machine accepted the user's command; it is keyed by project and
//!   name ([`Service::key`]), so two sides of a partition that create `web` in one project
//!   create the same service, and its spec is stored as one value (see `service_doc`), so
//!   concurrent deploys resolve to one of them whole, never a mix.
//!
//! What a service publishes (its ingress routes) is part of its spec
//! ([`ServiceSpec::ports`], parsed by [`crate::ports`]); there is no separate route entity
//! (decision 0013).
//!
//! With the `automerge` feature every type derives autosurgeon's `Reconcile`/`Hydrate`, which
//! maps each struct field to its own automerge map key: two machines changing different fields
//! of the same entity both keep their change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(feature = "automerge")]
use autosurgeon::{Hydrate, Reconcile};

/// Largest value a single string field may hold. State is replicated to every machine, so a
/// runaway value costs everyone; anything bigger belongs somewhere else.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;

/// The whole replicated state of a network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "automerge", derive(Reconcile, Hydrate))]
pub struct NetworkState {
    pub network: NetworkInfo,
    pub machines: BTreeMap<String, Machine>,
    pub services: BTreeMap<String, Service>,
    pub containers: BTreeMap<String, Container>,
    /// Machines removed for good, by id: they never come back under that id.
    #[serde(default)]
    pub removed: BTreeMap<String, Removal>,
    /// Client certificates the machines issued, by serial; revoked ones stay, marked.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientCert>,
    /// Contents of the files services mount (Compose secrets and configs), by digest.
    #[serde(default)]
    pub files: BTreeMap<String, StoredFile>,
    /// TLS certificates of the hostnames ingress serves, by hostname.
    #[serde(default)]
    pub certificates: BTreeMap<String, Certificate>,
}

/// The TLS certificate of one hostname that ingress serves over HTTPS: ordered from an ACME
/// directory by one ingress machine (the one holding the claim), then served by every ingress
/// machine (`ingressd`). Keyed by hostname.
///
/// Each secret is one string value, so a merge of two machines' writes (two sides of a
/// partition that both ordered) keeps one whole certificate with its own key, never a mix:
/// the last writer wins field by field, and the fields are whole.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "automerge", derive(Reconcile, Hydrate))]
pub struct Certificate {
    /// Lowercase DNS name: the key in [`NetworkState::certificates`].
    pub hostname: String,
    /// The ACME directory URL it is ordered from.
    #[serde(default)]
    pub directory: String,
    /// The ACME account's private key (PKCS#8, base64). Secret. Any ingress machine answers
    /// HTTP-01 challenges with it (the key authorization needs only its public half) and the
    /// next orderer reuses it.
    #[serde(default)]
    pub account_key: String,
    /// PEM: the chain, leaf first, then the certificate's private key. Secret. Empty until the
    /// first certificate is issued.
    #[serde(default)]
    pub bundle: String,
    /// The machine that ordered the current bundle, and when (ms since the Unix epoch).
    #[serde(default)]
    pub issued_by: String,
    #[serde(default)]
    pub issued_at_ms: u64,
    /// The machine ordering it now; empty when nobody is. Others do not order while the claim
    /// holds (until `claim_until_ms`), so a leader change never orders twice.
    #[serde(default)]
    pub claim_by: String,
    #[serde(default)]
    pub claim_until_ms: u64,
    /// Failed orders in a row since the last success, the last failure's reason, and when the
    /// next try may start (back-off).
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub last_error: String,
    #[serde(default)]
    pub retry_after_ms: u64,
}

/// Keys are secrets: never printed, not even in debug logs.
impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("hostname", &self.hostname)
            .field("directory", &self.directory)
            .field(
                "account_key",
                &format_args!("<{} chars>", self.account_key.len()),
            )
            .field("bundle", &format_args!("<{} chars>", self.bundle.len()))
            .field("issued_by", &self.issued_by)
            .field("issued_at_ms", &self.issued_at_ms)
            .field("claim_by", &self.claim_by)
            .field("claim_until_ms", &self.claim_until_ms)
            .field("failures", &self.failures)
            .field("last_error", &self.last_error)
            .field("retry_after_ms", &self.retry_after_ms)
            .finish()
    }
}

impl Certificate {
    pub fn validate(&self) -> Result<(), ModelError> {
        if crate::ports::hostname(&self.hostname).is_err() {
            return Err(ModelError::Invalid {
                what: "certificate hostname",
                value: self.hostname.chars().take(64).collect(),
                why: "DNS labels of lowercase letters, digits and '-', joined by dots",
            });
        }
        for (what, v) in [
            ("certificate directory", &self.directory),
            ("certificate account key", &self.account_key),
            ("certificate bundle", &self.bundle),
            ("certificate error", &self.last_error),
        ] {
            validate_size(what, v)?;
        }
        for (what, id) in [
            ("issuing machine id", &self.issued_by),
            ("claiming machine id", &self.claim_by),
        ] {
            if !id.is_empty() {
                validate_id(what, id)?;
            }
        }
        Ok(())
    }

    /// A copy without the secrets (for `GetState` and people).
    pub fn without_secrets(&self) -> Certificate {
        Certificate {
            account_key: String::new(),
            bundle: String::new(),
            ..self.clone()
        }
    }
}

/// The content of a file some service mounts ([`FileMount`]), stored once under its digest
/// ([`crate::files::digest`]). Content-addressed, so it never changes: two machines storing
/// one content write the same entry. Written by the apid that took the deploy; removed by any
/// apid that saw no spec (nor a spec in a history) name it for an hour
/// ([`crate::files::Forgetting`]).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "automerge", derive(Reconcile, Hydrate))]
pub struct StoredFile {
    /// `sha256-<hex>` of the content: the key in [`NetworkState::files`].
    pub digest: String,
    /// The content, base64 (standard alphabet, padded).
    pub content: String,
    /// When it was first stored (ms since the Unix epoch), for people reading the state;
    /// clean-up does not use it (machines' wall clocks may disagree).
    #[serde(default)]
    pub stored_at_ms: u64,
}

/// Contents may be secrets: never printed, not even in debug logs.
impl std::fmt::Debug for StoredFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredFile")
            .field("digest", &self.digest)
            .field(
                "content",
                &format_args!("<{} base64 chars>", self.content.len()),
            )
            .field("stored_at_ms", &self.stored_at_ms)
            .finish()
    }
}

impl StoredFile {
    /// Checks that the content decodes, fits and has the digest it claims.
    pub fn validate(&self) -> Result<(), ModelError> {
        crate::files::decode(&self.content, &self.digest).map(|_| ())
    }
}

/// A client certificate an apid issued, and whether it was revoked. Written by the issuing
/// machine, and by any machine that revokes it; a revocation is never undone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "automerge", derive(Reconcile, Hydrate))]
pub struct ClientCert {
    /// Serial number, hex, as the certificate carries it: the key in
    /// [`NetworkState::clients`] and what the revocation check matches.
    pub serial: String,
    /// Who it names (a person or a laptop).
    pub subject: String,
    /// `admin` or `reader`.
    pub role: String,
    /// The machine whose CA issued it.
    #[serde(default)]
    pub issued_by: String,
    /// End of validity (Unix seconds).
    #[serde(default)]
    pub not_after: u64,
    /// When it was revoked (ms since the Unix epoch); 0 while it is valid.
    #[serde(default)]
    pub revoked_at_ms: u64,
}

impl ClientCert {
    pub fn validate(&self) -> Result<(), ModelError> {
        validate_id("certificate serial", &self.serial)?;
        validate_size("certificate subject", &self.subject)?;
        validate_size("certificate role", &self.role)?;
        if !self.issued_by.is_empty() {
            validate_id("issuing machine id", &self.issued_by)?;
        }
        Ok(())
    }
}

/// A machine removed from the network (a tombstone: grow-only, never deleted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "automerge", derive(Reconcile, Hydrate))]
pub struct Removal {
    /// Its name when it was removed (for people reading the state).
    pub name: String,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// The machine that removed it.
    pub by: String,
}

/// Settings fixed when the network is created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "automerge", derive(Reconcile, Hydrate))]
pub struct NetworkInfo {
    /// Random id of the network; peers with another id are refused.
    pub id: String,
    /// The whole mesh, e.g. `10.210.0.0/16`; machine X gets `10.210.X.0/24`.
    pub mesh_cidr: String,
}

/// Roles a machine can have: `ingress` serves published services to the internet.
pub const ROLES: &[&str] = &["ingress"];

/// A machine of the network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "automerge", derive(Reconcile, Hydrate))]
pub struct Machine {
    /// Stable random id (hex); the key in [`NetworkState::machines`].
    pub id: String,
    /// Unique DNS label: `<name>.machine.internal`.
    pub name: String,
    /// When `name` was claimed (ms since the Unix epoch); the older claim wins a conflict.
    #[serde(default)]
    pub name_claimed_at_ms: u64,
    /// Index X of the machine's `10.210.X.0/24` subnet. Unique.
    pub subnet: u32,
    /// When `subnet` was claimed (ms since the Unix epoch); the older claim wins a conflict.
    #[serde(default)]
    pub subnet_claimed_at_ms: u64,
    /// WireGuard public key (base64), empty until meshd publishes it.
    #[serde(default)]
    pub wireguard_public_key: String,
    /// `ip:port` endpoints where the machine's WireGuard listens, as it advertises them
    /// (its interfaces' addresses and any configured public address).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Peer machine id -> the `ip:port` this machine last received that peer's WireGuard
    /// traffic from. Behind a NAT that is the peer's reflexive address, which the peer itself
    /// cannot know; other machines add it to the peer's candidate endpoints.
    #[serde(default)]
    pub observed_endpoints: BTreeMap<String, String>,
    /// Roles such as `ingress`.
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Drained (`uc machine drain`): placement and the reconciler put no container of a
    /// service on it; `uc machine enable` clears it. Absent in entries written before it
    /// existed.
    #[serde(default)]
    #[cfg_attr(feature = "automerge", autosurgeon(missing = "Default::default"))]
    pub drained: bool,
    /// CPU architecture (`x86_64`, `aarch64`).
    #[serde(default)]
    pub arch: String,
    /// Uncloud version the machine runs.
    #[serde(default)]
    pub version: String,
    /// PEM certificate of the machine's own CA (decision 0009): client certificates it issued
    /// are trusted network-wide while the machine is in the state. Empty until its apid
    /// publishes it. Absent in entries written before it existed.
    #[serde(default)]
    #[cfg_attr(feature = "automerge", autosurgeon(missing = "Default::default"))]
    pub ca_cert: String,
    /// On an ingress machine: the draining containers (ids) it sends no request to any more,
    /// none in flight either. Written by the machine's ingressd only; the machine that runs a
    /// draining container removes it once every ingress machine it reaches lists it (or its
    /// drain times out). Absent in entries written before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "automerge", autosurgeon(missing = "Default::default"))]
    pub ingress_released: Vec<String>,
}

/// A service: a named group of containers built from one spec.
///
/// Stored in the automerge document by hand (`crate::service_doc`): the revision and spec are
/// one value, so concurrent writes never mix two specs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// [`Service::key`] of its project and name.
    pub id: String,
    pub name: String,
    /// Project (compose project) the service belongs to; namespaces its DNS name.
    #[serde(default)]
    pub project: String,
    /// When the service was first created, in ms since the Unix epoch (set by stated). The
    /// older of two services claiming one hostname keeps it ([`crate::claims`]).
    #[serde(default)]
    pub created_at_ms: u64,
    /// Index of the virtual address the service claims (`lb.<name>.internal`), given by stated
    /// when it creates the service; 0 for none. Readers apply [`crate::vips::resolve`].
    #[serde(default)]
    pub vip: u32,
    /// Current revision, incremented on every spec change.
    #[serde(default)]
    pub revision: u64,
    pub spec: ServiceSpec,
    /// Earlier specs, oldest first, at most [`SERVICE_HISTORY_LEN`].
    #[serde(default)]
    pub history: Vec<ServiceRevision>,
}

/// How many earlier revisions of a service are kept.
pub const SERVICE_HISTORY_LEN: usize = 10;

/// What containers of a service run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "automerge", derive(Reconcile, Hydrate))]
pub struct ServiceSpec {
    pub image: String,
    /// Replaces the image's `CMD` when not empty.
    #[serde(default)]
    pub command: Vec<String>,
    /// Replaces the image's `ENTRYPOINT` when not empty.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Published ports in Uncloud's `x-ports` syntax, e.g. `app.example.com:8000/https` or
    /// `app.example.com/api:8000/https` (served by ingress machines; [`crate::ports`]). The one
    /// place a service's ingress routes are said (decision 0013).
    #[serde(default)]
    pub ports: Vec<String>,
    /// Host ports published on the machine that runs the container, in `docker run -p`
    /// syntax: `[ip:]host:container[/tcp|/udp]`.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Named volumes and bind mounts in `docker run -v` syntax: `source:target[:ro]`; a source
    /// starting with `/` is a bind mount.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// CPU limit in thousandths of a core; 0 is no limit.
    #[serde(default)]
    pub cpu_millis: u64,
    /// Memory limit in bytes; 0 is no limit.
    #[serde(default)]
    pub memory_bytes: u64,
    /// `no`, `always`, `on-failure` or `unless-stopped`; empty means `unless-stopped`.
    #[serde(default)]
    pub restart: String,
    #[serde(default)]
    pub healthcheck: Option<HealthCheck>,
    /// Extra container labels (the shim adds its own under `org.uncloud.`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Wanted number of containers (replicated mode).
    #[serde(default)]
    pub replicas: u32,
    /// [`MODE_GLOBAL`]: one container on each eligible machine; empty or
    /// [`MODE_REPLICATED`]: `replicas` containers spread over them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[cfg_attr(feature = "automerge", autosurgeon(missing = "Default::default"))]
    pub mode: String,
    /// The machines (names or ids) containers may run on (`uc run -m`, `x-machines`); empty:
    /// every machine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "automerge", autosurgeon(missing = "Default::default"))]
    pub machines: Vec<String>,
    /// Placement constraints every machine must match, canonical
    /// ([`crate::constraint::Constraint`]'s text: `node.labels.disk==ssd`). Older apids ignore
    /// them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "automerge", autosurgeon(missing = "Default::default"))]
    pub constraints: Vec<String>,
    /// The user the processes run as (`uid[:gid]` or a name), instead of the image's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[cfg_attr(feature = "automerge", autosurgeon(missing = "Default::default"))]
    pub user: String,
    /// Linux capabilities added to Docker's default set (`NET_ADMIN`, …). Older shims ignore
    /// this and the fields below.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "automerge", autosurgeon(missing = "Default::default"))]
    pub cap_add: Vec<String>,
    /// Linux capabilities dropped from Docker's default set (`ALL` drops every one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "automerge", autosurgeon(missing = "Default::default"))]
    pub cap_drop: Vec<String>,
    /// Namespaced kernel parameters set in the container (`net.core.somaxconn` → `1024`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "automerge", autosurgeon(missing = "Default::default"))]
    pub sysctls: BTreeMap<String, String>,
    /// The signal `uc stop` sends first (`SIGQUIT`, `QUIT`, `3`); empty: the image's, else
    /// SIGTERM.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[cfg_attr(feature = "automerge", autosurgeon(missing = "Default::default"))]
    pub stop_signal: String,
    /// How long `uc stop` waits before SIGKILL, in milliseconds (whole seconds reach Docker,
    /// rounded up); 0: Docker's 10 s.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[cfg_attr(feature = "automerge", autosurgeon(missing = "Default::default"))]
    pub stop_grace_ms: u64,
    /// Files mounted read-only into every container (Compose `secrets` and `configs`); their
    /// contents live in [`NetworkState::files`]. Older shims ignore this.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "automerge", autosurgeon(missing = "Default::default"))]
    pub files: Vec<FileMount>,
}

/// A file in a service's containers: a Compose secret (`/run/secrets/<name>`) or config. The
/// spec names the content by digest, so new content is a new spec: a rolling update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "automerge", derive(Reconcile, Hydrate))]
pub struct FileMount {
    /// Its name in the Compose file (`db_password`).
    pub name: String,
    /// Absolute path in the container.
    pub target: String,
    /// [`crate::files::digest`] of the content: its key in [`NetworkState::files`].
    pub digest: String,
    /// Permission bits; 0 means 0444 (Compose's default).
    #[serde(default)]
    pub mode: u32,
    /// Owner inside the container (numeric); root when absent.
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// A secret (`uc inspect` shows its digest, never its content) rather than a config.
    #[serde(default)]
    pub secret: bool,
}

impl FileMount {
    /// The permission bits the file gets.
    pub fn mode_or_default(&self) -> u32 {
        if self.mode == 0 {
            0o444
        } else {
            self.mode & 0o7777
        }
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

pub const MODE_REPLICATED: &str = "replicated";
pub const MODE_GLOBAL: &str = "global";

impl ServiceSpec {
    /// Whether the service runs one container on every eligible machine.
    pub fn is_global(&self) -> bool {
        self.mode == MODE_GLOBAL
    }

    /// The stop grace period in whole seconds, rounded up (a grace period promises at least
    /// that long), as Docker takes it; `None` for Docker's default.
    pub fn stop_grace_secs(&self) -> Option<u32> {
        (self.stop_grace_ms > 0)
            .then(|| self.stop_grace_ms.div_ceil(1000).min(u32::MAX as u64) as u32)
    }
}

/// A container health check, as in a Dockerfile's `HEALTHCHECK`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "automerge", derive(Reconcile, Hydrate))]
pub struct HealthCheck {
    /// `["CMD", "prog", "arg"]` or `["CMD-SHELL", "command line"]`.
    pub test: Vec<String>,
    #[serde(default)]
    pub interval_ms: u64,
    #[serde(default)]
    pub timeout_ms: u64,
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub start_period_ms: u64,
}

/// One earlier spec of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "automerge", derive(Reconcile, Hydrate))]
pub struct ServiceRevision {
    pub revision: u64,
    pub spec: ServiceSpec,
}

impl Service {
    /// The id of service `name` in `project`: `name` alone outside any project, else
    /// `name.project` (both DNS labels, so the two forms never collide). Keying by name makes
    /// two sides of a partition that create `web` in one project create the same service.
    pub fn key(project: &str, name: &str) -> String {
        if project.is_empty() {
            name.to_string()
        } else {
            format!("{name}.{project}")
        }
    }

    /// The revision numbers whose containers run the current spec: the current revision and
    /// earlier ones with the same spec (a rollback), except a number two specs share:
    /// concurrent deploys merged after a partition both wrote it, and their containers cannot
    /// be told apart, so none of them counts (the next rollout replaces them all).
    pub fn current_revisions(&self) -> std::collections::BTreeSet<u64> {
        let clash = |r: u64| {
            self.history
                .iter()
                .any(|h| h.revision == r && h.spec != self.spec)
        };
        std::iter::once(self.revision)
            .chain(
                self.history
                    .iter()
                    .filter(|h| h.spec == self.spec)
                    .map(|h| h.revision),
            )
            .filter(|&r| !clash(r))
            .collect()
    }

    /// Replaces the spec, pushing the old one onto the bounded history.
    pub fn update_spec(&mut self, spec: ServiceSpec) {
        if spec == self.spec {
            return;
        }
        let old = std::mem::replace(&mut self.spec, spec);
        self.history.push(ServiceRevision {
            revision: self.revision,
            spec: old,
        });
        if self.history.len() > SERVICE_HISTORY_LEN {
            let excess = self.history.len() - SERVICE_HISTORY_LEN;
            self.history.drain(..excess);
        }
        self.revision += 1;
    }
}

/// Lifecycle state of a container as its machine last saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "automerge", derive(Reconcile, Hydrate))]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    #[default]
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    Dead,
}

/// A container, written only by the machine that runs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "automerge", derive(Reconcile, Hydrate))]
pub struct Container {
    /// Docker container id; the key in [`NetworkState::containers`].
    pub id: String,
    /// Id of the machine that runs it (the only writer).
    pub machine_id: String,
    pub name: String,
    /// Service id, empty for a container outside any service.
    #[serde(default)]
    pub service_id: String,
    #[serde(default)]
    pub image: String,
    /// Mesh address `10.210.X.Y`.
    #[serde(default)]
    pub ip: String,
    #[serde(default)]
    pub state: ContainerState,
    /// Docker health check verdict; containers without a check count as healthy.
    #[serde(default = "default_true")]
    pub healthy: bool,
    /// Revision of the service spec it was created from.
    #[serde(default)]
    pub revision: u64,
    /// Image id (`sha256:…`) the container runs.
    #[serde(default)]
    pub image_digest: String,
    /// Times in ms since the Unix epoch; 0 when it has not happened.
    #[serde(default)]
    pub created_at_ms: u64,
    #[serde(default)]
    pub started_at_ms: u64,
    #[serde(default)]
    pub finished_at_ms: u64,
    /// About to be removed: no longer among its service's addresses (names, virtual address,
    /// ingress), while requests already made to it finish. Set by its machine's shim before
    /// it removes a running container. Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "is_false")]
    #[cfg_attr(feature = "automerge", autosurgeon(missing = "Default::default"))]
    pub draining: bool,
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn default_true() -> bool {
    true
}

/// Which part of the state an entity or a change belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Network,
    Machines,
    Services,
    Containers,
    Removed,
    Clients,
    Files,
    Certificates,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Network,
        Kind::Machines,
        Kind::Services,
        Kind::Containers,
        Kind::Removed,
        Kind::Clients,
        Kind::Files,
        Kind::Certificates,
    ];

    /// The key of this part at the root of the state (and in JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Machines => "machines",
            Kind::Services => "services",
            Kind::Containers => "containers",
            Kind::Removed => "removed",
            Kind::Clients => "clients",
            Kind::Files => "files",
            Kind::Certificates => "certificates",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names the internal DNS gives a meaning of its own: no service or project may take them.
pub const RESERVED_LABELS: [&str; 2] = ["lb", "machine"];

/// Why an entity was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("published port {value:?}: {why}")]
    Port { value: String, why: String },
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} is not valid: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{what} is {len} bytes, more than the {max} allowed")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// Ids are what keys the replicated maps: short, printable, no separators.
pub fn validate_id(what: &'static str, id: &str) -> Result<(), ModelError> {
    if id.is_empty() {
        return Err(ModelError::Empty { what });
    }
    if id.len() > 128 {
        return Err(ModelError::Invalid {
            what,
            value: id.chars().take(40).collect(),
            why: "longer than 128 characters",
        });
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(ModelError::Invalid {
            what,
            value: id.to_string(),
            why: "only ASCII letters, digits, '-', '_' and '.' are allowed",
        });
    }
    Ok(())
}

/// A name that becomes a DNS label (`<name>.machine.internal`): RFC 1123, lowercase.
pub fn validate_dns_label(what: &'static str, name: &str) -> Result<(), ModelError> {
    if name.is_empty() {
        return Err(ModelError::Empty { what });
    }
    let invalid = |why| ModelError::Invalid {
        what,
        value: name.to_string(),
        why,
    };
    if name.len() > 63 {
        return Err(invalid("longer than 63 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(invalid(
            "only lowercase letters, digits and '-' are allowed",
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(invalid("must not start or end with '-'"));
    }
    Ok(())
}

/// `text` made into a DNS label of at most `max` characters: lowercase, anything but ASCII
/// letters and digits turned into '-', no '-' at either end (`My_App` -> `my-app`). Empty when
/// nothing usable is left.
pub fn to_dns_label(text: &str, max: usize) -> String {
    let label: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    label.trim_matches('-').to_string()
}

fn validate_size(what: &'static str, s: &str) -> Result<(), ModelError> {
    if s.len() > MAX_FIELD_BYTES {
        return Err(ModelError::TooLarge {
            what,
            len: s.len(),
            max: MAX_FIELD_BYTES,
        });
    }
    Ok(())
}

impl Machine {
    pub fn validate(&self) -> Result<(), ModelError> {
        validate_id("machine id", &self.id)?;
        validate_dns_label("machine name", &self.name)?;
        if self.subnet == 0 {
            return Err(ModelError::Invalid {
                what: "subnet index",
                value: "0".into(),
                why: "index 0 is the network address; machines start at 1",
            });
        }
        validate_size("wireguard public key", &self.wireguard_public_key)?;
        for e in &self.endpoints {
            if e.parse::<std::net::SocketAddr>().is_err() {
                return Err(ModelError::Invalid {
                    what: "endpoint",
                    value: e.clone(),
                    why: "expected ip:port",
                });
            }
        }
        for (peer, e) in &self.observed_endpoints {
            validate_id("observed peer id", peer)?;
            if e.parse::<std::net::SocketAddr>().is_err() {
                return Err(ModelError::Invalid {
                    what: "observed endpoint",
                    value: e.clone(),
                    why: "expected ip:port",
                });
            }
        }
        for r in &self.roles {
            validate_dns_label("role", r)?;
        }
        for (k, v) in &self.labels {
            validate_size("label key", k)?;
            validate_size("label value", v)?;
        }
        validate_size("arch", &self.arch)?;
        validate_size("version", &self.version)
    }
}

impl Service {
    pub fn validate(&self) -> Result<(), ModelError> {
        validate_id("service id", &self.id)?;
        validate_dns_label("service name", &self.name)?;
        if !self.project.is_empty() {
            validate_dns_label("project", &self.project)?;
        }
        for reserved in RESERVED_LABELS {
            if self.name == reserved || self.project == reserved {
                return Err(ModelError::Invalid {
                    what: "service or project name",
                    value: reserved.to_string(),
                    why: "reserved for the internal DNS (lb.<service>.internal, \
                          <machine>.machine.internal)",
                });
            }
        }
        if self.id != Service::key(&self.project, &self.name) {
            return Err(ModelError::Invalid {
                what: "service id",
                value: self.id.clone(),
                why: "must be <name> outside a project, <name>.<project> inside one",
            });
        }
        for port in &self.spec.ports {
            crate::ports::PublishedPort::parse(port).map_err(|e| ModelError::Port {
                value: port.clone(),
                why: e.to_string(),
            })?;
        }
        if self.spec.image.is_empty() {
            return Err(ModelError::Empty {
                what: "service image",
            });
        }
        if ![String::new(), MODE_REPLICATED.into(), MODE_GLOBAL.into()].contains(&self.spec.mode) {
            return Err(ModelError::Invalid {
                what: "service mode",
                value: self.spec.mode.clone(),
                why: "expected replicated or global",
            });
        }
        if self.spec.machines.iter().any(|m| m.trim().is_empty()) {
            return Err(ModelError::Empty {
                what: "machine name in the placement",
            });
        }
        crate::files::validate_mounts(&self.spec.files)?;
        let spec_len = serde_json::to_string(&self.spec).map_or(0, |s| s.len());
        if spec_len > MAX_FIELD_BYTES {
            return Err(ModelError::TooLarge {
                what: "service spec",
                len: spec_len,
                max: MAX_FIELD_BYTES,
            });
        }
        Ok(())
    }
}

impl Container {
    pub fn validate(&self) -> Result<(), ModelError> {
        validate_id("container id", &self.id)?;
        validate_id("container machine id", &self.machine_id)?;
        if self.name.is_empty() {
            return Err(ModelError::Empty {
                what: "container name",
            });
        }
        validate_size("container name", &self.name)?;
        validate_size("container image", &self.image)?;
        if !self.ip.is_empty() && self.ip.parse::<std::net::IpAddr>().is_err() {
            return Err(ModelError::Invalid {
                what: "container ip",
                value: self.ip.clone(),
                why: "expected an IP address",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            id: "a1b2".into(),
            name: "pi-1".into(),
            subnet: 1,
            ..Default::default()
        }
    }

    #[test]
    fn machine_names_must_be_dns_labels() {
        assert!(machine().validate().is_ok());
        for bad in ["", "Pi", "pi_1", "-pi", "pi-", &"a".repeat(64)] {
            let m = Machine {
                name: bad.to_string(),
                ..machine()
            };
            assert!(m.validate().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn subnet_zero_and_bad_endpoints_are_refused() {
        let m = Machine {
            subnet: 0,
            ..machine()
        };
        assert!(m.validate().is_err());
        let m = Machine {
            endpoints: vec!["example.com".into()],
            ..machine()
        };
        assert!(m.validate().is_err());
        let m = Machine {
            endpoints: vec!["203.0.113.5:51820".into(), "[2001:db8::1]:51820".into()],
            ..machine()
        };
        assert!(m.validate().is_ok());
    }

    #[test]
    fn oversized_values_are_refused() {
        let m = Machine {
            labels: [("k".to_string(), "v".repeat(MAX_FIELD_BYTES + 1))].into(),
            ..machine()
        };
        assert!(matches!(m.validate(), Err(ModelError::TooLarge { .. })));
    }

    #[test]
    fn service_history_is_bounded_and_ordered() {
        let mut s = Service {
            id: "s1".into(),
            name: "web".into(),
            spec: ServiceSpec {
                image: "nginx:1".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        for i in 2..30 {
            s.update_spec(ServiceSpec {
                image: format!("nginx:{i}"),
                ..Default::default()
            });
        }
        assert_eq!(s.revision, 28);
        assert_eq!(s.history.len(), SERVICE_HISTORY_LEN);
        assert_eq!(s.history.last().unwrap().spec.image, "nginx:28");
        assert_eq!(s.history[0].revision, 18);
        // An unchanged spec is not a new revision.
        s.update_spec(s.spec.clone());
        assert_eq!(s.revision, 28);
    }

    #[test]
    fn current_revisions_include_rollbacks_but_not_a_number_two_specs_share() {
        let spec = |image: &str| ServiceSpec {
            image: image.into(),
            ..Default::default()
        };
        let rev = |revision, image| ServiceRevision {
            revision,
            spec: spec(image),
        };
        let mut s = Service {
            revision: 4,
            spec: spec("web:2"),
            history: vec![rev(1, "web:1"), rev(2, "web:2"), rev(3, "web:3")],
            ..Default::default()
        };
        assert_eq!(s.current_revisions(), [2, 4].into());
        // Two sides of a partition both deployed revision 5; web:5b lost the merge.
        s.revision = 5;
        s.spec = spec("web:5a");
        s.history.push(rev(5, "web:5b"));
        assert!(s.current_revisions().is_empty());
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let c: Container =
            serde_json::from_str(r#"{"id":"c1","machine_id":"m1","name":"web-1"}"#).unwrap();
        assert!(c.healthy);
        assert_eq!(c.state, ContainerState::Created);
        let back: Container = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn kind_names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Kind::parse("nope"), None);
    }

    #[test]
    fn fields_added_to_the_spec_leave_older_specs_json_unchanged() {
        // A spec's JSON keys its history entries (`service_doc::history_key`): a spec written
        // before `mode`, `machines` and `user` existed must serialize as it did then.
        let old = ServiceSpec {
            image: "web:1".into(),
            replicas: 2,
            ..Default::default()
        };
        let json = serde_json::to_string(&old).unwrap();
        for key in [
            "mode",
            "machines",
            "constraints",
            "user",
            "cap_",
            "sysctls",
            "stop_",
        ] {
            assert!(!json.contains(key), "{json}");
        }
        let global = ServiceSpec {
            mode: MODE_GLOBAL.into(),
            machines: vec!["alpha".into()],
            ..old.clone()
        };
        let back: ServiceSpec =
            serde_json::from_str(&serde_json::to_string(&global).unwrap()).unwrap();
        assert!(back.is_global() && back.machines == ["alpha"]);
        let svc = |mode: &str| Service {
            id: "web".into(),
            name: "web".into(),
            spec: ServiceSpec {
                mode: mode.into(),
                ..old.clone()
            },
            ..Default::default()
        };
        assert!(svc(MODE_REPLICATED).validate().is_ok());
        assert!(svc("everywhere").validate().is_err());
    }
}

//! Names and proxies of Uncloud's local D-Bus APIs.
//!
//! Each daemon owns one well-known name on the system bus (a private bus in tests); the
//! trailing `1` is the interface version. Large structures travel as JSON strings so every
//! method stays callable from `busctl`.

use std::collections::HashMap;

/// Well-known name, object path and interface of `stated`.
pub const STATE_NAME: &str = "org.uncloud.State1";
pub const STATE_PATH: &str = "/org/uncloud/State1";

/// Name of the D-Bus error stated returns for a bad argument (malformed JSON, invalid field).
pub const STATE_ERROR_INVALID: &str = "org.uncloud.State1.Error.InvalidArgument";
/// Name of the D-Bus error for an id that is not in the state.
pub const STATE_ERROR_NOT_FOUND: &str = "org.uncloud.State1.Error.NotFound";
/// Name of the D-Bus error for a write another machine owns.
pub const STATE_ERROR_NOT_OWNER: &str = "org.uncloud.State1.Error.NotOwner";
/// Name of the D-Bus error for a write that could not be made durable.
pub const STATE_ERROR_STORAGE: &str = "org.uncloud.State1.Error.Storage";

/// A connection builder for a bus named the way every daemon's `bus` setting names it:
/// `system`, `session`, or an address such as `unix:path=/run/test-bus`. `none` gives `None`
/// (the daemon runs without D-Bus).
pub fn bus_builder(bus: &str) -> Option<zbus::connection::Builder<'_>> {
    match bus {
        "none" => None,
        "system" => Some(zbus::connection::Builder::system()),
        "session" => Some(zbus::connection::Builder::session()),
        address => Some(zbus::connection::Builder::address(address)),
    }
}

/// Client side of `org.uncloud.State1`; see `services/stated` for the server and docs.
#[zbus::proxy(
    interface = "org.uncloud.State1",
    default_service = "org.uncloud.State1",
    default_path = "/org/uncloud/State1"
)]
pub trait State {
    /// The whole state as JSON.
    fn get_state(&self) -> zbus::Result<String>;
    /// One part (`network`, `machines`, `services`, `containers`, `routes`) as JSON, or one
    /// entity of it when `id` is not empty.
    fn get(&self, kind: &str, id: &str) -> zbus::Result<String>;
    /// The named entities of one part as a JSON object keyed by id; absent ids were removed.
    fn get_many(&self, kind: &str, ids: &[&str]) -> zbus::Result<String>;
    /// Creates a network with this machine as its first member; returns its entry (JSON).
    fn create_network(&self, network_id: &str, mesh_cidr: &str, name: &str)
        -> zbus::Result<String>;
    /// Joins with the whole document of the member that admitted this machine.
    fn join_network(&self, document: &[u8]) -> zbus::Result<String>;
    /// Admits a machine (`{"machine_id", "name", …}`); returns its entry (JSON).
    fn admit_machine(&self, json: &str) -> zbus::Result<String>;
    /// The whole document, for a machine this member admitted.
    fn save_document(&self) -> zbus::Result<Vec<u8>>;
    fn set_machine_name(&self, id: &str, name: &str) -> zbus::Result<()>;
    fn set_machine_roles(&self, id: &str, roles: &[&str]) -> zbus::Result<()>;
    fn set_machine_labels(&self, id: &str, labels: HashMap<&str, &str>) -> zbus::Result<()>;
    fn set_machine_drained(&self, id: &str, drained: bool) -> zbus::Result<()>;
    fn set_ingress_released(&self, ids: &[&str]) -> zbus::Result<()>;
    fn remove_machine(&self, id: &str) -> zbus::Result<()>;
    /// Sets this machine's WireGuard public key, advertised endpoints and observed peer
    /// endpoints (peer id -> `ip:port`), leaving its other fields alone. Used by meshd.
    fn set_mesh(
        &self,
        public_key: &str,
        endpoints: Vec<String>,
        observed: HashMap<String, String>,
    ) -> zbus::Result<()>;
    fn set_machine_ca(&self, ca_cert: &str) -> zbus::Result<()>;
    /// Records an issued client certificate or its revocation (a `ClientCert`, JSON).
    fn upsert_client(&self, json: &str) -> zbus::Result<()>;
    fn upsert_service(&self, json: &str) -> zbus::Result<()>;
    fn remove_service(&self, id: &str) -> zbus::Result<()>;
    /// Stores the content of a file services mount (a `StoredFile`, JSON, content base64);
    /// refused unless its digest matches.
    fn upsert_file(&self, json: &str) -> zbus::Result<()>;
    fn remove_file(&self, digest: &str) -> zbus::Result<()>;
    fn upsert_certificate(&self, json: &str) -> zbus::Result<()>;
    fn remove_certificate(&self, hostname: &str) -> zbus::Result<()>;
    fn upsert_container(&self, json: &str) -> zbus::Result<()>;
    fn remove_container(&self, id: &str) -> zbus::Result<()>;
    /// One field of a container its machine runs: `running`, `exited`, …
    fn set_container_state(&self, id: &str, state: &str) -> zbus::Result<()>;
    /// One field of a container its machine runs: its health verdict.
    fn set_container_health(&self, id: &str, healthy: bool) -> zbus::Result<()>;
    /// Machine id -> `alive` | `suspect` | `down`, as this machine sees them.
    fn liveness(&self) -> zbus::Result<HashMap<String, String>>;

    /// Emitted after the state changed, locally or by a merge: which part and which ids.
    #[zbus(signal)]
    fn changed(&self, kind: &str, ids: Vec<String>) -> zbus::Result<()>;
    /// Emitted when listeners may have missed `Changed` signals: re-read everything.
    #[zbus(signal)]
    fn resync(&self) -> zbus::Result<()>;
    /// Emitted when a machine's liveness changes.
    #[zbus(signal)]
    fn liveness_changed(&self, machine_id: &str, liveness: &str) -> zbus::Result<()>;

    #[zbus(property(emits_changed_signal = "const"))]
    fn machine_id(&self) -> zbus::Result<String>;
    /// Empty while the machine is fresh. Read afresh each time (not from the proxy's cache,
    /// which could lag the change from fresh to member).
    #[zbus(property(emits_changed_signal = "false"))]
    fn network_id(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "const"))]
    fn default_name(&self) -> zbus::Result<String>;
    /// `fresh` or `member`; read afresh each time.
    #[zbus(property(emits_changed_signal = "false"))]
    fn mode(&self) -> zbus::Result<String>;
    /// Hex hashes of the document heads; equal on two machines means equal state. Not
    /// announced on change (use `Changed`), so the proxy reads it afresh each time.
    #[zbus(property(emits_changed_signal = "false"))]
    fn heads(&self) -> zbus::Result<Vec<String>>;
}

/// Well-known name and object path of `meshd`.
pub const MESH_NAME: &str = "org.uncloud.Mesh1";
pub const MESH_PATH: &str = "/org/uncloud/Mesh1";

/// One peer as `org.uncloud.Mesh1.Peers` returns it: machine id, name, public key, subnet,
/// endpoint in use, status, seconds since the last handshake (-1: never), rx bytes, tx bytes,
/// path.
pub type MeshPeerRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    u64,
    u64,
    String,
);

/// Client side of `org.uncloud.Mesh1`; see `services/meshd` for the server and docs.
#[zbus::proxy(
    interface = "org.uncloud.Mesh1",
    default_service = "org.uncloud.Mesh1",
    default_path = "/org/uncloud/Mesh1"
)]
pub trait Mesh {
    fn peers(&self) -> zbus::Result<Vec<MeshPeerRow>>;
    fn peers_json(&self) -> zbus::Result<String>;
    #[zbus(signal)]
    fn peer_up(&self, machine_id: &str, name: &str) -> zbus::Result<()>;
    #[zbus(signal)]
    fn peer_down(&self, machine_id: &str, name: &str) -> zbus::Result<()>;
    #[zbus(property(emits_changed_signal = "const"))]
    fn public_key(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn address(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "const"))]
    fn interface(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "const"))]
    fn listen_port(&self) -> zbus::Result<u16>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn endpoints(&self) -> zbus::Result<Vec<String>>;
}

/// Well-known name and object path of `dnsd`.
pub const DNS_NAME: &str = "org.uncloud.Dns1";
pub const DNS_PATH: &str = "/org/uncloud/Dns1";

/// One name as `org.uncloud.Dns1.Names` returns it: the name and the addresses it resolves
/// to right now (none: it exists, nothing healthy answers).
pub type DnsNameRow = (String, Vec<String>);

/// Client side of `org.uncloud.Dns1`; see `services/dnsd` for the server and docs.
#[zbus::proxy(
    interface = "org.uncloud.Dns1",
    default_service = "org.uncloud.Dns1",
    default_path = "/org/uncloud/Dns1"
)]
pub trait Dns {
    fn names(&self) -> zbus::Result<Vec<DnsNameRow>>;
    fn resolve(&self, name: &str) -> zbus::Result<Vec<String>>;
    fn counters(&self) -> zbus::Result<std::collections::HashMap<String, u64>>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn listening(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property(emits_changed_signal = "const"))]
    fn upstreams(&self) -> zbus::Result<Vec<String>>;
}

/// Well-known name and object path of `ingressd`.
pub const INGRESS_NAME: &str = "org.uncloud.Ingress1";
pub const INGRESS_PATH: &str = "/org/uncloud/Ingress1";

/// One route as `org.uncloud.Ingress1.Routes` returns it (a JSON array of these).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IngressRoute {
    pub hostname: String,
    pub path: String,
    /// `http` or `https`.
    pub protocol: String,
    /// `name` or `name.project`.
    pub service: String,
    pub upstreams: Vec<IngressUpstream>,
}

/// One upstream of a route, as this ingress machine sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IngressUpstream {
    /// `ip:port` on the mesh.
    pub address: String,
    /// Skipped for now after a failed connection (passive health).
    pub down: bool,
    /// Requests in flight.
    pub active: u64,
    /// Failed connections since the last success.
    pub failures: u64,
}

/// One hostname's certificate as `org.uncloud.Ingress1.Certificates` returns it (a JSON
/// array of these). No secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IngressCertificate {
    pub hostname: String,
    /// `issued`, `self-signed`, `ordering`, `failed`, `unusable` or `none`.
    pub status: String,
    #[serde(default)]
    pub serial: String,
    #[serde(default)]
    pub issuer: String,
    /// ms since the Unix epoch; 0 when there is none.
    #[serde(default)]
    pub not_after_ms: u64,
    /// When it will be renewed (ms since the Unix epoch).
    #[serde(default)]
    pub renew_at_ms: u64,
    #[serde(default)]
    pub issued_by: String,
    /// The machine ordering it now, if any.
    #[serde(default)]
    pub claim_by: String,
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub last_error: String,
    #[serde(default)]
    pub directory: String,
}

/// Client side of `org.uncloud.Ingress1`; see `services/ingressd` for the server and docs.
#[zbus::proxy(
    interface = "org.uncloud.Ingress1",
    default_service = "org.uncloud.Ingress1",
    default_path = "/org/uncloud/Ingress1"
)]
pub trait Ingress {
    /// JSON array of [`IngressRoute`].
    fn routes(&self) -> zbus::Result<String>;
    /// JSON array of [`IngressCertificate`].
    fn certificates(&self) -> zbus::Result<String>;
    fn counters(&self) -> zbus::Result<std::collections::HashMap<String, u64>>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn listening(&self) -> zbus::Result<Vec<String>>;
}

/// Well-known name and object path of `apid`.
pub const API_NAME: &str = "org.uncloud.Api1";
pub const API_PATH: &str = "/org/uncloud/Api1";

/// One connection as `org.uncloud.Api1.Connections` returns it: peer address, how it
/// authenticated (`maintenance`, `anonymous`, `client`, `refused`), certificate subject (for
/// `refused`: why), role, seconds connected.
pub type ApiConnectionRow = (String, String, String, String, u64);

/// Client side of `org.uncloud.Api1`; see `services/apid` for the server and docs.
#[zbus::proxy(
    interface = "org.uncloud.Api1",
    default_service = "org.uncloud.Api1",
    default_path = "/org/uncloud/Api1"
)]
pub trait Api {
    fn connections(&self) -> zbus::Result<Vec<ApiConnectionRow>>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn mode(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"))]
    fn network_id(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "const"))]
    fn listen(&self) -> zbus::Result<String>;
}

pub const DOCKER_NAME: &str = "org.uncloud.Docker1";
pub const DOCKER_PATH: &str = "/org/uncloud/Docker1";

/// Client side of `org.uncloud.Docker1`; see `services/dockerd-shim` for the server and docs.
/// Structures travel as JSON ([`crate::model`], [`crate::docker`]). The methods that pass
/// file descriptors (`Logs`, `Exec`, `LoadImage`) are left to callers that need them.
#[zbus::proxy(
    interface = "org.uncloud.Docker1",
    default_service = "org.uncloud.Docker1",
    default_path = "/org/uncloud/Docker1"
)]
pub trait Docker {
    fn run_service(&self, service_json: &str, name: &str) -> zbus::Result<String>;
    fn stop(&self, container: &str, grace_secs: i32) -> zbus::Result<()>;
    fn start(&self, container: &str) -> zbus::Result<()>;
    fn restart(&self, container: &str, grace_secs: i32) -> zbus::Result<()>;
    fn remove(&self, container: &str) -> zbus::Result<()>;
    fn inspect(&self, container: &str) -> zbus::Result<String>;
    /// JSON [`crate::docker::LogLinesRequest`] in, JSON [`crate::docker::LogLine`]s out.
    fn log_lines(&self, container: &str, request: &str) -> zbus::Result<String>;
    fn stats(&self, container: &str) -> zbus::Result<String>;
    fn pull_image(&self, image: &str) -> zbus::Result<()>;
    fn list_images(&self) -> zbus::Result<String>;
    fn remove_image(&self, name: &str) -> zbus::Result<()>;
    fn create_volume(&self, name: &str) -> zbus::Result<String>;
    fn list_volumes(&self) -> zbus::Result<String>;
    fn inspect_volume(&self, name: &str) -> zbus::Result<String>;
    fn remove_volume(&self, name: &str) -> zbus::Result<()>;
    fn resize_exec(&self, exec_id: &str, height: u16, width: u16) -> zbus::Result<()>;
    fn exec_exit_code(&self, exec_id: &str) -> zbus::Result<i64>;
    #[zbus(signal)]
    fn pull_progress(
        &self,
        image: &str,
        layer: &str,
        status: &str,
        current: u64,
        total: u64,
    ) -> zbus::Result<()>;
}

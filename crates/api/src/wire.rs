//! The calls apid answers and what they carry.
//!
//! Everything travels as JSON (self-describing): a field added later is `#[serde(default)]`
//! and ignored by an older peer, so `uc` and apid of different versions keep working during a
//! rolling upgrade. Error kinds an older `uc` does not know read as [`ErrorKind::Other`].

use serde::{Deserialize, Serialize};

pub use uncloud_common::dbus::{IngressCertificate, IngressRoute, IngressUpstream};
pub use uncloud_common::docker::{
    ImageInfo, LogLine, LogLinesRequest, VolumeInfo, MAX_LOG_LINES as LOG_PAGE_LINES,
};

pub use crate::exec::{
    ExecBegin, ExecEnd, ExecOutput, ExecRead, ExecRef, ExecResize, ExecStarted, ExecWrite,
};
pub use crate::host::{
    DnsName, LogEntry, LogPage, LogRequest, MachineStatus, MeshPeer, UnitStatus,
};
pub use crate::image::{MachinePush, PushBegin, PushChunk, PushProgress, PushRef, PushStarted};
pub use crate::service::{
    ActionReply, ContainerAction, ContainerRow, DrainReply, DrainRequest, DrainedService,
    HistoryReply, MachineFailure, PutFiles, PutFilesReply, RemoveReply, RevisionRow, RunReply,
    RunRequest, ScaleRequest, ServiceRef, ServiceRow, UpdateReply, UpdateRequest,
};

/// The TCP port apid listens on (TLS), on every address. The only public port besides
/// WireGuard's.
pub const PORT: u16 = 7443;

/// Version of this API; a reply's `api_version` says what the server speaks.
/// 2: `change_machine`, `remove_machine`, certificates, `fan_out`.
/// 3: `call`, and the calls `status`, `logs`, `reboot`, `mesh_peers`.
/// 4: the call `dns_names`.
/// 5: `run`, `scale`, `remove_service` and the call `services`.
/// 6: `update` (rolling updates, rollback), `history`, `container_action`.
/// 7: `push_begin`, `push_chunk`, `push_end`, `push_abort` (`uc image push`).
/// 8: `drain_machine` (`uc machine drain|enable`), `MachineRow.drained`.
/// 9: `exec_begin`, `exec_read`, `exec_write`, `exec_resize`, `exec_end` (`uc exec`).
/// 10: `put_files` (Compose secrets and configs).
/// 11: the calls `ingress_routes` and `ingress_certificates` (`uc ingress ls|certs`).
/// An older apid closes the connection on a call it does not know; `uc` checks
/// `info().api_version` first where that matters.
pub const API_VERSION: u32 = 11;

/// Largest JSON frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

#[tarpc::service]
pub trait Api {
    /// Maintenance mode only: creates a network with this machine as its first member and
    /// returns the first admin credentials.
    async fn init(request: InitRequest) -> Result<InitReply, ApiError>;
    /// Member mode, any role: this machine and its network.
    async fn info() -> Result<MachineInfo, ApiError>;
    /// Member mode, any role: every machine in the state.
    async fn machines() -> Result<Vec<MachineRow>, ApiError>;
    /// Maintenance mode only: joins the network of `request.ticket` (`uc machine add`).
    /// Needs the machine's setup token, like `init`.
    async fn join(request: JoinRequest) -> Result<JoinReply, ApiError>;
    /// Member mode, admin: a join ticket redeemable at this machine.
    async fn issue_ticket(request: TicketRequest) -> Result<TicketReply, ApiError>;
    /// Member mode, no client certificate needed (the ticket is the credential): a joining
    /// machine's apid redeems its ticket and gets the state that admits it.
    async fn redeem(request: RedeemRequest) -> Result<RedeemReply, ApiError>;
    /// Member mode, admin: renames a machine, sets or removes its labels, adds or removes
    /// its roles. Returns the machine as it is now. Added in API version 2.
    async fn change_machine(request: MachineChange) -> Result<MachineRow, ApiError>;
    /// Member mode, admin: removes a machine from the network for good. Returns the entry it
    /// had. Added in API version 2.
    async fn remove_machine(request: MachineRef) -> Result<MachineRow, ApiError>;
    /// Member mode, admin: a client certificate for someone else's public key. Added in API
    /// version 2.
    async fn issue_cert(request: CertRequest) -> Result<CertReply, ApiError>;
    /// Member mode, any role: a new certificate, same subject and role, for the caller's
    /// (possibly new) key. Added in API version 2.
    async fn renew_cert(request: RenewRequest) -> Result<CertReply, ApiError>;
    /// Member mode, any role: the client certificates the machines issued. Added in API
    /// version 2.
    async fn certs() -> Result<Vec<CertRow>, ApiError>;
    /// Member mode, admin: revokes client certificates by serial or subject, network-wide.
    /// Returns those revoked. Added in API version 2.
    async fn revoke_cert(request: CertRef) -> Result<Vec<CertRow>, ApiError>;
    /// Member mode, any role: `request.call` on each target machine, forwarded by this one
    /// over the mesh (`uc -m`). One reply per target, in the order asked; a target that does
    /// not answer within a few seconds is reported unreachable, never waited for. The
    /// target decides on the call with the caller's role. Added in API version 2.
    async fn fan_out(request: FanOut) -> Result<Vec<TargetReply>, ApiError>;
    /// Member mode: `call` answered by this machine (what `fan_out` asks each target). The
    /// role `call` needs: reader, except `reboot`, `create_volume` and `remove_volume`
    /// (admin). Added in API version 3.
    async fn call(call: Call) -> Result<Answer, ApiError>;
    /// Member mode, admin: creates a service and starts its containers on the machines
    /// placement picks, each by that machine's dockerd-shim. Added in API version 5.
    async fn run(request: RunRequest) -> Result<RunReply, ApiError>;
    /// Member mode, admin: removes a service's containers on every machine, then the service.
    /// Added in API version 5.
    async fn remove_service(request: ServiceRef) -> Result<RemoveReply, ApiError>;
    /// Member mode, admin: starts or removes containers of a replicated service until it has
    /// `replicas` (placed as `run` places them; removed from the machines with the most of
    /// it). Returns the service as it is now. Added in API version 5.
    async fn scale(request: ScaleRequest) -> Result<RunReply, ApiError>;
    /// Member mode, admin: replaces a service's containers one at a time by containers of a
    /// new spec (or an earlier revision's), each ready before the next; goes back to the
    /// previous spec when one fails, unless asked not to. Added in API version 6.
    async fn update(request: UpdateRequest) -> Result<UpdateReply, ApiError>;
    /// Member mode, any role: a service's revisions. Added in API version 6.
    async fn history(request: ServiceRef) -> Result<HistoryReply, ApiError>;
    /// Member mode, admin: stops, starts or restarts a service's containers (or one of
    /// them), each on its machine, all at once. Added in API version 6.
    async fn container_action(request: ContainerAction) -> Result<ActionReply, ApiError>;
    /// Member mode, admin: starts an image upload to machines (`uc image push`): their
    /// shims are asked to take a tarball. Added in API version 7.
    async fn push_begin(request: PushBegin) -> Result<PushStarted, ApiError>;
    /// The next chunk of an upload, passed on to every machine still taking it. Added in
    /// API version 7.
    async fn push_chunk(request: PushChunk) -> Result<PushProgress, ApiError>;
    /// Ends an upload: each machine's engine loads the image. Added in API version 7.
    async fn push_end(request: PushRef) -> Result<PushProgress, ApiError>;
    /// Drops an upload: nothing is loaded anywhere. Added in API version 7.
    async fn push_abort(request: PushRef) -> Result<(), ApiError>;
    /// Member mode, admin: drains a machine (no container of a service goes to it; those on
    /// it move to other machines, started there before they stop) or enables it again.
    /// Added in API version 8.
    async fn drain_machine(request: DrainRequest) -> Result<DrainReply, ApiError>;
    /// Member mode, admin: runs a command in a container on any machine (by that machine's
    /// shim) and opens a session for its input and output on this machine. Added in API
    /// version 9.
    async fn exec_begin(request: ExecBegin) -> Result<ExecStarted, ApiError>;
    /// The session's output since the last read, waiting a while for some. Added in API
    /// version 9.
    async fn exec_read(request: ExecRead) -> Result<ExecOutput, ApiError>;
    /// Input for the session's command. Added in API version 9.
    async fn exec_write(request: ExecWrite) -> Result<(), ApiError>;
    /// The session's terminal size. Added in API version 9.
    async fn exec_resize(request: ExecResize) -> Result<(), ApiError>;
    /// Ends a session. Added in API version 9.
    async fn exec_end(request: ExecRef) -> Result<(), ApiError>;
    /// Member mode, admin: stores the contents of files services mount (Compose secrets and
    /// configs) in the state, each under its digest, before the specs that name them are
    /// deployed. Added in API version 10.
    async fn put_files(request: PutFiles) -> Result<PutFilesReply, ApiError>;
}

/// `uc -m TARGETS …`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanOut {
    /// Machine names or ids; `all` for every machine in the state.
    pub targets: Vec<String>,
    pub call: Call,
}

/// A call about one machine: asked of the connected one ([`Api::call`]) or forwarded to
/// others ([`Api::fan_out`]). A target that does not know a call (older) fails for that
/// target only. Adding a per-machine command is a variant here and an arm in apid's
/// dispatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// This machine and its network ([`Api::info`]).
    Info,
    /// Every machine, as this one sees them ([`Api::machines`]).
    Machines,
    /// Units, versions, memory and disk (`uc machine status`). API version 3.
    Status,
    /// The journal (`uc machine logs`). API version 3.
    Logs(LogRequest),
    /// Admin: reboot the machine, right after answering (`uc machine reboot`). API version 3.
    Reboot,
    /// Who this machine reaches, how, and when it last heard from them (`uc mesh peers`).
    /// API version 3.
    MeshPeers,
    /// The names this machine's dnsd serves and what they resolve to (`uc dns ls`). API
    /// version 4.
    DnsNames,
    /// Every service and its containers, as this machine's state has them (`uc ls`, `uc ps`).
    /// API version 5.
    Services,
    /// A page of the log lines of a container on this machine (`uc logs`). API version 6.
    ContainerLogs(ContainerLogRequest),
    /// The machine's named volumes (`uc volume ls`). API version 6.
    Volumes,
    /// One named volume (`uc volume inspect`). API version 6.
    InspectVolume(String),
    /// Admin: creates a named volume, or returns the one of that name (`uc volume create`).
    /// API version 6.
    CreateVolume(String),
    /// Admin: removes a named volume no container uses (`uc volume rm`). API version 6.
    RemoveVolume(String),
    /// The machine's images (`uc image ls`). API version 6.
    Images,
    /// The routes this machine's ingressd serves, with its upstreams' health (`uc ingress
    /// ls`). API version 11.
    IngressRoutes,
    /// The HTTPS hostnames' certificates as this machine's ingressd sees them (`uc ingress
    /// certs`). API version 11.
    IngressCertificates,
}

/// [`Call::ContainerLogs`]: which container and which of its lines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerLogRequest {
    /// Its id (or name), on the machine asked.
    pub container: String,
    #[serde(flatten)]
    pub lines: uncloud_common::docker::LogLinesRequest,
}

/// What a [`Call`] returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Info(MachineInfo),
    Machines(Vec<MachineRow>),
    Status(MachineStatus),
    Logs(LogPage),
    /// The machine accepted the reboot and goes down in a moment.
    Rebooting,
    MeshPeers(Vec<MeshPeer>),
    DnsNames(Vec<DnsName>),
    Services(Vec<ServiceRow>),
    ContainerLogs(Vec<LogLine>),
    Volumes(Vec<VolumeInfo>),
    Volume(VolumeInfo),
    /// What was removed (`RemoveVolume`).
    Removed(String),
    Images(Vec<ImageInfo>),
    IngressRoutes(Vec<IngressRoute>),
    IngressCertificates(Vec<IngressCertificate>),
}

/// One target's outcome: an answer or an error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReply {
    /// The target's name (or what was asked for, when no machine has that name).
    pub machine: String,
    #[serde(default)]
    pub machine_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

/// `uc cert issue`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CertRequest {
    /// Who it names (a person or a laptop).
    pub subject: String,
    /// `admin` or `reader`.
    pub role: String,
    /// The holder's public key (DER SubjectPublicKeyInfo).
    pub public_key: Vec<u8>,
    /// Validity in seconds; 0: the default (a year).
    #[serde(default)]
    pub ttl_secs: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RenewRequest {
    /// The key the new certificate is for (DER SubjectPublicKeyInfo).
    pub public_key: Vec<u8>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CertReply {
    /// PEM client certificate.
    pub cert_pem: String,
    pub cert: CertRow,
    pub network_id: String,
    /// PEM CA certificates of the network's machines: what the holder trusts servers by.
    pub ca_bundle: String,
    /// apid endpoints of the machines (`ip:7443`), for the holder's context.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

/// One client certificate, as `uc cert ls` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CertRow {
    pub serial: String,
    pub subject: String,
    pub role: String,
    /// Name of the machine whose CA issued it.
    #[serde(default)]
    pub issued_by: String,
    /// Unix seconds.
    #[serde(default)]
    pub not_after: u64,
    #[serde(default)]
    pub revoked: bool,
}

/// Certificates by serial (or a unique prefix of at least 8 hex digits) or by subject.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CertRef {
    pub cert: String,
}

/// One machine of the network, by name or id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MachineRef {
    pub machine: String,
}

/// `uc machine rename|label|role`: what to change on one machine; empty fields change
/// nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MachineChange {
    /// The machine, by name or id.
    pub machine: String,
    /// Its new name (a DNS label); empty: keep the name.
    #[serde(default)]
    pub rename: String,
    /// Labels to set (key -> value).
    #[serde(default)]
    pub set_labels: std::collections::BTreeMap<String, String>,
    /// Label keys to remove.
    #[serde(default)]
    pub remove_labels: Vec<String>,
    #[serde(default)]
    pub add_roles: Vec<String>,
    #[serde(default)]
    pub remove_roles: Vec<String>,
}

/// `uc machine add`, to the new machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The new machine's one-time setup token.
    pub token: String,
    /// A ticket from a member (`issue_ticket`).
    pub ticket: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JoinReply {
    pub network_id: String,
    pub machine_id: String,
    pub machine_name: String,
    /// `10.210.X.0/24`.
    pub subnet: String,
    /// The new machine's CA certificate (PEM), for the client's trust bundle.
    #[serde(default)]
    pub ca_cert: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TicketRequest {
    /// How long the ticket is valid, in seconds; 0: the member's default.
    #[serde(default)]
    pub ttl_secs: u64,
    /// The name the new machine gets; empty: its own host name.
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TicketReply {
    pub ticket: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// What a joining machine sends to the member that issued its ticket: its public keys only.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RedeemRequest {
    pub ticket: String,
    /// The joining machine's id (its stated's).
    pub machine_id: String,
    /// The name it asks for (the ticket's name wins).
    #[serde(default)]
    pub name: String,
    /// Its WireGuard public key (base64).
    pub wireguard_public_key: String,
    /// Where its WireGuard listens (`ip:port`), as it sees itself.
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RedeemReply {
    /// The whole state (automerge document, base64), with the joining machine's entry.
    pub document: String,
    /// The entry the member wrote for it (name, subnet).
    pub machine_name: String,
    /// The issuer's clock when it answered (Unix seconds; 0 from an older issuer). A joining
    /// machine whose own clock is far off (a Raspberry Pi has no real-time clock) dates its
    /// CA and server certificate by this instead.
    #[serde(default)]
    pub issuer_time: u64,
}

/// `uc machine init`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InitRequest {
    /// The one-time setup token the machine's console shows.
    pub token: String,
    /// The machine's name in the network; empty: its host name.
    #[serde(default)]
    pub machine_name: String,
    /// The mesh range, for example `10.210.0.0/16`; empty: the default.
    #[serde(default)]
    pub mesh_cidr: String,
    /// The client's public key (DER SubjectPublicKeyInfo); its private key never leaves the
    /// client.
    pub client_public_key: Vec<u8>,
    /// Who the client certificate names (a person or a laptop).
    #[serde(default)]
    pub client_name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InitReply {
    pub network_id: String,
    pub machine_id: String,
    pub machine_name: String,
    /// PEM CA certificate of the machine: the client trusts apid through it.
    pub ca_cert: String,
    /// PEM admin client certificate for the client's public key.
    pub client_cert: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MachineInfo {
    pub api_version: u32,
    /// `member` (maintenance mode answers only `init`).
    pub mode: String,
    pub network_id: String,
    pub machine_id: String,
    pub machine_name: String,
    /// Role of the calling client certificate.
    pub role: String,
    /// The calling certificate's subject.
    pub client: String,
}

/// One machine, as `uc machine ls` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MachineRow {
    pub id: String,
    pub name: String,
    /// `10.210.X.0/24`.
    pub subnet: String,
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub version: String,
    /// PEM certificate of the machine's CA; empty until it published one.
    #[serde(default)]
    pub ca_cert: String,
    /// As the answering machine sees it: `alive`, `suspect` or `down`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The machine's mesh address (`10.210.X.1`).
    #[serde(default)]
    pub mesh_ip: String,
    /// Drained (`uc machine drain`). Added in API version 8.
    #[serde(default)]
    pub drained: bool,
    /// CPU architecture as `uname -m` names it (`x86_64`, `aarch64`), which placement's
    /// `node.platform.arch` matches. Empty from apids older than the field.
    #[serde(default)]
    pub arch: String,
}

/// Why a call failed: a kind the client acts on and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The setup token is wrong (or was used already).
    BadToken,
    /// Too many failed attempts: wait and retry.
    RateLimited,
    /// The call needs a fresh machine (maintenance mode); this one is a member.
    AlreadyMember,
    /// The call needs a member; this machine is in maintenance mode.
    NotMember,
    /// The client certificate does not allow this call (missing, or reader for a write).
    Forbidden,
    /// The request itself is malformed.
    Invalid,
    /// The join ticket is not usable: expired, used, tampered with, or of another network.
    BadTicket,
    /// Another machine could not be reached (a ticket's issuer, a forwarding target).
    Unreachable,
    /// The machine failed to do it (its state service, its disk).
    Internal,
    /// No machine (or other object) of that name or id.
    NotFound,
    /// It exists already (a service of that name).
    Conflict,
    /// A kind this client does not know (a newer server).
    #[serde(other)]
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_reader_ignores_new_fields_and_unknown_error_kinds() {
        // A newer server's reply with a field this version does not have.
        let newer = r#"{"id":"a","name":"m","subnet":"10.210.1.0/24","endpoints":[],
            "roles":[],"version":"9","added_in_v9":{"x":1}}"#;
        let row: MachineRow = serde_json::from_str(newer).unwrap();
        assert_eq!(row.name, "m");
        // An older server's reply without the optional fields.
        let older = r#"{"id":"a","name":"m","subnet":"10.210.1.0/24"}"#;
        let row: MachineRow = serde_json::from_str(older).unwrap();
        assert!(row.roles.is_empty());
        let e: ApiError =
            serde_json::from_str(r#"{"kind":"quota_exceeded","message":"later"}"#).unwrap();
        assert_eq!(e.kind, ErrorKind::Other);
        assert_eq!(e.to_string(), "later");
    }

    #[test]
    fn an_init_request_from_an_older_client_reads() {
        let r: InitRequest =
            serde_json::from_str(r#"{"token":"t","client_public_key":[1,2]}"#).unwrap();
        assert!(r.machine_name.is_empty() && r.mesh_cidr.is_empty());
    }
}

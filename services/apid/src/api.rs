//! What apid does for each call, given who is calling. Transport-free: the server module
//! turns connections into [`Caller`]s and calls in here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use time::OffsetDateTime;
use uncloud_api::peer::Forwarded;
use uncloud_api::wire::{
    Answer, ApiError, Call, CertRef, CertReply, CertRequest, CertRow, DnsName, ErrorKind, FanOut,
    InitReply, InitRequest, JoinReply, JoinRequest, MachineChange, MachineInfo, MachineRef,
    MachineRow, MeshPeer, RedeemReply, RedeemRequest, RenewRequest, TargetReply, TicketReply,
    TicketRequest, API_VERSION,
};
use uncloud_common::address::MeshCidr;
use uncloud_common::dbus::{DnsProxy, IngressProxy, MeshProxy, StateProxy};
use uncloud_common::durable;
use uncloud_common::identity::IdentityPaths;
use uncloud_common::model::{ClientCert, Machine, NetworkInfo};
use uncloud_pki::ca::CLIENT_VALIDITY;
use uncloud_pki::{ticket, Role};

pub use crate::caller::Caller;
use crate::change;
use crate::config::Config;
use crate::connections::Connections;
use crate::credentials::{self, Credentials};
use crate::fanout;
use crate::host;
use crate::redeemed::Redeemed;
use crate::revocation;
use crate::tls;
use crate::token::{self, Limiter};

/// How long a joining machine waits for each of the issuer's endpoints.
const REDEEM_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the trusted CAs and the revoked certificates are re-read from the state, at most.
const TRUST_REFRESH: Duration = Duration::from_secs(1);
/// Time for a reboot's answer to reach `uc` before the machine goes down.
const REBOOT_DELAY: Duration = Duration::from_millis(500);

/// What the state says about client certificates.
#[derive(Default)]
struct Trust {
    /// CA certificates (DER) of the machines in the state.
    cas: Vec<Vec<u8>>,
    /// Serials of revoked client certificates.
    revoked: BTreeSet<String>,
    read_at: Option<Instant>,
}

/// This machine as a member: its network and credentials.
pub struct Member {
    pub network_id: String,
    pub machine_id: String,
    pub machine_name: String,
    pub credentials: Credentials,
    pub tls: Arc<ServerConfig>,
}

pub struct Apid {
    config: Config,
    paths: IdentityPaths,
    state: StateProxy<'static>,
    limiter: Mutex<Limiter>,
    epoch: Instant,
    maintenance_tls: Option<Arc<ServerConfig>>,
    member: RwLock<Option<Arc<Member>>>,
    /// One `init` or `join` at a time.
    init_lock: tokio::sync::Mutex<()>,
    /// What the state says about client certificates, and when it was read.
    trust: RwLock<Trust>,
    redeemed: Redeemed,
    /// Open API connections, for `org.uncloud.Api1`.
    connections: Connections,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot ask stated for this machine's mode: {0}")]
    State(#[from] zbus::Error),
    #[error(
        "this machine is fresh but its identity ({path}) cannot be read: {reason}; \
         uncloud-firstboot makes it at boot"
    )]
    Identity { path: String, reason: String },
    #[error(transparent)]
    Tls(#[from] uncloud_api::tls::TlsError),
    #[error("cannot set up member mode: {0}")]
    Member(#[from] BecomeError),
}

pub(crate) fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorKind::Internal, format!("{what}: {e}"))
}

impl Apid {
    /// Reads the machine's mode from stated and prepares the matching TLS face.
    pub async fn start(config: Config, state: StateProxy<'static>) -> Result<Apid, StartError> {
        let paths = IdentityPaths::under(&config.root);
        let config_redeemed_path = config.data_dir.join("redeemed");
        let limiter = Mutex::new(Limiter::new(config.token_backoff_max_secs * 1000));
        let mut apid = Apid {
            config,
            paths,
            state,
            limiter,
            epoch: Instant::now(),
            maintenance_tls: None,
            member: RwLock::new(None),
            init_lock: tokio::sync::Mutex::new(()),
            trust: RwLock::new(Trust::default()),
            redeemed: Redeemed::new(config_redeemed_path),
            connections: Connections::default(),
        };
        if apid.state.mode().await? == "member" {
            let member = apid.become_member(OffsetDateTime::now_utc()).await?;
            *apid.member.write().unwrap() = Some(member);
        } else {
            let read = |p: std::path::PathBuf| {
                std::fs::read_to_string(&p).map_err(|e| StartError::Identity {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })
            };
            let cert = read(apid.paths.tls_cert())?;
            let key = read(apid.paths.tls_key())?;
            apid.maintenance_tls = Some(tls::maintenance(&cert, &key)?);
        }
        Ok(apid)
    }

    /// The TLS configuration for the next connection.
    pub fn server_tls(&self) -> Arc<ServerConfig> {
        match self.member() {
            Some(m) => m.tls.clone(),
            None => self
                .maintenance_tls
                .clone()
                .expect("a fresh apid has its maintenance face"),
        }
    }

    /// The open API connections.
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    /// Where the API listens (from the config).
    pub fn listen(&self) -> SocketAddr {
        self.config.listen
    }

    pub fn member(&self) -> Option<Arc<Member>> {
        self.member.read().unwrap().clone()
    }

    /// CA certificates (DER) whose client certificates are trusted: those of the machines in
    /// the state, and always this machine's own.
    pub fn trusted_cas(&self) -> Vec<Vec<u8>> {
        let Some(member) = self.member() else {
            return Vec::new();
        };
        let mut cas = self.trust.read().unwrap().cas.clone();
        let own = member.credentials.ca.cert_der().to_vec();
        if !cas.contains(&own) {
            cas.push(own);
        }
        cas
    }

    /// Serials of revoked client certificates.
    pub fn revoked(&self) -> BTreeSet<String> {
        self.trust.read().unwrap().revoked.clone()
    }

    /// Re-reads the machines' CAs and the revoked certificates from the state unless that was
    /// done very recently. A removed machine's CA leaves the trust, and a revoked certificate
    /// is refused, as the change arrives.
    pub async fn refresh_trust(&self) {
        if self.member().is_none() {
            return;
        }
        let fresh = self
            .trust
            .read()
            .unwrap()
            .read_at
            .is_some_and(|at| at.elapsed() < TRUST_REFRESH);
        if fresh {
            return;
        }
        match (self.read_machines().await, self.read_clients().await) {
            (Ok(machines), Ok(clients)) => {
                let cas = machines
                    .values()
                    .filter(|m| !m.ca_cert.is_empty())
                    .filter_map(|m| uncloud_pki::pem_to_der(&m.ca_cert).ok())
                    .collect();
                let revoked = clients
                    .into_values()
                    .filter(|c| c.revoked_at_ms != 0)
                    .map(|c| c.serial)
                    .collect();
                *self.trust.write().unwrap() = Trust {
                    cas,
                    revoked,
                    read_at: Some(Instant::now()),
                };
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot read the machines' CAs or the revoked certificates; keeping the last ones")
            }
        }
    }

    /// Everything of one kind in the state (`machines`, `services`, …), by id.
    pub(crate) async fn read_all<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
    ) -> Result<BTreeMap<String, T>, ApiError> {
        let json = self
            .state
            .get(kind, "")
            .await
            .map_err(|e| internal("stated", e))?;
        serde_json::from_str(&json).map_err(|e| internal("stated's answer", e))
    }

    async fn read_clients(&self) -> Result<BTreeMap<String, ClientCert>, ApiError> {
        self.read_all("clients").await
    }

    pub(crate) async fn read_machines(&self) -> Result<BTreeMap<String, Machine>, ApiError> {
        self.read_all("machines").await
    }

    /// This machine's stated.
    pub(crate) fn state(&self) -> &StateProxy<'static> {
        &self.state
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// This machine as a member, its credentials dated `now` if they are made (or the
    /// server certificate issued again) now.
    async fn become_member(&self, now: OffsetDateTime) -> Result<Arc<Member>, BecomeError> {
        let network_id = self.state.network_id().await?;
        let machine_id = self.state.machine_id().await?;
        let me: Machine = serde_json::from_str(&self.state.get("machines", &machine_id).await?)
            .map_err(|e| BecomeError::State(zbus::Error::Failure(e.to_string())))?;
        // Clients check the chain, not the name (a machine has many addresses).
        let names = [me.name.clone(), "localhost".to_string()];
        let credentials = Credentials::load_or_create(
            &self.config.data_dir,
            &network_id,
            &machine_id,
            &names,
            now,
        )?;
        let chain = format!(
            "{}{}",
            credentials.server_cert_pem,
            credentials.ca.cert_pem()
        );
        let tls = tls::member(&chain, &credentials.server_key_pem)?;
        if me.ca_cert != credentials.ca.cert_pem() {
            self.state.set_machine_ca(credentials.ca.cert_pem()).await?;
            tracing::info!(fingerprint = %credentials.ca.fingerprint(), "published this machine's CA");
        }
        Ok(Arc::new(Member {
            network_id,
            machine_id,
            machine_name: me.name,
            credentials,
            tls,
        }))
    }

    /// `uc machine init`: creates the network, or finishes an init that was interrupted
    /// before the token was consumed (so a crash never locks the user out).
    pub async fn init(&self, req: InitRequest) -> Result<InitReply, ApiError> {
        let _one = self.init_lock.lock().await;
        if self.paths.initialised().exists() {
            return Err(Self::already_member());
        }
        self.check_token(&req.token)?;
        if req.client_public_key.is_empty() {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                "no client public key in the request",
            ));
        }

        if self.state.mode().await.map_err(|e| internal("stated", e))? != "member" {
            let network_id = uncloud_pki::ticket::new_id();
            let mesh_cidr = if req.mesh_cidr.is_empty() {
                &self.config.mesh_cidr
            } else {
                &req.mesh_cidr
            };
            self.state
                .create_network(&network_id, mesh_cidr, &req.machine_name)
                .await
                .map_err(|e| match e {
                    zbus::Error::MethodError(name, msg, _)
                        if name.as_str().ends_with("InvalidArgument") =>
                    {
                        ApiError::new(ErrorKind::Invalid, msg.unwrap_or_default())
                    }
                    e => internal("stated could not create the network", e),
                })?;
            tracing::info!(%network_id, "network created");
        }
        let member = self.enter_member_mode(OffsetDateTime::now_utc()).await?;
        let who = if req.client_name.is_empty() {
            "admin"
        } else {
            &req.client_name
        };
        let (cert_pem, _) = self
            .issue_client_cert(
                &member,
                &req.client_public_key,
                who,
                Role::Admin,
                CLIENT_VALIDITY,
            )
            .await?;
        self.finish_enrolment()?;
        tracing::info!(client = %who, "init done; admin certificate issued");
        Ok(InitReply {
            network_id: member.network_id.clone(),
            machine_id: member.machine_id.clone(),
            machine_name: member.machine_name.clone(),
            ca_cert: member.credentials.ca.cert_pem().to_owned(),
            client_cert: cert_pem,
        })
    }

    /// Checks a setup token: constant time, rate-limited.
    fn check_token(&self, given: &str) -> Result<(), ApiError> {
        let expected = match std::fs::read_to_string(self.paths.setup_token()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError::new(
                    ErrorKind::AlreadyMember,
                    "this machine's setup token was used already: it belongs to a network",
                ))
            }
            Err(e) => return Err(internal("cannot read the setup token", e)),
        };
        let now = self.now_ms();
        if let Err(wait) = self.limiter.lock().unwrap().check(now) {
            return Err(ApiError::new(
                ErrorKind::RateLimited,
                format!(
                    "too many wrong setup tokens; retry in {} s",
                    wait.div_ceil(1000)
                ),
            ));
        }
        if !token::matches(given, &expected) {
            self.limiter.lock().unwrap().failed(now);
            tracing::warn!("refused: wrong setup token");
            return Err(ApiError::new(
                ErrorKind::BadToken,
                "wrong setup token: use the one this machine's console shows",
            ));
        }
        self.limiter.lock().unwrap().succeeded();
        Ok(())
    }

    /// The machine is a member: records it, then consumes the setup token and a pre-seeded
    /// ticket. Only now, so an init or join interrupted before can be retried.
    fn finish_enrolment(&self) -> Result<(), ApiError> {
        durable::write_atomically(&self.paths.initialised(), b"", 0o600)
            .map_err(|e| internal("cannot record the membership", e))?;
        durable::remove(&self.paths.setup_token())
            .map_err(|e| internal("cannot consume the setup token", e))?;
        durable::remove(&self.paths.join_ticket())
            .map_err(|e| internal("cannot remove the redeemed join ticket", e))?;
        Ok(())
    }

    fn already_member() -> ApiError {
        ApiError::new(
            ErrorKind::AlreadyMember,
            "this machine already belongs to a network; use `uc machine add` to add \
             machines to it",
        )
    }

    /// `uc machine add`, on the new machine: joins with a ticket, given the setup token.
    pub async fn join(&self, req: JoinRequest) -> Result<JoinReply, ApiError> {
        let _one = self.init_lock.lock().await;
        if self.paths.initialised().exists() {
            return Err(Self::already_member());
        }
        self.check_token(&req.token)?;
        self.join_with_ticket(&req.ticket).await
    }

    /// Joins with the ticket pre-seeded on this machine (user-data, the SD card), if any and
    /// if still fresh. Retries while the issuer cannot be reached; gives up, loudly, on a
    /// ticket the issuer refuses.
    pub async fn redeem_preseeded(&self) {
        let path = self.paths.join_ticket();
        let mut delay = Duration::from_secs(2);
        loop {
            let ticket = match std::fs::read_to_string(&path) {
                Ok(t) if !t.trim().is_empty() => t,
                _ => return,
            };
            let result = {
                let _one = self.init_lock.lock().await;
                if self.paths.initialised().exists() {
                    return;
                }
                self.join_with_ticket(&ticket).await
            };
            match result {
                Ok(joined) => {
                    tracing::info!(network = %joined.network_id, name = %joined.machine_name,
                        subnet = %joined.subnet, "joined the network with the pre-seeded ticket");
                    return;
                }
                Err(e) if matches!(e.kind, ErrorKind::Unreachable | ErrorKind::Internal) => {
                    tracing::warn!(error = %e, retry_in_secs = delay.as_secs(),
                        "cannot redeem the pre-seeded join ticket yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
                Err(e) => {
                    tracing::error!(error = %e, path = %path.display(),
                        "the pre-seeded join ticket was refused; this machine stays fresh: \
                         add it with `uc machine add` instead");
                    return;
                }
            }
        }
    }

    async fn join_with_ticket(&self, ticket_text: &str) -> Result<JoinReply, ApiError> {
        let bad = |e: uncloud_pki::PkiError| ApiError::new(ErrorKind::BadTicket, e.to_string());
        let (claims, _, _) = ticket::read(ticket_text).map_err(bad)?;
        let pin = claims.issuer_ca().map_err(bad)?;
        let mode = self.state.mode().await.map_err(|e| internal("stated", e))?;
        let mut dated = OffsetDateTime::now_utc();
        if mode != "member" {
            let reply = self.redeem_at_issuer(ticket_text, &claims, pin).await?;
            let local = OffsetDateTime::now_utc();
            dated = credentials::credentials_time(local, reply.issuer_time);
            if dated != local {
                tracing::warn!(local = %local, issuer = %dated,
                    "this machine's clock is far from the issuer's (no time sync yet?): its \
                     certificates are dated by the issuer's clock");
            }
            let document = reply.document;
            let bytes = {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(&document)
                    .map_err(|e| internal("the issuer's state is not base64", e))?
            };
            self.state
                .join_network(&bytes)
                .await
                .map_err(|e| internal("stated could not join", e))?;
        }
        let member = self.enter_member_mode(dated).await?;
        self.finish_enrolment()?;
        let me = self
            .read_machines()
            .await?
            .remove(&member.machine_id)
            .unwrap_or_default();
        tracing::info!(network = %member.network_id, name = %member.machine_name, "joined");
        Ok(JoinReply {
            network_id: member.network_id.clone(),
            machine_id: member.machine_id.clone(),
            machine_name: member.machine_name.clone(),
            subnet: subnet_text(&self.mesh_cidr().await?, me.subnet),
            ca_cert: member.credentials.ca.cert_pem().to_owned(),
        })
    }

    /// Issues apid's server certificate again when it nears its end or the clock has moved
    /// out of it (a Raspberry Pi that synced its clock after joining): new connections get
    /// the new one. Cheap; `main` runs it every hour.
    pub async fn keep_server_cert(&self) {
        let Some(member) = self.member() else {
            return;
        };
        let now = OffsetDateTime::now_utc();
        if !member.credentials.server_cert_due(now) {
            return;
        }
        match self.become_member(now).await {
            Ok(renewed) => *self.member.write().unwrap() = Some(renewed),
            Err(e) => tracing::error!(error = %e, "cannot issue apid's server certificate again"),
        }
    }

    /// Switches to member mode, making the credentials dated `now` if there are none.
    async fn enter_member_mode(&self, now: OffsetDateTime) -> Result<Arc<Member>, ApiError> {
        if let Some(m) = self.member() {
            return Ok(m);
        }
        let m = self
            .become_member(now)
            .await
            .map_err(|e| internal("cannot set up this machine's CA", e))?;
        *self.member.write().unwrap() = Some(m.clone());
        Ok(m)
    }

    /// The network's mesh range, as the state says.
    pub(crate) async fn mesh_cidr(&self) -> Result<MeshCidr, ApiError> {
        let json = self
            .state
            .get("network", "")
            .await
            .map_err(|e| internal("stated", e))?;
        let info: NetworkInfo =
            serde_json::from_str(&json).map_err(|e| internal("stated's answer", e))?;
        Ok(info.mesh_cidr.parse().unwrap_or_default())
    }

    /// Sends this machine's public keys to the ticket's issuer, checked by its CA fingerprint,
    /// and returns its answer: the state (base64) and its clock.
    async fn redeem_at_issuer(
        &self,
        ticket_text: &str,
        claims: &ticket::Claims,
        pin: uncloud_pki::Fingerprint,
    ) -> Result<RedeemReply, ApiError> {
        let conn = self.state.inner().connection();
        let mesh = MeshProxy::new(conn)
            .await
            .map_err(|e| internal("meshd", e))?;
        let wireguard_public_key = mesh.public_key().await.map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("meshd does not answer yet (its WireGuard key is needed): {e}"),
            )
        })?;
        let endpoints = mesh.endpoints().await.unwrap_or_default();
        let request = RedeemRequest {
            ticket: ticket_text.trim().to_string(),
            machine_id: self
                .state
                .machine_id()
                .await
                .map_err(|e| internal("stated", e))?,
            name: self.state.default_name().await.unwrap_or_default(),
            wireguard_public_key,
            endpoints,
            arch: std::env::consts::ARCH.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let tls = uncloud_api::tls::client_issuer(pin).map_err(|e| internal("TLS", e))?;
        let mut tried = Vec::new();
        for endpoint in &claims.endpoints {
            let Ok(addr) = endpoint.parse::<SocketAddr>() else {
                tried.push(format!("{endpoint}: not ip:port"));
                continue;
            };
            let client = match uncloud_api::client::connect(addr, tls.clone(), REDEEM_TIMEOUT).await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(%addr, error = %e, "ticket issuer not reachable here");
                    tried.push(e.to_string());
                    continue;
                }
            };
            match client
                .redeem(
                    uncloud_api::client::context(REDEEM_TIMEOUT),
                    request.clone(),
                )
                .await
            {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => return Err(e),
                Err(e) => tried.push(format!("{addr}: {e}")),
            }
        }
        Err(ApiError::new(
            ErrorKind::Unreachable,
            format!(
                "cannot reach the member that issued the ticket ({}); is it up and reachable \
                 from this machine?",
                tried.join("; ")
            ),
        ))
    }

    /// `uc machine token` / `uc machine add`: a ticket redeemable at this machine.
    pub async fn issue_ticket(
        &self,
        caller: &Caller,
        local: SocketAddr,
        req: TicketRequest,
    ) -> Result<TicketReply, ApiError> {
        let member = self.require(caller, Role::Admin)?;
        if !req.name.is_empty() {
            uncloud_common::model::validate_dns_label("machine name", &req.name)
                .map_err(|e| ApiError::new(ErrorKind::Invalid, e.to_string()))?;
        }
        let ttl = match req.ttl_secs {
            0 => self.config.ticket_ttl_secs,
            t if t > self.config.ticket_max_ttl_secs => {
                return Err(ApiError::new(
                    ErrorKind::Invalid,
                    format!(
                        "a ticket may be valid for at most {} s (ticket_max_ttl_secs)",
                        self.config.ticket_max_ttl_secs
                    ),
                ))
            }
            t => t,
        };
        let me = self
            .read_machines()
            .await?
            .remove(&member.machine_id)
            .unwrap_or_default();
        let port = self.config.listen.port();
        let mut endpoints = Vec::new();
        if !local.ip().is_loopback() && !local.ip().is_unspecified() {
            endpoints.push(SocketAddr::new(local.ip(), port).to_string());
        }
        add_api_endpoints(&mut endpoints, &me.endpoints, port);
        if endpoints.is_empty() {
            endpoints.push(SocketAddr::new(local.ip(), port).to_string());
        }
        let now = OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        let claims = ticket::Claims {
            id: ticket::new_id(),
            network_id: member.network_id.clone(),
            issuer: member.machine_id.clone(),
            issuer_ca: member.credentials.ca.fingerprint().to_string(),
            endpoints,
            issued_at: now,
            expires_at: now + ttl,
            name: req.name,
        };
        let text = ticket::issue(&claims, &member.credentials.ca)
            .map_err(|e| internal("cannot sign the ticket", e))?;
        tracing::info!(id = %claims.id, ttl_secs = ttl, endpoints = ?claims.endpoints,
            "join ticket issued");
        Ok(TicketReply {
            ticket: text,
            expires_at: claims.expires_at,
        })
    }

    /// A joining machine redeems its ticket: checked, recorded as used, the machine admitted,
    /// and the state handed over. A machine that redeems the same ticket again (it lost the
    /// reply) gets the state again; any other machine is refused.
    pub async fn redeem(&self, req: RedeemRequest) -> Result<RedeemReply, ApiError> {
        let member = self.member().ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotMember,
                "this machine belongs to no network: it cannot redeem tickets",
            )
        })?;
        let now = OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        let claims = ticket::verify(
            &req.ticket,
            &member.credentials.ca,
            &member.network_id,
            &member.machine_id,
            now,
        )
        .map_err(|e| ApiError::new(ErrorKind::BadTicket, e.to_string()))?;
        uncloud_common::model::validate_id("machine id", &req.machine_id)
            .map_err(|e| ApiError::new(ErrorKind::Invalid, e.to_string()))?;
        if req.wireguard_public_key.is_empty() || req.wireguard_public_key.len() > 64 {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                "no usable WireGuard public key in the request",
            ));
        }
        self.redeemed
            .claim(&claims.id, &req.machine_id)
            .map_err(|e| match e {
                crate::redeemed::ClaimError::Used => ApiError::new(
                    ErrorKind::BadTicket,
                    "this ticket was used already: ask for a new one with `uc machine token`",
                ),
                e => internal("cannot record the ticket as used", e),
            })?;
        let name = if claims.name.is_empty() {
            req.name.clone()
        } else {
            claims.name.clone()
        };
        let admission = serde_json::json!({
            "machine_id": req.machine_id,
            "name": name,
            "wireguard_public_key": req.wireguard_public_key,
            "endpoints": req.endpoints.iter().take(16).collect::<Vec<_>>(),
            "arch": req.arch.chars().take(32).collect::<String>(),
            "version": req.version.chars().take(64).collect::<String>(),
        });
        let entry: Machine = match self.state.admit_machine(&admission.to_string()).await {
            Ok(json) => serde_json::from_str(&json).map_err(|e| internal("stated's answer", e))?,
            // Admitted by an earlier redeem of this very ticket by this machine.
            Err(zbus::Error::MethodError(name, _, _)) if name.as_str().ends_with(".Exists") => self
                .read_machines()
                .await?
                .remove(&req.machine_id)
                .ok_or_else(|| internal("admitted but not in the state", ""))?,
            // A removed machine, a name that is not a DNS label.
            Err(zbus::Error::MethodError(name, msg, _))
                if name.as_str().ends_with(".InvalidArgument") =>
            {
                return Err(ApiError::new(ErrorKind::Invalid, msg.unwrap_or_default()))
            }
            Err(e) => return Err(internal("stated could not admit the machine", e)),
        };
        self.wait_for_own_mesh_key(&member.machine_id).await?;
        let document = self
            .state
            .save_document()
            .await
            .map_err(|e| internal("stated", e))?;
        tracing::info!(machine = %entry.id, name = %entry.name, subnet = entry.subnet,
            ticket = %claims.id, "admitted a machine");
        use base64::Engine;
        Ok(RedeemReply {
            document: base64::engine::general_purpose::STANDARD.encode(document),
            machine_name: entry.name,
            issuer_time: OffsetDateTime::now_utc().unix_timestamp().max(0) as u64,
        })
    }

    /// The state handed to a joining machine must hold this machine's WireGuard key: it is
    /// how the new machine accepts this one's handshakes, and the only way the mesh (over
    /// which everything else syncs) comes up. Right after `init`, meshd may not have
    /// published it yet.
    async fn wait_for_own_mesh_key(&self, machine_id: &str) -> Result<(), ApiError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let me = self.read_machines().await?.remove(machine_id);
            if me.is_some_and(|m| !m.wireguard_public_key.is_empty()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ApiError::new(
                    ErrorKind::Unreachable,
                    "this machine's mesh is not up yet (meshd has not published its key); \
                     retry in a moment",
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn require(&self, caller: &Caller, need: Role) -> Result<Arc<Member>, ApiError> {
        let member = self.member().ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotMember,
                "this machine belongs to no network yet: run `uc machine init` or \
                 `uc machine add` first",
            )
        })?;
        match caller {
            Caller::Client { role, .. } if *role == Role::Admin || need == Role::Reader => {
                Ok(member)
            }
            Caller::Client { role, .. } => Err(ApiError::new(
                ErrorKind::Forbidden,
                format!("a {} certificate cannot do this", role.as_str()),
            )),
            Caller::Refused(reason) => Err(ApiError::new(
                ErrorKind::Forbidden,
                format!("this machine refuses your client certificate: {reason}"),
            )),
            _ => Err(ApiError::new(
                ErrorKind::Forbidden,
                "a client certificate of this network is required",
            )),
        }
    }

    pub async fn info(&self, caller: &Caller) -> Result<MachineInfo, ApiError> {
        let m = self.require(caller, Role::Reader)?;
        let (client, role) = match caller {
            Caller::Client { subject, role, .. } => (subject.clone(), role.as_str().to_string()),
            _ => Default::default(),
        };
        Ok(MachineInfo {
            api_version: API_VERSION,
            mode: "member".into(),
            network_id: m.network_id.clone(),
            machine_id: m.machine_id.clone(),
            machine_name: m.machine_name.clone(),
            role,
            client,
        })
    }

    pub async fn machines(&self, caller: &Caller) -> Result<Vec<MachineRow>, ApiError> {
        self.require(caller, Role::Reader)?;
        let machines = self.read_machines().await?;
        let liveness = self.state.liveness().await.unwrap_or_default();
        let cidr = self.mesh_cidr().await?;
        let mut rows: Vec<MachineRow> = machines
            .into_values()
            .map(|m| row(m, &cidr, &liveness))
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }

    /// A machine of the state by name or id.
    pub(crate) async fn find_machine(&self, which: &str) -> Result<Machine, ApiError> {
        let machines = self.read_machines().await?;
        let by_id = machines.get(which).cloned();
        by_id
            .or_else(|| machines.into_values().find(|m| m.name == which))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::NotFound,
                    format!("no machine named {which:?} in this network"),
                )
            })
    }

    /// The machine `id` as `uc machine ls` shows it.
    async fn machine_row(&self, id: &str) -> Result<MachineRow, ApiError> {
        let m = self.find_machine(id).await?;
        let liveness = self.state.liveness().await.unwrap_or_default();
        Ok(row(m, &self.mesh_cidr().await?, &liveness))
    }

    /// `uc machine rename|label|role`: each field through its own stated call, so a change
    /// never reverts what another writer changed meanwhile in the machine's entry.
    pub async fn change_machine(
        &self,
        caller: &Caller,
        req: MachineChange,
    ) -> Result<MachineRow, ApiError> {
        self.require(caller, Role::Admin)?;
        let plan = change::plan(&self.find_machine(&req.machine).await?, &req)
            .map_err(|e| ApiError::new(ErrorKind::Invalid, e.to_string()))?;
        let id = plan.machine_id.as_str();
        if let Some(name) = &plan.name {
            self.state
                .set_machine_name(id, name)
                .await
                .map_err(state_error)?;
        }
        if let Some(labels) = &plan.labels {
            let labels = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            self.state
                .set_machine_labels(id, labels)
                .await
                .map_err(state_error)?;
        }
        if let Some(roles) = &plan.roles {
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            self.state
                .set_machine_roles(id, &roles)
                .await
                .map_err(state_error)?;
        }
        tracing::info!(machine = %id, ?plan, "machine changed");
        self.machine_row(id).await
    }

    /// `uc machine rm`: the machine leaves the state for good (a tombstone every member
    /// keeps): its mesh peers, its CA's certificates and its containers' records go with it.
    pub async fn remove_machine(
        &self,
        caller: &Caller,
        req: MachineRef,
    ) -> Result<MachineRow, ApiError> {
        let member = self.require(caller, Role::Admin)?;
        let m = self.find_machine(&req.machine).await?;
        if m.id == member.machine_id {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                format!(
                    "{} is the machine answering this call: remove it through another machine \
                     (`--endpoint HOST` of another member)",
                    m.name
                ),
            ));
        }
        let liveness = self.state.liveness().await.unwrap_or_default();
        let removed = row(m, &self.mesh_cidr().await?, &liveness);
        self.state
            .remove_machine(&removed.id)
            .await
            .map_err(state_error)?;
        tracing::warn!(machine = %removed.id, name = %removed.name, "machine removed from the network");
        Ok(removed)
    }

    /// Issues a client certificate with this machine's CA and records it in the state before
    /// handing it out, so that `uc cert ls` lists it and it can be revoked by subject.
    async fn issue_client_cert(
        &self,
        member: &Member,
        public_key: &[u8],
        subject: &str,
        role: Role,
        validity: time::Duration,
    ) -> Result<(String, CertRow), ApiError> {
        let issued = member
            .credentials
            .ca
            .issue_client(
                public_key,
                subject,
                role,
                OffsetDateTime::now_utc(),
                validity,
            )
            .map_err(|e| ApiError::new(ErrorKind::Invalid, e.to_string()))?;
        let der = uncloud_pki::pem_to_der(&issued.cert_pem)
            .map_err(|e| internal("the certificate just issued", e))?;
        let info = uncloud_pki::CertInfo::parse(&der)
            .map_err(|e| internal("the certificate just issued", e))?;
        let record = ClientCert {
            serial: info.serial,
            subject: subject.to_string(),
            role: role.as_str().to_string(),
            issued_by: member.machine_id.clone(),
            not_after: info.not_after.unix_timestamp().max(0) as u64,
            revoked_at_ms: 0,
        };
        self.state
            .upsert_client(&serde_json::to_string(&record).expect("serializes"))
            .await
            .map_err(state_error)?;
        tracing::info!(serial = %record.serial, subject = %record.subject, role = %record.role,
            "client certificate issued");
        let row = cert_row(record, &self.read_machines().await?);
        Ok((issued.cert_pem, row))
    }

    /// What a holder of a new certificate needs besides it: the network's CAs and where its
    /// machines answer.
    async fn cert_reply(
        &self,
        member: &Member,
        cert_pem: String,
        cert: CertRow,
    ) -> Result<CertReply, ApiError> {
        let machines = self.read_machines().await?;
        let port = self.config.listen.port();
        let mut endpoints = Vec::new();
        for m in machines.values() {
            add_api_endpoints(&mut endpoints, &m.endpoints, port);
        }
        let mut ca_bundle: String = machines
            .values()
            .filter(|m| !m.ca_cert.is_empty())
            .map(|m| format!("{}\n", m.ca_cert.trim()))
            .collect();
        let own = member.credentials.ca.cert_pem().trim();
        if !ca_bundle.contains(own) {
            ca_bundle += &format!("{own}\n");
        }
        Ok(CertReply {
            cert_pem,
            cert,
            network_id: member.network_id.clone(),
            ca_bundle,
            endpoints,
        })
    }

    /// `uc cert issue`: a certificate for someone else's key.
    pub async fn issue_cert(
        &self,
        caller: &Caller,
        req: CertRequest,
    ) -> Result<CertReply, ApiError> {
        let member = self.require(caller, Role::Admin)?;
        let invalid = |m: String| ApiError::new(ErrorKind::Invalid, m);
        let subject = req.subject.trim();
        if subject.is_empty() || subject.len() > 64 || subject.chars().any(char::is_control) {
            return Err(invalid(
                "the subject must be 1 to 64 printable characters (a person or a laptop)".into(),
            ));
        }
        let role = Role::parse(&req.role)
            .ok_or_else(|| invalid(format!("unknown role {:?}: admin or reader", req.role)))?;
        let max = CLIENT_VALIDITY.whole_seconds() as u64;
        let validity = match req.ttl_secs {
            0 => CLIENT_VALIDITY,
            t if t > max => {
                return Err(invalid(format!(
                    "a client certificate is valid for at most {} days",
                    max / 86400
                )))
            }
            t => time::Duration::seconds(t as i64),
        };
        let (pem, row) = self
            .issue_client_cert(&member, &req.public_key, subject, role, validity)
            .await?;
        self.cert_reply(&member, pem, row).await
    }

    /// `uc cert renew`: the caller's subject and role again, for a year, for the key it sends.
    pub async fn renew_cert(
        &self,
        caller: &Caller,
        req: RenewRequest,
    ) -> Result<CertReply, ApiError> {
        let member = self.require(caller, Role::Reader)?;
        let Caller::Client { subject, role, .. } = caller else {
            unreachable!("require lets only clients through")
        };
        let (pem, row) = self
            .issue_client_cert(&member, &req.public_key, subject, *role, CLIENT_VALIDITY)
            .await?;
        self.cert_reply(&member, pem, row).await
    }

    /// `uc cert ls`.
    pub async fn certs(&self, caller: &Caller) -> Result<Vec<CertRow>, ApiError> {
        self.require(caller, Role::Reader)?;
        let machines = self.read_machines().await?;
        let mut rows: Vec<CertRow> = self
            .read_clients()
            .await?
            .into_values()
            .map(|c| cert_row(c, &machines))
            .collect();
        rows.sort_by(|a, b| (&a.subject, a.not_after).cmp(&(&b.subject, b.not_after)));
        Ok(rows)
    }

    /// `uc cert revoke`: by serial (or a unique prefix of 8 or more digits) or subject. The
    /// revocation is in the state, so every machine refuses the certificate once it has it,
    /// also one that was offline when it was made.
    pub async fn revoke_cert(
        &self,
        caller: &Caller,
        req: CertRef,
    ) -> Result<Vec<CertRow>, ApiError> {
        self.require(caller, Role::Admin)?;
        let Caller::Client { serial: own, .. } = caller else {
            unreachable!("require lets only clients through")
        };
        let clients = self.read_clients().await?;
        let targets = revocation::targets(&clients, &req.cert)
            .map_err(|e| ApiError::new(ErrorKind::NotFound, e.to_string()))?;
        if targets.iter().any(|c| &c.serial == own) {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                "this would revoke the certificate making the call: revoke it with another \
                 admin certificate",
            ));
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64)
            .max(1);
        let machines = self.read_machines().await?;
        let mut rows = Vec::new();
        for mut c in targets {
            c.revoked_at_ms = now_ms;
            self.state
                .upsert_client(&serde_json::to_string(&c).expect("serializes"))
                .await
                .map_err(state_error)?;
            tracing::warn!(serial = %c.serial, subject = %c.subject, "client certificate revoked");
            rows.push(cert_row(c, &machines));
        }
        Ok(rows)
    }

    /// Answers `call` here, for `caller`.
    pub async fn dispatch(&self, caller: &Caller, call: Call) -> Result<Answer, ApiError> {
        Ok(match call {
            Call::Info => Answer::Info(self.info(caller).await?),
            Call::Machines => Answer::Machines(self.machines(caller).await?),
            Call::Status => {
                let member = self.require(caller, Role::Reader)?;
                let mut status = host::status(&self.config.data_dir).await;
                // The state has the name as it is now (`uc machine rename`).
                status.machine = self
                    .read_machines()
                    .await?
                    .remove(&member.machine_id)
                    .map_or(member.machine_name.clone(), |m| m.name);
                status.machine_id = member.machine_id.clone();
                Answer::Status(status)
            }
            Call::Logs(request) => {
                self.require(caller, Role::Reader)?;
                Answer::Logs(host::logs(&request).await?)
            }
            Call::Reboot => {
                self.require(caller, Role::Admin)?;
                if let Caller::Client { subject, .. } = caller {
                    tracing::warn!(%subject, "rebooting, as asked");
                }
                host::reboot_later(self.config.reboot_command.clone(), REBOOT_DELAY);
                Answer::Rebooting
            }
            Call::MeshPeers => {
                self.require(caller, Role::Reader)?;
                Answer::MeshPeers(self.mesh_peers().await?)
            }
            Call::DnsNames => {
                self.require(caller, Role::Reader)?;
                Answer::DnsNames(self.dns_names().await?)
            }
            Call::IngressRoutes | Call::IngressCertificates => {
                self.require(caller, Role::Reader)?;
                self.ingress(&call).await?
            }
            Call::Services => {
                self.require(caller, Role::Reader)?;
                let mut rows = self.service_rows().await?;
                if caller.is_reader() {
                    for spec in rows.iter_mut().filter_map(|r| r.spec.as_mut()) {
                        uncloud_common::files::hide_secret_digests(spec);
                    }
                }
                Answer::Services(rows)
            }
            Call::ContainerLogs(_)
            | Call::Volumes
            | Call::InspectVolume(_)
            | Call::CreateVolume(_)
            | Call::RemoveVolume(_)
            | Call::Images => {
                let need = match call {
                    Call::CreateVolume(_) | Call::RemoveVolume(_) => Role::Admin,
                    _ => Role::Reader,
                };
                self.require(caller, need)?;
                self.engine_call(call).await?
            }
        })
    }

    /// The names this machine's dnsd serves, sorted.
    async fn dns_names(&self) -> Result<Vec<DnsName>, ApiError> {
        let dns = DnsProxy::new(self.state.inner().connection())
            .await
            .map_err(|e| internal("dnsd", e))?;
        let rows = dns
            .names()
            .await
            .map_err(|e| internal("dnsd does not answer", e))?;
        let mut names: Vec<DnsName> = rows
            .into_iter()
            .map(|(name, addresses)| DnsName { name, addresses })
            .collect();
        names.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(names)
    }

    /// What this machine's ingressd serves: its routes or its certificates.
    async fn ingress(&self, call: &Call) -> Result<Answer, ApiError> {
        let ingress = IngressProxy::new(self.state.inner().connection())
            .await
            .map_err(|e| internal("ingressd", e))?;
        let unreachable = |e| internal("ingressd does not answer", e);
        let bad = |e| internal("ingressd's answer does not parse", e);
        Ok(match call {
            Call::IngressRoutes => {
                let json = ingress.routes().await.map_err(unreachable)?;
                Answer::IngressRoutes(serde_json::from_str(&json).map_err(bad)?)
            }
            _ => {
                let json = ingress.certificates().await.map_err(unreachable)?;
                Answer::IngressCertificates(serde_json::from_str(&json).map_err(bad)?)
            }
        })
    }

    /// The mesh as this machine's meshd sees it.
    async fn mesh_peers(&self) -> Result<Vec<MeshPeer>, ApiError> {
        let mesh = MeshProxy::new(self.state.inner().connection())
            .await
            .map_err(|e| internal("meshd", e))?;
        let json = mesh
            .peers_json()
            .await
            .map_err(|e| internal("meshd does not answer", e))?;
        let mut peers: Vec<MeshPeer> =
            serde_json::from_str(&json).map_err(|e| internal("meshd's peers", e))?;
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(peers)
    }

    /// `uc -m`: `req.call` on each target, this machine answering for itself and asking the
    /// others over the mesh, all at once.
    pub async fn fan_out(
        &self,
        caller: &Caller,
        req: FanOut,
    ) -> Result<Vec<TargetReply>, ApiError> {
        let member = self.require(caller, Role::Reader)?;
        let Caller::Client {
            subject,
            role,
            serial,
        } = caller
        else {
            unreachable!("require lets only clients through")
        };
        if req.targets.is_empty() {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                "no target machines: give names, ids or `all`",
            ));
        }
        let forwarded = Forwarded {
            subject: subject.clone(),
            role: role.as_str().to_string(),
            serial: serial.clone(),
            via: member.machine_name.clone(),
        };
        let machines = self.read_machines().await?;
        let cidr = self.mesh_cidr().await?;
        let jobs = fanout::resolve(&machines, &req.targets)
            .into_iter()
            .map(|target| {
                let (forwarded, call, cidr) = (forwarded.clone(), req.call.clone(), cidr);
                let me = member.machine_id.clone();
                async move {
                    let m = match target {
                        Ok(m) => m,
                        Err(name) => {
                            return TargetReply {
                                error: Some(ApiError::new(
                                    ErrorKind::NotFound,
                                    format!("no machine named {name:?} in this network"),
                                )),
                                machine: name,
                                machine_id: String::new(),
                                answer: None,
                            }
                        }
                    };
                    let result = if m.id == me {
                        self.dispatch(caller, call).await
                    } else {
                        match cidr.machine_ip(m.subnet) {
                            Some(ip) => {
                                let addr = SocketAddr::from((ip, uncloud_api::peer::PEER_PORT));
                                fanout::forward(&m.name, addr, forwarded, call).await
                            }
                            None => Err(internal("no mesh address for", &m.name)),
                        }
                    };
                    let (answer, error) = match result {
                        Ok(a) => (Some(a), None),
                        Err(e) => (None, Some(e)),
                    };
                    TargetReply {
                        machine: m.name,
                        machine_id: m.id,
                        answer,
                        error,
                    }
                }
            });
        Ok(futures::future::join_all(jobs).await)
    }

    /// This machine's mesh address (`10.210.X.1`), once it is a member with a subnet.
    pub async fn own_mesh_ip(&self) -> Option<Ipv4Addr> {
        let member = self.member()?;
        let me = self
            .read_machines()
            .await
            .ok()?
            .remove(&member.machine_id)?;
        self.mesh_cidr().await.ok()?.machine_ip(me.subnet)
    }

    /// The machine of the state whose mesh address `peer` is; other sources are refused.
    pub async fn peer_machine(&self, peer: IpAddr) -> Result<Machine, String> {
        let own = self
            .own_mesh_ip()
            .await
            .ok_or("this machine has no mesh address")?;
        let cidr = self.mesh_cidr().await.map_err(|e| e.to_string())?;
        let ip = cidr.machine_peer(peer, own)?;
        self.read_machines()
            .await
            .map_err(|e| e.to_string())?
            .into_values()
            .find(|m| cidr.machine_ip(m.subnet) == Some(ip))
            .ok_or_else(|| format!("{ip} is no machine of this network"))
    }

    /// The caller a call forwarded by another member stands for; refused if its certificate
    /// is revoked as far as this machine knows.
    pub async fn forwarded_caller(&self, f: Forwarded) -> Result<Caller, ApiError> {
        self.refresh_trust().await;
        if self.revoked().contains(&f.serial) {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                format!(
                    "this machine refuses your client certificate: {} was revoked",
                    f.serial
                ),
            ));
        }
        let role = Role::parse(&f.role).ok_or_else(|| {
            ApiError::new(ErrorKind::Invalid, format!("unknown role {:?}", f.role))
        })?;
        Ok(Caller::Client {
            subject: f.subject,
            role,
            serial: f.serial,
        })
    }
}

/// Adds the apid addresses of a machine to `endpoints`, once each: the addresses of its
/// WireGuard endpoints (`ip:port` as meshd advertises them) on apid's `port`.
fn add_api_endpoints(endpoints: &mut Vec<String>, wireguard: &[String], port: u16) {
    for e in wireguard {
        if let Ok(wg) = e.parse::<SocketAddr>() {
            let api = SocketAddr::new(wg.ip(), port).to_string();
            if !endpoints.contains(&api) {
                endpoints.push(api);
            }
        }
    }
}

/// A client certificate as `uc cert ls` shows it.
fn cert_row(c: ClientCert, machines: &BTreeMap<String, Machine>) -> CertRow {
    CertRow {
        issued_by: machines
            .get(&c.issued_by)
            .map_or(c.issued_by.clone(), |m| m.name.clone()),
        revoked: c.revoked_at_ms != 0,
        serial: c.serial,
        subject: c.subject,
        role: c.role,
        not_after: c.not_after,
    }
}

/// A machine as `uc machine ls` shows it, with its liveness as this machine sees it.
fn row(
    m: Machine,
    cidr: &MeshCidr,
    liveness: &std::collections::HashMap<String, String>,
) -> MachineRow {
    MachineRow {
        subnet: subnet_text(cidr, m.subnet),
        mesh_ip: cidr
            .machine_ip(m.subnet)
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        state: liveness.get(&m.id).cloned().unwrap_or_default(),
        id: m.id,
        name: m.name,
        endpoints: m.endpoints,
        roles: m.roles,
        labels: m.labels,
        version: m.version,
        ca_cert: m.ca_cert,
        drained: m.drained,
        arch: m.arch,
    }
}

/// stated's refusals as the client's error kinds.
pub(crate) fn state_error(e: zbus::Error) -> ApiError {
    match e {
        zbus::Error::MethodError(name, msg, _) => {
            let msg = msg.unwrap_or_default();
            let kind = name.as_str().rsplit('.').next().unwrap_or_default();
            match kind {
                "InvalidArgument" => ApiError::new(ErrorKind::Invalid, msg),
                "NotFound" => ApiError::new(ErrorKind::NotFound, msg),
                _ => internal("stated", format!("{kind}: {msg}")),
            }
        }
        e => internal("stated", e),
    }
}

/// Machine subnet `index` as `10.210.X.0/24`; empty when out of the range.
fn subnet_text(cidr: &MeshCidr, index: u32) -> String {
    cidr.subnet(index)
        .map(|s| format!("{s}/24"))
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum BecomeError {
    #[error("stated: {0}")]
    State(#[from] zbus::Error),
    #[error(transparent)]
    Credentials(#[from] crate::credentials::CredentialsError),
    #[error(transparent)]
    Tls(#[from] uncloud_api::tls::TlsError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_endpoints_are_the_wireguard_addresses_on_apids_port_once_each() {
        let mut endpoints = vec!["192.0.2.1:7443".to_string()];
        let wireguard = [
            "192.0.2.1:51820".to_string(),
            "[2001:db8::1]:51820".to_string(),
            "not an address".to_string(),
            "198.51.100.7:51820".to_string(),
        ];
        add_api_endpoints(&mut endpoints, &wireguard, 7443);
        assert_eq!(
            endpoints,
            ["192.0.2.1:7443", "[2001:db8::1]:7443", "198.51.100.7:7443"]
        );
    }
}

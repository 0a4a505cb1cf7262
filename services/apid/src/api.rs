//! What apid does for each call, given who is calling. Transport-free: the server module
//! turns connections into [`Caller`]s and calls in here.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use rustls::ServerConfig;
use time::OffsetDateTime;
use uncloud_api::wire::{
    ApiError, ErrorKind, InitReply, InitRequest, MachineInfo, MachineRow, API_VERSION,
};
use uncloud_common::address::MeshCidr;
use uncloud_common::dbus::StateProxy;
use uncloud_common::durable;
use uncloud_common::identity::IdentityPaths;
use uncloud_common::model::Machine;
use uncloud_pki::ca::CLIENT_VALIDITY;
use uncloud_pki::Role;

use crate::config::Config;
use crate::credentials::Credentials;
use crate::tls;
use crate::token::{self, Limiter};

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A connection to a machine in maintenance mode (no client certificates exist yet).
    Maintenance,
    /// A member-mode connection without a client certificate.
    Anonymous,
    /// A verified client certificate.
    Client { subject: String, role: Role },
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
    /// One `init` at a time.
    init_lock: tokio::sync::Mutex<()>,
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

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorKind::Internal, format!("{what}: {e}"))
}

impl Apid {
    /// Reads the machine's mode from stated and prepares the matching TLS face.
    pub async fn start(config: Config, state: StateProxy<'static>) -> Result<Apid, StartError> {
        let paths = IdentityPaths::under(&config.root);
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
        };
        if apid.state.mode().await? == "member" {
            let member = apid.become_member().await?;
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

    pub fn member(&self) -> Option<Arc<Member>> {
        self.member.read().unwrap().clone()
    }

    /// CA certificates (DER) whose client certificates are trusted.
    pub fn trusted_cas(&self) -> Vec<Vec<u8>> {
        self.member()
            .map(|m| vec![m.credentials.ca.cert_der().to_vec()])
            .unwrap_or_default()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    async fn become_member(&self) -> Result<Arc<Member>, BecomeError> {
        let network_id = self.state.network_id().await?;
        let machine_id = self.state.machine_id().await?;
        let me: Machine = serde_json::from_str(&self.state.get("machines", &machine_id).await?)
            .map_err(|e| BecomeError::State(zbus::Error::Failure(e.to_string())))?;
        // Clients check the chain, not the name (a machine has many addresses).
        let names = [me.name.clone(), "localhost".to_string()];
        let credentials =
            Credentials::load_or_create(&self.config.data_dir, &network_id, &machine_id, &names)?;
        let tls = tls::member(
            &[credentials.ca.cert_der().to_vec()],
            &credentials.server_cert_pem,
            &credentials.server_key_pem,
        )?;
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
            return Err(ApiError::new(
                ErrorKind::AlreadyMember,
                "this machine already belongs to a network; use `uc machine add` to add \
                 machines to it",
            ));
        }
        let token_path = self.paths.setup_token();
        let expected = match std::fs::read_to_string(&token_path) {
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
        if !token::matches(&req.token, &expected) {
            self.limiter.lock().unwrap().failed(now);
            tracing::warn!("init refused: wrong setup token");
            return Err(ApiError::new(
                ErrorKind::BadToken,
                "wrong setup token: use the one this machine's console shows",
            ));
        }
        self.limiter.lock().unwrap().succeeded();
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
        let member = match self.member() {
            Some(m) => m,
            None => {
                let m = self
                    .become_member()
                    .await
                    .map_err(|e| internal("cannot set up this machine's CA", e))?;
                *self.member.write().unwrap() = Some(m.clone());
                m
            }
        };
        let who = if req.client_name.is_empty() {
            "admin"
        } else {
            &req.client_name
        };
        let issued = member
            .credentials
            .ca
            .issue_client(
                &req.client_public_key,
                who,
                Role::Admin,
                OffsetDateTime::now_utc(),
                CLIENT_VALIDITY,
            )
            .map_err(|e| ApiError::new(ErrorKind::Invalid, e.to_string()))?;
        // Consumed only now: everything before can be retried with the same token.
        durable::write_atomically(&self.paths.initialised(), b"", 0o600)
            .map_err(|e| internal("cannot record the init", e))?;
        durable::remove(&token_path).map_err(|e| internal("cannot consume the setup token", e))?;
        tracing::info!(client = %who, "init done; admin certificate issued");
        Ok(InitReply {
            network_id: member.network_id.clone(),
            machine_id: member.machine_id.clone(),
            machine_name: member.machine_name.clone(),
            ca_cert: member.credentials.ca.cert_pem().to_owned(),
            client_cert: issued.cert_pem,
        })
    }

    fn require(&self, caller: &Caller, need: Role) -> Result<Arc<Member>, ApiError> {
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
            _ => Err(ApiError::new(
                ErrorKind::Forbidden,
                "a client certificate of this network is required",
            )),
        }
    }

    pub async fn info(&self, caller: &Caller) -> Result<MachineInfo, ApiError> {
        let m = self.require(caller, Role::Reader)?;
        let (client, role) = match caller {
            Caller::Client { subject, role } => (subject.clone(), role.as_str().to_string()),
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
        let json = self
            .state
            .get("machines", "")
            .await
            .map_err(|e| internal("stated", e))?;
        let machines: std::collections::BTreeMap<String, Machine> =
            serde_json::from_str(&json).map_err(|e| internal("stated's answer", e))?;
        let network: serde_json::Value = serde_json::from_str(
            &self
                .state
                .get("network", "")
                .await
                .map_err(|e| internal("stated", e))?,
        )
        .map_err(|e| internal("stated's answer", e))?;
        let cidr: MeshCidr = network["mesh_cidr"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .unwrap_or_default();
        let mut rows: Vec<MachineRow> = machines
            .into_values()
            .map(|m| MachineRow {
                subnet: cidr
                    .subnet(m.subnet)
                    .map(|s| format!("{s}/24"))
                    .unwrap_or_default(),
                id: m.id,
                name: m.name,
                endpoints: m.endpoints,
                roles: m.roles,
                version: m.version,
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }
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

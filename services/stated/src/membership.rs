//! A machine's life: **fresh** (no network) → **member**.
//!
//! A fresh machine holds no state: it neither invents a network nor claims a subnet, and it
//! gossips with no one. It becomes a member in one of two ways, both one-time:
//! - [`Membership::create`] (`uc machine init`): a new network from its genesis change, with
//!   this machine as its first member on subnet 1;
//! - [`Membership::join`] (`uc machine add`, a pre-seeded ticket): a member admitted this
//!   machine ([`Shared::admit`](crate::replica::Shared::admit) wrote its entry) and handed over
//!   its whole document, which becomes this machine's store.
//!
//! The network id is then kept in `<data_dir>/membership`, written after the store, so a
//! restart starts the member again. A store without that file is a leftover of an attempt that
//! did not finish: it is set aside (renamed) before the next create or join.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use uncloud_common::model::{Machine, ModelError};

use crate::clock::now_ms;
use crate::config::Config;
use crate::document::{genesis, handed_over, DocError, Mutation, StateDoc};
use crate::errors::{StartError, WriteError};
use crate::links::Links;
use crate::node::Node;
use crate::replica::{Admission, Shared};

/// Why a machine could not create or join a network.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("this machine is already a member of network {0:?}")]
    AlreadyMember(String),
    #[error(transparent)]
    Invalid(#[from] ModelError),
    #[error("the state handed over cannot be used: {0}")]
    HandedOver(#[from] DocError),
    #[error("the state handed over does not admit this machine ({0}): the admitting member must write its entry first")]
    NotAdmitted(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("cannot {what} {path}: {reason}")]
    Io {
        what: &'static str,
        path: PathBuf,
        reason: std::io::Error,
    },
}

/// This machine's stated: fresh, or a running member [`Node`].
pub struct Membership {
    config: Config,
    links: Links,
    machine_id: String,
    node: tokio::sync::Mutex<Option<Node>>,
    current: watch::Sender<Option<Arc<Shared>>>,
}

impl Membership {
    /// Starts stated: as the member it was (or the network the config names), else fresh.
    pub async fn start(config: Config, links: Links) -> Result<Arc<Membership>, StartError> {
        uncloud_common::config::DaemonConfig::validate(&config)?;
        let machine_id = crate::identity::load_or_create(&config.data_dir)?;
        let recorded = read_membership(&config.membership_path())?;
        let network = recorded.clone().or_else(|| config.network_id.clone());
        let membership = Membership {
            config: config.clone(),
            links,
            machine_id,
            node: tokio::sync::Mutex::new(None),
            current: watch::channel(None).0,
        };
        match network {
            Some(network) => {
                let node = Node::open(config.clone(), membership.links.clone(), &network, || {
                    genesis(&network)
                })
                .await?;
                if recorded.is_none() {
                    write_membership(&config.membership_path(), &network)
                        .map_err(|e| StartError::Membership(e.to_string()))?;
                }
                membership.publish(node).await;
            }
            None => tracing::info!(
                machine = %membership.machine_id,
                "this machine is fresh: it belongs to no network until it creates or joins one"
            ),
        }
        Ok(Arc::new(membership))
    }

    /// A membership around a member node someone else runs and stops (tests and benchmarks
    /// that serve a cluster node on D-Bus).
    pub fn of_running(shared: Arc<Shared>) -> Arc<Membership> {
        Arc::new(Membership {
            config: shared.config.clone(),
            links: Links::real(),
            machine_id: shared.machine_id.clone(),
            node: tokio::sync::Mutex::new(None),
            current: watch::channel(Some(shared)).0,
        })
    }

    pub fn machine_id(&self) -> &str {
        &self.machine_id
    }

    /// The running member, `None` while fresh.
    pub fn member(&self) -> Option<Arc<Shared>> {
        self.current.borrow().clone()
    }

    /// Follows the change from fresh to member.
    pub fn watch(&self) -> watch::Receiver<Option<Arc<Shared>>> {
        self.current.subscribe()
    }

    /// Creates a new network with this machine as its first member (subnet 1). `name` empty
    /// means the configured name or the host name; `mesh_cidr` empty means the configured one.
    pub async fn create(
        &self,
        network_id: &str,
        mesh_cidr: &str,
        name: &str,
    ) -> Result<Machine, MembershipError> {
        let mut slot = self.node.lock().await;
        if let Some(node) = slot.as_ref() {
            return Err(MembershipError::AlreadyMember(node.network_id.clone()));
        }
        uncloud_common::model::validate_id("network id", network_id)?;
        let cidr = if mesh_cidr.is_empty() {
            self.config.mesh_cidr.clone()
        } else {
            mesh_cidr.to_string()
        };
        if uncloud_common::conflict::subnet_capacity(&cidr).is_none() {
            return Err(ModelError::Invalid {
                what: "mesh CIDR",
                value: cidr,
                why: "expected an IPv4 CIDR between /8 and /23",
            }
            .into());
        }
        let name = self.name_or_default(name)?;
        self.set_aside_leftover()?;
        let node = Node::open(self.config.clone(), self.links.clone(), network_id, || {
            genesis(network_id)
        })
        .await?;
        node.mutate(Mutation::SetMeshCidr(cidr)).await?;
        let machine = node.admit(self.own_admission(name)).await?;
        self.record(network_id)?;
        tracing::info!(network = %network_id, name = %machine.name, "created a new network");
        *slot = Some(node);
        self.current
            .send_replace(slot.as_ref().map(|n| n.shared().clone()));
        Ok(machine)
    }

    /// Joins the network whose whole document a member handed over after admitting this
    /// machine. Returns this machine's entry as the member wrote it.
    pub async fn join(&self, document: &[u8]) -> Result<Machine, MembershipError> {
        let mut slot = self.node.lock().await;
        if let Some(node) = slot.as_ref() {
            return Err(MembershipError::AlreadyMember(node.network_id.clone()));
        }
        let doc = handed_over(document)?;
        let view = StateDoc::new(doc.clone());
        let network = view.network_id();
        let Some(machine) = view.machine(&self.machine_id) else {
            return Err(MembershipError::NotAdmitted(self.machine_id.clone()));
        };
        self.set_aside_leftover()?;
        let node = Node::open(
            self.config.clone(),
            self.links.clone(),
            &network,
            move || doc,
        )
        .await?;
        self.record(&network)?;
        tracing::info!(network = %network, name = %machine.name, subnet = machine.subnet,
            "joined a network");
        *slot = Some(node);
        self.current
            .send_replace(slot.as_ref().map(|n| n.shared().clone()));
        Ok(machine)
    }

    /// Stops the member, if any: flushes the store and closes sockets.
    pub async fn shutdown(&self) {
        self.current.send_replace(None);
        if let Some(node) = self.node.lock().await.take() {
            node.shutdown().await;
        }
    }

    async fn publish(&self, node: Node) {
        let mut slot = self.node.lock().await;
        self.current.send_replace(Some(node.shared().clone()));
        *slot = Some(node);
    }

    /// The name this machine asks for when none is given.
    pub fn default_name(&self) -> String {
        self.config.machine_name()
    }

    fn name_or_default(&self, name: &str) -> Result<String, ModelError> {
        let name = if name.is_empty() {
            self.config.machine_name()
        } else {
            name.to_string()
        };
        uncloud_common::model::validate_dns_label("machine name", &name)?;
        Ok(name)
    }

    fn own_admission(&self, name: String) -> Admission {
        Admission {
            machine_id: self.machine_id.clone(),
            name,
            arch: std::env::consts::ARCH.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        }
    }

    fn record(&self, network: &str) -> Result<(), MembershipError> {
        let path = self.config.membership_path();
        write_membership(&path, network).map_err(|reason| MembershipError::Io {
            what: "record the membership in",
            path,
            reason,
        })
    }

    /// A store left by a create or join that did not finish would hide the new network's
    /// document: move it aside, keeping it for inspection.
    fn set_aside_leftover(&self) -> Result<(), MembershipError> {
        for store in [self.config.store_path(), self.config.containers_path()] {
            set_aside(store)?;
        }
        Ok(())
    }
}

fn set_aside(store: std::path::PathBuf) -> Result<(), MembershipError> {
    if !store.exists() {
        return Ok(());
    }
    let aside = store.with_extension(format!("redb.leftover-{}", now_ms()));
    tracing::warn!(store = %store.display(), aside = %aside.display(),
        "setting aside a state store of no recorded network");
    std::fs::rename(&store, &aside).map_err(|reason| MembershipError::Io {
        what: "set aside the leftover store",
        path: store,
        reason,
    })
}

/// The recorded network id, `None` when the file does not exist.
fn read_membership(path: &Path) -> Result<Option<String>, StartError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let id = text.trim().to_string();
            uncloud_common::model::validate_id("network id", &id)
                .map_err(|e| StartError::Membership(format!("{}: {e}", path.display())))?;
            Ok(Some(id))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StartError::Membership(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn write_membership(path: &Path, network: &str) -> std::io::Result<()> {
    crate::identity::write_atomically(path, format!("{network}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        Config {
            data_dir: dir.to_owned(),
            gossip_port: 0,
            sync_port: 0,
            bus: "none".into(),
            machine_name: Some("first".into()),
            listen_address: crate::config::Listen::LOOPBACK,
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn a_fresh_machine_has_no_network_until_it_creates_one_and_stays_a_member() {
        let dir = tempfile::tempdir().unwrap();
        let m = Membership::start(config(dir.path()), Links::real())
            .await
            .unwrap();
        assert!(m.member().is_none(), "fresh: no network");
        assert!(!dir.path().join("state.redb").exists(), "no store invented");
        let err = m.create("Bad Id!", "", "").await.unwrap_err().to_string();
        assert!(err.contains("network id"), "{err}");
        let me = m.create("net-1", "10.99.0.0/16", "").await.unwrap();
        assert_eq!((me.name.as_str(), me.subnet), ("first", 1));
        let shared = m.member().unwrap();
        assert_eq!(shared.state().network.mesh_cidr, "10.99.0.0/16");
        let err = m.create("net-2", "", "x").await.unwrap_err();
        assert!(matches!(err, MembershipError::AlreadyMember(_)), "{err}");
        m.shutdown().await;
        // A restart is a member of the recorded network.
        let again = Membership::start(config(dir.path()), Links::real())
            .await
            .unwrap();
        assert_eq!(again.member().unwrap().network_id, "net-1");
        assert_eq!(again.member().unwrap().machine(&me.id).unwrap(), me);
        again.shutdown().await;
    }

    #[tokio::test]
    async fn a_machine_joins_with_the_document_of_the_member_that_admitted_it() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = Membership::start(config(a.path()), Links::real())
            .await
            .unwrap();
        first.create("net-j", "", "").await.unwrap();
        let mut c = config(b.path());
        c.machine_name = Some("second".into());
        let second = Membership::start(c, Links::real()).await.unwrap();
        let member = first.member().unwrap();

        // Not admitted yet: refused, and it stays fresh.
        let err = second.join(&member.save_document()).await.unwrap_err();
        assert!(matches!(err, MembershipError::NotAdmitted(_)), "{err}");
        assert!(second.join(b"garbage").await.is_err());
        assert!(second.member().is_none());

        let admitted = member
            .admit(Admission {
                machine_id: second.machine_id().to_string(),
                name: "first".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((admitted.name.as_str(), admitted.subnet), ("first-2", 2));
        let err = member
            .admit(Admission {
                machine_id: second.machine_id().to_string(),
                name: "again".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, WriteError::AlreadyAdmitted(_)), "{err}");
        let joined = second.join(&member.save_document()).await.unwrap();
        assert_eq!(joined, admitted);
        assert_eq!(second.member().unwrap().network_id, "net-j");
        assert_eq!(second.member().unwrap().heads(), member.heads());
        first.shutdown().await;
        second.shutdown().await;
    }

    #[tokio::test]
    async fn a_leftover_store_is_set_aside_before_joining() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.redb"), b"left by a crash").unwrap();
        let m = Membership::start(config(dir.path()), Links::real())
            .await
            .unwrap();
        assert!(
            m.member().is_none(),
            "a store without a membership is not one"
        );
        m.create("net-l", "", "").await.unwrap();
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("leftover"))
            .count();
        assert_eq!(aside, 1);
        m.shutdown().await;
    }
}

//! Why stated could not start, and why a write was refused.

use std::net::SocketAddr;

use uncloud_common::model::{Kind, ModelError};

use crate::document::DocError;
use crate::identity;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigInvalid),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Store(#[from] uncloud_docstore::StoreError),
    #[error(
        "the state store {path} belongs to network {stored:?} but the config says {configured:?}"
    )]
    WrongNetwork {
        path: String,
        stored: String,
        configured: String,
    },
    #[error("no network to start: this machine is fresh (create or join one first)")]
    NoNetwork,
    #[error("membership record: {0}")]
    Membership(String),
    #[error("cannot listen for sync on {addr}: {reason}")]
    SyncListen {
        addr: SocketAddr,
        reason: std::io::Error,
    },
    #[error("cannot start gossip on {addr}: {reason:#}")]
    Gossip {
        addr: SocketAddr,
        reason: anyhow::Error,
    },
}

/// Why a write was refused or not made durable.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Invalid(#[from] ModelError),
    #[error("{kind} {id:?} belongs to machine {owner:?}; only that machine writes it")]
    NotOwner {
        kind: Kind,
        id: String,
        owner: String,
    },
    #[error(transparent)]
    Doc(#[from] DocError),
    #[error("the change was applied in memory but not made durable: {0}")]
    Storage(String),
    #[error("machine {0:?} is already a member of this network")]
    AlreadyAdmitted(String),
    #[error("machine {0:?} was removed from this network and cannot come back under that id")]
    Removed(String),
}

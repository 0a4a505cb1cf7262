//! tarpc services spoken between machines.
//!
//! They listen only on the machine's mesh address, which WireGuard already authenticates and
//! encrypts; every request still carries the network id so a misconfigured peer is refused.

use serde::{Deserialize, Serialize};

/// Largest frame accepted on a machine-to-machine connection. A sync message carries at most
/// the changes one side lacks; anything bigger is refused rather than buffered.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// One round of automerge's sync protocol between two machines.
///
/// The caller runs a session: it sends its sync message, applies the reply, and repeats until
/// neither side has anything to send. Each side keeps a `sync::State` for the other, so rounds
/// after the first exchange only what changed.
#[tarpc::service]
pub trait StateSync {
    async fn sync(request: SyncRequest) -> Result<SyncReply, SyncError>;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncRequest {
    pub network_id: String,
    /// Machine id of the caller.
    pub from: String,
    /// Fresh for each session; a new session resets the server's in-flight bookkeeping.
    pub session: u64,
    /// An encoded automerge sync message, or `None` when the caller has nothing to send.
    pub message: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncReply {
    /// The server's next sync message, or `None` when it has nothing to send.
    pub message: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SyncError {
    #[error("peer belongs to network {theirs:?}, this machine to {ours:?}")]
    WrongNetwork { ours: String, theirs: String },
    #[error("malformed sync message: {0}")]
    Malformed(String),
    #[error("invalid caller id: {0}")]
    InvalidCaller(String),
    #[error("server is shutting down")]
    Unavailable,
}

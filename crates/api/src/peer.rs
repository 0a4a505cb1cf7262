//! Between apids, over the mesh: a call `uc` sent to one machine for another (`uc -m`).
//!
//! The forwarding apid has checked the client's certificate; the target trusts what it says
//! about the caller because the connection comes from the mesh address of a machine in the
//! state (WireGuard authenticates it, and meshd lets the port in only through the mesh
//! device). The target still refuses a serial it knows to be revoked. Plain TCP, JSON frames:
//! the mesh encrypts, and JSON lets versions differ.

use serde::{Deserialize, Serialize};

use crate::wire::{Answer, ApiError, Call};

/// apid's machine-to-machine port, on the mesh address only (meshd's firewall knows it as
/// `uncloud_common::rpc::APID_PEER_PORT`; apid's tests check they agree).
pub const PEER_PORT: u16 = 7949;

#[tarpc::service]
pub trait Peer {
    /// `call` on this machine, for `caller`, forwarded by another member.
    async fn call(caller: Forwarded, call: Call) -> Result<Answer, ApiError>;
}

/// The client a forwarding apid verified.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Forwarded {
    pub subject: String,
    /// `admin` or `reader`.
    pub role: String,
    /// Its certificate's serial, so the target can refuse one it knows is revoked.
    pub serial: String,
    /// The machine that forwarded the call (name).
    #[serde(default)]
    pub via: String,
}

//! Which machine can currently reach which: the seam where tests cut the network.
//!
//! In production every link is up and the real network decides. Multi-node tests and the
//! benchmark run many nodes in one process on loopback and pass a shared [`LinkFilter`] to all
//! of them (`uncloud_testkit::simnet::SimulatedNetwork`); gossip datagrams and sync RPCs
//! consult it, so a test can cut one machine off, split the network in halves, or cut one
//! direction only, and heal it again.

use std::net::SocketAddr;
use std::sync::Arc;

/// Decides whether traffic from one machine reaches another.
pub trait LinkFilter: Send + Sync + 'static {
    /// Whether a message sent by machine `from` to machine `to` is delivered.
    fn allows(&self, from: &str, to: &str) -> bool;
    /// Which machine listens on `addr` (gossip or sync), if known.
    fn machine_at(&self, addr: SocketAddr) -> Option<String>;
}

/// The filter a node uses: none in production.
#[derive(Clone, Default)]
pub struct Links(Option<Arc<dyn LinkFilter>>);

impl Links {
    pub fn real() -> Self {
        Links(None)
    }

    pub fn filtered(filter: Arc<dyn LinkFilter>) -> Self {
        Links(Some(filter))
    }

    pub fn allows(&self, from: &str, to: &str) -> bool {
        self.0.as_ref().is_none_or(|f| f.allows(from, to))
    }

    /// Whether `from` can send to whoever listens on `addr` (unknown addresses are reachable).
    pub fn allows_addr(&self, from: &str, addr: SocketAddr) -> bool {
        match &self.0 {
            None => true,
            Some(f) => f.machine_at(addr).is_none_or(|to| f.allows(from, &to)),
        }
    }

    /// Whether traffic from whoever listens on `addr` reaches `to`.
    pub fn allows_from_addr(&self, addr: SocketAddr, to: &str) -> bool {
        match &self.0 {
            None => true,
            Some(f) => f.machine_at(addr).is_none_or(|from| f.allows(&from, to)),
        }
    }
}

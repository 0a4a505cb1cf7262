//! Which machine can currently reach which: the seam where tests cut the network.
//!
//! In production every link is up and the real network decides. Multi-node tests and the
//! benchmark run many nodes in one process on loopback and pass a shared [`LinkFilter`] to all
//! of them; gossip datagrams and sync RPCs consult it, so a test can cut one machine off, split
//! the network in halves, or cut one direction only, and heal it again.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

/// Decides whether traffic from one machine reaches another.
pub trait LinkFilter: Send + Sync + 'static {
    /// Whether a message sent by machine `from` to machine `to` is delivered.
    fn allows(&self, from: &str, to: &str) -> bool;
    /// Which machine listens on `addr` (gossip or sync), if known.
    fn machine_at(&self, addr: SocketAddr) -> Option<String>;
}

/// An in-process network whose links tests can cut and heal.
#[derive(Default, Clone)]
pub struct SimulatedNetwork {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Default)]
struct Inner {
    addresses: HashMap<SocketAddr, String>,
    /// Directed links that drop everything: (from, to).
    cut: BTreeSet<(String, String)>,
}

impl SimulatedNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `machine` listens on `addr`.
    pub fn register(&self, machine: &str, addr: SocketAddr) {
        self.inner
            .write()
            .unwrap()
            .addresses
            .insert(addr, machine.to_string());
    }

    /// Drops traffic from `from` to `to` (one direction).
    pub fn cut_one_way(&self, from: &str, to: &str) {
        self.inner
            .write()
            .unwrap()
            .cut
            .insert((from.to_string(), to.to_string()));
    }

    /// Splits the machines into groups that cannot reach each other.
    pub fn partition(&self, groups: &[Vec<String>]) {
        let mut inner = self.inner.write().unwrap();
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for x in a {
                    for y in b {
                        inner.cut.insert((x.clone(), y.clone()));
                        inner.cut.insert((y.clone(), x.clone()));
                    }
                }
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.inner.write().unwrap().cut.clear();
    }
}

impl LinkFilter for SimulatedNetwork {
    fn allows(&self, from: &str, to: &str) -> bool {
        !self
            .inner
            .read()
            .unwrap()
            .cut
            .contains(&(from.to_string(), to.to_string()))
    }

    fn machine_at(&self, addr: SocketAddr) -> Option<String> {
        self.inner.read().unwrap().addresses.get(&addr).cloned()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cut_both_ways_and_heal() {
        let net = SimulatedNetwork::new();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        net.partition(&[s(&["a", "b"]), s(&["c"])]);
        assert!(net.allows("a", "b"));
        assert!(!net.allows("a", "c"));
        assert!(!net.allows("c", "b"));
        net.heal();
        assert!(net.allows("c", "b"));
        net.cut_one_way("a", "b");
        assert!(!net.allows("a", "b"));
        assert!(net.allows("b", "a"));
    }
}

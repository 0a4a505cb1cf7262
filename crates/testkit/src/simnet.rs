//! An in-process network for many `stated` nodes on loopback, whose links a test cuts and
//! heals: split into partitions, cut one direction, heal. Every node's gossip and sync consult
//! it through `stated::links::LinkFilter`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use stated::links::LinkFilter;

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

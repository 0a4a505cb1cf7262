//! An in-process network for many `stated` nodes on loopback, whose links a test cuts and
//! heals: split into partitions, cut one direction, lose a share of messages, heal. Every
//! node's gossip and sync consult it through `stated::links::LinkFilter`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use stated::links::LinkFilter;

/// An in-process network whose links tests can cut and heal.
#[derive(Default, Clone)]
pub struct SimulatedNetwork {
    inner: Arc<RwLock<Inner>>,
    /// Chance in millionths that a message on a link that is up is lost anyway.
    loss_ppm: Arc<AtomicU64>,
    /// State of the generator that decides losses (xorshift; seeded by [`Self::set_loss`]).
    dice: Arc<AtomicU64>,
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

    /// Loses each message with probability `share` (0 to 1) on links that are up; `seed` makes
    /// the losses of one run repeat in the next.
    pub fn set_loss(&self, share: f64, seed: u64) {
        self.dice.store(seed | 1, Ordering::Relaxed);
        self.loss_ppm
            .store((share.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// Restores every link and stops losing messages.
    pub fn heal(&self) {
        self.inner.write().unwrap().cut.clear();
        self.loss_ppm.store(0, Ordering::Relaxed);
    }

    fn lost(&self) -> bool {
        let ppm = self.loss_ppm.load(Ordering::Relaxed);
        if ppm == 0 {
            return false;
        }
        // xorshift64: not a good generator, but cheap, lock-free and plenty for dropping
        // packets.
        let mut x = self.dice.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.dice.store(x, Ordering::Relaxed);
        x % 1_000_000 < ppm
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
            && !self.lost()
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

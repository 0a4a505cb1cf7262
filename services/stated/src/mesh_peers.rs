//! Who stated talks to when it listens on the mesh: the mesh addresses of the machines in the
//! state. Pure: computed from the document after every change to machines or the network.
//!
//! WireGuard authenticates the mesh: a packet arriving on the mesh device from 10.210.X.1 was
//! sent by the holder of machine X's key. So a machine is dialled only at the mesh address its
//! entry implies (never at an address a gossip message advertises), and only those addresses
//! are accepted. This machine's own address is not a peer: a local process dialling it has
//! that source address.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use uncloud_common::address::MeshCidr;
use uncloud_common::model::Machine;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshPeers {
    /// This machine's mesh address, once it has an entry with a subnet.
    pub me: Option<IpAddr>,
    /// Mesh address -> machine id, for every other machine in the state.
    pub by_ip: HashMap<IpAddr, String>,
}

impl MeshPeers {
    pub fn compute(cidr: &str, machines: &BTreeMap<String, Machine>, me: &str) -> MeshPeers {
        let Ok(cidr) = cidr.parse::<MeshCidr>() else {
            return MeshPeers::default();
        };
        let mut out = MeshPeers::default();
        for m in machines.values() {
            let Some(ip) = cidr.machine_ip(m.subnet) else {
                continue;
            };
            if m.id == me {
                out.me = Some(IpAddr::V4(ip));
            } else {
                out.by_ip.insert(IpAddr::V4(ip), m.id.clone());
            }
        }
        out
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.by_ip.contains_key(&ip)
    }

    /// The machine whose mesh address `ip` is.
    pub fn id_at(&self, ip: IpAddr) -> Option<&str> {
        self.by_ip.get(&ip).map(String::as_str)
    }

    /// The address of machine `id` on `port`, if it is in the state.
    pub fn addr_of(&self, id: &str, port: u16) -> Option<SocketAddr> {
        self.by_ip
            .iter()
            .find(|(_, m)| *m == id)
            .map(|(ip, _)| SocketAddr::new(*ip, port))
    }

    /// Every peer on `port`: the gossip seeds.
    pub fn all_on(&self, port: u16) -> Vec<String> {
        let mut v: Vec<String> = self
            .by_ip
            .keys()
            .map(|ip| SocketAddr::new(*ip, port).to_string())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(id: &str, subnet: u32) -> (String, Machine) {
        (
            id.to_string(),
            Machine {
                id: id.into(),
                name: id.into(),
                subnet,
                ..Default::default()
            },
        )
    }

    #[test]
    fn peers_are_the_other_machines_mesh_addresses_and_never_this_one() {
        let machines = BTreeMap::from([machine("a", 1), machine("b", 2), machine("c", 7)]);
        let p = MeshPeers::compute("10.210.0.0/16", &machines, "a");
        assert_eq!(p.me, Some("10.210.1.1".parse().unwrap()));
        assert!(p.allows("10.210.2.1".parse().unwrap()));
        assert!(p.allows("10.210.7.1".parse().unwrap()));
        assert!(!p.allows("10.210.1.1".parse().unwrap()), "not itself");
        assert!(!p.allows("10.210.3.1".parse().unwrap()), "no machine there");
        assert!(
            !p.allows("10.210.2.5".parse().unwrap()),
            "a container, not a machine"
        );
        assert_eq!(
            p.addr_of("c", 7947),
            Some("10.210.7.1:7947".parse().unwrap())
        );
        assert_eq!(p.addr_of("a", 7947), None);
        assert_eq!(p.id_at("10.210.7.1".parse().unwrap()), Some("c"));
        assert_eq!(p.id_at("10.210.1.1".parse().unwrap()), None, "not itself");
        assert_eq!(p.all_on(7946), vec!["10.210.2.1:7946", "10.210.7.1:7946"]);
    }

    #[test]
    fn no_usable_range_means_no_peers() {
        let machines = BTreeMap::from([machine("a", 1), machine("b", 2)]);
        assert_eq!(MeshPeers::compute("", &machines, "a"), MeshPeers::default());
        // A subnet index out of the range (a bogus entry) is no peer.
        let odd = BTreeMap::from([machine("a", 1), machine("b", 100_000)]);
        assert!(MeshPeers::compute("10.210.0.0/16", &odd, "a")
            .by_ip
            .is_empty());
    }
}

//! Which WireGuard peers this machine should have, computed from the replicated state.
//!
//! Pure: the state in, the peer list and the refused entries out. The state can hold entries
//! meshd cannot use (another version wrote them, a partition merged two claims, someone typed
//! a bad value with `busctl`); each is refused with a reason and the rest of the mesh is built
//! anyway:
//!
//! - no public key yet: the machine's meshd has not started; not an error, just not a peer;
//! - a key that is not 32 bytes of base64, or this machine's own key;
//! - a subnet outside the mesh CIDR, or this machine's own subnet (stated's conflict rules
//!   renumber one of the two; until then this machine keeps its own);
//! - two peers with the same key or subnet: the older claim keeps it (`(subnet_claimed_at_ms,
//!   id)`, the order stated's conflict rules use), the other is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

use uncloud_common::address::MeshCidr;
use uncloud_common::model::{Machine, NetworkState};

use crate::keys;

/// A peer to configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPeer {
    pub machine_id: String,
    pub name: String,
    pub public_key: [u8; 32],
    pub subnet_index: u32,
    /// The peer's /24: its allowed IPs and the route's target.
    pub subnet: Ipv4Addr,
    /// Endpoints to try, in order: what the peer advertises, then where other machines
    /// observed it (its NAT's reflexive address), without duplicates.
    pub candidates: Vec<SocketAddr>,
    /// Machines that have a live tunnel with this peer (they published where they see it):
    /// the possible relays to it.
    pub observed_by: Vec<String>,
}

/// A state entry that does not become a peer, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub machine_id: String,
    pub reason: String,
    /// False for the ordinary "no key yet"; true for entries that are wrong.
    pub bogus: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub peers: Vec<PlannedPeer>,
    pub refused: Vec<Refused>,
}

/// Plans the peers of machine `me` (id `me_id`, key `my_key`, subnet `my_subnet`).
pub fn plan(
    state: &NetworkState,
    me_id: &str,
    my_key: &[u8; 32],
    my_subnet: u32,
    cidr: &MeshCidr,
) -> Plan {
    let mut out = Plan::default();
    let refuse = |out: &mut Plan, m: &Machine, reason: String, bogus: bool| {
        out.refused.push(Refused {
            machine_id: m.id.clone(),
            reason,
            bogus,
        })
    };
    // Oldest claim first, so a duplicate key or subnet is refused on the younger entry.
    let mut machines: Vec<&Machine> = state.machines.values().filter(|m| m.id != me_id).collect();
    machines.sort_by_key(|m| uncloud_common::conflict::subnet_claim_key(m));
    let mut keys_taken: BTreeSet<[u8; 32]> = BTreeSet::new();
    let mut subnets_taken: BTreeMap<u32, &str> = BTreeMap::new();
    for m in machines {
        if m.wireguard_public_key.is_empty() {
            refuse(&mut out, m, "no WireGuard key published yet".into(), false);
            continue;
        }
        let key = match keys::decode(&m.wireguard_public_key) {
            Ok(k) => k,
            Err(why) => {
                refuse(&mut out, m, format!("invalid WireGuard key: {why}"), true);
                continue;
            }
        };
        if &key == my_key {
            refuse(
                &mut out,
                m,
                "uses this machine's own WireGuard key".into(),
                true,
            );
            continue;
        }
        if !keys_taken.insert(key) {
            refuse(
                &mut out,
                m,
                "WireGuard key already used by an older machine entry".into(),
                true,
            );
            continue;
        }
        let Some(subnet) = cidr.subnet(m.subnet) else {
            refuse(
                &mut out,
                m,
                format!("subnet index {} is outside {cidr}", m.subnet),
                true,
            );
            continue;
        };
        if m.subnet == my_subnet {
            refuse(
                &mut out,
                m,
                format!("claims this machine's subnet {subnet}/24"),
                true,
            );
            continue;
        }
        if let Some(holder) = subnets_taken.get(&m.subnet) {
            refuse(
                &mut out,
                m,
                format!("subnet {subnet}/24 is already held by machine {holder}"),
                true,
            );
            continue;
        }
        subnets_taken.insert(m.subnet, &m.id);
        out.peers.push(PlannedPeer {
            machine_id: m.id.clone(),
            name: m.name.clone(),
            public_key: key,
            subnet_index: m.subnet,
            subnet,
            candidates: candidates(state, m),
            observed_by: state
                .machines
                .values()
                .filter(|o| o.id != m.id && o.observed_endpoints.contains_key(&m.id))
                .map(|o| o.id.clone())
                .collect(),
        });
    }
    out.peers.sort_by_key(|p| p.subnet_index);
    out
}

/// The endpoints to try for `m`: advertised, then observed by others, deduplicated.
fn candidates(state: &NetworkState, m: &Machine) -> Vec<SocketAddr> {
    let observed = state
        .machines
        .values()
        .filter(|o| o.id != m.id)
        .filter_map(|o| o.observed_endpoints.get(&m.id));
    let mut out: Vec<SocketAddr> = Vec::new();
    for e in m.endpoints.iter().chain(observed) {
        if let Ok(addr) = e.parse::<SocketAddr>() {
            // A synthetic relay address in the state would make us relay to whoever wrote it.
            let usable = !addr.ip().is_unspecified()
                && addr.port() != 0
                && crate::relay::parse_relay_addr(&addr).is_none();
            if usable && !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn machine(id: &str, subnet: u32, key_byte: u8, claimed: u64) -> Machine {
        Machine {
            id: id.into(),
            name: format!("m-{id}"),
            subnet,
            subnet_claimed_at_ms: claimed,
            wireguard_public_key: keys::encode(&key(key_byte)),
            endpoints: vec![format!("192.0.2.{subnet}:51820")],
            ..Default::default()
        }
    }

    fn state(ms: Vec<Machine>) -> NetworkState {
        let mut s = NetworkState::default();
        for m in ms {
            s.machines.insert(m.id.clone(), m);
        }
        s
    }

    fn run(s: &NetworkState) -> Plan {
        plan(s, "me", &key(1), 1, &MeshCidr::default())
    }

    #[test]
    fn every_other_machine_with_a_key_is_a_peer() {
        let s = state(vec![
            machine("me", 1, 1, 0),
            machine("b", 3, 3, 0),
            machine("a", 2, 2, 0),
        ]);
        let p = run(&s);
        assert!(p.refused.is_empty(), "{:?}", p.refused);
        let ids: Vec<_> = p.peers.iter().map(|p| p.machine_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(p.peers[0].subnet, "10.210.2.0".parse::<Ipv4Addr>().unwrap());
        assert_eq!(p.peers[0].public_key, key(2));
    }

    #[test]
    fn bogus_entries_are_refused_with_reasons_and_the_rest_kept() {
        let mut no_key = machine("nokey", 9, 0, 0);
        no_key.wireguard_public_key.clear();
        let mut bad_key = machine("badkey", 10, 0, 0);
        bad_key.wireguard_public_key = "abc".into();
        let s = state(vec![
            machine("me", 1, 1, 0),
            machine("good", 2, 2, 0),
            no_key,
            bad_key,
            machine("ownkey", 11, 1, 0),
            machine("ownsubnet", 1, 12, 0),
            machine("out", 300, 13, 0),
            machine("dupkey", 14, 2, 5),
            machine("oldsubnet", 15, 15, 1),
            machine("newsubnet", 15, 16, 2),
        ]);
        let p = run(&s);
        let ids: Vec<_> = p.peers.iter().map(|p| p.machine_id.as_str()).collect();
        assert_eq!(ids, ["good", "oldsubnet"]);
        let reason = |id: &str| {
            p.refused
                .iter()
                .find(|r| r.machine_id == id)
                .unwrap_or_else(|| panic!("{id} not refused"))
                .clone()
        };
        assert!(!reason("nokey").bogus);
        assert!(reason("badkey").reason.contains("invalid WireGuard key"));
        assert!(reason("ownkey").reason.contains("own WireGuard key"));
        assert!(reason("ownsubnet").reason.contains("this machine's subnet"));
        assert!(reason("out").reason.contains("outside"));
        assert!(reason("dupkey").reason.contains("already used"));
        assert!(reason("newsubnet")
            .reason
            .contains("already held by machine oldsubnet"));
        assert_eq!(p.refused.len(), 7);
    }

    #[test]
    fn candidates_are_advertised_then_observed_without_duplicates() {
        let mut b = machine("b", 2, 2, 0);
        b.endpoints = vec![
            "10.0.0.2:51820".into(),
            "garbage".into(),
            "0.0.0.0:51820".into(),
            "[fd75:6e63:6c6f:7564:0:3:0:2]:1".into(),
            "203.0.113.2:51820".into(),
        ];
        let mut c = machine("c", 3, 3, 0);
        c.observed_endpoints
            .insert("b".into(), "198.51.100.7:40000".into());
        let mut me = machine("me", 1, 1, 0);
        me.observed_endpoints
            .insert("b".into(), "203.0.113.2:51820".into());
        let p = run(&state(vec![me, b, c]));
        let b = p.peers.iter().find(|p| p.machine_id == "b").unwrap();
        let want: Vec<SocketAddr> = ["10.0.0.2:51820", "203.0.113.2:51820", "198.51.100.7:40000"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        // Machine me's observation repeats an advertised endpoint and is not listed twice.
        assert_eq!(b.candidates, want);
    }
}

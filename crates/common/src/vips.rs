//! Virtual addresses of services: one per service, the same on every machine.
//!
//! `lb.<service>.internal` answers one address that every machine balances (in nftables)
//! across the service's containers. The addresses come from the mesh's index-0 /24, which is
//! never a machine's subnet: `10.210.0.1` to `10.210.0.254` in the default mesh, so at most
//! [`CAPACITY`] services have one.
//!
//! stated gives a new service the lowest index no other service holds ([`free_index`]) and
//! stores it as the service's claim. Two sides of a partition can give two services the same
//! index; the rule is the one for machine subnets ([`crate::conflict`]): the **oldest claim
//! wins** (the smaller `(created_at_ms, id)`), evaluated by every reader from the merged
//! state. Unlike a machine, a service has no owner that would rewrite its claim, so a loser is
//! not rewritten either: [`resolve`] gives each loser (and each service without a claim, from
//! before virtual addresses existed) the lowest index nobody claims, in claim order. A new
//! service never takes such an index ([`free_index`] skips them), so a loser keeps its address
//! until another partition hands its index to a new claim.
//!
//! Pure, so the rules are property-tested below.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::address::MeshCidr;

/// Indices `1..=254` of the mesh's index-0 /24 (`.0` and `.255` are not used).
pub const CAPACITY: u32 = 254;

/// One service's claim: its id, when it was created, and the index it holds (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    pub id: &'a str,
    pub created_at_ms: u64,
    pub index: u32,
}

/// The address of index `index` (`1..=CAPACITY`) in `mesh`.
pub fn address(mesh: &MeshCidr, index: u32) -> Option<Ipv4Addr> {
    (1..=CAPACITY)
        .contains(&index)
        .then(|| Ipv4Addr::from(u32::from(mesh.network()) + index))
}

/// The range every virtual address is in, as `a.b.c.d/24`.
pub fn range(mesh: &MeshCidr) -> String {
    format!("{}/24", mesh.network())
}

/// Service id -> the index it serves at, for every service that gets one (all of them while
/// fewer than [`CAPACITY`] exist). Any order of `claims` gives the same answer.
pub fn resolve<'a>(claims: impl IntoIterator<Item = Claim<'a>>) -> BTreeMap<String, u32> {
    let mut claims: Vec<Claim> = claims.into_iter().collect();
    claims.sort_by(|a, b| (a.created_at_ms, a.id).cmp(&(b.created_at_ms, b.id)));
    let mut out = BTreeMap::new();
    let mut held = BTreeSet::new();
    let mut unplaced = Vec::new();
    for c in &claims {
        if (1..=CAPACITY).contains(&c.index) && held.insert(c.index) {
            out.insert(c.id.to_string(), c.index);
        } else {
            unplaced.push(c.id);
        }
    }
    // Losers and services without a claim: the lowest indices nobody claims, oldest first.
    let claimed: BTreeSet<u32> = claims.iter().map(|c| c.index).collect();
    let mut free = (1..=CAPACITY).filter(|i| !claimed.contains(i));
    for id in unplaced {
        if out.contains_key(id) {
            continue; // the same id twice: its first claim stands
        }
        match free.next() {
            Some(index) => {
                out.insert(id.to_string(), index);
            }
            None => break,
        }
    }
    out
}

/// The index a new service claims: the lowest that no service claims or is given by
/// [`resolve`]. `None` when all [`CAPACITY`] are in use.
pub fn free_index<'a>(claims: impl IntoIterator<Item = Claim<'a>>) -> Option<u32> {
    let claims: Vec<Claim> = claims.into_iter().collect();
    let mut used: BTreeSet<u32> = claims.iter().map(|c| c.index).collect();
    used.extend(resolve(claims.iter().copied()).into_values());
    (1..=CAPACITY).find(|i| !used.contains(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(id: &str, created_at_ms: u64, index: u32) -> Claim<'_> {
        Claim {
            id,
            created_at_ms,
            index,
        }
    }

    #[test]
    fn addresses_are_the_index_zero_subnet_of_the_mesh() {
        let mesh = MeshCidr::default();
        assert_eq!(address(&mesh, 1), Some(Ipv4Addr::new(10, 210, 0, 1)));
        assert_eq!(address(&mesh, 254), Some(Ipv4Addr::new(10, 210, 0, 254)));
        assert_eq!(address(&mesh, 0), None);
        assert_eq!(address(&mesh, 255), None);
        assert_eq!(range(&mesh), "10.210.0.0/24");
        // Never a machine's address.
        assert_eq!(mesh.index_of(Ipv4Addr::new(10, 210, 0, 9)), None);
    }

    #[test]
    fn the_older_claim_keeps_an_index_and_the_loser_takes_the_lowest_unclaimed() {
        let got = resolve([c("new", 20, 1), c("old", 10, 1), c("other", 5, 2)]);
        assert_eq!(got["old"], 1);
        assert_eq!(got["other"], 2);
        assert_eq!(got["new"], 3);
        // A service from before virtual addresses gets one too.
        let got = resolve([c("a", 1, 1), c("legacy", 0, 0)]);
        assert_eq!(got["legacy"], 2);
        // A new service skips what losers were given.
        assert_eq!(
            free_index([c("new", 20, 1), c("old", 10, 1), c("other", 5, 2)]),
            Some(4)
        );
        assert_eq!(free_index([]), Some(1));
    }

    #[test]
    fn past_capacity_later_services_get_none() {
        let ids: Vec<String> = (0..=CAPACITY).map(|i| format!("s{i:03}")).collect();
        let claims: Vec<Claim> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| c(id, i as u64, 0))
            .collect();
        let got = resolve(claims.iter().copied());
        assert_eq!(got.len(), CAPACITY as usize);
        assert!(!got.contains_key(&ids[CAPACITY as usize]), "the newest");
        assert_eq!(free_index(claims.iter().copied()), None);
    }

    proptest! {
        /// Two partitions each create services from the same start; after the merge every
        /// service has an address, no two share one, every uncontested claim is kept, and the
        /// order the claims are read in does not matter.
        #[test]
        fn merged_partitions_get_unique_addresses(
            sides in prop::collection::vec((0usize..2, 0u64..50), 1..60),
            start in 0usize..20,
        ) {
            let mut ids = Vec::new();
            let mut states: [Vec<(String, u64, u32)>; 2] = [Vec::new(), Vec::new()];
            for i in 0..start {
                let id = format!("base{i}");
                let claim = free_index(states[0].iter().map(|(id, t, x)| c(id, *t, *x))).unwrap();
                states[0].push((id.clone(), i as u64, claim));
                ids.push(id);
            }
            states[1] = states[0].clone();
            for (n, (side, at)) in sides.iter().enumerate() {
                let id = format!("s{n}");
                let state = &mut states[*side];
                let claim = free_index(state.iter().map(|(id, t, x)| c(id, *t, *x))).unwrap();
                state.push((id.clone(), 100 + at, claim));
                ids.push(id);
            }
            let mut merged: Vec<(String, u64, u32)> = states.concat();
            merged.sort();
            merged.dedup();
            let got = resolve(merged.iter().map(|(id, t, x)| c(id, *t, *x)));
            prop_assert_eq!(got.len(), ids.len());
            let unique: BTreeSet<u32> = got.values().copied().collect();
            prop_assert_eq!(unique.len(), got.len());
            let mut claimed: BTreeMap<u32, usize> = BTreeMap::new();
            for (_, _, x) in &merged {
                *claimed.entry(*x).or_default() += 1;
            }
            for (id, _, x) in &merged {
                if claimed[x] == 1 {
                    prop_assert_eq!(got[id], *x, "an uncontested claim is kept");
                }
            }
            merged.reverse();
            let again = resolve(merged.iter().map(|(id, t, x)| c(id, *t, *x)));
            prop_assert_eq!(again, got);
        }
    }
}

//! Keeping machine names and subnet indices unique across partitions.
//!
//! Two sides of a partition can each add a machine and hand it the same subnet index or name.
//! Nothing can prevent that without coordination, so it is detected after the merge and
//! resolved by a rule every machine evaluates identically from the merged state:
//!
//! - Among machines claiming the same value, the **oldest claim wins**: the smallest
//!   `(claimed_at_ms, machine id)` pair. Ids are unique, so there is always exactly one winner.
//! - Every other claimant is a **loser**; only the loser itself changes its entry (machines
//!   write only what they own), taking the lowest free subnet index or the name with the lowest
//!   free `-N` suffix.
//! - A fresh claim is stamped later than every claim the machine knows of, so it never beats
//!   a settled holder, even with a skewed clock. Two losers that renumber concurrently in
//!   different partitions may collide again; the rule runs again after that merge and the
//!   number of contested values shrinks each round.
//!
//! Everything here is pure so it is property-tested without sockets (see the tests below).

use std::collections::{BTreeMap, BTreeSet};

use crate::model::Machine;

/// The outcome of applying the rules to a set of machines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Machine id -> id of the machine that keeps the name it also claims.
    pub name_losers: BTreeMap<String, String>,
    /// Machine id -> id of the machine that keeps the subnet index it also claims.
    pub subnet_losers: BTreeMap<String, String>,
}

impl Resolution {
    pub fn is_clean(&self) -> bool {
        self.name_losers.is_empty() && self.subnet_losers.is_empty()
    }

    /// Whether the machine holds its name and subnet undisputed.
    pub fn is_winner(&self, machine_id: &str) -> bool {
        !self.name_losers.contains_key(machine_id) && !self.subnet_losers.contains_key(machine_id)
    }
}

/// The order of subnet claims: the older claim first, ties by machine id. The one definition
/// of "older" for subnets; meshd orders peers by it too, so that a duplicate key or subnet is
/// refused on the entry this rule makes lose.
pub fn subnet_claim_key(m: &Machine) -> (u64, &str) {
    (m.subnet_claimed_at_ms, &m.id)
}

/// Applies the oldest-claim-wins rule to names and subnet indices.
pub fn resolve<'a>(machines: impl IntoIterator<Item = &'a Machine>) -> Resolution {
    let mut by_name: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    let mut by_subnet: BTreeMap<u32, Vec<(u64, &str)>> = BTreeMap::new();
    for m in machines {
        by_name
            .entry(&m.name)
            .or_default()
            .push((m.name_claimed_at_ms, &m.id));
        by_subnet
            .entry(m.subnet)
            .or_default()
            .push(subnet_claim_key(m));
    }
    Resolution {
        name_losers: losers(by_name.into_values()),
        subnet_losers: losers(by_subnet.into_values()),
    }
}

fn losers<'a>(groups: impl Iterator<Item = Vec<(u64, &'a str)>>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for mut claims in groups {
        if claims.len() < 2 {
            continue;
        }
        claims.sort_unstable();
        let winner = claims[0].1;
        for (_, id) in &claims[1..] {
            out.insert((*id).to_string(), winner.to_string());
        }
    }
    out
}

/// Number of machine subnets a mesh CIDR holds with one /24 per machine, index 0 excluded.
/// `10.210.0.0/16` gives 255 (indices 1..=255).
pub fn subnet_capacity(mesh_cidr: &str) -> Option<u32> {
    mesh_cidr
        .parse::<crate::address::MeshCidr>()
        .ok()
        .map(|m| m.capacity())
}

/// The lowest subnet index in `1..=capacity` that no machine claims.
pub fn lowest_free_subnet<'a>(
    machines: impl IntoIterator<Item = &'a Machine>,
    capacity: u32,
) -> Option<u32> {
    let used: BTreeSet<u32> = machines.into_iter().map(|m| m.subnet).collect();
    (1..=capacity).find(|i| !used.contains(i))
}

/// `base` if free, else `base-2`, `base-3`, … (trimmed to stay a valid 63-byte DNS label).
pub fn free_name<'a>(base: &str, machines: impl IntoIterator<Item = &'a Machine>) -> String {
    let taken: BTreeSet<&str> = machines.into_iter().map(|m| m.name.as_str()).collect();
    if !taken.contains(base) {
        return base.to_string();
    }
    let stem = strip_suffix(base);
    (2u32..)
        .map(|n| {
            let suffix = format!("-{n}");
            let keep = stem.len().min(63 - suffix.len());
            format!("{}{suffix}", stem[..keep].trim_end_matches('-'))
        })
        .find(|candidate| !taken.contains(candidate.as_str()))
        .expect("an unbounded range always has a free name")
}

/// `web-3` -> `web`, so renaming a loser twice gives `web-4`, not `web-3-2`.
fn strip_suffix(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((stem, n)) if !stem.is_empty() && n.parse::<u32>().is_ok() => stem,
        _ => name,
    }
}

/// A claim stamp later than every claim in `machines` and not before `now_ms`.
pub fn next_claim_stamp<'a>(machines: impl IntoIterator<Item = &'a Machine>, now_ms: u64) -> u64 {
    let newest = machines
        .into_iter()
        .flat_map(|m| [m.name_claimed_at_ms, m.subnet_claimed_at_ms])
        .max()
        .unwrap_or(0);
    // Saturating: the stamps are peer-written, and u64::MAX must not wrap to 0.
    now_ms.max(newest.saturating_add(1))
}

/// What machine `self_id` must write so that it no longer loses a conflict, or `None` if it
/// holds its name and subnet undisputed. `Err` when no subnet index is left.
pub fn plan_fix(
    self_id: &str,
    machines: &BTreeMap<String, Machine>,
    capacity: u32,
    now_ms: u64,
) -> Result<Option<Machine>, NoFreeSubnet> {
    let Some(me) = machines.get(self_id) else {
        return Ok(None);
    };
    let resolution = resolve(machines.values());
    let lost_name = resolution.name_losers.contains_key(self_id);
    let lost_subnet = resolution.subnet_losers.contains_key(self_id);
    if !lost_name && !lost_subnet {
        return Ok(None);
    }
    let stamp = next_claim_stamp(machines.values(), now_ms);
    let mut fixed = me.clone();
    if lost_subnet {
        fixed.subnet =
            lowest_free_subnet(machines.values(), capacity).ok_or(NoFreeSubnet { capacity })?;
        fixed.subnet_claimed_at_ms = stamp;
    }
    if lost_name {
        fixed.name = free_name(&me.name, machines.values());
        fixed.name_claimed_at_ms = stamp;
    }
    Ok(Some(fixed))
}

/// Every subnet index of the mesh is taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("all {capacity} subnet indices of the mesh are taken")]
pub struct NoFreeSubnet {
    pub capacity: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(id: &str, name: &str, subnet: u32, at: u64) -> Machine {
        Machine {
            id: id.into(),
            name: name.into(),
            name_claimed_at_ms: at,
            subnet,
            subnet_claimed_at_ms: at,
            ..Default::default()
        }
    }

    fn map(ms: Vec<Machine>) -> BTreeMap<String, Machine> {
        ms.into_iter().map(|m| (m.id.clone(), m)).collect()
    }

    #[test]
    fn a_claim_stamp_after_a_hostile_maximum_does_not_wrap() {
        let ms = [m("a", "pi", 1, u64::MAX)];
        assert_eq!(next_claim_stamp(&ms, 5), u64::MAX);
        assert_eq!(next_claim_stamp(&[m("a", "pi", 1, 7)], 5), 8);
    }

    #[test]
    fn older_claim_wins_and_ids_break_ties() {
        let ms = [
            m("b", "pi", 2, 10),
            m("a", "pi", 2, 20),
            m("c", "vps", 3, 5),
        ];
        let r = resolve(&ms);
        assert_eq!(r.name_losers, [("a".into(), "b".into())].into());
        assert_eq!(r.subnet_losers, [("a".into(), "b".into())].into());
        let ms = [m("b", "pi", 2, 10), m("a", "pi", 2, 10)];
        let r = resolve(&ms);
        assert_eq!(r.name_losers, [("b".into(), "a".into())].into());
    }

    #[test]
    fn loser_takes_lowest_free_values_with_a_later_stamp() {
        let ms = map(vec![
            m("a", "pi", 1, 10),
            m("b", "pi", 1, 20),
            m("c", "x", 2, 30),
        ]);
        assert_eq!(plan_fix("a", &ms, 255, 0).unwrap(), None);
        let fixed = plan_fix("b", &ms, 255, 0).unwrap().unwrap();
        assert_eq!(fixed.subnet, 3);
        assert_eq!(fixed.name, "pi-2");
        assert_eq!(fixed.subnet_claimed_at_ms, 31);
        assert_eq!(plan_fix("b", &ms, 2, 0), Err(NoFreeSubnet { capacity: 2 }));
    }

    #[test]
    fn free_names_stay_valid_labels() {
        let ms = [m("a", "web", 1, 0), m("b", "web-2", 2, 0)];
        assert_eq!(free_name("web", &ms), "web-3");
        assert_eq!(free_name("web-2", &ms), "web-3");
        assert_eq!(free_name("db", &ms), "db");
        let long = "a".repeat(63);
        let ms = [m("a", &long, 1, 0)];
        let renamed = free_name(&long, &ms);
        assert_eq!(renamed.len(), 63);
        assert!(renamed.ends_with("-2"));
        crate::model::validate_dns_label("name", &renamed).unwrap();
    }

    #[test]
    fn capacity_follows_the_mesh_prefix() {
        assert_eq!(subnet_capacity("10.210.0.0/16"), Some(255));
        assert_eq!(subnet_capacity("10.208.0.0/14"), Some(1023));
        assert_eq!(subnet_capacity("10.210.0.0/24"), None);
        assert_eq!(subnet_capacity("nonsense"), None);
    }

    /// One step of a random history: a machine joins in partition `side`, added by a member
    /// whose clock reads `clock`.
    #[derive(Debug, Clone)]
    struct Join {
        side: usize,
        name: usize,
        clock: u64,
    }

    fn history() -> impl Strategy<Value = (usize, Vec<Join>, Vec<u64>)> {
        (1usize..4).prop_flat_map(|sides| {
            (
                Just(sides),
                prop::collection::vec(
                    (0..sides, 0usize..4, 0u64..1_000).prop_map(|(side, name, clock)| Join {
                        side,
                        name,
                        clock,
                    }),
                    1..40,
                ),
                // Clocks used by the losers when they renumber, possibly skewed backwards.
                prop::collection::vec(0u64..2_000, 64),
            )
        })
    }

    proptest! {
        /// Concurrent joins in up to three partitions, then a merge: repeatedly letting every
        /// loser fix itself (each in its own partition, so fixes can collide again) ends with
        /// unique names and subnets, every machine computes the same winners whatever order it
        /// sees the machines in, and a settled winner never loses its values.
        #[test]
        fn concurrent_joins_converge_to_unique_values((sides, joins, fix_clocks) in history()) {
            const NAMES: [&str; 4] = ["pi", "vps", "nas", "edge"];
            let mut views: Vec<BTreeMap<String, Machine>> = vec![BTreeMap::new(); sides];
            for (i, j) in joins.iter().enumerate() {
                let view = &mut views[j.side];
                let subnet = lowest_free_subnet(view.values(), 255).unwrap();
                let name = free_name(NAMES[j.name], view.values());
                let id = format!("m{i:02}");
                view.insert(id.clone(), m(&id, &name, subnet, j.clock));
            }
            let mut merged: BTreeMap<String, Machine> =
                views.into_iter().flatten().collect();

            // The winners of the first merge keep their values to the end.
            let first = resolve(merged.values());
            let settled: Vec<Machine> = merged
                .values()
                .filter(|m| first.is_winner(&m.id))
                .cloned()
                .collect();

            let mut clocks = fix_clocks.into_iter().cycle();
            let mut rounds = 0;
            loop {
                let r = resolve(merged.values());
                // Order independence: the same verdict from a reversed listing.
                let reversed: Vec<&Machine> = merged.values().rev().collect();
                prop_assert_eq!(&r, &resolve(reversed));
                if r.is_clean() {
                    break;
                }
                rounds += 1;
                prop_assert!(rounds <= joins.len(), "no convergence after {} rounds", rounds);
                // Every loser fixes itself concurrently, seeing only the merged state.
                let losers: BTreeSet<&String> =
                    r.name_losers.keys().chain(r.subnet_losers.keys()).collect();
                let fixes: Vec<Machine> = losers
                    .into_iter()
                    .map(|id| plan_fix(id, &merged, 255, clocks.next().unwrap()).unwrap().unwrap())
                    .collect();
                for f in fixes {
                    merged.insert(f.id.clone(), f);
                }
            }
            let names: BTreeSet<&str> = merged.values().map(|m| m.name.as_str()).collect();
            let subnets: BTreeSet<u32> = merged.values().map(|m| m.subnet).collect();
            prop_assert_eq!(names.len(), merged.len());
            prop_assert_eq!(subnets.len(), merged.len());
            for s in settled {
                prop_assert_eq!(&merged[&s.id], &s);
            }
        }
    }
}

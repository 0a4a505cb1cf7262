//! Where a service's containers go. Pure: the caller reads the machines, their liveness and
//! the containers from the state, this decides.
//!
//! A machine is eligible when this machine sees it alive, if the spec names machines it is one
//! of them, and it matches every constraint of the spec (`node.labels.KEY == VALUE`,
//! `node.hostname != NAME`, `node.platform.arch == ARCH`: [`uncloud_common::constraint`]).
//! Replicas go one at a time to the eligible machine with the fewest
//! containers of this service, then the fewest containers in all, then the first by name (so
//! the same inputs always give the same plan). A global service wants one container on every
//! eligible machine.

use std::collections::{BTreeMap, BTreeSet};

use uncloud_common::constraint::{Constraint, Facts};
use uncloud_common::model::{Machine, ServiceSpec};

/// One machine as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub name: String,
    /// This machine sees it alive (not suspect, not down).
    pub alive: bool,
    /// Containers of every service on it.
    pub containers: usize,
    /// Containers of the service being placed on it.
    pub of_service: usize,
    /// Its CPU architecture (`uname -m`), which `node.platform.arch` matches.
    pub arch: String,
    /// Its labels (`uc machine label`), which constraints match.
    pub labels: BTreeMap<String, String>,
    /// `uc machine drain`ed: never eligible.
    pub drained: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("no machine named {0:?} in this network (see `uc machine ls`)")]
    UnknownMachine(String),
    #[error("no machine can take it: {0}")]
    NoMachine(String),
    #[error("placement constraint {0}")]
    BadConstraint(String),
    #[error("{0}")]
    NoMatch(String),
}

/// The candidates `spec` may run on, by name, or why there are none.
pub fn eligible<'a>(
    spec: &ServiceSpec,
    candidates: &'a [Candidate],
) -> Result<Vec<&'a Candidate>, PlacementError> {
    let mut wanted: BTreeSet<&str> = BTreeSet::new();
    for m in &spec.machines {
        let m = m.trim();
        let found = candidates.iter().find(|c| c.id == m || c.name == m);
        match found {
            Some(c) => {
                wanted.insert(&c.id);
            }
            None => return Err(PlacementError::UnknownMachine(m.to_string())),
        }
    }
    let constraints = spec
        .constraints
        .iter()
        .map(|c| Constraint::parse(c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(PlacementError::BadConstraint)?;
    let pinned =
        |c: &Candidate| !c.drained && (wanted.is_empty() || wanted.contains(c.id.as_str()));
    let allowed = |c: &Candidate| pinned(c) && constraints.iter().all(|k| k.matches(&c.facts()));
    let mut out: Vec<&Candidate> = candidates.iter().filter(|c| allowed(c)).collect();
    let drained: Vec<&str> = candidates
        .iter()
        .filter(|c| c.drained && (wanted.is_empty() || wanted.contains(c.id.as_str())))
        .map(|c| c.name.as_str())
        .collect();
    if out.is_empty() && !drained.is_empty() {
        return Err(PlacementError::NoMachine(format!(
            "{} {} drained (`uc machine enable NAME` takes containers again)",
            drained.join(", "),
            if drained.len() == 1 { "is" } else { "are" }
        )));
    }
    if out.is_empty() && !constraints.is_empty() {
        return Err(PlacementError::NoMatch(format!(
            "no machine{} matches {} (see `uc machine ls` and `uc machine label`)",
            if wanted.is_empty() {
                ""
            } else {
                " of those named"
            },
            spec.constraints.join(" and ")
        )));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    let down: Vec<&str> = out
        .iter()
        .filter(|c| !c.alive)
        .map(|c| c.name.as_str())
        .collect();
    out.retain(|c| c.alive);
    if out.is_empty() {
        return Err(PlacementError::NoMachine(if down.is_empty() {
            "the network has no machines".into()
        } else {
            format!(
                "{} {} not reachable from this machine",
                down.join(", "),
                if down.len() == 1 { "is" } else { "are" }
            )
        }));
    }
    Ok(out)
}

/// Machine ids for `more` new containers of a replicated service (a machine may get several).
pub fn spread(eligible: &[&Candidate], more: usize) -> Vec<String> {
    let mut load: Vec<(usize, usize, &str, &str)> = eligible
        .iter()
        .map(|c| (c.of_service, c.containers, c.name.as_str(), c.id.as_str()))
        .collect();
    let mut out = Vec::with_capacity(more);
    for _ in 0..more {
        let Some(best) = load.iter_mut().min() else {
            break;
        };
        out.push(best.3.to_string());
        best.0 += 1;
        best.1 += 1;
    }
    out
}

/// One container of the service being scaled down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub id: String,
    pub machine_id: String,
    pub created_at_ms: u64,
    /// Running as its machine last said; others go first.
    pub running: bool,
}

/// Which `fewer` containers to remove when scaling down: only on machines this machine sees
/// alive (others cannot be asked), one at a time from the machine with the most of the
/// service; there a container that is not running first, else the newest. So what stays runs,
/// spread as evenly as it can be.
pub fn shrink(placed: &[Placed], alive: &[&Candidate], fewer: usize) -> Vec<String> {
    let mut per_machine: std::collections::BTreeMap<&str, Vec<&Placed>> = Default::default();
    for p in placed {
        per_machine
            .entry(p.machine_id.as_str())
            .or_default()
            .push(p);
    }
    for list in per_machine.values_mut() {
        // Running and oldest first, so `pop` takes one that is not running, else the newest.
        list.sort_by(|a, b| {
            (!a.running, a.created_at_ms, &a.id).cmp(&(!b.running, b.created_at_ms, &b.id))
        });
    }
    let reachable = |m: &str| alive.iter().any(|c| c.id == m);
    let mut out = Vec::with_capacity(fewer);
    for _ in 0..fewer {
        let most = per_machine
            .iter()
            .filter(|(m, list)| reachable(m) && !list.is_empty())
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))
            .map(|(m, _)| *m);
        let Some(m) = most else { break };
        let victim = per_machine
            .get_mut(m)
            .and_then(Vec::pop)
            .expect("not empty");
        out.push(victim.id.clone());
    }
    out
}

/// Machine ids that lack their container of a global service.
pub fn global(eligible: &[&Candidate]) -> Vec<String> {
    eligible
        .iter()
        .filter(|c| c.of_service == 0)
        .map(|c| c.id.clone())
        .collect()
}

/// The candidates from the state: every machine, whether `liveness` (machine id -> `alive`,
/// `suspect`, `down`; this machine is always alive) says it is alive, and how many containers
/// it runs in all and of `service_id`.
pub fn candidates<'a>(
    machines: &BTreeMap<String, Machine>,
    liveness: &std::collections::HashMap<String, String>,
    own_id: &str,
    containers: impl Iterator<Item = (&'a str, &'a str)>,
    service_id: &str,
) -> Vec<Candidate> {
    let mut all: BTreeMap<&str, usize> = BTreeMap::new();
    let mut mine: BTreeMap<&str, usize> = BTreeMap::new();
    for (machine, service) in containers {
        *all.entry(machine).or_default() += 1;
        if service == service_id {
            *mine.entry(machine).or_default() += 1;
        }
    }
    machines
        .values()
        .map(|m| Candidate {
            id: m.id.clone(),
            name: m.name.clone(),
            alive: m.id == own_id || liveness.get(&m.id).is_some_and(|l| l == "alive"),
            containers: all.get(m.id.as_str()).copied().unwrap_or(0),
            of_service: mine.get(m.id.as_str()).copied().unwrap_or(0),
            arch: m.arch.clone(),
            labels: m.labels.clone(),
            drained: m.drained,
        })
        .collect()
}

impl Candidate {
    /// What constraints match.
    fn facts(&self) -> Facts<'_> {
        Facts {
            name: &self.name,
            arch: &self.arch,
            labels: &self.labels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, alive: bool, containers: usize, of_service: usize) -> Candidate {
        Candidate {
            id: format!("id-{name}"),
            name: name.into(),
            alive,
            containers,
            of_service,
            arch: "x86_64".into(),
            labels: BTreeMap::new(),
            drained: false,
        }
    }

    fn names(ids: &[String]) -> Vec<&str> {
        ids.iter().map(|i| i.trim_start_matches("id-")).collect()
    }

    #[test]
    fn replicas_go_to_the_fewest_of_the_service_then_the_least_loaded() {
        let all = [c("a", true, 5, 1), c("b", true, 0, 0), c("c", true, 2, 0)];
        let spec = ServiceSpec::default();
        let e = eligible(&spec, &all).unwrap();
        // b and c have none of the service; b is less loaded; then c; then all have one, and
        // the least loaded of all goes next.
        assert_eq!(names(&spread(&e, 4)), ["b", "c", "b", "c"]);
        assert_eq!(names(&spread(&e, 0)), Vec::<&str>::new());
    }

    #[test]
    fn more_replicas_than_machines_double_up_evenly() {
        let all = [c("a", true, 0, 0), c("b", true, 0, 0)];
        let e = eligible(&ServiceSpec::default(), &all).unwrap();
        assert_eq!(names(&spread(&e, 5)), ["a", "b", "a", "b", "a"]);
    }

    #[test]
    fn machines_that_are_not_alive_or_not_named_are_left_out() {
        let all = [c("a", true, 0, 0), c("b", false, 0, 0), c("c", true, 0, 0)];
        let e = eligible(&ServiceSpec::default(), &all).unwrap();
        assert_eq!(names(&spread(&e, 3)), ["a", "c", "a"]);
        let spec = ServiceSpec {
            machines: vec!["c".into(), "id-b".into()],
            ..Default::default()
        };
        let e = eligible(&spec, &all).unwrap();
        assert_eq!(names(&global(&e)), ["c"]);
    }

    #[test]
    fn why_nothing_can_be_placed_is_said() {
        let all = [c("a", false, 0, 0), c("b", false, 0, 0)];
        let spec = ServiceSpec {
            machines: vec!["b".into()],
            ..Default::default()
        };
        assert_eq!(
            eligible(&spec, &all).unwrap_err().to_string(),
            "no machine can take it: b is not reachable from this machine"
        );
        let spec = ServiceSpec {
            machines: vec!["zeta".into()],
            ..Default::default()
        };
        assert_eq!(
            eligible(&spec, &all).unwrap_err(),
            PlacementError::UnknownMachine("zeta".into())
        );
    }

    #[test]
    fn an_architecture_constraint_keeps_an_image_where_it_runs() {
        let mut all = [c("pi", true, 0, 0), c("vps", true, 0, 0)];
        all[0].arch = "aarch64".into();
        let spec = ServiceSpec {
            constraints: vec!["node.platform.arch==x86_64".into()],
            ..Default::default()
        };
        assert_eq!(names(&global(&eligible(&spec, &all).unwrap())), ["vps"]);
        all[1].arch = "aarch64".into();
        let err = eligible(&spec, &all).unwrap_err();
        assert!(
            err.to_string().contains("node.platform.arch==x86_64"),
            "{err}"
        );
    }

    #[test]
    fn constraints_keep_machines_whose_labels_and_names_match() {
        let mut all = [c("a", true, 0, 0), c("b", true, 0, 0), c("c", true, 0, 0)];
        all[0].labels.insert("disk".into(), "ssd".into());
        all[1].labels.insert("disk".into(), "ssd".into());
        let spec = ServiceSpec {
            constraints: vec!["node.labels.disk==ssd".into(), "node.hostname!=a".into()],
            ..Default::default()
        };
        let e = eligible(&spec, &all).unwrap();
        assert_eq!(e.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["b"]);
        let spec = ServiceSpec {
            constraints: vec!["node.labels.gpu==yes".into()],
            ..Default::default()
        };
        let err = eligible(&spec, &all).unwrap_err();
        assert!(matches!(err, PlacementError::NoMatch(_)), "{err}");
        assert!(err.to_string().contains("node.labels.gpu==yes"), "{err}");
        let spec = ServiceSpec {
            constraints: vec!["node.role==manager".into()],
            ..Default::default()
        };
        assert!(matches!(
            eligible(&spec, &all).unwrap_err(),
            PlacementError::BadConstraint(_)
        ));
    }

    #[test]
    fn a_drained_machine_is_never_eligible() {
        let mut all = [c("a", true, 0, 0), c("b", true, 0, 0)];
        all[0].drained = true;
        let spec = ServiceSpec::default();
        let e = eligible(&spec, &all).unwrap();
        assert_eq!(e.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["b"]);
        let pinned = ServiceSpec {
            machines: vec!["a".into()],
            ..Default::default()
        };
        let err = eligible(&pinned, &all).unwrap_err().to_string();
        assert!(err.contains("a is drained"), "{err}");
    }

    #[test]
    fn scaling_down_takes_the_newest_from_the_fullest_reachable_machine() {
        let p = |id: &str, m: &str, at: u64| Placed {
            id: id.into(),
            machine_id: format!("id-{m}"),
            created_at_ms: at,
            running: true,
        };
        let placed = [
            p("a1", "a", 1),
            p("a2", "a", 5),
            p("a3", "a", 3),
            p("b1", "b", 2),
            p("c1", "c", 1),
            p("c2", "c", 9),
        ];
        let all = [c("a", true, 3, 3), c("b", true, 1, 1), c("c", false, 2, 2)];
        let e = eligible(&ServiceSpec::default(), &all).unwrap();
        // a has the most (3): its newest, a2, then a3; then a and b have one each and c is not
        // reachable: a (first by id) gives a1, then b1; nothing is left to take.
        assert_eq!(shrink(&placed, &e, 2), ["a2", "a3"]);
        assert_eq!(shrink(&placed, &e, 9), ["a2", "a3", "a1", "b1"]);
        // One that is not running goes before any that is.
        let mut placed = placed.to_vec();
        placed[0].running = false;
        assert_eq!(shrink(&placed, &e, 1), ["a1"]);
    }

    #[test]
    fn a_global_service_fills_only_the_machines_without_one() {
        let all = [c("a", true, 3, 1), c("b", true, 0, 0), c("c", true, 1, 0)];
        let e = eligible(&ServiceSpec::default(), &all).unwrap();
        assert_eq!(names(&global(&e)), ["b", "c"]);
    }

    #[test]
    fn candidates_count_containers_and_take_liveness_from_the_state() {
        let mut machines = BTreeMap::new();
        for (id, name) in [("m1", "a"), ("m2", "b"), ("m3", "c")] {
            machines.insert(
                id.to_string(),
                Machine {
                    id: id.into(),
                    name: name.into(),
                    subnet: 1,
                    ..Default::default()
                },
            );
        }
        let liveness = std::collections::HashMap::from([
            ("m2".to_string(), "alive".to_string()),
            ("m3".to_string(), "suspect".to_string()),
        ]);
        let containers = [("m1", "web"), ("m1", "db"), ("m2", "web")];
        let got = candidates(&machines, &liveness, "m1", containers.into_iter(), "web");
        let got: Vec<(&str, bool, usize, usize)> = got
            .iter()
            .map(|c| (c.name.as_str(), c.alive, c.containers, c.of_service))
            .collect();
        assert_eq!(
            got,
            [("a", true, 2, 1), ("b", true, 1, 1), ("c", false, 0, 0)]
        );
    }
}

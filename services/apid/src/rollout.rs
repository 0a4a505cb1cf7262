//! Rolling updates, decided. Pure: the caller reads the service, its containers and the
//! machines, this says what to do in which order, and judges each new container.
//!
//! A container is *current* when it was made from a revision whose spec is the one wanted
//! (after a rollback, containers of the old revision number are current again). The plan keeps
//! current containers on machines the spec may use, replaces the others in place one at a
//! time, starts what is missing and removes what is left over, in that order, so a service
//! never has fewer ready containers than it needs while it is updated start-first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use uncloud_common::model::{Container, ContainerState, ServiceSpec};

use crate::placement::{self, Candidate};

/// Whether a replaced container stops before or after its successor is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    StartFirst,
    StopFirst,
}

impl Order {
    pub fn as_str(self) -> &'static str {
        match self {
            Order::StartFirst => "start-first",
            Order::StopFirst => "stop-first",
        }
    }
}

/// What forces stop-first on `spec`, if anything: a host port cannot be bound twice on one
/// machine, and a named volume of a service that has one container per machine would be
/// written by two at once.
fn stop_first_reason(spec: &ServiceSpec) -> Option<String> {
    if let Some(p) = spec.publish.first() {
        return Some(format!(
            "host port {p} can be bound by one container at a time"
        ));
    }
    let one_per_machine = spec.is_global() || spec.replicas <= 1;
    let named = spec
        .volumes
        .iter()
        .map(|v| v.split(':').next().unwrap_or_default())
        .find(|src| !src.is_empty() && !src.starts_with('/') && !src.starts_with('.'));
    match named {
        Some(v) if one_per_machine => Some(format!(
            "volume {v} is used by one container per machine, never two at once"
        )),
        _ => None,
    }
}

/// The order to update in: `requested` (`start-first`, `stop-first` or empty for the default,
/// start-first unless the spec forces stop-first).
pub fn order(requested: &str, spec: &ServiceSpec) -> Result<Order, String> {
    let forced = stop_first_reason(spec);
    match requested {
        "" => Ok(if forced.is_some() {
            Order::StopFirst
        } else {
            Order::StartFirst
        }),
        "stop-first" => Ok(Order::StopFirst),
        "start-first" => match forced {
            Some(why) => Err(format!(
                "start-first is not possible: {why}; use stop-first"
            )),
            None => Ok(Order::StartFirst),
        },
        other => Err(format!(
            "update order {other:?}: expected start-first or stop-first"
        )),
    }
}

/// One existing container of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub id: String,
    pub name: String,
    pub machine_id: String,
    /// Made from a revision with the wanted spec.
    pub current: bool,
    pub running: bool,
    pub created_at_ms: u64,
}

/// One step of an update, done in the order of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A container of the wanted spec replaces `old` on the same machine.
    Replace { old: String, machine_id: String },
    /// A new container on this machine.
    Start { machine_id: String },
    /// A container that is no longer wanted.
    Remove { container: String },
}

/// What updating needs to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Containers that are not current but on machines this one cannot reach: left alone.
    pub unreachable: Vec<Existing>,
}

/// The plan from the service's containers, the machines as placement sees them (every
/// machine, alive or not) and the machines the spec may use now (`eligible`).
pub fn plan(
    spec: &ServiceSpec,
    existing: &[Existing],
    candidates: &[Candidate],
    eligible: &[&Candidate],
) -> Plan {
    let alive = |m: &str| candidates.iter().any(|c| c.id == m && c.alive);
    let allowed: BTreeSet<&str> = eligible.iter().map(|c| c.id.as_str()).collect();
    let mut out = Plan::default();
    // Per allowed machine: its current and its old containers, the best first (running, then
    // oldest), so what is kept is what serves now.
    let mut by_machine: BTreeMap<&str, (Vec<&Existing>, Vec<&Existing>)> = BTreeMap::new();
    let mut away = Vec::new();
    for e in existing {
        if !alive(&e.machine_id) {
            if !e.current {
                out.unreachable.push(e.clone());
            }
            continue;
        }
        if !allowed.contains(e.machine_id.as_str()) {
            away.push(e);
            continue;
        }
        let slot = by_machine.entry(e.machine_id.as_str()).or_default();
        if e.current {
            slot.0.push(e);
        } else {
            slot.1.push(e);
        }
    }
    let best_first = |a: &&Existing, b: &&Existing| {
        (!a.running, a.created_at_ms, &a.id).cmp(&(!b.running, b.created_at_ms, &b.id))
    };
    for (current, old) in by_machine.values_mut() {
        current.sort_by(best_first);
        old.sort_by(best_first);
    }
    let mut removes: Vec<String> = away.iter().map(|e| e.id.clone()).collect();

    if spec.is_global() {
        for c in eligible {
            let (current, old) = by_machine.remove(c.id.as_str()).unwrap_or_default();
            let extra = if !current.is_empty() {
                current[1..].iter().chain(old.iter())
            } else if let Some(first) = old.first() {
                out.steps.push(Step::Replace {
                    old: first.id.clone(),
                    machine_id: c.id.clone(),
                });
                current[..0].iter().chain(old[1..].iter())
            } else {
                out.steps.push(Step::Start {
                    machine_id: c.id.clone(),
                });
                current[..0].iter().chain(old[..0].iter())
            };
            removes.extend(extra.map(|e| e.id.clone()));
        }
    } else {
        // Unreachable containers of the service still count: they run, and may come back.
        let elsewhere = existing.iter().filter(|e| !alive(&e.machine_id)).count();
        let want = (spec.replicas as usize).saturating_sub(elsewhere);
        // Keep current containers, spread: round by round one per machine.
        let mut kept = 0;
        let mut keep_sets: Vec<(&str, Vec<&Existing>, Vec<&Existing>)> = by_machine
            .iter()
            .map(|(m, (cur, old))| (*m, cur.clone(), old.clone()))
            .collect();
        let mut keep: BTreeMap<&str, usize> = BTreeMap::new();
        'keep: loop {
            let mut progressed = false;
            for (m, cur, _) in &keep_sets {
                let k = keep.entry(*m).or_default();
                if *k < cur.len() {
                    if kept == want {
                        break 'keep;
                    }
                    *k += 1;
                    kept += 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        // Then replace old containers in place, spread the same way.
        let mut replace: BTreeMap<&str, usize> = BTreeMap::new();
        let mut replaced = 0;
        'replace: loop {
            let mut progressed = false;
            // Machines with the fewest containers kept or replaced so far go first.
            keep_sets.sort_by_key(|(m, _, _)| {
                (
                    keep.get(m).copied().unwrap_or(0) + replace.get(m).copied().unwrap_or(0),
                    *m,
                )
            });
            for (m, _, old) in &keep_sets {
                let r = replace.entry(*m).or_default();
                if *r < old.len() {
                    if kept + replaced == want {
                        break 'replace;
                    }
                    *r += 1;
                    replaced += 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        let mut starts = Vec::new();
        let mut per_machine = BTreeMap::new();
        for (m, cur, old) in &keep_sets {
            let k = keep.get(m).copied().unwrap_or(0);
            let r = replace.get(m).copied().unwrap_or(0);
            per_machine.insert(*m, k + r);
            for e in &old[..r] {
                out.steps.push(Step::Replace {
                    old: e.id.clone(),
                    machine_id: e.machine_id.clone(),
                });
            }
            removes.extend(cur[k..].iter().map(|e| e.id.clone()));
            removes.extend(old[r..].iter().map(|e| e.id.clone()));
        }
        let missing = want.saturating_sub(kept + replaced);
        if missing > 0 {
            // New ones go where the service will have the fewest, as placement spreads them.
            let after: Vec<Candidate> = eligible
                .iter()
                .map(|c| Candidate {
                    of_service: per_machine.get(c.id.as_str()).copied().unwrap_or(0),
                    ..(*c).clone()
                })
                .collect();
            let refs: Vec<&Candidate> = after.iter().collect();
            starts = placement::spread(&refs, missing);
        }
        // Replacements in a stable order: by machine, then container.
        out.steps.sort_by(|a, b| step_key(a).cmp(&step_key(b)));
        out.steps.extend(
            starts
                .into_iter()
                .map(|machine_id| Step::Start { machine_id }),
        );
    }
    out.steps.extend(
        removes
            .into_iter()
            .map(|container| Step::Remove { container }),
    );
    out
}

fn step_key(s: &Step) -> (&str, &str) {
    match s {
        Step::Replace { old, machine_id } => (machine_id, old),
        Step::Start { machine_id } => (machine_id, ""),
        Step::Remove { container } => ("", container),
    }
}

/// Docker's health check defaults, used where the spec leaves a field 0.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 3;

/// How long a new container of `spec` may take to become ready: with a health check, its
/// start period and as many checks as it takes to be declared unhealthy, and a margin;
/// without one, the monitor period.
pub fn ready_deadline(spec: &ServiceSpec, monitor: Duration) -> Duration {
    match &spec.healthcheck {
        Some(h) => {
            let ms = |v: u64, d: Duration| {
                if v == 0 {
                    d
                } else {
                    Duration::from_millis(v)
                }
            };
            let retries = if h.retries == 0 {
                DEFAULT_RETRIES
            } else {
                h.retries
            };
            ms(h.start_period_ms, Duration::ZERO)
                + (ms(h.interval_ms, DEFAULT_INTERVAL) + ms(h.timeout_ms, DEFAULT_TIMEOUT))
                    * (retries + 1)
                + Duration::from_secs(2)
        }
        None => monitor,
    }
}

/// What a look at a new container says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Wait,
    Ready,
    Failed(String),
}

/// Judges a new container `elapsed` after it started: with a health check it is ready once
/// healthy; without one, once it kept running (never restarted) through the monitor period.
/// `first_start_ms` is when it started the first time it was seen running.
pub fn judge(
    c: &Container,
    has_healthcheck: bool,
    first_start_ms: u64,
    elapsed: Duration,
    deadline: Duration,
) -> Verdict {
    match c.state {
        ContainerState::Exited | ContainerState::Dead => {
            return Verdict::Failed("it exited".into());
        }
        ContainerState::Restarting => {
            return Verdict::Failed("it exited and Docker is restarting it".into());
        }
        _ => {}
    }
    if c.state == ContainerState::Running
        && first_start_ms != 0
        && c.started_at_ms != first_start_ms
    {
        return Verdict::Failed("it exited and Docker restarted it".into());
    }
    if has_healthcheck {
        if c.healthy && c.state == ContainerState::Running {
            return Verdict::Ready;
        }
        if elapsed >= deadline {
            return Verdict::Failed(format!(
                "it was not healthy within {} s",
                deadline.as_secs()
            ));
        }
        return Verdict::Wait;
    }
    if elapsed >= deadline {
        if c.state == ContainerState::Running {
            return Verdict::Ready;
        }
        return Verdict::Failed(format!("it was not running after {} s", deadline.as_secs()));
    }
    Verdict::Wait
}

#[cfg(test)]
mod tests {
    use super::*;
    use uncloud_common::model::{HealthCheck, MODE_GLOBAL};

    fn cand(name: &str, alive: bool) -> Candidate {
        Candidate {
            id: name.into(),
            name: name.into(),
            alive,
            containers: 0,
            of_service: 0,
            arch: "x86_64".into(),
            labels: Default::default(),
            drained: false,
        }
    }

    fn e(id: &str, machine: &str, current: bool) -> Existing {
        Existing {
            id: id.into(),
            name: id.into(),
            machine_id: machine.into(),
            current,
            running: true,
            created_at_ms: 0,
        }
    }

    fn spec(replicas: u32) -> ServiceSpec {
        ServiceSpec {
            image: "busybox".into(),
            replicas,
            ..Default::default()
        }
    }

    fn run(spec: &ServiceSpec, existing: &[Existing], machines: &[Candidate]) -> Plan {
        let eligible = placement::eligible(spec, machines).unwrap();
        plan(spec, existing, machines, &eligible)
    }

    #[test]
    fn old_containers_are_replaced_in_place_one_by_one_and_current_ones_kept() {
        let machines = [cand("a", true), cand("b", true), cand("c", true)];
        let existing = [e("1", "a", false), e("2", "b", true), e("3", "c", false)];
        let p = run(&spec(3), &existing, &machines);
        assert_eq!(
            p.steps,
            [
                Step::Replace {
                    old: "1".into(),
                    machine_id: "a".into()
                },
                Step::Replace {
                    old: "3".into(),
                    machine_id: "c".into()
                },
            ]
        );
        // Nothing to do once every container is current.
        let done = [e("4", "a", true), e("2", "b", true), e("5", "c", true)];
        assert_eq!(run(&spec(3), &done, &machines), Plan::default());
    }

    #[test]
    fn a_changed_replica_count_starts_or_removes_after_the_replacements() {
        let machines = [cand("a", true), cand("b", true), cand("c", true)];
        let existing = [e("1", "a", false), e("2", "b", false)];
        let p = run(&spec(3), &existing, &machines);
        assert_eq!(
            p.steps[2],
            Step::Start {
                machine_id: "c".into()
            }
        );
        assert_eq!(p.steps.len(), 3);
        // Fewer: old containers beyond the count go rather than being replaced.
        let existing = [e("1", "a", false), e("2", "b", false), e("3", "c", true)];
        let p = run(&spec(1), &existing, &machines);
        assert_eq!(
            p.steps,
            [
                Step::Remove {
                    container: "1".into()
                },
                Step::Remove {
                    container: "2".into()
                }
            ]
        );
    }

    #[test]
    fn containers_on_machines_the_spec_no_longer_allows_move() {
        let machines = [cand("a", true), cand("b", true)];
        let mut s = spec(2);
        s.machines = vec!["b".into()];
        let existing = [e("1", "a", false), e("2", "b", false)];
        let p = run(&s, &existing, &machines);
        assert_eq!(
            p.steps,
            [
                Step::Replace {
                    old: "2".into(),
                    machine_id: "b".into()
                },
                Step::Start {
                    machine_id: "b".into()
                },
                Step::Remove {
                    container: "1".into()
                },
            ]
        );
    }

    #[test]
    fn containers_on_unreachable_machines_are_left_and_still_count() {
        let machines = [cand("a", true), cand("b", false)];
        let existing = [e("1", "a", false), e("2", "b", false)];
        let p = run(&spec(2), &existing, &machines);
        assert_eq!(
            p.steps,
            [Step::Replace {
                old: "1".into(),
                machine_id: "a".into()
            }]
        );
        assert_eq!(p.unreachable.len(), 1);
        assert_eq!(p.unreachable[0].id, "2");
    }

    #[test]
    fn a_global_service_gets_one_current_container_per_machine() {
        let machines = [cand("a", true), cand("b", true), cand("c", true)];
        let mut s = spec(0);
        s.mode = MODE_GLOBAL.into();
        let existing = [e("1", "a", false), e("2", "a", false), e("3", "b", true)];
        let p = run(&s, &existing, &machines);
        assert_eq!(
            p.steps,
            [
                Step::Replace {
                    old: "1".into(),
                    machine_id: "a".into()
                },
                Step::Start {
                    machine_id: "c".into()
                },
                Step::Remove {
                    container: "2".into()
                },
            ]
        );
    }

    #[test]
    fn stop_first_when_host_ports_or_a_shared_volume_force_it() {
        assert_eq!(order("", &spec(3)), Ok(Order::StartFirst));
        let mut ports = spec(3);
        ports.publish = vec!["8080:80".into()];
        assert_eq!(order("", &ports), Ok(Order::StopFirst));
        assert!(order("start-first", &ports)
            .unwrap_err()
            .contains("8080:80"));
        let mut db = spec(1);
        db.volumes = vec!["shop_data:/var/lib/db".into()];
        assert_eq!(order("", &db), Ok(Order::StopFirst));
        // Several replicas with a volume: each machine's volume is its own, start-first is fine
        // only when they are not one per machine; binds are the operator's business.
        db.replicas = 3;
        assert_eq!(order("", &db), Ok(Order::StartFirst));
        let mut bind = spec(1);
        bind.volumes = vec!["/srv:/srv".into()];
        assert_eq!(order("", &bind), Ok(Order::StartFirst));
        assert_eq!(order("stop-first", &spec(3)), Ok(Order::StopFirst));
        assert!(order("blue-green", &spec(3)).is_err());
    }

    fn container(state: ContainerState, healthy: bool, started: u64) -> Container {
        Container {
            state,
            healthy,
            started_at_ms: started,
            ..Default::default()
        }
    }

    #[test]
    fn a_container_without_a_health_check_is_ready_after_running_through_the_monitor() {
        let d = Duration::from_secs(5);
        let running = container(ContainerState::Running, true, 100);
        assert_eq!(
            judge(&running, false, 100, Duration::from_secs(1), d),
            Verdict::Wait
        );
        assert_eq!(judge(&running, false, 100, d, d), Verdict::Ready);
        // Restarted by Docker in between: it crashed.
        let again = container(ContainerState::Running, true, 900);
        assert!(matches!(
            judge(&again, false, 100, Duration::from_secs(3), d),
            Verdict::Failed(_)
        ));
        let exited = container(ContainerState::Exited, false, 100);
        assert!(matches!(
            judge(&exited, false, 100, Duration::from_secs(1), d),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn a_container_with_a_health_check_must_become_healthy_in_time() {
        let s = ServiceSpec {
            healthcheck: Some(HealthCheck {
                test: vec!["CMD".into(), "true".into()],
                interval_ms: 1000,
                timeout_ms: 1000,
                retries: 2,
                start_period_ms: 0,
            }),
            ..spec(1)
        };
        let deadline = ready_deadline(&s, Duration::from_secs(5));
        assert_eq!(deadline, Duration::from_secs(8));
        let starting = container(ContainerState::Running, false, 100);
        assert_eq!(
            judge(&starting, true, 100, Duration::from_secs(1), deadline),
            Verdict::Wait
        );
        assert!(matches!(
            judge(&starting, true, 100, deadline, deadline),
            Verdict::Failed(m) if m.contains("not healthy within 8 s")
        ));
        let healthy = container(ContainerState::Running, true, 100);
        assert_eq!(
            judge(&healthy, true, 100, Duration::from_secs(1), deadline),
            Verdict::Ready
        );
        // Defaults where the spec says 0, as Docker's.
        let mut d = s.clone();
        d.healthcheck = Some(HealthCheck {
            test: vec!["CMD".into(), "true".into()],
            ..Default::default()
        });
        assert_eq!(
            ready_deadline(&d, Duration::ZERO),
            Duration::from_secs(60 * 4 + 2)
        );
    }
}

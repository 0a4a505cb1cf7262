//! Turning the gossip failure detector's view into alive / suspect / down.
//!
//! chitchat says live or dead. Between the two, a machine whose heartbeat has stopped advancing
//! for a while is still "live" until its phi value crosses the threshold; we call it `suspect`
//! so DNS and ingress can prefer other containers before it is declared dead. Pure logic: the
//! caller feeds observations and the time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use uncloud_common::liveness::Liveness;

/// What the failure detector says about one machine at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub machine_id: String,
    pub heartbeat: u64,
    pub live: bool,
    /// The failure detector's current timeout for this machine (how long after the last
    /// heartbeat it would declare it dead), if it has one.
    pub detection_timeout: Option<Duration>,
}

#[derive(Debug)]
struct Seen {
    heartbeat: u64,
    advanced_at: Instant,
    status: Liveness,
}

/// Remembers when each machine's heartbeat last advanced.
#[derive(Debug)]
pub struct LivenessTracker {
    suspect_after: Duration,
    seen: BTreeMap<String, Seen>,
}

impl LivenessTracker {
    pub fn new(suspect_after: Duration) -> Self {
        LivenessTracker {
            suspect_after,
            seen: BTreeMap::new(),
        }
    }

    /// Folds in one round of observations; returns the machines whose status changed.
    pub fn observe(
        &mut self,
        observations: impl IntoIterator<Item = Observation>,
        now: Instant,
    ) -> Vec<(String, Liveness)> {
        let mut changed = Vec::new();
        let mut present = std::collections::BTreeSet::new();
        for o in observations {
            present.insert(o.machine_id.clone());
            let suspect_after = self.suspect_threshold(&o);
            let seen = self.seen.entry(o.machine_id.clone()).or_insert(Seen {
                heartbeat: o.heartbeat,
                advanced_at: now,
                status: Liveness::Down,
            });
            if o.heartbeat != seen.heartbeat {
                seen.heartbeat = o.heartbeat;
                seen.advanced_at = now;
            }
            let status = if !o.live {
                Liveness::Down
            } else if now.duration_since(seen.advanced_at) > suspect_after {
                Liveness::Suspect
            } else {
                Liveness::Alive
            };
            if status != seen.status {
                seen.status = status;
                changed.push((o.machine_id, status));
            }
        }
        // Machines the detector forgot entirely are down.
        for (id, seen) in &mut self.seen {
            if !present.contains(id) && seen.status != Liveness::Down {
                seen.status = Liveness::Down;
                changed.push((id.clone(), Liveness::Down));
            }
        }
        // Bounded by what gossip knows now: a forgotten machine is down (said above) and no
        // longer remembered; ids that come and go never pile up.
        self.seen
            .retain(|id, s| present.contains(id) || s.status != Liveness::Down);
        changed
    }

    /// Suspect after half the detector's timeout, and never sooner than the configured floor:
    /// heartbeats of a large network arrive in bursts a few gossip rounds apart.
    fn suspect_threshold(&self, o: &Observation) -> Duration {
        o.detection_timeout
            .map_or(self.suspect_after, |t| (t / 2).max(self.suspect_after))
    }

    pub fn all(&self) -> BTreeMap<String, Liveness> {
        self.seen
            .iter()
            .map(|(id, s)| (id.clone(), s.status))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(id: &str, heartbeat: u64, live: bool) -> Observation {
        Observation {
            machine_id: id.into(),
            heartbeat,
            live,
            detection_timeout: None,
        }
    }

    #[test]
    fn a_slow_detector_timeout_delays_suspicion() {
        let t0 = Instant::now();
        let mut t = LivenessTracker::new(Duration::from_secs(1));
        let o = |hb| Observation {
            detection_timeout: Some(Duration::from_secs(10)),
            ..obs("b", hb, true)
        };
        t.observe([o(1)], t0);
        assert!(t.observe([o(1)], t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(
            t.observe([o(1)], t0 + Duration::from_secs(6)),
            vec![("b".into(), Liveness::Suspect)]
        );
    }

    #[test]
    fn alive_then_suspect_then_down_then_back() {
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        let mut t = LivenessTracker::new(Duration::from_secs(3));
        assert!(!t.all().contains_key("b"));
        assert_eq!(
            t.observe([obs("b", 1, true)], s(0)),
            vec![("b".into(), Liveness::Alive)]
        );
        assert!(t.observe([obs("b", 2, true)], s(1000)).is_empty());
        // Heartbeat stalls: still live for chitchat, suspect for us after 3 s.
        assert!(t.observe([obs("b", 2, true)], s(3500)).is_empty());
        assert_eq!(
            t.observe([obs("b", 2, true)], s(4500)),
            vec![("b".into(), Liveness::Suspect)]
        );
        assert_eq!(
            t.observe([obs("b", 2, false)], s(9000)),
            vec![("b".into(), Liveness::Down)]
        );
        assert_eq!(
            t.observe([obs("b", 3, true)], s(9500)),
            vec![("b".into(), Liveness::Alive)]
        );
        // Forgotten by the detector: down.
        assert_eq!(t.observe([], s(9600)), vec![("b".into(), Liveness::Down)]);
        // ...and no longer remembered (callers add machines of the state as down).
        assert!(!t.all().contains_key("b"));
        assert!(t.observe([], s(9700)).is_empty());
    }

    #[test]
    fn ids_that_come_and_go_do_not_pile_up() {
        let t0 = Instant::now();
        let mut t = LivenessTracker::new(Duration::from_secs(3));
        for i in 0..1000u64 {
            t.observe([obs(&format!("forged-{i}"), 1, true)], t0);
        }
        assert_eq!(t.all().len(), 1);
        t.observe([], t0);
        assert!(t.all().is_empty());
    }
}

//! Draining: a running container about to be removed first leaves its service's addresses.
//!
//! Removing a container at once breaks the connections that every machine's virtual address
//! and DNS answers still send to it until the state without it reaches them. So
//! [`crate::engine::Local::remove`] marks a running container draining (the mirror writes
//! `draining: true` into its record: dnsd stops naming it and balancing to it, ingress stops
//! routing to it), waits the drain period for that to reach every machine while requests
//! already made to it finish, and only then removes it.
//!
//! The shim is the only writer of its machine's records, so the mark lives here, in memory,
//! and the mirror applies it to every record it writes; a shim restart in the middle forgets
//! it, and the container is then removed without the rest of its drain.
//!
//! Ingress confirms: each ingress machine lists in its machine entry the draining containers
//! it sends nothing to any more, none in flight either (`Machine::ingress_released`). After
//! the drain period the shim waits ([`IngressWait`]) until every ingress machine it reaches
//! lists the container, for at most `drain_timeout_ms`; an ingress machine it does not reach
//! sends nothing there anyway.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use uncloud_common::dbus::StateProxy;
use uncloud_common::model::{Kind, Machine};

/// The containers (full ids) being drained on this machine, shared by the shim's APIs and
/// its mirror.
#[derive(Clone, Default)]
pub struct Draining {
    ids: Arc<Mutex<BTreeSet<String>>>,
    changed: Arc<Notify>,
}

/// Ends a container's drain when dropped.
pub struct Drain {
    draining: Draining,
    id: String,
}

impl Draining {
    /// Marks container `id` draining until the returned guard drops, and wakes the mirror.
    pub fn start(&self, id: &str) -> Drain {
        self.ids.lock().unwrap().insert(id.to_string());
        self.changed.notify_one();
        Drain {
            draining: self.clone(),
            id: id.to_string(),
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.lock().unwrap().contains(id)
    }

    pub fn ids(&self) -> Vec<String> {
        self.ids.lock().unwrap().iter().cloned().collect()
    }

    /// Resolves when a drain started since the last call.
    pub async fn started(&self) {
        self.changed.notified().await
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.draining.ids.lock().unwrap().remove(&self.id);
    }
}

/// The role of machines that serve ingress.
const INGRESS_ROLE: &str = "ingress";

/// The ingress machines (names) that still hold container `id`: those with the ingress role
/// that this machine (`me`) reaches and that have not listed it as released.
pub fn holders(
    machines: &BTreeMap<String, Machine>,
    liveness: &HashMap<String, String>,
    me: &str,
    id: &str,
) -> Vec<String> {
    machines
        .values()
        .filter(|m| m.roles.iter().any(|r| r == INGRESS_ROLE))
        .filter(|m| {
            m.id == me
                || liveness
                    .get(&m.id)
                    .is_some_and(|l| l == "alive" || l == "suspect")
        })
        .filter(|m| !m.ingress_released.iter().any(|r| r == id))
        .map(|m| m.name.clone())
        .collect()
}

/// Waiting for the ingress machines to let go of a draining container.
#[derive(Clone)]
pub struct IngressWait {
    pub state: StateProxy<'static>,
    /// The longest wait.
    pub timeout: Duration,
}

/// How often the state is read again while waiting.
const POLL: Duration = Duration::from_millis(100);

impl IngressWait {
    /// Returns once every ingress machine this machine reaches has let go of container `id`,
    /// or after the timeout (logged, with who still held it).
    pub async fn until_released(&self, me: &str, id: &str, name: &str) {
        let start = Instant::now();
        loop {
            let held = match self.holding(me, id).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(container = %name, error = %e, "cannot read the state to learn whether ingress let go; removing");
                    return;
                }
            };
            if held.is_empty() {
                if start.elapsed() > POLL {
                    tracing::info!(container = %name, waited_ms = start.elapsed().as_millis() as u64, "every ingress machine let go");
                }
                return;
            }
            if start.elapsed() >= self.timeout {
                tracing::warn!(container = %name, still = ?held, timeout_ms = self.timeout.as_millis() as u64,
                    "ingress machines did not let go in time; removing anyway");
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn holding(&self, me: &str, id: &str) -> Result<Vec<String>, String> {
        let machines: BTreeMap<String, Machine> =
            uncloud_common::state_follow::fetch_all(&self.state, Kind::Machines)
                .await
                .map_err(|e| e.to_string())?;
        let liveness = self.state.liveness().await.map_err(|e| e.to_string())?;
        Ok(holders(&machines, &liveness, me, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reachable_ingress_machines_that_still_list_nothing_hold_a_container() {
        let m = |id: &str, ingress: bool, released: &[&str]| Machine {
            id: id.into(),
            name: format!("n-{id}"),
            roles: if ingress {
                vec!["ingress".into()]
            } else {
                vec![]
            },
            ingress_released: released.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let machines: BTreeMap<String, Machine> = [
            m("me", true, &[]),
            m("a", true, &["c1"]),
            m("b", true, &[]),
            m("c", false, &[]),
            m("d", true, &[]),
        ]
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
        let liveness: HashMap<String, String> = [
            ("a", "alive"),
            ("b", "suspect"),
            ("c", "alive"),
            ("d", "down"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        // This machine's own ingress and b still hold c1; d is cut off; c serves no ingress.
        assert_eq!(holders(&machines, &liveness, "me", "c1"), ["n-b", "n-me"]);
        assert_eq!(
            holders(&machines, &liveness, "me", "c2"),
            ["n-a", "n-b", "n-me"]
        );
        let none: BTreeMap<String, Machine> = BTreeMap::new();
        assert!(holders(&none, &liveness, "me", "c1").is_empty());
    }

    #[tokio::test]
    async fn a_drain_lasts_as_long_as_its_guard_and_wakes_the_mirror() {
        let d = Draining::default();
        let guard = d.start("abc");
        assert!(d.contains("abc"));
        assert_eq!(d.ids(), ["abc"]);
        // The wake-up is kept for a mirror that was busy when the drain started.
        tokio::time::timeout(std::time::Duration::from_secs(1), d.started())
            .await
            .expect("woken");
        drop(guard);
        assert!(!d.contains("abc"));
    }
}

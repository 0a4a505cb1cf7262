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

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

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

#[cfg(test)]
mod tests {
    use super::*;

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

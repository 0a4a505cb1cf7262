//! The sync workers, one per known peer: which exist, which are live, and waking them.
//!
//! Only bookkeeping: what a worker runs is given by the caller (`crate::sync::update_peers`),
//! so this module (and [`crate::replica`], which holds it) needs nothing of sync sessions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio::task::JoinHandle;

/// The sync workers, one per known peer.
pub(crate) struct Peers {
    workers: Mutex<HashMap<String, PeerWorker>>,
    /// Sessions this machine's workers are running right now.
    running: AtomicUsize,
    /// Sessions allowed to exchange at once (see [`Peers::slot`]).
    slots: Semaphore,
}

/// Sessions of one machine that exchange messages at once.
///
/// Unbounded, a burst of writes woke a session to every peer per write; on a busy machine they
/// queued behind the document lock, and when a partition healed, the backlog and every
/// machine's pull moved the same changes between the same machines many times over (a healed
/// 50-machine network spent seconds of CPU on copies it already had). Waiting for a slot,
/// wake-ups coalesce and a session starts from what the machine holds by then.
pub(crate) const SESSION_SLOTS: usize = 4;

/// Peers pulled from at most per half gossip round, when several are ahead; also the number
/// of running sessions past which a machine counts as busy (no pulls, no anti-entropy).
pub(crate) const MAX_PULLS: usize = 2;

/// Longest wait for a slot: past it a session runs anyway, so peers that stopped answering
/// (each holding a slot until its deadline) never hold up the rest for long.
pub(crate) const SLOT_WAIT: Duration = Duration::from_secs(2);

impl Default for Peers {
    fn default() -> Self {
        Peers {
            workers: Mutex::default(),
            running: AtomicUsize::default(),
            slots: Semaphore::new(SESSION_SLOTS),
        }
    }
}

/// Counts one running session for as long as it lives.
pub(crate) struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct PeerWorker {
    addr: SocketAddr,
    /// Whether the failure detector calls the peer live; only live peers get pushes and
    /// anti-entropy sessions.
    live: Arc<AtomicBool>,
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Peers {
    /// Marks a session as running until the returned guard drops.
    pub(crate) fn session_started(&self) -> Running<'_> {
        self.running.fetch_add(1, Ordering::Relaxed);
        Running(&self.running)
    }

    /// Waits for one of the [`SESSION_SLOTS`], at most [`SLOT_WAIT`]; the slot is held until
    /// the returned permit drops (`None`: the wait timed out, run without one).
    pub(crate) async fn slot(&self) -> Option<SemaphorePermit<'_>> {
        tokio::time::timeout(SLOT_WAIT, self.slots.acquire())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Sessions this machine's workers are running right now.
    pub(crate) fn sessions_running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Whether [`MAX_PULLS`] sessions are running (or waiting for a slot) already.
    pub(crate) fn busy(&self) -> bool {
        self.sessions_running() >= MAX_PULLS
    }

    /// Makes the worker set match `known` (machine id -> sync address, live): no worker for
    /// a machine `removed` says is gone, a new one from `spawn` (id, address, its wake-up) for
    /// a machine without one.
    pub(crate) fn update(
        &self,
        known: &HashMap<String, (SocketAddr, bool)>,
        removed: impl Fn(&str) -> bool,
        spawn: impl Fn(&str, SocketAddr, Arc<Notify>) -> JoinHandle<()>,
    ) {
        let mut workers = self.workers.lock().unwrap();
        workers.retain(|id, w| {
            let keep = known.get(id).map(|(addr, _)| addr) == Some(&w.addr);
            if !keep {
                w.task.abort();
            }
            keep
        });
        for (id, (addr, live)) in known {
            if removed(id) {
                if let Some(w) = workers.remove(id) {
                    w.task.abort();
                }
                continue;
            }
            if let Some(w) = workers.get(id) {
                // Back from the dead, it is not synced with at once: each side pulls what it
                // lacks once gossip shows the other's heads, a few machines at a time.
                w.live.store(*live, Ordering::Relaxed);
                continue;
            }
            let wake = Arc::new(Notify::new());
            let live_flag = Arc::new(AtomicBool::new(*live));
            let task = spawn(id, *addr, wake.clone());
            if *live {
                // A new peer is synced at once: it may have missed everything.
                wake.notify_one();
            }
            workers.insert(
                id.clone(),
                PeerWorker {
                    addr: *addr,
                    live: live_flag,
                    wake,
                    task,
                },
            );
        }
    }

    /// Wakes one peer's worker, live or not.
    pub(crate) fn wake(&self, id: &str) {
        if let Some(w) = self.workers.lock().unwrap().get(id) {
            w.wake.notify_one();
        }
    }

    /// Wakes the worker of every live peer.
    pub(crate) fn push_all(&self) {
        for w in self.workers.lock().unwrap().values() {
            if w.live.load(Ordering::Relaxed) {
                w.wake.notify_one();
            }
        }
    }

    /// Ids of the live peers.
    pub(crate) fn live_ids(&self) -> Vec<String> {
        let workers = self.workers.lock().unwrap();
        workers
            .iter()
            .filter(|(_, w)| w.live.load(Ordering::Relaxed))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(crate) fn clear(&self) {
        for (_, w) in self.workers.lock().unwrap().drain() {
            w.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_most_the_slots_exchange_at_once_and_a_freed_slot_goes_to_the_next() {
        let peers = Peers::default();
        let mut held = Vec::new();
        for _ in 0..SESSION_SLOTS {
            held.push(peers.slot().await.expect("a free slot is given at once"));
        }
        let short = Duration::from_millis(100);
        assert!(
            tokio::time::timeout(short, peers.slot()).await.is_err(),
            "a session beyond the slots must wait"
        );
        held.pop();
        let next = tokio::time::timeout(short, peers.slot()).await;
        assert!(
            matches!(next, Ok(Some(_))),
            "a freed slot goes to the next session"
        );
    }
}

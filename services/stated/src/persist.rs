//! The store writer: one thread that makes document changes durable, in order.
//!
//! Every change (local or merged from a peer) is handed over as an incremental blob while the
//! document lock is held, so blobs arrive here in document order. The thread appends whatever
//! has queued up in one redb transaction (group commit: one fsync for many writes), then
//! acknowledges each waiting writer. A caller is told "done" only after its change is on disk.
//! When enough has been appended, the thread replaces it all with one snapshot.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;
use uncloud_docstore::Store;

/// Result of making a change durable; the error is the store's message.
pub type Ack = Result<(), String>;

struct Job {
    blob: Vec<u8>,
    ack: Option<oneshot::Sender<Ack>>,
}

/// When to fold appended entries into a snapshot.
#[derive(Debug, Clone, Copy)]
pub struct CompactionPolicy {
    pub after_entries: u64,
    pub after_bytes: u64,
}

/// Handle to the writer thread. Dropping it lets the thread drain the queue and exit.
pub struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread. `snapshot` returns `Automerge::save()` of the current document.
    pub fn start(
        store: Store,
        policy: CompactionPolicy,
        snapshot: Arc<dyn Fn() -> Vec<u8> + Send + Sync>,
    ) -> Writer {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("stated-persist".into())
            .spawn(move || run(store, rx, policy, snapshot))
            .expect("spawning a thread");
        Writer {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Queues a blob; the returned receiver resolves once it is durable.
    pub fn submit(&self, blob: Vec<u8>) -> oneshot::Receiver<Ack> {
        let (ack, rx) = oneshot::channel();
        let job = Job {
            blob,
            ack: Some(ack),
        };
        if let Some(tx) = &self.tx {
            if let Err(mpsc::SendError(job)) = tx.send(job) {
                if let Some(ack) = job.ack {
                    let _ = ack.send(Err("the store writer has stopped".into()));
                }
            }
        }
        rx
    }

    /// Stops accepting blobs and waits until every queued one is written.
    pub fn finish(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.finish();
    }
}

fn run(
    mut store: Store,
    rx: mpsc::Receiver<Job>,
    policy: CompactionPolicy,
    snapshot: Arc<dyn Fn() -> Vec<u8> + Send + Sync>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let blobs: Vec<Vec<u8>> = batch
            .iter_mut()
            .map(|j| std::mem::take(&mut j.blob))
            .collect();
        let result = store.append(&blobs).map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "could not make {} change(s) durable", blobs.len());
        }
        for job in batch {
            if let Some(ack) = job.ack {
                let _ = ack.send(result.clone());
            }
        }
        if result.is_ok()
            && (store.pending_entries() >= policy.after_entries
                || store.pending_bytes() >= policy.after_bytes)
        {
            // Everything appended so far is already in the document, so the snapshot covers it.
            let snap = snapshot();
            match store.compact(&snap) {
                Ok(()) => tracing::debug!(bytes = snap.len(), "compacted the store"),
                Err(e) => tracing::error!(error = %e, "compaction failed; entries kept"),
            }
        }
    }
}

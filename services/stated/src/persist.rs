//! The store writer: one thread that makes document changes durable, in order, and the
//! container tables' rows beside them (in their own file, [`uncloud_docstore::rows`]).
//!
//! Every change (local or merged from a peer) is handed over as an incremental blob while the
//! document lock is held, so blobs arrive here in document order. The thread appends whatever
//! has queued up in one redb transaction (group commit: one fsync for many writes), then
//! acknowledges each waiting writer. A caller is told "done" only after its change is on disk.
//! When enough has been appended, the thread replaces it all with one snapshot.
//!
//! A failed write (disk full, I/O error) is answered with an error, and the store is then
//! behind the document: appending later changes would store blobs that depend on the lost one
//! and do not load after a restart. So after a failure the writer reopens the store and writes
//! a whole snapshot instead (on the next change, or by itself every few seconds); until that
//! succeeds every change is refused, and nothing that depends on a lost change is
//! acknowledged. The row store recovers the same way: after a failed write it is rewritten
//! whole from the tables in memory.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;
use uncloud_docstore::rows::{RowStore, RowWrite};
use uncloud_docstore::Store;

/// Result of making a change durable; the error is the store's message.
pub type Ack = Result<(), String>;

struct Job {
    blob: Vec<u8>,
    rows: Vec<RowWrite>,
    ack: Option<oneshot::Sender<Ack>>,
}

/// Where the writer reads everything there is, to write it whole after a failure or when
/// compacting.
#[derive(Clone)]
pub struct Sources {
    /// `Automerge::save()` of the current document.
    pub doc: Arc<dyn Fn() -> Vec<u8> + Send + Sync>,
    /// Every row of the container tables.
    pub rows: Arc<dyn Fn() -> Vec<RowWrite> + Send + Sync>,
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
    /// Starts the thread.
    pub fn start(
        store: Store,
        rows: RowStore,
        policy: CompactionPolicy,
        sources: Sources,
    ) -> Writer {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("stated-persist".into())
            .spawn(move || run(store, rows, rx, policy, sources))
            .expect("spawning a thread");
        Writer {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Queues a blob; the returned receiver resolves once it is durable.
    pub fn submit(&self, blob: Vec<u8>) -> oneshot::Receiver<Ack> {
        self.submit_job(blob, Vec::new())
    }

    /// Queues writes of table rows; the returned receiver resolves once they are durable.
    pub fn submit_rows(&self, rows: Vec<RowWrite>) -> oneshot::Receiver<Ack> {
        self.submit_job(Vec::new(), rows)
    }

    fn submit_job(&self, blob: Vec<u8>, rows: Vec<RowWrite>) -> oneshot::Receiver<Ack> {
        let (ack, rx) = oneshot::channel();
        let job = Job {
            blob,
            rows,
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

    /// Whether the writer thread is still there to take blobs.
    pub fn is_running(&self) -> bool {
        self.tx.is_some() && self.thread.as_ref().is_some_and(|t| !t.is_finished())
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

/// How long a writer that could not write waits before trying again on its own.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The writer thread's view of the store.
struct Sink {
    path: PathBuf,
    /// `None` after a failure closed it, until it opens again.
    store: Option<Store>,
    /// A write failed since the last success: the store lacks changes the document has, so
    /// the next write must be a whole snapshot (an appended blob would depend on what is
    /// missing, and would not load after a restart).
    behind: bool,
    rows: RowSink,
}

/// The writer thread's view of the row store; like [`Sink`], rewritten whole after a failure.
struct RowSink {
    path: PathBuf,
    store: Option<RowStore>,
    behind: bool,
}

impl RowSink {
    fn write(&mut self, rows: &[RowWrite], all: &(dyn Fn() -> Vec<RowWrite> + Send + Sync)) -> Ack {
        if rows.is_empty() && !self.behind {
            return Ok(());
        }
        let result = self.try_write(rows, all);
        match &result {
            Ok(()) => {
                if self.behind {
                    tracing::info!(store = %self.path.display(),
                        "the row store is writable again; every table is durable now");
                }
                self.behind = false;
            }
            Err(e) => {
                tracing::error!(error = %e,
                    "could not make {} row write(s) durable; the tables are written whole next",
                    rows.len());
                self.behind = true;
                self.store = None;
            }
        }
        result
    }

    fn try_write(
        &mut self,
        rows: &[RowWrite],
        all: &(dyn Fn() -> Vec<RowWrite> + Send + Sync),
    ) -> Ack {
        if self.store.is_none() {
            let (store, _) =
                RowStore::open(&self.path).map_err(|e| format!("reopening the row store: {e}"))?;
            self.store = Some(store);
        }
        let store = self.store.as_mut().expect("opened above");
        if self.behind {
            let mut whole = vec![RowWrite::Clear];
            whole.extend(all());
            store.write(&whole).map_err(|e| e.to_string())
        } else {
            store.write(rows).map_err(|e| e.to_string())
        }
    }
}

impl Sink {
    /// Makes `blobs` and `rows` durable, or everything in memory if a write failed before;
    /// the outcome for the document and for the rows.
    fn write(&mut self, blobs: &[Vec<u8>], rows: &[RowWrite], sources: &Sources) -> (Ack, Ack) {
        let doc = self.write_doc(blobs, sources.doc.as_ref());
        let rows = self.rows.write(rows, sources.rows.as_ref());
        (doc, rows)
    }

    fn write_doc(
        &mut self,
        blobs: &[Vec<u8>],
        snapshot: &(dyn Fn() -> Vec<u8> + Send + Sync),
    ) -> Ack {
        if blobs.iter().all(|b| b.is_empty()) && !self.behind {
            return Ok(());
        }
        let result = self.try_write(blobs, snapshot);
        match &result {
            Ok(()) => {
                if self.behind {
                    tracing::info!(store = %self.path.display(),
                        "the store is writable again; everything in memory is durable now");
                }
                self.behind = false;
            }
            Err(e) => {
                tracing::error!(error = %e,
                    "could not make {} change(s) durable; later changes wait for a full snapshot",
                    blobs.len());
                self.lose_store();
            }
        }
        result
    }

    /// After a failed write: the store may lack what the document has, and redb refuses every
    /// operation after an I/O error until the database is opened again.
    fn lose_store(&mut self) {
        self.behind = true;
        self.store = None;
    }

    fn behind(&self) -> bool {
        self.behind || self.rows.behind
    }

    /// Folds the appended entries into one snapshot once the policy says so. Everything
    /// appended is already in the document, so the snapshot covers it.
    fn compact_if_due(
        &mut self,
        policy: &CompactionPolicy,
        snapshot: &(dyn Fn() -> Vec<u8> + Send + Sync),
    ) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if store.pending_entries() < policy.after_entries
            && store.pending_bytes() < policy.after_bytes
        {
            return;
        }
        let snap = snapshot();
        match store.compact(&snap) {
            Ok(()) => tracing::debug!(bytes = snap.len(), "compacted the store"),
            Err(e) => {
                tracing::error!(error = %e, "compaction failed; entries kept");
                self.lose_store();
            }
        }
    }

    fn try_write(
        &mut self,
        blobs: &[Vec<u8>],
        snapshot: &(dyn Fn() -> Vec<u8> + Send + Sync),
    ) -> Ack {
        if self.store.is_none() {
            // The document in memory is the truth; what loads from the file is not needed.
            let (store, _) = Store::open(&self.path, automerge::Automerge::new)
                .map_err(|e| format!("reopening the store: {e}"))?;
            self.store = Some(store);
        }
        let store = self.store.as_mut().expect("opened above");
        if self.behind {
            store.compact(&snapshot()).map_err(|e| e.to_string())
        } else {
            store.append(blobs).map_err(|e| e.to_string())
        }
    }
}

fn run(
    store: Store,
    rows: RowStore,
    rx: mpsc::Receiver<Job>,
    policy: CompactionPolicy,
    sources: Sources,
) {
    let mut sink = Sink {
        path: store.path().to_path_buf(),
        store: Some(store),
        behind: false,
        rows: RowSink {
            path: rows.path().to_path_buf(),
            store: Some(rows),
            behind: false,
        },
    };
    loop {
        let first = if sink.behind() {
            match rx.recv_timeout(RETRY_AFTER) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Nobody is writing: try to catch up anyway, so the disk holds what was
                    // acknowledged to no one but merged from peers.
                    let _ = sink.write(&[], &[], &sources);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            }
        };
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let blobs: Vec<Vec<u8>> = batch
            .iter_mut()
            .map(|j| std::mem::take(&mut j.blob))
            .collect();
        let rows: Vec<RowWrite> = batch.iter().flat_map(|j| j.rows.clone()).collect();
        let (doc, rows) = sink.write(&blobs, &rows, &sources);
        for (job, blob) in batch.into_iter().zip(&blobs) {
            // Each waiter hears about what it wrote.
            let result = match (blob.is_empty(), job.rows.is_empty()) {
                (false, true) => doc.clone(),
                (true, false) => rows.clone(),
                _ => doc.clone().and(rows.clone()),
            };
            if let Some(ack) = job.ack {
                let _ = ack.send(result);
            }
        }
        if doc.is_ok() {
            sink.compact_if_due(&policy, sources.doc.as_ref());
        }
    }
    if sink.behind() {
        // Last chance before exit: a clean stop should leave everything on disk.
        let _ = sink.write(&[], &[], &sources);
    }
}

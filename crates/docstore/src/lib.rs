//! Durable storage of one automerge document in a redb file.
//!
//! # Background
//! `stated` keeps the network's state in one automerge document and must not lose a write it
//! has acknowledged, whether the process is killed with `kill -9` or the machine loses power.
//! Saving the whole document on every write is too slow once it grows, so writes are appended
//! as small incremental blobs and folded into a snapshot now and then. Disks and file systems
//! also damage files; when that happens the store must say so loudly, keep the evidence, and
//! recover everything that is still intact instead of starting over empty.
//!
//! # Design
//! - One redb database per document with three tables: `snapshot` (`u8` 0 → output of
//!   `Automerge::save`), `changes` (`u64` seq → output of `Automerge::save_after`, seq
//!   increasing) and `meta` (`"format"` → u32 LE [`FORMAT_VERSION`]).
//! - [`Store::append`] writes all its blobs in one write transaction with
//!   `Durability::Immediate` and two-phase commit, and returns only after redb's fsyncs. Two-phase
//!   commit means redb never silently falls back to the previous commit on open: a primary
//!   commit slot that fails verification can only be damage, and is reported as such.
//! - [`Store::compact`] replaces the snapshot and deletes all entries in one transaction, so a
//!   crash leaves either the old snapshot plus entries or the new snapshot.
//! - Loading verifies every chunk of every blob itself (module `chunk`), because
//!   `Automerge::load_incremental` into a non-empty document silently stops at a bad chunk, and
//!   `Change::try_from` does not compare the stored checksum.
//! - The database is opened with redb's integrity check on open, so damaged pages are reported
//!   instead of trusted.
//! - Damage never reaches the caller as an error. A bad blob is skipped and described, a copy
//!   of the file is kept as `<path>.damaged-<unix_millis>`, and the store is rewritten from what
//!   loaded. A file redb refuses is copied aside, scanned for automerge chunks ([`salvage`]),
//!   and atomically replaced by a new store holding what was found. See [`LoadReport`].
//! - A new store saves the caller's genesis document right away, so later `save_after` blobs
//!   always find the changes they depend on.
//! - [`rows`]: keyed rows beside the document, in their own file, for records with one writer
//!   that need no history (stated's container tables).
//!
//! # Limitations
//! - redb does not checksum its god byte. After a clean close both commit slots hold the same
//!   data, but in a file left by a crash a bit flip that swaps the primary and secondary slots
//!   can make redb open the previous commit without complaint, losing the last write.
//! - Salvage reads the whole file into memory; fine for state documents of some megabytes.
//! - A change whose dependency was lost stays queued inside the document (and in every snapshot)
//!   until a peer supplies the dependency; [`LoadReport::missing_deps`] lists what is missing.
//! - Panics inside redb or automerge on damaged input are caught, which needs `panic = "unwind"`
//!   (the default), and a panic hook that lets them unwind ([`catching_panic`]). redb's debug assertions fire on some damaged files in debug builds; they are
//!   caught the same way.
//! - One process at a time: a second open of the same file fails with [`StoreError::Locked`].

mod chunk;
mod error;
mod quarantine;
pub mod rows;
pub mod salvage;

use std::{
    any::Any,
    fs,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
};

use automerge::{Automerge, ChangeHash, ReadDoc};
use redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError,
    WriteTransaction,
};

pub use error::StoreError;

/// Version of the table layout, stored under `meta["format"]`.
pub const FORMAT_VERSION: u32 = 1;

const SNAPSHOT: TableDefinition<u8, &[u8]> = TableDefinition::new("snapshot");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT_KEY: u8 = 0;
const FORMAT_KEY: &str = "format";

/// redb caches pages up to this size; the default (1 GiB) is far more than a state document needs.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// An open store. Dropping it closes the database.
pub struct Store {
    db: Database,
    path: PathBuf,
    next_seq: u64,
    pending_entries: u64,
    pending_bytes: u64,
}

/// The document found by [`Store::open`], and what it took to get it.
#[derive(Debug)]
pub struct Loaded {
    /// The stored document, with a random actor id: set yours with `set_actor`.
    pub doc: Automerge,
    pub report: LoadReport,
}

/// What [`Store::open`] found wrong with the file and did about it.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Human-readable problems found, each naming the file (and entry key where relevant). Empty when clean.
    pub problems: Vec<String>,
    /// Where the damaged file was copied/moved aside, if it was damaged.
    pub quarantined: Option<PathBuf>,
    /// Number of stored blobs (snapshot + entries, or salvaged chunks) that loaded.
    pub loaded_blobs: usize,
    /// Dependencies of changes that were loaded but cannot be applied yet (they stay queued in
    /// the document until a peer supplies these). Empty unless something was lost, now or in an
    /// earlier damaged open.
    pub missing_deps: Vec<ChangeHash>,
}

impl LoadReport {
    /// True when nothing was wrong with the file.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Why a file could not be used as it is.
enum Refusal {
    /// The file is damaged: quarantine and salvage it.
    Damaged(String),
    /// Anything else (locked, I/O error, ...): the caller must see it; the file is left alone.
    Fatal(StoreError),
}

/// The tables as read from disk.
#[derive(Default)]
struct Contents {
    format: Option<Vec<u8>>,
    snapshot: Option<Vec<u8>>,
    entries: Vec<(u64, Vec<u8>)>,
}

impl Contents {
    fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.entries.is_empty()
    }
}

impl Store {
    /// Opens (creating the file and parent dir if missing) the store at `path` and loads the document.
    /// `fresh` builds the document to start from when the store is new or empty (the caller passes a
    /// deterministic "genesis" document) — call it only when nothing at all was loaded.
    ///
    /// The genesis document is saved before this returns. Damage is repaired and described in
    /// [`LoadReport`]; an `Err` means the OS, a lock or the format version stood in the way.
    pub fn open(
        path: &Path,
        fresh: impl FnOnce() -> Automerge,
    ) -> Result<(Store, Loaded), StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)
                .map_err(StoreError::io(path, "create the parent directory"))?;
        }
        let reason = match open_database(path) {
            Ok(db) => match read_contents(&db, path) {
                Ok(contents) => return Store::load(path, db, contents, fresh),
                Err(Refusal::Damaged(reason)) => reason,
                Err(Refusal::Fatal(e)) => return Err(e),
            },
            Err(Refusal::Damaged(reason)) => reason,
            Err(Refusal::Fatal(e)) => return Err(e),
        };
        Store::rebuild(path, &reason, fresh)
    }

    /// Durably appends blobs (each is the output of `Automerge::save_after(heads)`: one or more
    /// automerge chunks) in ONE write transaction with immediate durability (fsync) and returns only after commit.
    ///
    /// Empty blobs (`save_after` with nothing new) are skipped.
    pub fn append(&mut self, blobs: &[Vec<u8>]) -> Result<(), StoreError> {
        for (index, blob) in blobs.iter().enumerate() {
            self.check_blob(index, blob)?;
        }
        let blobs: Vec<&Vec<u8>> = blobs.iter().filter(|b| !b.is_empty()).collect();
        if blobs.is_empty() {
            return Ok(());
        }
        let tx = self.begin_write()?;
        let mut seq = self.next_seq;
        {
            let mut table = tx
                .open_table(CHANGES)
                .map_err(StoreError::redb(&self.path, "open the changes table"))?;
            for blob in &blobs {
                table
                    .insert(seq, blob.as_slice())
                    .map_err(StoreError::redb(&self.path, "insert a change entry"))?;
                seq += 1;
            }
        }
        tx.commit()
            .map_err(StoreError::redb(&self.path, "commit appended changes"))?;
        self.next_seq = seq;
        self.pending_entries += blobs.len() as u64;
        self.pending_bytes += blobs.iter().map(|b| b.len() as u64).sum::<u64>();
        Ok(())
    }

    /// In one transaction, stores `snapshot` (output of `Automerge::save()`) and deletes every appended entry.
    /// The caller guarantees the snapshot covers all entries appended so far.
    pub fn compact(&mut self, snapshot: &[u8]) -> Result<(), StoreError> {
        if snapshot.is_empty() {
            return Err(StoreError::InvalidBlob {
                path: self.path.clone(),
                index: 0,
                reason: "the snapshot is empty".to_string(),
            });
        }
        self.check_blob(0, snapshot)?;
        let tx = self.begin_write()?;
        {
            let mut table = tx
                .open_table(SNAPSHOT)
                .map_err(StoreError::redb(&self.path, "open the snapshot table"))?;
            table
                .insert(SNAPSHOT_KEY, snapshot)
                .map_err(StoreError::redb(&self.path, "write the snapshot"))?;
            let mut table = tx
                .open_table(CHANGES)
                .map_err(StoreError::redb(&self.path, "open the changes table"))?;
            table.retain(|_, _| false).map_err(StoreError::redb(
                &self.path,
                "delete compacted change entries",
            ))?;
            let mut table = tx
                .open_table(META)
                .map_err(StoreError::redb(&self.path, "open the meta table"))?;
            table
                .insert(FORMAT_KEY, FORMAT_VERSION.to_le_bytes().as_slice())
                .map_err(StoreError::redb(&self.path, "write the format version"))?;
        }
        tx.commit()
            .map_err(StoreError::redb(&self.path, "commit the compaction"))?;
        self.pending_entries = 0;
        self.pending_bytes = 0;
        Ok(())
    }

    /// Entries appended since the last compaction.
    pub fn pending_entries(&self) -> u64 {
        self.pending_entries
    }

    /// Total size in bytes of the entries appended since the last compaction.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Cheap framing check: storing bytes that are not automerge chunks would make every later
    /// load report damage.
    fn check_blob(&self, index: usize, blob: &[u8]) -> Result<(), StoreError> {
        chunk::split(blob)
            .map(drop)
            .map_err(|(offset, e)| StoreError::InvalidBlob {
                path: self.path.clone(),
                index,
                reason: format!("at byte {offset}: {e}"),
            })
    }

    fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        let mut tx = self
            .db
            .begin_write()
            .map_err(StoreError::redb(&self.path, "begin a write transaction"))?;
        tx.set_durability(Durability::Immediate)
            .map_err(StoreError::redb(&self.path, "request immediate durability"))?;
        // See the crate docs: makes a bad primary commit slot an error instead of a rollback.
        tx.set_two_phase_commit(true);
        Ok(tx)
    }

    /// Builds the document from tables redb could read.
    fn load(
        path: &Path,
        db: Database,
        contents: Contents,
        fresh: impl FnOnce() -> Automerge,
    ) -> Result<(Store, Loaded), StoreError> {
        let mut store = Store {
            db,
            path: path.to_path_buf(),
            next_seq: contents.entries.last().map_or(0, |(seq, _)| seq + 1),
            pending_entries: contents.entries.len() as u64,
            pending_bytes: contents.entries.iter().map(|(_, b)| b.len() as u64).sum(),
        };
        let mut report = LoadReport::default();
        check_format(path, contents.format.as_deref(), &contents, &mut report)?;

        if contents.is_empty() && report.is_clean() {
            let doc = fresh();
            store.compact(&doc.save())?;
            // The file may have just been created; make its name durable too.
            quarantine::sync_parent(path)?;
            return Ok((store, Loaded { doc, report }));
        }

        let mut doc = Automerge::new();
        let mut recovered = 0;
        let blobs = contents
            .snapshot
            .iter()
            .map(|b| ("snapshot".to_string(), b))
            .chain(
                contents
                    .entries
                    .iter()
                    .map(|(seq, b)| (format!("change entry seq {seq}"), b)),
            );
        for (what, blob) in blobs {
            match load_blob(&mut doc, blob) {
                Ok(chunks) => {
                    report.loaded_blobs += 1;
                    recovered += chunks;
                }
                Err((reason, chunks)) => {
                    recovered += chunks;
                    report.problems.push(format!(
                        "{}: {what} does not load: {reason}; skipped it ({chunks} valid chunk(s) in it were kept)",
                        path.display()
                    ));
                }
            }
        }
        if recovered == 0 {
            doc = fresh();
        }
        report.missing_deps = doc.get_missing_deps(&[]);

        if !report.is_clean() {
            note_missing_deps(path, &mut report);
            let bytes = fs::read(path).map_err(StoreError::io(path, "read the damaged file"))?;
            report.quarantined = Some(quarantine::keep_copy(path, &bytes)?);
            // Rewrite so that the next start is clean; the copy keeps the original.
            store.compact(&doc.save())?;
            log_report(path, &report);
        }
        Ok((store, Loaded { doc, report }))
    }

    /// Replaces a file redb refused with a new store holding whatever could be salvaged from it.
    ///
    /// Crash-safe at every step: the copy is durable before anything else changes, and the new
    /// store is built next to the original and renamed over it, so `path` always holds either the
    /// damaged original (and the next open salvages again) or the complete replacement.
    fn rebuild(
        path: &Path,
        reason: &str,
        fresh: impl FnOnce() -> Automerge,
    ) -> Result<(Store, Loaded), StoreError> {
        let bytes = fs::read(path).map_err(StoreError::io(path, "read the damaged file"))?;
        let copy = quarantine::keep_copy(path, &bytes)?;
        let salvaged = salvage::salvage(&bytes);

        let mut report = LoadReport {
            quarantined: Some(copy.clone()),
            loaded_blobs: salvaged.loaded,
            ..LoadReport::default()
        };
        report.problems.push(format!(
            "{}: redb cannot open the file ({reason}); copied it to {}; scanning its bytes recovered \
             {} valid automerge chunk(s) of {} candidate(s), holding {} change(s)",
            path.display(),
            copy.display(),
            salvaged.loaded,
            salvaged.candidates,
            salvaged.changes(),
        ));
        let doc = if salvaged.loaded == 0 {
            report.problems.push(format!(
                "{}: nothing was recovered; starting from the initial document",
                path.display()
            ));
            fresh()
        } else {
            salvaged.doc
        };
        report.missing_deps = doc.get_missing_deps(&[]);
        note_missing_deps(path, &mut report);

        let staging = quarantine::sibling(path, ".rebuild");
        quarantine::remove_if_present(&staging)
            .map_err(StoreError::io(&staging, "remove a stale rebuild file"))?;
        let db = builder().create(&staging).map_err(StoreError::redb(
            &staging,
            "create the replacement database",
        ))?;
        let mut store = Store {
            db,
            path: staging.clone(),
            next_seq: 0,
            pending_entries: 0,
            pending_bytes: 0,
        };
        store.compact(&doc.save())?;
        // The open database follows the inode, so it stays valid across the rename.
        fs::rename(&staging, path)
            .map_err(StoreError::io(path, "move the rebuilt store into place"))?;
        quarantine::sync_parent(path)?;
        store.path = path.to_path_buf();
        log_report(path, &report);
        Ok((store, Loaded { doc, report }))
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("pending_entries", &self.pending_entries)
            .field("pending_bytes", &self.pending_bytes)
            .finish_non_exhaustive()
    }
}

fn builder() -> Builder {
    let mut builder = Builder::new();
    // A plain open trusts a cleanly closed file and may panic on damage; the check verifies the
    // checksum of every reachable page and reports damage as an error.
    builder.set_check_integrity_on_open(true);
    builder.set_cache_size(CACHE_BYTES);
    builder
}

fn open_database(path: &Path) -> Result<Database, Refusal> {
    match guard_panic("redb", || Ok(builder().create(path))) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(refusal(path, "open the database", e.into())),
        Err(panicked) => Err(Refusal::Damaged(panicked)),
    }
}

fn read_contents(db: &Database, path: &Path) -> Result<Contents, Refusal> {
    match guard_panic("redb", || Ok(read_tables(db))) {
        Ok(Ok(contents)) => Ok(contents),
        Ok(Err(e)) => Err(refusal(path, "read the tables", e)),
        Err(panicked) => Err(Refusal::Damaged(panicked)),
    }
}

fn read_tables(db: &Database) -> Result<Contents, redb::Error> {
    let tx = db.begin_read()?;
    let mut contents = Contents::default();
    if let Some(table) = optional(tx.open_table(META))? {
        contents.format = table.get(FORMAT_KEY)?.map(|v| v.value().to_vec());
    }
    if let Some(table) = optional(tx.open_table(SNAPSHOT))? {
        contents.snapshot = table.get(SNAPSHOT_KEY)?.map(|v| v.value().to_vec());
    }
    if let Some(table) = optional(tx.open_table(CHANGES))? {
        for entry in table.iter()? {
            let (seq, blob) = entry?;
            contents.entries.push((seq.value(), blob.value().to_vec()));
        }
    }
    Ok(contents)
}

/// A table that was never created (new store) is not an error.
fn optional<T>(table: Result<T, TableError>) -> Result<Option<T>, redb::Error> {
    match table {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Sorts a redb error into damage to the file and everything else.
fn refusal(path: &Path, op: &'static str, err: redb::Error) -> Refusal {
    use std::io::ErrorKind;
    let damaged = match &err {
        redb::Error::Corrupted(_)
        | redb::Error::UpgradeRequired(_)
        | redb::Error::RepairAborted
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. } => true,
        // redb reports "not a redb file" as InvalidData; a short read of a truncated file is
        // UnexpectedEof. Every other I/O error is the OS's and must reach the caller.
        redb::Error::Io(e) => matches!(e.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof),
        _ => false,
    };
    if damaged {
        Refusal::Damaged(err.to_string())
    } else {
        Refusal::Fatal(StoreError::redb(path, op)(err))
    }
}

fn check_format(
    path: &Path,
    format: Option<&[u8]>,
    contents: &Contents,
    report: &mut LoadReport,
) -> Result<(), StoreError> {
    let problem = match format.map(<[u8; 4]>::try_from) {
        None if contents.is_empty() => return Ok(()),
        None => "the format version is missing".to_string(),
        Some(Ok(raw)) => match u32::from_le_bytes(raw) {
            FORMAT_VERSION => return Ok(()),
            found if found > FORMAT_VERSION => {
                return Err(StoreError::UnsupportedFormat {
                    path: path.to_path_buf(),
                    found,
                    supported: FORMAT_VERSION,
                })
            }
            found => format!("unknown format version {found}"),
        },
        Some(Err(_)) => "the format version is unreadable".to_string(),
    };
    report.problems.push(format!(
        "{}: meta: {problem}; loading anyway",
        path.display()
    ));
    Ok(())
}

/// Loads one stored blob. Ok: how many chunks it had, all applied. Err: why it failed, and how
/// many valid chunks a scan of it still recovered.
fn load_blob(doc: &mut Automerge, blob: &[u8]) -> Result<usize, (String, usize)> {
    // `append` and `compact` never store an empty blob, so one that is empty lost its data.
    if blob.is_empty() {
        return Err(("it is empty".to_string(), 0));
    }
    let failure = match chunk::split(blob) {
        Err((offset, e)) => format!("at byte {offset}: {e}"),
        Ok(chunks) => {
            let mut failure = None;
            for (i, range) in chunks.iter().enumerate() {
                if let Err(e) = chunk::apply(doc, &blob[range.clone()]) {
                    failure = Some(format!("chunk {i} at byte {}: {e}", range.start));
                    break;
                }
            }
            match failure {
                None => return Ok(chunks.len()),
                Some(f) => f,
            }
        }
    };
    let (_, recovered) = salvage::recover_into(doc, blob);
    Err((failure, recovered))
}

fn note_missing_deps(path: &Path, report: &mut LoadReport) {
    if report.missing_deps.is_empty() {
        return;
    }
    let shown: Vec<String> = report
        .missing_deps
        .iter()
        .take(5)
        .map(ToString::to_string)
        .collect();
    report.problems.push(format!(
        "{}: some loaded changes wait for {} missing change(s) ({}{}); they are kept and apply \
         once a peer supplies those",
        path.display(),
        report.missing_deps.len(),
        shown.join(", "),
        if report.missing_deps.len() > shown.len() {
            ", ..."
        } else {
            ""
        },
    ));
}

fn log_report(path: &Path, report: &LoadReport) {
    for problem in &report.problems {
        tracing::error!(path = %path.display(), "{problem}");
    }
}

thread_local! {
    static GUARDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is inside a region where the store catches panics of redb or
/// automerge on damaged input. A daemon whose panic hook aborts the process lets these unwind
/// (`uncloud_common::fail_fast::exempt`).
pub fn catching_panic() -> bool {
    GUARDING.with(|g| g.get())
}

/// Runs `f`, turning a panic into an error naming `who`: damaged input must not take the
/// process down (and with it every restart).
pub(crate) fn guard_panic<T>(
    who: &str,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    let outer = GUARDING.with(|g| g.replace(true));
    let caught = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDING.with(|g| g.set(outer));
    match caught {
        Ok(result) => result,
        Err(payload) => Err(format!(
            "{who} panicked: {}",
            panic_message(payload.as_ref())
        )),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "unknown panic"
    }
}

//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;

use automerge::{
    transaction::{CommitOptions, Transactable},
    ActorId, Automerge, Change, ChangeHash, ReadDoc, ROOT,
};
use redb::TableDefinition;
use uncloud_docstore::{Loaded, Store};

/// The on-disk layout, restated here so that tests pin it (and can damage it through redb).
pub const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
pub const SNAPSHOT: TableDefinition<u8, &[u8]> = TableDefinition::new("snapshot");
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A deterministic genesis document, as stated would build it: same bytes on every call.
pub fn genesis() -> Automerge {
    let mut doc = Automerge::new().with_actor(ActorId::from(&[0u8; 16][..]));
    let mut tx = doc.transaction();
    tx.put(ROOT, "network", "test-net").unwrap();
    tx.commit_with(CommitOptions::default().with_time(0));
    doc
}

/// A writer over a store, like stated: changes the doc, appends `save_after(previous heads)`.
pub struct Writer {
    pub store: Store,
    pub doc: Automerge,
}

impl Writer {
    pub fn open(path: &Path, actor: u8) -> (Writer, Loaded) {
        let (store, loaded) = Store::open(path, genesis).unwrap();
        let mut doc = loaded.doc.fork();
        doc.set_actor(ActorId::from(&[actor; 16][..]));
        (Writer { store, doc }, loaded)
    }

    /// Puts `key = value` in one change and durably appends it. Returns the change.
    pub fn put(&mut self, key: &str, value: &str) -> Change {
        let blob = self.change(key, value);
        self.store.append(&[blob]).unwrap();
        self.doc.get_last_local_change().unwrap()
    }

    /// Puts `key = value` in one change and returns the blob to append, without appending.
    pub fn change(&mut self, key: &str, value: &str) -> Vec<u8> {
        let heads = self.doc.get_heads();
        let mut tx = self.doc.transaction();
        tx.put(ROOT, key, value).unwrap();
        tx.commit();
        self.doc.save_after(&heads)
    }
}

/// Asserts two documents hold the same history and the same values.
pub fn assert_same_doc(actual: &Automerge, expected: &Automerge) {
    assert_eq!(sorted_heads(actual), sorted_heads(expected), "heads differ");
    assert_eq!(
        actual.hydrate(None),
        expected.hydrate(None),
        "values differ"
    );
}

pub fn sorted_heads(doc: &Automerge) -> Vec<ChangeHash> {
    let mut heads = doc.get_heads();
    heads.sort();
    heads
}

/// The string at `key` in the root map, if any.
pub fn get_str(doc: &Automerge, key: &str) -> Option<String> {
    doc.get(ROOT, key)
        .unwrap()
        .and_then(|(v, _)| v.as_str().map(str::to_owned))
}

/// True if the change is applied in `doc`, or kept queued in it waiting for a dependency
/// (`save()` keeps queued changes verbatim after the document chunk).
pub fn holds(doc: &Automerge, change: &Change) -> bool {
    doc.get_change_by_hash(&change.hash()).is_some() || contains(&doc.save(), change.raw_bytes())
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Deterministic noise without a rand dependency (xorshift64*).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Every `<name>.damaged-*` file next to `path`.
pub fn damaged_copies(path: &Path) -> Vec<std::path::PathBuf> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut found: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}.damaged-"))
        })
        .collect();
    found.sort();
    found
}

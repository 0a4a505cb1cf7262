//! Behaviour of `Store` on healthy and damaged files.

mod common;

use std::{cell::Cell, fs, path::Path};

use automerge::{ActorId, Automerge, ChangeHash, ReadDoc};
use common::*;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use uncloud_docstore::{Store, StoreError};

fn no_fresh() -> Automerge {
    panic!("fresh() must not be called when the store holds data")
}

/// Asserts every problem names the file, so an operator can find it from the log alone.
fn assert_problems_name(report: &uncloud_docstore::LoadReport, path: &Path) {
    assert!(!report.problems.is_empty(), "expected problems");
    let shown = path.display().to_string();
    for problem in &report.problems {
        assert!(
            problem.contains(&shown),
            "{problem:?} does not name {shown}"
        );
    }
}

#[test]
fn appends_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var/lib/uncloud/state.redb"); // parents do not exist yet
    let (mut w, loaded) = Writer::open(&path, 1);
    assert!(loaded.report.is_clean(), "{:?}", loaded.report);
    assert_eq!(loaded.report.quarantined, None);
    assert_same_doc(&loaded.doc, &genesis());

    for i in 0..200 {
        w.put(&format!("k{i}"), &format!("value {i}"));
    }
    // Several blobs in one call, and an empty one (nothing new) which is skipped.
    let mut blobs: Vec<Vec<u8>> = (0..5)
        .map(|i| w.change(&format!("batch{i}"), "b"))
        .collect();
    blobs.push(w.doc.save_after(&w.doc.get_heads()));
    assert!(blobs.last().unwrap().is_empty());
    w.store.append(&blobs).unwrap();
    assert_eq!(w.store.pending_entries(), 205);
    let bytes: u64 = blobs.iter().map(|b| b.len() as u64).sum();
    assert!(w.store.pending_bytes() > bytes);
    let pending_bytes = w.store.pending_bytes();
    let expected = w.doc.fork();
    drop(w);

    let (store, loaded) = Store::open(&path, no_fresh).unwrap();
    assert!(loaded.report.is_clean(), "{:?}", loaded.report);
    assert_eq!(loaded.report.loaded_blobs, 1 + 205);
    assert_same_doc(&loaded.doc, &expected);
    assert_eq!(get_str(&loaded.doc, "k199").as_deref(), Some("value 199"));
    assert_eq!(store.pending_entries(), 205);
    assert_eq!(store.pending_bytes(), pending_bytes);
    assert_eq!(store.path(), path);
}

#[test]
fn compaction_keeps_the_document_and_later_appends_load_on_top() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (mut w, _) = Writer::open(&path, 1);
    for i in 0..50 {
        w.put(&format!("k{i}"), "before");
    }
    w.store.compact(&w.doc.save()).unwrap();
    assert_eq!((w.store.pending_entries(), w.store.pending_bytes()), (0, 0));
    let expected = w.doc.fork();
    drop(w);

    let (mut w, loaded) = Writer::open(&path, 1);
    assert!(loaded.report.is_clean(), "{:?}", loaded.report);
    assert_eq!(loaded.report.loaded_blobs, 1, "only the snapshot is left");
    assert_same_doc(&loaded.doc, &expected);
    assert_eq!(w.store.pending_entries(), 0);

    for i in 0..10 {
        w.put(&format!("k{i}"), "after");
    }
    let expected = w.doc.fork();
    drop(w);
    let (mut w, loaded) = Writer::open(&path, 1);
    assert!(loaded.report.is_clean(), "{:?}", loaded.report);
    assert_eq!(loaded.report.loaded_blobs, 11);
    assert_eq!(w.store.pending_entries(), 10);
    assert_same_doc(&loaded.doc, &expected);
    assert_eq!(get_str(&loaded.doc, "k3").as_deref(), Some("after"));
    assert_eq!(get_str(&loaded.doc, "k30").as_deref(), Some("before"));

    w.store.compact(&w.doc.save()).unwrap();
    drop(w);
    let (_store, loaded) = Store::open(&path, no_fresh).unwrap();
    assert_eq!(loaded.report.loaded_blobs, 1);
    assert_same_doc(&loaded.doc, &expected);
}

/// Two writers (actors) share a store; one entry of actor A is then damaged with `corrupt`.
fn damaged_entry_case(corrupt: fn(&[u8]) -> Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (mut a, _) = Writer::open(&path, 1);
    let mut b = a.doc.fork();
    b.set_actor(ActorId::from(&[2u8; 16][..]));
    let mut a_changes = Vec::new();
    for i in 0..10 {
        a_changes.push(a.put(&format!("a{i}"), "from a")); // seq 2i
        let heads = b.get_heads();
        let mut tx = b.transaction();
        automerge::transaction::Transactable::put(&mut tx, automerge::ROOT, format!("b{i}"), "b")
            .unwrap();
        tx.commit();
        a.store.append(&[b.save_after(&heads)]).unwrap(); // seq 2i+1
    }
    let mut everything = a.doc.fork();
    everything.merge(&mut b.fork()).unwrap();
    drop(a);

    // A's 5th change is entry seq 8; A's later changes depend on it, B's do not.
    const SEQ: u64 = 8;
    let damaged = a_changes[4].clone();
    let descendants: Vec<ChangeHash> = a_changes[5..].iter().map(|c| c.hash()).collect();
    let corrupted = {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        let corrupted = {
            let mut table = tx.open_table(CHANGES).unwrap();
            let original = table.get(SEQ).unwrap().unwrap().value().to_vec();
            assert_eq!(original, damaged.raw_bytes());
            let corrupted = corrupt(&original);
            table.insert(SEQ, corrupted.as_slice()).unwrap();
            corrupted
        };
        tx.commit().unwrap();
        corrupted
    };

    let (store, loaded) = Store::open(&path, no_fresh).unwrap();
    let report = &loaded.report;
    assert_problems_name(report, &path);
    assert!(
        report.problems[0].contains("seq 8"),
        "{:?}",
        report.problems
    );
    assert_eq!(report.loaded_blobs, 1 + 20 - 1);
    assert_eq!(report.missing_deps, vec![damaged.hash()]);
    // The copy holds the damaged entry as it was.
    let copy = report.quarantined.clone().expect("a copy is kept");
    assert_eq!(damaged_copies(&path), vec![copy.clone()]);
    {
        let db = redb::Database::open(&copy).unwrap();
        let tx = db.begin_read().unwrap();
        let table = tx.open_table(CHANGES).unwrap();
        assert_eq!(
            table.get(SEQ).unwrap().unwrap().value(),
            corrupted.as_slice()
        );
    }
    // Everything not depending on the damaged change is there; its descendants are kept queued.
    for change in everything.get_changes(&[]) {
        let hash = change.hash();
        if hash == damaged.hash() {
            assert!(
                !holds(&loaded.doc, &change),
                "the damaged change cannot be loaded"
            );
        } else if descendants.contains(&hash) {
            assert!(loaded.doc.get_change_by_hash(&hash).is_none());
            assert!(
                holds(&loaded.doc, &change),
                "descendant {hash} must be kept"
            );
        } else {
            assert!(
                loaded.doc.get_change_by_hash(&hash).is_some(),
                "{hash} lost"
            );
        }
    }
    assert_eq!(get_str(&loaded.doc, "b9").as_deref(), Some("b"));
    assert_eq!(get_str(&loaded.doc, "a3").as_deref(), Some("from a"));
    assert_eq!(get_str(&loaded.doc, "a4"), None);
    // The store was rewritten from what loaded.
    assert_eq!(store.pending_entries(), 0);
    let first = loaded.doc;
    drop(store);

    let (_store, loaded) = Store::open(&path, no_fresh).unwrap();
    assert!(loaded.report.is_clean(), "{:?}", loaded.report);
    assert_eq!(loaded.report.quarantined, None);
    assert_eq!(loaded.report.missing_deps, vec![damaged.hash()]);
    assert_same_doc(&loaded.doc, &first);
    assert_eq!(damaged_copies(&path).len(), 1);

    // When the missing change arrives (from a peer), the queued ones apply.
    let mut doc = loaded.doc;
    doc.apply_changes([damaged]).unwrap();
    assert_same_doc(&doc, &everything);
}

#[test]
fn entry_replaced_by_garbage_is_skipped_copied_and_repaired() {
    damaged_entry_case(|original| noise(42, original.len()));
}

#[test]
fn entry_with_a_flipped_bit_is_skipped_copied_and_repaired() {
    damaged_entry_case(|original| {
        let mut bytes = original.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x04; // in the op columns: framing stays valid, the checksum does not
        bytes
    });
}

#[test]
fn entry_with_an_altered_value_is_skipped_copied_and_repaired() {
    // Still a well-formed change, one that says something else: only the checksum catches it.
    damaged_entry_case(|original| {
        let mut bytes = original.to_vec();
        let at = bytes.windows(6).position(|w| w == b"from a").unwrap();
        bytes[at + 3] = b'b';
        bytes
    });
}

#[test]
fn entry_cut_short_is_skipped_copied_and_repaired() {
    damaged_entry_case(|original| original[..original.len() / 2].to_vec());
}

#[test]
fn emptied_entry_is_damage_too() {
    damaged_entry_case(|_| Vec::new());
}

#[test]
fn damaged_snapshot_keeps_later_entries_queued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (mut w, _) = Writer::open(&path, 1);
    for i in 0..20 {
        w.put(&format!("k{i}"), "v");
    }
    w.store.compact(&w.doc.save()).unwrap();
    let later: Vec<_> = (0..3).map(|i| w.put(&format!("later{i}"), "v")).collect();
    drop(w);
    {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(SNAPSHOT).unwrap();
            let mut bytes = table.get(0).unwrap().unwrap().value().to_vec();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            table.insert(0, bytes.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }

    let fresh_calls = Cell::new(0);
    let (_store, loaded) = Store::open(&path, || {
        fresh_calls.set(fresh_calls.get() + 1);
        genesis()
    })
    .unwrap();
    assert_problems_name(&loaded.report, &path);
    assert!(loaded.report.problems[0].contains("snapshot"));
    assert!(loaded.report.quarantined.is_some());
    assert_eq!(
        fresh_calls.get(),
        0,
        "the later entries were loaded (queued)"
    );
    for change in &later {
        assert!(holds(&loaded.doc, change));
    }
    assert!(!loaded.report.missing_deps.is_empty());
}

#[test]
fn truncated_file_recovers_every_change_in_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.redb");
    let (mut w, _) = Writer::open(&source, 1);
    for i in 0..120 {
        // Mixed sizes, some larger than a 4 KiB page.
        let value = "x".repeat((i * 97) % 6000);
        w.put(&format!("k{i}"), &format!("{i}{value}"));
    }
    let changes = w.doc.get_changes(&[]);
    drop(w);
    let original = fs::read(&source).unwrap();
    eprintln!(
        "store file with {} changes: {} bytes",
        changes.len(),
        original.len()
    );

    for percent in [90, 50, 10, 1] {
        let path = dir.path().join(format!("cut{percent}.redb"));
        let cut = original.len() * percent / 100;
        let truncated = &original[..cut];
        fs::write(&path, truncated).unwrap();

        let (store, loaded) = Store::open(&path, genesis).unwrap();
        let report = &loaded.report;
        assert_problems_name(report, &path);
        let copy = report.quarantined.clone().expect("quarantined");
        assert_eq!(
            fs::read(&copy).unwrap(),
            truncated,
            "the copy is the original"
        );

        let intact: Vec<_> = changes
            .iter()
            .filter(|c| contains(truncated, c.raw_bytes()))
            .collect();
        let recovered = changes.iter().filter(|c| holds(&loaded.doc, c)).count();
        eprintln!(
            "cut at {percent}% ({cut} bytes): {} changes intact in the prefix, {recovered} recovered; {}",
            intact.len(),
            report.problems[0]
        );
        for change in &intact {
            assert!(holds(&loaded.doc, change), "{} lost", change.hash());
        }
        drop(store);

        let (_store, again) = Store::open(&path, no_fresh).unwrap();
        assert!(again.report.is_clean(), "{:?}", again.report);
        for change in &intact {
            assert!(
                holds(&again.doc, change),
                "{} lost on reopen",
                change.hash()
            );
        }
    }
}

#[test]
fn salvage_recovers_everything_when_redb_headers_are_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (mut w, _) = Writer::open(&path, 1);
    for i in 0..30 {
        w.put(&format!("k{i}"), "small");
    }
    // Values far larger than a 4 KiB page, in the snapshot and in an entry: only contiguous
    // storage lets the scan find them whole. Noise does not deflate, so they stay large.
    let hex = |seed, len| {
        noise(seed, len)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    w.put("big-in-snapshot", &hex(1, 40_000));
    w.store.compact(&w.doc.save()).unwrap();
    for i in 0..30 {
        w.put(&format!("later{i}"), "small");
    }
    w.put("big-in-entry", &hex(2, 20_000));
    let expected = w.doc.fork();
    drop(w);

    let mut bytes = fs::read(&path).unwrap();
    bytes[..4096].copy_from_slice(&noise(3, 4096)); // redb's header and commit slots
    fs::write(&path, &bytes).unwrap();

    let (_store, loaded) = Store::open(&path, no_fresh).unwrap();
    assert_problems_name(&loaded.report, &path);
    assert!(loaded.report.quarantined.is_some());
    assert!(loaded.report.missing_deps.is_empty());
    assert_same_doc(&loaded.doc, &expected);
}

#[test]
fn garbage_files_are_copied_aside_and_replaced_by_a_fresh_store() {
    let mut redb_magic_then_noise = b"redb\x1a\x0a\xa9\x0d\x0a".to_vec();
    redb_magic_then_noise.extend(noise(9, 3 * 4096));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("noise", noise(7, 64 * 1024)),
        ("text", b"this is not a database\n".repeat(200)),
        ("zeros", vec![0; 8192]),
        ("one byte", vec![b'x']),
        ("redb magic then noise", redb_magic_then_noise),
    ];
    for (name, bytes) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        fs::write(&path, &bytes).unwrap();
        let fresh_calls = Cell::new(0);
        let fresh = || {
            fresh_calls.set(fresh_calls.get() + 1);
            genesis()
        };
        let (store, loaded) = Store::open(&path, fresh).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_problems_name(&loaded.report, &path);
        let copy = loaded.report.quarantined.clone().expect(name);
        assert_eq!(fs::read(copy).unwrap(), bytes, "{name}");
        assert_eq!(fresh_calls.get(), 1, "{name}");
        assert_same_doc(&loaded.doc, &genesis());
        drop(store);

        let (_store, again) = Store::open(&path, no_fresh).unwrap();
        assert!(again.report.is_clean(), "{name}: {:?}", again.report);
        assert_same_doc(&again.doc, &genesis());
    }
}

#[test]
fn empty_file_is_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    fs::File::create(&path).unwrap();
    let fresh_calls = Cell::new(0);
    let (store, loaded) = Store::open(&path, || {
        fresh_calls.set(fresh_calls.get() + 1);
        genesis()
    })
    .unwrap();
    assert!(loaded.report.is_clean(), "{:?}", loaded.report);
    assert_eq!(loaded.report.quarantined, None);
    assert_eq!(loaded.report.loaded_blobs, 0);
    assert_eq!(fresh_calls.get(), 1);
    assert!(damaged_copies(&path).is_empty());
    drop(store);

    // The genesis document was saved: the next open loads it instead of calling fresh().
    let (_store, again) = Store::open(&path, no_fresh).unwrap();
    assert!(again.report.is_clean());
    assert_eq!(again.report.loaded_blobs, 1);
    assert_same_doc(&again.doc, &genesis());
}

#[test]
fn a_second_open_is_locked_and_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (mut w, _) = Writer::open(&path, 1);
    w.put("k", "v");
    let err = Store::open(&path, genesis).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(damaged_copies(&path).is_empty());
    drop(w);
    let (_store, loaded) = Store::open(&path, no_fresh).unwrap();
    assert!(loaded.report.is_clean());
    assert_eq!(get_str(&loaded.doc, "k").as_deref(), Some("v"));
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let shown = |p: &Path| p.display().to_string();

    // Parent directory cannot be created: a file is in the way.
    let blocker = dir.path().join("blocker");
    fs::write(&blocker, b"").unwrap();
    let path = blocker.join("state.redb");
    let err = Store::open(&path, genesis).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains(&shown(&path)), "{err}");

    // The path is a directory: an OS error, not damage to move aside.
    let path = dir.path().join("a-directory");
    fs::create_dir(&path).unwrap();
    let err = Store::open(&path, genesis).unwrap_err();
    assert!(err.to_string().contains(&shown(&path)), "{err}");
    assert!(damaged_copies(&path).is_empty());

    // A blob that is not automerge data is refused before anything is written.
    let path = dir.path().join("state.redb");
    let (mut store, _) = Store::open(&path, genesis).unwrap();
    let err = store.append(&[b"not automerge".to_vec()]).unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidBlob { index: 0, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&shown(&path)), "{err}");
    let err = store.compact(b"").unwrap_err();
    assert!(err.to_string().contains(&shown(&path)), "{err}");
    assert_eq!(store.pending_entries(), 0);
}

#[test]
fn newer_format_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (mut w, _) = Writer::open(&path, 1);
    w.put("k", "v");
    drop(w);
    {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("format", 2u32.to_le_bytes().as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    let err = Store::open(&path, genesis).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::UnsupportedFormat {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(damaged_copies(&path).is_empty());
    // (redb's integrity check on open commits, so the bytes change, but not the data.)
    let db = redb::Database::open(&path).unwrap();
    let tx = db.begin_read().unwrap();
    assert_eq!(tx.open_table(CHANGES).unwrap().len().unwrap(), 1);
    let format = tx.open_table(META).unwrap();
    assert_eq!(
        format.get("format").unwrap().unwrap().value(),
        2u32.to_le_bytes()
    );
}

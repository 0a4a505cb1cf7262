//! `Store::open` on a real store file with arbitrary damage never panics and never fails, and
//! damage it does not notice never costs data.

mod common;

use std::{fs, sync::OnceLock};

use automerge::Automerge;
use common::*;
use proptest::{prelude::*, sample::Index};
use uncloud_docstore::Store;

/// A store file (snapshot plus entries, one larger than a page) and the document it holds.
struct Base {
    file: Vec<u8>,
    saved_doc: Vec<u8>,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.redb");
        let (mut w, _) = Writer::open(&path, 1);
        for i in 0..40 {
            w.put(&format!("k{i}"), "before compaction");
        }
        w.store.compact(&w.doc.save()).unwrap();
        for i in 0..40 {
            w.put(&format!("later{i}"), "after compaction");
        }
        w.put("big", &"y".repeat(9000));
        let saved_doc = w.doc.save();
        drop(w);
        Base {
            file: fs::read(&path).unwrap(),
            saved_doc,
        }
    })
}

#[derive(Debug, Clone)]
enum Damage {
    /// Random bytes over a random range.
    Overwrite(Index, Vec<u8>),
    /// A 4 KiB block that reads back as zeros, as a lost sector or page would.
    ZeroBlock(Index),
    /// One flipped bit.
    Flip(Index, u8),
    /// The file is cut at a random length.
    Truncate(Index),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (
            any::<Index>(),
            proptest::collection::vec(any::<u8>(), 1..300)
        )
            .prop_map(|(at, bytes)| Damage::Overwrite(at, bytes)),
        any::<Index>().prop_map(Damage::ZeroBlock),
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Damage::Flip(at, bit)),
        any::<Index>().prop_map(Damage::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, damage: &Damage) {
    if bytes.is_empty() {
        return;
    }
    match damage {
        Damage::Overwrite(at, new) => {
            let at = at.index(bytes.len());
            let end = (at + new.len()).min(bytes.len());
            bytes[at..end].copy_from_slice(&new[..end - at]);
        }
        Damage::ZeroBlock(at) => {
            let block = at.index(bytes.len()) / 4096 * 4096;
            let end = (block + 4096).min(bytes.len());
            bytes[block..end].fill(0);
        }
        Damage::Flip(at, bit) => {
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << bit;
        }
        Damage::Truncate(at) => {
            let len = at.index(bytes.len());
            bytes.truncate(len);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn open_on_a_damaged_store_returns_a_report(damages in proptest::collection::vec(damage(), 1..4)) {
        let base = base();
        let mut bytes = base.file.clone();
        for d in &damages {
            apply(&mut bytes, d);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        fs::write(&path, &bytes).unwrap();

        let (store, loaded) = Store::open(&path, genesis)
            .map_err(|e| TestCaseError::fail(format!("open failed: {e}")))?;
        let report = &loaded.report;
        if report.is_clean() {
            // Damage nobody noticed (e.g. in free pages) must not have cost anything.
            let expected = Automerge::load(&base.saved_doc).unwrap();
            prop_assert_eq!(sorted_heads(&loaded.doc), sorted_heads(&expected));
            prop_assert!(report.quarantined.is_none());
        } else {
            prop_assert!(report.quarantined.is_some());
            let shown = path.display().to_string();
            for problem in &report.problems {
                prop_assert!(problem.contains(&shown), "{:?}", problem);
            }
        }
        drop(store);

        // Whatever happened, the store is healthy afterwards.
        let (_store, again) = Store::open(&path, genesis)
            .map_err(|e| TestCaseError::fail(format!("reopen failed: {e}")))?;
        prop_assert!(again.report.is_clean(), "{:?}", again.report);
        prop_assert_eq!(sorted_heads(&again.doc), sorted_heads(&loaded.doc));
    }
}

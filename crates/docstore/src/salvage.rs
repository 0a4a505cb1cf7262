//! Recovering automerge data from bytes that are not (or no longer) a readable database.
//!
//! redb keeps every value in one contiguous run of bytes: a small value lives inside a 4 KiB
//! leaf page and a large one gets a leaf of 2^n contiguous pages. So the automerge chunks we
//! stored appear verbatim in the file, whatever happened to redb's headers and branch pages.
//! Every chunk carries its own checksum, and a change is identified by the hash of its bytes, so
//! a chunk found this way is either exactly what was written or rejected. Loading old copies
//! (pages freed by later transactions, snapshots replaced by a compaction) is harmless: they are
//! history the document already had, and automerge ignores changes it knows.

use automerge::{Automerge, ReadDoc};

use crate::chunk::{self, MAGIC};

/// What a scan recovered.
#[derive(Debug)]
pub struct Salvaged {
    /// Everything recovered, merged. Changes whose dependencies were not found are queued inside
    /// it (see `Automerge::get_missing_deps`) and kept by `save()`.
    pub doc: Automerge,
    /// Places where a well-framed chunk header was found.
    pub candidates: usize,
    /// Chunks that passed automerge's checks and were merged into `doc`.
    pub loaded: usize,
}

impl Salvaged {
    /// Changes known to the recovered document (not counting queued ones).
    pub fn changes(&self) -> u64 {
        self.doc.stats().num_changes
    }
}

/// Scans `bytes` for automerge chunks and loads every valid one into a new document.
/// Never panics, whatever the input.
pub fn salvage(bytes: &[u8]) -> Salvaged {
    let mut doc = Automerge::new();
    let (candidates, loaded) = recover_into(&mut doc, bytes);
    Salvaged {
        doc,
        candidates,
        loaded,
    }
}

/// Scans `bytes` for automerge chunks and applies every valid one to `doc`.
/// Returns (candidates, loaded) as in [`Salvaged`].
pub(crate) fn recover_into(doc: &mut Automerge, bytes: &[u8]) -> (usize, usize) {
    let (mut candidates, mut loaded) = (0, 0);
    let mut at = 0;
    while let Some(found) = find_magic(&bytes[at..]) {
        let start = at + found;
        // By default resume right after this magic: a damaged "chunk" may hide a real one.
        at = start + 1;
        let Ok(head) = chunk::header(&bytes[start..]) else {
            continue;
        };
        candidates += 1;
        let end = start + head.len;
        match chunk::apply(doc, &bytes[start..end]) {
            Ok(()) => {
                loaded += 1;
                // A verified chunk cannot contain another chunk; skip its body.
                at = end;
            }
            Err(reason) => tracing::debug!(offset = start, %reason, "rejected chunk candidate"),
        }
    }
    (candidates, loaded)
}

fn find_magic(bytes: &[u8]) -> Option<usize> {
    bytes.windows(MAGIC.len()).position(|w| w == MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::tests::doc_with_changes;
    use proptest::prelude::*;

    #[test]
    fn finds_changes_between_garbage() {
        let doc = doc_with_changes(4);
        let mut bytes = b"garbage \x85\x6f\x4a".to_vec();
        for change in doc.get_changes(&[]) {
            bytes.extend_from_slice(change.raw_bytes());
            // A well-framed change chunk with a bad checksum and nonsense data.
            bytes.extend_from_slice(&[0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, 2, 1, 2]);
        }
        let salvaged = salvage(&bytes);
        assert_eq!(salvaged.loaded, 4);
        assert_eq!(salvaged.candidates, 8);
        assert_eq!(salvaged.doc.get_heads(), doc.get_heads());
    }

    #[test]
    fn finds_a_document_chunk() {
        let doc = doc_with_changes(50);
        let mut bytes = vec![0u8; 1000];
        bytes.extend_from_slice(&doc.save());
        bytes.extend_from_slice(&[0u8; 1000]);
        let salvaged = salvage(&bytes);
        assert_eq!(salvaged.loaded, 1);
        assert_eq!(salvaged.changes(), 50);
        assert_eq!(salvaged.doc.get_heads(), doc.get_heads());
    }

    #[test]
    fn applies_changes_found_before_their_dependencies() {
        let doc = doc_with_changes(6);
        let mut bytes = Vec::new();
        for change in doc.get_changes(&[]).iter().rev() {
            bytes.extend_from_slice(change.raw_bytes());
        }
        let salvaged = salvage(&bytes);
        assert_eq!(salvaged.loaded, 6);
        assert_eq!(salvaged.doc.get_heads(), doc.get_heads());
        assert!(salvaged.doc.get_missing_deps(&[]).is_empty());
    }

    #[test]
    fn nothing_in_nothing() {
        let salvaged = salvage(&[]);
        assert_eq!((salvaged.candidates, salvaged.loaded), (0, 0));
        assert!(salvaged.doc.is_empty());
    }

    fn salvage_input() -> impl Strategy<Value = Vec<u8>> {
        // Plain noise rarely contains the magic, so also splice the magic (and sometimes a
        // plausible type and length) into it to drive the header and chunk parsers.
        (
            proptest::collection::vec(any::<u8>(), 0..4096),
            proptest::collection::vec((any::<prop::sample::Index>(), 0u8..5, any::<u8>()), 0..16),
        )
            .prop_map(|(mut bytes, splices)| {
                for (index, kind, len) in splices {
                    if bytes.is_empty() {
                        break;
                    }
                    let at = index.index(bytes.len());
                    let mut header = MAGIC.to_vec();
                    header.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, kind, len & 0x7f]);
                    let end = (at + header.len()).min(bytes.len());
                    bytes[at..end].copy_from_slice(&header[..end - at]);
                }
                bytes
            })
    }

    proptest! {
        #[test]
        fn salvage_never_panics_on_noise(bytes in salvage_input()) {
            let salvaged = salvage(&bytes);
            prop_assert!(salvaged.loaded <= salvaged.candidates);
        }

        #[test]
        fn salvage_never_panics_on_damaged_automerge_bytes(
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..8),
        ) {
            // Real chunks with bit flips exercise automerge's parsers far beyond noise.
            let doc = doc_with_changes(8);
            let mut bytes = doc.save();
            bytes.extend_from_slice(&doc.save_after(&[]));
            for (index, mask) in flips {
                let at = index.index(bytes.len());
                bytes[at] ^= mask;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            let salvaged = salvage(&bytes);
            prop_assert!(salvaged.loaded <= salvaged.candidates);
        }
    }
}

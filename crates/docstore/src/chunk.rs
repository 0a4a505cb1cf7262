//! Framing of automerge's storage chunks, and applying one chunk to a document with every check
//! automerge offers.
//!
//! Everything automerge writes (`save`, `save_after`, `Change::bytes`) is a concatenation of
//! chunks (automerge-0.12 `src/storage/chunk.rs`):
//!
//! ```text
//! magic 85 6f 4a 83 | checksum (4) | type (1) | uLEB128 data length | data
//! ```
//!
//! `type` is 0 document (from `save`), 1 change, 2 deflate-compressed change, 3 bundle. The
//! checksum is the first 4 bytes of the SHA-256 of type, length and (uncompressed) data, i.e. the
//! first 4 bytes of the change hash.
//!
//! We parse the framing ourselves because automerge does not tell us about damage:
//! `Automerge::load_incremental` into a non-empty document stops at the first bad chunk, logs a
//! warning and returns `Ok`, so garbage in a stored entry would vanish silently.

use std::{fmt, ops::Range};

use automerge::{Automerge, Change, LoadOptions, OnPartialLoad};

use crate::guard_panic;

pub(crate) const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];

/// Bytes before the length field: magic, checksum, type.
const FIXED_HEADER: usize = 4 + 4 + 1;

/// A uLEB128 u64 never needs more than 10 bytes.
const MAX_LEB_BYTES: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Document,
    Change,
    Compressed,
    Bundle,
}

/// Why bytes are not a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Framing {
    BadMagic,
    ShortHeader,
    UnknownType(u8),
    BadLength,
    /// The header announces more bytes than there are.
    Overrun {
        needed: u64,
        available: usize,
    },
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Framing::BadMagic => write!(f, "no automerge chunk magic"),
            Framing::ShortHeader => write!(f, "chunk header is cut short"),
            Framing::UnknownType(t) => write!(f, "unknown chunk type {t}"),
            Framing::BadLength => write!(f, "chunk length is not a valid uLEB128 u64"),
            Framing::Overrun { needed, available } => write!(
                f,
                "chunk needs {needed} bytes but only {available} are present"
            ),
        }
    }
}

/// The header of the chunk starting at `bytes[0]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    /// Header plus data: the chunk is exactly `bytes[..len]`.
    pub(crate) len: usize,
}

/// Parses the header at the start of `bytes` and checks that the whole chunk is present.
pub(crate) fn header(bytes: &[u8]) -> Result<Header, Framing> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(Framing::BadMagic);
    }
    if bytes.len() < FIXED_HEADER + 1 {
        return Err(Framing::ShortHeader);
    }
    let kind = match bytes[FIXED_HEADER - 1] {
        0 => Kind::Document,
        1 => Kind::Change,
        2 => Kind::Compressed,
        3 => Kind::Bundle,
        other => return Err(Framing::UnknownType(other)),
    };
    let (data_len, leb_len) = uleb128(&bytes[FIXED_HEADER..])?;
    let header_len = FIXED_HEADER + leb_len;
    let available = bytes.len() - header_len;
    match usize::try_from(data_len) {
        Ok(data_len) if data_len <= available => Ok(Header {
            kind,
            len: header_len + data_len,
        }),
        _ => Err(Framing::Overrun {
            needed: data_len,
            available,
        }),
    }
}

/// Splits a blob into its chunks. Fails if any byte of it is not part of a well-framed chunk.
pub(crate) fn split(blob: &[u8]) -> Result<Vec<Range<usize>>, (usize, Framing)> {
    let mut chunks = Vec::new();
    let mut at = 0;
    while at < blob.len() {
        let head = header(&blob[at..]).map_err(|e| (at, e))?;
        chunks.push(at..at + head.len);
        at += head.len;
    }
    Ok(chunks)
}

/// Applies exactly one chunk to `doc` after automerge has verified its checksum (and, for a
/// document chunk, the hashes of its heads). A change whose dependencies are missing is queued
/// by automerge, not rejected: it is applied as soon as they arrive (from a later chunk or a
/// peer) and `save()` keeps it.
///
/// On error `doc` is unchanged, except if automerge panics halfway through applying data that
/// passed its own checks, which we turn into an error rather than take the process down.
pub(crate) fn apply(doc: &mut Automerge, chunk: &[u8]) -> Result<(), String> {
    let head = header(chunk).map_err(|e| e.to_string())?;
    if head.len != chunk.len() {
        return Err(format!(
            "{} trailing bytes after the chunk",
            chunk.len() - head.len
        ));
    }
    guard_panic("automerge", || match head.kind {
        Kind::Change | Kind::Compressed => {
            let change = Change::try_from(chunk).map_err(|e| format!("invalid change: {e}"))?;
            // `Change::try_from` does not compare the stored checksum with the data (the load
            // paths do), so a flipped bit in an op would yield a valid-looking, different change.
            if change.hash().0[..4] != chunk[4..8] {
                return Err("checksum does not match the change's contents".to_string());
            }
            doc.apply_changes([change])
                .map_err(|e| format!("automerge refused the change: {e}"))
        }
        Kind::Document | Kind::Bundle => {
            // Loading into a scratch document is the only public way to run automerge's checks
            // on a document chunk; merging it afterwards costs a second decode, on load only.
            let partial = if head.kind == Kind::Bundle {
                OnPartialLoad::Ignore // a bundle's changes may depend on changes elsewhere
            } else {
                OnPartialLoad::Error
            };
            let loaded =
                Automerge::load_with_options(chunk, LoadOptions::new().on_partial_load(partial))
                    .map_err(|e| format!("invalid {:?} chunk: {e}", head.kind))?;
            if head.kind == Kind::Document && doc.is_empty() {
                let actor = doc.get_actor().clone();
                *doc = loaded.with_actor(actor);
                Ok(())
            } else {
                doc.load_incremental(chunk)
                    .map(drop)
                    .map_err(|e| format!("automerge refused the {:?} chunk: {e}", head.kind))
            }
        }
    })
}

/// Decodes an unsigned LEB128 u64, returning the value and the number of bytes it took.
fn uleb128(bytes: &[u8]) -> Result<(u64, usize), Framing> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().take(MAX_LEB_BYTES).enumerate() {
        let low = u64::from(byte & 0x7f);
        // The 10th byte may only carry the top bit of a u64.
        if i == MAX_LEB_BYTES - 1 && low > 1 {
            return Err(Framing::BadLength);
        }
        value |= low << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if bytes.len() < MAX_LEB_BYTES {
        Err(Framing::ShortHeader)
    } else {
        Err(Framing::BadLength)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use automerge::{transaction::Transactable, ReadDoc, ROOT};

    /// A document with `n` changes, one key each.
    pub(crate) fn doc_with_changes(n: usize) -> Automerge {
        let mut doc = Automerge::new();
        for i in 0..n {
            let mut tx = doc.transaction();
            tx.put(ROOT, format!("k{i}"), i as i64).unwrap();
            tx.commit();
        }
        doc
    }

    #[test]
    fn split_finds_every_change_of_save_after() {
        let doc = doc_with_changes(5);
        let blob = doc.save_after(&[]);
        let chunks = split(&blob).unwrap();
        assert_eq!(chunks.len(), 5);
        assert!(chunks
            .iter()
            .all(|r| header(&blob[r.clone()]).unwrap().kind == Kind::Change));
    }

    #[test]
    fn save_keeps_queued_changes_as_chunks_after_the_document() {
        // The store relies on this: a change whose dependency was lost survives compaction.
        let base = doc_with_changes(3);
        let mut ahead = base.fork();
        for i in 0..2 {
            let mut tx = ahead.transaction();
            tx.put(ROOT, format!("ahead{i}"), i).unwrap();
            tx.commit();
        }
        let newest = ahead.get_last_local_change().unwrap();
        let mut target = base.fork();
        apply(&mut target, newest.raw_bytes()).unwrap();
        assert_eq!(target.get_heads(), base.get_heads());

        let saved = target.save();
        let chunks = split(&saved).unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(header(&saved).unwrap().kind, Kind::Document);
        assert_eq!(&saved[chunks[1].clone()], newest.raw_bytes());

        let mut reloaded = Automerge::new();
        for range in chunks {
            apply(&mut reloaded, &saved[range]).unwrap();
        }
        assert_eq!(reloaded.get_heads(), base.get_heads());
        assert_eq!(reloaded.get_missing_deps(&[]).len(), 1);
    }

    #[test]
    fn split_rejects_trailing_garbage_and_truncation() {
        let doc = doc_with_changes(2);
        let mut blob = doc.save_after(&[]);
        blob.extend_from_slice(b"xyz");
        let (at, err) = split(&blob).unwrap_err();
        assert_eq!(at, blob.len() - 3);
        assert_eq!(err, Framing::BadMagic);

        let blob = doc.save_after(&[]);
        let (_, err) = split(&blob[..blob.len() - 1]).unwrap_err();
        assert!(matches!(err, Framing::Overrun { .. }), "{err:?}");
    }

    #[test]
    fn apply_rejects_a_flipped_bit_in_a_change() {
        let doc = doc_with_changes(1);
        let mut blob = doc.save_after(&[]);
        let last = blob.len() - 1;
        blob[last] ^= 0x01;
        let mut target = Automerge::new();
        assert!(apply(&mut target, &blob).is_err());
        assert!(target.get_heads().is_empty());
    }

    #[test]
    fn apply_rejects_a_change_whose_value_was_altered() {
        // Altering a string value keeps the change well-formed, so only the checksum tells.
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        tx.put(ROOT, "k", "hello world").unwrap();
        tx.commit();
        let mut blob = doc.save_after(&[]);
        let at = blob.windows(11).position(|w| w == b"hello world").unwrap();
        blob[at] = b'j';
        assert!(
            Change::try_from(blob.as_slice()).is_ok(),
            "automerge alone accepts it"
        );
        let err = apply(&mut Automerge::new(), &blob).unwrap_err();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn apply_rejects_a_flipped_bit_in_a_document() {
        let doc = doc_with_changes(20);
        let mut saved = doc.save();
        let mid = saved.len() / 2;
        saved[mid] ^= 0x10;
        let mut target = Automerge::new();
        assert!(apply(&mut target, &saved).is_err());
        // And into a non-empty document, where load_incremental alone would say Ok.
        let mut target = doc_with_changes(1);
        let before = target.get_heads();
        assert!(apply(&mut target, &saved).is_err());
        assert_eq!(target.get_heads(), before);
    }

    #[test]
    fn apply_loads_compressed_changes() {
        // Big enough for automerge to deflate it (DEFLATE_MIN_SIZE is 256 bytes).
        let mut doc = Automerge::new();
        let mut tx = doc.transaction();
        for i in 0..100 {
            tx.put(ROOT, format!("key-{i}"), "a fairly repetitive value")
                .unwrap();
        }
        tx.commit();
        let mut change = doc.get_last_local_change().unwrap();
        let compressed = change.bytes().into_owned();
        assert_eq!(header(&compressed).unwrap().kind, Kind::Compressed);
        assert!(compressed.len() < change.raw_bytes().len());

        let mut target = Automerge::new();
        apply(&mut target, &compressed).unwrap();
        assert_eq!(target.get_heads(), doc.get_heads());

        // (Not the last byte: its unused padding bits do not change the inflated data.)
        let mut damaged = compressed.clone();
        let mid = damaged.len() / 2;
        damaged[mid] ^= 0x40;
        assert!(apply(&mut Automerge::new(), &damaged).is_err());
    }

    #[test]
    fn apply_queues_a_change_with_missing_dependencies() {
        let doc = doc_with_changes(2);
        let blob = doc.save_after(&[]);
        let chunks = split(&blob).unwrap();
        let mut target = Automerge::new();
        apply(&mut target, &blob[chunks[1].clone()]).unwrap();
        // Queued, not applied: no heads yet, but automerge knows what it waits for.
        assert!(target.get_heads().is_empty());
        assert_eq!(target.get_missing_deps(&[]).len(), 1);
        apply(&mut target, &blob[chunks[0].clone()]).unwrap();
        assert_eq!(target.get_heads(), doc.get_heads());
        assert_eq!(
            target.get(ROOT, "k1").unwrap().map(|(v, _)| v.to_string()),
            doc.get(ROOT, "k1").unwrap().map(|(v, _)| v.to_string())
        );
    }

    #[test]
    fn apply_merges_a_document_into_a_non_empty_document() {
        let base = doc_with_changes(3);
        let mut other = base.fork();
        let mut tx = other.transaction();
        tx.put(ROOT, "other", 1).unwrap();
        tx.commit();
        let mut target = base.fork();
        apply(&mut target, &other.save()).unwrap();
        assert_eq!(target.get_heads(), other.get_heads());
    }

    #[test]
    fn uleb128_edges() {
        assert_eq!(uleb128(&[0]).unwrap(), (0, 1));
        assert_eq!(uleb128(&[0xe5, 0x8e, 0x26]).unwrap(), (624_485, 3));
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(uleb128(&max).unwrap(), (u64::MAX, 10));
        let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(uleb128(&overflow), Err(Framing::BadLength));
        assert_eq!(uleb128(&[0x80, 0x80]), Err(Framing::ShortHeader));
        assert_eq!(uleb128(&[0x80; 11]), Err(Framing::BadLength));
    }
}

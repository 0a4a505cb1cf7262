//! Durable keyed rows beside the document: groups of `key -> bytes` with a version per group,
//! in their own redb file. stated keeps each machine's container table here (one group per
//! machine), because those records have a single writer and need no automerge history.
//!
//! Every [`RowStore::write`] is one transaction with immediate durability. The contents can
//! be rebuilt (a machine's own containers from Docker, the others from peers), so a file redb
//! refuses is kept aside as `<path>.damaged-<unix_millis>` and the store starts empty, with
//! the reason in [`RowsLoaded::problem`]; only the OS, a lock or a full disk are errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{builder, guard_panic, optional, quarantine, refusal, Refusal, StoreError};

/// redb's page cache for rows: they are read once, at open, so a small cache only bounds the
/// memory that writing them keeps around (the document store's cache would cost every
/// machine tens of MiB once enough container records were written).
const CACHE_BYTES: usize = 2 * 1024 * 1024;

fn rows_builder() -> redb::Builder {
    let mut b = builder();
    b.set_cache_size(CACHE_BYTES);
    b
}

const ROWS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("rows");
const VERSIONS: TableDefinition<&str, u64> = TableDefinition::new("versions");

/// One write, applied in order within a [`RowStore::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowWrite {
    Put {
        group: String,
        key: String,
        value: Vec<u8>,
    },
    Delete {
        group: String,
        key: String,
    },
    Version {
        group: String,
        version: u64,
    },
    /// Deletes a group's rows and version.
    DropGroup {
        group: String,
    },
    /// Deletes everything (before writing it all again).
    Clear,
}

/// A group as stored: its version and rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub version: u64,
    pub rows: BTreeMap<String, Vec<u8>>,
}

/// What [`RowStore::open`] found.
#[derive(Debug, Default)]
pub struct RowsLoaded {
    pub groups: BTreeMap<String, Group>,
    /// Why the file could not be read, when it was kept aside and the store started empty.
    pub problem: Option<String>,
}

/// An open row store.
pub struct RowStore {
    db: Database,
    path: PathBuf,
}

impl RowStore {
    /// Opens (creating it if missing) the row store at `path` and reads every group.
    pub fn open(path: &Path) -> Result<(RowStore, RowsLoaded), StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(StoreError::io(path, "create the parent directory"))?;
        }
        let opened = match guard_panic("redb", || Ok(rows_builder().create(path))) {
            Ok(Ok(db)) => match guard_panic("redb", || Ok(read_groups(&db))) {
                Ok(Ok(groups)) => Ok((db, groups)),
                Ok(Err(e)) => Err(refusal(path, "read the rows", e)),
                Err(panicked) => Err(Refusal::Damaged(panicked)),
            },
            Ok(Err(e)) => Err(refusal(path, "open the row store", e.into())),
            Err(panicked) => Err(Refusal::Damaged(panicked)),
        };
        let reason = match opened {
            Ok((db, groups)) => {
                let store = RowStore {
                    db,
                    path: path.to_path_buf(),
                };
                let loaded = RowsLoaded {
                    groups,
                    problem: None,
                };
                return Ok((store, loaded));
            }
            Err(Refusal::Fatal(e)) => return Err(e),
            Err(Refusal::Damaged(reason)) => reason,
        };
        let bytes =
            std::fs::read(path).map_err(StoreError::io(path, "read a damaged row store"))?;
        let copy = quarantine::keep_copy(path, &bytes)?;
        std::fs::remove_file(path).map_err(StoreError::io(path, "remove a damaged row store"))?;
        let db = rows_builder()
            .create(path)
            .map_err(StoreError::redb(path, "create the row store again"))?;
        let problem = format!(
            "{}: {reason}; kept at {} and started empty",
            path.display(),
            copy.display()
        );
        let store = RowStore {
            db,
            path: path.to_path_buf(),
        };
        let loaded = RowsLoaded {
            groups: BTreeMap::new(),
            problem: Some(problem),
        };
        Ok((store, loaded))
    }

    /// Applies `writes` in order in one transaction and returns once they are on disk.
    pub fn write(&mut self, writes: &[RowWrite]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let mut tx = self
            .db
            .begin_write()
            .map_err(StoreError::redb(&path, "begin a write transaction"))?;
        tx.set_durability(Durability::Immediate)
            .map_err(StoreError::redb(&path, "request immediate durability"))?;
        {
            let mut rows = tx
                .open_table(ROWS)
                .map_err(StoreError::redb(&path, "open the rows table"))?;
            let mut versions = tx
                .open_table(VERSIONS)
                .map_err(StoreError::redb(&path, "open the versions table"))?;
            for w in writes {
                let done: Result<(), redb::StorageError> = match w {
                    RowWrite::Put { group, key, value } => rows
                        .insert((group.as_str(), key.as_str()), value.as_slice())
                        .map(drop),
                    RowWrite::Delete { group, key } => {
                        rows.remove((group.as_str(), key.as_str())).map(drop)
                    }
                    RowWrite::Version { group, version } => {
                        versions.insert(group.as_str(), *version).map(drop)
                    }
                    RowWrite::DropGroup { group } => versions
                        .remove(group.as_str())
                        .and_then(|_| rows.retain(|(g, _), _| g != group.as_str())),
                    RowWrite::Clear => versions
                        .retain(|_, _| false)
                        .and_then(|()| rows.retain(|_, _| false)),
                };
                done.map_err(StoreError::redb(&path, "write a row"))?;
            }
        }
        tx.commit().map_err(StoreError::redb(&path, "commit rows"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_groups(db: &Database) -> Result<BTreeMap<String, Group>, redb::Error> {
    let tx = db.begin_read()?;
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    if let Some(table) = optional(tx.open_table(VERSIONS))? {
        for entry in table.iter()? {
            let (g, v) = entry?;
            groups.entry(g.value().to_string()).or_default().version = v.value();
        }
    }
    if let Some(table) = optional(tx.open_table(ROWS))? {
        for entry in table.iter()? {
            let (k, v) = entry?;
            let (g, key) = k.value();
            groups
                .entry(g.to_string())
                .or_default()
                .rows
                .insert(key.to_string(), v.value().to_vec());
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(g: &str, k: &str, v: &str) -> RowWrite {
        RowWrite::Put {
            group: g.into(),
            key: k.into(),
            value: v.as_bytes().to_vec(),
        }
    }

    #[test]
    fn writes_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.redb");
        {
            let (mut s, loaded) = RowStore::open(&path).unwrap();
            assert!(loaded.groups.is_empty() && loaded.problem.is_none());
            s.write(&[
                put("m1", "a", "1"),
                put("m1", "b", "2"),
                put("m2", "c", "3"),
                RowWrite::Version {
                    group: "m1".into(),
                    version: 7,
                },
                RowWrite::Delete {
                    group: "m1".into(),
                    key: "a".into(),
                },
                RowWrite::DropGroup { group: "m2".into() },
            ])
            .unwrap();
        }
        let (mut s, loaded) = RowStore::open(&path).unwrap();
        assert_eq!(loaded.groups.len(), 1);
        let g = &loaded.groups["m1"];
        assert_eq!(g.version, 7);
        assert_eq!(g.rows.keys().collect::<Vec<_>>(), vec!["b"]);
        s.write(&[RowWrite::Clear, put("m3", "x", "y")]).unwrap();
        drop(s);
        let (_, loaded) = RowStore::open(&path).unwrap();
        assert_eq!(loaded.groups.keys().collect::<Vec<_>>(), vec!["m3"]);
    }

    #[test]
    fn a_damaged_file_is_kept_aside_and_the_store_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let (mut s, loaded) = RowStore::open(&path).unwrap();
        let problem = loaded.problem.expect("the damage is reported");
        assert!(problem.contains("started empty"), "{problem}");
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".damaged-"))
            .collect();
        assert_eq!(kept.len(), 1);
        s.write(&[put("m1", "a", "1")]).unwrap();
    }

    #[test]
    fn a_second_open_is_refused_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.redb");
        let _first = RowStore::open(&path).unwrap();
        assert!(matches!(
            RowStore::open(&path),
            Err(StoreError::Locked { .. })
        ));
    }
}

//! The containers of every machine: one table per machine, outside the automerge document
//! (decision 0014).
//!
//! A container has one writer, the machine that runs it, so its record needs no CRDT and no
//! history. Each machine's table carries a version that only its own machine raises; a
//! replica of it is replaced or patched only by a newer version. Peers exchange *deltas*: the
//! rows written and the ids removed after the version the other side says it holds.
//!
//! What a table keeps is bounded: its live rows, and the ids of its last [`MAX_TOMBSTONES`]
//! removals (so a peer a little behind gets a delta, not the whole table). A peer further
//! behind than that gets the whole table, which replaces its copy. So a network that has run
//! 100,000 container starts and stops carries only the containers that exist.
//!
//! Pure: no I/O and no clock; the caller passes the time and stores the returned [`RowOp`]s
//! ([`row_writes`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use uncloud_common::model::{validate_id, Container, ModelError};
use uncloud_common::rpc::{TableDelta, TableRow};
use uncloud_docstore::rows::{Group, RowWrite};

/// Removals a table remembers for deltas; older ones cost a peer that far behind a whole table.
pub const MAX_TOMBSTONES: usize = 1024;
/// Rows put into one message, roughly: tables beyond it wait for the next round.
pub const MAX_ROWS_PER_MESSAGE: usize = 4096;

/// One machine's table as this machine holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub version: u64,
    /// The oldest version a delta may start from: removals before it are forgotten.
    floor: u64,
    rows: BTreeMap<String, TableRow>,
    /// (version, container id) of recent removals, oldest first.
    tombstones: VecDeque<(u64, String)>,
}

impl Table {
    /// The changes after `since`, or the whole table when `since` is older than what the
    /// tombstones cover (or 0).
    fn delta(&self, machine_id: &str, since: u64) -> TableDelta {
        let since = if since == 0 || since < self.floor {
            0
        } else {
            since
        };
        TableDelta {
            machine_id: machine_id.to_string(),
            since,
            version: self.version,
            rows: self
                .rows
                .values()
                .filter(|r| r.version > since)
                .cloned()
                .collect(),
            removed: if since == 0 {
                Vec::new()
            } else {
                self.tombstones
                    .iter()
                    .filter(|(v, _)| *v > since)
                    .map(|(_, id)| id.clone())
                    .collect()
            },
        }
    }

    /// A row written again makes an older removal of its id moot: the row, newer than the
    /// removal, reaches every peer that needs it. (A relayed removal is stamped with the
    /// version of the delta that brought it, which can be newer than the row.)
    fn unbury(&mut self, id: &str) {
        self.tombstones.retain(|(_, t)| t != id);
    }

    fn bury(&mut self, version: u64, id: String) {
        self.tombstones.push_back((version, id));
        while self.tombstones.len() > MAX_TOMBSTONES {
            if let Some((v, _)) = self.tombstones.pop_front() {
                self.floor = self.floor.max(v);
            }
        }
    }
}

/// A write for the container store, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOp {
    Put {
        machine_id: String,
        row: TableRow,
    },
    Delete {
        machine_id: String,
        id: String,
    },
    Version {
        machine_id: String,
        version: u64,
    },
    /// Forget a machine's whole table.
    Drop {
        machine_id: String,
    },
}

/// What one change did: the container ids whose record changed, and what to store.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TableChange {
    pub changed: BTreeSet<String>,
    pub ops: Vec<RowOp>,
}

impl TableChange {
    /// Adds a later change to this one.
    pub fn absorb(&mut self, later: TableChange) {
        self.changed.extend(later.changed);
        self.ops.extend(later.ops);
    }
}

/// The store writes for `ops`, rows as JSON.
pub fn row_writes(ops: &[RowOp]) -> Vec<RowWrite> {
    ops.iter()
        .map(|op| match op {
            RowOp::Put { machine_id, row } => RowWrite::Put {
                group: machine_id.clone(),
                key: row.container.id.clone(),
                value: serde_json::to_vec(row).expect("a table row always serializes"),
            },
            RowOp::Delete { machine_id, id } => RowWrite::Delete {
                group: machine_id.clone(),
                key: id.clone(),
            },
            RowOp::Version {
                machine_id,
                version,
            } => RowWrite::Version {
                group: machine_id.clone(),
                version: *version,
            },
            RowOp::Drop { machine_id } => RowWrite::DropGroup {
                group: machine_id.clone(),
            },
        })
        .collect()
}

/// Tables from what the row store loaded; rows that do not decode are skipped and named in the
/// returned problems (a peer or Docker supplies them again).
pub fn from_stored(groups: BTreeMap<String, Group>) -> (ContainerTables, Vec<String>) {
    let mut problems = Vec::new();
    let stored = groups
        .into_iter()
        .map(|(machine, group)| {
            let before = problems.len();
            let rows: Vec<TableRow> = group
                .rows
                .into_iter()
                .filter_map(
                    |(key, bytes)| match serde_json::from_slice::<TableRow>(&bytes) {
                        Ok(row)
                            if row.container.id == key && row.container.machine_id == machine =>
                        {
                            Some(row)
                        }
                        Ok(_) => {
                            problems.push(format!("row {machine}/{key} holds another container"));
                            None
                        }
                        Err(e) => {
                            problems.push(format!("row {machine}/{key} does not decode: {e}"));
                            None
                        }
                    },
                )
                .collect();
            // Rows were lost: version 0 makes peers send the whole table again.
            let version = if problems.len() > before {
                0
            } else {
                group.version
            };
            (machine, version, rows)
        })
        .collect::<Vec<_>>();
    (ContainerTables::restore(stored), problems)
}

/// Why a delta from a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("a table delta names an invalid machine or container: {0}")]
    Invalid(#[from] ModelError),
    #[error("a table delta for machine {machine} holds container {id} of machine {owner}")]
    ForeignRow {
        machine: String,
        id: String,
        owner: String,
    },
    #[error("a table delta for machine {machine} has versions out of order ({since} .. {version}, row {row})")]
    Versions {
        machine: String,
        since: u64,
        version: u64,
        row: u64,
    },
}

/// Every machine's container table, as this machine holds them.
#[derive(Debug, Clone, Default)]
pub struct ContainerTables {
    tables: BTreeMap<String, Table>,
}

impl ContainerTables {
    /// Tables as stored: (machine id, version, rows). Tombstones are not stored: a restarted
    /// machine answers peers behind its stored versions with whole tables.
    pub fn restore(stored: impl IntoIterator<Item = (String, u64, Vec<TableRow>)>) -> Self {
        let tables = stored
            .into_iter()
            .map(|(machine, version, rows)| {
                let table = Table {
                    version,
                    floor: version,
                    rows: rows
                        .into_iter()
                        .map(|r| (r.container.id.clone(), r))
                        .collect(),
                    tombstones: VecDeque::new(),
                };
                (machine, table)
            })
            .collect();
        ContainerTables { tables }
    }

    /// Every table's rows and version, as [`RowOp`]s that rebuild the store from nothing.
    pub fn all_ops(&self) -> Vec<RowOp> {
        let mut ops = Vec::new();
        for (machine, t) in &self.tables {
            ops.extend(t.rows.values().map(|row| RowOp::Put {
                machine_id: machine.clone(),
                row: row.clone(),
            }));
            ops.push(RowOp::Version {
                machine_id: machine.clone(),
                version: t.version,
            });
        }
        ops
    }

    pub fn get(&self, id: &str) -> Option<&Container> {
        self.tables
            .values()
            .find_map(|t| t.rows.get(id).map(|r| &r.container))
    }

    /// Every container of every table, keyed by id.
    pub fn containers(&self) -> BTreeMap<String, Container> {
        self.tables
            .values()
            .flat_map(|t| {
                t.rows
                    .iter()
                    .map(|(id, r)| (id.clone(), r.container.clone()))
            })
            .collect()
    }

    /// The containers among `ids` that exist.
    pub fn containers_by_id(&self, ids: &[String]) -> BTreeMap<String, Container> {
        ids.iter()
            .filter_map(|id| self.get(id).map(|c| (id.clone(), c.clone())))
            .collect()
    }

    pub fn version_of(&self, machine_id: &str) -> u64 {
        self.tables.get(machine_id).map_or(0, |t| t.version)
    }

    /// Machine id -> version of every table held.
    pub fn versions(&self) -> BTreeMap<String, u64> {
        self.tables
            .iter()
            .map(|(m, t)| (m.clone(), t.version))
            .collect()
    }

    /// A short fingerprint of [`Self::versions`], for gossip: when a peer's changes, it may
    /// hold a table newer than ours.
    pub fn fingerprint(&self) -> u64 {
        // FNV-1a: the same on every machine and release.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (m, t) in &self.tables {
            for b in m.bytes().chain([0]).chain(t.version.to_le_bytes()) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }

    /// Writes (creates or replaces) a container of `machine_id`'s own table. `None` when the
    /// record is already exactly this.
    pub fn upsert(&mut self, machine_id: &str, c: Container, now_ms: u64) -> Option<TableChange> {
        let table = self.tables.entry(machine_id.to_string()).or_default();
        if table.rows.get(&c.id).is_some_and(|r| r.container == c) {
            return None;
        }
        let version = next_version(table.version, now_ms);
        if table.version == 0 {
            // A table this machine starts (again, if its store was lost): a peer holding an
            // older one must get it whole, removals included.
            table.floor = version;
        }
        table.version = version;
        let row = TableRow {
            version,
            container: c,
        };
        let id = row.container.id.clone();
        table.unbury(&id);
        table.rows.insert(id.clone(), row.clone());
        Some(TableChange {
            changed: BTreeSet::from([id]),
            ops: vec![
                RowOp::Put {
                    machine_id: machine_id.to_string(),
                    row,
                },
                RowOp::Version {
                    machine_id: machine_id.to_string(),
                    version,
                },
            ],
        })
    }

    /// Removes a container from `machine_id`'s own table; `None` when it is not there.
    pub fn remove(&mut self, machine_id: &str, id: &str, now_ms: u64) -> Option<TableChange> {
        let table = self.tables.get_mut(machine_id)?;
        table.rows.remove(id)?;
        let version = next_version(table.version, now_ms);
        table.version = version;
        table.bury(version, id.to_string());
        Some(TableChange {
            changed: BTreeSet::from([id.to_string()]),
            ops: vec![
                RowOp::Delete {
                    machine_id: machine_id.to_string(),
                    id: id.to_string(),
                },
                RowOp::Version {
                    machine_id: machine_id.to_string(),
                    version,
                },
            ],
        })
    }

    /// A peer holds `machine_id`'s own table at `theirs`, above what this machine (its only
    /// writer) holds: it lost writes its peers had already seen (a lost or damaged store, a
    /// crash between sending and storing). Jumps past that version and answers every peer
    /// with the whole table from then on, so every copy is replaced.
    pub fn outrun(&mut self, machine_id: &str, theirs: u64, now_ms: u64) -> Option<TableChange> {
        let table = self.tables.entry(machine_id.to_string()).or_default();
        if theirs <= table.version {
            return None;
        }
        let version = next_version(theirs, now_ms);
        table.version = version;
        table.floor = version;
        table.tombstones.clear();
        Some(TableChange {
            changed: BTreeSet::new(),
            ops: vec![RowOp::Version {
                machine_id: machine_id.to_string(),
                version,
            }],
        })
    }

    /// Forgets a machine's table (the machine was removed from the network).
    pub fn drop_table(&mut self, machine_id: &str) -> Option<TableChange> {
        let table = self.tables.remove(machine_id)?;
        Some(TableChange {
            changed: table.rows.into_keys().collect(),
            ops: vec![RowOp::Drop {
                machine_id: machine_id.to_string(),
            }],
        })
    }

    /// Machines whose tables are held, for sweeping removed ones.
    pub fn machines(&self) -> impl Iterator<Item = &String> {
        self.tables.keys()
    }

    /// What a peer that holds `theirs` lacks, skipping tables `skip` says not to send, about
    /// [`MAX_ROWS_PER_MESSAGE`] rows at most (always at least one table).
    pub fn deltas_for(
        &self,
        theirs: &BTreeMap<String, u64>,
        skip: impl Fn(&str) -> bool,
    ) -> Vec<TableDelta> {
        let mut out = Vec::new();
        let mut rows = 0;
        for (machine, table) in &self.tables {
            let held = theirs.get(machine).copied().unwrap_or(0);
            if table.version <= held || skip(machine) {
                continue;
            }
            if !out.is_empty() && rows >= MAX_ROWS_PER_MESSAGE {
                break;
            }
            let delta = table.delta(machine, held);
            rows += delta.rows.len() + delta.removed.len();
            out.push(delta);
        }
        out
    }

    /// Applies a peer's delta. `Ok(None)` when it brings nothing newer, or does not follow
    /// from what this machine holds (the next round's versions ask again).
    pub fn apply(&mut self, delta: TableDelta) -> Result<Option<TableChange>, TableError> {
        check(&delta)?;
        let machine = delta.machine_id.clone();
        let table = self.tables.entry(machine.clone()).or_default();
        if delta.version <= table.version || (delta.since != 0 && delta.since > table.version) {
            if table.rows.is_empty() && table.version == 0 {
                self.tables.remove(&machine);
            }
            return Ok(None);
        }
        let mut change = TableChange::default();
        if delta.since == 0 {
            let old = std::mem::take(&mut table.rows);
            let new: BTreeMap<String, TableRow> = delta
                .rows
                .into_iter()
                .map(|r| (r.container.id.clone(), r))
                .collect();
            for (id, row) in &old {
                if new.get(id).map(|r| &r.container) != Some(&row.container) {
                    change.changed.insert(id.clone());
                }
            }
            for (id, row) in &new {
                if old.get(id).map(|r| &r.container) != Some(&row.container) {
                    change.changed.insert(id.clone());
                }
            }
            change.ops.push(RowOp::Drop {
                machine_id: machine.clone(),
            });
            change.ops.extend(new.values().map(|row| RowOp::Put {
                machine_id: machine.clone(),
                row: row.clone(),
            }));
            table.rows = new;
            table.tombstones.clear();
            table.floor = delta.version;
        } else {
            for id in delta.removed {
                if table.rows.remove(&id).is_some() {
                    change.changed.insert(id.clone());
                    change.ops.push(RowOp::Delete {
                        machine_id: machine.clone(),
                        id: id.clone(),
                    });
                }
                table.bury(delta.version, id);
            }
            for row in delta.rows {
                let id = row.container.id.clone();
                if table.rows.get(&id).map(|r| &r.container) != Some(&row.container) {
                    change.changed.insert(id.clone());
                }
                change.ops.push(RowOp::Put {
                    machine_id: machine.clone(),
                    row: row.clone(),
                });
                table.unbury(&id);
                table.rows.insert(id, row);
            }
        }
        table.version = delta.version;
        change.ops.push(RowOp::Version {
            machine_id: machine,
            version: delta.version,
        });
        Ok(Some(change))
    }
}

/// A table's next version: above the last one, and the clock's milliseconds when those are
/// higher, so a machine whose store was lost still writes versions its peers take as newer.
fn next_version(last: u64, now_ms: u64) -> u64 {
    last.saturating_add(1).max(now_ms)
}

/// Refuses a delta that no honest peer sends.
pub fn check(delta: &TableDelta) -> Result<(), TableError> {
    validate_id("machine id", &delta.machine_id)?;
    for id in &delta.removed {
        validate_id("container id", id)?;
    }
    let bad_versions = |row: u64| TableError::Versions {
        machine: delta.machine_id.clone(),
        since: delta.since,
        version: delta.version,
        row,
    };
    if delta.version < delta.since {
        return Err(bad_versions(0));
    }
    for row in &delta.rows {
        row.container.validate()?;
        if row.container.machine_id != delta.machine_id {
            return Err(TableError::ForeignRow {
                machine: delta.machine_id.clone(),
                id: row.container.id.clone(),
                owner: row.container.machine_id.clone(),
            });
        }
        if row.version > delta.version {
            return Err(bad_versions(row.version));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn container(machine: &str, id: &str, image: &str) -> Container {
        Container {
            id: id.into(),
            machine_id: machine.into(),
            name: id.into(),
            image: image.into(),
            healthy: true,
            ..Default::default()
        }
    }

    /// Brings `to` up to date with `from` the way a sync round does.
    fn exchange(from: &ContainerTables, to: &mut ContainerTables) {
        for delta in from.deltas_for(&to.versions(), |_| false) {
            to.apply(delta).unwrap();
        }
    }

    #[test]
    fn a_delta_carries_only_what_changed_and_removals() {
        let mut a = ContainerTables::default();
        let mut b = ContainerTables::default();
        for i in 0..10 {
            a.upsert("m1", container("m1", &format!("c{i}"), "x"), 1000 + i);
        }
        exchange(&a, &mut b);
        assert_eq!(a.containers(), b.containers());
        a.upsert("m1", container("m1", "c3", "y"), 2000).unwrap();
        a.remove("m1", "c4", 2001).unwrap();
        let deltas = a.deltas_for(&b.versions(), |_| false);
        assert_eq!(deltas.len(), 1);
        assert_ne!(deltas[0].since, 0, "a delta, not the whole table");
        assert_eq!(deltas[0].rows.len(), 1);
        assert_eq!(deltas[0].removed, vec!["c4".to_string()]);
        let change = b.apply(deltas[0].clone()).unwrap().unwrap();
        assert_eq!(
            change.changed,
            BTreeSet::from(["c3".to_string(), "c4".to_string()])
        );
        assert_eq!(a.containers(), b.containers());
        assert_eq!(a.versions(), b.versions());
        // The same delta again brings nothing.
        assert_eq!(b.apply(deltas[0].clone()).unwrap(), None);
    }

    #[test]
    fn a_hundred_thousand_starts_and_stops_leave_only_whats_running() {
        let mut a = ContainerTables::default();
        let mut b = ContainerTables::default();
        exchange(&a, &mut b);
        for i in 0..100_000u64 {
            let id = format!("c{i}");
            a.upsert("m1", container("m1", &id, "x"), i);
            if i % 100 != 0 {
                a.remove("m1", &id, i);
            }
        }
        let t = &a.tables["m1"];
        assert_eq!(t.rows.len(), 1000);
        assert_eq!(t.tombstones.len(), MAX_TOMBSTONES);
        // b was behind by far more than the tombstones cover: it gets the whole table.
        let deltas = a.deltas_for(&b.versions(), |_| false);
        assert_eq!(deltas[0].since, 0);
        exchange(&a, &mut b);
        assert_eq!(a.containers(), b.containers());
    }

    #[test]
    fn stale_gapped_and_own_deltas_are_left_alone() {
        let mut a = ContainerTables::default();
        a.upsert("m1", container("m1", "c1", "x"), 10);
        let old = a.deltas_for(&BTreeMap::new(), |_| false);
        a.upsert("m1", container("m1", "c2", "x"), 20);
        let mut b = ContainerTables::default();
        exchange(&a, &mut b);
        // An older whole table does not replace a newer one.
        assert_eq!(b.apply(old[0].clone()).unwrap(), None);
        assert_eq!(b.containers().len(), 2);
        // A delta starting after what c holds is a gap: ignored, asked again later.
        let mut c = ContainerTables::default();
        let gap = TableDelta {
            since: 15,
            ..a.deltas_for(&BTreeMap::from([("m1".into(), 15)]), |_| false)[0].clone()
        };
        assert_eq!(c.apply(gap).unwrap(), None);
        assert!(c.versions().is_empty(), "no empty table left behind");
    }

    #[test]
    fn hostile_deltas_are_refused() {
        let mut t = ContainerTables::default();
        let foreign = TableDelta {
            machine_id: "m1".into(),
            since: 0,
            version: 5,
            rows: vec![TableRow {
                version: 5,
                container: container("m2", "c1", "x"),
            }],
            removed: vec![],
        };
        assert!(matches!(
            t.apply(foreign),
            Err(TableError::ForeignRow { .. })
        ));
        let backwards = TableDelta {
            machine_id: "m1".into(),
            since: 9,
            version: 5,
            ..Default::default()
        };
        assert!(t.apply(backwards).is_err());
        let bad_id = TableDelta {
            machine_id: "../x".into(),
            version: 5,
            ..Default::default()
        };
        assert!(t.apply(bad_id).is_err());
        assert!(t.versions().is_empty());
    }

    #[test]
    fn a_restored_table_serves_whole_tables_to_peers_behind_it() {
        let mut a = ContainerTables::default();
        a.upsert("m1", container("m1", "c1", "x"), 10);
        a.upsert("m1", container("m1", "c2", "x"), 20);
        a.remove("m1", "c1", 30);
        let rows: Vec<TableRow> = a.tables["m1"].rows.values().cloned().collect();
        let restored = ContainerTables::restore([("m1".to_string(), 30, rows)]);
        let d = restored.deltas_for(&BTreeMap::from([("m1".into(), 20)]), |_| false);
        assert_eq!(
            d[0].since, 0,
            "the removal of c1 is not remembered: whole table"
        );
        let mut b = ContainerTables::default();
        b.upsert("m1", container("m1", "c1", "x"), 10);
        b.upsert("m1", container("m1", "c2", "x"), 20);
        b.apply(d[0].clone()).unwrap();
        assert_eq!(b.containers(), a.containers());
    }

    #[test]
    fn a_writer_that_lost_its_store_replaces_every_copy() {
        let mut w = ContainerTables::default();
        w.upsert("m1", container("m1", "c1", "x"), 10);
        w.upsert("m1", container("m1", "c2", "x"), 20);
        let mut p = ContainerTables::default();
        exchange(&w, &mut p);
        // The store is lost: the writer starts empty, Docker gives back only c2.
        let mut w = ContainerTables::default();
        w.upsert("m1", container("m1", "c2", "x"), 30);
        exchange(&w, &mut p);
        assert_eq!(p.containers(), w.containers(), "c1 is gone on the peer too");
        // A crash lost a write the peer had: the peer is ahead of the writer.
        let mut w = ContainerTables::default();
        w.upsert("m1", container("m1", "c2", "x"), 5);
        assert!(p.version_of("m1") > w.version_of("m1"));
        let change = w.outrun("m1", p.version_of("m1"), 6).unwrap();
        assert!(change.changed.is_empty());
        assert!(w.version_of("m1") > p.version_of("m1"));
        w.upsert("m1", container("m1", "c3", "x"), 7);
        exchange(&w, &mut p);
        assert_eq!(p.containers(), w.containers());
        assert_eq!(w.outrun("m1", 1, 8), None, "nothing to outrun");
    }

    #[derive(Debug, Clone)]
    enum Step {
        Upsert(u8, u8),
        Remove(u8),
        /// Replica `r` catches up from the writer.
        Sync(usize),
        /// Replica `r` catches up from replica `s` (relayed).
        Relay(usize, usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..40, 0u8..3).prop_map(|(i, v)| Step::Upsert(i, v)),
            (0u8..40).prop_map(Step::Remove),
            (0usize..3).prop_map(Step::Sync),
            (0usize..3, 0usize..3).prop_map(|(r, s)| Step::Relay(r, s)),
        ]
    }

    proptest! {
        /// However writes, direct syncs and relayed syncs interleave, a replica that last
        /// synced holds exactly the writer's table, and a final sync of all brings all level.
        #[test]
        fn replicas_converge_to_the_writer(steps in proptest::collection::vec(step(), 1..200)) {
            let mut writer = ContainerTables::default();
            let mut replicas = vec![ContainerTables::default(); 3];
            let mut now = 0;
            for s in steps {
                now += 1;
                match s {
                    Step::Upsert(i, v) => {
                        writer.upsert("m1", container("m1", &format!("c{i}"), &v.to_string()), now);
                    }
                    Step::Remove(i) => {
                        writer.remove("m1", &format!("c{i}"), now);
                    }
                    Step::Sync(r) => {
                        exchange(&writer, &mut replicas[r]);
                        prop_assert_eq!(replicas[r].containers(), writer.containers());
                    }
                    Step::Relay(r, s) if r != s => {
                        let from = replicas[s].clone();
                        exchange(&from, &mut replicas[r]);
                        if replicas[r].version_of("m1") == from.version_of("m1") {
                            prop_assert_eq!(replicas[r].containers(), from.containers());
                        }
                    }
                    Step::Relay(..) => {}
                }
            }
            for r in &mut replicas {
                exchange(&writer, r);
                prop_assert_eq!(r.containers(), writer.containers());
            }
        }
    }
}

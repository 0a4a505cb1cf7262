//! What a node's tasks share: the document, its store writer, the change announcements, and
//! the reactions to changes (the conflict loop).
//!
//! All writes go through [`Shared::mutate`]; merges from peers go through
//! [`Shared::receive_sync`]. Both end in `after_change`, which announces what changed,
//! publishes the new heads to gossip and re-checks the uniqueness rules. Gossip and sync
//! depend on this module, never the other way round: the sync workers are kept in
//! [`crate::peers`], which knows nothing of sync sessions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automerge::sync;
use automerge::ChangeHash;
use tokio::sync::{broadcast, watch, Notify};
use uncloud_common::conflict;
use uncloud_common::liveness::Liveness;
use uncloud_common::model::{Container, Kind, Machine, ModelError, NetworkState};
use uncloud_common::rpc::{TableDelta, TablesMessage};

use crate::clock::now_ms;
use crate::config::Config;
use crate::document::{DocError, MachineUpdate, Mutation, StateDoc};
use crate::errors::WriteError;
use crate::links::Links;
use crate::liveness::LivenessTracker;
use crate::mesh_peers::MeshPeers;
use crate::peers::Peers;
use crate::persist::Writer;
use crate::tables::{row_writes, ContainerTables, TableChange, TableError};

/// What changed, for the D-Bus signals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Changed {
        kind: Kind,
        ids: Vec<String>,
    },
    Liveness {
        machine_id: String,
        liveness: Liveness,
    },
    /// Listeners may have missed events: the D-Bus forwarder says so when it fell behind, and
    /// when the machine becomes a member. The node itself never sends it.
    Resync,
}

/// Traffic counters, read by the benchmark.
#[derive(Debug, Default)]
pub struct Metrics {
    pub gossip_bytes_sent: Arc<AtomicU64>,
    pub gossip_bytes_received: Arc<AtomicU64>,
    pub sync_bytes_sent: AtomicU64,
    pub sync_bytes_received: AtomicU64,
    /// Sync message parts beyond the first of each message (catch-ups bigger than a part).
    pub sync_parts: AtomicU64,
}

pub(crate) struct DocCell {
    pub doc: StateDoc,
    /// Heads up to which everything has been handed to the store writer.
    pub saved_heads: Vec<ChangeHash>,
    /// The containers, outside the document (decision 0014).
    pub tables: ContainerTables,
}

impl DocCell {
    fn state(&self) -> NetworkState {
        NetworkState {
            containers: self.tables.containers(),
            ..self.doc.state()
        }
    }
}

/// State shared by the node's tasks.
pub struct Shared {
    pub machine_id: String,
    pub network_id: String,
    pub config: Config,
    pub(crate) doc: Arc<Mutex<DocCell>>,
    writer: Mutex<Writer>,
    events: broadcast::Sender<Event>,
    heads: watch::Sender<Vec<ChangeHash>>,
    /// [`ContainerTables::fingerprint`], for gossip.
    tables_fingerprint: watch::Sender<u64>,
    pub(crate) liveness: Mutex<LivenessTracker>,
    pub(crate) links: Links,
    pub metrics: Metrics,
    pub(crate) peers: Peers,
    conflict_check: Notify,
    /// Services whose merged spec holds concurrent deploys, for the conflict loop to settle.
    unsettled: Mutex<BTreeSet<String>>,
    /// Admissions on this machine one at a time, so two never pick the same free subnet.
    admissions: tokio::sync::Mutex<()>,
    pub(crate) shutdown: watch::Sender<bool>,
    /// The machines' mesh addresses, when listening on the mesh ([`crate::mesh_peers`]).
    pub(crate) mesh_peers: Arc<std::sync::RwLock<Arc<MeshPeers>>>,
    /// This machine's mesh address, as its entry says.
    pub(crate) mesh_me: watch::Sender<Option<std::net::IpAddr>>,
}

impl Shared {
    /// The shared state of a node whose document and store writer are open.
    pub(crate) fn new(
        machine_id: String,
        network: &str,
        config: Config,
        doc: Arc<Mutex<DocCell>>,
        writer: Writer,
        heads: Vec<ChangeHash>,
        links: Links,
    ) -> Arc<Shared> {
        let (events, _) = broadcast::channel(1024);
        let fingerprint = doc.lock().unwrap().tables.fingerprint();
        Arc::new(Shared {
            machine_id,
            network_id: network.to_string(),
            liveness: Mutex::new(LivenessTracker::new(Duration::from_millis(
                config.suspect_after_ms,
            ))),
            config,
            doc,
            writer: Mutex::new(writer),
            events,
            heads: watch::channel(heads).0,
            tables_fingerprint: watch::channel(fingerprint).0,
            links,
            metrics: Metrics::default(),
            peers: Peers::default(),
            conflict_check: Notify::new(),
            unsettled: Mutex::default(),
            admissions: tokio::sync::Mutex::new(()),
            shutdown: watch::channel(false).0,
            mesh_peers: Arc::default(),
            mesh_me: watch::channel(None).0,
        })
    }

    /// Waits until every change handed to the store writer is on disk, and stops it.
    /// Blocking: for the end of a node's life.
    pub(crate) fn finish_writes(&self) {
        self.writer.lock().unwrap().finish();
    }

    /// Asks the conflict loop to look at the state again.
    pub(crate) fn check_conflicts(&self) {
        self.conflict_check.notify_one();
    }
}

impl Shared {
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn heads(&self) -> Vec<ChangeHash> {
        self.heads.borrow().clone()
    }

    pub fn watch_heads(&self) -> watch::Receiver<Vec<ChangeHash>> {
        self.heads.subscribe()
    }

    pub fn watch_tables_fingerprint(&self) -> watch::Receiver<u64> {
        self.tables_fingerprint.subscribe()
    }

    /// Machine id -> version of every container table this machine holds.
    pub fn table_versions(&self) -> BTreeMap<String, u64> {
        self.doc.lock().unwrap().tables.versions()
    }

    pub fn state(&self) -> NetworkState {
        self.doc.lock().unwrap().state()
    }

    pub fn machine(&self, id: &str) -> Option<Machine> {
        self.doc.lock().unwrap().doc.machine(id)
    }

    pub fn part_json(&self, kind: Kind, id: Option<&str>) -> Result<serde_json::Value, DocError> {
        let cell = self.doc.lock().unwrap();
        if kind != Kind::Containers {
            return cell.doc.part_json(kind, id);
        }
        let value = match id {
            None => serde_json::to_value(cell.tables.containers()),
            Some(id) => {
                serde_json::to_value(cell.tables.get(id).ok_or_else(|| DocError::NotFound {
                    kind,
                    id: id.to_string(),
                })?)
            }
        };
        Ok(value.unwrap_or(serde_json::Value::Null))
    }

    /// The entities of `kind` among `ids` that exist, as a JSON object keyed by id.
    pub fn part_json_many(&self, kind: Kind, ids: &[String]) -> serde_json::Value {
        let cell = self.doc.lock().unwrap();
        if kind == Kind::Containers {
            return serde_json::to_value(cell.tables.containers_by_id(ids))
                .unwrap_or(serde_json::Value::Null);
        }
        cell.doc.part_json_many(kind, ids)
    }

    pub fn liveness(&self) -> BTreeMap<String, Liveness> {
        let mut all = self.liveness.lock().unwrap().all();
        for id in self.doc.lock().unwrap().doc.machines().keys() {
            all.entry(id.clone()).or_insert(Liveness::Down);
        }
        all.insert(self.machine_id.clone(), Liveness::Alive);
        all
    }

    /// For the watchdog: the document lock can be taken and the store writer runs. Blocks
    /// (the caller runs it off the async workers, with a deadline).
    pub fn health_check(&self) -> Result<(), String> {
        drop(self.doc.lock().unwrap());
        if self.writer.lock().unwrap().is_running() {
            Ok(())
        } else {
            Err("the store writer thread has stopped".into())
        }
    }

    /// Validates and applies a local change; returns once it is durable.
    pub async fn mutate(self: &Arc<Self>, mut mutation: Mutation) -> Result<(), WriteError> {
        self.validate(&mutation)?;
        if let Mutation::UpsertService(s) = &mut mutation {
            // A new service's age decides hostname claims (`uncloud_common::claims`); an
            // existing one keeps its own.
            if s.created_at_ms == 0 {
                s.created_at_ms = now_ms();
            }
        }
        if let Some(write) = ContainerWrite::of(&mutation) {
            return self.write_container(write).await;
        }
        let (ack, changed) = {
            let mut cell = self.doc.lock().unwrap();
            let before = cell.doc.heads();
            if !cell.doc.apply(&mutation)? {
                return Ok(());
            }
            let after = cell.doc.heads();
            let blob = cell.doc.save_after(&cell.saved_heads);
            cell.saved_heads = after.clone();
            let ack = self.writer.lock().unwrap().submit(blob);
            // Under the lock, so concurrent changes publish their heads in order.
            self.heads.send_replace(after.clone());
            (ack, cell.doc.changed_between(&before, &after))
        };
        self.after_change(changed, true);
        match ack.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WriteError::Storage(e)),
            Err(_) => Err(WriteError::Storage("the store writer stopped".into())),
        }
    }

    /// Writes this machine's own container table; returns once the rows are durable.
    async fn write_container(
        self: &Arc<Self>,
        write: ContainerWrite<'_>,
    ) -> Result<(), WriteError> {
        let (ack, changed) = {
            let mut cell = self.doc.lock().unwrap();
            let me = self.machine_id.as_str();
            let change = match write {
                ContainerWrite::Upsert(c) => cell.tables.upsert(me, c.clone(), now_ms()),
                ContainerWrite::Update(u) => {
                    let stored =
                        cell.tables
                            .get(&u.id)
                            .cloned()
                            .ok_or_else(|| DocError::NotFound {
                                kind: Kind::Containers,
                                id: u.id.clone(),
                            })?;
                    cell.tables.upsert(me, u.applied_to(stored), now_ms())
                }
                ContainerWrite::Remove(id) => {
                    if let Some(owner) = cell.tables.get(id).map(|c| c.machine_id.clone()) {
                        self.check_owner(Kind::Containers, id, &owner)?;
                    }
                    cell.tables.remove(me, id, now_ms())
                }
            };
            match change {
                Some(change) => (self.tables_changed(&cell, change), true),
                // Already so in memory, but perhaps not yet on disk (an identical write still
                // in flight, or one that failed): the caller waits for the row store anyway.
                None => (self.writer.lock().unwrap().submit_rows(Vec::new()), false),
            }
        };
        if changed {
            self.peers.push_all();
        }
        durable(ack).await
    }

    /// Hands a change of the container tables to the store writer and announces it (under
    /// the document lock, so rows are stored and fingerprints published in order); the
    /// receiver resolves once its rows are durable.
    fn tables_changed(
        &self,
        cell: &DocCell,
        change: TableChange,
    ) -> tokio::sync::oneshot::Receiver<crate::persist::Ack> {
        let ack = self
            .writer
            .lock()
            .unwrap()
            .submit_rows(row_writes(&change.ops));
        self.tables_fingerprint
            .send_replace(cell.tables.fingerprint());
        if !change.changed.is_empty() {
            self.emit(Event::Changed {
                kind: Kind::Containers,
                ids: change.changed.into_iter().collect(),
            });
        }
        ack
    }

    /// What peer `peer`, holding `versions`, lacks of the container tables. Removed
    /// machines' tables are not passed on, nor the peer's own (it is their only writer). When
    /// the peer holds this machine's own table at a newer version than this machine does,
    /// this machine lost writes the peer saw: its table jumps past that version, so the next
    /// exchange replaces every copy ([`ContainerTables::outrun`]).
    pub(crate) fn tables_for(&self, peer: &str, versions: &BTreeMap<String, u64>) -> TablesMessage {
        let cell = &mut *self.doc.lock().unwrap();
        let me = self.machine_id.as_str();
        if let Some(&theirs) = versions.get(me) {
            if let Some(change) = cell.tables.outrun(me, theirs, now_ms()) {
                tracing::warn!(
                    peer,
                    theirs,
                    "a peer holds a newer copy of this machine's \
                    containers than this machine (writes lost in a crash or with the store); \
                    sending the whole table to every peer"
                );
                // Durable soon; nobody waits for it.
                drop(self.tables_changed(cell, change));
            }
        }
        TablesMessage {
            versions: cell.tables.versions(),
            deltas: cell
                .tables
                .deltas_for(versions, |m| m == peer || cell.doc.removal(m).is_some()),
        }
    }

    /// Applies a peer's table deltas: only for machines in the state that were not removed,
    /// and never for this machine's own table (it is the one writer). Stored soon, in order;
    /// a peer still has them if this machine crashes before. Returns whether anything
    /// changed; a delta that fails the checks refuses the whole message before anything of
    /// it is applied.
    pub(crate) fn receive_tables(&self, deltas: Vec<TableDelta>) -> Result<bool, TableError> {
        if deltas.is_empty() {
            return Ok(false);
        }
        for delta in &deltas {
            crate::tables::check(delta)?;
        }
        let cell = &mut *self.doc.lock().unwrap();
        let mut merged = TableChange::default();
        for delta in deltas {
            let m = delta.machine_id.as_str();
            if m == self.machine_id
                || cell.doc.removal(m).is_some()
                || cell.doc.machine(m).is_none()
            {
                continue;
            }
            if let Some(change) = cell.tables.apply(delta)? {
                merged.absorb(change);
            }
        }
        if merged.ops.is_empty() {
            return Ok(false);
        }
        drop(self.tables_changed(cell, merged));
        self.conflict_check.notify_one();
        Ok(true)
    }

    /// Forgets the container tables of machines that were removed; returns whether any was.
    fn drop_removed_tables(&self) -> bool {
        let cell = &mut *self.doc.lock().unwrap();
        let removed: Vec<String> = cell
            .tables
            .machines()
            .filter(|m| cell.doc.removal(m).is_some())
            .cloned()
            .collect();
        let mut merged = TableChange::default();
        for m in &removed {
            if let Some(change) = cell.tables.drop_table(m) {
                merged.absorb(change);
            }
        }
        if merged.ops.is_empty() {
            return false;
        }
        tracing::info!(machines = ?removed, "forgetting the containers of removed machines");
        drop(self.tables_changed(cell, merged));
        true
    }

    fn validate(&self, mutation: &Mutation) -> Result<(), WriteError> {
        match mutation {
            Mutation::UpsertMachine(m) => m.validate()?,
            Mutation::UpsertService(s) => s.validate()?,
            Mutation::UpsertContainer(c) => {
                c.validate()?;
                self.check_owner(Kind::Containers, &c.id, &c.machine_id)?;
            }
            Mutation::UpdateContainer(u) => {
                uncloud_common::model::validate_id("container id", &u.id)?;
                let owner = self
                    .doc
                    .lock()
                    .unwrap()
                    .tables
                    .get(&u.id)
                    .map(|c| c.machine_id.clone());
                match owner {
                    Some(owner) => self.check_owner(Kind::Containers, &u.id, &owner)?,
                    None => {
                        return Err(DocError::NotFound {
                            kind: Kind::Containers,
                            id: u.id.clone(),
                        }
                        .into())
                    }
                }
            }
            Mutation::UpsertClient(c) => c.validate()?,
            Mutation::UpsertFile(f) => f.validate()?,
            Mutation::UpsertCertificate(c) => c.validate()?,
            Mutation::RemoveCertificate(h) => {
                if uncloud_common::ports::hostname(h).is_err() {
                    return Err(ModelError::Invalid {
                        what: "certificate hostname",
                        value: h.chars().take(64).collect(),
                        why: "not a DNS name",
                    }
                    .into());
                }
            }
            Mutation::SetMeshCidr(cidr) => {
                if conflict::subnet_capacity(cidr).is_none() {
                    return Err(ModelError::Invalid {
                        what: "mesh CIDR",
                        value: cidr.clone(),
                        why: "expected an IPv4 CIDR between /8 and /23",
                    }
                    .into());
                }
            }
            Mutation::UpdateMachine(u) => {
                // The same checks as a whole machine, on the fields that change.
                u.applied_to(Machine {
                    id: u.machine_id.clone(),
                    name: "m".into(),
                    subnet: 1,
                    ..Default::default()
                })
                .validate()?;
            }
            Mutation::RemoveMachine(r) => {
                uncloud_common::model::validate_id("machine id", &r.machine_id)?
            }
            Mutation::SweepRemoved => {}
            Mutation::RemoveService(id)
            | Mutation::SettleService(id)
            | Mutation::RemoveContainer(id)
            | Mutation::RemoveFile(id) => uncloud_common::model::validate_id("id", id)?,
        }
        Ok(())
    }

    fn check_owner(&self, kind: Kind, id: &str, owner: &str) -> Result<(), WriteError> {
        if owner != self.machine_id {
            return Err(WriteError::NotOwner {
                kind,
                id: id.to_string(),
                owner: owner.to_string(),
            });
        }
        Ok(())
    }

    /// Applies a sync message from a peer; changes it brings are persisted and announced.
    pub(crate) fn receive_sync(
        self: &Arc<Self>,
        state: &mut sync::State,
        bytes: &[u8],
    ) -> Result<bool, DocError> {
        let changed = {
            let mut cell = self.doc.lock().unwrap();
            let before = cell.doc.heads();
            cell.doc.receive_sync_message(state, bytes)?;
            let after = cell.doc.heads();
            if before == after {
                return Ok(false);
            }
            let blob = cell.doc.save_after(&cell.saved_heads);
            cell.saved_heads = after.clone();
            // Durable soon, in order; a peer still has it if we crash before.
            drop(self.writer.lock().unwrap().submit(blob));
            self.heads.send_replace(after.clone());
            cell.doc.changed_between(&before, &after)
        };
        self.after_change(changed, false);
        Ok(true)
    }

    pub(crate) fn generate_sync(&self, state: &mut sync::State) -> Option<Vec<u8>> {
        self.doc.lock().unwrap().doc.generate_sync_message(state)
    }

    pub(crate) fn has_changes(&self, heads: &[ChangeHash]) -> bool {
        let cell = self.doc.lock().unwrap();
        cell.doc.has_changes(heads)
    }

    pub(crate) fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Whether `machine_id` was removed from the network.
    pub fn is_removed(&self, machine_id: &str) -> bool {
        self.doc.lock().unwrap().doc.removal(machine_id).is_some()
    }

    /// Recomputes the machines' mesh addresses from the document.
    pub(crate) fn refresh_mesh_peers(&self) {
        let peers = {
            let cell = self.doc.lock().unwrap();
            MeshPeers::compute(
                &cell.doc.network().mesh_cidr,
                &cell.doc.machines(),
                &self.machine_id,
            )
        };
        self.mesh_me.send_if_modified(|me| {
            let changed = *me != peers.me;
            *me = peers.me;
            changed
        });
        *self.mesh_peers.write().unwrap() = Arc::new(peers);
    }

    /// The machines' mesh addresses as last computed.
    pub(crate) fn mesh_peers(&self) -> Arc<MeshPeers> {
        self.mesh_peers.read().unwrap().clone()
    }

    fn after_change(&self, changed: BTreeMap<Kind, BTreeSet<String>>, local: bool) {
        if !local {
            if let Some(ids) = changed.get(&Kind::Services) {
                let unsettled = self.doc.lock().unwrap().doc.unsettled_services(ids);
                if !unsettled.is_empty() {
                    self.unsettled.lock().unwrap().extend(unsettled);
                    self.conflict_check.notify_one();
                }
            }
        }
        let machines_changed = [Kind::Machines, Kind::Removed, Kind::Containers]
            .iter()
            .any(|k| changed.contains_key(k));
        if self.config.on_mesh()
            && [Kind::Machines, Kind::Removed, Kind::Network]
                .iter()
                .any(|k| changed.contains_key(k))
        {
            self.refresh_mesh_peers();
        }
        for (kind, ids) in changed {
            self.emit(Event::Changed {
                kind,
                ids: ids.into_iter().collect(),
            });
        }
        if local {
            self.peers.push_all();
        }
        if machines_changed {
            self.conflict_check.notify_one();
        }
    }
}

/// Waits for the store writer's answer to a write.
async fn durable(
    ack: tokio::sync::oneshot::Receiver<crate::persist::Ack>,
) -> Result<(), WriteError> {
    match ack.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WriteError::Storage(e)),
        Err(_) => Err(WriteError::Storage("the store writer stopped".into())),
    }
}

/// A write of a container record: it goes to this machine's own table, not the document.
enum ContainerWrite<'a> {
    Upsert(&'a Container),
    Update(&'a crate::document::ContainerUpdate),
    Remove(&'a str),
}

impl<'a> ContainerWrite<'a> {
    fn of(mutation: &'a Mutation) -> Option<Self> {
        match mutation {
            Mutation::UpsertContainer(c) => Some(ContainerWrite::Upsert(c)),
            Mutation::UpdateContainer(u) => Some(ContainerWrite::Update(u)),
            Mutation::RemoveContainer(id) => Some(ContainerWrite::Remove(id)),
            _ => None,
        }
    }
}

/// What a member needs to admit a machine: its id and what it asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Admission {
    /// The new machine's id (its stated's `MachineId`).
    pub machine_id: String,
    /// The name it asks for; it gets the next free variant (`pi-2`) when taken.
    pub name: String,
    #[serde(default)]
    pub wireguard_public_key: String,
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub version: String,
}

impl Shared {
    /// Admits a machine: writes its entry with its name (or the next free variant) and the
    /// lowest subnet this member sees as free, so a joiner never claims blind. Two members
    /// admitting concurrently on both sides of a partition may pick the same values; the
    /// older claim wins after the merge and the other machine renumbers itself.
    pub async fn admit(self: &Arc<Self>, admission: Admission) -> Result<Machine, WriteError> {
        let _one_at_a_time = self.admissions.lock().await;
        let machine = {
            let cell = self.doc.lock().unwrap();
            if cell.doc.machine(&admission.machine_id).is_some() {
                return Err(WriteError::AlreadyAdmitted(admission.machine_id));
            }
            if cell.doc.removal(&admission.machine_id).is_some() {
                return Err(WriteError::Removed(admission.machine_id));
            }
            let machines = cell.doc.machines();
            let capacity = conflict::subnet_capacity(&cell.doc.network().mesh_cidr)
                .or_else(|| conflict::subnet_capacity(&self.config.mesh_cidr))
                .unwrap_or(255);
            let subnet = conflict::lowest_free_subnet(machines.values(), capacity).ok_or(
                ModelError::Invalid {
                    what: "subnet index",
                    value: capacity.to_string(),
                    why: "every subnet of the mesh is taken",
                },
            )?;
            let stamp = conflict::next_claim_stamp(machines.values(), now_ms());
            let name = if admission.name.is_empty() {
                "machine".to_string()
            } else {
                admission.name.clone()
            };
            Machine {
                id: admission.machine_id.clone(),
                name: conflict::free_name(&name, machines.values()),
                name_claimed_at_ms: stamp,
                subnet,
                subnet_claimed_at_ms: stamp,
                wireguard_public_key: admission.wireguard_public_key,
                endpoints: admission.endpoints,
                arch: admission.arch,
                version: admission.version,
                ..Default::default()
            }
        };
        tracing::info!(machine = %machine.id, name = %machine.name, subnet = machine.subnet,
            "admitting a machine");
        self.mutate(Mutation::UpsertMachine(machine.clone()))
            .await?;
        Ok(machine)
    }

    /// The whole document, to hand to a machine this member admits.
    pub fn save_document(&self) -> Vec<u8> {
        self.doc.lock().unwrap().doc.save()
    }
}

/// After every merge that touched machines: if this machine lost a name or subnet conflict,
/// it takes new values (only the loser writes, so machines never fight over an entry). After
/// a merge of concurrent deploys of one service, records the losing specs in its history.
pub(crate) async fn conflict_loop(shared: Arc<Shared>) {
    let mut told_removed = false;
    loop {
        shared.conflict_check.notified().await;
        if shared.is_removed(&shared.machine_id) {
            if !told_removed {
                tracing::error!(
                    "this machine was removed from the network: the other machines refuse it; \
                     reinstall it to use it again"
                );
                told_removed = true;
            }
            continue;
        }
        let unsettled = std::mem::take(&mut *shared.unsettled.lock().unwrap());
        for id in unsettled {
            tracing::info!(service = %id, "concurrent deploys of one service merged; keeping one \
                spec, the others go to its history");
            if let Err(e) = shared.mutate(Mutation::SettleService(id.clone())).await {
                tracing::error!(service = %id, error = %e, "could not settle the service's spec");
            }
        }
        shared.drop_removed_tables();
        let leftovers = shared.doc.lock().unwrap().doc.leftovers_of_removed();
        if !leftovers.is_empty() {
            tracing::info!(machines = ?leftovers, "deleting what removed machines still had in the state");
            if let Err(e) = shared.mutate(Mutation::SweepRemoved).await {
                tracing::error!(error = %e, "could not delete a removed machine's leftovers");
            }
        }
        let fix = {
            let cell = shared.doc.lock().unwrap();
            let machines = cell.doc.machines();
            let capacity = conflict::subnet_capacity(&cell.doc.network().mesh_cidr).unwrap_or(255);
            conflict::plan_fix(&shared.machine_id, &machines, capacity, now_ms())
        };
        match fix {
            Ok(None) => {}
            Ok(Some(fixed)) => {
                tracing::warn!(
                    name = %fixed.name,
                    subnet = fixed.subnet,
                    "this machine lost a name or subnet conflict after a merge; taking new values"
                );
                // Only the two fields the rule decides: nothing else the entry's other writers
                // changed meanwhile is reverted.
                let update = MachineUpdate {
                    machine_id: fixed.id.clone(),
                    name: Some((fixed.name.clone(), fixed.name_claimed_at_ms)),
                    subnet: Some((fixed.subnet, fixed.subnet_claimed_at_ms)),
                    ..Default::default()
                };
                if let Err(e) = shared.mutate(Mutation::UpdateMachine(update)).await {
                    tracing::error!(error = %e, "could not write the resolved machine entry");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot resolve a subnet conflict"),
        }
    }
}

//! The network's automerge document behind typed accessors.
//!
//! Callers read and write [`NetworkState`] entities; the string paths inside the document live
//! only here. Layout: `{network: {id, mesh_cidr}, machines: {<id>: Machine}, services: {…},
//! containers: {<hostname>: Certificate}, removed: {…}, clients: {…}, routes: {<digest>:
//! StoredFile}}`, one automerge map per entity so concurrent writers of different entities (or
//! different fields) never conflict. A service's spec is the exception: one value
//! (`uncloud_common::service_doc`), so concurrent deploys never mix.
//!
//! Two genesis maps hold something other than their name says, because a root map that is not
//! in the genesis would be created by several machines concurrently, and one would hide the
//! others: the files services mount ([`Kind::Files`]) live in `routes`, unused since routes
//! became part of specs (decision 0013), and ingress certificates ([`Kind::Certificates`]) in
//! `containers`, unused since containers moved to per-machine tables (`crate::tables`,
//! decision 0014).
//!
//! Every machine starts from the same **genesis** change, built deterministically from the
//! network id (fixed actor, fixed time), so its hash is identical everywhere. Without it two
//! machines would each create their own `machines` map and, after a merge, one map would hide
//! the other.

use std::collections::{BTreeMap, BTreeSet};

use automerge::sync::{self, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ChangeHash, ObjId, ObjType, Prop, ReadDoc, ROOT};
use autosurgeon::{hydrate_prop, reconcile_prop, Hydrate};
use serde::Serialize;
use uncloud_common::model::{
    Certificate, ClientCert, Container, ContainerState, Kind, Machine, NetworkState, Removal,
    Service, ServiceRevision, ServiceSpec, StoredFile, SERVICE_HISTORY_LEN,
};
use uncloud_common::{service_doc, vips};

/// Why a document operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("no {kind} with id {id:?}")]
    NotFound { kind: Kind, id: String },
    #[error("the document has no {0} map; it was not created from this network's genesis")]
    MissingRoot(Kind),
    #[error("cannot write {kind} {id:?} into the document: {source}")]
    Reconcile {
        kind: Kind,
        id: String,
        source: Box<autosurgeon::ReconcileError>,
    },
    #[error("automerge rejected the operation: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    #[error("malformed sync message: {0}")]
    MalformedSync(String),
    #[error("not a network's state: {0}")]
    NotAState(String),
    #[error("{0} are not kept in the document but in the container tables")]
    NotInDocument(Kind),
}

/// A typed change to the state.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    UpsertMachine(Machine),
    /// Removes a machine for good: a tombstone in `removed` and its entry deleted, in one
    /// change (its container table is dropped by the replica).
    RemoveMachine(MachineRemoval),
    /// Deletes the entry of a removed machine that a peer merged in after the removal; any
    /// member may.
    SweepRemoved,
    /// Deploys a service's spec: creates the service (revision 1, `created_at_ms` as given),
    /// or, when it exists and the spec differs, makes the spec its next revision and keeps the
    /// old one in its history. Name, project and creation time of an existing service stay;
    /// a caller never writes the history.
    UpsertService(Box<Service>),
    RemoveService(String),
    /// After a merge of concurrent deploys of one service: keeps the winning spec, moves the
    /// losing ones into the history. Any machine may; all write the same.
    SettleService(String),
    UpsertContainer(Container),
    /// Sets some fields of a container (its machine's shim: state, health) and nothing else.
    UpdateContainer(ContainerUpdate),
    RemoveContainer(String),
    /// Records an issued client certificate, or its revocation (`revoked_at_ms` set; a
    /// revocation already recorded is kept).
    UpsertClient(ClientCert),
    /// Stores the content of a file services mount, under its digest (checked by the caller).
    /// Content-addressed: storing it again changes nothing.
    UpsertFile(StoredFile),
    /// Removes a stored file content no spec names any more.
    RemoveFile(String),
    /// Writes a hostname's certificate entry (claim, bundle, failures): only the fields that
    /// differ, each secret whole.
    UpsertCertificate(Certificate),
    /// Removes a hostname's certificate entry.
    RemoveCertificate(String),
    /// Sets the mesh CIDR; written once by the first machine.
    SetMeshCidr(String),
    /// Sets some fields of a machine and nothing else, so writers of different fields (meshd
    /// its keys, the machine itself a renumbering, `uc` its roles) never revert each other.
    UpdateMachine(MachineUpdate),
}

/// A per-field update of one container: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerUpdate {
    pub id: String,
    pub state: Option<ContainerState>,
    pub healthy: Option<bool>,
}

impl ContainerUpdate {
    /// `container` with this update's fields replaced.
    pub fn applied_to(&self, mut container: Container) -> Container {
        if let Some(state) = self.state {
            container.state = state;
        }
        if let Some(healthy) = self.healthy {
            container.healthy = healthy;
        }
        container
    }
}

/// Who removes which machine, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRemoval {
    pub machine_id: String,
    pub by: String,
    pub at_ms: u64,
}

/// The fields of a [`Machine`] meshd owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshFields {
    pub public_key: String,
    pub endpoints: Vec<String>,
    pub observed: BTreeMap<String, String>,
}

/// A per-field update of one machine: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineUpdate {
    pub machine_id: String,
    /// A new name and when it was claimed (the claim stamp decides name conflicts).
    pub name: Option<(String, u64)>,
    /// A new subnet and when it was claimed.
    pub subnet: Option<(u32, u64)>,
    pub mesh: Option<MeshFields>,
    pub roles: Option<Vec<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub drained: Option<bool>,
    pub version: Option<String>,
    /// The machine's CA certificate (PEM); only the machine itself sets it.
    pub ca_cert: Option<String>,
    /// The draining containers its ingress has let go of; only the machine itself sets it.
    pub ingress_released: Option<Vec<String>>,
}

impl MachineUpdate {
    /// `machine` with this update's fields replaced.
    pub fn applied_to(&self, mut machine: Machine) -> Machine {
        if let Some((name, at)) = &self.name {
            machine.name = name.clone();
            machine.name_claimed_at_ms = *at;
        }
        if let Some((subnet, at)) = self.subnet {
            machine.subnet = subnet;
            machine.subnet_claimed_at_ms = at;
        }
        if let Some(mesh) = &self.mesh {
            machine.wireguard_public_key = mesh.public_key.clone();
            machine.endpoints = mesh.endpoints.clone();
            machine.observed_endpoints = mesh.observed.clone();
        }
        if let Some(roles) = &self.roles {
            machine.roles = roles.clone();
        }
        if let Some(labels) = &self.labels {
            machine.labels = labels.clone();
        }
        if let Some(drained) = self.drained {
            machine.drained = drained;
        }
        if let Some(version) = &self.version {
            machine.version = version.clone();
        }
        if let Some(ca) = &self.ca_cert {
            machine.ca_cert = ca.clone();
        }
        if let Some(ids) = &self.ingress_released {
            machine.ingress_released = ids.clone();
        }
        machine
    }
}

impl Mutation {
    /// The part of the state and the entity id it touches.
    pub fn target(&self) -> (Kind, &str) {
        match self {
            Mutation::UpsertMachine(m) => (Kind::Machines, &m.id),
            Mutation::RemoveMachine(r) => (Kind::Machines, &r.machine_id),
            Mutation::SweepRemoved => (Kind::Removed, ""),
            Mutation::UpsertService(s) => (Kind::Services, &s.id),
            Mutation::RemoveService(id) => (Kind::Services, id),
            Mutation::SettleService(id) => (Kind::Services, id),
            Mutation::UpsertContainer(c) => (Kind::Containers, &c.id),
            Mutation::UpdateContainer(u) => (Kind::Containers, &u.id),
            Mutation::RemoveContainer(id) => (Kind::Containers, id),
            Mutation::UpsertClient(c) => (Kind::Clients, &c.serial),
            Mutation::UpsertFile(f) => (Kind::Files, &f.digest),
            Mutation::RemoveFile(digest) => (Kind::Files, digest),
            Mutation::UpsertCertificate(c) => (Kind::Certificates, &c.hostname),
            Mutation::RemoveCertificate(h) => (Kind::Certificates, h),
            Mutation::SetMeshCidr(_) => (Kind::Network, "mesh_cidr"),
            Mutation::UpdateMachine(u) => (Kind::Machines, &u.machine_id),
        }
    }
}

/// The deterministic first change of a network's document.
pub fn genesis(network_id: &str) -> Automerge {
    let mut doc = Automerge::new().with_actor(ActorId::from(genesis_actor(network_id)));
    let mut tx = doc.transaction();
    let network = tx
        .put_object(ROOT, Kind::Network.as_str(), ObjType::Map)
        .expect("putting into a fresh map cannot fail");
    tx.put(&network, "id", network_id)
        .expect("putting into a fresh map cannot fail");
    tx.put(&network, "mesh_cidr", "")
        .expect("putting into a fresh map cannot fail");
    // "routes" (unused since decision 0013) now holds the files services mount; it stays
    // named so: the genesis's hash is what every machine of a network shares.
    for key in [
        Kind::Machines.as_str(),
        Kind::Services.as_str(),
        Kind::Containers.as_str(),
        root_key(Kind::Files),
        Kind::Removed.as_str(),
        Kind::Clients.as_str(),
    ] {
        tx.put_object(ROOT, key, ObjType::Map)
            .expect("putting into a fresh map cannot fail");
    }
    tx.commit_with(CommitOptions::default().with_time(0));
    doc
}

/// Largest document a member may hand to a machine it admits.
pub const MAX_HANDED_OVER_BYTES: usize = 64 * 1024 * 1024;

/// Loads a whole document that a member handed over when it admitted this machine, and checks
/// that it is a network's state: it holds that network's genesis change (so it merges with
/// every other member's document) and an id.
pub fn handed_over(bytes: &[u8]) -> Result<Automerge, DocError> {
    if bytes.len() > MAX_HANDED_OVER_BYTES {
        return Err(DocError::NotAState(format!(
            "{} bytes, more than the {MAX_HANDED_OVER_BYTES} accepted",
            bytes.len()
        )));
    }
    let doc = Automerge::load(bytes).map_err(|e| DocError::NotAState(e.to_string()))?;
    let info: uncloud_common::model::NetworkInfo = hydrate_prop(&doc, ROOT, Kind::Network.as_str())
        .map_err(|e| DocError::NotAState(format!("no network settings: {e}")))?;
    if uncloud_common::model::validate_id("network id", &info.id).is_err() {
        return Err(DocError::NotAState(format!(
            "network id {:?} is not valid",
            info.id.chars().take(64).collect::<String>()
        )));
    }
    let root = genesis(&info.id).get_heads();
    if !root.iter().all(|h| doc.get_change_by_hash(h).is_some()) {
        return Err(DocError::NotAState(format!(
            "it does not start from network {}'s genesis",
            info.id
        )));
    }
    Ok(doc)
}

/// Actor of the genesis change: a fixed prefix and the network id, so it never collides with
/// a machine's random actor.
fn genesis_actor(network_id: &str) -> Vec<u8> {
    let mut actor = b"uncloud-genesis:".to_vec();
    actor.extend_from_slice(network_id.as_bytes());
    actor
}

/// The document with typed accessors.
pub struct StateDoc {
    doc: Automerge,
    /// The services' virtual address claims, kept up to date by diffs from the heads they
    /// were read at: a deploy of many services creates one after the other, and reading every
    /// service for each new one would take quadratic time.
    vip_claims: Option<VipClaims>,
}

/// Service id -> (created_at_ms, claimed index), as of `heads`.
struct VipClaims {
    heads: Vec<ChangeHash>,
    claims: BTreeMap<String, (u64, u32)>,
}

impl StateDoc {
    /// Wraps a loaded document; new local changes are written under a fresh random actor
    /// (reusing an actor after a crash could reuse sequence numbers).
    pub fn new(mut doc: Automerge) -> Self {
        doc.set_actor(ActorId::random());
        StateDoc {
            doc,
            vip_claims: None,
        }
    }

    pub fn heads(&self) -> Vec<ChangeHash> {
        let mut heads = self.doc.get_heads();
        heads.sort_unstable();
        heads
    }

    /// Whether every one of `heads` is in the document (or queued, waiting for a dependency
    /// that is itself missing, which then counts as lacking). Cheap: a lookup in the change
    /// graph, where `get_change_by_hash` would rebuild each change from the op set (that made
    /// gossip's per-round check the biggest CPU cost of a busy node).
    pub fn has_changes(&self, heads: &[ChangeHash]) -> bool {
        self.doc.get_missing_deps(heads).is_empty()
    }

    /// Encoded changes made after `heads` (for the store).
    pub fn save_after(&self, heads: &[ChangeHash]) -> Vec<u8> {
        self.doc.save_after(heads)
    }

    /// The whole document as one compact blob (a store snapshot).
    pub fn save(&self) -> Vec<u8> {
        self.doc.save()
    }

    fn kind_obj(&self, kind: Kind) -> Result<ObjId, DocError> {
        match self.doc.get(ROOT, root_key(kind)) {
            Ok(Some((automerge::Value::Object(ObjType::Map), id))) => Ok(id),
            _ => Err(DocError::MissingRoot(kind)),
        }
    }

    pub fn network_id(&self) -> String {
        self.network().id
    }

    pub fn network(&self) -> uncloud_common::model::NetworkInfo {
        hydrate_prop(&self.doc, ROOT, Kind::Network.as_str()).unwrap_or_default()
    }

    /// Every entity of one kind. Entities that do not hydrate (a peer running a newer or buggy
    /// version wrote something else) are skipped with a warning rather than failing the read.
    fn entities<T: Hydrate>(&self, kind: Kind) -> BTreeMap<String, T> {
        let Ok(obj) = self.kind_obj(kind) else {
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for key in self.doc.keys(&obj) {
            match hydrate_prop::<_, T, _, _>(&self.doc, &obj, key.as_str()) {
                Ok(value) => {
                    out.insert(key, value);
                }
                Err(e) => {
                    tracing::warn!(%kind, id = %key, error = %e, "skipping unreadable entity")
                }
            }
        }
        out
    }

    /// The entities of `kind` among `ids` that exist; only those are read from the document.
    fn entities_by_id<T: Hydrate>(&self, kind: Kind, ids: &[String]) -> BTreeMap<String, T> {
        let Ok(obj) = self.kind_obj(kind) else {
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for id in ids {
            if !matches!(self.doc.get(&obj, id.as_str()), Ok(Some(_))) {
                continue;
            }
            match hydrate_prop::<_, T, _, _>(&self.doc, &obj, id.as_str()) {
                Ok(value) => {
                    out.insert(id.clone(), value);
                }
                Err(e) => tracing::warn!(%kind, %id, error = %e, "skipping unreadable entity"),
            }
        }
        out
    }

    pub fn machines(&self) -> BTreeMap<String, Machine> {
        self.entities(Kind::Machines)
    }

    /// One entity of `kind`, read alone.
    pub fn entity<T: Hydrate>(&self, kind: Kind, id: &str) -> Option<T> {
        let obj = self.kind_obj(kind).ok()?;
        self.doc.get(&obj, id).ok()??;
        hydrate_prop(&self.doc, &obj, id).ok()
    }

    /// The virtual address index a new service claims (0 when none is left): the lowest one
    /// no service holds (`uncloud_common::vips`).
    fn free_vip(&mut self) -> u32 {
        let Ok(services) = self.kind_obj(Kind::Services) else {
            return 1;
        };
        let now = self.doc.get_heads();
        let (mut claims, to_read): (BTreeMap<String, (u64, u32)>, Vec<String>) =
            match self.vip_claims.take() {
                Some(c) if c.heads == now => (c.claims, Vec::new()),
                Some(c) => {
                    let changed = self
                        .changed_between(&c.heads, &now)
                        .remove(&Kind::Services)
                        .unwrap_or_default();
                    (c.claims, changed.into_iter().collect())
                }
                None => (BTreeMap::new(), self.doc.keys(&services).collect()),
            };
        // Two numbers per service, read without hydrating its spec and history.
        let number = |obj: &ObjId, key: &str| -> u64 {
            hydrate_prop::<_, Option<u64>, _, _>(&self.doc, obj, key)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        for id in to_read {
            match self.doc.get(&services, id.as_str()) {
                Ok(Some((automerge::Value::Object(ObjType::Map), obj))) => {
                    let created_at_ms = number(&obj, "created_at_ms");
                    let index = u32::try_from(number(&obj, "vip")).unwrap_or(0);
                    claims.insert(id, (created_at_ms, index));
                }
                _ => {
                    claims.remove(&id);
                }
            }
        }
        let free =
            vips::free_index(
                claims
                    .iter()
                    .map(|(id, (created_at_ms, index))| vips::Claim {
                        id,
                        created_at_ms: *created_at_ms,
                        index: *index,
                    }),
            )
            .unwrap_or(0);
        self.vip_claims = Some(VipClaims { heads: now, claims });
        free
    }

    /// The services among `ids` whose spec holds concurrent values of different specs (a merge
    /// of two deploys that [`Mutation::SettleService`] has not settled yet). Concurrent values
    /// of one spec (machines that settled at once, under revisions that may differ) are
    /// settled: every machine reads the same one of them.
    pub fn unsettled_services<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        let Ok(services) = self.kind_obj(Kind::Services) else {
            return Vec::new();
        };
        ids.into_iter()
            .filter(|id| {
                let Ok(Some((_, obj))) = self.doc.get(&services, id.as_str()) else {
                    return false;
                };
                let Ok(values) = self.doc.get_all(&obj, "current") else {
                    return false;
                };
                let specs: Vec<_> = values.iter().map(|(v, _)| current_spec(v)).collect();
                specs.iter().any(|s| *s != specs[0])
            })
            .cloned()
            .collect()
    }

    /// Keeps the spec automerge chose among concurrent deploys and records the others in the
    /// history (keyed, so machines that settle at once write the same entries). The winner is
    /// written again under a revision above all of them, which ends the conflict and gives the
    /// containers rolled out from now on a number no other spec has (the concurrent deploys
    /// shared theirs). Machines that settle at once write the same spec (under the same
    /// revision if they merged the same deploys, else not), and that leftover conflict of one
    /// spec is left alone: settling it again from every machine that merged it made a new one
    /// each time under a higher revision, and 20 machines never stopped writing.
    fn settle_service(&mut self, id: &str) -> Result<bool, DocError> {
        let services = self.kind_obj(Kind::Services)?;
        let Some((_, obj)) = self.doc.get(&services, id)? else {
            return Ok(false);
        };
        let values = self.doc.get_all(&obj, "current")?;
        if values.len() < 2 {
            return Ok(false);
        }
        let text = |v: &automerge::Value<'_>| v.as_str().map(str::to_string);
        let winner = self
            .doc
            .get(&obj, "current")?
            .and_then(|(v, _)| text(&v))
            .ok_or_else(|| DocError::NotAState(format!("service {id:?} has no readable spec")))?;
        let won = service_doc::parse_current(&winner).map_err(|e| {
            DocError::NotAState(format!("service {id:?} has an unreadable spec: {e}"))
        })?;
        let mut losers: Vec<ServiceRevision> = values
            .iter()
            .filter_map(|(v, _)| text(v))
            .filter_map(|t| service_doc::parse_current(&t).ok())
            .filter(|r| r.spec != won.spec)
            .collect();
        losers.dedup();
        if losers.is_empty() {
            return Ok(false);
        }
        let winner = {
            let all = values
                .iter()
                .filter_map(|(v, _)| text(v))
                .filter_map(|t| service_doc::parse_current(&t).ok());
            let top = all.map(|r| r.revision).max().unwrap_or(0);
            service_doc::current_json(top + 1, &won.spec)
        };
        let history = match self.doc.get(&obj, "history")? {
            Some((automerge::Value::Object(ObjType::Map), h)) => Some(h),
            _ => None,
        };
        let mut tx = self.doc.transaction();
        let history = match history {
            Some(h) => h,
            None => tx.put_object(&obj, "history", ObjType::Map)?,
        };
        for loser in &losers {
            tx.put(
                &history,
                service_doc::history_key(loser),
                service_doc::current_json(loser.revision, &loser.spec),
            )?;
        }
        // Bounded like any history: the oldest keys go.
        let keys: Vec<String> = tx.keys(&history).collect();
        for old in keys
            .iter()
            .take(keys.len().saturating_sub(SERVICE_HISTORY_LEN))
        {
            tx.delete(&history, old.as_str())?;
        }
        tx.put(&obj, "current", winner)?;
        tx.commit();
        Ok(true)
    }

    pub fn machine(&self, id: &str) -> Option<Machine> {
        self.entity(Kind::Machines, id)
    }

    pub fn state(&self) -> NetworkState {
        NetworkState {
            network: self.network(),
            machines: self.entities(Kind::Machines),
            services: self.entities(Kind::Services),
            // Not in the document: the replica fills them in from the tables (decision 0014).
            containers: BTreeMap::new(),
            removed: self.entities(Kind::Removed),
            clients: self.entities(Kind::Clients),
            files: self.entities(Kind::Files),
            certificates: self.entities(Kind::Certificates),
        }
    }

    /// One part of the state as JSON, or one entity of it when `id` is given.
    pub fn part_json(&self, kind: Kind, id: Option<&str>) -> Result<serde_json::Value, DocError> {
        fn pick<T: Serialize>(
            map: BTreeMap<String, T>,
            kind: Kind,
            id: Option<&str>,
        ) -> Result<serde_json::Value, DocError> {
            let value = match id {
                None => serde_json::to_value(map),
                Some(id) => match map.get(id) {
                    Some(v) => serde_json::to_value(v),
                    None => {
                        return Err(DocError::NotFound {
                            kind,
                            id: id.to_string(),
                        })
                    }
                },
            };
            Ok(value.expect("model types always serialize"))
        }
        if let (Some(one), false) = (id, kind == Kind::Network) {
            let found = self.part_json_many(kind, &[one.to_string()]);
            return found.get(one).cloned().ok_or_else(|| DocError::NotFound {
                kind,
                id: one.to_string(),
            });
        }
        match kind {
            Kind::Network => Ok(serde_json::to_value(self.network()).expect("serializes")),
            Kind::Machines => pick(self.entities::<Machine>(kind), kind, id),
            Kind::Services => pick(self.entities::<Service>(kind), kind, id),
            Kind::Containers => Err(DocError::NotInDocument(kind)),
            Kind::Removed => pick(self.entities::<Removal>(kind), kind, id),
            Kind::Clients => pick(self.entities::<ClientCert>(kind), kind, id),
            Kind::Files => pick(self.entities::<StoredFile>(kind), kind, id),
            Kind::Certificates => pick(self.entities::<Certificate>(kind), kind, id),
        }
    }

    /// The entities of `kind` among `ids`, as a JSON object keyed by id; an id that is not
    /// there (removed, or never written) is absent. Reads only those entities, so a consumer
    /// told which ids changed fetches just them. `network` has no ids: the whole object.
    pub fn part_json_many(&self, kind: Kind, ids: &[String]) -> serde_json::Value {
        fn json<T: Serialize>(map: BTreeMap<String, T>) -> serde_json::Value {
            serde_json::to_value(map).expect("model types always serialize")
        }
        match kind {
            Kind::Network => serde_json::to_value(self.network()).expect("serializes"),
            Kind::Machines => json(self.entities_by_id::<Machine>(kind, ids)),
            Kind::Services => json(self.entities_by_id::<Service>(kind, ids)),
            Kind::Containers => serde_json::json!({}),
            Kind::Removed => json(self.entities_by_id::<Removal>(kind, ids)),
            Kind::Clients => json(self.entities_by_id::<ClientCert>(kind, ids)),
            Kind::Files => json(self.entities_by_id::<StoredFile>(kind, ids)),
            Kind::Certificates => json(self.entities_by_id::<Certificate>(kind, ids)),
        }
    }

    /// Entries of removed machines still in the state (merged from a peer that had not heard
    /// of the removal). Their container tables are dropped by the replica.
    pub fn leftovers_of_removed(&self) -> Vec<String> {
        let removed = self.entities::<Removal>(Kind::Removed);
        if removed.is_empty() {
            return Vec::new();
        }
        self.machines()
            .into_keys()
            .filter(|id| removed.contains_key(id))
            .collect()
    }

    /// The tombstone of a removed machine.
    pub fn removal(&self, id: &str) -> Option<Removal> {
        let obj = self.kind_obj(Kind::Removed).ok()?;
        self.doc.get(&obj, id).ok()??;
        hydrate_prop(&self.doc, &obj, id).ok()
    }

    fn remove_machine(&mut self, r: &MachineRemoval) -> Result<bool, DocError> {
        let (machines, removed) = (
            self.kind_obj(Kind::Machines)?,
            self.kind_obj(Kind::Removed)?,
        );
        let entry = self.machine(&r.machine_id);
        let tombstone = self.removal(&r.machine_id);
        if entry.is_none() && tombstone.is_none() {
            return Err(DocError::NotFound {
                kind: Kind::Machines,
                id: r.machine_id.clone(),
            });
        }
        let before = self.doc.get_heads();
        let mut tx = self.doc.transaction();
        if tombstone.is_none() {
            let t = Removal {
                name: entry.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
                at_ms: r.at_ms,
                by: r.by.clone(),
            };
            if let Err(source) = reconcile_prop(&mut tx, &removed, r.machine_id.as_str(), &t) {
                tx.rollback();
                return Err(DocError::Reconcile {
                    kind: Kind::Removed,
                    id: r.machine_id.clone(),
                    source: Box::new(source),
                });
            }
        }
        if entry.is_some() {
            tx.delete(&machines, r.machine_id.as_str())?;
        }
        tx.commit();
        Ok(self.doc.get_heads() != before)
    }

    fn sweep_removed(&mut self) -> Result<bool, DocError> {
        let machine_ids = self.leftovers_of_removed();
        if machine_ids.is_empty() {
            return Ok(false);
        }
        let machines = self.kind_obj(Kind::Machines)?;
        let mut tx = self.doc.transaction();
        for id in machine_ids {
            tx.delete(&machines, id.as_str())?;
        }
        tx.commit();
        Ok(true)
    }

    /// Applies `mutation` as one automerge change. Returns whether the document changed.
    pub fn apply(&mut self, mutation: &Mutation) -> Result<bool, DocError> {
        match mutation {
            Mutation::RemoveMachine(r) => return self.remove_machine(r),
            Mutation::SweepRemoved => return self.sweep_removed(),
            Mutation::SettleService(id) => return self.settle_service(id),
            Mutation::UpsertContainer(_)
            | Mutation::UpdateContainer(_)
            | Mutation::RemoveContainer(_) => {
                return Err(DocError::NotInDocument(Kind::Containers))
            }
            _ => {}
        }
        let (kind, id) = mutation.target();
        let obj = self.kind_obj(kind)?;
        // Read before the transaction: the new value is the stored machine with only the
        // updated fields replaced, all within this one (locked) apply. Reconciling writes only
        // the fields whose value differs, so other fields keep their concurrent changes.
        let updated = match mutation {
            Mutation::UpdateMachine(u) => {
                Some(u.applied_to(self.machine(&u.machine_id).ok_or_else(|| {
                    DocError::NotFound {
                        kind,
                        id: id.to_string(),
                    }
                })?))
            }
            _ => None,
        };
        let service = match mutation {
            Mutation::UpsertService(new) => match self.entity::<Service>(Kind::Services, &new.id) {
                Some(mut stored) => {
                    if stored.spec == new.spec {
                        return Ok(false);
                    }
                    stored.update_spec(new.spec.clone());
                    Some(stored)
                }
                None => Some(Service {
                    revision: 1,
                    history: Vec::new(),
                    vip: self.free_vip(),
                    ..(**new).clone()
                }),
            },
            _ => None,
        };
        let before = self.doc.get_heads();
        let mut tx = self.doc.transaction();
        let result = match mutation {
            Mutation::UpsertMachine(v) => reconcile_prop(&mut tx, &obj, id, v),
            Mutation::UpsertService(_) => {
                let v = service.as_ref().expect("read above for this mutation");
                reconcile_prop(&mut tx, &obj, id, v)
            }
            Mutation::UpsertClient(v) => {
                // A revocation is never undone: keep the first one recorded.
                let had: Option<ClientCert> = hydrate_prop(&tx, &obj, id).ok().flatten();
                let mut v = v.clone();
                if let Some(h) = had.filter(|h| h.revoked_at_ms != 0) {
                    v.revoked_at_ms = h.revoked_at_ms;
                }
                reconcile_prop(&mut tx, &obj, id, &v)
            }
            Mutation::UpsertFile(f) => {
                // Content-addressed: an entry already there is this content (its first
                // `stored_at_ms` stays), unless it is damaged (merged from a faulty peer):
                // then it is written again.
                let had: Option<StoredFile> = hydrate_prop(&tx, &obj, id).ok().flatten();
                if had.is_some_and(|h| h.validate().is_ok()) {
                    tx.rollback();
                    return Ok(false);
                }
                reconcile_prop(&mut tx, &obj, id, f)
            }
            Mutation::UpsertCertificate(c) => reconcile_prop(&mut tx, &obj, id, c),
            Mutation::SetMeshCidr(cidr) => reconcile_prop(&mut tx, &obj, "mesh_cidr", cidr),
            Mutation::UpdateMachine(_) => {
                let m = updated.as_ref().expect("read above for this mutation");
                reconcile_prop(&mut tx, &obj, id, m)
            }
            Mutation::RemoveMachine(_)
            | Mutation::SweepRemoved
            | Mutation::SettleService(_)
            | Mutation::UpsertContainer(_)
            | Mutation::UpdateContainer(_)
            | Mutation::RemoveContainer(_) => {
                unreachable!("handled before the transaction")
            }
            Mutation::RemoveFile(_) | Mutation::RemoveCertificate(_) => {
                if tx.get(&obj, id)?.is_none() {
                    tx.rollback();
                    return Ok(false);
                }
                tx.delete(&obj, id)?;
                Ok(())
            }
            Mutation::RemoveService(_) => {
                if tx.get(&obj, id)?.is_none() {
                    tx.rollback();
                    return Err(DocError::NotFound {
                        kind,
                        id: id.to_string(),
                    });
                }
                tx.delete(&obj, id)?;
                Ok(())
            }
        };
        if let Err(source) = result {
            tx.rollback();
            return Err(DocError::Reconcile {
                kind,
                id: id.to_string(),
                source: Box::new(source),
            });
        }
        tx.commit();
        Ok(self.doc.get_heads() != before)
    }

    /// Which entities differ between two versions of the document.
    pub fn changed_between(
        &self,
        before: &[ChangeHash],
        after: &[ChangeHash],
    ) -> BTreeMap<Kind, BTreeSet<String>> {
        let mut out: BTreeMap<Kind, BTreeSet<String>> = BTreeMap::new();
        for patch in self.doc.diff(before, after) {
            let action_key = match &patch.action {
                automerge::PatchAction::PutMap { key, .. }
                | automerge::PatchAction::DeleteMap { key } => Some(key.clone()),
                _ => None,
            };
            let mut props = patch.path.iter().map(|(_, p)| p).cloned();
            let (kind_name, id) = match (props.next(), props.next()) {
                (None, _) => (action_key, None),
                (Some(Prop::Map(kind)), None) => (Some(kind), action_key),
                (Some(Prop::Map(kind)), Some(Prop::Map(id))) => (Some(kind), Some(id)),
                _ => (None, None),
            };
            let Some(kind) = kind_name.as_deref().and_then(kind_of_root_key) else {
                continue;
            };
            let ids = out.entry(kind).or_default();
            if kind != Kind::Network {
                ids.extend(id);
            }
        }
        out
    }

    /// The next sync message for the peer whose conversation is `state`.
    pub fn generate_sync_message(&self, state: &mut sync::State) -> Option<Vec<u8>> {
        self.doc.generate_sync_message(state).map(|m| m.encode())
    }

    /// Applies a sync message from a peer. Malformed bytes are refused without touching the
    /// document.
    pub fn receive_sync_message(
        &mut self,
        state: &mut sync::State,
        bytes: &[u8],
    ) -> Result<(), DocError> {
        let message =
            sync::Message::decode(bytes).map_err(|e| DocError::MalformedSync(e.to_string()))?;
        self.doc
            .receive_sync_message(state, message)
            .map_err(|e| DocError::MalformedSync(e.to_string()))
    }
}

/// The key of a part of the state at the document's root. Files use the genesis's `routes`
/// map (see the module docs).
fn root_key(kind: Kind) -> &'static str {
    match kind {
        Kind::Files => "routes",
        Kind::Certificates => "containers",
        kind => kind.as_str(),
    }
}

fn kind_of_root_key(key: &str) -> Option<Kind> {
    match key {
        "routes" => Some(Kind::Files),
        "containers" => Some(Kind::Certificates),
        "files" | "certificates" => None,
        key => Kind::parse(key),
    }
}

/// The spec in a service's `current` value; `Err` with the text when it is not one (compared
/// as text, so an unreadable value still counts as different from a readable one).
fn current_spec(value: &automerge::Value<'_>) -> Result<ServiceSpec, String> {
    let text = value.as_str().unwrap_or_default();
    service_doc::parse_current(text)
        .map(|r| r.spec)
        .map_err(|_| text.to_string())
}

/// Resets a sync conversation for a new session, keeping only what both sides are known to
/// share (automerge's recommended way to reconnect).
pub fn reset_sync_state(state: &sync::State) -> sync::State {
    sync::State::decode(&state.encode()).unwrap_or_default()
}

/// Hex form of change hashes for gossip and D-Bus.
pub fn heads_to_hex(heads: &[ChangeHash]) -> Vec<String> {
    heads.iter().map(|h| h.to_string()).collect()
}

/// Parses hex change hashes; `None` if any is malformed.
pub fn heads_from_hex<'a>(hex: impl IntoIterator<Item = &'a str>) -> Option<Vec<ChangeHash>> {
    hex.into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use uncloud_common::model::Service;

    fn machine(id: &str, name: &str, subnet: u32) -> Machine {
        Machine {
            id: id.into(),
            name: name.into(),
            subnet,
            ..Default::default()
        }
    }

    fn sync_pair(a: &mut StateDoc, b: &mut StateDoc) {
        let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
        for _ in 0..20 {
            let ma = a.generate_sync_message(&mut sa);
            let mb = b.generate_sync_message(&mut sb);
            if ma.is_none() && mb.is_none() {
                return;
            }
            if let Some(m) = ma {
                b.receive_sync_message(&mut sb, &m).unwrap();
            }
            if let Some(m) = mb {
                a.receive_sync_message(&mut sa, &m).unwrap();
            }
        }
        panic!("sync did not finish");
    }

    #[test]
    fn genesis_is_identical_everywhere() {
        assert_eq!(genesis("net-a").get_heads(), genesis("net-a").get_heads());
        assert_ne!(genesis("net-a").get_heads(), genesis("net-b").get_heads());
        let doc = StateDoc::new(genesis("net-a"));
        assert_eq!(doc.network_id(), "net-a");
        assert!(doc.machines().is_empty());
    }

    #[test]
    fn concurrent_writers_on_separate_docs_merge_without_hiding_each_other() {
        let mut a = StateDoc::new(genesis("n"));
        let mut b = StateDoc::new(genesis("n"));
        a.apply(&Mutation::UpsertMachine(machine("ma", "a", 1)))
            .unwrap();
        b.apply(&Mutation::UpsertMachine(machine("mb", "b", 2)))
            .unwrap();
        // Concurrent edits of different fields of the same machine both survive.
        sync_pair(&mut a, &mut b);
        let mut m = a.machine("ma").unwrap();
        m.roles = vec!["ingress".into()];
        a.apply(&Mutation::UpsertMachine(m)).unwrap();
        let mut m = b.machine("ma").unwrap();
        m.labels.insert("zone".into(), "eu".into());
        b.apply(&Mutation::UpsertMachine(m)).unwrap();
        sync_pair(&mut a, &mut b);
        assert_eq!(a.heads(), b.heads());
        assert_eq!(a.state(), b.state());
        let merged = a.machine("ma").unwrap();
        assert_eq!(merged.roles, vec!["ingress".to_string()]);
        assert_eq!(merged.labels["zone"], "eu");
        assert_eq!(a.machines().len(), 2);
    }

    /// Service `web` of `image`.
    fn web_of(image: &str) -> Box<Service> {
        Box::new(Service {
            id: "web".into(),
            name: "web".into(),
            spec: ServiceSpec {
                image: image.into(),
                replicas: 1,
                ..Default::default()
            },
            ..Default::default()
        })
    }

    /// Two machines that shared `web:1`, then both deployed (revision 2 each: `web:2a`,
    /// `web:2b`) and merged.
    fn deployed_on_both_sides() -> (StateDoc, StateDoc) {
        let mut a = StateDoc::new(genesis("n"));
        let mut b = StateDoc::new(genesis("n"));
        a.apply(&Mutation::UpsertService(web_of("web:1"))).unwrap();
        sync_pair(&mut a, &mut b);
        a.apply(&Mutation::UpsertService(web_of("web:2a"))).unwrap();
        b.apply(&Mutation::UpsertService(web_of("web:2b"))).unwrap();
        sync_pair(&mut a, &mut b);
        (a, b)
    }

    #[test]
    fn concurrent_deploys_settle_to_one_spec_under_a_new_revision() {
        let (mut a, mut b) = deployed_on_both_sides();
        let web = ["web".to_string()];
        assert_eq!(a.unsettled_services(web.iter()), ["web"]);
        assert!(a.apply(&Mutation::SettleService("web".into())).unwrap());
        sync_pair(&mut a, &mut b);
        assert!(b.unsettled_services(web.iter()).is_empty());
        let settled = b.state().services["web"].clone();
        // Above both deploys, so containers of the winner from now on are told apart from
        // those either side started at revision 2.
        assert_eq!(settled.revision, 3);
        assert!(settled.spec.image == "web:2a" || settled.spec.image == "web:2b");
        let lost = settled
            .history
            .iter()
            .find(|h| h.revision == 2)
            .expect("the losing deploy in the history");
        assert_ne!(lost.spec, settled.spec);
        assert_eq!(a.state(), b.state());
        // Settling again (another machine a moment later) changes nothing.
        assert!(!b.apply(&Mutation::SettleService("web".into())).unwrap());
    }

    #[test]
    fn machines_settling_at_once_leave_nothing_to_settle() {
        let (mut a, mut b) = deployed_on_both_sides();
        // Both merged the same conflict and settle it at once: the same winner, revision.
        assert!(a.apply(&Mutation::SettleService("web".into())).unwrap());
        assert!(b.apply(&Mutation::SettleService("web".into())).unwrap());
        sync_pair(&mut a, &mut b);
        // Their two equal writes conflict again, but there is nothing to choose: settling it
        // would write once more on every machine that merged it, for ever.
        let web = ["web".to_string()];
        assert!(a.unsettled_services(web.iter()).is_empty());
        let heads = a.heads();
        assert!(!a.apply(&Mutation::SettleService("web".into())).unwrap());
        assert_eq!(a.heads(), heads);
        assert_eq!(a.state(), b.state());

        // Machines that merged different sets of deploys settle under different revisions,
        // possibly on one spec: that is no conflict either (else each settle of it wrote a
        // higher revision and made a new one, without end).
        a.apply(&Mutation::UpsertService(web_of("web:4"))).unwrap();
        b.apply(&Mutation::UpsertService(web_of("web:4b"))).unwrap();
        b.apply(&Mutation::UpsertService(web_of("web:4"))).unwrap();
        sync_pair(&mut a, &mut b);
        let services = a.kind_obj(Kind::Services).unwrap();
        let (_, obj) = a.doc.get(&services, "web").unwrap().unwrap();
        let revisions: BTreeSet<u64> = a
            .doc
            .get_all(&obj, "current")
            .unwrap()
            .iter()
            .map(|(v, _)| {
                service_doc::parse_current(v.as_str().unwrap())
                    .unwrap()
                    .revision
            })
            .collect();
        assert_eq!(
            revisions.len(),
            2,
            "one spec under two revisions: {revisions:?}"
        );
        assert!(a.unsettled_services(web.iter()).is_empty());
        assert!(!a.apply(&Mutation::SettleService("web".into())).unwrap());
        assert_eq!(a.state().services["web"].spec.image, "web:4");
        assert_eq!(a.state(), b.state());
    }

    #[test]
    fn removing_a_missing_entity_is_not_found_and_changes_nothing() {
        let mut d = StateDoc::new(genesis("n"));
        let heads = d.heads();
        let err = d
            .apply(&Mutation::RemoveService("nope".into()))
            .unwrap_err();
        assert!(matches!(err, DocError::NotFound { .. }), "{err}");
        assert_eq!(d.heads(), heads);
    }

    #[test]
    fn field_updates_merge_with_concurrent_updates_of_other_fields() {
        let mut a = StateDoc::new(genesis("n"));
        a.apply(&Mutation::UpsertMachine(machine("m1", "a", 1)))
            .unwrap();
        let mut b = StateDoc::new(genesis("n"));
        sync_pair(&mut a, &mut b);
        // The machine renumbers on one side while meshd publishes its key and an admin adds
        // a role on the other.
        b.apply(&Mutation::UpdateMachine(MachineUpdate {
            machine_id: "m1".into(),
            subnet: Some((7, 5)),
            ..Default::default()
        }))
        .unwrap();
        let fields = MeshFields {
            public_key: "key".into(),
            endpoints: vec!["192.0.2.1:51820".into()],
            observed: [("m2".to_string(), "198.51.100.2:4000".to_string())].into(),
        };
        let update = MachineUpdate {
            machine_id: "m1".into(),
            mesh: Some(fields.clone()),
            ..Default::default()
        };
        assert!(a.apply(&Mutation::UpdateMachine(update.clone())).unwrap());
        assert!(a
            .apply(&Mutation::UpdateMachine(MachineUpdate {
                machine_id: "m1".into(),
                roles: Some(vec!["ingress".into()]),
                ..Default::default()
            }))
            .unwrap());
        assert!(a
            .apply(&Mutation::UpdateMachine(MachineUpdate {
                machine_id: "m1".into(),
                drained: Some(true),
                ..Default::default()
            }))
            .unwrap());
        sync_pair(&mut a, &mut b);
        let m = b.machine("m1").unwrap();
        assert_eq!(
            (m.subnet, m.subnet_claimed_at_ms, m.name.as_str()),
            (7, 5, "a")
        );
        assert_eq!(m.wireguard_public_key, "key");
        assert_eq!(m.endpoints, fields.endpoints);
        assert_eq!(m.observed_endpoints, fields.observed);
        assert_eq!(m.roles, vec!["ingress".to_string()]);
        assert!(m.drained);
        // Updating a machine not in the state is NotFound.
        let missing = MachineUpdate {
            machine_id: "nope".into(),
            ..update
        };
        let err = a.apply(&Mutation::UpdateMachine(missing)).unwrap_err();
        assert!(matches!(err, DocError::NotFound { .. }), "{err}");
    }

    #[test]
    fn file_contents_are_stored_once_by_digest_replicate_and_go() {
        let (mut a, mut b) = (StateDoc::new(genesis("n")), StateDoc::new(genesis("n")));
        let f = uncloud_common::files::stored(b"s3cret", 7);
        let before = a.heads();
        assert!(a.apply(&Mutation::UpsertFile(f.clone())).unwrap());
        // The same content again (from another deploy) changes nothing, not even the time.
        let again = StoredFile {
            stored_at_ms: 99,
            ..f.clone()
        };
        assert!(!a.apply(&Mutation::UpsertFile(again)).unwrap());
        let changed = a.changed_between(&before, &a.heads());
        assert_eq!(
            changed
                .get(&Kind::Files)
                .map(|ids| ids.iter().cloned().collect::<Vec<_>>()),
            Some(vec![f.digest.clone()])
        );
        // Stored concurrently on two machines: one entry after the merge.
        assert!(b.apply(&Mutation::UpsertFile(f.clone())).unwrap());
        sync_pair(&mut a, &mut b);
        assert_eq!(b.state().files.get(&f.digest), Some(&f));
        assert_eq!(a.state().files.len(), 1);
        assert_eq!(
            a.part_json_many(Kind::Files, std::slice::from_ref(&f.digest))[&f.digest]["content"],
            f.content
        );
        assert!(b.apply(&Mutation::RemoveFile(f.digest.clone())).unwrap());
        assert!(!b.apply(&Mutation::RemoveFile(f.digest.clone())).unwrap());
        sync_pair(&mut a, &mut b);
        assert!(a.state().files.is_empty());
    }

    #[test]
    fn certificates_live_in_the_genesis_containers_map_and_merge_whole() {
        let (mut a, mut b) = (StateDoc::new(genesis("n")), StateDoc::new(genesis("n")));
        let cert = |bundle: &str, by: &str| Certificate {
            hostname: "app.example.com".into(),
            directory: "https://acme.test/dir".into(),
            account_key: format!("key-{by}"),
            bundle: bundle.into(),
            issued_by: by.into(),
            ..Default::default()
        };
        let before = a.heads();
        assert!(a
            .apply(&Mutation::UpsertCertificate(cert("A", "ma")))
            .unwrap());
        let changed = a.changed_between(&before, &a.heads());
        assert_eq!(
            changed.get(&Kind::Certificates).map(|ids| ids.len()),
            Some(1),
            "{changed:?}"
        );
        assert!(!changed.contains_key(&Kind::Containers));
        // Both sides of a partition ordered: after the merge one whole entry, the same on both.
        assert!(b
            .apply(&Mutation::UpsertCertificate(cert("B", "mb")))
            .unwrap());
        sync_pair(&mut a, &mut b);
        let (ca, cb) = (a.state().certificates, b.state().certificates);
        assert_eq!(ca, cb);
        let c = &ca["app.example.com"];
        assert!(
            *c == cert("A", "ma") || *c == cert("B", "mb"),
            "one writer's fields: {c:?}"
        );
        assert!(a
            .apply(&Mutation::RemoveCertificate("app.example.com".into()))
            .unwrap());
        sync_pair(&mut a, &mut b);
        assert!(b.state().certificates.is_empty());
    }

    #[test]
    fn rewriting_the_same_value_is_not_a_change() {
        let mut d = StateDoc::new(genesis("n"));
        assert!(d
            .apply(&Mutation::UpsertMachine(machine("m1", "a", 1)))
            .unwrap());
        assert!(!d
            .apply(&Mutation::UpsertMachine(machine("m1", "a", 1)))
            .unwrap());
    }

    #[test]
    fn changed_between_names_kinds_and_ids() {
        let mut d = StateDoc::new(genesis("n"));
        let before = d.heads();
        d.apply(&Mutation::UpsertMachine(machine("m1", "a", 1)))
            .unwrap();
        d.apply(&Mutation::UpsertService(Box::new(Service {
            id: "s1".into(),
            name: "s1".into(),
            spec: uncloud_common::model::ServiceSpec {
                image: "img".into(),
                ..Default::default()
            },
            ..Default::default()
        })))
        .unwrap();
        let mid = d.heads();
        let changed = d.changed_between(&before, &mid);
        assert_eq!(changed[&Kind::Machines], BTreeSet::from(["m1".to_string()]));
        assert_eq!(changed[&Kind::Services], BTreeSet::from(["s1".to_string()]));
        assert!(!changed.contains_key(&Kind::Containers));

        let mut m = d.machine("m1").unwrap();
        m.subnet = 7;
        d.apply(&Mutation::UpsertMachine(m)).unwrap();
        d.apply(&Mutation::RemoveService("s1".into())).unwrap();
        let changed = d.changed_between(&mid, &d.heads());
        assert_eq!(changed[&Kind::Machines], BTreeSet::from(["m1".to_string()]));
        assert_eq!(changed[&Kind::Services], BTreeSet::from(["s1".to_string()]));
    }

    #[test]
    fn new_services_claim_free_virtual_addresses_and_a_merge_resolves_a_clash() {
        let svc = |id: &str, at: u64, image: &str| Service {
            id: id.into(),
            name: id.into(),
            created_at_ms: at,
            vip: 77, // not the caller's to choose
            spec: uncloud_common::model::ServiceSpec {
                image: image.into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let vip_of = |d: &StateDoc, id: &str| d.entity::<Service>(Kind::Services, id).unwrap().vip;
        let mut a = StateDoc::new(genesis("n"));
        a.apply(&Mutation::UpsertService(Box::new(svc("web", 1, "x:1"))))
            .unwrap();
        a.apply(&Mutation::UpsertService(Box::new(svc("db", 2, "x:1"))))
            .unwrap();
        assert_eq!((vip_of(&a, "web"), vip_of(&a, "db")), (1, 2));
        // A new revision keeps the claim.
        a.apply(&Mutation::UpsertService(Box::new(svc("web", 1, "x:2"))))
            .unwrap();
        assert_eq!(vip_of(&a, "web"), 1);
        // Two sides of a partition each create a service: both claim 3.
        let mut b = StateDoc::new(genesis("n"));
        sync_pair(&mut a, &mut b);
        a.apply(&Mutation::UpsertService(Box::new(svc("cache", 10, "x:1"))))
            .unwrap();
        b.apply(&Mutation::UpsertService(Box::new(svc("queue", 20, "x:1"))))
            .unwrap();
        assert_eq!((vip_of(&a, "cache"), vip_of(&b, "queue")), (3, 3));
        sync_pair(&mut a, &mut b);
        for d in [&mut a, &mut b] {
            let services: Vec<Service> = d
                .entities::<Service>(Kind::Services)
                .into_values()
                .collect();
            let got = vips::resolve(services.iter().map(|s| vips::Claim {
                id: &s.id,
                created_at_ms: s.created_at_ms,
                index: s.vip,
            }));
            assert_eq!(got["cache"], 3, "the older claim");
            assert_eq!(got["queue"], 4, "the lowest unclaimed");
            assert_eq!(d.free_vip(), 5);
        }
    }

    #[test]
    fn malformed_sync_messages_are_refused_without_change() {
        let mut d = StateDoc::new(genesis("n"));
        let heads = d.heads();
        let mut st = sync::State::new();
        for bad in [&b""[..], b"\x42", b"garbage garbage", &[0x42; 300]] {
            assert!(d.receive_sync_message(&mut st, bad).is_err());
        }
        assert_eq!(d.heads(), heads);
    }

    proptest::proptest! {
        /// Sync messages arrive from the network: damaged ones (bit flips, truncation,
        /// splices of a real message) never panic, and a refused one changes nothing.
        #[test]
        fn damaged_sync_messages_never_panic(
            flips in proptest::collection::vec((0usize..4096, 0u8..8), 0..6),
            cut in 0usize..4096,
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let mut a = StateDoc::new(genesis("n"));
            a.apply(&Mutation::UpsertMachine(machine("ma", "a", 1))).unwrap();
            a.apply(&Mutation::UpsertService(Box::new(Service {
                id: "s".into(),
                name: "s".into(),
                spec: uncloud_common::model::ServiceSpec { image: "x".into(), ..Default::default() },
                ..Default::default()
            }))).unwrap();
            // A real message carrying changes: b asks, a answers.
            let mut b = StateDoc::new(genesis("n"));
            let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
            let ask = b.generate_sync_message(&mut sb).unwrap();
            a.receive_sync_message(&mut sa, &ask).unwrap();
            let mut msg = a.generate_sync_message(&mut sa).unwrap();
            for (pos, bit) in flips {
                let len = msg.len();
                msg[pos % len] ^= 1 << bit;
            }
            msg.truncate(cut.max(1));
            msg.extend(junk);
            let heads = b.heads();
            if b.receive_sync_message(&mut sb, &msg).is_err() {
                proptest::prop_assert_eq!(b.heads(), heads);
            }
        }
    }

    #[test]
    fn a_handed_over_document_must_descend_from_its_networks_genesis() {
        let mut d = StateDoc::new(genesis("net-a"));
        d.apply(&Mutation::UpsertMachine(machine("m1", "a", 1)))
            .unwrap();
        let doc = handed_over(&d.save()).unwrap();
        assert_eq!(StateDoc::new(doc).machines().len(), 1);
        // Not automerge, or a document made without the genesis change.
        assert!(handed_over(b"junk").is_err());
        let mut forged = Automerge::new();
        let mut tx = forged.transaction();
        let n = tx.put_object(ROOT, "network", ObjType::Map).unwrap();
        tx.put(&n, "id", "net-a").unwrap();
        tx.put(&n, "mesh_cidr", "").unwrap();
        tx.commit();
        let err = handed_over(&forged.save()).unwrap_err().to_string();
        assert!(err.contains("genesis"), "{err}");
    }

    #[test]
    fn a_removed_machine_leaves_a_tombstone_and_its_leftovers_are_swept() {
        let mut a = StateDoc::new(genesis("n"));
        a.apply(&Mutation::UpsertMachine(machine("m1", "a", 1)))
            .unwrap();
        a.apply(&Mutation::UpsertMachine(machine("m2", "b", 2)))
            .unwrap();
        let mut b = StateDoc::new(genesis("n"));
        sync_pair(&mut a, &mut b);
        let removal = MachineRemoval {
            machine_id: "m2".into(),
            by: "m1".into(),
            at_ms: 42,
        };
        assert!(a.apply(&Mutation::RemoveMachine(removal.clone())).unwrap());
        let s = a.state();
        assert!(!s.machines.contains_key("m2"));
        assert_eq!(s.removed["m2"].name, "b");
        // Removing again changes nothing; an unknown machine is NotFound.
        assert!(!a.apply(&Mutation::RemoveMachine(removal)).unwrap());
        let err = a
            .apply(&Mutation::RemoveMachine(MachineRemoval {
                machine_id: "nope".into(),
                by: "m1".into(),
                at_ms: 1,
            }))
            .unwrap_err();
        assert!(matches!(err, DocError::NotFound { .. }), "{err}");

        // Meanwhile, a member that never heard of the removal writes the machine's entry anew.
        let mut c = StateDoc::new(genesis("n"));
        c.apply(&Mutation::UpsertMachine(machine("m2", "b", 2)))
            .unwrap();
        sync_pair(&mut a, &mut c);
        assert_eq!(a.leftovers_of_removed(), vec!["m2".to_string()]);
        assert!(a.apply(&Mutation::SweepRemoved).unwrap());
        assert!(a.leftovers_of_removed().is_empty());
        assert!(!a.apply(&Mutation::SweepRemoved).unwrap());
        sync_pair(&mut a, &mut b);
        sync_pair(&mut a, &mut c);
        assert_eq!(b.state(), a.state());
        assert_eq!(c.state(), a.state());
        assert!(!b.state().machines.contains_key("m2"));
    }

    #[test]
    fn has_changes_tells_whether_a_peer_is_ahead() {
        let mut a = StateDoc::new(genesis("n"));
        let mut b = StateDoc::new(genesis("n"));
        assert!(a.has_changes(&b.heads()));
        b.apply(&Mutation::UpsertMachine(machine("m1", "a", 1)))
            .unwrap();
        assert!(!a.has_changes(&b.heads()));
        assert!(b.has_changes(&a.heads()), "b has everything a has");
        sync_pair(&mut a, &mut b);
        assert!(a.has_changes(&b.heads()));
    }

    #[test]
    fn heads_hex_round_trip() {
        let d = StateDoc::new(genesis("n"));
        let hex = heads_to_hex(&d.heads());
        assert_eq!(
            heads_from_hex(hex.iter().map(String::as_str)).unwrap(),
            d.heads()
        );
        assert_eq!(heads_from_hex(["zz"]), None);
    }
}

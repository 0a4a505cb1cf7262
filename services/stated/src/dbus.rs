//! `org.uncloud.State1` at `/org/uncloud/State1`: the local API other daemons and `busctl` use.
//!
//! Entities travel as JSON strings (the model's serde form), so every call works from `busctl`.
//! Writes return once the change is durable. Changes, local or merged from peers, are announced
//! with `Changed(kind, ids)`; liveness transitions with `LivenessChanged(machine_id, liveness)`.
//!
//! A consumer reads by change: the whole state once (`GetState`), then for each `Changed` only
//! the named entities (`GetMany(kind, ids)`; an absent id was removed). `Resync` says that
//! signals may have been missed (stated fell behind, or the machine just became a member):
//! read everything again. A consumer also re-reads when stated's name changes owner (a
//! restart); `uncloud_common::state_follow` does all of this for a Rust consumer.
//!
//! A fresh machine (`Mode` = `fresh`) answers every read and write with `NotMember` until
//! `CreateNetwork` or `JoinNetwork` makes it a member; `Mode` and `NetworkId` then change
//! (with `PropertiesChanged`).

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinHandle;
use uncloud_common::dbus::{STATE_NAME, STATE_PATH};
use uncloud_common::model::{
    Certificate, ClientCert, Container, ContainerState, Kind, Service, StoredFile,
};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{interface, Connection};

use crate::clock::now_ms;
use crate::document::{
    ContainerUpdate, DocError, MachineRemoval, MachineUpdate, MeshFields, Mutation,
};
use crate::errors::WriteError;
use crate::membership::{Membership, MembershipError};
use crate::replica::{Admission, Event, Shared};

/// Errors as D-Bus error names `org.uncloud.State1.Error.*`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.uncloud.State1.Error")]
pub enum StateError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// Malformed JSON or an invalid field.
    InvalidArgument(String),
    /// No entity with that id.
    NotFound(String),
    /// The entity belongs to another machine.
    NotOwner(String),
    /// The change could not be made durable.
    Storage(String),
    /// This machine belongs to no network yet.
    NotMember(String),
    /// This machine already belongs to a network.
    AlreadyMember(String),
    /// The machine is already in the state.
    Exists(String),
    /// Only root may (read the contents of files services mount).
    AccessDenied(String),
}

impl From<MembershipError> for StateError {
    fn from(e: MembershipError) -> Self {
        let msg = e.to_string();
        match e {
            MembershipError::AlreadyMember(_) => StateError::AlreadyMember(msg),
            MembershipError::Invalid(_)
            | MembershipError::HandedOver(_)
            | MembershipError::NotAdmitted(_) => StateError::InvalidArgument(msg),
            MembershipError::Write(w) => w.into(),
            MembershipError::Start(_) | MembershipError::Io { .. } => StateError::Storage(msg),
        }
    }
}

impl From<WriteError> for StateError {
    fn from(e: WriteError) -> Self {
        let msg = e.to_string();
        match e {
            WriteError::Invalid(_) => StateError::InvalidArgument(msg),
            WriteError::NotOwner { .. } => StateError::NotOwner(msg),
            WriteError::Doc(DocError::NotFound { .. }) => StateError::NotFound(msg),
            WriteError::AlreadyAdmitted(_) => StateError::Exists(msg),
            WriteError::Removed(_) => StateError::InvalidArgument(msg),
            WriteError::Doc(_) | WriteError::Storage(_) => StateError::Storage(msg),
        }
    }
}

fn parse<T: DeserializeOwned>(what: &str, json: &str) -> Result<T, StateError> {
    serde_json::from_str(json).map_err(|e| StateError::InvalidArgument(format!("{what}: {e}")))
}

fn parse_kind(kind: &str) -> Result<Kind, StateError> {
    Kind::parse(kind).ok_or_else(|| {
        StateError::InvalidArgument(format!(
            "unknown kind {kind:?}; expected network, machines, services, containers, removed, \
             clients, files or certificates"
        ))
    })
}

/// Whether a caller running as `uid` may read `kind`: the contents of files are secrets, for
/// root only (the daemons that start containers); everything else is for group `uncloud`
/// too, as the bus policy says.
pub fn may_read(kind: Kind, uid: u32) -> bool {
    !matches!(kind, Kind::Files | Kind::Certificates) || uid == 0
}

async fn require_root_for(
    kind: Kind,
    conn: &Connection,
    header: &Header<'_>,
) -> Result<(), StateError> {
    if may_read(kind, u32::MAX) {
        return Ok(()); // anyone the bus lets in
    }
    let denied = |why: String| StateError::AccessDenied(format!("{kind}: {why}"));
    let sender = header
        .sender()
        .ok_or_else(|| denied("the caller is unknown".into()))?
        .to_owned();
    let uid = zbus::fdo::DBusProxy::new(conn)
        .await
        .map_err(|e| denied(e.to_string()))?
        .get_connection_unix_user(sender.into())
        .await
        .map_err(|e| denied(e.to_string()))?;
    if may_read(kind, uid) {
        Ok(())
    } else {
        Err(denied(format!("only root reads them (caller uid {uid})")))
    }
}

/// The D-Bus object; a thin layer over [`Membership`] and, once a member, [`Shared`].
pub struct State1 {
    membership: Arc<Membership>,
}

impl State1 {
    fn member(&self) -> Result<Arc<Shared>, StateError> {
        self.membership.member().ok_or_else(|| {
            StateError::NotMember(
                "this machine is fresh: it belongs to no network yet (`uc machine init` creates \
                 one, `uc machine add` joins one)"
                    .into(),
            )
        })
    }

    async fn update_container(&self, update: ContainerUpdate) -> Result<(), StateError> {
        Ok(self
            .member()?
            .mutate(Mutation::UpdateContainer(update))
            .await?)
    }

    async fn update_machine(&self, update: MachineUpdate) -> Result<(), StateError> {
        Ok(self
            .member()?
            .mutate(Mutation::UpdateMachine(update))
            .await?)
    }
}

#[interface(name = "org.uncloud.State1")]
impl State1 {
    /// Creates a new network with this machine as its first member (subnet 1) and returns
    /// this machine's entry as JSON. An empty `mesh_cidr` or `name` takes the configured one
    /// (the name defaults to the host name). Only on a fresh machine; apid calls it for
    /// `uc machine init`.
    async fn create_network(
        &self,
        network_id: &str,
        mesh_cidr: &str,
        name: &str,
    ) -> Result<String, StateError> {
        let m = self.membership.create(network_id, mesh_cidr, name).await?;
        Ok(serde_json::to_string(&m).expect("the model serializes"))
    }

    /// Joins the network whose whole document (`SaveDocument` of the member that admitted
    /// this machine) is `document`; returns this machine's entry as JSON. Only on a fresh
    /// machine.
    async fn join_network(&self, document: Vec<u8>) -> Result<String, StateError> {
        let m = self.membership.join(&document).await?;
        Ok(serde_json::to_string(&m).expect("the model serializes"))
    }

    /// Admits a machine: `{"machine_id", "name", "wireguard_public_key", "endpoints", "arch",
    /// "version"}`. Writes its entry with the asked name (or the next free variant) and the
    /// lowest free subnet; returns the entry as JSON. `Exists` if it is a member already.
    async fn admit_machine(&self, json: &str) -> Result<String, StateError> {
        let admission: Admission = parse("admission", json)?;
        let m = self.member()?.admit(admission).await?;
        Ok(serde_json::to_string(&m).expect("the model serializes"))
    }

    /// The whole document (automerge's compact form), to hand to a machine this member
    /// admitted (its `JoinNetwork`).
    fn save_document(&self) -> Result<Vec<u8>, StateError> {
        Ok(self.member()?.save_document())
    }

    /// The whole state as JSON, without the contents of files (secrets): `Get("files")`
    /// has them, for root.
    fn get_state(&self) -> Result<String, StateError> {
        let mut state = self.member()?.state();
        for f in state.files.values_mut() {
            f.content.clear();
        }
        for c in state.certificates.values_mut() {
            *c = c.without_secrets();
        }
        Ok(serde_json::to_string(&state).expect("the model serializes"))
    }

    /// One part of the state (`network`, `machines`, `services`, `containers`, `removed`,
    /// `clients`, `files`) as JSON, or one entity of it when `id` is not empty. `files` (their
    /// contents are secrets) only for root; the rest for group `uncloud` too.
    async fn get(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        kind: &str,
        id: &str,
    ) -> Result<String, StateError> {
        let kind = parse_kind(kind)?;
        require_root_for(kind, conn, &header).await?;
        let id = (!id.is_empty()).then_some(id);
        match self.member()?.part_json(kind, id) {
            Ok(v) => Ok(v.to_string()),
            Err(e @ DocError::NotFound { .. }) => Err(StateError::NotFound(e.to_string())),
            Err(e) => Err(StateError::Storage(e.to_string())),
        }
    }

    /// Several entities of one part as a JSON object keyed by id: the ones a `Changed` signal
    /// named. An id that is absent was removed. Reads only those entities, so a consumer never
    /// re-reads the whole state for a change (`network` has no ids: the whole object).
    async fn get_many(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        kind: &str,
        ids: Vec<String>,
    ) -> Result<String, StateError> {
        const MAX_IDS: usize = 10_000;
        let kind = parse_kind(kind)?;
        require_root_for(kind, conn, &header).await?;
        if ids.len() > MAX_IDS {
            return Err(StateError::InvalidArgument(format!(
                "{} ids asked for; at most {MAX_IDS} at a time",
                ids.len()
            )));
        }
        Ok(self.member()?.part_json_many(kind, &ids).to_string())
    }

    /// Renames a machine (a DNS label not used by another machine), leaving its other fields.
    async fn set_machine_name(&self, id: &str, name: &str) -> Result<(), StateError> {
        let machines = self.member()?.state().machines;
        if machines.values().any(|m| m.name == name && m.id != id) {
            return Err(StateError::InvalidArgument(format!(
                "the name {name:?} is taken by another machine"
            )));
        }
        let stamp = uncloud_common::conflict::next_claim_stamp(machines.values(), now_ms());
        self.update_machine(MachineUpdate {
            machine_id: id.into(),
            name: Some((name.into(), stamp)),
            ..Default::default()
        })
        .await
    }

    /// Sets a machine's roles (such as `ingress`), leaving its other fields.
    async fn set_machine_roles(&self, id: &str, roles: Vec<String>) -> Result<(), StateError> {
        self.update_machine(MachineUpdate {
            machine_id: id.into(),
            roles: Some(roles),
            ..Default::default()
        })
        .await
    }

    /// Sets a machine's labels, leaving its other fields.
    async fn set_machine_labels(
        &self,
        id: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), StateError> {
        self.update_machine(MachineUpdate {
            machine_id: id.into(),
            labels: Some(labels.into_iter().collect()),
            ..Default::default()
        })
        .await
    }

    /// Drains a machine (no container of a service goes to it) or enables it again, leaving
    /// its other fields.
    async fn set_machine_drained(&self, id: &str, drained: bool) -> Result<(), StateError> {
        self.update_machine(MachineUpdate {
            machine_id: id.into(),
            drained: Some(drained),
            ..Default::default()
        })
        .await
    }

    /// Removes a machine for good: a tombstone (its id never comes back), its entry and its
    /// containers' records deleted everywhere; members refuse its sync from then on.
    async fn remove_machine(&self, id: &str) -> Result<(), StateError> {
        let shared = self.member()?;
        let removal = MachineRemoval {
            machine_id: id.into(),
            by: shared.machine_id.clone(),
            at_ms: now_ms(),
        };
        Ok(shared.mutate(Mutation::RemoveMachine(removal)).await?)
    }

    /// Sets this machine's WireGuard public key, advertised endpoints (`ip:port`) and
    /// observed peer endpoints (peer machine id -> `ip:port`), leaving its other fields
    /// alone. meshd calls this; other machines' entries are refused with `NotOwner`.
    async fn set_mesh(
        &self,
        public_key: &str,
        endpoints: Vec<String>,
        observed: HashMap<String, String>,
    ) -> Result<(), StateError> {
        self.update_machine(MachineUpdate {
            machine_id: self.membership.machine_id().to_string(),
            mesh: Some(MeshFields {
                public_key: public_key.to_string(),
                endpoints,
                observed: observed.into_iter().collect(),
            }),
            ..Default::default()
        })
        .await
    }

    /// Publishes this machine's CA certificate (PEM), leaving its other fields alone. apid
    /// calls this when the machine becomes a member.
    async fn set_machine_ca(&self, ca_cert: &str) -> Result<(), StateError> {
        if !ca_cert.contains("BEGIN CERTIFICATE") || ca_cert.len() > 16 * 1024 {
            return Err(StateError::InvalidArgument(
                "the CA certificate must be one PEM certificate of at most 16 KiB".into(),
            ));
        }
        self.update_machine(MachineUpdate {
            machine_id: self.membership.machine_id().to_string(),
            ca_cert: Some(ca_cert.to_string()),
            ..Default::default()
        })
        .await
    }

    /// Says which draining containers this machine's ingress sends no request to any more
    /// (ingressd calls this; see `Machine::ingress_released`), leaving its other fields alone.
    async fn set_ingress_released(&self, ids: Vec<String>) -> Result<(), StateError> {
        if ids.len() > 10_000 {
            return Err(StateError::InvalidArgument(
                "at most 10000 released containers".into(),
            ));
        }
        for id in &ids {
            uncloud_common::model::validate_id("container id", id)
                .map_err(|e| StateError::InvalidArgument(e.to_string()))?;
        }
        self.update_machine(MachineUpdate {
            machine_id: self.membership.machine_id().to_string(),
            ingress_released: Some(ids),
            ..Default::default()
        })
        .await
    }

    /// Records a client certificate apid issued, or its revocation (`revoked_at_ms` set).
    /// A revocation, once recorded, stays.
    async fn upsert_client(&self, json: &str) -> Result<(), StateError> {
        let c: ClientCert = parse("client certificate", json)?;
        Ok(self.member()?.mutate(Mutation::UpsertClient(c)).await?)
    }

    /// Deploys a service (`{"id","name","project","spec"}`; `id` is `name`, or
    /// `name.project` in a project): creates it, or makes a changed spec its next revision and
    /// keeps the old one in the history. The spec is one value: concurrent deploys elsewhere
    /// resolve to one of them whole.
    async fn upsert_service(&self, json: &str) -> Result<(), StateError> {
        let s: Service = parse("service", json)?;
        Ok(self
            .member()?
            .mutate(Mutation::UpsertService(Box::new(s)))
            .await?)
    }

    /// Stores the content of a file services mount (`{"digest","content"}`, content in
    /// base64; `stored_at_ms` is set here): refused unless the digest matches. Storing a
    /// content already there changes nothing. The content is never logged.
    async fn upsert_file(&self, json: &str) -> Result<(), StateError> {
        let mut f: StoredFile = parse("file", json)?;
        f.stored_at_ms = now_ms();
        Ok(self.member()?.mutate(Mutation::UpsertFile(f)).await?)
    }

    /// Writes a hostname's ingress certificate entry (JSON `Certificate`: the claim, the
    /// bundle, failures), only the fields that differ. Secrets are never logged.
    async fn upsert_certificate(&self, json: &str) -> Result<(), StateError> {
        let c: Certificate = parse("certificate", json)?;
        Ok(self
            .member()?
            .mutate(Mutation::UpsertCertificate(c))
            .await?)
    }

    /// Removes a hostname's certificate entry; one not there is no error.
    async fn remove_certificate(&self, hostname: &str) -> Result<(), StateError> {
        Ok(self
            .member()?
            .mutate(Mutation::RemoveCertificate(hostname.into()))
            .await?)
    }

    /// Removes a stored file content (by digest); one not there is no error.
    async fn remove_file(&self, digest: &str) -> Result<(), StateError> {
        Ok(self
            .member()?
            .mutate(Mutation::RemoveFile(digest.into()))
            .await?)
    }

    async fn remove_service(&self, id: &str) -> Result<(), StateError> {
        Ok(self
            .member()?
            .mutate(Mutation::RemoveService(id.into()))
            .await?)
    }

    async fn upsert_container(&self, json: &str) -> Result<(), StateError> {
        let c: Container = parse("container", json)?;
        Ok(self.member()?.mutate(Mutation::UpsertContainer(c)).await?)
    }

    async fn remove_container(&self, id: &str) -> Result<(), StateError> {
        Ok(self
            .member()?
            .mutate(Mutation::RemoveContainer(id.into()))
            .await?)
    }

    /// Sets one container's lifecycle state (`running`, `exited`, …), leaving its other
    /// fields. Only the machine that runs it may.
    async fn set_container_state(&self, id: &str, state: &str) -> Result<(), StateError> {
        let state: ContainerState =
            serde_json::from_value(serde_json::Value::String(state.to_string())).map_err(|_| {
                StateError::InvalidArgument(format!(
                    "{state:?} is not a container state: created, running, paused, restarting, \
                 exited or dead"
                ))
            })?;
        self.update_container(ContainerUpdate {
            id: id.into(),
            state: Some(state),
            ..Default::default()
        })
        .await
    }

    /// Sets one container's health verdict, leaving its other fields. Only the machine that
    /// runs it may.
    async fn set_container_health(&self, id: &str, healthy: bool) -> Result<(), StateError> {
        self.update_container(ContainerUpdate {
            id: id.into(),
            healthy: Some(healthy),
            ..Default::default()
        })
        .await
    }

    /// Machine id -> `alive` | `suspect` | `down`, as this machine sees them.
    fn liveness(&self) -> Result<HashMap<String, String>, StateError> {
        Ok(self
            .member()?
            .liveness()
            .into_iter()
            .map(|(id, l)| (id, l.as_str().to_string()))
            .collect())
    }

    /// Emitted after the state changed: which part and which entity ids.
    #[zbus(signal)]
    async fn changed(emitter: &SignalEmitter<'_>, kind: &str, ids: Vec<String>)
        -> zbus::Result<()>;

    /// Emitted when a listener may have missed `Changed` signals (stated fell behind emitting
    /// them, or the machine just became a member): re-read everything that matters to you.
    #[zbus(signal)]
    async fn resync(emitter: &SignalEmitter<'_>) -> zbus::Result<()>;

    /// Emitted when this machine's view of another machine's liveness changes.
    #[zbus(signal)]
    async fn liveness_changed(
        emitter: &SignalEmitter<'_>,
        machine_id: &str,
        liveness: &str,
    ) -> zbus::Result<()>;

    #[zbus(property(emits_changed_signal = "const"))]
    fn machine_id(&self) -> String {
        self.membership.machine_id().to_string()
    }

    /// The name this machine asks for when it creates or joins a network: the configured
    /// `machine_name`, else its host name as a DNS label.
    #[zbus(property(emits_changed_signal = "const"))]
    fn default_name(&self) -> String {
        self.membership.default_name()
    }

    /// The network this machine belongs to; empty while fresh.
    #[zbus(property)]
    fn network_id(&self) -> String {
        self.membership
            .member()
            .map(|s| s.network_id.clone())
            .unwrap_or_default()
    }

    /// `fresh` (no network yet) or `member`.
    #[zbus(property)]
    fn mode(&self) -> &'static str {
        if self.membership.member().is_some() {
            "member"
        } else {
            "fresh"
        }
    }

    /// Hex hashes of the document heads; equal on two machines means equal state. Empty
    /// while fresh.
    #[zbus(property(emits_changed_signal = "false"))]
    fn heads(&self) -> Vec<String> {
        self.membership
            .member()
            .map(|s| crate::document::heads_to_hex(&s.heads()))
            .unwrap_or_default()
    }
}

/// The next event to forward: each event as it is, and [`Event::Resync`] when the forwarder
/// fell behind and events were dropped (listeners cannot know what they missed). `None` once
/// the node is gone.
async fn next_event(events: &mut broadcast::Receiver<Event>) -> Option<Event> {
    match events.recv().await {
        Ok(event) => Some(event),
        Err(RecvError::Lagged(n)) => {
            tracing::warn!("dropped {n} change events; telling listeners to re-read the state");
            Some(Event::Resync)
        }
        Err(RecvError::Closed) => None,
    }
}

/// Why the D-Bus service could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve {STATE_NAME} on the {bus} bus: {reason}")]
pub struct DbusError {
    bus: String,
    reason: zbus::Error,
}

/// Connects to the configured bus, claims `org.uncloud.State1` and forwards node events as
/// signals (from the moment the machine is a member). Returns `None` when `bus = "none"`.
pub async fn serve(
    membership: Arc<Membership>,
    bus: &str,
) -> Result<Option<(Connection, JoinHandle<()>)>, DbusError> {
    let err = |reason| DbusError {
        bus: bus.to_string(),
        reason,
    };
    let Some(builder) = uncloud_common::dbus::bus_builder(bus) else {
        return Ok(None);
    };
    let mut current = membership.watch();
    let conn = builder
        .name(STATE_NAME)
        .serve_at(STATE_PATH, State1 { membership })
        .build()
        .await
        .map_err(err)?;
    let iface = conn
        .object_server()
        .interface::<_, State1>(STATE_PATH)
        .await
        .map_err(err)?;
    let task = tokio::spawn(async move {
        let shared = match current.wait_for(|m| m.is_some()).await {
            Ok(m) => m.clone().expect("waited for a member"),
            Err(_) => return,
        };
        let mut events = shared.subscribe();
        drop(shared);
        let ctx = iface.signal_emitter();
        let guard = iface.get().await;
        if let Err(e) = guard.mode_changed(ctx).await {
            tracing::warn!(error = %e, "could not announce the membership");
        }
        let _ = guard.network_id_changed(ctx).await;
        drop(guard);
        // Whoever listened while the machine was fresh has a state to read now.
        let mut next = Some(Event::Resync);
        loop {
            let signal = match next.take() {
                Some(s) => s,
                None => match next_event(&mut events).await {
                    Some(s) => s,
                    None => return,
                },
            };
            let result = match signal {
                Event::Changed { kind, ids } => iface.changed(kind.as_str(), ids).await,
                Event::Liveness {
                    machine_id,
                    liveness,
                } => iface.liveness_changed(&machine_id, liveness.as_str()).await,
                Event::Resync => iface.resync().await,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not emit a D-Bus signal");
            }
        }
    });
    Ok(Some((conn, task)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_reads_file_contents() {
        assert!(may_read(Kind::Files, 0));
        assert!(!may_read(Kind::Files, 998));
        assert!(may_read(Kind::Certificates, 0));
        assert!(!may_read(Kind::Certificates, 998));
        let public = |k: &Kind| !matches!(k, Kind::Files | Kind::Certificates);
        for kind in Kind::ALL.into_iter().filter(public) {
            assert!(may_read(kind, 998), "{kind}");
        }
    }

    #[tokio::test]
    async fn a_forwarder_that_fell_behind_says_resync_then_carries_on() {
        let (tx, mut rx) = broadcast::channel(2);
        let changed = |id: &str| Event::Changed {
            kind: Kind::Services,
            ids: vec![id.into()],
        };
        tx.send(changed("a")).unwrap();
        assert_eq!(
            next_event(&mut rx).await,
            Some(Event::Changed {
                kind: Kind::Services,
                ids: vec!["a".into()]
            })
        );
        for id in ["b", "c", "d", "e"] {
            tx.send(changed(id)).unwrap();
        }
        assert_eq!(next_event(&mut rx).await, Some(Event::Resync));
        // The newest events still come through after the resync.
        assert!(matches!(
            next_event(&mut rx).await,
            Some(Event::Changed { ids, .. }) if ids == ["d"]
        ));
        drop(tx);
        assert!(next_event(&mut rx).await.is_some());
        assert_eq!(next_event(&mut rx).await, None);
    }
}

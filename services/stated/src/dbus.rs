//! `org.uncloud.State1` at `/org/uncloud/State1`: the local API other daemons and `busctl` use.
//!
//! Entities travel as JSON strings (the model's serde form), so every call works from `busctl`.
//! Writes return once the change is durable. Changes, local or merged from peers, are announced
//! with `Changed(kind, ids)`; liveness transitions with `LivenessChanged(machine_id, liveness)`.

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use uncloud_common::dbus::{STATE_NAME, STATE_PATH};
use uncloud_common::model::{Container, Kind, Machine, Route, Service};
use zbus::object_server::SignalEmitter;
use zbus::{interface, Connection};

use crate::document::{DocError, MeshFields, Mutation};
use crate::node::{Event, Shared, WriteError};

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
}

impl From<WriteError> for StateError {
    fn from(e: WriteError) -> Self {
        let msg = e.to_string();
        match e {
            WriteError::Invalid(_) => StateError::InvalidArgument(msg),
            WriteError::NotOwner { .. } => StateError::NotOwner(msg),
            WriteError::Doc(DocError::NotFound { .. }) => StateError::NotFound(msg),
            WriteError::Doc(_) | WriteError::Storage(_) => StateError::Storage(msg),
        }
    }
}

fn parse<T: DeserializeOwned>(what: &str, json: &str) -> Result<T, StateError> {
    serde_json::from_str(json).map_err(|e| StateError::InvalidArgument(format!("{what}: {e}")))
}

/// The D-Bus object; a thin layer over [`Shared`].
pub struct State1 {
    shared: Arc<Shared>,
}

#[interface(name = "org.uncloud.State1")]
impl State1 {
    /// The whole state as JSON.
    fn get_state(&self) -> String {
        serde_json::to_string(&self.shared.state()).expect("the model serializes")
    }

    /// One part of the state (`network`, `machines`, `services`, `containers`, `routes`) as JSON,
    /// or one entity of it when `id` is not empty.
    fn get(&self, kind: &str, id: &str) -> Result<String, StateError> {
        let kind = Kind::parse(kind).ok_or_else(|| {
            StateError::InvalidArgument(format!(
                "unknown kind {kind:?}; expected network, machines, services, containers or routes"
            ))
        })?;
        let id = (!id.is_empty()).then_some(id);
        match self.shared.part_json(kind, id) {
            Ok(v) => Ok(v.to_string()),
            Err(e @ DocError::NotFound { .. }) => Err(StateError::NotFound(e.to_string())),
            Err(e) => Err(StateError::Storage(e.to_string())),
        }
    }

    async fn upsert_machine(&self, json: &str) -> Result<(), StateError> {
        let m: Machine = parse("machine", json)?;
        Ok(self.shared.mutate(Mutation::UpsertMachine(m)).await?)
    }

    async fn remove_machine(&self, id: &str) -> Result<(), StateError> {
        Ok(self
            .shared
            .mutate(Mutation::RemoveMachine(id.into()))
            .await?)
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
        let fields = MeshFields {
            machine_id: self.shared.machine_id.clone(),
            public_key: public_key.to_string(),
            endpoints,
            observed: observed.into_iter().collect(),
        };
        Ok(self.shared.mutate(Mutation::SetMachineMesh(fields)).await?)
    }

    async fn upsert_service(&self, json: &str) -> Result<(), StateError> {
        let s: Service = parse("service", json)?;
        Ok(self.shared.mutate(Mutation::UpsertService(s)).await?)
    }

    async fn remove_service(&self, id: &str) -> Result<(), StateError> {
        Ok(self
            .shared
            .mutate(Mutation::RemoveService(id.into()))
            .await?)
    }

    async fn upsert_container(&self, json: &str) -> Result<(), StateError> {
        let c: Container = parse("container", json)?;
        Ok(self.shared.mutate(Mutation::UpsertContainer(c)).await?)
    }

    async fn remove_container(&self, id: &str) -> Result<(), StateError> {
        Ok(self
            .shared
            .mutate(Mutation::RemoveContainer(id.into()))
            .await?)
    }

    async fn upsert_route(&self, json: &str) -> Result<(), StateError> {
        let r: Route = parse("route", json)?;
        Ok(self.shared.mutate(Mutation::UpsertRoute(r)).await?)
    }

    async fn remove_route(&self, id: &str) -> Result<(), StateError> {
        Ok(self.shared.mutate(Mutation::RemoveRoute(id.into())).await?)
    }

    /// Machine id -> `alive` | `suspect` | `down`, as this machine sees them.
    fn liveness(&self) -> HashMap<String, String> {
        self.shared
            .liveness()
            .into_iter()
            .map(|(id, l)| (id, l.as_str().to_string()))
            .collect()
    }

    /// Emitted after the state changed: which part and which entity ids.
    #[zbus(signal)]
    async fn changed(emitter: &SignalEmitter<'_>, kind: &str, ids: Vec<String>)
        -> zbus::Result<()>;

    /// Emitted when this machine's view of another machine's liveness changes.
    #[zbus(signal)]
    async fn liveness_changed(
        emitter: &SignalEmitter<'_>,
        machine_id: &str,
        liveness: &str,
    ) -> zbus::Result<()>;

    #[zbus(property(emits_changed_signal = "const"))]
    fn machine_id(&self) -> String {
        self.shared.machine_id.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn network_id(&self) -> String {
        self.shared.network_id.clone()
    }

    /// Hex hashes of the document heads; equal on two machines means equal state.
    #[zbus(property(emits_changed_signal = "false"))]
    fn heads(&self) -> Vec<String> {
        crate::document::heads_to_hex(&self.shared.heads())
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
/// signals. Returns `None` when `bus = "none"`.
pub async fn serve(
    shared: Arc<Shared>,
    bus: &str,
) -> Result<Option<(Connection, JoinHandle<()>)>, DbusError> {
    let err = |reason| DbusError {
        bus: bus.to_string(),
        reason,
    };
    let Some(builder) = uncloud_common::dbus::bus_builder(bus) else {
        return Ok(None);
    };
    let mut events = shared.subscribe();
    let conn = builder
        .name(STATE_NAME)
        .serve_at(STATE_PATH, State1 { shared })
        .build()
        .await
        .map_err(err)?;
    let iface = conn
        .object_server()
        .interface::<_, State1>(STATE_PATH)
        .await
        .map_err(err)?;
    let task = tokio::spawn(async move {
        loop {
            let result = match events.recv().await {
                Ok(Event::Changed { kind, ids }) => iface.changed(kind.as_str(), ids).await,
                Ok(Event::Liveness {
                    machine_id,
                    liveness,
                }) => iface.liveness_changed(&machine_id, liveness.as_str()).await,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(
                        "dropped {n} change signals: listeners should re-read the state"
                    );
                    Ok(())
                }
                Err(RecvError::Closed) => return,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not emit a D-Bus signal");
            }
        }
    });
    Ok(Some((conn, task)))
}

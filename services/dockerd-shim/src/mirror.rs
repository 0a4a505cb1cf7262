//! Keeping the replicated state true to what this machine's engine runs.
//!
//! The shim writes only this machine's container records. Engine events (start, die, kill,
//! health status, destroy…) trigger an inspect and a write within moments; a full resync at
//! start, after every reconnect to the engine and every [`RESYNC_EVERY`] heals anything an
//! event stream missed (the engine restarted, a signal was lost). Records of containers that
//! are gone are removed.
//!
//! [`plan`] decides the writes from the two lists (pure); [`Mirror`] does the I/O.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::Docker;
use futures::StreamExt;
use uncloud_common::dbus::StateProxy;
use uncloud_common::model::{Container, NetworkState};

use crate::containers::{self, ContainerError};
use crate::drain::Draining;
use crate::files::FileStore;
use crate::network::MANAGED_LABEL;

/// How often the whole list is compared even when events flow.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// The writes that make the state's records of this machine equal the engine's containers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Writes {
    pub upserts: Vec<Container>,
    pub removals: Vec<String>,
}

/// Compares what the engine runs with what the state records for this machine. Pure.
pub fn plan(engine: &[Container], recorded: &BTreeMap<String, Container>) -> Writes {
    let mut w = Writes::default();
    for c in engine {
        if recorded.get(&c.id) != Some(c) {
            w.upserts.push(c.clone());
        }
    }
    for id in recorded.keys() {
        if !engine.iter().any(|c| &c.id == id) {
            w.removals.push(id.clone());
        }
    }
    w
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("cannot list containers: {0}")]
    List(bollard::errors::Error),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("stated: {0}")]
    State(#[from] zbus::Error),
    #[error("stated returned a state the shim cannot read: {0}")]
    BadState(serde_json::Error),
}

pub struct Mirror<'a> {
    pub docker: Docker,
    pub state: StateProxy<'a>,
    pub machine_id: String,
    pub network: String,
    /// Containers being drained: their records say so.
    pub draining: Draining,
    /// The files written for containers; a resync removes those of containers gone.
    pub files: Option<FileStore>,
    /// Woken each time the engine answers again after its event stream broke (it restarted):
    /// the firewall rules are then applied again at once.
    pub reconnected: Option<std::sync::Arc<tokio::sync::Notify>>,
}

fn managed_filter() -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("{MANAGED_LABEL}=true")])])
}

impl Mirror<'_> {
    /// This machine's managed containers as the engine has them.
    async fn engine_containers(&self) -> Result<Vec<Container>, MirrorError> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(managed_filter()),
                ..Default::default()
            }))
            .await
            .map_err(MirrorError::List)?;
        let mut out = Vec::new();
        for summary in list {
            let Some(id) = summary.id else { continue };
            match self.inspect(&id).await {
                Ok(c) => out.push(c),
                // Removed between the list and the inspect: simply not there.
                Err(ContainerError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    async fn recorded(&self) -> Result<BTreeMap<String, Container>, MirrorError> {
        let json = self.state.get("containers", "").await?;
        let all: BTreeMap<String, Container> =
            serde_json::from_str(&json).map_err(MirrorError::BadState)?;
        Ok(all
            .into_iter()
            .filter(|(_, c)| c.machine_id == self.machine_id)
            .collect())
    }

    async fn write(&self, c: &Container) -> Result<(), MirrorError> {
        let json = serde_json::to_string(c).expect("the model serializes");
        self.state.upsert_container(&json).await?;
        Ok(())
    }

    /// Makes the state's records equal the engine's containers (and removes the files of
    /// containers that are gone).
    pub async fn resync(&self) -> Result<Writes, MirrorError> {
        let engine = self.engine_containers().await?;
        if let Some(files) = &self.files {
            files.sweep(&engine.iter().map(|c| c.name.clone()).collect());
        }
        let writes = plan(&engine, &self.recorded().await?);
        for c in &writes.upserts {
            self.write(c).await?;
        }
        for id in &writes.removals {
            if let Err(e) = self.state.remove_container(id).await {
                // Someone else removed it meanwhile: the goal is reached.
                tracing::debug!(id, error = %e, "record already gone");
            }
        }
        if !writes.upserts.is_empty() || !writes.removals.is_empty() {
            tracing::info!(
                updated = writes.upserts.len(),
                removed = writes.removals.len(),
                "resynced the state with the engine"
            );
        }
        Ok(writes)
    }

    /// A container as its record should say, draining mark included.
    async fn inspect(&self, id: &str) -> Result<Container, ContainerError> {
        let mut c = containers::inspect(&self.docker, id, &self.machine_id, &self.network).await?;
        c.draining = self.draining.contains(&c.id);
        Ok(c)
    }

    /// Reflects one container's current state (after an event).
    async fn refresh(&self, id: &str) -> Result<(), MirrorError> {
        match self.inspect(id).await {
            Ok(c) => self.write(&c).await,
            Err(ContainerError::NotFound(_)) => {
                let _ = self.state.remove_container(id).await;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Follows engine events forever: resync, then refresh each container an event names;
    /// on a broken stream (engine restart) wait, resync and follow again.
    pub async fn run(&self) {
        let mut backoff = Duration::from_millis(200);
        let mut first = true;
        loop {
            if let Err(e) = self.resync().await {
                tracing::warn!(error = %e, "resync failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            if !std::mem::take(&mut first) {
                if let Some(n) = &self.reconnected {
                    n.notify_one();
                }
            }
            backoff = Duration::from_millis(200);
            let mut filters = managed_filter();
            filters.insert("type".into(), vec!["container".into()]);
            let mut events = self.docker.events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }));
            let mut resync = tokio::time::interval(RESYNC_EVERY);
            resync.tick().await;
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(Ok(ev)) => {
                            let Some(id) = ev.actor.and_then(|a| a.id) else { continue };
                            tracing::debug!(id, action = ?ev.action, "engine event");
                            if let Err(e) = self.refresh(&id).await {
                                tracing::warn!(id, error = %e, "cannot mirror a container");
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "engine event stream broke; resyncing");
                            break;
                        }
                        None => {
                            tracing::warn!("engine event stream ended; resyncing");
                            break;
                        }
                    },
                    _ = self.draining.started() => {
                        for id in self.draining.ids() {
                            if let Err(e) = self.refresh(&id).await {
                                tracing::warn!(id, error = %e, "cannot mark a container draining");
                            }
                        }
                    }
                    _ = resync.tick() => {
                        if let Err(e) = self.resync().await {
                            tracing::warn!(error = %e, "periodic resync failed");
                        }
                    }
                }
            }
            tokio::time::sleep(backoff).await;
        }
    }
}

/// This machine's records in a state (for tests and tools).
pub fn records_of(state: &NetworkState, machine_id: &str) -> Vec<Container> {
    state
        .containers
        .values()
        .filter(|c| c.machine_id == machine_id)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uncloud_common::model::ContainerState;

    fn c(id: &str, state: ContainerState) -> Container {
        Container {
            id: id.into(),
            machine_id: "m1".into(),
            name: format!("n-{id}"),
            state,
            healthy: true,
            ..Default::default()
        }
    }

    #[test]
    fn only_differences_are_written_and_gone_records_removed() {
        let recorded: BTreeMap<String, Container> = [
            ("a".to_string(), c("a", ContainerState::Running)),
            ("b".to_string(), c("b", ContainerState::Running)),
            ("gone".to_string(), c("gone", ContainerState::Running)),
        ]
        .into();
        let engine = vec![
            c("a", ContainerState::Running),
            c("b", ContainerState::Exited),
            c("new", ContainerState::Created),
        ];
        let w = plan(&engine, &recorded);
        let ids: Vec<&str> = w.upserts.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["b", "new"]);
        assert_eq!(w.removals, ["gone"]);
        assert_eq!(
            plan(
                &engine,
                &engine.iter().map(|c| (c.id.clone(), c.clone())).collect()
            ),
            Writes::default()
        );
    }
}

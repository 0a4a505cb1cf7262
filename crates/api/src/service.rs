//! Services across the network: `uc run`, `uc ls`, `uc ps`, `uc rm`. The spec itself is the
//! shared model's ([`ServiceSpec`]), the one stored in the state. Every field added later is
//! `#[serde(default)]`, so replies read across versions.

use serde::{Deserialize, Serialize};

pub use uncloud_common::constraint::Constraint;
pub use uncloud_common::model::{
    FileMount, HealthCheck, ServiceSpec, StoredFile, MODE_GLOBAL, MODE_REPLICATED,
};
pub use uncloud_common::ports::host_mode;

/// `uc deploy`: the contents of the files its services mount (`ServiceSpec::files` names
/// them by digest). Their debug form never shows a content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PutFiles {
    pub files: Vec<StoredFile>,
}

/// What `put_files` did: how many contents were new, how many the state had already.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PutFilesReply {
    pub stored: u32,
    pub present: u32,
}

/// `uc run`: create a service and start its containers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunRequest {
    /// The service's name (a DNS label); empty: derived from the image (`nginx:1.25` ->
    /// `nginx`).
    #[serde(default)]
    pub name: String,
    /// The project it belongs to; empty: none.
    #[serde(default)]
    pub project: String,
    pub spec: ServiceSpec,
    /// When to pull the image on a machine: `missing` (the default, also when empty),
    /// `always` or `never`.
    #[serde(default)]
    pub pull: String,
}

/// What `run` did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunReply {
    /// The service as it is now, with the containers that started.
    pub service: ServiceRow,
    /// Machines where a container could not start, and why.
    #[serde(default)]
    pub failed: Vec<MachineFailure>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MachineFailure {
    pub machine: String,
    pub error: String,
}

/// A service by name (`web`, or `web.shop` for `web` of project `shop`) or id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceRef {
    pub service: String,
}

/// `uc scale`: the number of containers a replicated service should have.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScaleRequest {
    /// The service, as in [`ServiceRef`].
    pub service: String,
    pub replicas: u32,
}

/// What `remove_service` did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoveReply {
    /// The containers removed, by name.
    #[serde(default)]
    pub removed: Vec<String>,
}

/// One service, as `uc ls` and `uc ps` show it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceRow {
    pub id: String,
    pub name: String,
    pub project: String,
    pub revision: u64,
    /// `replicated` or `global`.
    pub mode: String,
    pub image: String,
    /// Wanted containers (replicated mode).
    pub replicas: u32,
    /// Ingress ports (`x-ports` syntax) and host ports.
    pub ports: Vec<String>,
    /// `lb.<name>[.<project>].internal`'s address; empty when it has none.
    pub vip: String,
    pub containers: Vec<ContainerRow>,
    /// Containers made from a revision whose spec differs from the current one (an update
    /// that stopped half way, or a machine that was cut off during one). 0 from apids older
    /// than the field (API version 6).
    pub outdated: usize,
    /// The whole spec of its current revision (`uc deploy` compares it with the file's).
    /// Absent from the replies of apids older than the field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<ServiceSpec>,
}

/// One container of a service, with what the answering machine knows of its machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerRow {
    pub id: String,
    pub name: String,
    pub machine: String,
    pub machine_id: String,
    /// `running`, `exited`, … as its machine last wrote it.
    pub state: String,
    pub healthy: bool,
    /// Its mesh address.
    pub ip: String,
    /// The service revision it was made from.
    pub revision: u64,
    /// How the answering machine sees the container's machine: `alive`, `suspect` or `down`
    /// (then the state above may be stale).
    pub machine_state: String,
}

impl ServiceRow {
    /// `web` outside a project, `web.shop` inside one: how `uc` names it.
    pub fn display_name(&self) -> String {
        if self.project.is_empty() {
            self.name.clone()
        } else {
            format!("{}.{}", self.name, self.project)
        }
    }

    /// Containers running on machines the answering machine sees alive.
    pub fn running(&self) -> usize {
        self.containers
            .iter()
            .filter(|c| c.state == "running" && c.machine_state == "alive")
            .count()
    }
}

/// `update`: make a service's containers run a new spec, one container at a time (`uc deploy`
/// of a changed service), or an earlier revision's (`uc rollback`). Added in API version 6.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateRequest {
    /// The service, as in [`ServiceRef`].
    pub service: String,
    /// The spec to run; `None`: an earlier revision's, `to_revision` or else the one before
    /// the current.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<ServiceSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_revision: Option<u64>,
    /// As in [`RunRequest::pull`].
    pub pull: String,
    /// `start-first` (a new container starts and must be ready before the old one stops),
    /// `stop-first`, or empty: start-first unless host ports or a volume only one container
    /// may use force stop-first.
    pub order: String,
    /// How long a new container without a health check must keep running to count as
    /// ready; 0: 5 s.
    pub monitor_ms: u64,
    /// When a new container fails, stop there instead of going back to the previous spec.
    pub no_rollback: bool,
}

/// What `update` did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateReply {
    /// The service as it is now.
    pub service: ServiceRow,
    /// The order used: `start-first` or `stop-first`.
    pub order: String,
    /// What was done, one line per step (`replaced web-1a2b on alpha by web-3c4d`).
    pub steps: Vec<String>,
    /// Why the update failed; empty when it succeeded.
    pub error: String,
    /// The failed container's last log lines.
    pub logs: Vec<String>,
    /// The update failed and the service went back to the spec it had before.
    pub rolled_back: bool,
    /// Containers left as they were because their machine could not be reached.
    pub skipped: Vec<MachineFailure>,
}

/// `drain_machine`: drain a machine, or enable it again. Added in API version 8.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DrainRequest {
    /// A machine name or id.
    pub machine: String,
    /// `true`: drain it; `false`: enable it (`uc machine enable`).
    pub drain: bool,
}

/// What draining did: per service that had containers on the machine, its steps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DrainReply {
    /// The machine's name.
    pub machine: String,
    pub services: Vec<DrainedService>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DrainedService {
    pub service: String,
    /// One line per step (`started web-3c4d on beta`, `removed web-1a2b on alpha`).
    pub steps: Vec<String>,
    /// Why its containers could not all move; empty when they did.
    pub error: String,
}

/// `history`: a service's revisions, oldest first, the current one last. Added in API
/// version 6.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryReply {
    pub service: String,
    pub revisions: Vec<RevisionRow>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RevisionRow {
    pub revision: u64,
    pub spec: ServiceSpec,
    /// The service runs this revision now.
    pub current: bool,
    /// Containers of this revision (by its number) that exist now.
    pub containers: usize,
}

/// `container_action`: stop, start or restart a service's containers (`uc stop|start|restart`).
/// Added in API version 6.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerAction {
    /// The service, as in [`ServiceRef`].
    pub service: String,
    /// One container of it, by name or id (prefix); empty: all of them.
    pub container: String,
    /// `stop`, `start` or `restart`.
    pub action: String,
    /// Seconds a stopping container gets before it is killed; `None`: its engine's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_secs: Option<u32>,
}

/// What `container_action` did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ActionReply {
    /// The containers it was done to, by name.
    pub done: Vec<String>,
    /// Containers it could not be done to, and why (by machine).
    pub failed: Vec<MachineFailure>,
}

//! Services across the network: `uc run`, `uc ls`, `uc ps`, `uc rm`. The spec itself is the
//! shared model's ([`ServiceSpec`]), the one stored in the state. Every field added later is
//! `#[serde(default)]`, so replies read across versions.

use serde::{Deserialize, Serialize};

pub use uncloud_common::model::{HealthCheck, ServiceSpec, MODE_GLOBAL, MODE_REPLICATED};

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

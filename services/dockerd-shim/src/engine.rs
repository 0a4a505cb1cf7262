//! The connection to the Docker engine, at the API version both sides speak.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use uncloud_common::docker::{ErrorKind, OpsError};
use uncloud_common::model::{Container, ContainerState, Service};

use crate::containers;
use crate::drain::Draining;
use crate::files::FileStore;

#[derive(Debug, thiserror::Error)]
#[error("cannot reach the Docker engine at {socket}: {reason}")]
pub struct EngineError {
    pub socket: String,
    pub reason: String,
}

/// Connects over the unix socket and negotiates the API version down to the engine's (1.41
/// for Debian 12's docker.io), so requests use only what that engine understands.
pub async fn connect(socket: &Path) -> Result<Docker, EngineError> {
    let err = |reason: String| EngineError {
        socket: socket.display().to_string(),
        reason,
    };
    let path = socket
        .to_str()
        .ok_or_else(|| err("path is not UTF-8".into()))?;
    let docker = Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
        .map_err(|e| err(e.to_string()))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| err(e.to_string()))
}

/// The engine on this machine and what operations on it need to know; both APIs (D-Bus for
/// this machine, tarpc for others) act through it.
#[derive(Clone)]
pub struct Local {
    pub docker: Docker,
    pub machine_id: String,
    /// The Docker network containers join.
    pub network: String,
    /// DNS server for containers: the machine's mesh address.
    pub dns: Ipv4Addr,
    /// Containers being drained (shared with the mirror).
    pub draining: Draining,
    /// How long a running container drains before it is removed; zero removes at once.
    pub drain: Duration,
    /// After the drain period, waiting for the ingress machines to let go; `None`: no wait.
    pub ingress: Option<crate::drain::IngressWait>,
    /// Where the files services mount are written; `None`: a spec that mounts files is
    /// refused.
    pub files: Option<FileStore>,
}

impl Local {
    /// Validates the service, then creates and starts container `name`; returns its id.
    pub async fn run_service(&self, service: &Service, name: &str) -> Result<String, OpsError> {
        service
            .validate()
            .map_err(|e| OpsError::new(ErrorKind::InvalidArgument, e.to_string()))?;
        if service.spec.files.is_empty() {
            return Ok(
                containers::run(&self.docker, service, name, &self.network, self.dns).await?,
            );
        }
        if !crate::files::is_container_name(name) {
            return Err(OpsError::new(
                ErrorKind::InvalidArgument,
                format!("{name:?} is not a container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"),
            ));
        }
        let store = self.files.as_ref().ok_or_else(|| {
            OpsError::new(
                ErrorKind::InvalidArgument,
                "this shim has no state to read mounted files from",
            )
        })?;
        // The files' directory is the container's name: never touch another container's.
        if containers::inspect(&self.docker, name, &self.machine_id, &self.network)
            .await
            .is_ok()
        {
            return Err(containers::ContainerError::NameTaken(name.to_string()).into());
        }
        let binds = store.write(name, &service.spec.files).await?;
        let run = containers::run_with_files(
            &self.docker,
            service,
            name,
            &self.network,
            self.dns,
            &binds,
        )
        .await;
        if run.is_err() {
            store.remove(name);
        }
        Ok(run?)
    }

    /// The container as the shared model describes it.
    pub async fn inspect(&self, container: &str) -> Result<Container, OpsError> {
        Ok(containers::inspect(&self.docker, container, &self.machine_id, &self.network).await?)
    }

    /// Removes a container, and the files written for it; a running one drains first (see
    /// [`crate::drain`]).
    pub async fn remove(&self, container: &str) -> Result<(), OpsError> {
        let found = self.inspect(container).await.ok();
        // Marked draining until it is gone: its record must not go back into its service's
        // addresses between the drain and the removal.
        let _drain = match found.as_ref() {
            Some(c) if c.state == ContainerState::Running && !self.drain.is_zero() => {
                let guard = self.draining.start(&c.id);
                tracing::info!(container = %c.name, drain_ms = self.drain.as_millis() as u64, "draining before removal");
                tokio::time::sleep(self.drain).await;
                if let Some(wait) = &self.ingress {
                    wait.until_released(&self.machine_id, &c.id, &c.name).await;
                }
                Some(guard)
            }
            _ => None,
        };
        let target = found.as_ref().map_or(container, |c| c.id.as_str());
        containers::remove(&self.docker, target).await?;
        if let (Some(store), Some(c)) = (&self.files, &found) {
            store.remove(&c.name);
        }
        Ok(())
    }
}

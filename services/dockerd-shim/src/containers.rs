//! Container lifecycle on this machine: create and start from a service, stop, restart,
//! remove, inspect as the shared model's [`Container`].
//!
//! A failed create-and-start never leaves a container behind: if the engine created the
//! container but could not start it (a host port already taken, say), it is removed before
//! the error is returned.

use std::net::Ipv4Addr;

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, RestartContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use uncloud_common::docker::{ErrorKind, OpsError};
use uncloud_common::model::{Container, ContainerState, Service};

use crate::refusal::{reason, status};
use crate::spec::{self, FileBind, SpecError, LABEL_REVISION, LABEL_SERVICE_ID};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("image {image} is not on this machine; pull or load it first")]
    NoImage { image: String },
    #[error("no container {0} on this machine")]
    NotFound(String),
    #[error("a container named {0} already exists")]
    NameTaken(String),
    #[error("cannot {what} container {name}: {reason}")]
    Engine {
        what: &'static str,
        name: String,
        reason: String,
    },
}

impl From<ContainerError> for OpsError {
    fn from(e: ContainerError) -> Self {
        let kind = match &e {
            ContainerError::Spec(_) => ErrorKind::InvalidArgument,
            ContainerError::NoImage { .. } => ErrorKind::NoImage,
            ContainerError::NotFound(_) => ErrorKind::NotFound,
            ContainerError::NameTaken(_) => ErrorKind::Conflict,
            ContainerError::Engine { .. } => ErrorKind::Engine,
        };
        OpsError::new(kind, e.to_string())
    }
}

/// An engine error about container `name`: `NotFound` for a 404, else what the engine said.
pub(crate) fn engine(what: &'static str, name: &str, e: bollard::errors::Error) -> ContainerError {
    match status(&e) {
        Some(404) => ContainerError::NotFound(name.to_string()),
        _ => ContainerError::Engine {
            what,
            name: name.to_string(),
            reason: reason(e),
        },
    }
}

/// Creates container `name` from `service` on `network` (DNS at `dns`) and starts it.
/// Returns the container id. A spec that mounts files needs [`run_with_files`].
pub async fn run(
    docker: &Docker,
    service: &Service,
    name: &str,
    network: &str,
    dns: Ipv4Addr,
) -> Result<String, ContainerError> {
    run_with_files(docker, service, name, network, dns, &[]).await
}

/// [`run`], with the spec's files as written for this container (`crate::files`).
pub async fn run_with_files(
    docker: &Docker,
    service: &Service,
    name: &str,
    network: &str,
    dns: Ipv4Addr,
    files: &[FileBind],
) -> Result<String, ContainerError> {
    let body = spec::create_body(service, network, dns, files)?;
    let created = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.to_string()),
                ..Default::default()
            }),
            body,
        )
        .await
        .map_err(|e| match status(&e) {
            Some(404) => ContainerError::NoImage {
                image: service.spec.image.clone(),
            },
            Some(409) => ContainerError::NameTaken(name.to_string()),
            _ => engine("create", name, e),
        })?;
    if let Err(e) = docker.start_container(&created.id, None).await {
        let err = engine("start", name, e);
        // Nothing half-made stays behind.
        if let Err(cleanup) = remove(docker, &created.id).await {
            tracing::warn!(container = name, error = %cleanup, "could not remove a container that failed to start");
        }
        return Err(err);
    }
    tracing::info!(container = name, id = %created.id, service = %service.name, "started");
    Ok(created.id)
}

/// Stops a container, SIGKILL after `grace_secs`; negative: after the container's own grace
/// period (its spec's `stop_grace_ms`, else Docker's 10 s).
pub async fn stop(docker: &Docker, id: &str, grace_secs: i32) -> Result<(), ContainerError> {
    docker
        .stop_container(
            id,
            Some(StopContainerOptions {
                t: (grace_secs >= 0).then_some(grace_secs),
                ..Default::default()
            }),
        )
        .await
        .or_else(|e| match status(&e) {
            Some(304) => Ok(()), // already stopped
            _ => Err(engine("stop", id, e)),
        })
}

pub async fn start(docker: &Docker, id: &str) -> Result<(), ContainerError> {
    docker
        .start_container(id, None)
        .await
        .or_else(|e| match status(&e) {
            Some(304) => Ok(()), // already running
            _ => Err(engine("start", id, e)),
        })
}

/// Restarts a container; `grace_secs` as for [`stop`].
pub async fn restart(docker: &Docker, id: &str, grace_secs: i32) -> Result<(), ContainerError> {
    docker
        .restart_container(
            id,
            Some(RestartContainerOptions {
                t: (grace_secs >= 0).then_some(grace_secs),
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| engine("restart", id, e))
}

/// Removes a container, stopping it first if it runs; its anonymous volumes go with it.
pub async fn remove(docker: &Docker, id: &str) -> Result<(), ContainerError> {
    docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| engine("remove", id, e))
}

/// The container as the shared model describes it.
pub async fn inspect(
    docker: &Docker,
    id: &str,
    machine_id: &str,
    network: &str,
) -> Result<Container, ContainerError> {
    let i = docker
        .inspect_container(id, None)
        .await
        .map_err(|e| engine("inspect", id, e))?;
    Ok(to_model(&i, machine_id, network))
}

/// Maps an inspect response to the model. Pure.
pub fn to_model(i: &ContainerInspectResponse, machine_id: &str, network: &str) -> Container {
    let labels = i
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let state = i.state.as_ref();
    let health = state.and_then(|s| s.health.as_ref()).and_then(|h| h.status);
    Container {
        id: i.id.clone().unwrap_or_default(),
        machine_id: machine_id.to_string(),
        name: i
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        service_id: labels.get(LABEL_SERVICE_ID).cloned().unwrap_or_default(),
        image: i
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default(),
        ip: i
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .and_then(|n| n.get(network))
            .and_then(|e| e.ip_address.clone())
            .unwrap_or_default(),
        state: match state.and_then(|s| s.status) {
            Some(ContainerStateStatusEnum::RUNNING) => ContainerState::Running,
            Some(ContainerStateStatusEnum::PAUSED) => ContainerState::Paused,
            Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Restarting,
            Some(ContainerStateStatusEnum::EXITED) => ContainerState::Exited,
            Some(ContainerStateStatusEnum::DEAD) | Some(ContainerStateStatusEnum::REMOVING) => {
                ContainerState::Dead
            }
            _ => ContainerState::Created,
        },
        // Without a check a container counts as healthy; while starting it is not yet.
        healthy: !matches!(
            health,
            Some(HealthStatusEnum::UNHEALTHY) | Some(HealthStatusEnum::STARTING)
        ),
        revision: labels
            .get(LABEL_REVISION)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
        image_digest: i.image.clone().unwrap_or_default(),
        created_at_ms: i.created.as_deref().and_then(rfc3339_ms).unwrap_or(0),
        started_at_ms: state
            .and_then(|s| s.started_at.as_deref())
            .and_then(rfc3339_ms)
            .unwrap_or(0),
        finished_at_ms: state
            .and_then(|s| s.finished_at.as_deref())
            .and_then(rfc3339_ms)
            .unwrap_or(0),
        // The engine does not know; the mirror adds the shim's mark (`crate::drain`).
        draining: false,
    }
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC time as Docker writes it
/// (`2026-11-25T04:38:54.430206640Z`); `None` for Docker's "never" (`0001-01-01T00:00:00Z`)
/// or anything unreadable.
pub fn rfc3339_ms(s: &str) -> Option<u64> {
    let ns = uncloud_common::docker::rfc3339_ns(s)?;
    u64::try_from(ns / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_times() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_ms("2026-11-25T04:38:54.430206640Z"),
            Some(1_795_581_534_430)
        );
        assert_eq!(rfc3339_ms("2000-02-29T12:00:00.5Z"), Some(951_825_600_500));
        assert_eq!(rfc3339_ms("0001-01-01T00:00:00Z"), None);
        assert_eq!(rfc3339_ms("garbage"), None);
        assert_eq!(rfc3339_ms("2026-13-01T00:00:00Z"), None);
    }
}

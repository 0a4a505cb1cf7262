//! Named volumes on this machine: create, list, inspect, remove.

use std::collections::HashMap;

use bollard::models::{Volume, VolumeCreateRequest};
use bollard::query_parameters::{ListVolumesOptions, RemoveVolumeOptions};
use bollard::Docker;
pub use uncloud_common::docker::VolumeInfo;
use uncloud_common::docker::{ErrorKind, OpsError};

use crate::network::MANAGED_LABEL;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("invalid volume name {0:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit")]
    InvalidName(String),
    #[error("no volume {0} on this machine")]
    NotFound(String),
    #[error("volume {0} is in use by a container")]
    InUse(String),
    #[error("cannot {what} volume {name}: {reason}")]
    Engine {
        what: &'static str,
        name: String,
        reason: String,
    },
}

fn info(v: Volume) -> VolumeInfo {
    VolumeInfo {
        name: v.name,
        driver: v.driver,
        mountpoint: v.mountpoint,
        labels: v.labels.into_iter().collect(),
    }
}

impl From<VolumeError> for OpsError {
    fn from(e: VolumeError) -> Self {
        let kind = match &e {
            VolumeError::InvalidName(_) => ErrorKind::InvalidArgument,
            VolumeError::NotFound(_) => ErrorKind::NotFound,
            VolumeError::InUse(_) => ErrorKind::Conflict,
            VolumeError::Engine { .. } => ErrorKind::Engine,
        };
        OpsError::new(kind, e.to_string())
    }
}

/// Docker's rule for volume names, checked before asking the engine.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn engine(what: &'static str, name: &str, e: bollard::errors::Error) -> VolumeError {
    match crate::refusal::status(&e) {
        Some(404) => VolumeError::NotFound(name.to_string()),
        Some(409) => VolumeError::InUse(name.to_string()),
        _ => VolumeError::Engine {
            what,
            name: name.to_string(),
            reason: crate::refusal::reason(e),
        },
    }
}

/// Creates a local volume (idempotent: an existing one of that name is returned).
pub async fn create(docker: &Docker, name: &str) -> Result<VolumeInfo, VolumeError> {
    if !valid_name(name) {
        return Err(VolumeError::InvalidName(name.to_string()));
    }
    let v = docker
        .create_volume(VolumeCreateRequest {
            name: Some(name.to_string()),
            driver: Some("local".into()),
            labels: Some(HashMap::from([(MANAGED_LABEL.into(), "true".into())])),
            ..Default::default()
        })
        .await
        .map_err(|e| engine("create", name, e))?;
    Ok(info(v))
}

pub async fn list(docker: &Docker) -> Result<Vec<VolumeInfo>, VolumeError> {
    let r = docker
        .list_volumes(Some(ListVolumesOptions::default()))
        .await
        .map_err(|e| engine("list", "*", e))?;
    let mut out: Vec<VolumeInfo> = r
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(info)
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub async fn inspect(docker: &Docker, name: &str) -> Result<VolumeInfo, VolumeError> {
    docker
        .inspect_volume(name)
        .await
        .map(info)
        .map_err(|e| engine("inspect", name, e))
}

/// Removes a volume; refused (with [`VolumeError::InUse`]) while a container uses it, so
/// data is never lost by accident.
pub async fn remove(docker: &Docker, name: &str) -> Result<(), VolumeError> {
    docker
        .remove_volume(name, Some(RemoveVolumeOptions { force: false }))
        .await
        .map_err(|e| engine("remove", name, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        for ok in ["data", "a.b-c_d", "9x"] {
            assert!(super::valid_name(ok), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "ä"] {
            assert!(!super::valid_name(bad), "{bad}");
        }
    }
}

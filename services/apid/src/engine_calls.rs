//! The calls this machine's dockerd-shim answers for `uc` (through `call`, or another
//! machine's `fan_out`): a page of a container's log lines, named volumes, images.

use serde::de::DeserializeOwned;
use uncloud_api::wire::{Answer, ApiError, Call, ErrorKind};
use uncloud_common::dbus::DockerProxy;

use crate::api::{internal, Apid};

/// The shim's D-Bus errors (`org.uncloud.Docker1.Error.<Kind>`) as the API's.
fn shim_error(e: zbus::Error) -> ApiError {
    match e {
        zbus::Error::MethodError(name, msg, _)
            if !name.as_str().starts_with("org.freedesktop.") =>
        {
            let kind = match name.as_str().rsplit('.').next().unwrap_or_default() {
                "NotFound" => ErrorKind::NotFound,
                "InvalidArgument" => ErrorKind::Invalid,
                "Conflict" => ErrorKind::Conflict,
                _ => ErrorKind::Internal,
            };
            ApiError::new(kind, msg.unwrap_or_else(|| name.to_string()))
        }
        e => internal("dockerd-shim does not answer", e),
    }
}

fn decode<T: DeserializeOwned>(json: &str) -> Result<T, ApiError> {
    serde_json::from_str(json).map_err(|e| internal("dockerd-shim's answer", e))
}

impl Apid {
    /// Answers one of the engine's calls here; the caller checked the role.
    pub(crate) async fn engine_call(&self, call: Call) -> Result<Answer, ApiError> {
        let docker = DockerProxy::new(self.state().inner().connection())
            .await
            .map_err(|e| internal("dockerd-shim", e))?;
        Ok(match call {
            Call::ContainerLogs(request) => {
                let json = serde_json::to_string(&request.lines).expect("serializes");
                let lines = docker
                    .log_lines(&request.container, &json)
                    .await
                    .map_err(shim_error)?;
                Answer::ContainerLogs(decode(&lines)?)
            }
            Call::Volumes => {
                Answer::Volumes(decode(&docker.list_volumes().await.map_err(shim_error)?)?)
            }
            Call::InspectVolume(name) => Answer::Volume(decode(
                &docker.inspect_volume(&name).await.map_err(shim_error)?,
            )?),
            Call::CreateVolume(name) => {
                let v = docker.create_volume(&name).await.map_err(shim_error)?;
                tracing::info!(volume = %name, "volume created");
                Answer::Volume(decode(&v)?)
            }
            Call::RemoveVolume(name) => {
                docker.remove_volume(&name).await.map_err(shim_error)?;
                tracing::info!(volume = %name, "volume removed");
                Answer::Removed(name)
            }
            Call::Images => {
                Answer::Images(decode(&docker.list_images().await.map_err(shim_error)?)?)
            }
            other => {
                return Err(internal(
                    "apid",
                    format!("{other:?} is not a call of the engine"),
                ))
            }
        })
    }
}

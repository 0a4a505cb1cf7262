//! The connection to the Docker engine, at the API version both sides speak.

use std::path::Path;

use bollard::Docker;

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

//! `org.uncloud.Docker1` at `/org/uncloud/Docker1`: container operations on this machine.
//!
//! ```text
//! busctl call org.uncloud.Docker1 /org/uncloud/Docker1 org.uncloud.Docker1 \
//!     RunService ss '{"id":"web","name":"web","spec":{"image":"nginx"}}' web-1
//! busctl call org.uncloud.Docker1 /org/uncloud/Docker1 org.uncloud.Docker1 Stop si web-1 10
//! busctl call org.uncloud.Docker1 /org/uncloud/Docker1 org.uncloud.Docker1 Inspect s web-1
//! ```
//!
//! Services and containers travel as the shared model's JSON, so every call works from busctl.

use uncloud_common::docker::{ErrorKind, OpsError};
use uncloud_common::model::Service;
use zbus::{interface, Connection};

use crate::containers::{self, ContainerError};
use crate::engine::Local;
use crate::images::{self, ImageError};
use crate::volumes::{self, VolumeError};
use crate::{exec, logs, stats};

pub use uncloud_common::dbus::{DOCKER_NAME, DOCKER_PATH};

/// Errors as D-Bus error names `org.uncloud.Docker1.Error.*`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.uncloud.Docker1.Error")]
pub enum DockerError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// Malformed JSON or an invalid spec field.
    InvalidArgument(String),
    /// No such container.
    NotFound(String),
    /// The image is not on this machine.
    NoImage(String),
    /// A container with that name exists.
    Conflict(String),
    /// The engine refused or is unreachable.
    Engine(String),
}

impl From<OpsError> for DockerError {
    fn from(e: OpsError) -> Self {
        let OpsError { kind, message } = e;
        match kind {
            ErrorKind::InvalidArgument => DockerError::InvalidArgument(message),
            ErrorKind::NotFound => DockerError::NotFound(message),
            ErrorKind::NoImage => DockerError::NoImage(message),
            ErrorKind::Conflict => DockerError::Conflict(message),
            // Refused, Busy and Unreachable belong to the remote API's streams and
            // connections, which D-Bus does not have.
            ErrorKind::Engine | ErrorKind::Refused | ErrorKind::Busy | ErrorKind::Unreachable => {
                DockerError::Engine(message)
            }
        }
    }
}

// Each module's error reaches D-Bus through its kind, decided once in that module.
macro_rules! via_ops_error {
    ($($t:ty),*) => {$(
        impl From<$t> for DockerError {
            fn from(e: $t) -> Self {
                OpsError::from(e).into()
            }
        }
    )*};
}
via_ops_error!(ContainerError, ImageError, VolumeError);

/// The interface, acting on this machine's engine.
pub struct Docker1 {
    pub local: Local,
}

#[interface(name = "org.uncloud.Docker1")]
impl Docker1 {
    /// Creates and starts container `name` from a service (JSON); returns its id. Nothing is
    /// left behind if it cannot start.
    async fn run_service(&self, service_json: &str, name: &str) -> Result<String, DockerError> {
        let service: Service = serde_json::from_str(service_json)
            .map_err(|e| DockerError::InvalidArgument(format!("service: {e}")))?;
        Ok(self.local.run_service(&service, name).await?)
    }

    /// Stops a container (id or name), killing it after `grace_secs`.
    async fn stop(&self, container: &str, grace_secs: i32) -> Result<(), DockerError> {
        Ok(containers::stop(&self.local.docker, container, grace_secs).await?)
    }

    async fn start(&self, container: &str) -> Result<(), DockerError> {
        Ok(containers::start(&self.local.docker, container).await?)
    }

    async fn restart(&self, container: &str, grace_secs: i32) -> Result<(), DockerError> {
        Ok(containers::restart(&self.local.docker, container, grace_secs).await?)
    }

    /// Removes a container; a running one first drains (leaves its service's addresses for the
    /// shim's `drain_ms`).
    async fn remove(&self, container: &str) -> Result<(), DockerError> {
        Ok(self.local.remove(container).await?)
    }

    /// Loads a `docker save` tarball read from the passed file descriptor (a file or a pipe),
    /// streamed to the engine in chunks; returns the loaded `name:tag`s.
    async fn load_image(&self, tarball: zbus::OwnedFd) -> Result<Vec<String>, DockerError> {
        let fd: std::os::fd::OwnedFd = tarball.into();
        let file = tokio::fs::File::from_std(std::fs::File::from(fd));
        images::load(&self.local.docker, file)
            .await
            .map_err(Into::into)
    }

    /// Pulls an image from its registry; returns when done, announcing each step with the
    /// `PullProgress` signal (callers pulling big images should allow a long timeout).
    async fn pull_image(
        &self,
        image: &str,
        #[zbus(signal_emitter)] emitter: zbus::object_server::SignalEmitter<'_>,
    ) -> Result<(), DockerError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pull = images::pull(&self.local.docker, image, move |p| {
            let _ = tx.send(p);
        });
        let forward = async {
            while let Some(p) = rx.recv().await {
                let _ =
                    Self::pull_progress(&emitter, image, &p.layer, &p.status, p.current, p.total)
                        .await;
            }
        };
        let (result, ()) = tokio::join!(pull, forward);
        Ok(result?)
    }

    /// One step of a pull: image, layer (empty for the whole image), status, bytes so far,
    /// bytes in all (0 when unknown).
    #[zbus(signal)]
    async fn pull_progress(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        image: &str,
        layer: &str,
        status: &str,
        current: u64,
        total: u64,
    ) -> zbus::Result<()>;

    /// Images on this machine as JSON: `[{"id", "tags", "size_bytes"}]`.
    async fn list_images(&self) -> Result<String, DockerError> {
        let list = images::list(&self.local.docker).await?;
        Ok(serde_json::to_string(&list).expect("serializes"))
    }

    async fn remove_image(&self, name: &str) -> Result<(), DockerError> {
        Ok(images::remove(&self.local.docker, name).await?)
    }

    /// Creates a named local volume (or returns the existing one) as JSON.
    async fn create_volume(&self, name: &str) -> Result<String, DockerError> {
        let v = volumes::create(&self.local.docker, name).await?;
        Ok(serde_json::to_string(&v).expect("serializes"))
    }

    /// Volumes as JSON: `[{"name", "driver", "mountpoint", "labels"}]`.
    async fn list_volumes(&self) -> Result<String, DockerError> {
        let list = volumes::list(&self.local.docker).await?;
        Ok(serde_json::to_string(&list).expect("serializes"))
    }

    async fn inspect_volume(&self, name: &str) -> Result<String, DockerError> {
        let v = volumes::inspect(&self.local.docker, name).await?;
        Ok(serde_json::to_string(&v).expect("serializes"))
    }

    /// Removes a volume; `Conflict` while a container uses it.
    async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        Ok(volumes::remove(&self.local.docker, name).await?)
    }

    /// Streams a container's logs into two file descriptors the caller passes (stdout and
    /// stderr lines go to the matching one) and returns at once; the copy runs until the logs
    /// end (with `follow`, until the container stops) or the caller closes its end.
    /// `since_secs` 0 for all, `tail` -1 for all lines.
    async fn logs(
        &self,
        container: &str,
        follow: bool,
        since_secs: i32,
        tail: i32,
        stdout: zbus::OwnedFd,
        stderr: zbus::OwnedFd,
    ) -> Result<(), DockerError> {
        // Fail now for a container that does not exist, rather than in the background.
        self.local.inspect(container).await?;
        let req = logs::LogsRequest {
            follow,
            since_secs,
            tail: u32::try_from(tail).ok(),
        };
        let writer = |fd: zbus::OwnedFd| {
            let fd: std::os::fd::OwnedFd = fd.into();
            tokio::fs::File::from_std(std::fs::File::from(fd))
        };
        let (out, err) = (writer(stdout), writer(stderr));
        let docker = self.local.docker.clone();
        let container = container.to_string();
        tokio::spawn(async move {
            if let Err(e) = logs::copy(&docker, &container, &req, out, err).await {
                tracing::warn!(container, error = %e, "log stream ended with an error");
            }
        });
        Ok(())
    }

    /// Runs `cmd` in a container with the caller's file descriptors as stdin, stdout and
    /// stderr, and returns the exec id at once; the command's output ends with EOF on the
    /// descriptors, then `ExecExitCode` tells how it ended. With `tty`, output comes on
    /// stdout only and `ResizeExec` sets the terminal size.
    async fn exec(
        &self,
        container: &str,
        cmd: Vec<String>,
        tty: bool,
        stdin: zbus::OwnedFd,
        stdout: zbus::OwnedFd,
        stderr: zbus::OwnedFd,
    ) -> Result<String, DockerError> {
        let req = exec::ExecRequest {
            cmd,
            tty,
            stdin: true,
            ..Default::default()
        };
        let id = exec::create(&self.local.docker, container, &req).await?;
        let file = |fd: zbus::OwnedFd| {
            let fd: std::os::fd::OwnedFd = fd.into();
            tokio::fs::File::from_std(std::fs::File::from(fd))
        };
        let (i, o, e) = (file(stdin), file(stdout), file(stderr));
        let docker = self.local.docker.clone();
        let (container, exec_id) = (container.to_string(), id.clone());
        tokio::spawn(async move {
            if let Err(err) = exec::run(&docker, &container, &exec_id, tty, Some(i), o, e).await {
                tracing::warn!(container, error = %err, "exec ended with an error");
            }
        });
        Ok(id)
    }

    /// `Exec` with the whole request: `request` is JSON `{"cmd", "tty", "stdin", "env",
    /// "user", "working_dir"}`; without `stdin` the command's input is closed at once.
    async fn start_exec(
        &self,
        container: &str,
        request: &str,
        stdin: zbus::OwnedFd,
        stdout: zbus::OwnedFd,
        stderr: zbus::OwnedFd,
    ) -> Result<String, DockerError> {
        let req: exec::ExecRequest = serde_json::from_str(request)
            .map_err(|e| DockerError::InvalidArgument(format!("the request: {e}")))?;
        let id = exec::create(&self.local.docker, container, &req).await?;
        let file = |fd: zbus::OwnedFd| {
            let fd: std::os::fd::OwnedFd = fd.into();
            tokio::fs::File::from_std(std::fs::File::from(fd))
        };
        let input = req.stdin.then(|| file(stdin));
        let (o, e) = (file(stdout), file(stderr));
        let docker = self.local.docker.clone();
        let (container, exec_id, tty) = (container.to_string(), id.clone(), req.tty);
        tokio::spawn(async move {
            if let Err(err) = exec::run(&docker, &container, &exec_id, tty, input, o, e).await {
                tracing::warn!(container, error = %err, "exec ended with an error");
            }
        });
        Ok(id)
    }

    /// Sets the terminal size of a running exec started with `tty`.
    async fn resize_exec(&self, exec_id: &str, height: u16, width: u16) -> Result<(), DockerError> {
        Ok(exec::resize(&self.local.docker, exec_id, height, width).await?)
    }

    /// The exit code of an exec; -1 while it still runs.
    async fn exec_exit_code(&self, exec_id: &str) -> Result<i64, DockerError> {
        Ok(exec::exit_code(&self.local.docker, exec_id)
            .await?
            .unwrap_or(-1))
    }

    /// Resource use as JSON (`cpu_percent`, `memory_bytes`, `memory_limit_bytes`, `rx_bytes`,
    /// `tx_bytes`, `pids`); takes about a second.
    async fn stats(&self, container: &str) -> Result<String, DockerError> {
        let s = stats::stats(&self.local.docker, container).await?;
        Ok(serde_json::to_string(&s).expect("serializes"))
    }

    /// A page of a container's log lines with their times, as JSON `[{"time_ns", "stream",
    /// "text"}]`; `request` is JSON `{"after_ns", "tail", "limit"}` (all optional).
    async fn log_lines(&self, container: &str, request: &str) -> Result<String, DockerError> {
        let req: logs::LogLinesRequest = serde_json::from_str(request)
            .map_err(|e| DockerError::InvalidArgument(format!("the request: {e}")))?;
        let lines = logs::lines(&self.local.docker, container, &req).await?;
        Ok(serde_json::to_string(&lines).expect("serializes"))
    }

    /// The container as the shared model's JSON.
    async fn inspect(&self, container: &str) -> Result<String, DockerError> {
        let c = self.local.inspect(container).await?;
        Ok(serde_json::to_string(&c).expect("the model serializes"))
    }
}

/// Serves `org.uncloud.Docker1` on `conn` and claims the name.
pub async fn serve(conn: &Connection, iface: Docker1) -> zbus::Result<()> {
    conn.object_server().at(DOCKER_PATH, iface).await?;
    conn.request_name(DOCKER_NAME).await?;
    Ok(())
}

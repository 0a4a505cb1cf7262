//! Reaching a machine's dockerd-shim: this machine's over D-Bus, another's over the mesh
//! (`ContainerOps` on its mesh address, port 7948, which serves only other machines'
//! addresses). Either way the answer is an [`OpsError`] kind to branch on.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use uncloud_common::dbus::DockerProxy;
use uncloud_common::docker::{ErrorKind, OpsError};
use uncloud_common::model::Service;
use uncloud_common::rpc::{connect_container_ops, ContainerOpsClient, CONTAINER_OPS_PORT};

/// Longest a container create and start may take (the engine may be slow to start it).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(900);
/// Longest a removal may take (a stop's grace period included).
const REMOVE_TIMEOUT: Duration = Duration::from_secs(60);

/// One machine's shim.
pub enum Engine {
    Local(DockerProxy<'static>),
    Remote(ContainerOpsClient),
}

impl Engine {
    /// This machine's shim.
    pub async fn local(bus: &zbus::Connection) -> Result<Engine, OpsError> {
        DockerProxy::new(bus)
            .await
            .map(Engine::Local)
            .map_err(|e| OpsError::new(ErrorKind::Unreachable, format!("dockerd-shim: {e}")))
    }

    /// Another machine's shim, at its mesh address, introduced as machine `me`.
    pub async fn remote(ip: Ipv4Addr, network_id: &str, me: &str) -> Result<Engine, OpsError> {
        let addr = SocketAddr::from((ip, CONTAINER_OPS_PORT));
        connect_container_ops(addr, network_id, me)
            .await
            .map(Engine::Remote)
    }

    /// Creates and starts container `name`; returns its id.
    pub async fn run(&self, service: &Service, name: &str) -> Result<String, OpsError> {
        match self {
            Engine::Local(p) => {
                let json = serde_json::to_string(service).expect("services serialize");
                bounded(RUN_TIMEOUT, async {
                    p.run_service(&json, name).await.map_err(from_dbus)
                })
                .await
            }
            Engine::Remote(c) => {
                let ctx = uncloud_api::context(RUN_TIMEOUT);
                c.run_service(ctx, service.clone(), name.to_string())
                    .await
                    .map_err(rpc_error)?
            }
        }
    }

    /// Pulls `image` and returns when it is on the machine.
    pub async fn pull(&self, image: &str) -> Result<(), OpsError> {
        match self {
            Engine::Local(p) => {
                bounded(PULL_TIMEOUT, async {
                    p.pull_image(image).await.map_err(from_dbus)
                })
                .await
            }
            Engine::Remote(c) => {
                let stream = c
                    .pull_image(uncloud_api::context(Duration::from_secs(10)), image.into())
                    .await
                    .map_err(rpc_error)??;
                let started = std::time::Instant::now();
                // The progress is read and dropped: `uc run` shows a spinner, not layers.
                loop {
                    if started.elapsed() > PULL_TIMEOUT {
                        let _ = c
                            .stream_close(uncloud_api::context(Duration::from_secs(5)), stream)
                            .await;
                        return Err(OpsError::new(
                            ErrorKind::Engine,
                            format!("pulling {image} took longer than {PULL_TIMEOUT:?}"),
                        ));
                    }
                    let out = c
                        .stream_read(
                            uncloud_api::context(Duration::from_secs(10)),
                            stream,
                            uncloud_common::rpc::MAX_STREAM_WAIT_MS,
                        )
                        .await
                        .map_err(rpc_error)??;
                    if let Some(end) = out.end {
                        return end.error.map_or(Ok(()), Err);
                    }
                }
            }
        }
    }

    /// Removes a container (stopping it first); one that is gone already counts as removed.
    pub async fn remove(&self, container: &str) -> Result<(), OpsError> {
        let result = match self {
            Engine::Local(p) => {
                bounded(REMOVE_TIMEOUT, async {
                    p.remove(container).await.map_err(from_dbus)
                })
                .await
            }
            Engine::Remote(c) => c
                .remove(uncloud_api::context(REMOVE_TIMEOUT), container.into())
                .await
                .map_err(rpc_error)
                .and_then(|r| r),
        };
        match result {
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

async fn bounded<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, OpsError>>,
) -> Result<T, OpsError> {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| {
        Err(OpsError::new(
            ErrorKind::Unreachable,
            format!("dockerd-shim did not answer within {limit:?}"),
        ))
    })
}

/// The shim's D-Bus errors (`org.uncloud.Docker1.Error.<Kind>`) as kinds.
fn from_dbus(e: zbus::Error) -> OpsError {
    match e {
        zbus::Error::MethodError(name, msg, _)
            if name.as_str().starts_with("org.freedesktop.DBus.Error.") =>
        {
            // The bus's own errors: the shim is not running or did not answer.
            OpsError::new(
                ErrorKind::Unreachable,
                format!("dockerd-shim: {}", msg.unwrap_or_else(|| name.to_string())),
            )
        }
        zbus::Error::MethodError(name, msg, _) => {
            let msg = msg.unwrap_or_default();
            let kind = match name.as_str().rsplit('.').next().unwrap_or_default() {
                "InvalidArgument" => ErrorKind::InvalidArgument,
                "NotFound" => ErrorKind::NotFound,
                "NoImage" => ErrorKind::NoImage,
                "Conflict" => ErrorKind::Conflict,
                _ => ErrorKind::Engine,
            };
            OpsError::new(kind, msg)
        }
        e => OpsError::new(ErrorKind::Unreachable, format!("dockerd-shim: {e}")),
    }
}

fn rpc_error(e: tarpc::client::RpcError) -> OpsError {
    OpsError::new(ErrorKind::Unreachable, format!("the machine's shim: {e}"))
}

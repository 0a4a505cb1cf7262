//! Reaching a machine's dockerd-shim: this machine's over D-Bus, another's over the mesh
//! (`ContainerOps` on its mesh address, port 7948, which serves only other machines'
//! addresses). Either way the answer is an [`OpsError`] kind to branch on.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use uncloud_common::dbus::DockerProxy;
use uncloud_common::docker::LogsRequest;
use uncloud_common::docker::{ErrorKind, OpsError};
use uncloud_common::model::{Container, Service};
use uncloud_common::rpc::{connect_container_ops, ContainerOpsClient, CONTAINER_OPS_PORT};

/// Longest a container create and start may take (the engine may be slow to start it).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(900);
/// Longest a removal may take (a stop's grace period included).
const REMOVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest an inspect or a log tail may take.
const LOOK_TIMEOUT: Duration = Duration::from_secs(10);

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

impl Engine {
    /// Stops a container, giving it `grace` seconds (`-1`: the engine's default).
    pub async fn stop(&self, container: &str, grace: i32) -> Result<(), OpsError> {
        match self {
            Engine::Local(p) => {
                bounded(REMOVE_TIMEOUT, async {
                    p.stop(container, grace).await.map_err(from_dbus)
                })
                .await
            }
            Engine::Remote(c) => c
                .stop(
                    uncloud_api::context(REMOVE_TIMEOUT),
                    container.into(),
                    grace,
                )
                .await
                .map_err(rpc_error)
                .and_then(|r| r),
        }
    }

    pub async fn start(&self, container: &str) -> Result<(), OpsError> {
        match self {
            Engine::Local(p) => {
                bounded(RUN_TIMEOUT, async {
                    p.start(container).await.map_err(from_dbus)
                })
                .await
            }
            Engine::Remote(c) => c
                .start(uncloud_api::context(RUN_TIMEOUT), container.into())
                .await
                .map_err(rpc_error)
                .and_then(|r| r),
        }
    }

    pub async fn restart(&self, container: &str, grace: i32) -> Result<(), OpsError> {
        match self {
            Engine::Local(p) => {
                bounded(RUN_TIMEOUT, async {
                    p.restart(container, grace).await.map_err(from_dbus)
                })
                .await
            }
            Engine::Remote(c) => c
                .restart(uncloud_api::context(RUN_TIMEOUT), container.into(), grace)
                .await
                .map_err(rpc_error)
                .and_then(|r| r),
        }
    }

    /// The container as its engine sees it now.
    pub async fn inspect(&self, container: &str) -> Result<Container, OpsError> {
        match self {
            Engine::Local(p) => {
                let json = bounded(LOOK_TIMEOUT, async {
                    p.inspect(container).await.map_err(from_dbus)
                })
                .await?;
                serde_json::from_str(&json).map_err(|e| {
                    OpsError::new(ErrorKind::Engine, format!("dockerd-shim's inspect: {e}"))
                })
            }
            Engine::Remote(c) => c
                .inspect(uncloud_api::context(LOOK_TIMEOUT), container.into())
                .await
                .map_err(rpc_error)
                .and_then(|r| r),
        }
    }

    /// The last `lines` lines a container wrote (stdout and stderr together), for saying why
    /// it failed. Bounded in time and size.
    pub async fn tail(&self, container: &str, lines: u32) -> Result<Vec<String>, OpsError> {
        let bytes = match self {
            Engine::Local(p) => {
                // The shim writes into a pipe we pass it; both streams share it.
                let (mut read, write) = std::io::pipe().map_err(|e| {
                    OpsError::new(ErrorKind::Engine, format!("a pipe for the logs: {e}"))
                })?;
                let (out, err) = (zbus::Fd::from(&write), zbus::Fd::from(&write));
                bounded(LOOK_TIMEOUT, async {
                    p.inner()
                        .call_method("Logs", &(container, false, 0i32, lines as i32, out, err))
                        .await
                        .map(drop)
                        .map_err(from_dbus)
                })
                .await?;
                drop(write);
                let reader = tokio::task::spawn_blocking(move || {
                    use std::io::Read;
                    let mut out = Vec::new();
                    let _ = (&mut read).take(MAX_TAIL_BYTES).read_to_end(&mut out);
                    out
                });
                tokio::time::timeout(LOOK_TIMEOUT, reader)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default()
            }
            Engine::Remote(c) => {
                let request = LogsRequest {
                    follow: false,
                    since_secs: 0,
                    tail: Some(lines),
                };
                let stream = c
                    .logs(
                        uncloud_api::context(LOOK_TIMEOUT),
                        container.into(),
                        request,
                    )
                    .await
                    .map_err(rpc_error)??;
                let mut out = Vec::new();
                let started = std::time::Instant::now();
                while started.elapsed() < LOOK_TIMEOUT && (out.len() as u64) < MAX_TAIL_BYTES {
                    let got = c
                        .stream_read(uncloud_api::context(LOOK_TIMEOUT), stream, 2_000)
                        .await
                        .map_err(rpc_error)??;
                    for (_, chunk) in got.chunks {
                        out.extend_from_slice(&chunk);
                    }
                    if got.end.is_some() {
                        break;
                    }
                }
                let _ = c
                    .stream_close(uncloud_api::context(Duration::from_secs(5)), stream)
                    .await;
                out
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines as usize);
        Ok(all[from..].iter().map(|l| l.to_string()).collect())
    }
}

/// Most of a log tail read.
const MAX_TAIL_BYTES: u64 = 64 * 1024;

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

/// Longest one chunk of an image upload may take to reach a shim.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest an engine may take to load a whole image.
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// An image tarball on its way into one machine's engine, loaded only once it is whole:
/// another machine's shim aborts its load when the upload is dropped; this machine's reads a
/// pipe, which a dropped upload ends with a block no tar reader accepts.
pub enum ImageUpload {
    Remote {
        client: ContainerOpsClient,
        upload: u64,
    },
    Local(LocalPipe),
}

pub struct LocalPipe {
    /// `None` once the tarball is whole.
    writer: Option<tokio::net::unix::pipe::Sender>,
    load: tokio::task::JoinHandle<Result<Vec<String>, OpsError>>,
}

impl Drop for LocalPipe {
    fn drop(&mut self) {
        if let Some(writer) = &self.writer {
            if !self.load.is_finished() {
                // The upload ends before the tarball did: a block that is not a valid tar
                // header (its checksum is wrong), so the engine's load fails on it rather
                // than taking a tarball cut at an entry boundary as whole.
                let _ = writer.try_write(&[0xff; 512]);
            }
        }
    }
}

fn unreachable(what: impl std::fmt::Display) -> OpsError {
    OpsError::new(ErrorKind::Unreachable, what.to_string())
}

impl Engine {
    /// Starts loading an image tarball that [`ImageUpload::write`] passes in.
    pub async fn upload_image(self) -> Result<ImageUpload, OpsError> {
        match self {
            Engine::Remote(client) => {
                let upload = client
                    .load_image_begin(uncloud_api::context(CHUNK_TIMEOUT))
                    .await
                    .map_err(|e| unreachable(format!("its shim: {e}")))??;
                Ok(ImageUpload::Remote { client, upload })
            }
            Engine::Local(docker) => {
                let (reader, writer) =
                    std::io::pipe().map_err(|e| unreachable(format!("a pipe: {e}")))?;
                let writer = tokio::net::unix::pipe::Sender::from_owned_fd(writer.into())
                    .map_err(|e| unreachable(format!("a pipe: {e}")))?;
                let load = tokio::spawn(async move {
                    let fd = (zbus::Fd::from(&reader),);
                    let call = docker.inner().call::<_, _, Vec<String>>("LoadImage", &fd);
                    match tokio::time::timeout(LOAD_TIMEOUT, call).await {
                        Ok(Ok(loaded)) => Ok(loaded),
                        Ok(Err(e)) => Err(OpsError::new(
                            ErrorKind::Engine,
                            format!("dockerd-shim: {e}"),
                        )),
                        Err(_) => Err(unreachable(format!(
                            "the engine did not load it within {} s",
                            LOAD_TIMEOUT.as_secs()
                        ))),
                    }
                });
                Ok(ImageUpload::Local(LocalPipe {
                    writer: Some(writer),
                    load,
                }))
            }
        }
    }
}

impl ImageUpload {
    /// The next bytes of the tarball.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), OpsError> {
        match self {
            ImageUpload::Remote { client, upload } => client
                .load_image_chunk(uncloud_api::context(CHUNK_TIMEOUT), *upload, data.to_vec())
                .await
                .map_err(|e| unreachable(format!("its shim: {e}")))?,
            ImageUpload::Local(LocalPipe {
                writer: Some(writer),
                ..
            }) => match tokio::time::timeout(CHUNK_TIMEOUT, writer.write_all(data)).await {
                Ok(r) => r.map_err(|e| unreachable(format!("dockerd-shim stopped reading: {e}"))),
                Err(_) => Err(unreachable("dockerd-shim stopped reading")),
            },
            ImageUpload::Local(_) => Err(unreachable("the tarball has ended")),
        }
    }

    /// The tarball is whole: the engine loads it; returns the `name:tag`s it loaded.
    pub async fn finish(self) -> Result<Vec<String>, OpsError> {
        match self {
            ImageUpload::Remote { client, upload } => client
                .load_image_end(uncloud_api::context(LOAD_TIMEOUT), upload)
                .await
                .map_err(|e| unreachable(format!("its shim: {e}")))?,
            ImageUpload::Local(mut pipe) => {
                // The end of the pipe is the end of the tarball.
                drop(pipe.writer.take());
                (&mut pipe.load)
                    .await
                    .map_err(|e| unreachable(format!("the load: {e}")))?
            }
        }
    }
}

//! [`ContainerOps`] over tarpc on the mesh address: other machines act on this one.
//!
//! Who may call: WireGuard already authenticates and encrypts everything on the mesh, but
//! containers live on the mesh too, so a connection is accepted only from another *machine's*
//! address (`10.210.Y.1`, never this machine's own, never a container's `10.210.Y.Z`), and
//! must then say `hello` with this network's id. Containers cannot forge a machine address
//! that a TCP handshake would complete from: the kernel drops packets from a local address
//! arriving on the bridge, and replies to another machine's address go to that machine.
//!
//! Streams and uploads are tables ([`crate::streams`], [`crate::uploads`]) shared by all
//! connections, each entry owned by the machine that opened it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use tarpc::context;
use tarpc::server::{BaseChannel, Channel};
use tokio::net::TcpListener;
use uncloud_common::address::MeshCidr;
use uncloud_common::docker::{
    ErrorKind, ExecRequest, ImageInfo, LogsRequest, OpsError, StatsSummary, StreamEnd,
    StreamOutput, VolumeInfo,
};
use uncloud_common::model::{Container, Service};
use uncloud_common::rpc::{ContainerOps, CONTAINER_OPS_MAX_FRAME, MAX_STREAM_WAIT_MS};

use crate::engine::Local;
use crate::streams::Streams;
use crate::uploads::Uploads;
use crate::{containers, exec, images, logs, stats, volumes};

/// Streams open at once, over all callers (each buffers at most 1 MiB).
const MAX_STREAMS: usize = 64;
/// Image uploads at once, over all callers.
const MAX_UPLOADS: usize = 8;
/// Connections at once; more are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// Requests in flight per connection; more are answered with an error by tarpc.
const MAX_IN_FLIGHT: usize = 32;

/// Whether a connection from `peer` may be served: another machine's mesh address. Pure.
pub fn allowed_peer(peer: IpAddr, own: Ipv4Addr, mesh: &MeshCidr) -> Result<(), String> {
    mesh.machine_peer(peer, own).map(|_| ())
}

/// What every connection shares.
pub struct Remote {
    pub local: Local,
    /// This network's id; a caller must present the same.
    pub network_id: String,
    pub mesh: MeshCidr,
    /// This machine's mesh address.
    pub own_ip: Ipv4Addr,
    streams: Streams,
    uploads: Uploads,
}

impl Remote {
    pub fn new(local: Local, network_id: String, mesh: MeshCidr, own_ip: Ipv4Addr) -> Self {
        Remote {
            local,
            network_id,
            mesh,
            own_ip,
            streams: Streams::new(MAX_STREAMS),
            uploads: Uploads::new(MAX_UPLOADS),
        }
    }
}

/// Serves connections from `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, remote: Arc<Remote>) {
    let reaper = {
        let remote = remote.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let s = remote.streams.expire(crate::streams::IDLE);
                let u = remote.uploads.expire(crate::uploads::IDLE);
                if s + u > 0 {
                    tracing::info!(streams = s, uploads = u, "closed idle remote streams");
                }
            }
        }
    };
    let accept = async {
        // Owned here, so stopping `serve` stops every connection.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "container-ops accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Err(why) = allowed_peer(peer.ip(), remote.own_ip, &remote.mesh) {
                tracing::warn!(%peer, why, "refused a container-ops connection");
                continue; // dropping the stream closes it
            }
            if connections.len() >= MAX_CONNECTIONS {
                tracing::warn!(%peer, "too many container-ops connections; closing");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let conn = Conn {
                remote: remote.clone(),
                peer,
                caller: Arc::default(),
            };
            connections.spawn(async move {
                let transport =
                    uncloud_common::rpc::transport_capped(stream, CONTAINER_OPS_MAX_FRAME);
                BaseChannel::with_defaults(transport)
                    .max_concurrent_requests(MAX_IN_FLIGHT)
                    .execute(conn.serve())
                    .for_each(|response| async {
                        tokio::spawn(response);
                    })
                    .await;
                tracing::debug!(%peer, "container-ops connection closed");
            });
        }
    };
    tokio::join!(reaper, accept);
}

/// One connection: who is calling, once it said `hello`.
#[derive(Clone)]
struct Conn {
    remote: Arc<Remote>,
    peer: SocketAddr,
    caller: Arc<OnceLock<String>>,
}

impl Conn {
    fn caller(&self) -> Result<&str, OpsError> {
        self.caller
            .get()
            .map(String::as_str)
            .ok_or_else(|| OpsError::new(ErrorKind::Refused, "say hello first"))
    }

    /// Who owns the streams and uploads this connection opens: the peer's machine address,
    /// which the mesh authenticates (the id in `hello` is only what the caller says).
    fn owner(&self) -> Result<String, OpsError> {
        self.caller()?;
        Ok(self.peer.ip().to_string())
    }

    fn local(&self) -> Result<&Local, OpsError> {
        self.caller()?;
        Ok(&self.remote.local)
    }

    /// Opens a stream and runs `op` into it in a task; returns the stream id.
    fn spawn_stream<F, Fut>(
        &self,
        stdin: Option<tokio::io::DuplexStream>,
        exec_id: Option<String>,
        op: F,
    ) -> Result<u64, OpsError>
    where
        F: FnOnce(crate::streams::Producer) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (id, producer) = self.remote.streams.open(&self.owner()?, stdin, exec_id)?;
        let task = tokio::spawn(op(producer));
        self.remote.streams.attach(id, task.abort_handle());
        Ok(id)
    }
}

fn end(exit_code: Option<i64>, result: Result<(), OpsError>) -> StreamEnd {
    StreamEnd {
        exit_code,
        error: result.err(),
    }
}

impl ContainerOps for Conn {
    async fn hello(
        self,
        _: context::Context,
        network_id: String,
        from: String,
    ) -> Result<(), OpsError> {
        if network_id != self.remote.network_id {
            tracing::warn!(peer = %self.peer, "refused a machine of another network");
            return Err(OpsError::new(
                ErrorKind::Refused,
                format!(
                    "this machine belongs to network {:?}, not {:?}",
                    self.remote.network_id,
                    network_id.chars().take(64).collect::<String>()
                ),
            ));
        }
        uncloud_common::model::validate_id("caller", &from)
            .map_err(|e| OpsError::new(ErrorKind::InvalidArgument, e.to_string()))?;
        // A second hello (even a concurrent one) must name the same machine.
        let first = self.caller.get_or_init(|| from.clone());
        if *first != from {
            return Err(OpsError::new(
                ErrorKind::Refused,
                "a connection speaks for one machine",
            ));
        }
        Ok(())
    }

    async fn run_service(
        self,
        _: context::Context,
        service: Service,
        name: String,
    ) -> Result<String, OpsError> {
        self.local()?.run_service(&service, &name).await
    }

    async fn stop(self, _: context::Context, c: String, grace: i32) -> Result<(), OpsError> {
        Ok(containers::stop(&self.local()?.docker, &c, grace).await?)
    }

    async fn start(self, _: context::Context, c: String) -> Result<(), OpsError> {
        Ok(containers::start(&self.local()?.docker, &c).await?)
    }

    async fn restart(self, _: context::Context, c: String, grace: i32) -> Result<(), OpsError> {
        Ok(containers::restart(&self.local()?.docker, &c, grace).await?)
    }

    async fn remove(self, _: context::Context, c: String) -> Result<(), OpsError> {
        self.local()?.remove(&c).await
    }

    async fn inspect(self, _: context::Context, c: String) -> Result<Container, OpsError> {
        self.local()?.inspect(&c).await
    }

    async fn stats(self, _: context::Context, c: String) -> Result<StatsSummary, OpsError> {
        Ok(stats::stats(&self.local()?.docker, &c).await?)
    }

    async fn logs(
        self,
        _: context::Context,
        container: String,
        request: LogsRequest,
    ) -> Result<u64, OpsError> {
        // Fail now for a container that does not exist, rather than in the stream.
        let local = self.local()?.clone();
        local.inspect(&container).await?;
        self.spawn_stream(None, None, move |mut p| async move {
            let (out, err) = (&mut p.stdout, &mut p.stderr);
            let result = logs::copy(&local.docker, &container, &request, out, err).await;
            let result = result.map(drop).map_err(OpsError::from);
            p.finish(end(None, result)).await;
        })
    }

    async fn exec(
        self,
        _: context::Context,
        container: String,
        request: ExecRequest,
    ) -> Result<u64, OpsError> {
        let local = self.local()?.clone();
        // Refuse before the engine holds an exec nobody would start.
        self.remote.streams.has_room()?;
        let exec_id = exec::create(&local.docker, &container, &request).await?;
        let (input, command_side) = if request.stdin {
            let (a, b) = tokio::io::duplex(64 * 1024);
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        let id = exec_id.clone();
        self.spawn_stream(input, Some(exec_id), move |mut p| async move {
            let tty = request.tty;
            let result = exec::run(
                &local.docker,
                &container,
                &id,
                tty,
                command_side,
                &mut p.stdout,
                &mut p.stderr,
            )
            .await;
            let stream_end = match result {
                Ok(code) => end(Some(code), Ok(())),
                Err(e) => end(None, Err(e.into())),
            };
            p.finish(stream_end).await;
        })
    }

    async fn exec_resize(
        self,
        _: context::Context,
        stream: u64,
        height: u16,
        width: u16,
    ) -> Result<(), OpsError> {
        let exec_id = self.remote.streams.exec_id(&self.owner()?, stream)?;
        Ok(exec::resize(&self.remote.local.docker, &exec_id, height, width).await?)
    }

    async fn pull_image(self, _: context::Context, image: String) -> Result<u64, OpsError> {
        let local = self.local()?.clone();
        images::split_reference(&image)?;
        self.spawn_stream(None, None, move |mut p| async move {
            use tokio::io::AsyncWriteExt;
            // Progress is advisory: when the reader lags, steps are dropped, never queued
            // without bound.
            let (tx, mut rx) = tokio::sync::mpsc::channel(256);
            let pull = images::pull(&local.docker, &image, move |progress| {
                let _ = tx.try_send(progress);
            });
            let stdout = &mut p.stdout;
            let forward = async {
                while let Some(progress) = rx.recv().await {
                    let mut line = serde_json::to_vec(&progress).expect("serializes");
                    line.push(b'\n');
                    if stdout.write_all(&line).await.is_err() {
                        break;
                    }
                }
            };
            let (result, ()) = tokio::join!(pull, forward);
            p.finish(end(None, result.map_err(OpsError::from))).await;
        })
    }

    async fn stream_read(
        self,
        _: context::Context,
        stream: u64,
        wait_ms: u32,
    ) -> Result<StreamOutput, OpsError> {
        let wait = Duration::from_millis(wait_ms.min(MAX_STREAM_WAIT_MS).into());
        self.remote.streams.read(&self.owner()?, stream, wait).await
    }

    async fn stream_write(
        self,
        _: context::Context,
        stream: u64,
        data: Vec<u8>,
        close: bool,
    ) -> Result<(), OpsError> {
        self.remote
            .streams
            .write(&self.owner()?, stream, &data, close)
            .await
    }

    async fn stream_close(self, _: context::Context, stream: u64) -> Result<(), OpsError> {
        self.remote.streams.close(&self.owner()?, stream)
    }

    async fn load_image_begin(self, _: context::Context) -> Result<u64, OpsError> {
        let docker = self.local()?.docker.clone();
        self.remote
            .uploads
            .begin(&self.owner()?, move |pipe| async move {
                Ok(images::load(&docker, pipe).await?)
            })
    }

    async fn load_image_chunk(
        self,
        _: context::Context,
        upload: u64,
        data: Vec<u8>,
    ) -> Result<(), OpsError> {
        self.remote
            .uploads
            .chunk(&self.owner()?, upload, &data)
            .await
    }

    async fn load_image_end(
        self,
        _: context::Context,
        upload: u64,
    ) -> Result<Vec<String>, OpsError> {
        self.remote.uploads.end(&self.owner()?, upload).await
    }

    async fn list_images(self, _: context::Context) -> Result<Vec<ImageInfo>, OpsError> {
        Ok(images::list(&self.local()?.docker).await?)
    }

    async fn remove_image(self, _: context::Context, name: String) -> Result<(), OpsError> {
        Ok(images::remove(&self.local()?.docker, &name).await?)
    }

    async fn create_volume(
        self,
        _: context::Context,
        name: String,
    ) -> Result<VolumeInfo, OpsError> {
        Ok(volumes::create(&self.local()?.docker, &name).await?)
    }

    async fn list_volumes(self, _: context::Context) -> Result<Vec<VolumeInfo>, OpsError> {
        Ok(volumes::list(&self.local()?.docker).await?)
    }

    async fn inspect_volume(
        self,
        _: context::Context,
        name: String,
    ) -> Result<VolumeInfo, OpsError> {
        Ok(volumes::inspect(&self.local()?.docker, &name).await?)
    }

    async fn remove_volume(self, _: context::Context, name: String) -> Result<(), OpsError> {
        Ok(volumes::remove(&self.local()?.docker, &name).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_other_machines_may_connect() {
        let mesh = MeshCidr::default();
        let own: Ipv4Addr = "10.210.1.1".parse().unwrap();
        let ok = |s: &str| allowed_peer(s.parse().unwrap(), own, &mesh);
        ok("10.210.2.1").unwrap();
        ok("::ffff:10.210.9.1").unwrap();
        assert!(ok("10.210.1.1").unwrap_err().contains("this machine"));
        assert!(ok("10.210.2.7").unwrap_err().contains("container"));
        assert!(ok("10.210.1.2").unwrap_err().contains("container"));
        assert!(ok("192.168.1.1").unwrap_err().contains("outside"));
        assert!(ok("127.0.0.1").is_err());
        assert!(ok("10.210.0.1").is_err(), "index 0 is no machine");
        assert!(ok("fd00::1").is_err());
    }
}

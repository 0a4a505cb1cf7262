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

/// Input for a running exec ([`Engine::exec`]).
#[derive(Debug)]
pub enum ExecInput {
    Data(Vec<u8>),
    /// The command's stdin ends.
    Close,
    /// The terminal's new size (rows, columns).
    Resize(u16, u16),
}

/// What a running exec produces, in order; [`ExecEvent::End`] last.
#[derive(Debug)]
pub enum ExecEvent {
    Output {
        stderr: bool,
        data: Vec<u8>,
    },
    /// The exit code, or why the engine could not tell it.
    End(Result<i64, String>),
}

/// A running exec: input goes in, output comes out. Dropping it ends the session: a remote
/// shim closes its stream, this machine's shim sees its pipes close.
pub struct ExecIo {
    pub input: tokio::sync::mpsc::Sender<ExecInput>,
    pub output: tokio::sync::mpsc::Receiver<ExecEvent>,
}

/// Bytes one read of an exec's output takes at most.
const EXEC_CHUNK: usize = 32 * 1024;

impl Engine {
    /// Starts `req` in `container`, with the terminal `size` (rows, columns; 0 leaves it).
    pub async fn exec(
        self,
        container: &str,
        req: &uncloud_common::docker::ExecRequest,
        size: (u16, u16),
    ) -> Result<ExecIo, OpsError> {
        use tokio::sync::mpsc;
        let (in_tx, in_rx) = mpsc::channel::<ExecInput>(16);
        let (out_tx, out_rx) = mpsc::channel::<ExecEvent>(64);
        match self {
            Engine::Remote(c) => {
                let stream = c
                    .exec(
                        uncloud_api::context(LOOK_TIMEOUT),
                        container.to_string(),
                        req.clone(),
                    )
                    .await
                    .map_err(rpc_error)??;
                if req.tty && size.0 > 0 && size.1 > 0 {
                    let _ = c
                        .exec_resize(uncloud_api::context(LOOK_TIMEOUT), stream, size.0, size.1)
                        .await;
                }
                tokio::spawn(remote_exec_output(c.clone(), stream, out_tx));
                tokio::spawn(remote_exec_input(c, stream, in_rx));
            }
            Engine::Local(p) => {
                let pipe = || {
                    std::io::pipe().map_err(|e| {
                        OpsError::new(ErrorKind::Engine, format!("a pipe for the exec: {e}"))
                    })
                };
                let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?, pipe()?);
                let json = serde_json::to_string(req).expect("requests serialize");
                let fds = (
                    zbus::Fd::from(&in_r),
                    zbus::Fd::from(&out_w),
                    zbus::Fd::from(&err_w),
                );
                let id: String = bounded(LOOK_TIMEOUT, async {
                    p.inner()
                        .call_method(
                            "StartExec",
                            &(container, json.as_str(), fds.0, fds.1, fds.2),
                        )
                        .await
                        .map_err(from_dbus)?
                        .body()
                        .deserialize()
                        .map_err(|e| OpsError::new(ErrorKind::Engine, format!("dockerd-shim: {e}")))
                })
                .await?;
                // The shim holds its own copies now; ours would keep the pipes open.
                drop((in_r, out_w, err_w));
                if req.tty && size.0 > 0 && size.1 > 0 {
                    let _ = p.resize_exec(&id, size.0, size.1).await;
                }
                let receiver = |r: std::io::PipeReader| {
                    tokio::net::unix::pipe::Receiver::from_owned_fd(r.into()).map_err(|e| {
                        OpsError::new(ErrorKind::Engine, format!("the exec's output: {e}"))
                    })
                };
                let (out, err) = (receiver(out_r)?, receiver(err_r)?);
                let input =
                    tokio::net::unix::pipe::Sender::from_owned_fd(in_w.into()).map_err(|e| {
                        OpsError::new(ErrorKind::Engine, format!("the exec's input: {e}"))
                    })?;
                tokio::spawn(local_exec_output(p.clone(), id.clone(), out, err, out_tx));
                tokio::spawn(local_exec_input(p, id, input, req.stdin, in_rx));
            }
        }
        Ok(ExecIo {
            input: in_tx,
            output: out_rx,
        })
    }
}

/// Another machine's exec output, read until it ends or nobody reads it any more.
async fn remote_exec_output(
    c: ContainerOpsClient,
    stream: u64,
    out: tokio::sync::mpsc::Sender<ExecEvent>,
) {
    loop {
        let read = tokio::select! {
            _ = out.closed() => break,
            r = c.stream_read(uncloud_api::context(Duration::from_secs(8)), stream, 2_000) => r,
        };
        let got = match read.map_err(rpc_error).and_then(|r| r) {
            Ok(got) => got,
            Err(e) => {
                let _ = out.send(ExecEvent::End(Err(e.message))).await;
                break;
            }
        };
        for (kind, data) in got.chunks {
            let stderr = kind == uncloud_common::docker::StreamKind::Stderr;
            if out.send(ExecEvent::Output { stderr, data }).await.is_err() {
                break;
            }
        }
        if let Some(end) = got.end {
            let end = match (end.exit_code, end.error) {
                (Some(code), _) => Ok(code),
                (None, Some(e)) => Err(e.message),
                (None, None) => Err("the engine did not say how the command ended".into()),
            };
            let _ = out.send(ExecEvent::End(end)).await;
            break;
        }
    }
    let _ = c
        .stream_close(uncloud_api::context(Duration::from_secs(5)), stream)
        .await;
}

/// Input for another machine's exec, until the session ends.
async fn remote_exec_input(
    c: ContainerOpsClient,
    stream: u64,
    mut input: tokio::sync::mpsc::Receiver<ExecInput>,
) {
    while let Some(i) = input.recv().await {
        let ctx = uncloud_api::context(Duration::from_secs(10));
        let result = match i {
            ExecInput::Data(data) => c.stream_write(ctx, stream, data, false).await,
            ExecInput::Close => c.stream_write(ctx, stream, Vec::new(), true).await,
            ExecInput::Resize(h, w) => c.exec_resize(ctx, stream, h, w).await,
        };
        if let Err(e) = result.map_err(rpc_error).and_then(|r| r) {
            tracing::debug!(stream, error = %e.message, "exec input not taken");
        }
    }
}

/// This machine's exec output, from the pipes the shim writes, then its exit code.
async fn local_exec_output(
    p: DockerProxy<'static>,
    id: String,
    mut stdout: tokio::net::unix::pipe::Receiver,
    mut stderr: tokio::net::unix::pipe::Receiver,
    out: tokio::sync::mpsc::Sender<ExecEvent>,
) {
    use tokio::io::AsyncReadExt;
    let (mut out_open, mut err_open) = (true, true);
    let (mut a, mut b) = (vec![0u8; EXEC_CHUNK], vec![0u8; EXEC_CHUNK]);
    while out_open || err_open {
        let (stderr_side, n) = tokio::select! {
            _ = out.closed() => return,
            n = stdout.read(&mut a), if out_open => (false, n),
            n = stderr.read(&mut b), if err_open => (true, n),
        };
        match n {
            Ok(0) | Err(_) if stderr_side => err_open = false,
            Ok(0) | Err(_) => out_open = false,
            Ok(n) => {
                let data = if stderr_side { &b[..n] } else { &a[..n] };
                let event = ExecEvent::Output {
                    stderr: stderr_side,
                    data: data.to_vec(),
                };
                if out.send(event).await.is_err() {
                    return;
                }
            }
        }
    }
    // The output ends when the command does; the engine may take a moment to record its code.
    let mut end = Err("the engine did not say how the command ended".to_string());
    for _ in 0..50 {
        match p.exec_exit_code(&id).await {
            Ok(-1) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(code) => {
                end = Ok(code);
                break;
            }
            Err(e) => {
                end = Err(from_dbus(e).message);
                break;
            }
        }
    }
    let _ = out.send(ExecEvent::End(end)).await;
}

/// Input for this machine's exec, written to the pipe the shim reads.
async fn local_exec_input(
    p: DockerProxy<'static>,
    id: String,
    pipe: tokio::net::unix::pipe::Sender,
    stdin: bool,
    mut input: tokio::sync::mpsc::Receiver<ExecInput>,
) {
    use tokio::io::AsyncWriteExt;
    // Without stdin the command sees end of file at once.
    let mut pipe = stdin.then_some(pipe);
    while let Some(i) = input.recv().await {
        match i {
            ExecInput::Data(data) => {
                if let Some(w) = pipe.as_mut() {
                    if w.write_all(&data).await.is_err() {
                        pipe = None;
                    }
                }
            }
            ExecInput::Close => pipe = None,
            ExecInput::Resize(h, w) => {
                let _ = p.resize_exec(&id, h, w).await;
            }
        }
    }
}

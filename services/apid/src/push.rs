//! `uc image push`: an image tarball through this machine to machines' engines.
//!
//! `push_begin` asks each target's dockerd-shim to take an upload
//! ([`crate::engines::ImageUpload`]: another machine's over the mesh, this machine's over
//! D-Bus, either loading nothing unless the tarball is whole) and starts a writer task per
//! target. Each `push_chunk` is queued for every target still taking it (a few chunks deep,
//! [`QUEUED_CHUNKS`]), so the client sends the next chunk while the machines take earlier
//! ones; a full queue makes `push_chunk` wait (the slowest machine sets the pace). A target
//! that fails is dropped from the upload (it loads nothing) and the others go on. `push_end` closes the uploads: each engine loads the whole tarball, or nothing.
//! An upload nobody writes for [`IDLE`] is dropped, as the shims drop theirs, so a `uc` that
//! was interrupted leaves nothing half-loaded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::future::join_all;
use uncloud_api::image::{
    MachinePush, PushBegin, PushChunk, PushProgress, PushRef, PushStarted, PUSH_CHUNK_BYTES,
};
use uncloud_api::service::MachineFailure;
use uncloud_api::wire::{ApiError, ErrorKind};
use uncloud_common::model::Machine;
use uncloud_pki::Role;

use crate::api::{Apid, Caller};
use crate::engines::ImageUpload;

/// An upload without a chunk for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(60);
/// Uploads through one machine at once.
const MAX_UPLOADS: usize = 8;
/// Chunks queued for a machine beyond the one it is taking.
pub const QUEUED_CHUNKS: usize = 4;

/// What a writer task hands back: the upload, to finish, or why the machine stopped.
type Written = Result<ImageUpload, String>;

struct Target {
    machine: String,
    /// Chunks for the writer task; `None` once the machine failed or the tarball ended.
    queue: Option<tokio::sync::mpsc::Sender<Arc<Vec<u8>>>>,
    writer: Option<tokio::task::JoinHandle<Written>>,
    /// Bytes the machine has taken.
    taken: Arc<AtomicU64>,
    loaded: Vec<String>,
    error: String,
}

/// Writes the queued chunks to one machine, in order, until the queue closes.
async fn write_chunks(
    mut sink: ImageUpload,
    mut queue: tokio::sync::mpsc::Receiver<Arc<Vec<u8>>>,
    taken: Arc<AtomicU64>,
) -> Written {
    while let Some(chunk) = queue.recv().await {
        sink.write(&chunk).await.map_err(|e| e.message)?;
        taken.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    Ok(sink)
}

struct Upload {
    image: String,
    offset: u64,
    touched: Instant,
    targets: Vec<Target>,
}

type Uploads = Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Upload>>>>;

fn uploads() -> &'static Uploads {
    static UPLOADS: OnceLock<Uploads> = OnceLock::new();
    UPLOADS.get_or_init(Default::default)
}

/// Drops the uploads nobody wrote for [`IDLE`]: their shims, left without chunks, drop theirs
/// and load nothing. apid runs it every few seconds.
pub fn sweep() {
    let mut map = uploads().lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|id, u| match u.try_lock() {
        Ok(u) if u.touched.elapsed() > IDLE => {
            tracing::info!(upload = id, image = %u.image, "image upload abandoned: dropped");
            false
        }
        _ => true,
    });
}

fn find(upload: u64) -> Result<Arc<tokio::sync::Mutex<Upload>>, ApiError> {
    uploads()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&upload)
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "no image upload {upload} here (it ended, or nothing came for {} s): push \
                     again",
                    IDLE.as_secs()
                ),
            )
        })
}

impl Target {
    fn new(machine: String, sink: ImageUpload) -> Target {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUED_CHUNKS);
        let taken = Arc::new(AtomicU64::new(0));
        Target {
            machine,
            queue: Some(tx),
            writer: Some(tokio::spawn(write_chunks(sink, rx, taken.clone()))),
            taken,
            loaded: Vec::new(),
            error: String::new(),
        }
    }

    /// Queues a chunk; a machine whose writer stopped is marked failed with its reason.
    async fn send(&mut self, chunk: &Arc<Vec<u8>>) {
        let Some(queue) = &self.queue else { return };
        let sent = queue.send(chunk.clone()).await.is_ok();
        if !sent || self.writer.as_ref().is_some_and(|w| w.is_finished()) {
            if let Err(why) = self.close().await {
                self.fail(why);
            }
        }
    }

    /// Closes the queue and waits until the writer has written everything queued.
    async fn close(&mut self) -> Written {
        self.queue = None;
        match self.writer.take() {
            Some(w) => w
                .await
                .unwrap_or_else(|e| Err(format!("the writer stopped: {e}"))),
            None => Err(std::mem::take(&mut self.error)),
        }
    }

    fn row(&self) -> MachinePush {
        MachinePush {
            machine: self.machine.clone(),
            bytes: self.taken.load(Ordering::Relaxed),
            loaded: self.loaded.clone(),
            error: self.error.clone(),
        }
    }

    fn fail(&mut self, why: String) {
        tracing::warn!(machine = %self.machine, error = %why, "image upload to a machine failed");
        self.error = why;
        self.queue = None;
        if let Some(w) = self.writer.take() {
            w.abort();
        }
    }
}

fn progress(u: &Upload) -> PushProgress {
    PushProgress {
        machines: u.targets.iter().map(Target::row).collect(),
    }
}

impl Apid {
    pub async fn push_begin(
        &self,
        caller: &Caller,
        req: PushBegin,
    ) -> Result<PushStarted, ApiError> {
        let member = self.require(caller, Role::Admin)?;
        sweep();
        if uploads().lock().unwrap_or_else(|p| p.into_inner()).len() >= MAX_UPLOADS {
            return Err(ApiError::new(
                ErrorKind::Unreachable,
                format!("{MAX_UPLOADS} image uploads are under way through this machine: try again later"),
            ));
        }
        let machines = self.read_machines().await?;
        let cidr = self.mesh_cidr().await?;
        let asked = if req.machines.is_empty() {
            vec!["all".to_string()]
        } else {
            req.machines.clone()
        };
        let mut started = PushStarted::default();
        let mut wanted: Vec<Machine> = Vec::new();
        for r in crate::fanout::resolve(&machines, &asked) {
            match r {
                Ok(m) => wanted.push(m),
                Err(name) => started.failed.push(MachineFailure {
                    machine: name.clone(),
                    error: format!("no machine named {name:?} (see `uc machine ls`)"),
                }),
            }
        }
        let sinks = join_all(wanted.iter().map(|m| {
            let member = &member;
            let cidr = &cidr;
            async move {
                let sink = match self.engine(member, cidr, m).await {
                    Ok(engine) => engine.upload_image().await,
                    Err(e) => Err(e),
                };
                (m, sink.map_err(|e| e.message))
            }
        }))
        .await;
        let mut targets = Vec::new();
        for (m, sink) in sinks {
            match sink {
                Ok(sink) => {
                    started.machines.push(m.name.clone());
                    targets.push(Target::new(m.name.clone(), sink));
                }
                Err(why) => started.failed.push(MachineFailure {
                    machine: m.name.clone(),
                    error: why,
                }),
            }
        }
        if targets.is_empty() {
            return Err(ApiError::new(
                ErrorKind::Unreachable,
                format!(
                    "no machine can take {}: {}",
                    req.image,
                    started
                        .failed
                        .iter()
                        .map(|f| format!("{}: {}", f.machine, f.error))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ));
        }
        started.upload = rand::random::<u64>() >> 1;
        tracing::info!(upload = started.upload, image = %req.image, machines = targets.len(), size = req.size, "image upload");
        uploads().lock().unwrap_or_else(|p| p.into_inner()).insert(
            started.upload,
            Arc::new(tokio::sync::Mutex::new(Upload {
                image: req.image,
                offset: 0,
                touched: Instant::now(),
                targets,
            })),
        );
        Ok(started)
    }

    pub async fn push_chunk(
        &self,
        caller: &Caller,
        req: PushChunk,
    ) -> Result<PushProgress, ApiError> {
        self.require(caller, Role::Admin)?;
        let invalid = |m: String| ApiError::new(ErrorKind::Invalid, m);
        let data = base64::engine::general_purpose::STANDARD
            .decode(req.data.as_bytes())
            .map_err(|e| invalid(format!("the chunk is not base64: {e}")))?;
        if data.len() > PUSH_CHUNK_BYTES {
            return Err(invalid(format!(
                "a chunk of {} bytes; at most {PUSH_CHUNK_BYTES}",
                data.len()
            )));
        }
        let upload = find(req.upload)?;
        let mut u = upload.lock().await;
        if req.offset != u.offset {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "the chunk starts at byte {} but the upload is at {}: push again",
                    req.offset, u.offset
                ),
            ));
        }
        let len = data.len() as u64;
        let chunk = Arc::new(data);
        join_all(u.targets.iter_mut().map(|t| t.send(&chunk))).await;
        u.offset += len;
        u.touched = Instant::now();
        if u.targets.iter().all(|t| t.queue.is_none()) {
            let p = progress(&u);
            drop(u);
            uploads()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&req.upload);
            return Err(ApiError::new(
                ErrorKind::Internal,
                format!(
                    "no machine takes the image any more: {}",
                    p.machines
                        .iter()
                        .map(|m| format!("{}: {}", m.machine, m.error))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ));
        }
        Ok(progress(&u))
    }

    pub async fn push_end(&self, caller: &Caller, req: PushRef) -> Result<PushProgress, ApiError> {
        self.require(caller, Role::Admin)?;
        let upload = find(req.upload)?;
        uploads()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req.upload);
        let mut u = upload.lock().await;
        join_all(u.targets.iter_mut().map(|t| async move {
            if t.queue.is_none() {
                return; // failed before
            }
            let result = match t.close().await {
                Ok(sink) => sink.finish().await.map_err(|e| e.message),
                Err(why) => Err(why),
            };
            match result {
                Ok(loaded) => t.loaded = loaded,
                Err(why) => t.fail(why),
            }
        }))
        .await;
        tracing::info!(upload = req.upload, image = %u.image, bytes = u.offset, "image upload ended");
        Ok(progress(&u))
    }

    pub async fn push_abort(&self, caller: &Caller, req: PushRef) -> Result<(), ApiError> {
        self.require(caller, Role::Admin)?;
        let removed = uploads()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req.upload);
        if let Some(u) = removed {
            let mut u = u.lock().await;
            // A pipe closed short fails this machine's load; other machines' shims drop
            // their uploads when nothing more comes.
            for t in &mut u.targets {
                t.queue = None;
                if let Some(w) = t.writer.take() {
                    w.abort();
                }
            }
            tracing::info!(upload = req.upload, image = %u.image, "image upload aborted");
        }
        Ok(())
    }
}

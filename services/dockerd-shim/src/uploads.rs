//! Image tarballs arriving from another machine in chunks, each streamed into the engine as it
//! comes (so a big image never sits in memory whole).
//!
//! `begin` starts a load task reading from a pipe; each chunk is written into the pipe (a chunk
//! waits while the engine is behind); `end` closes the pipe and returns what the engine loaded.
//! If the engine gives up early (a malformed tarball), the next chunk or the end returns its
//! error. An upload idle for [`IDLE`] is dropped, which aborts the load: the engine loads
//! nothing from a truncated tarball.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use uncloud_common::docker::{ErrorKind, OpsError};
use uncloud_common::rpc::MAX_UPLOAD_CHUNK;

/// An upload without a chunk for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(60);
/// Bytes buffered between the RPC and the engine.
const PIPE: usize = 1024 * 1024;

type Load = JoinHandle<Result<Vec<String>, OpsError>>;

struct Upload {
    owner: String,
    /// A chunk was cut off halfway (its call was cancelled): the tarball is corrupt.
    broken: bool,
    pipe: Option<DuplexStream>,
    task: Option<Load>,
    used: Instant,
}

/// The table of uploads in progress.
pub struct Uploads {
    entries: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Upload>>>>,
    max: usize,
}

fn not_found(id: u64) -> OpsError {
    OpsError::new(ErrorKind::NotFound, format!("no upload {id}"))
}

impl Uploads {
    pub fn new(max: usize) -> Self {
        Uploads {
            entries: Mutex::default(),
            max,
        }
    }

    /// Starts an upload for `owner`; `load` consumes the tarball from the pipe it is given.
    pub fn begin<F, Fut>(&self, owner: &str, load: F) -> Result<u64, OpsError>
    where
        F: FnOnce(DuplexStream) -> Fut,
        Fut: Future<Output = Result<Vec<String>, OpsError>> + Send + 'static,
    {
        let mut entries = self.entries.lock().expect("not poisoned");
        if entries.len() >= self.max {
            return Err(OpsError::new(
                ErrorKind::Busy,
                format!(
                    "{} image uploads in progress; try again later",
                    entries.len()
                ),
            ));
        }
        let id = loop {
            let id = rand::random::<u64>();
            if id != 0 && !entries.contains_key(&id) {
                break id;
            }
        };
        let (pipe, engine_side) = tokio::io::duplex(PIPE);
        let task = tokio::spawn(load(engine_side));
        entries.insert(
            id,
            Arc::new(tokio::sync::Mutex::new(Upload {
                owner: owner.to_string(),
                broken: false,
                pipe: Some(pipe),
                task: Some(task),
                used: Instant::now(),
            })),
        );
        Ok(id)
    }

    /// Finds an upload; its owner is checked under the upload's own lock.
    fn get(&self, id: u64) -> Result<Arc<tokio::sync::Mutex<Upload>>, OpsError> {
        self.entries
            .lock()
            .expect("not poisoned")
            .get(&id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// The load's outcome once its task has ended; drops the upload.
    async fn outcome(&self, id: u64, u: &mut Upload) -> OpsError {
        self.entries.lock().expect("not poisoned").remove(&id);
        u.pipe = None;
        match u.task.take() {
            Some(t) => match t.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => OpsError::new(ErrorKind::InvalidArgument, "the image ended early"),
                Err(e) => OpsError::new(ErrorKind::Engine, format!("the load failed: {e}")),
            },
            None => not_found(id),
        }
    }

    /// Appends a chunk, in order.
    pub async fn chunk(&self, owner: &str, id: u64, data: &[u8]) -> Result<(), OpsError> {
        if data.len() > MAX_UPLOAD_CHUNK {
            return Err(OpsError::new(
                ErrorKind::InvalidArgument,
                format!("chunk of {} bytes; at most {MAX_UPLOAD_CHUNK}", data.len()),
            ));
        }
        let upload = self.get(id)?;
        // Chunks come in order, one at a time; a concurrent one is refused rather than queued
        // with its data.
        let mut u = upload.try_lock().map_err(|_| {
            OpsError::new(
                ErrorKind::Busy,
                "another chunk of this upload is in progress",
            )
        })?;
        if u.owner != owner {
            return Err(not_found(id));
        }
        if u.broken {
            return Err(OpsError::new(
                ErrorKind::Conflict,
                "an earlier chunk was cut off; start the upload again",
            ));
        }
        u.used = Instant::now();
        u.broken = true; // until this chunk is wholly written
        let Some(pipe) = u.pipe.as_mut() else {
            return Err(not_found(id));
        };
        if pipe.write_all(data).await.is_err() {
            // The engine stopped reading: it has given up on the tarball.
            return Err(self.outcome(id, &mut u).await);
        }
        u.broken = false;
        Ok(())
    }

    /// Ends the tarball and waits for the engine; returns what it loaded.
    pub async fn end(&self, owner: &str, id: u64) -> Result<Vec<String>, OpsError> {
        let upload = self.get(id)?;
        let mut u = upload.lock().await;
        if u.owner != owner {
            return Err(not_found(id));
        }
        if u.broken {
            // Cutting the request short makes the engine load nothing.
            self.entries.lock().expect("not poisoned").remove(&id);
            u.pipe = None;
            if let Some(t) = u.task.take() {
                t.abort();
            }
            return Err(OpsError::new(
                ErrorKind::Conflict,
                "a chunk was cut off; nothing was loaded",
            ));
        }
        self.entries.lock().expect("not poisoned").remove(&id);
        if let Some(mut pipe) = u.pipe.take() {
            let _ = pipe.shutdown().await;
        }
        match u.task.take() {
            Some(t) => t
                .await
                .map_err(|e| OpsError::new(ErrorKind::Engine, format!("the load failed: {e}")))?,
            None => Err(not_found(id)),
        }
    }

    /// Drops uploads without a chunk for `idle`, aborting their loads; returns how many.
    pub fn expire(&self, idle: Duration) -> usize {
        let mut entries = self.entries.lock().expect("not poisoned");
        let before = entries.len();
        entries.retain(|_, u| match u.try_lock() {
            // Busy right now: certainly not idle.
            Err(_) => true,
            Ok(mut u) => {
                let keep = u.used.elapsed() < idle;
                if !keep {
                    u.pipe = None;
                    if let Some(t) = u.task.take() {
                        t.abort();
                    }
                }
                keep
            }
        });
        before - entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    async fn count(mut r: DuplexStream) -> Result<Vec<String>, OpsError> {
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        Ok(vec![format!("{} bytes", all.len())])
    }

    #[tokio::test]
    async fn chunks_arrive_in_order_and_end_returns_the_outcome() {
        let u = Uploads::new(2);
        let id = u.begin("a", count).unwrap();
        for _ in 0..5 {
            u.chunk("a", id, &[7u8; 300_000]).await.unwrap();
        }
        assert_eq!(u.end("a", id).await.unwrap(), ["1500000 bytes"]);
        assert!(u.is_empty());
        assert_eq!(u.end("a", id).await.unwrap_err().kind, ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn an_engine_that_gives_up_is_reported_on_the_next_chunk() {
        let u = Uploads::new(2);
        let id = u
            .begin("a", |_r| async {
                Err(OpsError::new(ErrorKind::InvalidArgument, "not a tarball"))
            })
            .unwrap();
        let mut err = None;
        // The pipe buffers a little first; the engine's refusal shows within a few chunks.
        for _ in 0..8 {
            if let Err(e) = u.chunk("a", id, &[0u8; 512 * 1024]).await {
                err = Some(e);
                break;
            }
        }
        let e = err.expect("the failure surfaces");
        assert_eq!(e.message, "not a tarball");
        assert!(u.is_empty());
    }

    #[tokio::test]
    async fn a_chunk_cut_off_halfway_breaks_the_upload() {
        let u = Uploads::new(2);
        // An engine that never reads: the pipe fills and the chunk's write waits.
        let id = u
            .begin("a", |r| async move {
                let _keep = r;
                std::future::pending::<()>().await;
                Ok(vec![])
            })
            .unwrap();
        let big = vec![0u8; PIPE + 1024];
        let cut = tokio::time::timeout(Duration::from_millis(50), u.chunk("a", id, &big)).await;
        assert!(cut.is_err(), "the write waits for the engine");
        let e = u.chunk("a", id, b"more").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
        let e = u.end("a", id).await;
        assert!(e.is_err());
    }

    #[tokio::test]
    async fn limits_owners_and_idle_uploads() {
        let u = Uploads::new(1);
        let id = u.begin("a", count).unwrap();
        assert_eq!(u.begin("a", count).unwrap_err().kind, ErrorKind::Busy);
        assert_eq!(
            u.chunk("b", id, b"x").await.unwrap_err().kind,
            ErrorKind::NotFound
        );
        let big = vec![0u8; MAX_UPLOAD_CHUNK + 1];
        assert_eq!(
            u.chunk("a", id, &big).await.unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        assert_eq!(u.expire(Duration::from_secs(3600)), 0);
        assert_eq!(u.expire(Duration::ZERO), 1);
        assert!(u.chunk("a", id, b"x").await.is_err());
    }
}

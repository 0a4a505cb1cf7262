//! Output streams that outlive one RPC call: logs, exec and pull progress for another machine.
//!
//! tarpc answers each request once, so a stream is a table entry: the operation runs in a task
//! and writes into a bounded channel through [`ChunkWriter`]s (one per output stream, so the
//! order of stdout and stderr is kept); the caller drains it with repeated reads. A slow
//! reader slows the operation down (the channel is bounded), never grows memory. An exec also
//! keeps the writing end of its stdin here.
//!
//! A stream is owned by the machine that opened it; others get `NotFound`, as for an id that
//! does not exist. One nobody has read for [`IDLE`] is closed, which aborts its task.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::PollSender;
use uncloud_common::docker::{ErrorKind, OpsError, StreamEnd, StreamKind, StreamOutput};

/// A stream not read for this long is closed.
pub const IDLE: Duration = Duration::from_secs(60);
/// Chunks buffered per stream before the producer waits for the reader (at most 1 MiB).
const QUEUE: usize = 16;
/// Largest chunk one write produces.
const MAX_CHUNK: usize = 64 * 1024;
/// A read returns at most about this much.
const MAX_READ_BYTES: usize = 1024 * 1024;
/// Largest stdin write accepted in one call.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;

/// What a producer sends.
#[derive(Debug)]
pub enum Event {
    Chunk(StreamKind, Vec<u8>),
    End(StreamEnd),
}

/// An `AsyncWrite` whose bytes become [`Event::Chunk`]s of one kind.
pub struct ChunkWriter {
    kind: StreamKind,
    tx: PollSender<Event>,
}

impl AsyncWrite for ChunkWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let closed = || io::Error::from(io::ErrorKind::BrokenPipe);
        match self.tx.poll_reserve(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Err(closed())),
            Poll::Ready(Ok(())) => {}
        }
        let n = buf.len().min(MAX_CHUNK);
        let kind = self.kind;
        self.tx
            .send_item(Event::Chunk(kind, buf[..n].to_vec()))
            .map_err(|_| closed())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The producing side handed to an operation's task.
pub struct Producer {
    pub stdout: ChunkWriter,
    pub stderr: ChunkWriter,
    end: mpsc::Sender<Event>,
}

impl Producer {
    /// Reports how the operation ended, after all its output.
    pub async fn finish(self, end: StreamEnd) {
        let Producer {
            stdout,
            stderr,
            end: tx,
        } = self;
        drop((stdout, stderr));
        let _ = tx.send(Event::End(end)).await;
    }
}

struct Entry {
    owner: String,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Event>>>,
    stdin: Option<Arc<tokio::sync::Mutex<Option<DuplexStream>>>>,
    exec_id: Option<String>,
    used: Instant,
    task: Option<AbortHandle>,
}

/// The table of open streams.
pub struct Streams {
    entries: Mutex<HashMap<u64, Entry>>,
    max: usize,
}

fn not_found(id: u64) -> OpsError {
    OpsError::new(ErrorKind::NotFound, format!("no stream {id}"))
}

impl Streams {
    pub fn new(max: usize) -> Self {
        Streams {
            entries: Mutex::default(),
            max,
        }
    }

    /// Opens a stream for `owner`; returns its id and the producer. `stdin` keeps the writing
    /// end of an exec's input, `exec_id` lets the owner resize its terminal.
    pub fn open(
        &self,
        owner: &str,
        stdin: Option<DuplexStream>,
        exec_id: Option<String>,
    ) -> Result<(u64, Producer), OpsError> {
        self.has_room()?;
        let mut entries = self.entries.lock().expect("not poisoned");
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = loop {
            let id = rand::random::<u64>();
            if id != 0 && !entries.contains_key(&id) {
                break id;
            }
        };
        entries.insert(
            id,
            Entry {
                owner: owner.to_string(),
                rx: Arc::new(tokio::sync::Mutex::new(rx)),
                stdin: stdin.map(|s| Arc::new(tokio::sync::Mutex::new(Some(s)))),
                exec_id,
                used: Instant::now(),
                task: None,
            },
        );
        let writer = |kind| ChunkWriter {
            kind,
            tx: PollSender::new(tx.clone()),
        };
        Ok((
            id,
            Producer {
                stdout: writer(StreamKind::Stdout),
                stderr: writer(StreamKind::Stderr),
                end: tx,
            },
        ))
    }

    /// `Busy` when no stream can be opened now.
    pub fn has_room(&self) -> Result<(), OpsError> {
        let n = self.entries.lock().expect("not poisoned").len();
        if n >= self.max {
            return Err(OpsError::new(
                ErrorKind::Busy,
                format!("{n} streams are open; close some first"),
            ));
        }
        Ok(())
    }

    /// Ties the operation's task to the stream, so closing the stream aborts it.
    pub fn attach(&self, id: u64, task: AbortHandle) {
        if let Some(e) = self.entries.lock().expect("not poisoned").get_mut(&id) {
            e.task = Some(task);
        } else {
            task.abort();
        }
    }

    fn with<T>(
        &self,
        owner: &str,
        id: u64,
        f: impl FnOnce(&mut Entry) -> T,
    ) -> Result<T, OpsError> {
        let mut entries = self.entries.lock().expect("not poisoned");
        match entries.get_mut(&id) {
            Some(e) if e.owner == owner => {
                e.used = Instant::now();
                Ok(f(e))
            }
            _ => Err(not_found(id)),
        }
    }

    /// Output since the last read, waiting up to `wait` for the first of it. The read that
    /// returns the end removes the stream.
    pub async fn read(
        &self,
        owner: &str,
        id: u64,
        wait: Duration,
    ) -> Result<StreamOutput, OpsError> {
        let rx = self.with(owner, id, |e| e.rx.clone())?;
        // One reader at a time; a second concurrent read waits its turn.
        let mut rx = rx.lock().await;
        let mut out = StreamOutput::default();
        let mut bytes = 0;
        let mut take = |event: Option<Event>, out: &mut StreamOutput| match event {
            Some(Event::Chunk(kind, data)) => {
                bytes += data.len();
                out.chunks.push((kind, data));
                bytes < MAX_READ_BYTES
            }
            Some(Event::End(end)) => {
                out.end = Some(end);
                false
            }
            // Every sender gone without an end: the task was aborted.
            None => {
                out.end = Some(StreamEnd {
                    exit_code: None,
                    error: Some(OpsError::new(ErrorKind::Engine, "the stream was cut off")),
                });
                false
            }
        };
        if let Ok(first) = tokio::time::timeout(wait, rx.recv()).await {
            if take(first, &mut out) {
                loop {
                    let next = match rx.try_recv() {
                        Ok(e) => Some(e),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                    };
                    if !take(next, &mut out) {
                        break;
                    }
                }
            }
        }
        if out.end.is_some() {
            self.entries.lock().expect("not poisoned").remove(&id);
        }
        Ok(out)
    }

    /// Writes input to an exec's stdin; `close` ends it afterwards.
    pub async fn write(
        &self,
        owner: &str,
        id: u64,
        data: &[u8],
        close: bool,
    ) -> Result<(), OpsError> {
        if data.len() > MAX_INPUT_BYTES {
            return Err(OpsError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "input chunk of {} bytes; at most {MAX_INPUT_BYTES}",
                    data.len()
                ),
            ));
        }
        let stdin = self.with(owner, id, |e| e.stdin.clone())?.ok_or_else(|| {
            OpsError::new(ErrorKind::InvalidArgument, "the stream takes no input")
        })?;
        // One write at a time; a concurrent one is refused rather than queued with its data.
        let mut stdin = stdin.try_lock().map_err(|_| {
            OpsError::new(
                ErrorKind::Busy,
                "another write to this stream is in progress",
            )
        })?;
        let Some(pipe) = stdin.as_mut() else {
            return Err(OpsError::new(
                ErrorKind::InvalidArgument,
                "input already closed",
            ));
        };
        let gone = |_| OpsError::new(ErrorKind::Conflict, "the command no longer reads input");
        pipe.write_all(data).await.map_err(gone)?;
        if close {
            pipe.shutdown().await.map_err(gone)?;
            *stdin = None;
        }
        Ok(())
    }

    /// The exec id behind a stream.
    pub fn exec_id(&self, owner: &str, id: u64) -> Result<String, OpsError> {
        self.with(owner, id, |e| e.exec_id.clone())?
            .ok_or_else(|| OpsError::new(ErrorKind::InvalidArgument, "not an exec stream"))
    }

    /// Closes a stream and aborts its task.
    pub fn close(&self, owner: &str, id: u64) -> Result<(), OpsError> {
        self.with(owner, id, |_| ())?;
        if let Some(e) = self.entries.lock().expect("not poisoned").remove(&id) {
            if let Some(t) = e.task {
                t.abort();
            }
        }
        Ok(())
    }

    /// Closes streams not read for [`IDLE`] (or `idle`); returns how many.
    pub fn expire(&self, idle: Duration) -> usize {
        let mut entries = self.entries.lock().expect("not poisoned");
        let before = entries.len();
        entries.retain(|_, e| {
            let keep = e.used.elapsed() < idle;
            if !keep {
                if let Some(t) = &e.task {
                    t.abort();
                }
            }
            keep
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
    use super::*;

    #[tokio::test]
    async fn output_keeps_its_order_and_the_end_removes_the_stream() {
        let s = Streams::new(4);
        let (id, mut p) = s.open("a", None, None).unwrap();
        p.stdout.write_all(b"one ").await.unwrap();
        p.stderr.write_all(b"two ").await.unwrap();
        p.stdout.write_all(b"three").await.unwrap();
        p.finish(StreamEnd {
            exit_code: Some(3),
            error: None,
        })
        .await;
        let out = s.read("a", id, Duration::from_secs(1)).await.unwrap();
        let kinds: Vec<_> = out.chunks.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [StreamKind::Stdout, StreamKind::Stderr, StreamKind::Stdout]
        );
        assert_eq!(out.chunks[2].1, b"three");
        assert_eq!(out.end.unwrap().exit_code, Some(3));
        assert!(s.is_empty());
        let again = s.read("a", id, Duration::ZERO).await.unwrap_err();
        assert_eq!(again.kind, ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn another_owner_cannot_touch_a_stream_and_a_full_table_is_busy() {
        let s = Streams::new(1);
        let (id, _p) = s.open("a", None, None).unwrap();
        assert_eq!(
            s.read("b", id, Duration::ZERO).await.unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert_eq!(s.close("b", id).unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(s.open("a", None, None).err().unwrap().kind, ErrorKind::Busy);
        // An empty read is not an end.
        let out = s.read("a", id, Duration::from_millis(10)).await.unwrap();
        assert!(out.chunks.is_empty() && out.end.is_none());
    }

    #[tokio::test]
    async fn a_slow_reader_holds_the_producer_back_and_idle_streams_expire() {
        let s = Arc::new(Streams::new(4));
        let (id, mut p) = s.open("a", None, None).unwrap();
        let writer = tokio::spawn(async move {
            for _ in 0..(QUEUE * 4) {
                p.stdout.write_all(b"x").await.unwrap();
            }
            p.finish(StreamEnd {
                exit_code: None,
                error: None,
            })
            .await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!writer.is_finished(), "the queue is bounded");
        let mut total = 0;
        loop {
            let out = s.read("a", id, Duration::from_secs(1)).await.unwrap();
            total += out.chunks.len();
            if out.end.is_some() {
                break;
            }
        }
        assert_eq!(total, QUEUE * 4);
        writer.await.unwrap();

        let (id, _p) = s.open("a", None, None).unwrap();
        assert_eq!(s.expire(Duration::from_secs(3600)), 0);
        assert_eq!(s.expire(Duration::ZERO), 1);
        assert!(s.read("a", id, Duration::ZERO).await.is_err());
    }

    #[tokio::test]
    async fn input_reaches_the_pipe_and_close_ends_it() {
        use tokio::io::AsyncReadExt;
        let s = Streams::new(4);
        let (mine, mut theirs) = tokio::io::duplex(1024);
        let (id, _p) = s.open("a", Some(mine), None).unwrap();
        s.write("a", id, b"hello", true).await.unwrap();
        let mut got = String::new();
        theirs.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello");
        let e = s.write("a", id, b"more", false).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        let (no_input, _p) = s.open("a", None, None).unwrap();
        assert!(s.write("a", no_input, b"x", false).await.is_err());
    }
}

//! State sync between machines: automerge's sync protocol over tarpc (TCP).
//!
//! Each machine that gossips a sync address gets one worker task that runs sync *sessions*
//! with it, one at a time. A session
//! is a loop of [`StateSync::sync`] calls: send our sync message, apply the reply, until
//! neither side has anything to send, after which both documents hold the same changes.
//! Workers are woken by: a local write (push to every live peer), gossip showing the peer has
//! heads we lack (pull; also for a peer not yet live again when those heads are new, which is
//! what makes a healed partition converge within a gossip round), and a slow periodic timer
//! (anti-entropy safety net, skipped while sessions are busy). Wake-ups while a session runs
//! coalesce into one more session; a session that failed is not retried on its own (its
//! peer's heads in gossip bring the next one).
//!
//! At most [`crate::peers::SESSION_SLOTS`] sessions of a machine exchange messages at once:
//! unbounded, a healed partition made every machine fetch the same changes from many peers
//! at the same time.
//!
//! Every round also carries the container tables (decision 0014): the caller sends the
//! versions it holds, the server answers with the deltas the caller lacks and its own
//! versions, and the caller sends what the server lacks in the next round. A session ends
//! when neither side has automerge changes or table deltas left to send.
//!
//! A message bigger than `sync_chunk_bytes` (a machine far behind catching up; frames are
//! capped at 64 MiB) travels in parts: the caller sends its parts with `more` set and the
//! server applies them once the last arrives; the server answers with its first part and
//! `more`, and the caller fetches the rest with empty requests.
//!
//! The server keeps one `sync::State` per calling machine so later sessions exchange only what
//! changed since the last one; a new session id resets its in-flight bookkeeping.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use automerge::sync;
use futures::{FutureExt, StreamExt};
use tarpc::server::{BaseChannel, Channel};
use tarpc::{client, context};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uncloud_common::rpc::{
    transport, StateSync, StateSyncClient, SyncError, SyncReply, SyncRequest, TableDelta,
    TablesMessage,
};

use crate::document::reset_sync_state;
use crate::errors::StartError;
use crate::replica::Shared;

/// Most rounds one session may take; a healthy session needs 2–4.
const MAX_ROUNDS: usize = 64;
/// How long a sync connection stays open without a session.
pub const CONNECTION_LINGER: Duration = Duration::from_secs(5);
/// Server-side conversations kept at most (one per calling machine).
const MAX_SERVER_SESSIONS: usize = 4096;
/// The biggest sync message taken in parts (a catch-up of a machine far behind).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// `bytes` in parts of `chunk` bytes, in order.
fn split(bytes: Vec<u8>, chunk: usize) -> VecDeque<Vec<u8>> {
    bytes.chunks(chunk.max(1)).map(<[u8]>::to_vec).collect()
}

/// Binds the sync listener and serves it in a task.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
) -> Result<(SocketAddr, JoinHandle<()>), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|reason| StartError::SyncListen { addr, reason })?;
    let local = listener
        .local_addr()
        .map_err(|reason| StartError::SyncListen { addr, reason })?;
    let server = SyncServer {
        shared,
        sessions: Arc::default(),
        caller: None,
    };
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "sync accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if server.shared.config.on_mesh() && !server.shared.mesh_peers().allows(peer.ip()) {
                tracing::warn!(%peer, "refusing sync from an address that is no machine's");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let stream = Counting::new(stream, server.shared.clone());
            let transport = transport(stream);
            let server = SyncServer {
                caller: Some(peer),
                ..server.clone()
            };
            tokio::spawn(async move {
                BaseChannel::with_defaults(transport)
                    .execute(server.serve())
                    .for_each(|response| async {
                        tokio::spawn(response);
                    })
                    .await;
                tracing::trace!(%peer, "sync connection closed");
            });
        }
    });
    Ok((local, task))
}

struct ServerSession {
    session: u64,
    state: sync::State,
    used: Instant,
    /// The parts of a big message the caller has sent so far.
    inbound: Vec<u8>,
    /// The parts of our big message the caller has yet to fetch.
    outbound: VecDeque<Vec<u8>>,
}

#[derive(Clone)]
struct SyncServer {
    shared: Arc<Shared>,
    sessions: Arc<Mutex<HashMap<String, ServerSession>>>,
    /// The address of the connection this clone serves (set per connection).
    caller: Option<SocketAddr>,
}

impl SyncServer {
    fn handle(&self, req: SyncRequest) -> Result<SyncReply, SyncError> {
        let shared = &self.shared;
        if req.network_id != shared.network_id {
            tracing::warn!(
                from = %req.from.chars().take(64).collect::<String>(),
                theirs = %req.network_id.chars().take(64).collect::<String>(),
                "refusing sync from a machine of another network"
            );
            return Err(SyncError::WrongNetwork {
                ours: shared.network_id.clone(),
                theirs: req.network_id,
            });
        }
        if uncloud_common::model::validate_id("caller", &req.from).is_err() {
            tracing::warn!("refusing sync from a caller with an invalid machine id");
            return Err(SyncError::InvalidCaller(
                req.from.chars().take(64).collect(),
            ));
        }
        // On the mesh, the address vouches for the machine (WireGuard): a caller speaks only
        // for the machine whose address it calls from, never for another one.
        if let (true, Some(caller)) = (shared.config.on_mesh(), self.caller) {
            let owner = shared.mesh_peers().id_at(caller.ip()).map(str::to_string);
            if owner.as_deref() != Some(req.from.as_str()) {
                tracing::warn!(
                    from = %req.from,
                    %caller,
                    "refusing sync that names another machine than its address"
                );
                return Err(SyncError::InvalidCaller(format!(
                    "{} calls from {}, which is not its mesh address",
                    req.from,
                    caller.ip()
                )));
            }
        }
        if shared.is_removed(&req.from) {
            tracing::warn!(from = %req.from, "refusing sync from a removed machine");
            return Err(SyncError::InvalidCaller(format!(
                "machine {} was removed from this network",
                req.from
            )));
        }
        let me = &shared.machine_id;
        if !shared.links.allows(&req.from, me) || !shared.links.allows(me, &req.from) {
            return Err(SyncError::Unavailable);
        }
        let mut sessions = self.sessions.lock().unwrap();
        if !sessions.contains_key(&req.from) && sessions.len() >= MAX_SERVER_SESSIONS {
            // Forget the conversation unused the longest; it only costs a bigger first message.
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        let entry = sessions
            .entry(req.from.clone())
            .or_insert_with(|| ServerSession {
                session: req.session,
                state: sync::State::new(),
                used: Instant::now(),
                inbound: Vec::new(),
                outbound: VecDeque::new(),
            });
        entry.used = Instant::now();
        if entry.session != req.session {
            entry.session = req.session;
            entry.state = reset_sync_state(&entry.state);
            entry.inbound = Vec::new();
            entry.outbound.clear();
        }
        if req.more {
            let part = req.message.unwrap_or_default();
            if entry.inbound.len() + part.len() > MAX_MESSAGE_BYTES {
                entry.inbound = Vec::new();
                tracing::warn!(from = %req.from, "refusing a sync message over {MAX_MESSAGE_BYTES} bytes");
                return Err(SyncError::Malformed(format!(
                    "a sync message over {MAX_MESSAGE_BYTES} bytes"
                )));
            }
            entry.inbound.extend_from_slice(&part);
            return Ok(SyncReply {
                message: None,
                tables: None,
                more: false,
            });
        }
        let message = if entry.inbound.is_empty() {
            req.message
        } else {
            let mut whole = std::mem::take(&mut entry.inbound);
            whole.extend(req.message.unwrap_or_default());
            Some(whole)
        };
        if let Some(bytes) = &message {
            if let Err(e) = shared.receive_sync(&mut entry.state, bytes) {
                tracing::warn!(from = %req.from, error = %e, "refusing a malformed sync message");
                entry.state = sync::State::new();
                return Err(SyncError::Malformed(e.to_string()));
            }
        }
        let tables = match req.tables {
            Some(t) => {
                if let Err(e) = shared.receive_tables(t.deltas) {
                    tracing::warn!(from = %req.from, error = %e, "refusing a malformed table delta");
                    return Err(SyncError::Malformed(e.to_string()));
                }
                Some(shared.tables_for(&req.from, &t.versions))
            }
            None => None,
        };
        let (message, more) = match entry.outbound.pop_front() {
            Some(part) => (Some(part), !entry.outbound.is_empty()),
            None => match shared.generate_sync(&mut entry.state) {
                Some(m) if m.len() > shared.config.sync_chunk_bytes => {
                    entry.outbound = split(m, shared.config.sync_chunk_bytes);
                    (entry.outbound.pop_front(), true)
                }
                m => (m, false),
            },
        };
        Ok(SyncReply {
            message,
            tables,
            more,
        })
    }
}

impl StateSync for SyncServer {
    async fn sync(self, _: context::Context, request: SyncRequest) -> Result<SyncReply, SyncError> {
        off_workers(move || self.handle(request))
            .await
            .unwrap_or(Err(SyncError::Unavailable))
    }
}

/// Runs automerge's CPU-heavy sync work (applying and generating messages, under the document
/// lock) on the blocking pool, so a big merge never stalls the async workers that carry
/// gossip, D-Bus and the other sessions.
/// `None` only while the runtime shuts down: the blocking pool then cancels work it has not
/// started (a panic in the work has already aborted the process, `uncloud_common::fail_fast`).
async fn off_workers<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}

/// Makes the sync workers match `known` (machine id -> sync address, live): a worker for each
/// machine that is not removed, running [`peer_worker`].
pub(crate) fn update_peers(shared: &Arc<Shared>, known: &HashMap<String, (SocketAddr, bool)>) {
    shared.peers.update(
        known,
        |id| shared.is_removed(id),
        |id, addr, wake| tokio::spawn(peer_worker(shared.clone(), id.to_string(), addr, wake)),
    );
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("link to the peer is down")]
    Unreachable,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("rpc: {0}")]
    Rpc(#[from] tarpc::client::RpcError),
    #[error("peer refused: {0}")]
    Refused(#[from] SyncError),
    #[error("peer sent a bad message: {0}")]
    BadReply(#[from] crate::document::DocError),
    #[error("peer sent a bad table delta: {0}")]
    BadTables(#[from] crate::tables::TableError),
    #[error("this node is stopping")]
    Stopping,
    #[error("the peer's sync message grew over {MAX_MESSAGE_BYTES} bytes")]
    TooBig,
}

async fn peer_worker(shared: Arc<Shared>, peer: String, addr: SocketAddr, wake: Arc<Notify>) {
    let mut client: Option<StateSyncClient> = None;
    let mut state = sync::State::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        if client.is_some() {
            // A connection idle for a while is closed: every open one costs both ends
            // buffers and tasks, which at a few hundred peers is most of a node's memory.
            // The next session connects again (one TCP handshake on the mesh).
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(CONNECTION_LINGER) => {
                    client = None;
                    continue;
                }
            }
        } else {
            wake.notified().await;
        }
        let running = shared.peers.session_started();
        let outcome = session(&shared, &peer, addr, &mut client, &mut state).await;
        drop(running);
        match outcome {
            Ok(settled) => {
                backoff = Duration::from_millis(50);
                if !settled {
                    wake.notify_one();
                }
            }
            Err(e) => {
                tracing::debug!(%peer, %addr, error = %e, "sync session failed");
                client = None;
                state = reset_sync_state(&state);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                // Wake-ups that came while the peer was out of reach are dropped, not kept for
                // later: each machine pulls what it lacks once gossip shows the other's heads
                // again (and anti-entropy is the safety net). Kept, they fired a session from
                // every machine to every machine of the other side the moment a partition
                // healed, each carrying the same changes.
                let _ = wake.notified().now_or_never();
            }
        }
    }
}

async fn connect(shared: &Arc<Shared>, addr: SocketAddr) -> Result<StateSyncClient, SessionError> {
    let timeout = Duration::from_millis(shared.config.sync_timeout_ms);
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| SessionError::Connect(std::io::ErrorKind::TimedOut.into()))?
        .map_err(SessionError::Connect)?;
    let _ = stream.set_nodelay(true);
    let stream = Counting::new(stream, shared.clone());
    Ok(StateSyncClient::new(client::Config::default(), transport(stream)).spawn())
}

async fn session(
    shared: &Arc<Shared>,
    peer: &str,
    addr: SocketAddr,
    client: &mut Option<StateSyncClient>,
    state: &mut sync::State,
) -> Result<bool, SessionError> {
    let me = shared.machine_id.as_str();
    if !shared.links.allows(me, peer) {
        return Err(SessionError::Unreachable);
    }
    let c = match client {
        Some(c) => c,
        None => client.insert(connect(shared, addr).await?),
    };
    // Connected (a peer out of reach fails above without taking a slot).
    let _slot = shared.peers.slot().await;
    *state = reset_sync_state(state);
    let id = rand::random::<u64>();
    let timeout = Duration::from_millis(shared.config.sync_timeout_ms);
    // Table deltas the peer lacks by the versions it sent last, and those sent already.
    let mut pending: Vec<TableDelta> = Vec::new();
    let mut sent: std::collections::BTreeSet<(String, u64)> = Default::default();
    for round in 0..MAX_ROUNDS {
        let (taken, out, versions) = {
            let shared = shared.clone();
            let mut taken = std::mem::replace(state, sync::State::new());
            off_workers(move || {
                let out = shared.generate_sync(&mut taken);
                (taken, out, shared.table_versions())
            })
            .await
            .ok_or(SessionError::Stopping)?
        };
        *state = taken;
        let sent_nothing = out.is_none() && pending.is_empty();
        let request =
            |message: Option<Vec<u8>>, tables: Option<TablesMessage>, more: bool| SyncRequest {
                network_id: shared.network_id.clone(),
                from: me.to_string(),
                session: id,
                message,
                tables,
                more,
            };
        let c: &StateSyncClient = c;
        let call = |request| call(shared, peer, c, timeout, request);
        // A message too big for one frame goes in parts; the last travels with the tables.
        let chunk = shared.config.sync_chunk_bytes;
        let out = match out {
            Some(big) if big.len() > chunk => {
                let mut parts = split(big, chunk);
                let last = parts.pop_back();
                for part in parts {
                    call(request(Some(part), None, true)).await?;
                    shared.metrics.sync_parts.fetch_add(1, Ordering::Relaxed);
                }
                last
            }
            small => small,
        };
        let tables = TablesMessage {
            versions,
            deltas: std::mem::take(&mut pending),
        };
        let mut reply = call(request(out, Some(tables), false)).await?;
        while reply.more {
            let next = call(request(None, None, false)).await?;
            shared.metrics.sync_parts.fetch_add(1, Ordering::Relaxed);
            let mut whole = reply.message.take().unwrap_or_default();
            if whole.len() + next.message.as_ref().map_or(0, Vec::len) > MAX_MESSAGE_BYTES {
                return Err(SessionError::TooBig);
            }
            whole.extend(next.message.unwrap_or_default());
            reply.message = Some(whole);
            reply.more = next.more;
        }
        let got_message = reply.message.is_some();
        let (taken, received, next) = {
            let shared = shared.clone();
            let peer_id = peer.to_string();
            let mut taken = std::mem::replace(state, sync::State::new());
            off_workers(move || {
                let received = match &reply.message {
                    Some(bytes) => shared.receive_sync(&mut taken, bytes).map(drop),
                    None => Ok(()),
                };
                let next = reply.tables.map(|t| {
                    let changed = shared.receive_tables(t.deltas)?;
                    Ok::<_, crate::tables::TableError>((
                        changed,
                        shared.tables_for(&peer_id, &t.versions).deltas,
                    ))
                });
                (taken, received, next)
            })
            .await
            .ok_or(SessionError::Stopping)?
        };
        *state = taken;
        received?;
        let (got_deltas, mut next) = next.transpose()?.unwrap_or_default();
        // A table the peer did not take (a machine it does not know yet) would be sent every
        // round: once per session is enough, the next session tries again.
        next.retain(|d| sent.insert((d.machine_id.clone(), d.version)));
        pending = next;
        tracing::trace!(%peer, round, sent = !sent_nothing, got = got_message, got_deltas, "sync round");
        if sent_nothing && !got_message && !got_deltas && pending.is_empty() {
            tracing::debug!(%peer, rounds = round + 1, "sync session done");
            return Ok(true);
        }
    }
    // Writes keep arriving faster than the session settles: end here and go again, so one
    // busy peer cannot hold the worker in a single endless session.
    tracing::debug!(%peer, "sync session cut after {MAX_ROUNDS} rounds; another follows");
    Ok(false)
}

/// One sync RPC, while the link both ways is up.
async fn call(
    shared: &Shared,
    peer: &str,
    client: &StateSyncClient,
    timeout: Duration,
    request: SyncRequest,
) -> Result<SyncReply, SessionError> {
    let me = shared.machine_id.as_str();
    if !shared.links.allows(me, peer) {
        return Err(SessionError::Unreachable);
    }
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + timeout;
    let reply = client.sync(ctx, request).await??;
    if !shared.links.allows(peer, me) {
        return Err(SessionError::Unreachable);
    }
    Ok(reply)
}

/// Syncs with every live peer once per `anti_entropy_interval_ms`, whatever gossip says.
/// Peers are visited one at a time, spread evenly over the period and starting at a random
/// offset, so the safety net never becomes a burst of sessions that delays real pushes.
pub(crate) async fn anti_entropy_loop(shared: Arc<Shared>) {
    let period = Duration::from_millis(shared.config.anti_entropy_interval_ms.max(100));
    tokio::time::sleep(period.mul_f64(rand::random::<f64>())).await;
    loop {
        let live = shared.peers.live_ids();
        if live.is_empty() {
            tokio::time::sleep(period).await;
            continue;
        }
        let gap = period / live.len() as u32;
        for id in live {
            // The safety net waits while sessions are busy (a healed partition merging).
            if !shared.peers.busy() {
                shared.peers.wake(&id);
            }
            tokio::time::sleep(gap).await;
        }
    }
}

/// A TCP stream that counts the bytes it carries into the node's metrics.
struct Counting {
    inner: TcpStream,
    shared: Arc<Shared>,
}

impl Counting {
    fn new(inner: TcpStream, shared: Arc<Shared>) -> Self {
        Counting { inner, shared }
    }

    fn count(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        Self::count(
            &self.shared.metrics.sync_bytes_received,
            buf.filled().len() - before,
        );
        res
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &res {
            Self::count(&self.shared.metrics.sync_bytes_sent, *n);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

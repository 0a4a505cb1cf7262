//! Membership and failure detection with chitchat (UDP).
//!
//! Each machine gossips three small values: `sync`, the address of its sync server, `heads`,
//! the hashes of its document heads, and `tables`, a fingerprint of the versions of the
//! container tables it holds. From every round we derive:
//! - the liveness of every machine (alive / suspect / down, see [`crate::liveness`]);
//! - the set of live peers, which gets a sync worker each;
//! - anti-entropy: a peer whose heads we do not have is pulled from at once (two of them, when
//!   several are ahead, as after a healed partition), so a missed push
//!   or a healed partition converges within about one gossip interval. So is a peer whose
//!   table fingerprint changed to one that differs from ours (it may hold a newer table,
//!   perhaps relayed from a machine we cannot reach).
//!
//! chitchat refuses messages whose cluster id differs, and the cluster id is the network id,
//! so a machine of another network never enters the view.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatEnvelope, ChitchatHandle, ChitchatId,
    FailureDetectorConfig, ProtocolVersion,
};
use rand::seq::SliceRandom;
use tokio::task::JoinHandle;

use crate::clock::now_ms;
use crate::document::{heads_from_hex, heads_to_hex};
use crate::errors::StartError;
use crate::links::Links;
use crate::liveness::Observation;
use crate::mesh_peers::MeshPeers;
use crate::peers::MAX_PULLS;
use crate::replica::{Event, Shared};

const KEY_SYNC: &str = "sync";
const KEY_HEADS: &str = "heads";
/// [`crate::tables::ContainerTables::fingerprint`] of the sender's container tables, hex.
const KEY_TABLES: &str = "tables";

pub(crate) struct Gossip {
    handle: ChitchatHandle,
}

impl Gossip {
    /// Gossips on `addr`, starting from `seeds` (`ip:port`).
    pub(crate) async fn start(
        shared: Arc<Shared>,
        addr: SocketAddr,
        sync_addr: SocketAddr,
        seeds: Vec<String>,
    ) -> Result<Gossip, StartError> {
        let c = &shared.config;
        let interval = c.gossip_interval();
        let config = chitchat_config(
            ChitchatId::new(shared.machine_id.as_str(), now_ms(), addr),
            shared.network_id.clone(),
            seeds,
            interval,
            c.phi_threshold,
        );
        let heads = heads_to_hex(&shared.watch_heads().borrow()).join(",");
        let mut transport = FilteredTransport::new(
            shared.machine_id.clone(),
            shared.links.clone(),
            shared.metrics.gossip_bytes_sent.clone(),
            shared.metrics.gossip_bytes_received.clone(),
        );
        if c.on_mesh() {
            transport.mesh = Some(shared.mesh_peers.clone());
        }
        let handle = spawn_chitchat(
            config,
            vec![
                (KEY_SYNC.to_string(), sync_addr.to_string()),
                (KEY_HEADS.to_string(), heads),
                (
                    KEY_TABLES.to_string(),
                    format!("{:x}", *shared.watch_tables_fingerprint().borrow()),
                ),
            ],
            &transport,
        )
        .await
        .map_err(|reason| StartError::Gossip { addr, reason })?;
        Ok(Gossip { handle })
    }

    /// Tasks that publish our heads and read every round of gossip.
    pub(crate) fn spawn_watchers(&self, shared: Arc<Shared>) -> Vec<JoinHandle<()>> {
        let chitchat = self.handle.chitchat();
        let publish = {
            let chitchat = chitchat.clone();
            let mut heads = shared.watch_heads();
            tokio::spawn(async move {
                while heads.changed().await.is_ok() {
                    let hex = heads_to_hex(&heads.borrow_and_update()).join(",");
                    chitchat.lock().await.self_node_state().set(KEY_HEADS, hex);
                }
            })
        };
        let publish_tables = {
            let chitchat = chitchat.clone();
            let mut fingerprint = shared.watch_tables_fingerprint();
            tokio::spawn(async move {
                while fingerprint.changed().await.is_ok() {
                    let hex = format!("{:x}", *fingerprint.borrow_and_update());
                    chitchat.lock().await.self_node_state().set(KEY_TABLES, hex);
                }
            })
        };
        let observe = tokio::spawn(observe_loop(shared, chitchat));
        vec![publish, publish_tables, observe]
    }

    pub(crate) async fn shutdown(self) {
        let _ = self.handle.shutdown().await;
    }
}

/// chitchat's settings as stated uses them; public so the benchmark's chitchat-only reference
/// gossips exactly the same way.
pub fn chitchat_config(
    id: ChitchatId,
    cluster_id: String,
    seeds: Vec<String>,
    interval: Duration,
    phi_threshold: f64,
) -> ChitchatConfig {
    ChitchatConfig {
        listen_addr: id.gossip_advertise_addr,
        chitchat_id: id,
        cluster_id,
        gossip_interval: interval,
        seed_nodes: seeds,
        failure_detector_config: FailureDetectorConfig {
            phi_threshold,
            // Intervals are gossip-paced; start from a prior of a few rounds.
            initial_interval: interval * 2,
            max_interval: interval * 10,
            dead_node_grace_period: Duration::from_secs(24 * 3600),
            ..FailureDetectorConfig::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V1,
    }
}

/// What one machine gossips, as read from chitchat.
struct PeerView {
    detection_timeout: Option<Duration>,
    heartbeat: u64,
    live: bool,
    sync_addr: Option<SocketAddr>,
    heads: Option<Vec<automerge::ChangeHash>>,
    tables: Option<u64>,
}

async fn observe_loop(shared: Arc<Shared>, chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>) {
    let mut tick = tokio::time::interval(shared.config.gossip_interval() / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watcher = chitchat.lock().await.live_nodes_watcher();
    let mut last_heads: HashMap<String, Vec<automerge::ChangeHash>> = HashMap::new();
    let mut last_tables: HashMap<String, u64> = HashMap::new();
    loop {
        // Every half round, and as soon as a peer's values change.
        tokio::select! {
            _ = tick.tick() => {}
            r = watcher.changed() => if r.is_err() { return },
        }
        let views = {
            let chitchat = chitchat.lock().await;
            let live: std::collections::HashSet<&ChitchatId> = chitchat.live_nodes().collect();
            // A restarted machine appears once per generation; the newest one counts.
            let mut newest: HashMap<String, (&ChitchatId, PeerView)> = HashMap::new();
            for (id, state) in chitchat.node_states() {
                if *id.node_id == *shared.machine_id {
                    continue;
                }
                let view = PeerView {
                    detection_timeout: chitchat.failure_detection_timeout(id),
                    heartbeat: state.heartbeat().into(),
                    live: live.contains(id),
                    sync_addr: state.get(KEY_SYNC).and_then(|s| s.parse().ok()),
                    heads: state
                        .get(KEY_HEADS)
                        .and_then(|h| heads_from_hex(h.split(','))),
                    tables: state
                        .get(KEY_TABLES)
                        .and_then(|t| u64::from_str_radix(t, 16).ok()),
                };
                match newest.get(&*id.node_id) {
                    Some((old, _)) if old.generation_id >= id.generation_id => {}
                    _ => {
                        newest.insert(id.node_id.to_string(), (id, view));
                    }
                }
            }
            newest
                .into_iter()
                .map(|(k, (_, v))| (k, v))
                .collect::<Vec<_>>()
        };

        let changes = shared.liveness.lock().unwrap().observe(
            views.iter().map(|(id, v)| Observation {
                machine_id: id.clone(),
                heartbeat: v.heartbeat,
                live: v.live,
                detection_timeout: v.detection_timeout,
            }),
            Instant::now(),
        );
        for (machine_id, liveness) in changes {
            tracing::info!(machine = %machine_id, %liveness, "liveness changed");
            shared.emit(Event::Liveness {
                machine_id,
                liveness,
            });
        }

        // Every machine that gossips a sync address gets a worker; only live ones are pushed to.
        // On the mesh, a machine is synced with at the mesh address its entry implies, never
        // at the address it gossips.
        let mesh = shared.config.on_mesh().then(|| shared.mesh_peers());
        let known: HashMap<String, (SocketAddr, bool)> = views
            .iter()
            .filter_map(|(id, v)| {
                let addr = match &mesh {
                    Some(m) => m.addr_of(id, shared.config.sync_port)?,
                    None => v.sync_addr?,
                };
                Some((id.clone(), (addr, v.live)))
            })
            .collect();
        crate::sync::update_peers(&shared, &known);
        // Only machines gossip still knows: ids that come and go never pile up.
        last_heads.retain(|id, _| views.iter().any(|(v, _)| v == id));
        last_tables.retain(|id, _| views.iter().any(|(v, _)| v == id));
        let ours = *shared.watch_tables_fingerprint().borrow();
        let mut ahead: Vec<&String> = Vec::new();
        for (id, v) in &views {
            // Only a fingerprint that changed counts: two machines may hold different sets of
            // tables for good (one has not learnt of a machine yet), and must not sync forever.
            // A fingerprint counts as seen only once its peer is pulled from (below), so one
            // left out for lack of budget is tried again next half round.
            let tables_ahead = v.tables.is_some_and(|tables| {
                let fresh = last_tables.get(id) != Some(&tables);
                if !fresh || tables == ours {
                    last_tables.insert(id.clone(), tables);
                }
                fresh && tables != ours
            });
            // Heads that are new since the last round are fresh evidence the machine is up and
            // ahead of us, even before the failure detector calls it live again (right after a
            // partition heals). Stale heads of a dead machine do not keep waking its worker.
            let heads_ahead = v.heads.as_ref().is_some_and(|heads| {
                let fresh = last_heads.insert(id.clone(), heads.clone()).as_ref() != Some(heads);
                (v.live || fresh) && !shared.has_changes(heads)
            });
            if tables_ahead || heads_ahead {
                ahead.push(id);
            }
        }
        // Pull from a few of them, not all, and not while this machine's sessions are busy:
        // after a partition heals, every machine of the other side is ahead with the same
        // changes, and pulling them from each at once cost a 50-machine network seconds of
        // redundant merging. Whoever is still ahead next half round is pulled from then.
        ahead.shuffle(&mut rand::rng());
        let budget = MAX_PULLS.saturating_sub(shared.peers.sessions_running());
        for id in ahead.into_iter().take(budget) {
            if let Some(tables) = views
                .iter()
                .find(|(v, _)| v == id)
                .and_then(|(_, v)| v.tables)
            {
                last_tables.insert(id.clone(), tables);
            }
            shared.peers.wake(id);
        }
    }
}

/// chitchat's UDP transport, passing every datagram through [`Links`] and counting bytes.
/// Public so the benchmark's chitchat-only reference gossips through the very same path.
pub struct FilteredTransport {
    me: String,
    links: Links,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    /// On the mesh: datagrams go to and come from the machines' mesh addresses only.
    mesh: Option<MeshFilter>,
}

type MeshFilter = Arc<std::sync::RwLock<Arc<MeshPeers>>>;

fn mesh_allows(mesh: &Option<MeshFilter>, addr: SocketAddr) -> bool {
    mesh.as_ref()
        .is_none_or(|m| m.read().unwrap().allows(addr.ip()))
}

impl FilteredTransport {
    /// A transport for machine `me`; bytes sent and received are added to the counters.
    pub fn new(me: String, links: Links, sent: Arc<AtomicU64>, received: Arc<AtomicU64>) -> Self {
        FilteredTransport {
            me,
            links,
            sent,
            received,
            mesh: None,
        }
    }
}

#[async_trait]
impl Transport for FilteredTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = UdpTransport.open(listen_addr).await?;
        Ok(Box::new(FilteredSocket {
            inner,
            me: self.me.clone(),
            links: self.links.clone(),
            sent: self.sent.clone(),
            received: self.received.clone(),
            mesh: self.mesh.clone(),
        }))
    }
}

struct FilteredSocket {
    inner: Box<dyn Socket>,
    me: String,
    links: Links,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    mesh: Option<MeshFilter>,
}

#[async_trait]
impl Socket for FilteredSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        if !self.links.allows_addr(&self.me, to) || !mesh_allows(&self.mesh, to) {
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let outcome = self.inner.send(to, envelope).await?;
        self.sent
            .fetch_add(outcome.num_bytes_sent as u64, Ordering::Relaxed);
        Ok(outcome)
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let outcome = self.inner.recv().await?;
            if self.links.allows_from_addr(outcome.from_addr, &self.me)
                && mesh_allows(&self.mesh, outcome.from_addr)
            {
                self.received
                    .fetch_add(outcome.num_bytes_received as u64, Ordering::Relaxed);
                return Ok(outcome);
            }
        }
    }
}

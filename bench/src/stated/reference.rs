//! The reference: a plain chitchat cluster in the same process, on loopback UDP, with the same
//! node count, gossip interval, seeds and failure-detector settings as stated's own gossip.
//! Values are replicated as chitchat key-values and nothing else: no store, no merge, no sync.
//! It is what replicating the same data through gossip alone costs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatHandle, ChitchatId, KeyChangeEvent, ListenerHandle,
};
use rand::rngs::StdRng;
use rand::Rng;
use uncloud_testkit::cluster::{free_udp_port, service};
use uncloud_testkit::simnet::SimulatedNetwork;

use super::{HealResult, Idle, POLL, SAMPLE_DEADLINE};
use crate::progress;

/// Prefix of every key the benchmark sets; nodes listen to it.
const PREFIX: &str = "bench-";

struct RefNode {
    handle: ChitchatHandle,
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    sent: Arc<AtomicU64>,
    /// When this node first saw each benchmark key (its own keys included).
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    seen_count: Arc<AtomicUsize>,
    _listener: ListenerHandle,
}

/// `n` chitchat nodes `c00`, `c01`, …; the first three are everyone's seeds.
pub struct RefCluster {
    pub net: SimulatedNetwork,
    pub ids: Vec<String>,
    nodes: Vec<RefNode>,
}

/// The value stored for a key: the JSON of the same service stated writes, so both carry the
/// same data.
fn value(id: &str, image: &str) -> String {
    serde_json::to_string(&service(id, image)).expect("a service serializes")
}

impl RefCluster {
    /// Starts `n` nodes and waits until every node sees every other live. A port taken by
    /// someone else between choosing and binding it costs a fresh attempt, not the run.
    pub async fn start(n: usize, gossip_interval_ms: u64) -> Result<RefCluster> {
        let mut attempt = 1;
        loop {
            match Self::start_once(n, gossip_interval_ms).await {
                Err(e) if attempt < 5 && format!("{e:#}").contains("in use") => {
                    progress(format!("chitchat: {e:#}; starting again with other ports"));
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(n: usize, gossip_interval_ms: u64) -> Result<RefCluster> {
        let interval = Duration::from_millis(gossip_interval_ms);
        let net = SimulatedNetwork::new();
        let ids: Vec<String> = (0..n).map(|i| format!("c{i:02}")).collect();
        let addrs: Vec<SocketAddr> = ids
            .iter()
            .map(|id| {
                let addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
                net.register(id, addr);
                addr
            })
            .collect();
        let seeds: Vec<String> = addrs.iter().take(3).map(|a| a.to_string()).collect();
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut nodes = Vec::with_capacity(n);
        for (id, &addr) in ids.iter().zip(&addrs) {
            // Exactly as stated configures chitchat.
            let config = stated::gossip::chitchat_config(
                ChitchatId::new(id.as_str(), generation, addr),
                "bench-net".into(),
                seeds.clone(),
                interval,
                stated::config::Config::default().phi_threshold,
            );
            let sent = Arc::new(AtomicU64::new(0));
            // The same transport stated gossips through.
            let transport = stated::gossip::FilteredTransport::new(
                id.clone(),
                stated::links::Links::filtered(Arc::new(net.clone())),
                sent.clone(),
                Arc::default(),
            );
            let handle = spawn_chitchat(config, Vec::new(), &transport).await?;
            let chitchat = handle.chitchat();
            let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
            let seen_count = Arc::new(AtomicUsize::new(0));
            let listener = {
                let (seen, seen_count) = (seen.clone(), seen_count.clone());
                chitchat
                    .lock()
                    .await
                    .subscribe_event(PREFIX, move |ev: KeyChangeEvent| {
                        let now = Instant::now();
                        let mut seen = seen.lock().unwrap();
                        if !seen.contains_key(ev.key) {
                            seen.insert(ev.key.to_string(), now);
                            seen_count.fetch_add(1, Ordering::Relaxed);
                        }
                    })
            };
            nodes.push(RefNode {
                handle,
                chitchat,
                sent,
                seen,
                seen_count,
                _listener: listener,
            });
        }
        let cluster = RefCluster { net, ids, nodes };
        let t = Instant::now();
        let deadline = Duration::from_secs(60 + 2 * n as u64);
        loop {
            let live = cluster.live_counts().await;
            if live.iter().all(|&l| l == n) {
                break;
            }
            if t.elapsed() > deadline {
                bail!("chitchat cluster of {n} did not settle within {deadline:?}: live counts {live:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        progress(format!(
            "chitchat: {n} nodes settled after {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        tokio::time::sleep(interval * 3).await;
        Ok(cluster)
    }

    /// How many nodes (itself included) each node sees live.
    async fn live_counts(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            out.push(node.chitchat.lock().await.live_nodes().count());
        }
        out
    }

    /// Node ids each node sees live.
    async fn live_sets(&self) -> Vec<Vec<String>> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let c = node.chitchat.lock().await;
            out.push(c.live_nodes().map(|id| id.node_id.to_string()).collect());
        }
        out
    }

    async fn set(&self, i: usize, key: &str, value: String) {
        self.nodes[i]
            .chitchat
            .lock()
            .await
            .self_node_state()
            .set(format!("{PREFIX}{key}"), value);
    }

    /// Sets `count` keys holding the same container records stated stores, spread over the
    /// nodes, and waits until every node has seen them all.
    pub async fn containers(&self, count: usize) -> Result<()> {
        let n = self.nodes.len();
        for k in 0..count {
            let i = k % n;
            let c = super::subject::container(&self.ids[i], k);
            self.set(i, &format!("container-{k}"), serde_json::to_string(&c)?)
                .await;
        }
        let deadline = Duration::from_secs(120);
        let t = Instant::now();
        while !self
            .nodes
            .iter()
            .all(|nd| nd.seen_count.load(Ordering::Relaxed) >= count)
        {
            if t.elapsed() > deadline {
                bail!("chitchat: not every node saw {count} container keys after {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    pub async fn shutdown(self) {
        for node in self.nodes {
            let _ = node.handle.shutdown().await;
        }
    }

    /// `samples` keys, each set on a random node: the time from setting it until the last node
    /// sees it. chitchat only moves data in its periodic rounds, so writes one at a time would
    /// take about a round each; instead one write starts every eighth of a round, at a random
    /// instant within its slot, and each is timed on its own (they do not queue: one round
    /// carries every pending key).
    pub async fn propagation(
        &self,
        samples: usize,
        rng: &mut StdRng,
        interval: Duration,
    ) -> Result<Vec<f64>> {
        let n = self.nodes.len();
        let spacing = interval / 8;
        let start = tokio::time::Instant::now();
        let mut writes = Vec::with_capacity(samples);
        for k in 0..samples {
            let jitter = Duration::from_micros(rng.random_range(0..spacing.as_micros() as u64));
            tokio::time::sleep_until(start + spacing * k as u32 + jitter).await;
            let i = rng.random_range(0..n);
            let key = format!("prop-{n}-{k}");
            let t0 = Instant::now();
            self.set(i, &key, value(&key, "img:bench")).await;
            writes.push((key, t0));
            if (k + 1) % 25 == 0 {
                progress(format!("chitchat: {n} nodes: {} writes issued", k + 1));
            }
        }
        let t = Instant::now();
        while self
            .nodes
            .iter()
            .any(|node| node.seen_count.load(Ordering::Relaxed) < samples)
        {
            if t.elapsed() > SAMPLE_DEADLINE {
                let counts: Vec<usize> = self
                    .nodes
                    .iter()
                    .map(|nd| nd.seen_count.load(Ordering::Relaxed))
                    .collect();
                bail!(
                    "chitchat: keys did not reach every node within {SAMPLE_DEADLINE:?} of the \
                     last write; keys seen per node {counts:?} of {samples}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen: Vec<HashMap<String, Instant>> = self
            .nodes
            .iter()
            .map(|nd| nd.seen.lock().unwrap().clone())
            .collect();
        Ok(writes
            .iter()
            .map(|(key, t0)| {
                let last = seen.iter().map(|s| s[key]).max().unwrap_or(*t0);
                last.duration_since(*t0).as_secs_f64() * 1000.0
            })
            .collect())
    }

    /// Bytes every node sends over `window`, per node and second.
    pub async fn idle(&self, window: Duration) -> Idle {
        let sum = || {
            self.nodes
                .iter()
                .map(|n| n.sent.load(Ordering::Relaxed))
                .sum::<u64>()
        };
        let b0 = sum();
        let t = Instant::now();
        tokio::time::sleep(window).await;
        let b1 = sum();
        Idle {
            gossip: (b1 - b0) as f64 / (self.nodes.len() as f64 * t.elapsed().as_secs_f64()),
            sync: 0.0,
        }
    }
}

/// The same partition scenario as [`super::subject::heal`], with keys instead of services.
pub async fn heal(n: usize, writes: usize, gossip_interval_ms: u64) -> Result<HealResult> {
    let cluster = RefCluster::start(n, gossip_interval_ms).await?;
    let result = heal_on(&cluster, writes).await;
    cluster.shutdown().await;
    result
}

async fn heal_on(cluster: &RefCluster, writes: usize) -> Result<HealResult> {
    let n = cluster.ids.len();
    let sides = [
        (0..n / 2).collect::<Vec<_>>(),
        (n / 2..n).collect::<Vec<_>>(),
    ];
    cluster
        .net
        .partition(&[cluster.ids[..n / 2].to_vec(), cluster.ids[n / 2..].to_vec()]);
    progress(format!(
        "chitchat: partitioned {n} nodes 50/50; setting {writes} keys on each side"
    ));
    let t = Instant::now();
    for (tag, side) in ["a", "b"].iter().zip(&sides) {
        for k in 0..writes {
            let i = side[k % side.len()];
            let key = format!("heal-{tag}-{k}");
            cluster
                .set(i, &key, value(&key, &format!("img:{}", cluster.ids[i])))
                .await;
        }
    }
    let write_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let deadline = Duration::from_secs(120);
    loop {
        let sides_converged = cluster
            .nodes
            .iter()
            .all(|nd| nd.seen_count.load(Ordering::Relaxed) == writes);
        let live = cluster.live_sets().await;
        let split = sides.iter().enumerate().all(|(s, side)| {
            let other = &sides[1 - s];
            side.iter()
                .all(|&i| other.iter().all(|&j| !live[i].contains(&cluster.ids[j])))
        });
        if sides_converged && split {
            break;
        }
        if t.elapsed() > deadline {
            bail!(
                "chitchat: within {deadline:?} of the writes, sides converged \
                 {sides_converged}, each side sees the other dead {split}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let down_wait_s = t.elapsed().as_secs_f64();
    progress(format!(
        "chitchat: each side converged and sees the other dead ({down_wait_s:.1} s after the writes); healing"
    ));

    let healed = Instant::now();
    cluster.net.heal();
    let deadline = Duration::from_secs(60);
    let (mut membership, mut convergence) = (None, None);
    let mut polls = 0u64;
    while membership.is_none() || convergence.is_none() {
        if convergence.is_none()
            && cluster
                .nodes
                .iter()
                .all(|nd| nd.seen_count.load(Ordering::Relaxed) == 2 * writes)
        {
            convergence = Some(healed.elapsed());
        }
        if membership.is_none()
            && polls.is_multiple_of(10)
            && cluster.live_counts().await.iter().all(|&l| l == n)
        {
            membership = Some(healed.elapsed());
        }
        polls += 1;
        if healed.elapsed() > deadline {
            bail!(
                "chitchat: not healed within {deadline:?}: membership {membership:?}, \
                 convergence {convergence:?}"
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    Ok(HealResult {
        membership_ms: ms(membership),
        convergence_ms: ms(convergence),
        write_s,
        down_wait_s,
    })
}

/// A node cut off from the rest while they set `changes` keys: the time from healing until
/// it has seen them all.
pub async fn catch_up(n: usize, changes: usize, gossip_interval_ms: u64) -> Result<f64> {
    let cluster = RefCluster::start(n, gossip_interval_ms).await?;
    let result = catch_up_on(&cluster, changes).await;
    cluster.shutdown().await;
    result
}

async fn catch_up_on(cluster: &RefCluster, changes: usize) -> Result<f64> {
    let n = cluster.ids.len();
    let off = n - 1;
    cluster
        .net
        .partition(&[cluster.ids[..off].to_vec(), vec![cluster.ids[off].clone()]]);
    progress(format!(
        "chitchat: {} cut off; setting {changes} keys on the other {off} nodes",
        cluster.ids[off]
    ));
    for k in 0..changes {
        let i = k % off;
        let key = format!("catch-up-{k}");
        cluster
            .set(i, &key, value(&key, &format!("img:{}", cluster.ids[i])))
            .await;
    }
    let deadline = Duration::from_secs(300);
    let t = Instant::now();
    while !cluster.nodes[..off]
        .iter()
        .all(|nd| nd.seen_count.load(Ordering::Relaxed) == changes)
    {
        if t.elapsed() > deadline {
            bail!("chitchat: the connected nodes did not share {changes} keys within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let healed = Instant::now();
    cluster.net.heal();
    while cluster.nodes[off].seen_count.load(Ordering::Relaxed) < changes {
        if healed.elapsed() > deadline {
            bail!("chitchat: the node that was cut off did not catch up within {deadline:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(healed.elapsed().as_secs_f64() * 1000.0)
}

//! The subject: real `stated` nodes in one process (`uncloud_testkit::cluster::Cluster`), each with its
//! redb store (fsync on every write) in a temp dir, chitchat over loopback UDP and sync over
//! loopback TCP, all passing through one `SimulatedNetwork` that can split them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use automerge::ChangeHash;
use rand::rngs::StdRng;
use rand::Rng;
use stated::config::Config;
use stated::document::Mutation;
use stated::Shared;
use tokio::sync::watch;
use uncloud_common::liveness::Liveness;
use uncloud_testkit::cluster::{service, Cluster};

use super::{HealResult, Idle, Startup, POLL, SAMPLE_DEADLINE};
use crate::progress;

/// Every timing knob at its production default, except the gossip interval of the plan.
pub fn tune(gossip_interval_ms: u64) -> impl Fn(&mut Config) {
    move |c| {
        let d = Config::default();
        c.gossip_interval_ms = gossip_interval_ms;
        c.suspect_after_ms = d.suspect_after_ms;
        c.anti_entropy_interval_ms = d.anti_entropy_interval_ms;
        c.sync_timeout_ms = d.sync_timeout_ms;
    }
}

/// Starts `n` nodes and waits until they form one settled cluster.
pub async fn start(n: usize, gossip_interval_ms: u64) -> Result<(Cluster, Startup)> {
    let t = Instant::now();
    let errors = crate::logs::tarpc_errors();
    let cluster = Cluster::start_with(n, tune(gossip_interval_ms)).await;
    progress(format!(
        "stated: {n} nodes started in {:.1} s; waiting until every node is registered, \
         converged and sees all alive",
        t.elapsed().as_secs_f64()
    ));
    let took = settle(&cluster, Duration::from_secs(60 + 2 * n as u64)).await?;
    let startup = Startup {
        nodes: n,
        settle_s: took.as_secs_f64(),
        rpc_errors: crate::logs::tarpc_errors() - errors,
    };
    progress(format!(
        "stated: {n} nodes settled after {:.1} s ({} sync RPC errors meanwhile, mostly past \
         their deadline; the next session follows from gossip)",
        startup.settle_s, startup.rpc_errors
    ));
    // A few more rounds so that nothing from the start-up is still in flight.
    tokio::time::sleep(Duration::from_millis(3 * gossip_interval_ms)).await;
    Ok((cluster, startup))
}

/// Stops every node (flushing its store); the temp dirs go with the cluster.
pub async fn shutdown(mut cluster: Cluster) {
    for slot in &mut cluster.nodes {
        if let Some(node) = slot.take() {
            node.shutdown().await;
        }
    }
}

fn alive(node: &Shared) -> usize {
    node.liveness()
        .values()
        .filter(|l| **l == Liveness::Alive)
        .count()
}

fn all_heads_equal(cluster: &Cluster, members: &[usize]) -> bool {
    let first = cluster.node(members[0]).heads();
    members.iter().all(|&i| cluster.node(i).heads() == first)
}

/// Waits until every node has every machine registered, the same heads, and sees all alive.
async fn settle(cluster: &Cluster, deadline: Duration) -> Result<Duration> {
    let start = Instant::now();
    let n = cluster.ids.len();
    let all: Vec<usize> = (0..n).collect();
    loop {
        let converged = all_heads_equal(cluster, &all);
        let machines = cluster.node(0).state().machines.len();
        let alive: Vec<usize> = all.iter().map(|&i| alive(cluster.node(i))).collect();
        if converged && machines == n && alive.iter().all(|&a| a == n) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > deadline {
            bail!(
                "stated cluster of {n} did not settle within {deadline:?}: heads equal {converged}, \
                 {machines} machines registered, alive counts per node {alive:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `samples` writes, one at a time, each from a random node: for each, the time from calling
/// `mutate` on the writer until the last other node's heads contain the new change.
pub async fn propagation(cluster: &Cluster, samples: usize, rng: &mut StdRng) -> Result<Vec<f64>> {
    let n = cluster.ids.len();
    let mut out = Vec::with_capacity(samples);
    for k in 0..samples {
        let writer = rng.random_range(0..n);
        let id = format!("prop-{n}-{k}");
        out.push(one_write(cluster, writer, &id).await?);
        if (k + 1) % 25 == 0 {
            progress(format!("stated: {n} nodes: {} writes timed", k + 1));
        }
        // Let trailing gossip-driven pulls of this write end, and land the next write at a
        // random phase of the gossip rounds.
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..150))).await;
    }
    Ok(out)
}

async fn one_write(cluster: &Cluster, writer: usize, id: &str) -> Result<f64> {
    let (target_tx, target_rx) = watch::channel::<Option<Vec<ChangeHash>>>(None);
    let observers: Vec<_> = (0..cluster.ids.len())
        .filter(|&j| j != writer)
        .map(|j| {
            let node = cluster.node(j).shared().clone();
            let target = target_rx.clone();
            tokio::spawn(observe(node, target, id.to_string()))
        })
        .collect();
    let shared = cluster.node(writer).shared().clone();
    let mut heads = shared.watch_heads();
    heads.borrow_and_update();
    let t0 = Instant::now();
    let write = shared.mutate(Mutation::UpsertService(Box::new(service(id, "img:bench"))));
    // The writer publishes its new heads as soon as the change is applied, before it is durable.
    let announce = async {
        if heads.changed().await.is_ok() {
            let h = heads.borrow_and_update().clone();
            let _ = target_tx.send(Some(h));
        }
    };
    let (written, announced) = tokio::join!(write, tokio::time::timeout(SAMPLE_DEADLINE, announce));
    written.with_context(|| format!("writing {id} on {}", cluster.ids[writer]))?;
    announced.with_context(|| format!("{id}: the writer's heads did not change"))?;
    let mut last = t0;
    for (k, task) in observers.into_iter().enumerate() {
        let j = if k < writer { k } else { k + 1 };
        let remaining = SAMPLE_DEADLINE.saturating_sub(t0.elapsed());
        match tokio::time::timeout(remaining, task).await {
            Ok(Ok(Some(seen))) => last = last.max(seen),
            _ => bail!(
                "{id} written on {} did not reach {} within {SAMPLE_DEADLINE:?}",
                cluster.ids[writer],
                cluster.ids[j]
            ),
        }
    }
    Ok(last.duration_since(t0).as_secs_f64() * 1000.0)
}

/// Returns when `node` first holds the target heads (or, if other changes raced in, the write).
async fn observe(
    node: Arc<Shared>,
    mut target: watch::Receiver<Option<Vec<ChangeHash>>>,
    id: String,
) -> Option<Instant> {
    let mut heads = node.watch_heads();
    let base = heads.borrow_and_update().clone();
    let want = target.wait_for(Option::is_some).await.ok()?.clone()?;
    loop {
        let (has, moved) = {
            let cur = heads.borrow_and_update();
            (want.iter().all(|h| cur.contains(h)), *cur != base)
        };
        // Heads that moved on without containing the target: some other change arrived too,
        // so look at the state itself (rare, and never on the first check).
        if has || (moved && node.state().services.contains_key(&id)) {
            return Some(Instant::now());
        }
        heads.changed().await.ok()?;
    }
}

/// Bytes every node sends (gossip and sync) over `window`, per node and second.
pub async fn idle(cluster: &Cluster, window: Duration) -> Idle {
    let sum = || {
        cluster.running().fold((0u64, 0u64), |(g, s), (_, node)| {
            (
                g + node.metrics.gossip_bytes_sent.load(Ordering::Relaxed),
                s + node.metrics.sync_bytes_sent.load(Ordering::Relaxed),
            )
        })
    };
    let (g0, s0) = sum();
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let (g1, s1) = sum();
    let per = (cluster.ids.len() as f64) * t.elapsed().as_secs_f64();
    Idle {
        gossip: (g1 - g0) as f64 / per,
        sync: (s1 - s0) as f64 / per,
    }
}

/// A 50/50 partition of `n` nodes, `writes` services written on each side (spread over the
/// side's nodes, one writer task per node), both sides declaring the other down, then heal:
/// the time until every node sees all alive, and until all heads are equal.
pub async fn heal(n: usize, writes: usize, gossip_interval_ms: u64) -> Result<HealResult> {
    let (cluster, _) = start(n, gossip_interval_ms).await?;
    let result = heal_on(&cluster, writes).await;
    shutdown(cluster).await;
    result
}

async fn heal_on(cluster: &Cluster, writes: usize) -> Result<HealResult> {
    let n = cluster.ids.len();
    let sides = [
        (0..n / 2).collect::<Vec<_>>(),
        (n / 2..n).collect::<Vec<_>>(),
    ];
    cluster
        .net
        .partition(&[cluster.group(0..n / 2), cluster.group(n / 2..n)]);
    progress(format!(
        "stated: partitioned {n} nodes 50/50; writing {writes} services on each side"
    ));

    let t = Instant::now();
    for (tag, side) in ["a", "b"].iter().zip(&sides) {
        spread_writes(cluster, side, writes, |k| format!("heal-{tag}-{k}")).await?;
    }
    let write_s = t.elapsed().as_secs_f64();
    progress(format!(
        "stated: {} writes done in {write_s:.1} s",
        2 * writes
    ));

    let t = Instant::now();
    let deadline = Duration::from_secs(120);
    loop {
        let sides_converged = sides.iter().all(|s| all_heads_equal(cluster, s));
        let split = sides[0].iter().all(|&i| {
            let l = cluster.node(i).liveness();
            sides[1]
                .iter()
                .all(|&j| l.get(&cluster.ids[j]) == Some(&Liveness::Down))
        }) && sides[1].iter().all(|&i| {
            let l = cluster.node(i).liveness();
            sides[0]
                .iter()
                .all(|&j| l.get(&cluster.ids[j]) == Some(&Liveness::Down))
        });
        if sides_converged && split {
            break;
        }
        if t.elapsed() > deadline {
            bail!(
                "stated: within {deadline:?} of the writes, sides converged \
                 {sides_converged}, each side sees the other down {split}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let down_wait_s = t.elapsed().as_secs_f64();
    progress(format!(
        "stated: each side converged and sees the other down ({down_wait_s:.1} s after the writes); healing"
    ));

    let all: Vec<usize> = (0..n).collect();
    let healed = Instant::now();
    cluster.net.heal();
    let deadline = Duration::from_secs(60);
    let (mut membership, mut convergence) = (None, None);
    let mut polls = 0u64;
    while membership.is_none() || convergence.is_none() {
        if convergence.is_none() && all_heads_equal(cluster, &all) {
            convergence = Some(healed.elapsed());
        }
        // Liveness reads hydrate the machines map: look less often.
        if membership.is_none()
            && polls.is_multiple_of(10)
            && all.iter().all(|&i| alive(cluster.node(i)) == n)
        {
            membership = Some(healed.elapsed());
        }
        polls += 1;
        if healed.elapsed() > deadline {
            bail!(
                "stated: not healed within {deadline:?}: membership {membership:?}, \
                 convergence {convergence:?}"
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let state = cluster.node(n - 1).state();
    let have = state
        .services
        .keys()
        .filter(|k| k.starts_with("heal-"))
        .count();
    if have != 2 * writes {
        bail!(
            "stated: after healing, {} holds {have} of {} services",
            cluster.ids[n - 1],
            2 * writes
        );
    }
    Ok(HealResult {
        membership_ms: ms(membership),
        convergence_ms: ms(convergence),
        write_s,
        down_wait_s,
    })
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// A node cut off from the rest while they make `changes` writes (service deploys: the
/// document's kind of change, each one kept in its history): the time from healing until it
/// holds them all.
pub async fn catch_up(n: usize, changes: usize, gossip_interval_ms: u64) -> Result<f64> {
    let (cluster, _) = start(n, gossip_interval_ms).await?;
    let result = catch_up_on(&cluster, changes).await;
    shutdown(cluster).await;
    result
}

async fn catch_up_on(cluster: &Cluster, changes: usize) -> Result<f64> {
    let n = cluster.ids.len();
    let off = n - 1;
    cluster
        .net
        .partition(&[cluster.group(0..off), cluster.group(off..n)]);
    progress(format!(
        "stated: {} cut off; {changes} writes on the other {off} nodes",
        cluster.ids[off]
    ));
    let connected: Vec<usize> = (0..off).collect();
    spread_writes(cluster, &connected, changes, |k| format!("catch-up-{k}")).await?;
    let deadline = Duration::from_secs(300);
    let t = Instant::now();
    while !all_heads_equal(cluster, &connected) {
        if t.elapsed() > deadline {
            bail!("stated: the connected nodes did not converge within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let everyone: Vec<usize> = (0..n).collect();
    let healed = Instant::now();
    cluster.net.heal();
    while !all_heads_equal(cluster, &everyone) {
        if healed.elapsed() > deadline {
            bail!("stated: the node that was cut off did not catch up within {deadline:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    let services = cluster.node(off).state().services.len();
    if services < changes {
        bail!("stated: caught up with {services} services of {changes}");
    }
    Ok(healed.elapsed().as_secs_f64() * 1000.0)
}

/// Writes `count` containers, spread over the nodes (each writes its own), and waits until
/// every node holds them all.
pub async fn containers(cluster: &Cluster, count: usize) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    let n = cluster.ids.len();
    let mut tasks = Vec::new();
    for i in 0..n {
        let shared = cluster.node(i).shared().clone();
        let ids: Vec<usize> = (i..count).step_by(n).collect();
        tasks.push(tokio::spawn(async move {
            for k in ids {
                let c = container(&shared.machine_id, k);
                shared
                    .mutate(Mutation::UpsertContainer(c))
                    .await
                    .with_context(|| format!("writing container {k}"))?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let deadline = Duration::from_secs(120);
    let t = Instant::now();
    while !(0..n).all(|i| cluster.node(i).state().containers.len() == count) {
        if t.elapsed() > deadline {
            bail!("stated: not every node holds {count} containers after {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A container record as dockerd-shim writes one: a service's replica with its address.
pub fn container(machine_id: &str, k: usize) -> uncloud_common::model::Container {
    uncloud_common::model::Container {
        id: format!("{k:064x}"),
        machine_id: machine_id.to_string(),
        name: format!("web-{k}"),
        service_id: "web.shop".into(),
        image: "registry.example/shop/web:1.4.2".into(),
        ip: format!("10.210.{}.{}", k / 250 % 250 + 1, k % 250 + 2),
        state: uncloud_common::model::ContainerState::Running,
        healthy: true,
        revision: 3,
        image_digest: format!("sha256:{:064x}", k * 7919),
        created_at_ms: 1_796_000_000_000 + k as u64,
        started_at_ms: 1_796_000_000_500 + k as u64,
        ..Default::default()
    }
}

/// `count` service deploys named by `name`, spread over `nodes`, one writer task per node,
/// all at once; returns when every one is acknowledged.
async fn spread_writes(
    cluster: &Cluster,
    nodes: &[usize],
    count: usize,
    name: impl Fn(usize) -> String,
) -> Result<()> {
    let mut tasks = Vec::new();
    for (slot, &i) in nodes.iter().enumerate() {
        let shared = cluster.node(i).shared().clone();
        let ids: Vec<String> = (slot..count).step_by(nodes.len()).map(&name).collect();
        let image = format!("img:{}", cluster.ids[i]);
        tasks.push(tokio::spawn(async move {
            for id in ids {
                shared
                    .mutate(Mutation::UpsertService(Box::new(service(&id, &image))))
                    .await
                    .with_context(|| format!("writing {id}"))?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

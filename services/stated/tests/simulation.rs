//! A seeded simulation of a network going wrong: 20 real nodes in one process, and round after
//! round a random schedule of partitions, one-way cuts, lost messages, node restarts and
//! concurrent writers (some deploying the same service on both sides, each starting and
//! stopping its own containers). After every heal all nodes must hold one state, with every
//! acknowledged write and exactly the containers their machines hold, by a deadline; else the
//! seed and what each node misses are printed.
//!
//! CI runs `STATED_SIM_ROUNDS` rounds (default 24) with a fresh seed each time (printed, and
//! taken from `STATED_SIM_SEED` to replay one). The soak, by hand:
//!
//! ```sh
//! STATED_SIM_ROUNDS=2000 cargo test --release -p stated --test simulation -- --nocapture
//! ```
//!
//! reports how many rounds diverged; the goal is none.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use stated::document::Mutation;
use support::{service, Cluster};
use uncloud_common::model::{Container, ContainerState};

const NODES: usize = 20;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// What one round did, for the report when it fails.
#[derive(Debug, Default)]
struct Round {
    groups: Vec<Vec<usize>>,
    one_way: Vec<(usize, usize)>,
    loss: f64,
    restarted: Vec<usize>,
    writes: usize,
    refused: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_failures_always_heal_into_one_state() {
    let rounds = env_u64("STATED_SIM_ROUNDS").unwrap_or(24);
    let seed = env_u64("STATED_SIM_SEED").unwrap_or_else(rand::random);
    eprintln!("simulation: {NODES} nodes, {rounds} rounds, seed {seed} (STATED_SIM_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = support::cluster_with(NODES, |c| {
        // Production defaults are for real networks; in one process on two cores the
        // detector and the safety net are tightened so a round takes seconds.
        c.anti_entropy_interval_ms = 3_000;
    })
    .await;
    cluster
        .settled(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: the cluster did not form: {e}"));

    // Unique services every acknowledged write must leave behind; shared ones may be
    // redeployed or removed by anyone.
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    // Each machine is the only writer of its containers: after a heal every node must hold
    // exactly these (container id -> writer), whatever happened in between.
    let mut containers: BTreeMap<String, usize> = BTreeMap::new();
    let mut diverged = 0u64;
    let started = Instant::now();
    for r in 0..rounds {
        let mut round = Round::default();
        let mut ids: Vec<usize> = (0..NODES).collect();
        ids.shuffle(&mut rng);

        // The failures of this round.
        match rng.random_range(0..4) {
            0 => {}
            1 | 2 => {
                let parts = rng.random_range(2..=3);
                let mut groups = vec![Vec::new(); parts];
                for (k, i) in ids.iter().enumerate() {
                    groups[k % parts].push(*i);
                }
                let named: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| g.iter().map(|&i| cluster.ids[i].clone()).collect())
                    .collect();
                cluster.net.partition(&named);
                round.groups = groups;
            }
            _ => {
                for _ in 0..rng.random_range(1..=5) {
                    let (a, b) = (
                        ids[rng.random_range(0..NODES)],
                        ids[rng.random_range(0..NODES)],
                    );
                    if a != b {
                        cluster.net.cut_one_way(&cluster.ids[a], &cluster.ids[b]);
                        round.one_way.push((a, b));
                    }
                }
            }
        }
        if rng.random_bool(0.5) {
            round.loss = rng.random_range(0.01..0.2);
            cluster.net.set_loss(round.loss, rng.random());
        }
        if rng.random_bool(0.3) {
            let i = rng.random_range(0..NODES);
            if let Some(node) = cluster.nodes[i].take() {
                node.shutdown().await;
            }
            round.restarted.push(i);
        }

        // Concurrent writers on every side.
        let writers: Vec<usize> = ids
            .iter()
            .copied()
            .filter(|i| cluster.nodes[*i].is_some())
            .take(rng.random_range(2..8))
            .collect();
        let mut plans = Vec::new();
        for &w in &writers {
            let mut ops = Vec::new();
            for k in 0..rng.random_range(1..6) {
                let mine: Vec<&String> = containers
                    .iter()
                    .filter(|(_, owner)| **owner == w)
                    .map(|(id, _)| id)
                    .collect();
                let op = match rng.random_range(0..14) {
                    0..=5 => Op::Unique(format!("r{r}-n{w}-{k}")),
                    6..=8 => Op::Deploy(
                        format!("shared-{}", rng.random_range(0..4)),
                        format!("img:{}", rng.random_range(0..1000)),
                    ),
                    9 => Op::Remove(format!("shared-{}", rng.random_range(0..4))),
                    10 | 11 => Op::Start(format!("c-r{r}-n{w}-{k}")),
                    _ if !mine.is_empty() => {
                        Op::Stop(mine[rng.random_range(0..mine.len())].clone())
                    }
                    _ => Op::Start(format!("c-r{r}-n{w}-{k}")),
                };
                if let Op::Stop(id) = &op {
                    if ops.contains(&op) {
                        continue;
                    }
                    containers.remove(id);
                }
                ops.push(op);
            }
            plans.push((w, ops));
        }
        let results = futures::future::join_all(plans.iter().map(|(w, ops)| {
            let node = cluster.node(*w);
            async move {
                let mut out = Vec::new();
                for op in ops {
                    let mutation = match op {
                        Op::Unique(id) => {
                            Mutation::UpsertService(Box::new(service(id, "img:unique")))
                        }
                        Op::Deploy(id, image) => {
                            Mutation::UpsertService(Box::new(service(id, image)))
                        }
                        Op::Remove(id) => Mutation::RemoveService(id.clone()),
                        Op::Start(id) => Mutation::UpsertContainer(Container {
                            id: id.clone(),
                            machine_id: node.machine_id.clone(),
                            name: id.clone(),
                            state: ContainerState::Running,
                            healthy: true,
                            ..Default::default()
                        }),
                        Op::Stop(id) => Mutation::RemoveContainer(id.clone()),
                    };
                    out.push((*w, op.clone(), node.mutate(mutation).await));
                }
                out
            }
        }))
        .await;
        for (w, op, result) in results.into_iter().flatten() {
            round.writes += 1;
            match (op, result) {
                (Op::Unique(id), Ok(())) => {
                    acknowledged.insert(id);
                }
                (Op::Start(id), Ok(())) => {
                    containers.insert(id, w);
                }
                (Op::Start(_) | Op::Stop(_), Err(e)) => {
                    panic!("seed {seed}: a machine could not write its own container: {e}")
                }
                (_, Ok(())) => {}
                // Removing a shared service this side never saw: refused, nothing to check.
                (_, Err(_)) => round.refused += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;

        // Heal, bring back who was down, and demand one state.
        cluster.net.heal();
        for &i in &round.restarted {
            let node = cluster.start_node(i).await;
            cluster.nodes[i] = Some(node);
        }
        let expected: BTreeMap<String, String> = containers
            .iter()
            .map(|(id, &w)| (id.clone(), cluster.ids[w].clone()))
            .collect();
        let verdict = one_state(&cluster, &acknowledged, &expected, Duration::from_secs(45)).await;
        if let Err(e) = verdict {
            diverged += 1;
            eprintln!("seed {seed}, round {r} diverged after {round:?}:\n{e}");
            if std::env::var("STATED_SIM_ROUNDS").is_err() {
                panic!("seed {seed}, round {r}: nodes did not converge after the heal");
            }
        }
    }
    eprintln!(
        "simulation: {rounds} rounds in {:?}, {diverged} diverged, {} unique writes acknowledged (seed {seed})",
        started.elapsed(),
        acknowledged.len()
    );
    assert_eq!(
        diverged, 0,
        "seed {seed}: {diverged} of {rounds} rounds diverged"
    );
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    /// Deploy a service only this write names: it must exist after every heal.
    Unique(String),
    /// Deploy a shared service, which other writers may deploy or remove concurrently.
    Deploy(String, String),
    Remove(String),
    /// Start or stop one of the writer's own containers (its table).
    Start(String),
    Stop(String),
}

/// Waits until every node has the same heads and the same state (settling writes after a
/// merge included), holding every acknowledged unique write.
async fn one_state(
    cluster: &Cluster,
    acknowledged: &BTreeSet<String>,
    containers: &BTreeMap<String, String>,
    deadline: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        cluster.all_converged(left).await?;
        let states: BTreeMap<String, Vec<usize>> =
            cluster.running().fold(BTreeMap::new(), |mut m, (i, node)| {
                m.entry(serde_json::to_string(&node.state()).unwrap())
                    .or_default()
                    .push(i);
                m
            });
        if states.len() == 1 {
            let state = cluster.node(0).state();
            let missing: Vec<&String> = acknowledged
                .iter()
                .filter(|id| !state.services.contains_key(*id))
                .take(10)
                .collect();
            if !missing.is_empty() {
                return Err(format!("acknowledged writes lost everywhere: {missing:?}"));
            }
            let held: BTreeMap<String, String> = state
                .containers
                .iter()
                .map(|(id, c)| (id.clone(), c.machine_id.clone()))
                .collect();
            if &held != containers {
                return Err(format!(
                    "the containers differ from what their machines wrote: held {} expected {}",
                    held.len(),
                    containers.len()
                ));
            }
            return Ok(());
        }
        if start.elapsed() > deadline {
            return Err(format!(
                "same heads but {} different states: {:?}",
                states.len(),
                states.values().collect::<Vec<_>>()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

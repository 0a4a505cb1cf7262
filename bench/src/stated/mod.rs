//! The `stated` benchmark: propagation latency, convergence after a healed partition, idle
//! traffic and resident memory of real stated nodes in one process, each beside a plain
//! chitchat cluster doing the same with gossip alone (see [`reference`]).

pub mod markdown;
pub mod reference;
pub mod rss;
pub mod subject;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use rand::SeedableRng;

use crate::progress;
use crate::report::{write_json, Metric, Results, Target};
use crate::stats::{percentile, summary_ms};

/// Longest wait for one write to reach every node.
pub(crate) const SAMPLE_DEADLINE: Duration = Duration::from_secs(30);
/// Poll period while timing a heal.
pub(crate) const POLL: Duration = Duration::from_millis(5);

/// The parts of a run, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Propagation,
    Heal,
    CatchUp,
    Memory,
}

/// Sizes and counts of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// What to run (all by default).
    pub parts: Vec<Part>,
    pub quick: bool,
    pub seed: u64,
    pub gossip_interval_ms: u64,
    /// (nodes, writes timed) for propagation.
    pub propagation: Vec<(usize, usize)>,
    /// Node counts (among the propagation ones) whose idle traffic is measured afterwards.
    pub idle_nodes: Vec<usize>,
    pub idle_window: Duration,
    /// Node counts of the healed partitions.
    pub heal_nodes: Vec<usize>,
    pub heal_writes_per_side: usize,
    /// Healed partitions per side and size (fresh cluster each); the median is reported,
    /// with min and max.
    pub heal_runs: usize,
    /// (nodes, changes missed) of the catch-up runs, and how many of each.
    pub catch_up: (usize, usize),
    pub catch_up_runs: usize,
    pub rss_nodes: Vec<usize>,
    /// Containers written in the memory probes, for the cost per 1,000.
    pub rss_containers: usize,
}

impl Plan {
    /// The full run: production gossip interval (1000 ms) and the sizes.
    pub fn full(seed: u64) -> Plan {
        let c = stated::config::Config::default();
        Plan {
            parts: vec![Part::Propagation, Part::Heal, Part::CatchUp, Part::Memory],
            quick: false,
            seed,
            gossip_interval_ms: c.gossip_interval_ms,
            propagation: [3, 10, 50, 100]
                .into_iter()
                .map(|n| (n, Plan::propagation_samples(n)))
                .collect(),
            idle_nodes: vec![10, 50],
            // One anti-entropy period, so every node's periodic sync round counts exactly once.
            idle_window: Duration::from_millis(c.anti_entropy_interval_ms),
            heal_nodes: vec![10, 50],
            heal_writes_per_side: 1000,
            heal_runs: 5,
            catch_up: (10, 10_000),
            catch_up_runs: 5,
            rss_nodes: vec![10, 50],
            rss_containers: 1000,
        }
    }

    /// Writes timed at `n` nodes in a full run: fewer on big clusters, where each one costs
    /// a node's sessions with every peer.
    pub fn propagation_samples(n: usize) -> usize {
        match n {
            0..=10 => 100,
            11..=50 => 50,
            _ => 30,
        }
    }

    /// A smoke run of under a minute: small counts, 200 ms gossip.
    pub fn quick(seed: u64) -> Plan {
        Plan {
            parts: vec![Part::Propagation, Part::Heal, Part::CatchUp, Part::Memory],
            quick: true,
            seed,
            gossip_interval_ms: 200,
            propagation: vec![(3, 10), (5, 10)],
            idle_nodes: vec![5],
            idle_window: Duration::from_secs(5),
            heal_nodes: vec![4],
            heal_writes_per_side: 50,
            heal_runs: 1,
            catch_up: (4, 200),
            catch_up_runs: 1,
            rss_nodes: vec![5],
            rss_containers: 100,
        }
    }

    pub fn gossip_interval(&self) -> Duration {
        Duration::from_millis(self.gossip_interval_ms)
    }
}

/// Traffic sent per node and second while nothing is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct Idle {
    pub gossip: f64,
    pub sync: f64,
}

impl Idle {
    pub fn total(&self) -> f64 {
        self.gossip + self.sync
    }
}

/// How long a stated cluster took to settle after starting all its nodes at once.
#[derive(Debug, Clone, Copy)]
pub struct Startup {
    pub nodes: usize,
    pub settle_s: f64,
    /// tarpc error events meanwhile (sync RPCs past their deadline; gossip brings the next session).
    pub rpc_errors: u64,
}

/// One healed partition.
#[derive(Debug, Clone, Copy)]
pub struct HealResult {
    /// From heal until every node sees every node alive.
    pub membership_ms: f64,
    /// From heal until every node holds every write.
    pub convergence_ms: f64,
    /// How long the writes took during the partition.
    pub write_s: f64,
    /// How long after the writes until each side converged and saw the other dead.
    pub down_wait_s: f64,
}

/// Everything measured, for the report.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub propagation: Vec<(usize, Vec<f64>, Vec<f64>)>,
    pub idle: Vec<(usize, Idle, Idle)>,
    pub startup: Vec<Startup>,
    pub heal: Vec<(usize, Vec<HealResult>, Vec<HealResult>)>,
    /// (nodes, changes, stated ms per run, reference ms per run).
    pub catch_up: Option<(usize, usize, Vec<f64>, Vec<f64>)>,
    pub rss: Vec<(rss::Probe, rss::Probe)>,
}

/// The targets of issues 2 and 13.
pub fn targets() -> Vec<Target> {
    vec![
        Target::new(
            "propagation_p99_ms_10_nodes",
            100.0,
            "p99 propagation under 100 ms at 10 nodes",
        ),
        Target::new(
            "propagation_p99_ms_50_nodes",
            1000.0,
            "p99 propagation under 1 s at 50 nodes",
        ),
        Target::new(
            "heal_convergence_ms_10_nodes",
            2000.0,
            "convergence after healing a 50/50 partition (1000 writes per side) under 2 s at 10 nodes",
        ),
        Target::new(
            "heal_convergence_ms_50_nodes",
            2000.0,
            "convergence after healing a 50/50 partition (1000 writes per side) under 2 s at 50 nodes",
        ),
        Target::new(
            "memory_per_peer_bytes",
            30.0 * 1024.0,
            "memory per additional peer under 30 KiB",
        ),
        Target::new(
            "idle_bytes_per_node_per_s_50_nodes",
            5000.0,
            "idle gossip+sync traffic under 5 KB/s (5000 B/s) per node at 50 nodes",
        ),
    ]
}

/// Runs every scenario, stated then its reference, and writes `stated.json` and `stated.md`.
pub async fn run(plan: &Plan, out_dir: &Path, command: &str) -> Result<Results> {
    // Described before the run: the build it measures is closer in time than the end.
    let workspace = crate::workspace();
    let machine = crate::sys::Machine::describe(&workspace);
    let mut m = Measured::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(plan.seed);
    if plan.parts.contains(&Part::Propagation) {
        for &(n, samples) in &plan.propagation {
            size(plan, n, samples, &mut rng, &mut m).await?;
        }
    }
    if plan.parts.contains(&Part::Heal) {
        for &n in &plan.heal_nodes {
            heal(plan, n, &mut m).await?;
        }
    }
    if plan.parts.contains(&Part::CatchUp) {
        catch_up(plan, &mut m).await?;
    }
    if plan.parts.contains(&Part::Memory) {
        for &n in &plan.rss_nodes {
            memory(plan, n, &mut m).await?;
        }
    }

    let results = results(&m);
    std::fs::create_dir_all(out_dir)?;
    let json = out_dir.join("stated.json");
    write_json(&json, &results)?;
    let md = out_dir.join("stated.md");
    std::fs::write(&md, markdown::render(plan, &m, &results, command, &machine))?;
    progress(format!("wrote {} and {}", json.display(), md.display()));
    Ok(results)
}

/// Propagation at `n` nodes, then idle traffic on the same clusters if the plan asks for it.
async fn size(
    plan: &Plan,
    n: usize,
    samples: usize,
    rng: &mut rand::rngs::StdRng,
    m: &mut Measured,
) -> Result<()> {
    let g = plan.gossip_interval_ms;
    let with_idle = plan.idle_nodes.contains(&n);
    progress(format!(
        "== propagation at {n} nodes ({samples} writes), stated"
    ));
    let (cluster, startup) = subject::start(n, g).await?;
    m.startup.push(startup);
    let ours = subject::propagation(&cluster, samples, rng).await;
    let ours_idle = if ours.is_ok() && with_idle {
        tokio::time::sleep(plan.gossip_interval() * 3).await;
        progress(format!(
            "== idle traffic at {n} nodes over {:?}, stated",
            plan.idle_window
        ));
        Some(subject::idle(&cluster, plan.idle_window).await)
    } else {
        None
    };
    subject::shutdown(cluster).await;
    let ours = ours?;
    progress(format!("stated at {n} nodes: {}", summary_ms(&ours)));

    progress(format!(
        "== propagation at {n} nodes ({samples} writes), chitchat reference"
    ));
    let cluster = reference::RefCluster::start(n, g).await?;
    let theirs = cluster
        .propagation(samples, rng, plan.gossip_interval())
        .await;
    let theirs_idle = if theirs.is_ok() && with_idle {
        tokio::time::sleep(plan.gossip_interval() * 3).await;
        progress(format!(
            "== idle traffic at {n} nodes over {:?}, chitchat reference",
            plan.idle_window
        ));
        Some(cluster.idle(plan.idle_window).await)
    } else {
        None
    };
    cluster.shutdown().await;
    let theirs = theirs?;
    progress(format!("chitchat at {n} nodes: {}", summary_ms(&theirs)));

    if let (Some(a), Some(b)) = (ours_idle, theirs_idle) {
        progress(format!(
            "idle at {n} nodes: stated {:.0} B/s per node, chitchat {:.0} B/s per node",
            a.total(),
            b.total()
        ));
        m.idle.push((n, a, b));
    }
    m.propagation.push((n, ours, theirs));
    Ok(())
}

/// Healed partitions at `n` nodes, alternating stated and the reference on fresh clusters.
async fn heal(plan: &Plan, n: usize, m: &mut Measured) -> Result<()> {
    let (w, g) = (plan.heal_writes_per_side, plan.gossip_interval_ms);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 1..=plan.heal_runs {
        let of = plan.heal_runs;
        progress(format!(
            "== healed partition {run}/{of} at {n} nodes ({w} writes per side), stated"
        ));
        let r = subject::heal(n, w, g).await?;
        progress(format!(
            "stated: converged {:.0} ms after heal (all alive after {:.0} ms)",
            r.convergence_ms, r.membership_ms
        ));
        ours.push(r);
        progress(format!(
            "== healed partition {run}/{of} at {n} nodes ({w} writes per side), chitchat reference"
        ));
        let r = reference::heal(n, w, g).await?;
        progress(format!(
            "chitchat: converged {:.0} ms after heal (all alive after {:.0} ms)",
            r.convergence_ms, r.membership_ms
        ));
        theirs.push(r);
    }
    m.heal.push((n, ours, theirs));
    Ok(())
}

/// A node cut off while the others make many writes, then healed, alternating sides.
async fn catch_up(plan: &Plan, m: &mut Measured) -> Result<()> {
    let ((n, changes), g) = (plan.catch_up, plan.gossip_interval_ms);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 1..=plan.catch_up_runs {
        let of = plan.catch_up_runs;
        progress(format!(
            "== catch-up {run}/{of}: 1 of {n} nodes misses {changes} writes, stated"
        ));
        let ms = subject::catch_up(n, changes, g).await?;
        progress(format!("stated: caught up {ms:.0} ms after the heal"));
        ours.push(ms);
        progress(format!(
            "== catch-up {run}/{of}: 1 of {n} nodes misses {changes} writes, chitchat reference"
        ));
        let ms = reference::catch_up(n, changes, g).await?;
        progress(format!("chitchat: caught up {ms:.0} ms after the heal"));
        theirs.push(ms);
    }
    m.catch_up = Some((n, changes, ours, theirs));
    Ok(())
}

/// Resident memory of `n` nodes, each side in its own child process.
async fn memory(plan: &Plan, n: usize, m: &mut Measured) -> Result<()> {
    let g = plan.gossip_interval_ms;
    let deadline = Duration::from_secs(300);
    progress(format!(
        "== resident memory at {n} nodes, stated (child process)"
    ));
    let c = plan.rss_containers;
    let ours = rss::measure(rss::Kind::Stated, n, g, c, deadline).await?;
    progress(format!(
        "== resident memory at {n} nodes, chitchat reference (child process)"
    ));
    let theirs = rss::measure(rss::Kind::Chitchat, n, g, c, deadline).await?;
    progress(format!(
        "RSS per node at {n} nodes: stated {:.0} B, chitchat {:.0} B",
        ours.per_node(),
        theirs.per_node()
    ));
    m.rss.push((ours, theirs));
    Ok(())
}

/// Median by nearest rank of one field of several heal runs.
pub fn median(runs: &[HealResult], field: impl Fn(&HealResult) -> f64) -> f64 {
    let v: Vec<f64> = runs.iter().map(field).collect();
    percentile(&v, 0.5).unwrap_or(f64::NAN)
}

/// The JSON metrics from what was measured.
pub fn results(m: &Measured) -> Results {
    let mut r = Results::new();
    for (n, ours, theirs) in &m.propagation {
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            let p = |s: &[f64]| percentile(s, q).unwrap_or(f64::NAN);
            r.insert(
                format!("propagation_{name}_ms_{n}_nodes"),
                Metric::new(p(ours), p(theirs), "ms"),
            );
        }
    }
    for (n, ours, theirs) in &m.idle {
        r.insert(
            format!("idle_bytes_per_node_per_s_{n}_nodes"),
            Metric::new(ours.total(), theirs.total(), "B/s"),
        );
    }
    for (n, ours, theirs) in &m.heal {
        let all = |runs: &[HealResult], f: fn(&HealResult) -> f64| -> Vec<f64> {
            runs.iter().map(f).collect()
        };
        let conv = |h: &HealResult| h.convergence_ms;
        let memb = |h: &HealResult| h.membership_ms;
        r.insert(
            format!("heal_convergence_ms_{n}_nodes"),
            Metric::spread(&all(ours, conv), &all(theirs, conv), "ms"),
        );
        r.insert(
            format!("heal_membership_ms_{n}_nodes"),
            Metric::spread(&all(ours, memb), &all(theirs, memb), "ms"),
        );
    }
    if let Some((_, changes, ours, theirs)) = &m.catch_up {
        r.insert(
            format!("catch_up_ms_{changes}_changes"),
            Metric::spread(ours, theirs, "ms"),
        );
    }
    for (ours, theirs) in &m.rss {
        r.insert(
            format!("rss_bytes_per_node_{}_nodes", ours.nodes),
            Metric::new(ours.per_node(), theirs.per_node(), "B"),
        );
        if ours.containers > 0 {
            r.insert(
                format!(
                    "rss_bytes_per_node_per_1000_containers_{}_nodes",
                    ours.nodes
                ),
                Metric::new(
                    ours.per_node_per_1000_containers(),
                    theirs.per_node_per_1000_containers(),
                    "B",
                ),
            );
        }
    }
    if let Some((a, b)) = per_peer_slope(&m.rss) {
        r.insert("memory_per_peer_bytes".into(), Metric::new(a, b, "B"));
    }
    r
}

/// What one more peer costs a node (stated, reference): the difference of per-node memory
/// between the smallest and largest probe, per added peer.
pub fn per_peer_slope(rss: &[(rss::Probe, rss::Probe)]) -> Option<(f64, f64)> {
    let [(a_ours, a_ref), .., (b_ours, b_ref)] = rss else {
        return None;
    };
    let peers = b_ours.nodes.checked_sub(a_ours.nodes).filter(|p| *p > 0)? as f64;
    let slope = |a: &rss::Probe, b: &rss::Probe| (b.per_node() - a.per_node()) / peers;
    Some((slope(a_ours, b_ours), slope(a_ref, b_ref)))
}

//! `uncloud-soak`: the network story's power cut and partition, again and again, for as long
//! as asked (an hour by default), on three VMs from the built amd64 image; then a report of
//! the cycles survived and the acknowledged writes lost (the goal: none).
//!
//! Each cycle is one of:
//! - **a power cut**: a stream of writes (`uc machine label`) through one machine, whose
//!   power is cut (QEMU killed, the disk cache mode passes the guest's flushes through) 0.5 to
//!   8 s after its first acknowledged write; it boots again cut off from the others, so what
//!   it shows is what its own disk kept: every write of the run it acknowledged must be there.
//!   Then the links come back and every machine must hold every acknowledged write of the run,
//!   all three alive.
//! - **a partition**: one machine cut off from the other two for a random 5 to 30 s while
//!   both sides take writes; after the heal every machine must hold every acknowledged write
//!   of the run, all three alive.
//!
//! Every check covers every acknowledged write of the run, not only the cycle's: per label
//! key, the last acknowledged value or a later one (a later write whose acknowledgement was
//! lost in a power cut may have landed). A cycle with no acknowledged write (on either side
//! of a partition) fails, so a run where nothing is written cannot pass.
//!
//! The choices come from `--seed` (printed, so a run can be repeated). A cycle that does not
//! converge within 5 minutes ends the run as a failure; the VMs' consoles are kept in
//! `$UNCLOUD_VM_LOGS` (default `/tmp/uncloud-vm-logs`). SIGTERM (`kill PID`) ends the run
//! after the cycle under way, with the report. Ctrl-C in the terminal also reaches QEMU and
//! `uc` (same process group), so the cycle under way then fails; use `kill`.
//!
//! Needs root and the images (`image/build`, or `UNCLOUD_IMAGE_DIR`); see tests/README.md.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uncloud_e2e::network::{all_alive, Lan, Node};
use uncloud_qemu::seed::write_uncloud_file;
use uncloud_testkit::up;

#[derive(Debug, Parser)]
#[command(
    about = "Power cuts and partitions on a network of three VMs, over and over; reports the \
             cycles survived and the acknowledged writes lost (needs root and the images)"
)]
struct Args {
    /// How long to keep cutting power and links, in minutes from the network formed (the
    /// cycle under way finishes).
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Seed of the random choices (which machine, when); default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// Where to write the report (JSON); it is also printed.
    #[arg(long)]
    out: Option<PathBuf>,
}

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];

/// How long a cycle may take to converge after the links come back.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(300);

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

/// What one cycle did.
#[derive(Debug, serde::Serialize)]
struct Cycle {
    n: u32,
    kind: &'static str,
    /// The machine whose power was cut, or the one on its own side of the partition.
    machine: &'static str,
    /// Seconds from the first acknowledged write to the cut, or of the partition.
    seconds: f64,
    acknowledged: usize,
    /// Acknowledged writes (this cycle's or earlier) missing on the machine itself right
    /// after its power came back, cut off from its peers.
    lost_on_reboot: Vec<String>,
    /// Acknowledged writes (this cycle's or earlier) missing in a view when the cycle
    /// ended; each write once, whatever the number of views it is missing from.
    lost: Vec<String>,
    /// Seconds from the heal until every machine held every acknowledged write of the run,
    /// all three alive.
    converged_s: Option<f64>,
    failure: Option<String>,
}

impl Cycle {
    fn new(n: u32, kind: &'static str, machine: &'static str) -> Cycle {
        Cycle {
            n,
            kind,
            machine,
            seconds: 0.0,
            acknowledged: 0,
            lost_on_reboot: Vec::new(),
            lost: Vec::new(),
            converged_s: None,
            failure: None,
        }
    }
}

/// The whole run.
#[derive(Debug, serde::Serialize)]
struct Report {
    seed: u64,
    minutes_asked: u64,
    /// From the network formed to the last cycle's end.
    minutes_run: f64,
    /// Cycles that ended with every write kept and the network converged.
    cycles_survived: usize,
    power_cuts: usize,
    partitions: usize,
    acknowledged_writes: usize,
    /// Distinct acknowledged writes found missing at any check of the run.
    acknowledged_writes_lost: usize,
    converged_median_s: Option<f64>,
    converged_max_s: Option<f64>,
    failed: bool,
    cycle_log: Vec<Cycle>,
}

/// A write: machine `on`'s label `key` set to `c<cycle>`.
#[derive(Debug, Clone)]
struct Write {
    on: &'static str,
    key: String,
    cycle: u32,
}

impl Write {
    /// Acknowledged or not; a write still in flight when `stop` is set is not.
    fn send(&self, lan: &Lan, endpoint: &str, stop: &AtomicBool) -> bool {
        lan.uc
            .run_unless(
                &[
                    "machine",
                    "label",
                    self.on,
                    &format!("{}=c{}", self.key, self.cycle),
                    "--endpoint",
                    endpoint,
                ],
                stop,
            )
            .is_some_and(|out| out.status.success())
    }
}

/// Every acknowledged write of the run: per (machine, key), the cycle of the last one
/// acknowledged. A view keeps it if it holds that cycle's value or a later one (a later
/// write of the key may have landed without its acknowledgement reaching us).
#[derive(Default)]
struct Acknowledged(BTreeMap<(&'static str, String), u32>);

impl Acknowledged {
    fn add(&mut self, writes: &[Write]) {
        for w in writes {
            let cycle = self.0.entry((w.on, w.key.clone())).or_insert(w.cycle);
            *cycle = (*cycle).max(w.cycle);
        }
    }

    /// The writes `rows` (one view, `uc machine ls`) does not keep.
    fn missing_in(&self, rows: &[serde_json::Value]) -> Vec<String> {
        self.0
            .iter()
            .filter(|((on, key), cycle)| {
                let held = rows
                    .iter()
                    .find(|r| r["name"] == *on)
                    .and_then(|r| r["labels"][key.as_str()].as_str())
                    .and_then(|v| v.strip_prefix('c'))
                    .and_then(|v| v.parse::<u32>().ok());
                held.is_none_or(|h| h < **cycle)
            })
            .map(|((on, key), cycle)| format!("{on}:{key}=c{cycle}"))
            .collect()
    }
}

/// Polls `check` every second until it holds (how long it took) or `deadline` passes.
fn poll(deadline: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Whether every machine sees all three alive and keeps every acknowledged write.
fn converged(lan: &Lan, nodes: &[Node], acked: &Acknowledged) -> bool {
    nodes.iter().all(|n| {
        lan.machines_seen_by(n)
            .is_some_and(|rows| all_alive(&rows, &NAMES) && acked.missing_in(&rows).is_empty())
    })
}

/// Writes through `endpoint` until `stop`, one label key per write (`{prefix}{i}`), each
/// value naming the cycle; returns the acknowledged ones.
fn write_stream(
    lan: &Lan,
    on: &'static str,
    endpoint: &str,
    prefix: &str,
    cycle: u32,
    stop: &AtomicBool,
    count: &AtomicUsize,
) -> Vec<Write> {
    let mut acknowledged = Vec::new();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let w = Write {
            on,
            key: format!("{prefix}{i}"),
            cycle,
        };
        if w.send(lan, endpoint, stop) {
            acknowledged.push(w);
            count.fetch_add(1, Ordering::Relaxed);
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    acknowledged
}

/// Sets `stop` however a scope ends, so a writer never outlives a failed step.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A power cut of `nodes[victim]` at a random moment of a stream of writes through it.
fn power_cut(
    lan: &Lan,
    nodes: &mut [Node],
    victim: usize,
    cycle: &mut Cycle,
    acked: &mut Acknowledged,
    rng: &mut StdRng,
) {
    let name = nodes[victim].name;
    let endpoint = nodes[victim].endpoint();
    let stop = AtomicBool::new(false);
    let writing = Duration::from_millis(rng.random_range(500..=8000));
    let n = cycle.n;
    let count = AtomicUsize::new(0);
    let writes = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let writer = s.spawn(|| write_stream(lan, name, &endpoint, "w", n, &stop, &count));
        // From the first acknowledged write, so the cut lands inside the stream.
        poll(Duration::from_secs(120), || {
            count.load(Ordering::Relaxed) > 0
        });
        let first = Instant::now();
        std::thread::sleep(writing);
        nodes[victim].crash();
        cycle.seconds = first.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    });
    cycle.acknowledged = writes.len();
    acked.add(&writes);
    if writes.is_empty() {
        cycle.failure = Some(format!("no write through {name} was acknowledged"));
    }
    // Back on cut off from its peers: what it shows is what its own disk kept.
    {
        let (alone, others): (Vec<&Node>, Vec<&Node>) = nodes.iter().partition(|x| x.name == name);
        lan.partition(&alone, &others);
    }
    nodes[victim].power_on();
    let mut own_view = None;
    poll(Duration::from_secs(120), || {
        own_view = lan.machines_seen_by(&nodes[victim]);
        own_view.is_some()
    });
    match own_view {
        Some(rows) => {
            cycle.lost_on_reboot = acked.missing_in(&rows);
            if !cycle.lost_on_reboot.is_empty() {
                cycle.failure = Some(format!(
                    "{} acknowledged writes missing on {name} when its power came back",
                    cycle.lost_on_reboot.len()
                ));
            }
        }
        None => {
            cycle.failure = Some(format!("{name} does not answer 2 min after its banner"));
        }
    }
    lan.heal();
    settle(lan, nodes, cycle, acked);
}

/// `nodes[alone]` cut off from the other two for a random while, both sides writing.
fn partition(
    lan: &Lan,
    nodes: &[Node],
    alone: usize,
    cycle: &mut Cycle,
    acked: &mut Acknowledged,
    rng: &mut StdRng,
) {
    let name = nodes[alone].name;
    let other = (alone + rng.random_range(1..nodes.len())) % nodes.len();
    {
        let (one, rest): (Vec<&Node>, Vec<&Node>) = nodes.iter().partition(|x| x.name == name);
        lan.partition(&one, &rest);
    }
    let hold = Duration::from_millis(rng.random_range(5000..=30000));
    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let (ep_alone, ep_other) = (nodes[alone].endpoint(), nodes[other].endpoint());
    let other_name = nodes[other].name;
    let n = cycle.n;
    let count = AtomicUsize::new(0);
    let (a, b) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let a = s.spawn(|| write_stream(lan, name, &ep_alone, "pa", n, &stop, &count));
        let b = s.spawn(|| write_stream(lan, other_name, &ep_other, "pb", n, &stop, &count));
        std::thread::sleep(hold);
        stop.store(true, Ordering::Relaxed);
        (a.join().unwrap(), b.join().unwrap())
    });
    cycle.seconds = started.elapsed().as_secs_f64();
    cycle.acknowledged = a.len() + b.len();
    acked.add(&a);
    acked.add(&b);
    if a.is_empty() || b.is_empty() {
        cycle.failure = Some(format!(
            "a side took no write: {} through {name}, {} through {other_name}",
            a.len(),
            b.len()
        ));
    }
    lan.heal();
    settle(lan, nodes, cycle, acked);
}

/// Waits for every machine to keep every acknowledged write of the run, all alive; says
/// which writes are missing where it did not happen in time.
fn settle(lan: &Lan, nodes: &[Node], cycle: &mut Cycle, acked: &Acknowledged) {
    cycle.converged_s =
        poll(CONVERGE_DEADLINE, || converged(lan, nodes, acked)).map(|d| d.as_secs_f64());
    if cycle.converged_s.is_some() {
        return;
    }
    let mut lost = BTreeSet::new();
    let mut silent = Vec::new();
    for node in nodes {
        match lan.machines_seen_by(node) {
            Some(rows) => lost.extend(acked.missing_in(&rows)),
            None => silent.push(node.name),
        }
    }
    cycle.lost = lost.into_iter().collect();
    cycle.failure.get_or_insert(format!(
        "not converged within {CONVERGE_DEADLINE:?}: {} acknowledged writes missing in a view, \
         not answering: {silent:?} (or a machine not alive in every view)",
        cycle.lost.len()
    ));
}

fn run() -> Result<bool, String> {
    let args = Args::parse();
    up::require_root("uncloud-soak")?;
    // SIGTERM (and SIGINT, which in a terminal also reaches the VMs) ends the run after the
    // cycle under way (every thread started from here on has them blocked; this one waits).
    let stop_signals = up::block_stop_signals();
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let stopping = stopping.clone();
        std::thread::spawn(move || {
            let _ = stop_signals.wait();
            eprintln!("stopping after the cycle under way");
            stopping.store(true, Ordering::Relaxed);
        });
    }
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let say = |what: &str| eprintln!("[{:>7.1}s] {what}", started.elapsed().as_secs_f64());
    say(&format!(
        "seed {seed} (--seed {seed} repeats these choices); booting three VMs"
    ));

    let lan = Lan::new();
    let token = |name: &str| format!("{name}-soak-token-0123456789");
    let mut nodes: Vec<Node> = NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            lan.boot(
                name,
                Ipv4Addr::new(198, 18, 0, 21 + i as u8),
                &write_uncloud_file("setup-token", &token(name)),
            )
        })
        .collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        let banner = node.wait_for_banner();
        let verb = if i == 0 { "init" } else { "add" };
        let words = banner
            .command(verb)
            .ok_or_else(|| format!("{}'s banner shows no `uc machine {verb}`", node.name))?;
        lan.uc
            .ok(&words.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let mut acked = Acknowledged::default();
    let formed = poll(Duration::from_secs(300), || converged(&lan, &nodes, &acked));
    if formed.is_none() {
        let logs = uncloud_qemu::vm::logs_dir();
        for node in &nodes {
            let _ = node.vm.save_console(&logs);
        }
        return Err(format!(
            "the three machines did not all see each other alive within 5 min (consoles in {})",
            logs.display()
        ));
    }
    say("the network is formed: alpha, bravo, charlie");

    let mut log: Vec<Cycle> = Vec::new();
    let soak_started = Instant::now();
    let deadline = Duration::from_secs(args.minutes * 60);
    let mut n = 0;
    while soak_started.elapsed() < deadline && !stopping.load(Ordering::Relaxed) {
        n += 1;
        let machine = rng.random_range(0..NAMES.len());
        let cut = rng.random_bool(0.5);
        let mut cycle = Cycle::new(
            n,
            if cut { "power cut" } else { "partition" },
            NAMES[machine],
        );
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if cut {
                power_cut(&lan, &mut nodes, machine, &mut cycle, &mut acked, &mut rng)
            } else {
                partition(&lan, &nodes, machine, &mut cycle, &mut acked, &mut rng)
            }
        }));
        if let Err(panic) = ran {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            cycle.failure = Some(why);
        }
        say(&format!(
            "cycle {n}: {} of {} ({:.1} s): {} acknowledged, {} missing on its own disk, {}{}",
            cycle.kind,
            cycle.machine,
            cycle.seconds,
            cycle.acknowledged,
            cycle.lost_on_reboot.len(),
            cycle.converged_s.map_or("not converged".to_string(), |s| {
                format!("converged {s:.1} s after the heal")
            }),
            cycle
                .failure
                .as_deref()
                .map_or(String::new(), |f| format!(": FAILED: {f}"))
        ));
        let failed = cycle.failure.is_some();
        log.push(cycle);
        if failed {
            break;
        }
    }

    let mut converge: Vec<f64> = log.iter().filter_map(|c| c.converged_s).collect();
    converge.sort_by(f64::total_cmp);
    let lost: BTreeSet<&String> = log
        .iter()
        .flat_map(|c| c.lost.iter().chain(&c.lost_on_reboot))
        .collect();
    let report = Report {
        seed,
        minutes_asked: args.minutes,
        minutes_run: soak_started.elapsed().as_secs_f64() / 60.0,
        cycles_survived: log.iter().filter(|c| c.failure.is_none()).count(),
        power_cuts: log.iter().filter(|c| c.kind == "power cut").count(),
        partitions: log.iter().filter(|c| c.kind == "partition").count(),
        acknowledged_writes: log.iter().map(|c| c.acknowledged).sum(),
        acknowledged_writes_lost: lost.len(),
        converged_median_s: converge.get(converge.len() / 2).copied(),
        converged_max_s: converge.last().copied(),
        failed: log.iter().any(|c| c.failure.is_some()),
        cycle_log: log,
    };
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{text}\n"))
            .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    }
    let logs = uncloud_qemu::vm::logs_dir();
    for node in &nodes {
        let _ = node.vm.save_console(&logs);
    }
    say(&format!(
        "{} cycles survived of {} ({} power cuts, {} partitions), {} acknowledged writes, {} \
         lost; converged after a heal in {} s median, {} s at most{}",
        report.cycles_survived,
        report.cycle_log.len(),
        report.power_cuts,
        report.partitions,
        report.acknowledged_writes,
        report.acknowledged_writes_lost,
        report
            .converged_median_s
            .map_or("-".into(), |s| format!("{s:.1}")),
        report
            .converged_max_s
            .map_or("-".into(), |s| format!("{s:.1}")),
        if report.failed {
            format!(": FAILED (consoles in {})", logs.display())
        } else {
            String::new()
        }
    ));
    Ok(!report.failed && report.acknowledged_writes_lost == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(on: &'static str, key: &str, cycle: u32) -> Write {
        Write {
            on,
            key: key.into(),
            cycle,
        }
    }

    fn view(labels: serde_json::Value) -> Vec<serde_json::Value> {
        vec![
            serde_json::json!({"name": "alpha", "labels": labels}),
            serde_json::json!({"name": "bravo", "labels": {}}),
        ]
    }

    #[test]
    fn a_view_keeps_a_write_with_its_value_or_a_later_one() {
        let mut acked = Acknowledged::default();
        acked.add(&[write("alpha", "w0", 3), write("alpha", "w1", 3)]);
        // w1's later write (cycle 4) landed though its acknowledgement was lost.
        assert!(acked
            .missing_in(&view(serde_json::json!({"w0": "c3", "w1": "c4"})))
            .is_empty());
        // An earlier value, a missing key, or a machine missing from the view: lost.
        assert_eq!(
            acked.missing_in(&view(serde_json::json!({"w0": "c2"}))),
            ["alpha:w0=c3", "alpha:w1=c3"]
        );
        assert_eq!(
            acked.missing_in(&[serde_json::json!({"name": "bravo", "labels": {}})]),
            ["alpha:w0=c3", "alpha:w1=c3"]
        );
    }

    #[test]
    fn the_last_acknowledged_cycle_of_a_key_is_the_one_checked() {
        let mut acked = Acknowledged::default();
        acked.add(&[write("alpha", "w0", 5)]);
        acked.add(&[write("alpha", "w0", 2)]);
        acked.add(&[write("bravo", "w0", 1)]);
        assert_eq!(
            acked.missing_in(&view(serde_json::json!({"w0": "c4"}))),
            ["alpha:w0=c5", "bravo:w0=c1"]
        );
        assert_eq!(
            acked.missing_in(&view(serde_json::json!({"w0": "garbage"}))),
            ["alpha:w0=c5", "bravo:w0=c1"]
        );
    }
}

//! `uncloud-soak`: the network story's power cut and partition, again and again, for as long
//! as asked (an hour by default), on three VMs from the built amd64 image; then a report of
//! the cycles survived and the acknowledged writes lost (the goal: none).
//!
//! Each cycle is one of:
//! - **a power cut**: a stream of writes (`uc machine label`) through one machine, whose
//!   power is cut (QEMU killed, the disk cache mode passes the guest's flushes through) at a
//!   random moment of the stream; it boots again cut off from the others, so what it shows is
//!   what its own disk kept: every write it acknowledged must be there. Then the links come
//!   back and every machine must hold those writes, all three alive.
//! - **a partition**: one machine cut off from the other two for a random 5 to 30 s while
//!   both sides take writes; after the heal every machine must hold every acknowledged write
//!   of both sides, all three alive.
//!
//! The choices come from `--seed` (printed, so a run can be repeated). A cycle that does not
//! converge within 5 minutes ends the run as a failure; the VMs' consoles are kept in
//! `$UNCLOUD_VM_LOGS` (default `/tmp/uncloud-vm-logs`). Ctrl-C or SIGTERM ends the run after
//! the cycle under way, with the report.
//!
//! Needs root and the images (`image/build`, or `UNCLOUD_IMAGE_DIR`); see tests/README.md.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use uncloud_e2e::network::{all_alive, Lan, Node};
use uncloud_qemu::seed::write_uncloud_file;
use uncloud_testkit::up;

#[derive(Debug, Parser)]
#[command(
    about = "Power cuts and partitions on a network of three VMs, over and over; reports the \
             cycles survived and the acknowledged writes lost (needs root and the images)"
)]
struct Args {
    /// How long to keep cutting power and links, in minutes (the cycle under way finishes).
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

/// SplitMix64: enough randomness to pick machines and moments, repeatable from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A duration between `lo` and `hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
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
    /// Acknowledged writes missing on the machine itself right after its power came back.
    lost_on_reboot: Vec<String>,
    /// Acknowledged writes missing anywhere when the cycle ended.
    lost: Vec<String>,
    /// Seconds from the heal until every machine held every write, all alive.
    converged_s: Option<f64>,
    failure: Option<String>,
}

/// The whole run.
#[derive(Debug, serde::Serialize)]
struct Report {
    seed: u64,
    minutes_asked: u64,
    minutes_run: f64,
    cycles: usize,
    power_cuts: usize,
    partitions: usize,
    acknowledged_writes: usize,
    acknowledged_writes_lost: usize,
    converged_median_s: Option<f64>,
    converged_max_s: Option<f64>,
    failed: bool,
    cycle_log: Vec<Cycle>,
}

/// A write: machine `on`'s label `key` set to `value`, sent through `through`.
#[derive(Debug, Clone)]
struct Write {
    on: &'static str,
    key: String,
    value: String,
}

impl Write {
    fn send(&self, lan: &Lan, endpoint: &str) -> bool {
        lan.uc
            .run(&[
                "machine",
                "label",
                self.on,
                &format!("{}={}", self.key, self.value),
                "--endpoint",
                endpoint,
            ])
            .status
            .success()
    }

    fn held_in(&self, rows: &[serde_json::Value]) -> bool {
        rows.iter()
            .find(|r| r["name"] == self.on)
            .and_then(|r| r["labels"][&self.key].as_str())
            == Some(self.value.as_str())
    }

    fn name(&self) -> String {
        format!("{}:{}={}", self.on, self.key, self.value)
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

/// The writes of `writes` missing from `node`'s view (all of them when it does not answer).
fn missing(lan: &Lan, node: &Node, writes: &[Write]) -> Vec<String> {
    match lan.machines_seen_by(node) {
        Some(rows) => writes
            .iter()
            .filter(|w| !w.held_in(&rows))
            .map(Write::name)
            .collect(),
        None => writes.iter().map(Write::name).collect(),
    }
}

/// Whether every machine sees all three alive and holds every write.
fn converged(lan: &Lan, nodes: &[Node], writes: &[Write]) -> bool {
    nodes.iter().all(|n| {
        lan.machines_seen_by(n)
            .is_some_and(|rows| all_alive(&rows, &NAMES) && writes.iter().all(|w| w.held_in(&rows)))
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
    acknowledged: &Mutex<Vec<Write>>,
) {
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let w = Write {
            on,
            key: format!("{prefix}{i}"),
            value: format!("c{cycle}"),
        };
        if w.send(lan, endpoint) {
            acknowledged.lock().unwrap().push(w);
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A power cut of `nodes[victim]` at a random moment of a stream of writes through it.
fn power_cut(lan: &Lan, nodes: &mut [Node], victim: usize, n: u32, rng: &mut Rng) -> Cycle {
    let name = nodes[victim].name;
    let endpoint = nodes[victim].endpoint();
    let acknowledged = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let writing = rng.millis(500, 8000);
    let mut seconds = 0.0;
    std::thread::scope(|s| {
        let writer = s.spawn(|| write_stream(lan, name, &endpoint, "w", n, &stop, &acknowledged));
        // From the first acknowledged write, so the cut lands inside the stream.
        poll(Duration::from_secs(120), || {
            !acknowledged.lock().unwrap().is_empty()
        });
        let first = Instant::now();
        std::thread::sleep(writing);
        nodes[victim].crash();
        seconds = first.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    });
    let writes = acknowledged.into_inner().unwrap();
    // Back on cut off from its peers: what it shows is what its own disk kept.
    {
        let (alone, others): (Vec<&Node>, Vec<&Node>) = nodes.iter().partition(|x| x.name == name);
        lan.partition(&alone, &others);
    }
    nodes[victim].power_on();
    let answers = poll(Duration::from_secs(120), || {
        lan.machines_seen_by(&nodes[victim]).is_some()
    });
    if answers.is_none() {
        lan.heal();
        return Cycle {
            n,
            kind: "power cut",
            machine: name,
            seconds,
            acknowledged: writes.len(),
            lost_on_reboot: Vec::new(),
            lost: Vec::new(),
            converged_s: None,
            failure: Some(format!("{name} does not answer 2 min after its banner")),
        };
    }
    let lost_on_reboot = missing(lan, &nodes[victim], &writes);
    lan.heal();
    let converged_in = poll(CONVERGE_DEADLINE, || converged(lan, nodes, &writes));
    finish(
        lan,
        nodes,
        Cycle {
            n,
            kind: "power cut",
            machine: name,
            seconds,
            acknowledged: writes.len(),
            lost_on_reboot,
            lost: Vec::new(),
            converged_s: converged_in.map(|d| d.as_secs_f64()),
            failure: None,
        },
        &writes,
    )
}

/// `nodes[alone]` cut off from the other two for a random while, both sides writing.
fn partition(lan: &Lan, nodes: &[Node], alone: usize, n: u32, rng: &mut Rng) -> Cycle {
    let name = nodes[alone].name;
    let other = (alone + 1 + rng.below(2) as usize) % nodes.len();
    let (one, rest): (Vec<&Node>, Vec<&Node>) = nodes.iter().partition(|x| x.name == name);
    lan.partition(&one, &rest);
    let hold = rng.millis(5000, 30000);
    let started = Instant::now();
    let acknowledged = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let (ep_alone, ep_other) = (nodes[alone].endpoint(), nodes[other].endpoint());
    let other_name = nodes[other].name;
    std::thread::scope(|s| {
        let a = s.spawn(|| write_stream(lan, name, &ep_alone, "pa", n, &stop, &acknowledged));
        let b = s.spawn(|| write_stream(lan, other_name, &ep_other, "pb", n, &stop, &acknowledged));
        std::thread::sleep(hold);
        stop.store(true, Ordering::Relaxed);
        a.join().unwrap();
        b.join().unwrap();
    });
    let seconds = started.elapsed().as_secs_f64();
    let writes = acknowledged.into_inner().unwrap();
    lan.heal();
    let converged_in = poll(CONVERGE_DEADLINE, || converged(lan, nodes, &writes));
    finish(
        lan,
        nodes,
        Cycle {
            n,
            kind: "partition",
            machine: name,
            seconds,
            acknowledged: writes.len(),
            lost_on_reboot: Vec::new(),
            lost: Vec::new(),
            converged_s: converged_in.map(|d| d.as_secs_f64()),
            failure: None,
        },
        &writes,
    )
}

/// Fills in what is still missing where when the cycle did not converge.
fn finish(lan: &Lan, nodes: &[Node], mut cycle: Cycle, writes: &[Write]) -> Cycle {
    if cycle.converged_s.is_none() {
        let mut lost: Vec<String> = nodes
            .iter()
            .flat_map(|node| {
                missing(lan, node, writes)
                    .into_iter()
                    .map(move |w| format!("{w} (on {})", node.name))
            })
            .collect();
        lost.sort();
        cycle.failure = Some(format!(
            "not converged within {CONVERGE_DEADLINE:?}: {} missing somewhere, or a machine not \
             alive in every view",
            lost.len()
        ));
        cycle.lost = lost;
    }
    if cycle.lost.is_empty() && !cycle.lost_on_reboot.is_empty() {
        cycle.failure = Some(format!(
            "{} acknowledged writes missing on {} when its power came back",
            cycle.lost_on_reboot.len(),
            cycle.machine
        ));
    }
    cycle
}

fn run() -> Result<bool, String> {
    let args = Args::parse();
    up::require_root("uncloud-soak")?;
    // Ctrl-C and SIGTERM end the run after the cycle under way (every thread started from
    // here on has them blocked; this one waits for them).
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
    let mut rng = Rng(seed);
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
    let formed = poll(Duration::from_secs(300), || converged(&lan, &nodes, &[]));
    if formed.is_none() {
        return Err("the three machines did not all see each other alive within 5 min".into());
    }
    say("the network is formed: alpha, bravo, charlie");

    let mut log: Vec<Cycle> = Vec::new();
    let deadline = Duration::from_secs(args.minutes * 60);
    let mut n = 0;
    while started.elapsed() < deadline && !stopping.load(Ordering::Relaxed) {
        n += 1;
        let machine = rng.below(NAMES.len() as u64) as usize;
        let cut = rng.below(2) == 0;
        let cycle = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if cut {
                power_cut(&lan, &mut nodes, machine, n, &mut rng)
            } else {
                partition(&lan, &nodes, machine, n, &mut rng)
            }
        }))
        .unwrap_or_else(|panic| {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Cycle {
                n,
                kind: if cut { "power cut" } else { "partition" },
                machine: NAMES[machine],
                seconds: 0.0,
                acknowledged: 0,
                lost_on_reboot: Vec::new(),
                lost: Vec::new(),
                converged_s: None,
                failure: Some(why),
            }
        });
        say(&format!(
            "cycle {n}: {} of {} ({:.1} s): {} acknowledged, {} lost on its own disk, {}{}",
            cycle.kind,
            cycle.machine,
            cycle.seconds,
            cycle.acknowledged,
            cycle.lost_on_reboot.len(),
            cycle
                .converged_s
                .map_or("not converged".to_string(), |s| format!(
                    "converged {s:.1} s after the heal"
                )),
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
    let report = Report {
        seed,
        minutes_asked: args.minutes,
        minutes_run: started.elapsed().as_secs_f64() / 60.0,
        cycles: log.iter().filter(|c| c.failure.is_none()).count(),
        power_cuts: log.iter().filter(|c| c.kind == "power cut").count(),
        partitions: log.iter().filter(|c| c.kind == "partition").count(),
        acknowledged_writes: log.iter().map(|c| c.acknowledged).sum(),
        acknowledged_writes_lost: log
            .iter()
            .map(|c| c.lost.len().max(c.lost_on_reboot.len()))
            .sum(),
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
        "{} cycles survived ({} power cuts, {} partitions), {} acknowledged writes, {} lost; \
         converged after a heal in {} s median, {} s at most{}",
        report.cycles,
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

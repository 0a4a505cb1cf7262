//! `apid-bench`: how long `uc machine add` takes until the new machine is alive in every
//! machine's state and reachable over the mesh (p50, p99 over many joins, growing one network
//! machine by machine), `uc machine ls` beside the floor of a local `busctl` call that reads
//! the same state, and apid's resident memory. Machines are network namespaces running the
//! real daemons (`uncloud_testkit::network`). Written to `bench/results/apid.{json,md}`.
//! Needs root.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use uncloud_bench::report::{fmt_num, line, write_json, Metric, Results};
use uncloud_bench::stats::{min_max, percentile};
use uncloud_bench::sys::{rss_of, workspace_binary, Machine};
use uncloud_bench::{progress, uc};
use uncloud_testkit::network::{Binaries, LocalNetwork};

#[derive(Parser)]
#[command(about = "Benchmark joining machines with uc and apid (needs root)")]
struct Args {
    /// 3 joins and 5 calls, for a smoke test. Results go to a temp dir unless --out is given.
    #[arg(long)]
    quick: bool,
    /// Directory for apid.json and .md. Default: bench/results (a temp dir with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The targets, used as the reference where no other program does the same job here.
const JOIN_TARGET_S: f64 = 5.0;
const RSS_TARGET_MIB: f64 = 10.0;

fn main() -> Result<()> {
    let args = Args::parse();
    let (joins, calls) = if args.quick { (3, 5) } else { (10, 20) };
    let out = uncloud_bench::out_dir(args.out.clone(), args.quick);
    std::fs::create_dir_all(&out)?;
    let mut dir = None;
    for p in ["stated", "meshd", "dnsd", "apid", "uncloud-firstboot", "uc"] {
        dir = Some(workspace_binary(p)?.parent().unwrap().to_owned());
    }
    let bins = Binaries { dir: dir.unwrap() };
    let mut net = LocalNetwork::new(bins);

    progress("booting the first machine and creating the network");
    let first = net.boot("m0", None);
    uc(&net, &net.machines[first].enrol("init"))?;

    let mut join_s = Vec::new();
    for j in 1..=joins {
        let name = format!("m{j}");
        let i = net.boot(&name, None);
        let started = Instant::now();
        let mut add = net.machines[i].enrol("add");
        add.extend(["--endpoint".to_string(), net.machines[0].api()]);
        uc(&net, &add)?;
        let id = net.machines[i].machine_id();
        wait(started, || {
            net.machines.iter().all(|m| m.sees_alive(&id))
                && net.machines[..i].iter().all(|m| {
                    m.mesh_ip()
                        .is_some_and(|ip| net.machines[i].ns.ping(&ip, 1))
                })
        })?;
        let took = started.elapsed().as_secs_f64();
        progress(format!(
            "{name} joined, alive everywhere and reachable in {took:.2} s"
        ));
        join_s.push(took);
    }

    progress("uc machine ls and uc machine ls -m all against busctl GetState on the same machine");
    let first_api = net.machines[0].api();
    let mut ls_ms = Vec::new();
    let mut fan_ms = Vec::new();
    let mut busctl_ms = Vec::new();
    for _ in 0..calls {
        let t = Instant::now();
        uc(
            &net,
            &[
                "machine",
                "ls",
                "-m",
                "all",
                "-o",
                "json",
                "--endpoint",
                &first_api,
            ],
        )?;
        fan_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        uc(
            &net,
            &["machine", "ls", "-o", "json", "--endpoint", &first_api],
        )?;
        ls_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let (ok, _, err) = net.machines[0].busctl(&[
            "call",
            "org.uncloud.State1",
            "/org/uncloud/State1",
            "org.uncloud.State1",
            "GetState",
        ]);
        if !ok {
            bail!("busctl GetState failed: {err}");
        }
        busctl_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let rss_mib: Vec<f64> = net
        .machines
        .iter()
        .filter_map(|m| m.apid.as_ref())
        .map(|d| rss_of(d.pid()) as f64 / 1048576.0)
        .collect();

    let mut results = Results::new();
    let p50 = percentile(&join_s, 0.5).unwrap();
    let p99 = percentile(&join_s, 0.99).unwrap();
    results.insert("join_p50".into(), Metric::precise(p50, JOIN_TARGET_S, "s"));
    results.insert("join_p99".into(), Metric::precise(p99, JOIN_TARGET_S, "s"));
    let ls = percentile(&ls_ms, 0.5).unwrap();
    let floor = percentile(&busctl_ms, 0.5).unwrap();
    results.insert("machine_ls_p50".into(), Metric::new(ls, floor, "ms"));
    let fan = percentile(&fan_ms, 0.5).unwrap();
    results.insert("fan_out_all_p50".into(), Metric::new(fan, floor, "ms"));
    let rss = percentile(&rss_mib, 0.5).unwrap();
    results.insert("apid_rss".into(), Metric::new(rss, RSS_TARGET_MIB, "MiB"));
    write_json(&out.join("apid.json"), &results)?;

    let workspace = uncloud_bench::workspace();
    let mut md = String::new();
    line(
        &mut md,
        "# apid: joining machines, `uc machine ls` (also `-m all`), memory\n",
    );
    line(
        &mut md,
        format!(
            "Command: `{}` (as root).\n",
            uncloud_bench::command_line("apid-bench")
        ),
    );
    line(&mut md, "## How\n");
    line(
        &mut md,
        format!(
            "One network grown machine by machine to {} machines, each a network namespace on a \
         private bridge running the real `uncloud-firstboot`, `stated`, `meshd`, `dnsd` and `apid` \
         (built with the benchmark's profile: see Machine); `uc` runs in another namespace. A join is timed from the start of \
         `uc machine add` (ticket from the first machine, `join` on the new one, redeem, state \
         handed over) until every machine's stated reports the new machine alive and the new \
         machine pings every earlier one over the mesh. No other program forms such a network \
         here, so the join and memory figures stand beside the issue's targets ({JOIN_TARGET_S} s, \
         {RSS_TARGET_MIB} MiB) as references. `uc machine ls` (a process, TLS with a client \
         certificate, the call, the table) is timed beside the floor of `busctl call … GetState` \
         on the same machine (a process and a D-Bus call reading the same state), and so is \
         `uc machine ls -m all` (the first machine answers for itself and asks every other one \
         over the mesh at once; each answers with its own view).\n",
            joins + 1
        ),
    );
    line(&mut md, "## Results\n");
    line(
        &mut md,
        "| metric | value | reference | ratio | min | max | samples |",
    );
    line(&mut md, "|---|---|---|---|---|---|---|");
    let mm =
        |v: &[f64]| min_max(v).map_or(("-".into(), "-".into()), |(a, b)| (fmt_num(a), fmt_num(b)));
    for (name, samples) in [
        ("join_p50", &join_s),
        ("join_p99", &join_s),
        ("machine_ls_p50", &ls_ms),
        ("fan_out_all_p50", &fan_ms),
        ("apid_rss", &rss_mib),
    ] {
        let r = &results[name];
        let (lo, hi) = mm(samples);
        line(
            &mut md,
            format!(
                "| {name} | {} {} | {} | {} | {lo} | {hi} | {} |",
                fmt_num(r.value),
                r.unit,
                fmt_num(r.reference),
                fmt_num(r.ratio),
                samples.len()
            ),
        );
    }
    let (blo, bhi) = mm(&busctl_ms);
    line(
        &mut md,
        format!(
            "\nThe busctl floor: median {} ms (min {blo}, max {bhi}).\n",
            fmt_num(floor)
        ),
    );
    line(&mut md, "## Machine\n");
    line(&mut md, Machine::describe(&workspace).markdown_list());
    std::fs::write(out.join("apid.md"), md)?;
    progress(format!("written to {}", out.display()));
    uncloud_bench::report::print(&results);
    Ok(())
}

fn wait(started: Instant, mut done: impl FnMut() -> bool) -> Result<()> {
    while !done() {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("a machine did not join within 120 s");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(())
}

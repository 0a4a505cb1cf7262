//! `dnsd-bench`: dnsd beside dnsmasq and unbound (queries per second, latency at a fixed rate,
//! forwarded names from a warm cache, state change to answer, memory), written to
//! `bench/results/dnsd.{json,md}`. Needs root (a local network of namespaces).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use uncloud_bench::dnsd::{run, verdicts, Plan};
use uncloud_bench::progress;

#[derive(Parser)]
#[command(
    about = "Benchmark dnsd against dnsmasq and unbound with dnsperf, on one machine of a local network (needs root)"
)]
struct Args {
    /// Short runs, for a smoke test. Results go to a temp dir unless --out is given.
    #[arg(long)]
    quick: bool,
    /// Directory for dnsd.json and dnsd.md. Default: bench/results (a temp dir with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Names each server holds, instead of the plan's (1000; 100 with --quick).
    #[arg(long)]
    names: Option<usize>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    uncloud_bench::logs::init();
    let plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    let mut plan = plan;
    if let Some(n) = args.names {
        plan.names = n.max(1);
    }
    let out = uncloud_bench::out_dir(args.out.clone(), args.quick);
    let command = uncloud_bench::command_line("dnsd-bench");
    progress(format!("plan: {plan:?}"));
    let results = run(&plan, &out, &command)?;
    if plan.quick {
        progress("quick smoke run: figures are not judged against the targets");
    } else {
        for (what, ok) in verdicts(&results) {
            progress(format!(
                "target: {what}: {}",
                if ok { "PASS" } else { "FAIL" }
            ));
        }
    }
    Ok(())
}

//! `ingressd-bench`: ingressd beside Caddy 2.6 and nginx 1.22 (requests per second over
//! HTTP/1.1, HTTPS and HTTP/2, latency at a fixed rate, CPU per 1,000 requests, memory, time
//! from a healthy container to routed), written to `bench/results/ingressd.{json,md}`. Needs
//! root (a local network of namespaces).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use uncloud_bench::ingressd::{run, verdicts, Plan};
use uncloud_bench::progress;

#[derive(Parser)]
#[command(
    about = "Benchmark ingressd against Caddy and nginx with wrk and h2load, on one machine of a local network (needs root)"
)]
struct Args {
    /// Short runs, for a smoke test. Results go to a temp dir unless --out is given.
    #[arg(long)]
    quick: bool,
    /// Directory for ingressd.json and ingressd.md. Default: bench/results (a temp dir with
    /// --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Set up and start every proxy, print where they listen, then wait until stdin closes
    /// instead of measuring (to profile one by hand, e.g. with `perf record -p PID` while wrk
    /// runs in the printed namespace).
    #[arg(long)]
    hold: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    uncloud_bench::logs::init();
    let plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    let plan = Plan {
        hold: args.hold,
        ..plan
    };
    let out = uncloud_bench::out_dir(args.out.clone(), args.quick);
    let command = uncloud_bench::command_line("ingressd-bench");
    progress(format!("plan: {plan:?}"));
    let results = run(&plan, &out, &command)?;
    if plan.hold {
        return Ok(());
    }
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

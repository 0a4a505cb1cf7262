//! `meshd-bench`: throughput, latency, CPU per GB and memory of meshd beside wireguard-go
//! (and the plain veth path), written to `bench/results/meshd.{json,md}`. Needs root.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use uncloud_bench::meshd::{run_bench, Plan};
use uncloud_bench::progress;

#[derive(Parser)]
#[command(
    about = "Benchmark meshd against wireguard-go and plain veth between two network namespaces (needs root)"
)]
struct Args {
    /// Short runs, for a smoke test of a minute. Results go to a temp dir unless --out is given.
    #[arg(long)]
    quick: bool,
    /// Directory for meshd.json and meshd.md. Default: bench/results (a temp dir with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    uncloud_bench::logs::init();
    let plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    let out = uncloud_bench::out_dir(args.out.clone(), args.quick);
    let command = uncloud_bench::command_line("meshd-bench");
    progress(format!("plan: {plan:?}"));
    let results = run_bench(&plan, &out, &command).await?;
    if plan.quick {
        progress("quick smoke run: figures are not judged against the target");
    } else if let Some(r) = results.get("tcp_throughput_mbit_s") {
        progress(format!(
            "target: meshd throughput at least wireguard-go's: {} (ratio {:.3})",
            if r.ratio >= 1.0 { "PASS" } else { "FAIL" },
            r.ratio
        ));
    }
    Ok(())
}

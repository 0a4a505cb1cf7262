//! `dockerd-shim-bench`: request to running and to visible in the state, for one container and
//! a batch, beside the docker CLI; the shim's memory beside dockerd's. Written to
//! `bench/results/dockerd-shim.{json,md}`. Needs root (it starts its own dockerd).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use uncloud_bench::progress;
use uncloud_bench::shim::{run_bench, Plan};

#[derive(Parser)]
#[command(
    about = "Benchmark dockerd-shim against the docker CLI on a private dockerd (needs root)"
)]
struct Args {
    /// A few runs and a batch of 5, for a smoke test. Results go to a temp dir unless --out
    /// is given.
    #[arg(long)]
    quick: bool,
    /// Directory for dockerd-shim.json and .md. Default: bench/results (a temp dir with --quick).
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
    let command = uncloud_bench::command_line("dockerd-shim-bench");
    progress(format!("plan: {plan:?}"));
    let results = run_bench(&plan, &out, &command).await?;
    for (name, r) in &results {
        progress(format!(
            "{name}: {} vs {} {} (ratio {:.3})",
            r.value, r.reference, r.unit, r.ratio
        ));
    }
    Ok(())
}

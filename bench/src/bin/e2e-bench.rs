//! `e2e-bench`: the network on the real image, in QEMU VMs on one segment: boot to joined
//! with a ticket beside boot to ready, the daemons' memory beside Docker's, convergence after
//! a partition heals beside the mesh coming back. Written to `bench/results/e2e.{json,md}`.
//! Needs the images (`image/build`) and `uc` built beside it in the same profile
//! (`cargo build --release -p uc`), or `$UNCLOUD_UC`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use uncloud_bench::e2e::{run_bench, Plan};
use uncloud_bench::progress;

#[derive(Parser)]
#[command(
    about = "Benchmark a network of VMs from the real image: joining, memory, convergence after a partition"
)]
struct Args {
    /// One join, one memory sample, one partition, for a smoke test. Results go to a temp dir
    /// unless --out is given.
    #[arg(long)]
    quick: bool,
    /// Where image/build wrote the images. Default: image/out.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Directory for e2e.json and .md. Default: bench/results (a temp dir with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    uncloud_bench::logs::init();
    let plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if let Some(images) = &args.images {
        // The harness finds the image there (single-threaded still: nothing else reads the
        // environment yet).
        std::env::set_var("UNCLOUD_IMAGE_DIR", std::fs::canonicalize(images)?);
    }
    let out = uncloud_bench::out_dir(args.out, args.quick);
    let command = uncloud_bench::command_line("e2e-bench");
    progress(format!("plan: {plan:?}"));
    let results = run_bench(&plan, &out, &command)?;
    uncloud_bench::report::print(&results);
    Ok(())
}

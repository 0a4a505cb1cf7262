//! `image-bench`: boot-to-ready of the built images under QEMU TCG beside the same images with
//! Uncloud masked, and the compressed image size. Written to `bench/results/image.{json,md}`.
//! Needs the images (`image/build`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use uncloud_bench::image::{run_bench, Plan};
use uncloud_bench::progress;

#[derive(Parser)]
#[command(
    about = "Benchmark the images' boot to ready under QEMU TCG against plain Debian boots of the same images"
)]
struct Args {
    /// One amd64 UEFI boot of each kind, for a smoke test. Results go to a temp dir unless
    /// --out is given.
    #[arg(long)]
    quick: bool,
    /// Boots of each kind per figure (default: 5, or 1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Only these cases, comma-separated: amd64_uefi, amd64_uefi_cloud_init, amd64_bios,
    /// arm64_uefi, arm64_raspi3b (image.json then holds only their figures).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where image/build wrote the images. Default: image/out.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Directory for image.json and .md. Default: bench/results (a temp dir with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    uncloud_bench::logs::init();
    let mut plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if let Some(runs) = args.runs {
        anyhow::ensure!(runs > 0, "--runs must be at least 1");
        plan.runs = runs;
    }
    plan.only = args.only;
    let images = args
        .images
        .unwrap_or_else(|| uncloud_bench::workspace().join("image/out"));
    let images = std::fs::canonicalize(&images).unwrap_or(images);
    let out = uncloud_bench::out_dir(args.out, args.quick);
    let command = uncloud_bench::command_line("image-bench");
    progress(format!("plan: {plan:?}"));
    let results = run_bench(&plan, &images, &out, &command)?;
    for (name, r) in &results {
        progress(format!(
            "{name}: {} vs {} {} (ratio {:.3})",
            r.value, r.reference, r.unit, r.ratio
        ));
    }
    Ok(())
}

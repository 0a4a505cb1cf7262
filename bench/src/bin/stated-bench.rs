//! `stated-bench`: propagation, healed-partition convergence, idle traffic and memory of
//! `stated`, each beside a plain chitchat cluster, written to `bench/results/stated.{json,md}`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use uncloud_bench::stated::{self, rss, Plan};
use uncloud_bench::{progress, report::Verdict};

#[derive(Parser)]
#[command(
    about = "Benchmark stated against a gossip-only chitchat reference, in one process on loopback"
)]
struct Args {
    /// Small counts and 200 ms gossip, for a smoke run of a minute or two. Results go to a
    /// temp dir unless --out is given.
    #[arg(long)]
    quick: bool,
    /// Directory for stated.json and stated.md. Default: bench/results (or a temp dir with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of the random choices (which node writes, timing jitter).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Internal: measure resident memory of one cluster in this process and print it.
    #[arg(long, hide = true)]
    rss_probe: Option<String>,
    #[arg(long, hide = true, default_value_t = 50)]
    nodes: usize,
    #[arg(long, hide = true, default_value_t = 1000)]
    gossip_ms: u64,
    #[arg(long, hide = true, default_value_t = 0)]
    containers: usize,
    /// Run only these parts (comma-separated): propagation, heal, catch-up, memory.
    #[arg(long, value_delimiter = ',')]
    only: Vec<stated::Part>,
    /// Node counts of the healed partitions (comma-separated), instead of the plan's.
    #[arg(long, value_delimiter = ',')]
    heal_nodes: Vec<usize>,
    /// Node counts of the propagation runs (comma-separated), instead of the plan's.
    #[arg(long, value_delimiter = ',')]
    propagation_nodes: Vec<usize>,
    /// Runs per side of each healed partition and catch-up, instead of the plan's.
    #[arg(long)]
    runs: Option<usize>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    uncloud_bench::logs::init();
    if let Some(kind) = &args.rss_probe {
        uncloud_bench::set_progress_label(&format!("{kind} memory probe"));
        return rss::child(
            rss::Kind::parse(kind)?,
            args.nodes,
            args.gossip_ms,
            args.containers,
        )
        .await;
    }

    let mut plan = if args.quick {
        Plan::quick(args.seed)
    } else {
        Plan::full(args.seed)
    };
    if !args.only.is_empty() {
        plan.parts = args.only.clone();
    }
    if !args.heal_nodes.is_empty() {
        plan.heal_nodes = args.heal_nodes.clone();
    }
    if !args.propagation_nodes.is_empty() {
        plan.propagation = args
            .propagation_nodes
            .iter()
            .map(|&n| (n, stated::Plan::propagation_samples(n)))
            .collect();
        plan.idle_nodes
            .retain(|n| args.propagation_nodes.contains(n));
    }
    if let Some(runs) = args.runs {
        plan.heal_runs = runs;
        plan.catch_up_runs = runs;
    }
    let out = uncloud_bench::out_dir(args.out.clone(), args.quick);
    let command = uncloud_bench::command_line("stated-bench");
    progress(format!("plan: {plan:?}"));
    let results = stated::run(&plan, &out, &command).await?;
    for t in stated::targets() {
        let v = t.verdict(&results);
        if v != Verdict::NotMeasured {
            progress(format!("target: {}: {}", t.what, v.as_str()));
        }
    }
    Ok(())
}

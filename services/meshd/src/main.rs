//! The `meshd` daemon: see the crate docs and README.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use meshd::config::{Config, DEFAULT_PATH};

/// WireGuard mesh of an Uncloud network: a userspace WireGuard device (TUN `uncloud`) whose
/// peers are every other machine in the replicated state, served on D-Bus as org.uncloud.Mesh1.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "\
Every setting lives in the config file and has a default; see the crate README for the list.
meshd needs CAP_NET_ADMIN (TUN device, routes, nftables) and a running stated.
Examples:
  meshd                                    # /etc/uncloud/meshd.toml, system bus
  meshd --config ./m1.toml                 # another config
  meshd --check-config --config x.toml     # validate and print the effective config
Local API:
  busctl call org.uncloud.Mesh1 /org/uncloud/Mesh1 org.uncloud.Mesh1 Peers
  busctl introspect org.uncloud.Mesh1 /org/uncloud/Mesh1"
)]
struct Args {
    /// Config file (TOML). A missing file means all defaults.
    #[arg(long, short, default_value = DEFAULT_PATH, env = "MESHD_CONFIG")]
    config: PathBuf,
    /// Validate the config, print the effective settings and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    uncloud_common::logging::init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // stderr reaches the journal under systemd too.
            eprintln!("meshd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config: Config = uncloud_common::config::load(&args.config)?;
    config.validate()?;
    if args.check_config {
        println!("{config:#?}");
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(meshd::daemon::run(config))?;
    Ok(())
}

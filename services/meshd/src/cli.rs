//! The command line of `meshd`: its arguments and [`main`], its entry point, which both the `meshd`
//! binary and the image's multi-call executable (`uncloud-daemons`, in `daemons/`) run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::config::{Config, DEFAULT_PATH};

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

/// The `meshd` executable's entry point: parses its arguments and runs it.
pub fn main() -> ExitCode {
    let args = Args::parse();
    uncloud_common::daemon::main(
        "meshd",
        &args.config,
        args.check_config,
        |config: Config| async move { Ok(crate::daemon::run(config).await?) },
    )
}

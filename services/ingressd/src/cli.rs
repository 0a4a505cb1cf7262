//! The command line of `ingressd`: its arguments and [`main`], its entry point, which both the
//! `ingressd` binary and the image's multi-call executable (`uncloud-daemons`, in `daemons/`) run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use uncloud_common::daemon::Scheduler;

use crate::config::{Config, DEFAULT_PATH};

/// Ingress of an Uncloud network: on machines with the `ingress` role, serves every
/// service's published hostnames on :80 and :443, forwarding to its containers anywhere on the
/// mesh, with certificates ordered once (ACME) and shared by every ingress machine.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "\
Every setting lives in the config file and has a default; see the crate README for the list.
ingressd needs a running stated; it listens only while the machine has the ingress role.
Examples:
  ingressd                                  # /etc/uncloud/ingressd.toml, system bus
  ingressd --check-config --config x.toml   # validate and print the effective config
Try it:
  uc machine role add alpha ingress         # alpha now serves :80 and :443
  uc run -n web -p app.example.com:8000/https nginxdemos/hello
  curl https://app.example.com/             # with app.example.com pointing at alpha"
)]
struct Args {
    /// Config file (TOML). A missing file means all defaults.
    #[arg(long, short, default_value = DEFAULT_PATH, env = "INGRESSD_CONFIG")]
    config: PathBuf,
    /// Validate the config, print the effective settings and exit.
    #[arg(long)]
    check_config: bool,
}

/// The `ingressd` executable's entry point: parses its arguments and runs it.
pub fn main() -> ExitCode {
    let args = Args::parse();
    // One thread on one CPU, as nginx's one worker: the proxy's hot path is all async I/O.
    uncloud_common::daemon::main_on(
        Scheduler::OneThreadOnOneCpu,
        "ingressd",
        &args.config,
        args.check_config,
        |config: Config| async move { Ok(crate::daemon::run(config).await?) },
    )
}

//! The command line of `uncloud-firstboot`: its arguments and [`main`], its entry point, which both
//! the `uncloud-firstboot` binary and the image's multi-call executable (`uncloud-daemons`, in
//! `daemons/`) run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::{banner, init};

/// A machine's own setup at boot: its identity before the daemons start, its console banner
/// after.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "\
Run by systemd: uncloud-firstboot.service (init) and uncloud-banner.service (banner).
Examples:
  uncloud-firstboot init              # make or collect the token, ticket and TLS key
  uncloud-firstboot banner --wait 0   # show the banner now, on every console"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Prepare /var/lib/uncloud/identity: take a setup token and join ticket from
    /// /etc/uncloud/{setup-token,join-ticket} (cloud-init) or /boot/firmware/uncloud-setup.toml
    /// (Raspberry Pi), make a token and a TLS key and certificate where missing.
    Init {
        /// The root of the machine's files (for testing an image's tree).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Wait for every unit of uncloud.target and Docker to be active, then show the machine's
    /// state, addresses, certificate fingerprint and setup token on every console.
    Banner {
        /// How long to wait for the units, in seconds, before showing what is not ready.
        #[arg(long, default_value_t = 600)]
        wait: u64,
        /// Print to stdout instead of the consoles (the token included: mind where it goes).
        #[arg(long)]
        stdout: bool,
        /// The root of the machine's files (for testing an image's tree).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

/// The `uncloud-firstboot` executable's entry point: parses its arguments and runs it.
pub fn main() -> ExitCode {
    let args = Args::parse();
    uncloud_common::logging::init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uncloud-firstboot: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Cmd::Init { root } => {
            let apply_hostname = root == std::path::Path::new("/");
            let out = init::Init {
                root,
                apply_hostname,
            }
            .run()?;
            for d in &out.done {
                tracing::info!("{d}");
            }
            for w in &out.warnings {
                tracing::warn!("{w}");
            }
            if out.done.is_empty() && out.warnings.is_empty() {
                tracing::info!("identity complete, nothing to do");
            }
        }
        Cmd::Banner { wait, stdout, root } => {
            let units = banner::units();
            let states = banner::wait_for_units(&units, Duration::from_secs(wait));
            let facts = banner::gather(&root, states);
            let text = banner::render(&facts);
            if stdout {
                print!("{text}");
            } else {
                let consoles = banner::consoles();
                let (shown, failed) = banner::show(&text, &consoles);
                for f in &failed {
                    tracing::warn!("cannot show the banner on {f}");
                }
                if shown.is_empty() {
                    anyhow::bail!(
                        "no console to show the banner on (/sys/class/tty/console/active: {consoles:?}; {})",
                        failed.join("; ")
                    );
                }
                // The journal gets the status, never the token.
                tracing::info!(
                    "{} (banner shown on {})",
                    facts.status_line(),
                    shown.join(", ")
                );
            }
        }
    }
    Ok(())
}

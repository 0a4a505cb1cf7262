//! The command line of `stated`: its arguments and [`main`], its entry point, which both the
//! `stated` binary and the image's multi-call executable (`uncloud-daemons`, in `daemons/`) run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::config::{Config, DEFAULT_PATH};
use crate::links::Links;
use crate::Membership;

/// Replicated state of an Uncloud network: holds the whole state on this machine, syncs it with
/// every other machine, and serves it on D-Bus as org.uncloud.State1.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "\
Every setting lives in the config file and has a default; see the crate README for the list.
Examples:
  stated                                   # /etc/uncloud/stated.toml, system bus
  stated --config ./node1.toml             # another config
  stated --check-config --config x.toml    # validate and print the effective config
Local API:
  busctl introspect org.uncloud.State1 /org/uncloud/State1"
)]
struct Args {
    /// Config file (TOML). A missing file means all defaults.
    #[arg(long, short, default_value = DEFAULT_PATH, env = "STATED_CONFIG")]
    config: PathBuf,
    /// Validate the config, print the effective settings and exit.
    #[arg(long)]
    check_config: bool,
}

/// The `stated` executable's entry point: parses its arguments and runs it.
pub fn main() -> ExitCode {
    let args = Args::parse();
    // Panics abort the process, except where the store catches them on a damaged file.
    uncloud_common::fail_fast::exempt(uncloud_docstore::catching_panic);
    uncloud_common::daemon::main("stated", &args.config, args.check_config, serve)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let bus = config.bus.clone();
    let membership = Membership::start(config, Links::real()).await?;
    let dbus = crate::dbus::serve(membership.clone(), &bus).await?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!("ready");
    let probed = membership.clone();
    tokio::spawn(uncloud_common::watchdog::run(move || {
        let member = probed.member();
        async move {
            match member {
                Some(shared) => tokio::task::spawn_blocking(move || shared.health_check())
                    .await
                    .map_err(|e| e.to_string())?,
                None => Ok(()),
            }
        }
    }));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    drop(dbus);
    membership.shutdown().await;
    Ok(())
}

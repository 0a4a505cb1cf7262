//! The command line of `apid`: its arguments and [`main`], its entry point, which both the `apid`
//! binary and the image's multi-call executable (`uncloud-daemons`, in `daemons/`) run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use uncloud_common::dbus::StateProxy;

use crate::config::{Config, DEFAULT_PATH};

/// The management API of an Uncloud machine: TLS on one public port. A fresh machine offers
/// only `uc machine init` (with its setup token); a member answers `uc` with client
/// certificates of its network.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "\
Every setting lives in the config file and has a default; see the crate README.
Examples:
  apid                                   # /etc/uncloud/apid.toml, system bus
  apid --check-config --config x.toml    # validate and print the effective config"
)]
struct Args {
    /// Config file (TOML). A missing file means all defaults.
    #[arg(long, short, default_value = DEFAULT_PATH, env = "APID_CONFIG")]
    config: PathBuf,
    /// Validate the config, print the effective settings and exit.
    #[arg(long)]
    check_config: bool,
}

/// The `apid` executable's entry point: parses its arguments and runs it.
pub fn main() -> ExitCode {
    let args = Args::parse();
    uncloud_common::daemon::main("apid", &args.config, args.check_config, serve)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let bus = uncloud_common::dbus::bus_builder(&config.bus)
        .context("apid needs D-Bus to reach stated (bus = \"none\" is not supported)")?
        .build()
        .await
        .with_context(|| format!("cannot connect to the D-Bus bus {:?}", config.bus))?;
    let state = StateProxy::new(&bus).await?;
    // stated may still be starting: wait for it rather than fail and restart.
    let mut waited = Duration::ZERO;
    while state.mode().await.is_err() {
        anyhow::ensure!(
            waited < Duration::from_secs(60),
            "stated does not answer on D-Bus (org.uncloud.State1)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        waited += Duration::from_millis(250);
    }
    let listen = config.listen;
    let apid = Arc::new(crate::Apid::start(config, state).await?);
    crate::dbus::serve(&bus, apid.clone())
        .await
        .context("cannot offer org.uncloud.Api1 on D-Bus")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let mode = if apid.member().is_some() {
        "member"
    } else {
        "maintenance"
    };
    tracing::info!(%listen, mode, "ready");
    if apid.member().is_none() {
        let apid = apid.clone();
        tokio::spawn(async move { apid.redeem_preseeded().await });
    }
    // The server certificate lives a year; the clock may also move out of it.
    {
        let apid = apid.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                apid.keep_server_cert().await;
            }
        });
    }
    // Image uploads a `uc` left (interrupted, killed).
    tokio::spawn(async {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            every.tick().await;
            crate::push::sweep();
            crate::exec::sweep();
        }
    });
    // Global services on machines that joined later, containers whose service is gone.
    {
        let apid = apid.clone();
        tokio::spawn(async move { apid.reconcile_forever().await });
    }
    // Forwarded calls (`uc -m`), on the mesh address once this machine is a member.
    tokio::spawn(crate::peer_server::serve(apid.clone()));
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    // apid answers requests and has no loop of its own: the probe proves the runtime still
    // runs tasks.
    tokio::spawn(uncloud_common::watchdog::run(|| std::future::ready(Ok(()))));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = crate::server::serve(listener, apid) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    Ok(())
}

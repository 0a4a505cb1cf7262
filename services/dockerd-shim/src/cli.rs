//! The command line of `dockerd-shim`: its arguments and [`main`], its entry point, which both the
//! `dockerd-shim` binary and the image's multi-call executable (`uncloud-daemons`, in `daemons/`)
//! run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use uncloud_common::address::MeshCidr;
use uncloud_common::dbus::StateProxy;
use uncloud_common::model::NetworkState;

use crate::config::{Config, DEFAULT_PATH};
use crate::dbus::Docker1;
use crate::drain::Draining;
use crate::engine::Local;
use crate::files::FileStore;
use crate::firewall;
use crate::mirror::Mirror;
use crate::network::{self, Desired};
use crate::remote::Remote;

/// Runs this machine's containers for the Uncloud network; the only client of the Docker engine.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "\
Every setting lives in the config file and has a default; see the crate README.
Examples:
  dockerd-shim                               # /etc/uncloud/dockerd-shim.toml, system bus
  dockerd-shim --check-config --config x.toml"
)]
struct Args {
    /// Config file (TOML). A missing file means all defaults.
    #[arg(long, short, default_value = DEFAULT_PATH, env = "DOCKERD_SHIM_CONFIG")]
    config: PathBuf,
    /// Validate the config, print the effective settings and exit.
    #[arg(long)]
    check_config: bool,
}

/// The `dockerd-shim` executable's entry point: parses its arguments and runs it.
pub fn main() -> ExitCode {
    let args = Args::parse();
    uncloud_common::daemon::main("dockerd-shim", &args.config, args.check_config, serve)
}

/// This machine's subnet from the state, waiting for stated and for the entry (a fresh
/// machine has none until it creates or joins a network).
async fn own_subnet(state: &StateProxy<'_>) -> (MeshCidr, u32) {
    let mut told = false;
    loop {
        if let Ok(id) = state.machine_id().await {
            if let Ok(json) = state.get_state().await {
                if let Ok(s) = serde_json::from_str::<NetworkState>(&json) {
                    let cidr = s.network.mesh_cidr.parse().unwrap_or_default();
                    if let Some(m) = s.machines.get(&id) {
                        return (cidr, m.subnet);
                    }
                }
            }
            if !told && state.mode().await.is_ok_and(|m| m == "fresh") {
                tracing::info!(
                    "this machine belongs to no network yet; waiting until it joins one"
                );
                uncloud_common::daemon::notify_waiting_for_membership();
                told = true;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How long a file content a spec names may take to reach this machine's state (the machine
/// that took the deploy stored it a moment before it asked for the container).
const FILES_WAIT: Duration = Duration::from_secs(15);

/// How often the container firewall rules are re-applied when nothing asked for it (a host
/// firewall reload may have flushed them). Each apply runs `nft` and `iptables`, which on a
/// small machine cost more than everything else the shim does at idle: not every 30 s.
const FIREWALL_REFRESH: Duration = Duration::from_secs(300);

async fn serve(config: Config) -> anyhow::Result<()> {
    // From the start: while the machine waits for a network the shim already counts as started.
    // It answers requests and follows Docker's events; the probe proves the runtime still runs
    // tasks (restarting the shim would not mend a wedged dockerd).
    tokio::spawn(uncloud_common::watchdog::run(|| std::future::ready(Ok(()))));
    let conn = uncloud_common::dbus::bus_builder(&config.bus)
        .ok_or_else(|| anyhow::anyhow!("bus = \"none\": the shim needs stated on D-Bus"))?
        .build()
        .await?;
    let state = StateProxy::new(&conn).await?;
    let (cidr, subnet) = own_subnet(&state).await;
    let docker = crate::engine::connect(&config.docker_socket).await?;
    let desired = Desired {
        name: config.network.clone(),
        bridge: config.bridge.clone(),
        subnet: cidr
            .subnet(subnet)
            .ok_or_else(|| anyhow::anyhow!("subnet {subnet} is outside {cidr}"))?,
        gateway: cidr.machine_ip(subnet).expect("inside the mesh"),
        mtu: config.mtu(),
    };
    network::ensure(&docker, &desired).await?;
    let rules = firewall::Rules {
        bridge: config.bridge.clone(),
        mesh_interface: config.mesh_interface.clone(),
        subnet: desired.subnet_cidr(),
        mesh: cidr,
    };
    if config.manage_firewall {
        firewall::apply(&rules)?;
    }
    // Woken by the mirror when the engine comes back after a restart, which rebuilds its
    // iptables chains.
    let reconnected = Arc::new(tokio::sync::Notify::new());
    let firewall = config.manage_firewall.then(|| {
        let reconnected = reconnected.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FIREWALL_REFRESH);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = reconnected.notified() => {
                        tracing::info!("the engine is back; applying the container firewall rules again");
                    }
                }
                let rules = rules.clone();
                let applied = tokio::task::spawn_blocking(move || firewall::apply(&rules)).await;
                if let Ok(Err(e)) = applied {
                    tracing::warn!(error = %e, "container firewall rules");
                }
            }
        })
    });
    let machine_id = state.machine_id().await?;
    let draining = Draining::default();
    let files = FileStore::new(
        config.files_dir.clone(),
        StateProxy::new(&conn).await?,
        FILES_WAIT,
    );
    let local = Local {
        docker: docker.clone(),
        machine_id: machine_id.clone(),
        network: config.network.clone(),
        dns: desired.gateway,
        draining: draining.clone(),
        drain: Duration::from_millis(config.drain_ms),
        ingress: if config.drain_timeout_ms == 0 {
            None
        } else {
            Some(crate::drain::IngressWait {
                state: StateProxy::new(&conn).await?,
                timeout: Duration::from_millis(config.drain_timeout_ms),
            })
        },
        files: Some(files.clone()),
    };
    // The bridge holds the mesh address (its gateway) from here on, so binding works even
    // before meshd is up.
    let rpc = if config.rpc_port == 0 {
        None
    } else {
        let addr = SocketAddr::new(
            config.rpc_address.unwrap_or(desired.gateway.into()),
            config.rpc_port,
        );
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for container ops on {addr}: {e}"))?;
        let remote = Remote::new(
            local.clone(),
            state.network_id().await?,
            cidr,
            desired.gateway,
        );
        tracing::info!(%addr, "container ops listening");
        Some(tokio::spawn(crate::remote::serve(
            listener,
            Arc::new(remote),
        )))
    };
    crate::dbus::serve(&conn, Docker1 { local }).await?;
    let machine_id_for_renumbering = machine_id.clone();
    let mirror = Mirror {
        docker,
        state,
        machine_id,
        network: config.network.clone(),
        draining,
        files: Some(files),
        reconnected: Some(reconnected),
    };
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("ready"),
    ]);
    tracing::info!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let renumbering = StateProxy::new(&conn).await?;
    let mut renumbered = None;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = mirror.run() => {}
        new = crate::renumbering::until_renumbered(&renumbering, &machine_id_for_renumbering, subnet) => {
            renumbered = Some(new);
        }
    }
    for task in [rpc, firewall].into_iter().flatten() {
        task.abort();
    }
    if let Some(new) = renumbered {
        // systemd (Restart=always) starts the shim again, which moves the network.
        anyhow::bail!(
            "this machine moved from subnet {subnet} to {new} (it lost a conflict after a \
             partition); exiting so that the restart moves the container network"
        );
    }
    Ok(())
}

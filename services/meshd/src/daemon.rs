//! The daemon: wires stated (D-Bus), the WireGuard device, the host's network configuration
//! and `org.uncloud.Mesh1` together.
//!
//! Start-up: load or create the key; wait for stated and for this machine's entry (its
//! subnet); create the TUN device with `10.210.X.1/32` and the mesh route; load the firewall
//! rules; publish the public key and endpoints; then follow stated's `Changed` signal and
//! tick once a second to drive the endpoint timelines.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use gotatun::x25519::PublicKey;
use uncloud_common::address::MeshCidr;
use uncloud_common::config::DaemonConfig;
use uncloud_common::dbus::StateProxy;
use uncloud_common::model::NetworkState;
use uncloud_common::watchdog::{self, Heartbeat};

use crate::config::{Config, ConfigInvalid};
use crate::dbus::{self, Snapshot};
use crate::firewall::{self, FirewallError};
use crate::keys::{self, KeyError};
use crate::mesh::Mesh;
use crate::netconf::{self, IpError};
use crate::plan;
use crate::relay::{RelayFactory, RelayTable};
use crate::wg::{self, WgError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigInvalid),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("bus = \"none\": meshd needs D-Bus to read the state from stated")]
    NoBus,
    #[error("D-Bus ({bus}): {reason}")]
    Bus { bus: String, reason: zbus::Error },
    #[error(transparent)]
    Wg(#[from] WgError),
    #[error(transparent)]
    Ip(#[from] IpError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error("cannot watch for signals: {0}")]
    Signal(std::io::Error),
}

/// How often the endpoint timelines advance and statistics are read.
const TICK: Duration = Duration::from_secs(1);
/// How often local addresses and observed endpoints are re-read and published if changed.
const PUBLISH_EVERY_TICKS: u32 = 5;
/// A mesh loop that has not gone round for this long is stuck (a D-Bus call to stated gives
/// up after 25 s): the watchdog stops being fed and systemd restarts meshd.
const STALLED_AFTER: Duration = Duration::from_secs(45);

/// This machine as the state describes it.
struct Me {
    subnet: u32,
    cidr: MeshCidr,
}

/// Reads the whole state; `None` (logged) when stated cannot be reached or answers nonsense.
async fn read_state(state: &StateProxy<'_>) -> Option<NetworkState> {
    match state.get_state().await {
        Ok(json) => match serde_json::from_str(&json) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "stated returned a state meshd cannot read");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the state from stated");
            None
        }
    }
}

fn me_in(state: &NetworkState, machine_id: &str) -> Option<Me> {
    let m = state.machines.get(machine_id)?;
    let cidr = if state.network.mesh_cidr.is_empty() {
        MeshCidr::default()
    } else {
        match state.network.mesh_cidr.parse() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "unusable mesh CIDR in the state; using the default");
                MeshCidr::default()
            }
        }
    };
    cidr.subnet(m.subnet)?;
    Some(Me {
        subnet: m.subnet,
        cidr,
    })
}

/// Waits until stated answers and this machine has an entry with a usable subnet.
async fn wait_for_self(state: &StateProxy<'_>, heartbeat: &Heartbeat) -> (String, Me) {
    let mut waited = 0u32;
    let mut told = false;
    loop {
        heartbeat.beat();
        if let Ok(id) = state.machine_id().await {
            if state.mode().await.is_ok_and(|m| m == "fresh") {
                if !told {
                    tracing::info!(
                        "this machine belongs to no network yet; waiting until it joins one"
                    );
                    uncloud_common::daemon::notify_waiting_for_membership();
                    told = true;
                }
            } else if let Some(me) = read_state(state).await.and_then(|s| me_in(&s, &id)) {
                return (id, me);
            }
        }
        if waited.is_multiple_of(10) {
            tracing::info!("waiting for stated and for this machine's entry in the state");
        }
        waited += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The endpoints to advertise: configured public ones first, then local interface addresses.
fn advertised(config: &Config, cidr: &MeshCidr) -> Vec<String> {
    let mut out: Vec<SocketAddr> = config.public_endpoints().unwrap_or_default();
    if config.advertise_interfaces {
        match netconf::local_addresses(&config.interface, cidr) {
            Ok(ips) => {
                for ip in ips {
                    let e = SocketAddr::new(ip, config.listen_port);
                    if !out.contains(&e) {
                        out.push(e);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list local addresses"),
        }
    }
    out.iter().map(|e| e.to_string()).collect()
}

pub async fn run(config: Config) -> Result<(), DaemonError> {
    config.validate()?;
    // Fed while the mesh loop (or the wait for membership) goes round.
    let heartbeat = Heartbeat::default();
    heartbeat.beat();
    tokio::spawn(watchdog::run({
        let heartbeat = heartbeat.clone();
        move || std::future::ready(heartbeat.check(STALLED_AFTER))
    }));
    let (secret, created) = keys::load_or_create(&config.key_path())?;
    let public_key = keys::public_of(&secret);
    let my_key = PublicKey::from(&secret).to_bytes();
    if created {
        tracing::info!(public_key = %public_key, path = %config.key_path().display(), "generated a new WireGuard key");
    }

    let bus_err = |reason| DaemonError::Bus {
        bus: config.bus.clone(),
        reason,
    };
    let conn = uncloud_common::dbus::bus_builder(&config.bus)
        .ok_or(DaemonError::NoBus)?
        .build()
        .await
        .map_err(bus_err)?;
    let state = StateProxy::new(&conn).await.map_err(bus_err)?;
    // Subscribe before the first read, so no change between the two is missed.
    let mut changes = state.receive_changed().await.map_err(bus_err)?;

    // Serve the public key and endpoints while still fresh: apid puts them in the request a
    // joining machine sends, so the admitting member can add it as a peer at once.
    let snapshot = Arc::new(Mutex::new(Snapshot {
        public_key: public_key.clone(),
        interface: config.interface.clone(),
        listen_port: config.listen_port,
        endpoints: advertised(&config, &MeshCidr::default()),
        ..Default::default()
    }));
    let signals = dbus::serve(&conn, snapshot.clone())
        .await
        .map_err(bus_err)?;

    let (machine_id, mut me) = wait_for_self(&state, &heartbeat).await;
    let mut address = me.cidr.machine_ip(me.subnet).expect("checked in me_in");
    let mtu = config.mtu.unwrap_or_else(netconf::tun_mtu);
    let table = Arc::new(Mutex::new(RelayTable {
        my_index: me.subnet,
        ..Default::default()
    }));
    let (udp, probes) = RelayFactory::new(table.clone());
    let device = wg::create(&config.interface, config.listen_port, secret, udp).await?;
    netconf::configure_tun(&config.interface, address, mtu, &me.cidr)?;
    if let Err(e) = netconf::enable_forwarding() {
        tracing::warn!(error = %e, "cannot enable IPv4 forwarding; containers will not be reachable");
    }
    let rules = |cidr: &MeshCidr| firewall::Rules {
        tun: config.interface.clone(),
        bridge: config.container_bridge.clone(),
        listen_port: config.listen_port,
        mesh: *cidr,
        machine_tcp_ports: config.machine_tcp_ports.clone(),
        machine_udp_ports: config.machine_udp_ports.clone(),
    };
    if config.firewall {
        firewall::apply(&rules(&me.cidr))?;
    }
    tracing::info!(machine_id = %machine_id, %address, mtu, port = config.listen_port,
        public_key = %public_key, "mesh device up");

    {
        let mut s = snapshot.lock().unwrap();
        s.machine_id = machine_id.clone();
        s.address = address.to_string();
    }

    let mut mesh = Mesh::new(
        device,
        table,
        probes,
        config.timing(),
        config.keepalive_secs,
    );
    let mut published: Option<(Vec<String>, BTreeMap<String, String>)> = None;
    let mut replan = true;
    let mut ticks = 0u32;
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DaemonError::Signal)?;
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("ready"),
    ]);
    tracing::info!("ready");

    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            Some(signal) = changes.next() => {
                if let Ok(args) = signal.args() {
                    if matches!(*args.kind(), "machines" | "network") {
                        replan = true;
                    }
                }
            }
            _ = interval.tick() => {
                ticks += 1;
                // Re-read everything now and then in case a signal was lost (stated restart).
                if ticks.is_multiple_of(30) {
                    replan = true;
                }
            }
        }
        if replan {
            // Cleared only once the state was read, so a failed read is retried next tick.
            if let Some(s) = read_state(&state).await {
                replan = false;
                match me_in(&s, &machine_id) {
                    Some(new) => {
                        let new_address = new.cidr.machine_ip(new.subnet).expect("checked");
                        let moved = new_address != address || new.cidr != me.cidr;
                        if moved {
                            tracing::info!(from = %address, to = %new_address, "this machine was renumbered");
                            let result = netconf::configure_tun(
                                &config.interface,
                                new_address,
                                mtu,
                                &new.cidr,
                            )
                            .map_err(DaemonError::from)
                            .and_then(|()| {
                                if config.firewall && new.cidr != me.cidr {
                                    firewall::apply(&rules(&new.cidr))?;
                                }
                                Ok(())
                            });
                            match result {
                                Ok(()) => {
                                    address = new_address;
                                    snapshot.lock().unwrap().address = address.to_string();
                                    me = new;
                                }
                                // Keep the tunnels up on the old address and try again.
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot move to the new address; retrying");
                                    replan = true;
                                }
                            }
                        } else {
                            me = new;
                        }
                        mesh.set_my_index(me.subnet);
                    }
                    None => tracing::warn!(
                        "this machine has no usable entry in the state; keeping the current peers"
                    ),
                }
                let planned = plan::plan(&s, &machine_id, &my_key, me.subnet, &me.cidr);
                for r in planned.refused.iter().filter(|r| r.bogus) {
                    tracing::warn!(machine_id = %r.machine_id, reason = %r.reason, "ignoring a machine entry");
                }
                for event in mesh.apply(&planned).await? {
                    signals.emit(&event).await;
                }
            }
        }
        for event in mesh.tick().await? {
            signals.emit(&event).await;
        }
        if ticks % PUBLISH_EVERY_TICKS == 1 || published.is_none() {
            // `ip` runs as a child process: off the async workers that also carry packets.
            let endpoints = {
                let (config, cidr) = (config.clone(), me.cidr);
                tokio::task::spawn_blocking(move || advertised(&config, &cidr))
                    .await
                    .unwrap_or_default()
            };
            let now = (endpoints, mesh.observed());
            if published.as_ref() != Some(&now) {
                let observed: HashMap<String, String> =
                    now.1.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                match state.set_mesh(&public_key, now.0.clone(), observed).await {
                    Ok(()) => {
                        tracing::info!(endpoints = ?now.0, observed = now.1.len(), "published this machine's mesh details");
                        snapshot.lock().unwrap().endpoints = now.0.clone();
                        published = Some(now);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot publish to stated; retrying"),
                }
            }
        }
        snapshot.lock().unwrap().peers = mesh.info();
        heartbeat.beat();
    }

    tracing::info!("stopping");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if config.firewall {
        if let Err(e) = firewall::remove() {
            tracing::warn!(error = %e, "cannot remove the mesh's firewall rules");
        }
    }
    Ok(())
}

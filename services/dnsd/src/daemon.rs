//! The daemon: wires stated (D-Bus), the mirror of the state, the forwarder and the server.
//!
//! Start-up: wait for stated and for this machine to be a member; subscribe to changes, then
//! read what dnsd serves; bind UDP and TCP on the machine's mesh address (waiting for meshd
//! to put it on its device) and any extra addresses; tell systemd it is ready. Then each
//! change rebuilds the names, and a new mesh address (the machine was renumbered) moves the
//! listeners. The virtual addresses' nftables table follows every rebuild ([`crate::vip`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use uncloud_common::config::DaemonConfig;
use uncloud_common::dbus::StateProxy;
use uncloud_common::liveness::Liveness;
use uncloud_common::state_follow::Update;
use uncloud_common::watchdog::{self, Heartbeat};

use crate::answer::Zone;
use crate::config::{Config, ConfigInvalid};
use crate::dbus::Dns1;
use crate::forward::Forwarder;
use crate::mirror;
use crate::names::{Names, View};
use crate::server::{self, Counters, Handler, Running, Served};
use crate::vip;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigInvalid),
    #[error("bus = \"none\": dnsd needs D-Bus to read the state from stated")]
    NoBus,
    #[error("D-Bus ({bus}): {reason}")]
    Bus { bus: String, reason: zbus::Error },
    #[error("cannot watch for signals: {0}")]
    Signal(std::io::Error),
    #[error("cannot start the virtual address thread: {0}")]
    Thread(std::io::Error),
}

/// Most signals applied as one batch.
const MAX_BATCH: usize = 4096;
/// How often the loop beats when nothing happens.
const TICK: Duration = Duration::from_secs(5);
/// A loop that has not gone round for this long is stuck: systemd restarts dnsd.
const STALLED_AFTER: Duration = Duration::from_secs(45);
/// systemd-resolved is told again every this many ticks (it forgets a link that went away).
const RESOLVED_EVERY_TICKS: u32 = 6;
/// The virtual addresses' table is loaded again every this many ticks (5 min), in case a
/// host firewall reload flushed it: each load runs `nft`, which on a small machine costs more
/// than everything else dnsd does at idle.
const VIPS_EVERY_TICKS: u32 = 60;
/// How long to wait between tries to bind an address not there yet.
const BIND_RETRY: Duration = Duration::from_millis(500);

/// What is served, from `view`.
pub fn served(view: &View, ttl: u32) -> Served {
    Served::new(
        Names::build(view),
        Zone {
            ttl,
            cidr: view.cidr,
        },
    )
}

/// Brings the virtual addresses' table in step with `served` (with `again`, even if nothing
/// changed). Nothing without a programmer (turned off) or before the mesh range is known.
fn program_vips(programmer: Option<&vip::Background>, view: &View, served: &Served, again: bool) {
    let (Some(programmer), Some(cidr)) = (programmer, view.cidr.as_ref()) else {
        return;
    };
    let subnet = view.machines.get(&view.me).map_or(0, |m| m.subnet);
    programmer.apply(
        vip::Rules::new(cidr, subnet, served.names().balanced()),
        again,
    );
}

/// The addresses to serve on: this machine's mesh address and the configured extras.
fn listen_addrs(view: &View, config: &Config) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = view
        .machines
        .get(&view.me)
        .and_then(|m| view.cidr.as_ref()?.machine_ip(m.subnet))
        .map(|ip| SocketAddr::new(IpAddr::V4(ip), config.port))
        .into_iter()
        .collect();
    out.extend(config.extra_listen.iter().copied());
    out
}

/// Binds `addrs`, retrying while an address is not on any interface yet (meshd puts the
/// mesh address on its device a moment after it learns it).
async fn bind(
    handler: impl Fn() -> Handler,
    addrs: &[SocketAddr],
    heartbeat: &Heartbeat,
) -> Running {
    let mut told = false;
    loop {
        heartbeat.beat();
        match server::serve(&handler, addrs).await {
            Ok(r) => return r,
            Err(e) => {
                if !told {
                    tracing::info!(error = %e, "cannot serve yet; retrying until the address exists");
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
                        "waiting: {e}"
                    ))]);
                    told = true;
                }
                tokio::time::sleep(BIND_RETRY).await;
            }
        }
    }
}

/// Keeps systemd-resolved pointing `~internal` at dnsd (see [`crate::resolved`]).
struct Resolved {
    link: String,
    system: Option<zbus::Connection>,
    /// Whether the last try failed (a failure is logged once until the next success).
    failing: bool,
    /// Whether a success was logged already.
    told: bool,
}

impl Resolved {
    async fn new(config: &Config, conn: &zbus::Connection) -> Resolved {
        let system = if config.resolved_link.is_empty() {
            None
        } else if config.bus == "system" {
            Some(conn.clone())
        } else {
            zbus::Connection::system().await.ok()
        };
        Resolved {
            link: config.resolved_link.clone(),
            system,
            failing: false,
            told: false,
        }
    }

    async fn refresh(&mut self, view: &View) {
        let Some(system) = &self.system else {
            return;
        };
        let Some(ip) = view
            .machines
            .get(&view.me)
            .and_then(|m| view.cidr.as_ref()?.machine_ip(m.subnet))
        else {
            return;
        };
        match crate::resolved::register(system, &self.link, ip).await {
            Ok(()) => {
                if std::mem::replace(&mut self.failing, false) || !self.told {
                    tracing::info!(link = %self.link, %ip, "systemd-resolved sends *.internal here");
                    self.told = true;
                }
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(
                        error = %e,
                        "the machine itself cannot resolve *.internal through systemd-resolved"
                    );
                }
                self.failing = true;
            }
        }
    }
}

/// Returns the heap's free pages to the system. A burst of changes (a deploy of many
/// containers) rebuilds the names many times over; glibc keeps what was freed in between, and
/// dnsd would carry a burst's peak for good.
fn give_back_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub async fn run(config: Config) -> Result<(), DaemonError> {
    config.validate()?;
    let bus_err = |reason| DaemonError::Bus {
        bus: config.bus.clone(),
        reason,
    };
    let conn = uncloud_common::dbus::bus_builder(&config.bus)
        .ok_or(DaemonError::NoBus)?
        .build()
        .await
        .map_err(bus_err)?;
    let proxy = StateProxy::new(&conn).await.map_err(bus_err)?;
    let heartbeat = Heartbeat::default();
    {
        let heartbeat = heartbeat.clone();
        tokio::spawn(watchdog::run(move || {
            let heartbeat = heartbeat.clone();
            async move { heartbeat.check(STALLED_AFTER) }
        }));
    }
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;

    let me = uncloud_common::state_follow::wait_for_member(&proxy, &heartbeat).await;
    // Subscribe first, then read: a change in between shows up in the streams.
    let mut updates = uncloud_common::state_follow::follow(&conn)
        .await
        .map_err(bus_err)?;
    let mut liveness = proxy.receive_liveness_changed().await.map_err(bus_err)?;
    let mut view = loop {
        heartbeat.beat();
        match mirror::load(&proxy, &me).await {
            Ok(v) => break v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the state; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let vips = if config.virtual_addresses {
        Some(vip::Background::spawn(&config.bridge).map_err(DaemonError::Thread)?)
    } else {
        None
    };
    if vips.is_none() {
        if let Err(e) = vip::remove() {
            tracing::debug!(error = %e, "virtual addresses are off; no table to delete");
        }
    }
    let first = Arc::new(served(&view, config.ttl_secs));
    program_vips(vips.as_ref(), &view, &first, false);
    let (tx, rx) = watch::channel(first);
    let upstreams = config.upstream_addrs()?;
    if upstreams.is_empty() {
        tracing::warn!(
            resolv_conf = %config.resolv_conf.display(),
            "no upstream resolver: names outside `internal` get SERVFAIL"
        );
    }
    let forwarder = Arc::new(Forwarder::new(
        upstreams,
        config.cache_entries,
        config.max_forwards,
        Duration::from_millis(config.forward_timeout_ms),
    ));
    let counters = Arc::new(Counters::default());
    let handler = || Handler::new(rx.clone(), forwarder.clone(), counters.clone());
    let listening: Arc<Mutex<Vec<String>>> = Arc::default();
    crate::dbus::serve(
        &conn,
        Dns1 {
            served: rx.clone(),
            counters: counters.clone(),
            forwarder: forwarder.clone(),
            listening: listening.clone(),
        },
    )
    .await
    .map_err(bus_err)?;

    let mut addrs = listen_addrs(&view, &config);
    let mut running = bind(&handler, &addrs, &heartbeat).await;
    tracing::info!(addrs = ?running.addrs, upstreams = ?forwarder.upstreams(), "serving DNS");
    *listening.lock().unwrap() = running.addrs.iter().map(ToString::to_string).collect();
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("serving on {:?}", running.addrs)),
    ]);

    let mut resolved = Resolved::new(&config, &conn).await;
    resolved.refresh(&view).await;

    let mut tick = tokio::time::interval(TICK);
    let mut ticks = 0u32;
    // A change could not be read: the view misses it until everything is read again.
    let mut stale = false;
    // The names were rebuilt since the last tick.
    let mut rebuilt = false;
    loop {
        let changed = tokio::select! {
            update = updates.next() => {
                let mut batch = Vec::new();
                match update {
                    Some(u) => batch.push(u),
                    None => {
                        // The signal streams ended (the bus connection broke): subscribe
                        // again and read everything.
                        tracing::warn!("stated's signals ended; subscribing again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if let Ok(u) = uncloud_common::state_follow::follow(&conn).await {
                            updates = u;
                        }
                        batch.push(Update::Resync);
                    }
                }
                // Everything else already waiting goes in the same batch.
                while batch.len() < MAX_BATCH {
                    match updates.next().now_or_never() {
                        Some(Some(u)) => batch.push(u),
                        _ => break,
                    }
                }
                match mirror::apply(&proxy, &mut view, batch).await {
                    Ok(changed) => {
                        stale = false;
                        changed
                    }
                    Err(e) => {
                        // Those changes are not in the view: read everything at the next tick.
                        tracing::warn!(error = %e, "cannot read a change from stated; reading everything again shortly");
                        stale = true;
                        false
                    }
                }
            },
            signal = liveness.next() => match signal {
                Some(signal) => match signal.args() {
                    Ok(a) => {
                        let l = Liveness::from_state(a.liveness());
                        view.liveness.insert(a.machine_id().to_string(), l) != Some(l)
                    }
                    Err(_) => false,
                },
                None => {
                    tracing::warn!("stated's liveness signals ended; subscribing again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if let Ok(l) = proxy.receive_liveness_changed().await {
                        liveness = l;
                    }
                    stale = true;
                    false
                }
            },
            _ = tick.tick() => {
                ticks = ticks.wrapping_add(1);
                if std::mem::take(&mut rebuilt) {
                    give_back_free_memory();
                }
                if stale {
                    match mirror::apply(&proxy, &mut view, vec![Update::Resync]).await {
                        Ok(_) => {
                            stale = false;
                            let fresh = Arc::new(served(&view, config.ttl_secs));
                            program_vips(vips.as_ref(), &view, &fresh, false);
                            tx.send_replace(fresh);
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot read the state from stated"),
                    }
                }
                if ticks.is_multiple_of(RESOLVED_EVERY_TICKS) {
                    resolved.refresh(&view).await;
                }
                if ticks.is_multiple_of(VIPS_EVERY_TICKS) {
                    // A host firewall reload may have flushed the table.
                    program_vips(vips.as_ref(), &view, &rx.borrow(), true);
                }
                false
            }
            _ = term.recv() => break,
        };
        heartbeat.beat();
        if !changed {
            continue;
        }
        let fresh = Arc::new(served(&view, config.ttl_secs));
        tx.send_replace(fresh.clone());
        // After the answers: a name shows as soon as it can, the balancing a moment later.
        program_vips(vips.as_ref(), &view, &fresh, false);
        rebuilt = true;
        let now = listen_addrs(&view, &config);
        if now != addrs {
            tracing::info!(from = ?addrs, to = ?now, "the mesh address changed; moving the listeners");
            running.stop().await;
            addrs = now;
            running = bind(&handler, &addrs, &heartbeat).await;
            *listening.lock().unwrap() = running.addrs.iter().map(ToString::to_string).collect();
            resolved.refresh(&view).await;
        }
    }
    running.stop().await;
    Ok(())
}

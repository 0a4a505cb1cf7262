//! The daemon: wires stated (D-Bus), the mirror of the state, the routing table, the
//! certificates, the listeners and the orderer.
//!
//! Start-up: wait for stated and for this machine to be a member; subscribe to changes, then
//! read the state; serve `org.uncloud.Ingress1`; tell systemd it is ready. ingressd runs on
//! every machine but listens only while the machine has the `ingress` role: gaining it binds
//! :80 and :443, losing it stops accepting and lets requests in flight finish. Every change
//! rebuilds the routes and the certificates; every few seconds the orderer looks for
//! certificates due ([`crate::ordering`]) and orders one at a time in the background.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use uncloud_common::config::DaemonConfig;
use uncloud_common::dbus::{IngressCertificate, StateProxy};
use uncloud_common::liveness::Liveness;
use uncloud_common::model::Certificate;
use uncloud_common::state_follow::Update;
use uncloud_common::watchdog::{self, Heartbeat};

use crate::acme::{self, now_ms};
use crate::balance::Health;
use crate::certs::{self, Store};
use crate::config::{Config, ConfigInvalid};
use crate::dbus::Ingress1;
use crate::limits::Limits;
use crate::mirror;
use crate::ordering::{self, Situation};
use crate::pool::{Pool, Timeouts};
use crate::proxy::{Counters, Shared};
use crate::routes::Table;
use crate::server::Listeners;
use crate::view::View;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigInvalid),
    #[error("bus = \"none\": ingressd needs D-Bus to read the state from stated")]
    NoBus,
    #[error("D-Bus ({bus}): {reason}")]
    Bus { bus: String, reason: zbus::Error },
    #[error("cannot watch for signals: {0}")]
    Signal(std::io::Error),
}

/// Most signals applied as one batch.
const MAX_BATCH: usize = 4096;
/// How often the loop looks at listeners and certificates when nothing else happens.
const TICK: Duration = Duration::from_secs(2);
/// A loop that has not gone round for this long is stuck: systemd restarts ingressd.
const STALLED_AFTER: Duration = Duration::from_secs(45);
/// How often a held draining container is looked at again.
const RELEASE_CHECK: Duration = Duration::from_millis(100);
/// How long requests in flight may take to finish when the listeners stop.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Everything the loop keeps between events.
struct Ingress {
    config: Config,
    conn: zbus::Connection,
    shared: Arc<Shared>,
    tls: Arc<rustls::ServerConfig>,
    acme_client: Option<Arc<rustls::ClientConfig>>,
    listeners: Option<Listeners>,
    listening: Arc<Mutex<Vec<String>>>,
    cert_rows: Arc<Mutex<Vec<IngressCertificate>>>,
    ordering: Option<JoinHandle<()>>,
    /// The last bind error, logged once until it changes.
    bind_error: Option<String>,
    /// The draining containers this machine last said it let go of.
    released: Vec<String>,
    /// Hostnames this machine finished ordering, and when: not ordered again until the state
    /// it wrote has come back through the mirror (a tick may run between the two).
    recent: Arc<Mutex<HashMap<String, Instant>>>,
}

/// How long a hostname just ordered is left alone.
const RECENTLY_ORDERED: Duration = Duration::from_secs(30);

impl Ingress {
    /// Rebuilds the routes and certificates from `view`.
    fn rebuild(&mut self, view: &View) {
        let table = Arc::new(Table::build(view));
        let upstreams: std::collections::HashSet<_> = table
            .routes()
            .iter()
            .flat_map(|r| r.upstreams.clone())
            .collect();
        self.shared.health.retain(|a| upstreams.contains(a));
        self.shared.pool.retain(|a| upstreams.contains(a));
        let https = table.https_hosts();
        let fallback: Vec<String> = if self.config.self_signed {
            https.iter().cloned().collect()
        } else {
            Vec::new()
        };
        self.shared.certs.update(&view.certificates, &fallback);
        *self.shared.table.write().unwrap() = table;
        *self.cert_rows.lock().unwrap() = rows(
            &https,
            &view.certificates,
            &self.shared.certs,
            self.config.renew_at,
        );
    }

    /// Listens while the machine has the ingress role, and only then.
    async fn sync_listeners(&mut self, view: &View) {
        match (view.serves(), self.listeners.is_some()) {
            (true, false) => {
                match Listeners::bind(
                    self.shared.clone(),
                    self.tls.clone(),
                    &self.config.http_listen,
                    &self.config.https_listen,
                    limits(&self.config),
                )
                .await
                {
                    Ok(l) => {
                        tracing::info!(addrs = ?l.addrs, "this machine has the ingress role: serving");
                        *self.listening.lock().unwrap() = l.addrs.clone();
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
                            "serving on {:?}",
                            l.addrs
                        ))]);
                        self.listeners = Some(l);
                        self.bind_error = None;
                    }
                    Err(e) => {
                        let e = e.to_string();
                        if self.bind_error.as_ref() != Some(&e) {
                            tracing::warn!(error = %e, "cannot listen; retrying");
                            self.bind_error = Some(e);
                        }
                    }
                }
            }
            (false, true) => {
                tracing::info!("this machine lost the ingress role: no longer serving");
                self.listening.lock().unwrap().clear();
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(
                    "idle: this machine does not have the ingress role",
                )]);
                if let Some(l) = self.listeners.take() {
                    l.stop(STOP_GRACE).await;
                }
            }
            _ => {}
        }
    }

    /// Says (in the state) which draining containers this machine sends nothing to any
    /// more, when that changed. Returns whether some draining container is still held.
    async fn release(&mut self, view: &View, state: &StateProxy<'_>) -> bool {
        let now = if view.serves() {
            crate::release::released(view, |ip| self.shared.health.busy(ip))
        } else {
            Vec::new()
        };
        let held = view.serves()
            && view
                .containers
                .values()
                .any(|c| c.draining && !now.contains(&c.id));
        if now != self.released {
            let ids: Vec<&str> = now.iter().map(String::as_str).collect();
            match state.set_ingress_released(&ids).await {
                Ok(()) => {
                    tracing::debug!(released = ?now, "draining containers let go of");
                    self.released = now;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the draining containers let go of")
                }
            }
        }
        held
    }

    /// Starts ordering what is due, unless an order is under way.
    fn order_due(&mut self, view: &View) {
        let Some(client) = self.acme_client.clone() else {
            return;
        };
        if !view.serves() || self.ordering.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let hostnames = self.shared.table().https_hosts();
        let reachable = view.reachable_ingress();
        let store = self.shared.certs.clone();
        let lookup = |h: &str| {
            let entry = view.certificates.get(h)?.clone();
            let validity = store
                .get(h)
                .filter(|s| !s.self_signed && s.key.is_some())
                .and_then(|s| s.facts)
                .map(|f| (f.not_before_ms, f.not_after_ms));
            Some((entry, validity))
        };
        let recent: BTreeSet<String> = {
            let mut r = self.recent.lock().unwrap();
            r.retain(|_, at| at.elapsed() < RECENTLY_ORDERED);
            r.keys().cloned().collect()
        };
        let hostnames: BTreeSet<String> = hostnames.difference(&recent).cloned().collect();
        let due = ordering::due(&Situation {
            me: &view.me,
            now_ms: now_ms(),
            reachable_ingress: &reachable,
            hostnames: &hostnames,
            entry: &lookup,
            renew_at: self.config.renew_at,
        });
        if due.is_empty() {
            return;
        }
        let (config, conn, me) = (self.config.clone(), self.conn.clone(), view.me.clone());
        let mut entries = view.certificates.clone();
        let recent = self.recent.clone();
        self.ordering = Some(tokio::spawn(async move {
            let state = match StateProxy::new(&conn).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach stated to order certificates");
                    return;
                }
            };
            for (host, why) in due {
                tracing::debug!(%host, ?why, "certificate due");
                // Errors are recorded in the state (with the back-off) and logged there.
                let _ = acme::order(&config, &client, &state, &me, &host, &entries).await;
                recent.lock().unwrap().insert(host.clone(), Instant::now());
                // A later hostname reuses the account this one made.
                if let Ok(fresh) = uncloud_common::state_follow::fetch::<Certificate>(
                    &state,
                    uncloud_common::model::Kind::Certificates,
                    std::slice::from_ref(&host),
                )
                .await
                {
                    entries.extend(fresh);
                }
            }
        }));
    }
}

fn limits(c: &Config) -> Limits {
    Limits {
        header_timeout: Config::ms(c.header_timeout_ms),
        idle_timeout: Config::ms(c.idle_timeout_ms),
        max_header_bytes: c.max_header_bytes,
        max_connections: c.max_connections,
    }
}

/// The rows `uc ingress certs` shows: every HTTPS hostname and every entry in the state.
fn rows(
    https: &std::collections::BTreeSet<String>,
    entries: &BTreeMap<String, Certificate>,
    store: &Store,
    renew_at: f64,
) -> Vec<IngressCertificate> {
    let now = now_ms();
    let mut hosts: std::collections::BTreeSet<String> = https.clone();
    hosts.extend(entries.keys().cloned());
    hosts
        .into_iter()
        .map(|h| {
            let e = entries.get(&h).cloned().unwrap_or_default();
            let served = store.get(&h);
            let facts = served.as_ref().and_then(|s| s.facts.clone());
            let ordering_now = !e.claim_by.is_empty() && e.claim_until_ms > now;
            let status = match &served {
                Some(s) if s.self_signed => "self-signed",
                _ if ordering_now => "ordering",
                Some(s) if s.key.is_some() => "issued",
                Some(s) if s.problem.is_some() => "unusable",
                _ if e.failures > 0 => "failed",
                _ => "none",
            };
            IngressCertificate {
                hostname: h,
                status: status.into(),
                serial: facts.as_ref().map(|f| f.serial.clone()).unwrap_or_default(),
                issuer: facts.as_ref().map(|f| f.issuer.clone()).unwrap_or_default(),
                not_after_ms: facts.as_ref().map_or(0, |f| f.not_after_ms),
                renew_at_ms: facts.as_ref().map_or(0, |f| {
                    ordering::renewal_ms(f.not_before_ms, f.not_after_ms, renew_at)
                }),
                issued_by: e.issued_by,
                claim_by: if ordering_now {
                    e.claim_by
                } else {
                    String::new()
                },
                failures: e.failures,
                last_error: e.last_error,
                directory: e.directory,
            }
        })
        .collect()
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

    let store = Arc::new(Store::default());
    let shared = Arc::new(Shared {
        table: RwLock::new(Arc::new(Table::default())),
        certs: store.clone(),
        health: Health::new(Config::ms(config.upstream_down_ms)),
        pool: Pool::new(Timeouts {
            connect: Config::ms(config.connect_timeout_ms),
            kept: Config::ms(config.upstream_idle_ms),
            response: Config::ms(config.response_timeout_ms),
            upgraded: Config::ms(config.idle_timeout_ms),
        }),
        balance: config.balance,
        counters: Counters::default(),
    });
    let acme_client = if config.acme {
        match acme::client_config(&config.acme_roots) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the ACME roots: no certificates will be ordered");
                None
            }
        }
    } else {
        None
    };
    let mut ingress = Ingress {
        tls: certs::server_config(store),
        config: config.clone(),
        conn: conn.clone(),
        shared: shared.clone(),
        acme_client,
        listeners: None,
        listening: Arc::default(),
        cert_rows: Arc::default(),
        ordering: None,
        bind_error: None,
        released: view
            .machines
            .get(&view.me)
            .map(|m| m.ingress_released.clone())
            .unwrap_or_default(),
        recent: Arc::default(),
    };
    ingress.rebuild(&view);
    crate::dbus::serve(
        &conn,
        Ingress1 {
            shared,
            certificates: ingress.cert_rows.clone(),
            listening: ingress.listening.clone(),
        },
    )
    .await
    .map_err(bus_err)?;
    ingress.sync_listeners(&view).await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if !view.serves() {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(
            "idle: this machine does not have the ingress role",
        )]);
        tracing::info!(
            "this machine does not have the ingress role (uc machine role add NAME ingress): idle"
        );
    }
    ingress.order_due(&view);

    let mut tick = tokio::time::interval(TICK);
    // While a draining container is still held, whether it was let go of is checked often:
    // its machine waits for that to remove it.
    let mut release_tick = tokio::time::interval(RELEASE_CHECK);
    let mut holding = ingress.release(&view, &proxy).await;
    let mut stale = false;
    loop {
        let changed = tokio::select! {
            update = updates.next() => {
                let mut batch = Vec::new();
                match update {
                    Some(u) => batch.push(u),
                    None => {
                        tracing::warn!("stated's signals ended; subscribing again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if let Ok(u) = uncloud_common::state_follow::follow(&conn).await {
                            updates = u;
                        }
                        batch.push(Update::Resync);
                    }
                }
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
                let mut changed = false;
                if stale {
                    match mirror::apply(&proxy, &mut view, vec![Update::Resync]).await {
                        Ok(_) => {
                            stale = false;
                            changed = true;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot read the state from stated"),
                    }
                }
                if !changed {
                    // Idle upstream connections past their time, or closed by the upstream,
                    // go: those driven by requests have no task of their own to notice.
                    ingress.shared.pool.retain(|_| true);
                    ingress.sync_listeners(&view).await;
                    ingress.order_due(&view);
                    // Claims lapse and orders finish between changes.
                    let https = ingress.shared.table().https_hosts();
                    *ingress.cert_rows.lock().unwrap() = rows(&https, &view.certificates, &ingress.shared.certs, config.renew_at);
                }
                changed
            }
            _ = release_tick.tick(), if holding => {
                holding = ingress.release(&view, &proxy).await;
                false
            }
            _ = term.recv() => break,
        };
        heartbeat.beat();
        if !changed {
            continue;
        }
        ingress.rebuild(&view);
        ingress.sync_listeners(&view).await;
        holding = ingress.release(&view, &proxy).await;
        ingress.order_due(&view);
    }
    if let Some(l) = ingress.listeners.take() {
        l.stop(STOP_GRACE).await;
    }
    Ok(())
}

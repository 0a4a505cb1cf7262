//! The mesh engine: keeps the WireGuard device's peers equal to the [`Plan`], drives each
//! peer's endpoint timeline, and reports peers coming up and going down.
//!
//! Changes are applied peer by peer (add, update allowed IPs, remove), never by rebuilding
//! the device, so a machine joining or leaving does not disturb the other tunnels.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::endpoint::{Millis, PeerStatus, Timing};
use crate::keys;
use crate::path::{self, PathInput, PathState};
use crate::plan::{Plan, PlannedPeer};
use crate::relay::{self, ProbeSender, SharedTable};
use crate::wg::{self, WgDevice, WgError};

/// A peer came up or went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    Up { machine_id: String, name: String },
    Down { machine_id: String, name: String },
}

/// What `Peers` on D-Bus reports about one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerInfo {
    pub machine_id: String,
    pub name: String,
    pub public_key: String,
    pub subnet: String,
    /// The endpoint the device sends to now, if any; for a relayed peer, the relay's.
    pub endpoint: String,
    /// Name of the machine relaying the traffic; empty when direct.
    pub relay: String,
    /// `up`, `connecting` or `unreachable` (no endpoint known).
    pub status: &'static str,
    /// Seconds since the last completed handshake; -1 if none yet.
    pub last_handshake_secs: i64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// `direct` or `relayed`.
    pub path: &'static str,
}

struct Tracked {
    planned: PlannedPeer,
    path: PathState,
    status: PeerStatus,
    up: bool,
    /// Last time a handshake was kicked while connecting.
    kicked_at: Millis,
    /// Last time the direct candidates were probed.
    probed_at: Option<Millis>,
    stats: Option<wg::PeerStats>,
    /// Set when meshd itself pointed the device somewhere: the rx byte count then. Until
    /// more arrives, the endpoint is only our guess, not an address WireGuard authenticated,
    /// so the relay table does not trust it.
    unverified_since_rx: Option<u64>,
}

pub struct Mesh {
    device: Arc<WgDevice>,
    table: SharedTable,
    probes: ProbeSender,
    timing: Timing,
    keepalive_secs: u16,
    epoch: Instant,
    peers: BTreeMap<String, Tracked>,
}

/// WireGuard's own handshake retry interval (REKEY_TIMEOUT); kicking more often is useless.
const KICK_EVERY: Millis = 5_000;
/// How often a relayed peer's direct candidates are probed.
const PROBE_EVERY: Millis = 5_000;

impl Mesh {
    pub fn new(
        device: Arc<WgDevice>,
        table: SharedTable,
        probes: ProbeSender,
        timing: Timing,
        keepalive_secs: u16,
    ) -> Mesh {
        Mesh {
            device,
            table,
            probes,
            timing,
            keepalive_secs,
            epoch: Instant::now(),
            peers: BTreeMap::new(),
        }
    }

    /// This machine's subnet index (relay messages carry subnet indices).
    pub fn set_my_index(&mut self, index: u32) {
        self.table.lock().unwrap().my_index = index;
    }

    fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    pub fn device(&self) -> &Arc<WgDevice> {
        &self.device
    }

    /// Makes the device's peers match `plan`. Returns `Down` events for removed peers that
    /// were up.
    pub async fn apply(&mut self, plan: &Plan) -> Result<Vec<PeerEvent>, WgError> {
        let mut events = Vec::new();
        let wanted: BTreeMap<&str, &PlannedPeer> = plan
            .peers
            .iter()
            .map(|p| (p.machine_id.as_str(), p))
            .collect();
        let gone: Vec<String> = self
            .peers
            .keys()
            .filter(|id| !wanted.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            let t = self.peers.remove(&id).expect("listed above");
            wg::remove_peer(&self.device, t.planned.public_key).await?;
            tracing::info!(peer = %t.planned.name, machine_id = %id, "peer removed");
            if t.up {
                events.push(PeerEvent::Down {
                    machine_id: id,
                    name: t.planned.name,
                });
            }
        }
        for (id, p) in wanted {
            match self.peers.get_mut(id) {
                Some(t) if t.planned.public_key != p.public_key => {
                    // A new key is a new WireGuard peer.
                    wg::remove_peer(&self.device, t.planned.public_key).await?;
                    if t.up {
                        events.push(PeerEvent::Down {
                            machine_id: id.to_string(),
                            name: t.planned.name.clone(),
                        });
                    }
                    self.peers.remove(id);
                    self.add(p).await?;
                }
                Some(t) => {
                    if t.planned.subnet != p.subnet {
                        wg::upsert_peer(
                            &self.device,
                            p.public_key,
                            p.subnet,
                            None,
                            self.keepalive_secs,
                        )
                        .await?;
                    }
                    t.planned = p.clone();
                }
                None => self.add(p).await?,
            }
        }
        Ok(events)
    }

    async fn add(&mut self, p: &PlannedPeer) -> Result<(), WgError> {
        let now = self.now();
        let first = path::decide(
            &PathState::default(),
            &PathInput {
                candidates: &p.candidates,
                relays: &[],
                peer_index: p.subnet_index,
                last_handshake: None,
                device_endpoint: None,
                pong: None,
                now,
            },
            &self.timing,
        );
        wg::upsert_peer(
            &self.device,
            p.public_key,
            p.subnet,
            first.set_endpoint,
            self.keepalive_secs,
        )
        .await?;
        if first.kick {
            self.kick(p.public_key);
        }
        tracing::info!(peer = %p.name, machine_id = %p.machine_id, subnet = %p.subnet,
            endpoint = ?first.set_endpoint, "peer added");
        self.peers.insert(
            p.machine_id.clone(),
            Tracked {
                planned: p.clone(),
                path: first.state,
                status: first.status,
                up: false,
                kicked_at: now,
                probed_at: None,
                stats: None,
                unverified_since_rx: Some(0),
            },
        );
        Ok(())
    }

    fn kick(&self, key: [u8; 32]) {
        wg::kick_handshake(
            &self.device,
            key,
            Duration::from_millis(self.timing.handshake_timeout),
        );
    }

    /// Reads the device's statistics and advances every peer's path decision.
    pub async fn tick(&mut self) -> Result<Vec<PeerEvent>, WgError> {
        let stats_read = Instant::now();
        let stats: BTreeMap<[u8; 32], wg::PeerStats> = wg::stats(&self.device)
            .await
            .into_iter()
            .map(|s| (s.public_key, s))
            .collect();
        // After the read: "ago" is measured when the device answers, which on a busy machine
        // can be well after the read began.
        let now = self.now();
        let last_handshake = |s: Option<&wg::PeerStats>| {
            s.and_then(|s| s.last_handshake)
                .map(|ago| now.saturating_sub(ago.as_millis() as Millis))
        };
        // Peers up over a direct path: who this machine relays for and accepts relayed
        // packets from, and who can relay for us.
        let direct: BTreeMap<String, (u32, SocketAddr)> = self
            .peers
            .iter()
            .filter_map(|(id, t)| {
                let s = stats.get(&t.planned.public_key)?;
                let e = s.endpoint?;
                let fresh = last_handshake(Some(s))
                    .is_some_and(|h| now.saturating_sub(h) < self.timing.down_after);
                // Since meshd last set the endpoint, an authenticated packet has arrived, and
                // WireGuard's roaming made its source the endpoint: a proven address.
                let proven = t.unverified_since_rx.is_none_or(|rx| s.rx_bytes > rx);
                (fresh && proven && relay::parse_relay_addr(&e).is_none())
                    .then(|| (id.clone(), (t.planned.subnet_index, e)))
            })
            .collect();
        let pongs = {
            let mut table = self.table.lock().unwrap();
            table.set_direct(direct.values().copied().collect());
            std::mem::take(&mut table.pongs)
        };

        let mut events = Vec::new();
        let mut kicks = Vec::new();
        let mut probes = Vec::new();
        for (id, t) in self.peers.iter_mut() {
            let s = stats.get(&t.planned.public_key).cloned();
            let mut relays: Vec<u32> = t
                .planned
                .observed_by
                .iter()
                .filter_map(|r| direct.get(r).map(|(index, _)| *index))
                .collect();
            relays.sort_unstable();
            let d = path::decide(
                &t.path,
                &PathInput {
                    candidates: &t.planned.candidates,
                    relays: &relays,
                    peer_index: t.planned.subnet_index,
                    last_handshake: last_handshake(s.as_ref()),
                    device_endpoint: s.as_ref().and_then(|s| s.endpoint),
                    // Only an answer from an address we probed counts.
                    pong: pongs
                        .get(&t.planned.subnet_index)
                        .copied()
                        .filter(|p| t.planned.candidates.contains(p)),
                    now,
                },
                &self.timing,
            );
            let moved_by_peer = match d.set_endpoint {
                Some(_) => {
                    handshake_since(&self.device, &t.planned.public_key, s.as_ref(), &stats_read)
                        .await
                }
                None => false,
            };
            if moved_by_peer {
                // The peer completed a handshake after the statistics were read: WireGuard
                // moved the endpoint to the address it came from, which is proven; moving it
                // away now would strand a working session (a peer's keepalives do not move
                // it back). Decide again at the next tick with the new handshake.
                tracing::debug!(peer = %t.planned.name, "handshake just completed; endpoint kept");
                continue;
            }
            if let Some(e) = d.set_endpoint {
                tracing::info!(peer = %t.planned.name, from = ?t.path.selection.current,
                    to = %describe(e), "trying the next endpoint");
                wg::set_endpoint(&self.device, t.planned.public_key, Some(e)).await?;
                t.unverified_since_rx = Some(s.as_ref().map_or(0, |s| s.rx_bytes));
            } else if let (Some(rx), Some(s)) = (t.unverified_since_rx, s.as_ref()) {
                if s.rx_bytes > rx {
                    t.unverified_since_rx = None;
                }
            }
            let connecting = d.status == PeerStatus::Connecting;
            if d.kick || (connecting && now.saturating_sub(t.kicked_at) >= KICK_EVERY) {
                kicks.push(t.planned.public_key);
                t.kicked_at = now;
            }
            if d.probe
                && t.probed_at
                    .is_none_or(|p| now.saturating_sub(p) >= PROBE_EVERY)
            {
                t.probed_at = Some(now);
                probes.push((t.planned.subnet_index, t.planned.candidates.clone()));
            }
            let up = d.status == PeerStatus::Up;
            if up != t.up {
                let (machine_id, name) = (id.clone(), t.planned.name.clone());
                let via = s.as_ref().and_then(|s| s.endpoint).map(describe);
                tracing::info!(peer = %name, endpoint = ?via, "peer {}", if up { "up" } else { "down" });
                events.push(if up {
                    PeerEvent::Up { machine_id, name }
                } else {
                    PeerEvent::Down { machine_id, name }
                });
            }
            t.up = up;
            t.status = d.status;
            t.path = d.state;
            t.stats = s;
        }
        for key in kicks {
            self.kick(key);
        }
        self.probe(probes).await;
        Ok(events)
    }

    /// Pings every direct candidate of each listed peer; answers arrive in the relay table.
    async fn probe(&self, probes: Vec<(u32, Vec<SocketAddr>)>) {
        if probes.is_empty() {
            return;
        }
        let mut sends = Vec::new();
        {
            let mut table = self.table.lock().unwrap();
            let me = table.my_index;
            for (peer, candidates) in probes {
                let nonce: u64 = rand::random();
                table.pings.insert(peer, nonce);
                for c in candidates {
                    sends.push((relay::ping(me, peer, nonce), c));
                }
            }
        }
        for (bytes, to) in sends {
            self.probes.send(bytes, to).await;
        }
    }

    /// How many packets this machine has relayed for others.
    pub fn relayed_packets(&self) -> u64 {
        self.table.lock().unwrap().relayed_packets
    }

    /// Peer machine id -> the endpoint its traffic last came from, for peers that are up.
    /// Published to the state so a peer behind NAT learns its reflexive address.
    pub fn observed(&self) -> BTreeMap<String, String> {
        self.peers
            .iter()
            .filter(|(_, t)| t.up)
            .filter_map(|(id, t)| {
                let e = t.stats.as_ref()?.endpoint?;
                // A relayed peer's real address is unknown here.
                relay::parse_relay_addr(&e)
                    .is_none()
                    .then(|| (id.clone(), e.to_string()))
            })
            .collect()
    }

    pub fn info(&self) -> Vec<PeerInfo> {
        let relay_names: BTreeMap<u32, (&str, SocketAddr)> = {
            let table = self.table.lock().unwrap();
            self.peers
                .values()
                .filter_map(|t| {
                    let e = table.direct.get(&t.planned.subnet_index)?;
                    Some((t.planned.subnet_index, (t.planned.name.as_str(), *e)))
                })
                .collect()
        };
        self.peers
            .iter()
            .map(|(id, t)| {
                let s = t.stats.as_ref();
                let device_endpoint = s.and_then(|s| s.endpoint);
                let via = device_endpoint
                    .as_ref()
                    .and_then(relay::parse_relay_addr)
                    .map(|(r, _)| relay_names.get(&r).copied());
                PeerInfo {
                    machine_id: id.clone(),
                    name: t.planned.name.clone(),
                    public_key: keys::encode(&t.planned.public_key),
                    subnet: format!("{}/24", t.planned.subnet),
                    endpoint: match (via, device_endpoint) {
                        (Some(Some((_, relay_endpoint))), _) => relay_endpoint.to_string(),
                        (Some(None), _) => String::new(),
                        (None, e) => e.map(|e| e.to_string()).unwrap_or_default(),
                    },
                    relay: match via {
                        Some(Some((name, _))) => name.to_string(),
                        Some(None) => "?".into(),
                        None => String::new(),
                    },
                    status: match t.status {
                        PeerStatus::Up => "up",
                        PeerStatus::Connecting => "connecting",
                        PeerStatus::Unreachable => "unreachable",
                    },
                    last_handshake_secs: s
                        .and_then(|s| s.last_handshake)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(-1),
                    rx_bytes: s.map(|s| s.rx_bytes).unwrap_or(0),
                    tx_bytes: s.map(|s| s.tx_bytes).unwrap_or(0),
                    path: if via.is_some() { "relayed" } else { "direct" },
                }
            })
            .collect()
    }
}

/// Whether the peer completed a handshake after `before` (its statistics read at `read_at`).
async fn handshake_since(
    device: &WgDevice,
    key: &[u8; 32],
    before: Option<&wg::PeerStats>,
    read_at: &Instant,
) -> bool {
    let Some(now) = wg::stats(device)
        .await
        .into_iter()
        .find(|p| &p.public_key == key)
    else {
        return false;
    };
    let at = |ago: Duration, read: Instant| read.checked_sub(ago);
    let new = now.last_handshake.and_then(|ago| at(ago, Instant::now()));
    let old = before
        .and_then(|b| b.last_handshake)
        .and_then(|ago| at(ago, *read_at));
    match (old, new) {
        (_, None) => false,
        (None, Some(_)) => true,
        // A second of slack: both are computed from "ago" durations read at different times.
        (Some(o), Some(n)) => n > o + Duration::from_secs(1),
    }
}

/// An endpoint for logs: synthetic relay endpoints as `relay R -> peer P`.
fn describe(e: SocketAddr) -> String {
    match relay::parse_relay_addr(&e) {
        Some((r, p)) => format!("via relay subnet {r} to subnet {p}"),
        None => e.to_string(),
    }
}

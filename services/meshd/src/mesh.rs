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

use crate::endpoint::{self, Millis, PeerStatus, Selection, Timing};
use crate::keys;
use crate::plan::{Plan, PlannedPeer};
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
    /// The endpoint the device sends to now, if any.
    pub endpoint: String,
    /// `up`, `connecting` or `unreachable` (no endpoint known).
    pub status: &'static str,
    /// Seconds since the last completed handshake; -1 if none yet.
    pub last_handshake_secs: i64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// `direct` (the only path so far; relaying is not built yet).
    pub path: &'static str,
}

struct Tracked {
    planned: PlannedPeer,
    selection: Selection,
    status: PeerStatus,
    up: bool,
    /// Last time a handshake was kicked while connecting.
    kicked_at: Millis,
    stats: Option<wg::PeerStats>,
}

pub struct Mesh {
    device: Arc<WgDevice>,
    timing: Timing,
    keepalive_secs: u16,
    epoch: Instant,
    peers: BTreeMap<String, Tracked>,
}

/// WireGuard's own handshake retry interval (REKEY_TIMEOUT); kicking more often is useless.
const KICK_EVERY: Millis = 5_000;

impl Mesh {
    pub fn new(device: Arc<WgDevice>, timing: Timing, keepalive_secs: u16) -> Mesh {
        Mesh {
            device,
            timing,
            keepalive_secs,
            epoch: Instant::now(),
            peers: BTreeMap::new(),
        }
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
        let first = endpoint::step(
            &Selection::default(),
            &p.candidates,
            None,
            now,
            &self.timing,
        );
        wg::upsert_peer(
            &self.device,
            p.public_key,
            p.subnet,
            first.selection.current,
            self.keepalive_secs,
        )
        .await?;
        if first.selection.current.is_some() {
            self.kick(p.public_key);
        }
        tracing::info!(peer = %p.name, machine_id = %p.machine_id, subnet = %p.subnet,
            endpoint = ?first.selection.current, "peer added");
        self.peers.insert(
            p.machine_id.clone(),
            Tracked {
                planned: p.clone(),
                selection: first.selection,
                status: first.status,
                up: false,
                kicked_at: now,
                stats: None,
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

    /// Reads the device's statistics and advances every peer's endpoint timeline.
    pub async fn tick(&mut self) -> Result<Vec<PeerEvent>, WgError> {
        let now = self.now();
        let stats: BTreeMap<[u8; 32], wg::PeerStats> = wg::stats(&self.device)
            .await
            .into_iter()
            .map(|s| (s.public_key, s))
            .collect();
        let mut events = Vec::new();
        let mut kicks = Vec::new();
        for (id, t) in self.peers.iter_mut() {
            let s = stats.get(&t.planned.public_key).cloned();
            let last_handshake = s
                .as_ref()
                .and_then(|s| s.last_handshake)
                .map(|ago| now.saturating_sub(ago.as_millis() as Millis));
            let d = endpoint::step(
                &t.selection,
                &t.planned.candidates,
                last_handshake,
                now,
                &self.timing,
            );
            if d.changed {
                tracing::info!(peer = %t.planned.name, from = ?t.selection.current,
                    to = ?d.selection.current, "trying the next endpoint");
                wg::set_endpoint(&self.device, t.planned.public_key, d.selection.current).await?;
            }
            if d.selection.current.is_some()
                && d.status == PeerStatus::Connecting
                && (d.changed || now.saturating_sub(t.kicked_at) >= KICK_EVERY)
            {
                kicks.push(t.planned.public_key);
                t.kicked_at = now;
            }
            let up = d.status == PeerStatus::Up;
            if up != t.up {
                let (machine_id, name) = (id.clone(), t.planned.name.clone());
                tracing::info!(peer = %name, endpoint = ?s.as_ref().and_then(|s| s.endpoint),
                    "peer {}", if up { "up" } else { "down" });
                events.push(if up {
                    PeerEvent::Up { machine_id, name }
                } else {
                    PeerEvent::Down { machine_id, name }
                });
            }
            t.up = up;
            t.status = d.status;
            t.selection = d.selection;
            t.stats = s;
        }
        for key in kicks {
            self.kick(key);
        }
        Ok(events)
    }

    /// Peer machine id -> the endpoint its traffic last came from, for peers that are up.
    /// Published to the state so a peer behind NAT learns its reflexive address.
    pub fn observed(&self) -> BTreeMap<String, String> {
        self.peers
            .iter()
            .filter(|(_, t)| t.up)
            .filter_map(|(id, t)| {
                let e = t.stats.as_ref()?.endpoint?;
                Some((id.clone(), e.to_string()))
            })
            .collect()
    }

    pub fn info(&self) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .map(|(id, t)| {
                let s = t.stats.as_ref();
                PeerInfo {
                    machine_id: id.clone(),
                    name: t.planned.name.clone(),
                    public_key: keys::encode(&t.planned.public_key),
                    subnet: format!("{}/24", t.planned.subnet),
                    endpoint: s
                        .and_then(|s| s.endpoint)
                        .map(|e: SocketAddr| e.to_string())
                        .unwrap_or_default(),
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
                    path: "direct",
                }
            })
            .collect()
    }
}

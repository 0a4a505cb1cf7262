//! `org.uncloud.Mesh1` at `/org/uncloud/Mesh1`: the mesh as this machine sees it.
//!
//! ```text
//! busctl call org.uncloud.Mesh1 /org/uncloud/Mesh1 org.uncloud.Mesh1 Peers
//! busctl get-property org.uncloud.Mesh1 /org/uncloud/Mesh1 org.uncloud.Mesh1 Address
//! busctl monitor org.uncloud.Mesh1        # PeerUp / PeerDown signals
//! ```

use std::sync::{Arc, Mutex};

use uncloud_common::dbus::{MESH_NAME, MESH_PATH};
use zbus::object_server::{InterfaceRef, SignalEmitter};
use zbus::{interface, Connection};

use crate::mesh::{PeerEvent, PeerInfo};

/// What the interface shows; the daemon updates it after every tick.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub machine_id: String,
    pub public_key: String,
    pub address: String,
    pub interface: String,
    pub listen_port: u16,
    pub endpoints: Vec<String>,
    pub peers: Vec<PeerInfo>,
}

pub type SharedSnapshot = Arc<Mutex<Snapshot>>;

pub use uncloud_common::dbus::MeshPeerRow as PeerRow;

pub struct Mesh1 {
    snapshot: SharedSnapshot,
}

#[interface(name = "org.uncloud.Mesh1")]
impl Mesh1 {
    /// Every peer: machine id, name, public key, subnet, endpoint in use, status, seconds since
    /// the last handshake (-1: never), rx bytes, tx bytes, path (`direct` or `relayed`).
    fn peers(&self) -> Vec<PeerRow> {
        let s = self.snapshot.lock().unwrap();
        s.peers
            .iter()
            .map(|p| {
                (
                    p.machine_id.clone(),
                    p.name.clone(),
                    p.public_key.clone(),
                    p.subnet.clone(),
                    p.endpoint.clone(),
                    p.status.to_string(),
                    p.last_handshake_secs,
                    p.rx_bytes,
                    p.tx_bytes,
                    p.path.to_string(),
                )
            })
            .collect()
    }

    /// The same as `Peers`, as a JSON array of objects (for scripts and `jq`).
    fn peers_json(&self) -> String {
        serde_json::to_string(&self.snapshot.lock().unwrap().peers).expect("serializes")
    }

    /// A peer came up: a handshake completed on its current endpoint.
    #[zbus(signal)]
    async fn peer_up(emitter: &SignalEmitter<'_>, machine_id: &str, name: &str)
        -> zbus::Result<()>;

    /// A peer went down (no handshake for `down_after_secs`) or was removed while up.
    #[zbus(signal)]
    async fn peer_down(
        emitter: &SignalEmitter<'_>,
        machine_id: &str,
        name: &str,
    ) -> zbus::Result<()>;

    /// This machine's WireGuard public key (base64).
    #[zbus(property(emits_changed_signal = "const"))]
    fn public_key(&self) -> String {
        self.snapshot.lock().unwrap().public_key.clone()
    }

    /// This machine's mesh address (`10.210.X.1`).
    #[zbus(property(emits_changed_signal = "false"))]
    fn address(&self) -> String {
        self.snapshot.lock().unwrap().address.clone()
    }

    /// The TUN device's name.
    #[zbus(property(emits_changed_signal = "const"))]
    fn interface(&self) -> String {
        self.snapshot.lock().unwrap().interface.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn listen_port(&self) -> u16 {
        self.snapshot.lock().unwrap().listen_port
    }

    /// The endpoints this machine advertises (`ip:port`).
    #[zbus(property(emits_changed_signal = "false"))]
    fn endpoints(&self) -> Vec<String> {
        self.snapshot.lock().unwrap().endpoints.clone()
    }
}

/// Serves `org.uncloud.Mesh1` on `conn` and returns a handle to emit its signals.
pub async fn serve(conn: &Connection, snapshot: SharedSnapshot) -> zbus::Result<Signals> {
    conn.object_server()
        .at(MESH_PATH, Mesh1 { snapshot })
        .await?;
    conn.request_name(MESH_NAME).await?;
    let iface = conn
        .object_server()
        .interface::<_, Mesh1>(MESH_PATH)
        .await?;
    Ok(Signals { iface })
}

pub struct Signals {
    iface: InterfaceRef<Mesh1>,
}

impl Signals {
    pub async fn emit(&self, event: &PeerEvent) {
        let emitter = self.iface.signal_emitter();
        let result = match event {
            PeerEvent::Up { machine_id, name } => Mesh1::peer_up(emitter, machine_id, name).await,
            PeerEvent::Down { machine_id, name } => {
                Mesh1::peer_down(emitter, machine_id, name).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not emit a D-Bus signal");
        }
    }
}

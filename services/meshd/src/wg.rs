//! The userspace WireGuard device (gotatun) on a TUN device, and the few operations meshd
//! needs from it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gotatun::device::{Device, DeviceBuilder, Peer};
use gotatun::tun::tun_async_device::TunDevice;
use gotatun::x25519::{PublicKey, StaticSecret};
use ipnetwork::{IpNetwork, Ipv4Network};

use crate::relay::RelayFactory;

/// gotatun on a TUN device, its UDP socket wrapped for relaying and probing.
pub type WgDevice = Device<(RelayFactory, TunDevice, TunDevice)>;

#[derive(Debug, thiserror::Error)]
pub enum WgError {
    #[error("cannot create TUN device {ifname} (needs CAP_NET_ADMIN and /dev/net/tun): {reason}")]
    Tun { ifname: String, reason: String },
    #[error("cannot start the WireGuard device on UDP port {port}: {reason}")]
    Start { port: u16, reason: String },
    #[error("cannot reconfigure the WireGuard device: {0}")]
    Configure(String),
}

/// Creates the TUN device `ifname` and a WireGuard device on it listening on `port`.
pub async fn create(
    ifname: &str,
    port: u16,
    key: StaticSecret,
    udp: RelayFactory,
) -> Result<Arc<WgDevice>, WgError> {
    let tun = TunDevice::from_name(ifname).map_err(|e| WgError::Tun {
        ifname: ifname.into(),
        reason: e.to_string(),
    })?;
    let start = |e: gotatun::device::Error| WgError::Start {
        port,
        reason: e.to_string(),
    };
    let device = DeviceBuilder::new()
        .with_udp(udp)
        .with_ip(tun)
        .with_private_key(key)
        .build()
        .await
        .map_err(start)?;
    // Built without peers the device has no socket yet; setting the port binds it now, so a
    // port already in use is an error at start rather than at the first peer.
    device.set_listen_port(port).await.map_err(start)?;
    Ok(Arc::new(device))
}

/// One peer as the device sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub public_key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

pub async fn stats(device: &WgDevice) -> Vec<PeerStats> {
    device
        .peers()
        .await
        .into_iter()
        .map(|p| PeerStats {
            public_key: *p.peer.public_key.as_bytes(),
            endpoint: p.peer.endpoint,
            last_handshake: p.stats.last_handshake,
            rx_bytes: p.stats.rx_bytes as u64,
            tx_bytes: p.stats.tx_bytes as u64,
        })
        .collect()
}

fn subnet_net(subnet: Ipv4Addr) -> IpNetwork {
    IpNetwork::V4(Ipv4Network::new(subnet, 24).expect("/24 is a valid prefix"))
}

/// Adds a peer routing `subnet/24`, or updates it if the key is known.
pub async fn upsert_peer(
    device: &WgDevice,
    key: [u8; 32],
    subnet: Ipv4Addr,
    endpoint: Option<SocketAddr>,
    keepalive: u16,
) -> Result<(), WgError> {
    let public_key = PublicKey::from(key);
    // `Device::modify_peer` wants `&mut`; the same operation through `write` does not.
    let known = device
        .write(async |d| {
            d.modify_peer(&public_key, |p| {
                p.clear_allowed_ips();
                p.add_allowed_ip(subnet_net(subnet));
            })
            .await
        })
        .await
        .map_err(|e| WgError::Configure(e.to_string()))?;
    if known {
        return Ok(());
    }
    let mut peer = Peer::new(public_key).with_allowed_ip(subnet_net(subnet));
    peer.endpoint = endpoint;
    peer.keepalive = Some(keepalive);
    device
        .add_peer(peer)
        .await
        .map_err(|e| WgError::Configure(e.to_string()))?;
    Ok(())
}

pub async fn remove_peer(device: &WgDevice, key: [u8; 32]) -> Result<(), WgError> {
    device
        .remove_peer(&PublicKey::from(key))
        .await
        .map(|_| ())
        .map_err(|e| WgError::Configure(e.to_string()))
}

pub async fn set_endpoint(
    device: &WgDevice,
    key: [u8; 32],
    endpoint: Option<SocketAddr>,
) -> Result<(), WgError> {
    let public_key = PublicKey::from(key);
    device
        .write(async |d| {
            d.modify_peer(&public_key, |p| p.set_endpoint(endpoint))
                .await
        })
        .await
        .map(|_| ())
        .map_err(|e| WgError::Configure(e.to_string()))
}

/// Starts a handshake with the peer now rather than at the next packet, so a freshly chosen
/// endpoint is tested at once. Gives up quietly after `timeout` (the endpoint timeline
/// decides what a missing handshake means).
pub fn kick_handshake(device: &Arc<WgDevice>, key: [u8; 32], timeout: Duration) {
    let device = Arc::clone(device);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(timeout, device.force_handshake(&PublicKey::from(key))).await;
    });
}

//! `/etc/uncloud/meshd.toml`: every knob, its default, and why.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
pub use uncloud_common::config::ConfigInvalid;
use uncloud_common::config::{invalid, DaemonConfig};

use crate::endpoint::Timing;

/// Default config file path.
pub const DEFAULT_PATH: &str = "/etc/uncloud/meshd.toml";

/// WireGuard renews a healthy session's keys (a new handshake) every 120 s; a peer is only
/// silent for longer when something is wrong.
pub const MIN_DOWN_AFTER_SECS: u64 = 135;

/// meshd's configuration. Every field has a default, so an empty (or missing) file works.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Name of the TUN device. Default `uncloud`.
    pub interface: String,
    /// UDP port WireGuard listens on (all addresses). Default 51820.
    pub listen_port: u16,
    /// Where the private key lives (`private.key`, mode 0600). Default `/var/lib/uncloud/meshd`.
    pub data_dir: PathBuf,
    /// Addresses to advertise besides the interfaces' own, such as a VPS's public IP or a
    /// router's port forward: `ip:port`, or `ip` for the listen port. Default: none.
    pub public_endpoints: Vec<String>,
    /// Advertise the addresses of this machine's own interfaces (not loopback, bridges, bridge
    /// ports, TUN devices or link-local addresses). Default true.
    pub advertise_interfaces: bool,
    /// MTU of the TUN device. Default: the MTU of the interface the default route uses, minus
    /// the worst-case overhead (88 bytes: IPv6 + UDP + WireGuard + relay header), or 1412.
    pub mtu: Option<u16>,
    /// How long a newly tried endpoint may take to complete a handshake before the next one
    /// is tried, in seconds. Default 15.
    pub handshake_timeout_secs: u64,
    /// How long an established peer may go without a handshake before it is down, in seconds.
    /// Default 275 (WireGuard rekeys every 120 s and retries for 90 s more).
    pub down_after_secs: u64,
    /// WireGuard persistent keepalive, so NAT mappings stay open, in seconds. Default 25.
    pub keepalive_secs: u16,
    /// Install the mesh's nftables rules (table `inet uncloud_mesh`). Default true.
    pub firewall: bool,
    /// The machine's container bridge, the only interface mesh traffic is forwarded to.
    /// Default `uncloud0`.
    pub container_bridge: String,
    /// Machine-to-machine TCP ports (stated's sync, dockerd-shim's RPC): reachable only
    /// through the mesh device, and locally only by root. Default `[7947, 7948, 7949]`.
    pub machine_tcp_ports: Vec<u16>,
    /// Machine-to-machine UDP ports (stated's gossip), the same way. Default `[7946]`.
    pub machine_udp_ports: Vec<u16>,
    /// Which D-Bus to use: `system`, `session`, or a bus address such as
    /// `unix:path=/run/test-bus`. Default `system`.
    pub bus: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interface: "uncloud".into(),
            listen_port: 51820,
            data_dir: PathBuf::from(uncloud_common::config::DATA_DIR).join("meshd"),
            public_endpoints: Vec::new(),
            advertise_interfaces: true,
            mtu: None,
            handshake_timeout_secs: 15,
            down_after_secs: 275,
            keepalive_secs: 25,
            firewall: true,
            container_bridge: "uncloud0".into(),
            machine_tcp_ports: vec![
                7947,
                uncloud_common::rpc::CONTAINER_OPS_PORT,
                uncloud_common::rpc::APID_PEER_PORT,
            ],
            machine_udp_ports: vec![7946],
            bus: "system".into(),
        }
    }
}

impl DaemonConfig for Config {
    fn validate(&self) -> Result<(), ConfigInvalid> {
        // Linux interface names: 1-15 bytes, no '/', no whitespace.
        if self.interface.is_empty()
            || self.interface.len() > 15
            || self
                .interface
                .chars()
                .any(|c| c == '/' || c.is_whitespace())
        {
            return invalid("interface", "must be 1-15 characters without '/' or spaces");
        }
        if self.listen_port == 0 {
            return invalid("listen_port", "must be a fixed port; peers dial it");
        }
        if let Some(mtu) = self.mtu {
            if !(1280..=65535).contains(&mtu) {
                return invalid("mtu", "must be at least 1280");
            }
        }
        if self.handshake_timeout_secs == 0 {
            return invalid("handshake_timeout_secs", "must be above 0");
        }
        if self.down_after_secs < MIN_DOWN_AFTER_SECS {
            return invalid(
                "down_after_secs",
                "must be at least 135: WireGuard handshakes only every 120 s on a healthy tunnel",
            );
        }
        if self.keepalive_secs == 0 {
            return invalid("keepalive_secs", "must be above 0; NAT mappings expire");
        }
        self.public_endpoints()?;
        Ok(())
    }
}

impl Config {
    pub fn key_path(&self) -> PathBuf {
        self.data_dir.join("private.key")
    }

    pub fn timing(&self) -> Timing {
        Timing {
            handshake_timeout: self.handshake_timeout_secs * 1000,
            down_after: self.down_after_secs * 1000,
            keepalive: u64::from(self.keepalive_secs) * 1000,
        }
    }

    /// The configured public endpoints with the listen port filled in where omitted.
    pub fn public_endpoints(&self) -> Result<Vec<SocketAddr>, ConfigInvalid> {
        self.public_endpoints
            .iter()
            .map(|e| {
                e.parse::<SocketAddr>()
                    .or_else(|_| {
                        e.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, self.listen_port))
                    })
                    .or_else(|_| {
                        invalid(
                            "public_endpoints",
                            format!("{e:?} is neither ip:port nor ip"),
                        )
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_documents_valid_keys() {
        uncloud_common::config::check_shipped_config::<Config>(include_str!("../dist/meshd.toml"))
            .unwrap();
    }

    #[test]
    fn empty_file_gives_valid_defaults() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
        assert_eq!(c.timing(), Timing::default());
    }

    #[test]
    fn public_endpoints_take_the_listen_port_when_omitted() {
        let c: Config = toml::from_str(
            "listen_port = 4000\npublic_endpoints = [\"203.0.113.9\", \"198.51.100.2:5000\"]",
        )
        .unwrap();
        assert_eq!(
            c.public_endpoints().unwrap(),
            vec![
                "203.0.113.9:4000".parse().unwrap(),
                "198.51.100.2:5000".parse().unwrap()
            ]
        );
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            ("interface = \"a/b\"", "interface"),
            ("interface = \"much-too-long-name\"", "interface"),
            ("listen_port = 0", "listen_port"),
            ("mtu = 576", "mtu"),
            ("down_after_secs = 10", "down_after_secs"),
            ("keepalive_secs = 0", "keepalive_secs"),
            ("public_endpoints = [\"example.com\"]", "public_endpoints"),
        ] {
            let c: Config = toml::from_str(text).unwrap();
            let e = c.validate().unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
        assert!(toml::from_str::<Config>("no_such_knob = 1").is_err());
    }
}

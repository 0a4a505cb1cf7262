//! `/etc/uncloud/dockerd-shim.toml`: every knob, its default, and why.

use std::path::PathBuf;

use serde::Deserialize;
pub use uncloud_common::config::ConfigInvalid;
use uncloud_common::config::{invalid, DaemonConfig};

/// Default config file path.
pub const DEFAULT_PATH: &str = "/etc/uncloud/dockerd-shim.toml";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The Docker engine's API socket. Default `/var/run/docker.sock`.
    pub docker_socket: PathBuf,
    /// Name of the Docker network containers join. Default `uncloud`.
    pub network: String,
    /// Linux name of that network's bridge; meshd forwards mesh traffic only to it, so the two
    /// must agree (meshd's `container_bridge`). Default `uncloud0`.
    pub bridge: String,
    /// MTU of the bridge. Default: the mesh TUN's (so containers never send packets the mesh
    /// must fragment), read from `/sys/class/net/<mesh_interface>/mtu`, else 1412.
    pub mtu: Option<u16>,
    /// meshd's TUN device, whose MTU the bridge takes. Default `uncloud`.
    pub mesh_interface: String,
    /// Which D-Bus: `system`, `session` or an address. Default `system`.
    pub bus: String,
    /// Address other machines reach the container-ops RPC (tarpc) on. Default: this machine's
    /// mesh address, never a public one.
    pub rpc_address: Option<std::net::IpAddr>,
    /// TCP port of that RPC. Default 7948; 0 turns it off.
    pub rpc_port: u16,
    /// Keep the forwarding and masquerade rules containers need (see the `firewall` module).
    /// Default true; turn off only if the host's own firewall provides the same.
    pub manage_firewall: bool,
    /// How long a running container is drained (out of its service's addresses on every
    /// machine, requests already made to it finishing) before it is removed, in ms. Default
    /// 2000: the state reaches every machine of a healthy network in well under that; 0
    /// removes at once.
    pub drain_ms: u64,
    /// After the drain period, how long to wait at most for every ingress machine to say it
    /// sends nothing to the container any more (requests in flight through ingress finish),
    /// in ms. Default 30000; 0: no wait.
    pub drain_timeout_ms: u64,
    /// Where the files services mount (Compose secrets and configs) are written, a directory
    /// per container, root's only. Default `/var/lib/uncloud/dockerd-shim/files`.
    pub files_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            network: "uncloud".into(),
            bridge: "uncloud0".into(),
            mtu: None,
            mesh_interface: "uncloud".into(),
            bus: "system".into(),
            rpc_address: None,
            rpc_port: uncloud_common::rpc::CONTAINER_OPS_PORT,
            manage_firewall: true,
            drain_ms: 2000,
            drain_timeout_ms: 30_000,
            files_dir: PathBuf::from("/var/lib/uncloud/dockerd-shim/files"),
        }
    }
}

impl DaemonConfig for Config {
    fn validate(&self) -> Result<(), ConfigInvalid> {
        if !self.files_dir.is_absolute() {
            return invalid("files_dir", "must be an absolute path");
        }
        if self.network.is_empty() {
            return invalid("network", "must not be empty");
        }
        if self.bridge.is_empty() || self.bridge.len() > 15 || self.bridge.contains('/') {
            return invalid(
                "bridge",
                "must be a Linux interface name (1-15 characters, no '/')",
            );
        }
        if let Some(mtu) = self.mtu {
            if mtu < 1280 {
                return invalid("mtu", "must be at least 1280");
            }
        }
        Ok(())
    }
}

/// The MTU to use when nothing says otherwise (meshd's default over a 1500-byte uplink).
pub const FALLBACK_MTU: u16 = 1412;

impl Config {
    /// The bridge MTU: configured, else the mesh TUN's, else [`FALLBACK_MTU`].
    pub fn mtu(&self) -> u16 {
        self.mtu.unwrap_or_else(|| {
            std::fs::read_to_string(format!("/sys/class/net/{}/mtu", self.mesh_interface))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(FALLBACK_MTU)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_documents_valid_keys() {
        uncloud_common::config::check_shipped_config::<Config>(include_str!(
            "../dist/dockerd-shim.toml"
        ))
        .unwrap();
    }

    #[test]
    fn defaults_are_valid_and_bad_values_named() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
        for (text, key) in [
            ("bridge = \"much-too-long-bridge\"", "bridge"),
            ("network = \"\"", "network"),
            ("mtu = 1000", "mtu"),
        ] {
            let c: Config = toml::from_str(text).unwrap();
            assert_eq!(c.validate().unwrap_err().key, key, "{text}");
        }
        assert!(toml::from_str::<Config>("socket = 1").is_err());
    }
}

//! `/etc/uncloud/stated.toml`: every knob, its default, and why.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
pub use uncloud_common::config::ConfigInvalid;
use uncloud_common::config::{invalid, DaemonConfig};

/// Default config file path.
pub const DEFAULT_PATH: &str = "/etc/uncloud/stated.toml";

/// stated's configuration. Every field has a default, so an empty (or missing) file works.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Makes this machine a member of the named network at start, with an empty state (tests
    /// and hand-made setups). Default: none: a fresh machine belongs to no network until
    /// `uc machine init` creates one or a member admits it (`CreateNetwork`/`JoinNetwork` on
    /// D-Bus); after that the network id is kept in `<data_dir>/membership`.
    pub network_id: Option<String>,
    /// The mesh CIDR of a network this machine creates when `CreateNetwork` names none.
    /// Default `10.210.0.0/16`.
    pub mesh_cidr: String,
    /// The name this machine asks for when it creates or joins a network and the caller
    /// names none (a DNS label). Default: the host name, lowercased.
    pub machine_name: Option<String>,
    /// Where the state store and the machine identity live. Default `/var/lib/uncloud/stated`.
    pub data_dir: PathBuf,
    /// Where gossip (UDP) and sync (TCP) listen. `"mesh"`: the machine's mesh address
    /// (10.210.X.1), bound once meshd has put it on the mesh device and moved when the machine
    /// is renumbered; peers are then dialled only at the mesh addresses of the machines in the
    /// state and accepted only from them (never at an address gossip advertises). An IP
    /// address instead (tests, hand-made setups on one host) listens there and dials what the
    /// `seeds` and gossip say. Default `"mesh"`.
    pub listen_address: Listen,
    /// UDP port of the gossip protocol (chitchat). Default 7946.
    pub gossip_port: u16,
    /// TCP port of the state sync RPC (tarpc). Default 7947.
    pub sync_port: u16,
    /// Gossip addresses (`ip:port`) of machines to contact first. Default: none.
    pub seeds: Vec<String>,
    /// How often each machine gossips with a few others, in ms. Lower detects failures and
    /// missed pushes sooner and costs more idle traffic. Default 1000.
    pub gossip_interval_ms: u64,
    /// A live machine whose heartbeat has not advanced for this long is reported `suspect`.
    /// Default 3000.
    pub suspect_after_ms: u64,
    /// Phi-accrual threshold above which the failure detector declares a machine dead.
    /// Default 8 (chitchat's default).
    pub phi_threshold: f64,
    /// How often every live peer is synced even when gossip shows nothing missing, in ms.
    /// A safety net behind push and gossip-driven pulls. Default 30000.
    pub anti_entropy_interval_ms: u64,
    /// How long one sync RPC may take before the session is abandoned, in ms. Default 5000.
    pub sync_timeout_ms: u64,
    /// A sync message bigger than this (a machine far behind catching up) travels in parts
    /// of this size, each its own RPC frame (frames are capped at 64 MiB). Default 32 MiB.
    pub sync_chunk_bytes: usize,
    /// Compact the store into one snapshot after this many appended entries. Default 1000.
    pub compact_after_entries: u64,
    /// ... or after this many appended bytes. Default 8 MiB.
    pub compact_after_bytes: u64,
    /// Which D-Bus to serve `org.uncloud.State1` on: `system`, `session`, `none`, or a bus
    /// address such as `unix:path=/run/test-bus`. Default `system`.
    pub bus: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            network_id: None,
            mesh_cidr: "10.210.0.0/16".into(),
            machine_name: None,
            data_dir: PathBuf::from(uncloud_common::config::DATA_DIR).join("stated"),
            listen_address: Listen::Mesh,
            gossip_port: 7946,
            sync_port: 7947,
            seeds: Vec::new(),
            gossip_interval_ms: 1000,
            suspect_after_ms: 3000,
            phi_threshold: 8.0,
            anti_entropy_interval_ms: 30_000,
            sync_timeout_ms: 5000,
            sync_chunk_bytes: 32 * 1024 * 1024,
            compact_after_entries: 1000,
            compact_after_bytes: 8 * 1024 * 1024,
            bus: "system".into(),
        }
    }
}

impl DaemonConfig for Config {
    fn validate(&self) -> Result<(), ConfigInvalid> {
        if let Some(id) = &self.network_id {
            if let Err(e) = uncloud_common::model::validate_id("network id", id) {
                return invalid("network_id", e.to_string());
            }
        }
        if uncloud_common::conflict::subnet_capacity(&self.mesh_cidr).is_none() {
            return invalid(
                "mesh_cidr",
                format!(
                    "{:?} must be an IPv4 CIDR with a prefix between /8 and /23",
                    self.mesh_cidr
                ),
            );
        }
        if let Some(name) = &self.machine_name {
            if let Err(e) = uncloud_common::model::validate_dns_label("machine name", name) {
                return invalid("machine_name", e.to_string());
            }
        }
        if self.gossip_interval_ms == 0 {
            return invalid("gossip_interval_ms", "must be above 0");
        }
        if self.sync_timeout_ms == 0 {
            return invalid("sync_timeout_ms", "must be above 0");
        }
        let frame = uncloud_common::rpc::MAX_FRAME_BYTES;
        if !(1024..=frame / 2).contains(&self.sync_chunk_bytes) {
            return invalid(
                "sync_chunk_bytes",
                format!("must be between 1024 and {} (half a frame)", frame / 2),
            );
        }
        if self.gossip_port != 0 && self.gossip_port == self.sync_port {
            return invalid("sync_port", "must differ from gossip_port");
        }
        for seed in &self.seeds {
            if seed.parse::<SocketAddr>().is_err() {
                return invalid("seeds", format!("{seed:?} is not ip:port"));
            }
        }
        Ok(())
    }
}

/// Where gossip and sync listen: see [`Config::listen_address`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Mesh,
    Address(IpAddr),
}

impl Listen {
    pub const LOOPBACK: Listen = Listen::Address(IpAddr::V4(Ipv4Addr::LOCALHOST));
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "mesh" {
            return Ok(Listen::Mesh);
        }
        text.parse().map(Listen::Address).map_err(|_| {
            serde::de::Error::custom(format!("{text:?} is neither \"mesh\" nor an IP address"))
        })
    }
}

impl Config {
    /// The gossip address with a fixed listen address; with `mesh`, the unspecified address
    /// (the real one is known only once the machine has a subnet).
    pub fn gossip_addr(&self) -> SocketAddr {
        SocketAddr::new(self.fixed_ip(), self.gossip_port)
    }

    pub fn sync_addr(&self) -> SocketAddr {
        SocketAddr::new(self.fixed_ip(), self.sync_port)
    }

    fn fixed_ip(&self) -> IpAddr {
        match self.listen_address {
            Listen::Address(ip) => ip,
            Listen::Mesh => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }

    pub fn on_mesh(&self) -> bool {
        self.listen_address == Listen::Mesh
    }

    pub fn gossip_interval(&self) -> Duration {
        Duration::from_millis(self.gossip_interval_ms)
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("state.redb")
    }

    /// The container tables' rows (decision 0014), beside the document's store.
    pub fn containers_path(&self) -> PathBuf {
        self.data_dir.join("containers.redb")
    }

    /// The file that says which network this machine belongs to (absent: fresh).
    pub fn membership_path(&self) -> PathBuf {
        self.data_dir.join("membership")
    }

    /// The name to ask for when none is given: configured, else the host name.
    pub fn machine_name(&self) -> String {
        self.machine_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_else(|_| "machine".into());
            sanitize_label(host.trim())
        })
    }
}

/// Turns a host name into a valid DNS label (`My_Host.local` -> `my-host`).
pub fn sanitize_label(host: &str) -> String {
    let first = host.split('.').next().unwrap_or_default();
    let label = uncloud_common::model::to_dns_label(first, 63);
    if label.is_empty() {
        "machine".into()
    } else {
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_documents_valid_keys() {
        uncloud_common::config::check_shipped_config::<Config>(include_str!("../dist/stated.toml"))
            .unwrap();
    }

    #[test]
    fn defaults_are_valid_and_empty_file_gives_defaults() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let c = Config {
            mesh_cidr: "10.0.0.0/30".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("mesh_cidr"));
        let c = Config {
            seeds: vec!["nope".into()],
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("seeds"));
        assert!(toml::from_str::<Config>("gosip_port = 1").is_err());
        let err = toml::from_str::<Config>("listen_address = \"everywhere\"").unwrap_err();
        assert!(err.to_string().contains("neither"), "{err}");
        let c: Config = toml::from_str("listen_address = \"127.0.0.1\"").unwrap();
        assert_eq!(c.listen_address, Listen::LOOPBACK);
        assert!(Config::default().on_mesh());
    }

    #[test]
    fn host_names_become_labels() {
        assert_eq!(sanitize_label("My_Host.example.com"), "my-host");
        assert_eq!(sanitize_label("--"), "machine");
        assert_eq!(sanitize_label(&"x".repeat(80)).len(), 63);
    }
}

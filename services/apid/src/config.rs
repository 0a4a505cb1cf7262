//! apid's settings, `/etc/uncloud/apid.toml`; every key has a default.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uncloud_common::config::{invalid, ConfigInvalid, DaemonConfig, DATA_DIR};

pub const DEFAULT_PATH: &str = "/etc/uncloud/apid.toml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the API listens (TLS). Default `0.0.0.0:7443`.
    pub listen: SocketAddr,
    /// `system`, `session`, or a D-Bus address.
    pub bus: String,
    /// Root under which the identity directory (`/var/lib/uncloud/identity`) is found; `/`
    /// on a machine, a temporary directory in tests.
    pub root: PathBuf,
    /// apid's own files: the machine's CA and server certificate.
    pub data_dir: PathBuf,
    /// Mesh range for a network created here; empty: stated's setting.
    pub mesh_cidr: String,
    /// Longest wait imposed after repeated wrong setup tokens.
    pub token_backoff_max_secs: u64,
    /// Validity of a join ticket when `uc` asks for none (`uc machine add`). Default 600.
    pub ticket_ttl_secs: u64,
    /// Longest validity a ticket may be given (`uc machine token --ttl`, pre-seeded in
    /// user-data or on an SD card that may wait on a shelf). Default 30 days.
    pub ticket_max_ttl_secs: u64,
    /// What `uc machine reboot` runs, after answering. Default `["systemctl", "reboot"]`.
    pub reboot_command: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, uncloud_api::wire::PORT)),
            bus: "system".into(),
            root: PathBuf::from("/"),
            data_dir: PathBuf::from(DATA_DIR).join("apid"),
            mesh_cidr: String::new(),
            token_backoff_max_secs: 60,
            ticket_ttl_secs: 600,
            ticket_max_ttl_secs: 30 * 24 * 3600,
            reboot_command: vec!["systemctl".into(), "reboot".into()],
        }
    }
}

impl DaemonConfig for Config {
    fn validate(&self) -> Result<(), ConfigInvalid> {
        if self.token_backoff_max_secs == 0 {
            return invalid(
                "token_backoff_max_secs",
                "must be at least 1 (wrong tokens must cost time)",
            );
        }
        if self.ticket_ttl_secs == 0 || self.ticket_ttl_secs > self.ticket_max_ttl_secs {
            return invalid(
                "ticket_ttl_secs",
                "must be at least 1 and at most ticket_max_ttl_secs",
            );
        }
        if self.reboot_command.first().is_none_or(|p| p.is_empty()) {
            return invalid("reboot_command", "must name a program");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_valid_defaults() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
        assert_eq!(c.listen.port(), 7443);
        assert!(toml::from_str::<Config>("listen_port = 1").is_err());
    }

    #[test]
    fn shipped_config_documents_valid_keys() {
        uncloud_common::config::check_shipped_config::<Config>(include_str!("../dist/apid.toml"))
            .unwrap();
    }
}

//! `/etc/uncloud/dnsd.toml`: every knob, its default, and why.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
pub use uncloud_common::config::ConfigInvalid;
use uncloud_common::config::{invalid, DaemonConfig};

/// Default config file path.
pub const DEFAULT_PATH: &str = "/etc/uncloud/dnsd.toml";

/// dnsd's configuration. Every field has a default, so an empty (or missing) file works.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Port on the machine's mesh address (which containers use as their resolver).
    /// Default 53.
    pub port: u16,
    /// More addresses to serve on, such as `127.0.0.1:53` for the machine itself. Only
    /// loopback and mesh addresses get answers wherever dnsd listens. Default: none.
    pub extra_listen: Vec<SocketAddr>,
    /// TTL of the records served, in seconds; also the negative TTL. Small, so a change of
    /// the state shows in clients' caches soon. Default 5.
    pub ttl_secs: u32,
    /// Upstream resolvers for every name outside `internal` (`ip` or `ip:port`). Default:
    /// the `nameserver` lines of `resolv_conf`.
    pub upstreams: Vec<String>,
    /// Where the machine's own resolvers are read from when `upstreams` is empty. Default
    /// `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// How long a forwarded question may take before the client gets SERVFAIL, in ms.
    /// Default 2000.
    pub forward_timeout_ms: u64,
    /// Forwarded questions waiting on upstreams at once; past that, SERVFAIL. Default 512.
    pub max_forwards: usize,
    /// Forwarded answers kept in the cache. Default 10000.
    pub cache_entries: usize,
    /// The mesh device (meshd's `interface`), on which systemd-resolved is told to send
    /// `*.internal` to dnsd, so the machine itself resolves those names. Empty: leave
    /// resolved alone. Default `uncloud`.
    pub resolved_link: String,
    /// Whether dnsd balances the services' virtual addresses (`lb.<service>.internal`) in
    /// nftables (table `ip uncloud_vips`). Off: the names still answer, connections to them
    /// fail. Default true.
    pub virtual_addresses: bool,
    /// The container bridge (dockerd-shim's `bridge`), whose ports dnsd puts in hairpin mode
    /// so that a container can reach itself through its service's virtual address. Default
    /// `uncloud0`.
    pub bridge: String,
    /// Which D-Bus to use: `system`, `session`, or a bus address such as
    /// `unix:path=/run/test-bus`. Default `system`.
    pub bus: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 53,
            extra_listen: Vec::new(),
            ttl_secs: 5,
            upstreams: Vec::new(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            forward_timeout_ms: 2000,
            max_forwards: 512,
            cache_entries: 10_000,
            resolved_link: "uncloud".into(),
            virtual_addresses: true,
            bridge: "uncloud0".into(),
            bus: "system".into(),
        }
    }
}

impl Config {
    /// The upstream resolvers: the configured ones, else those of `resolv_conf` (a missing
    /// file gives none: internal names still work, the rest get SERVFAIL).
    pub fn upstream_addrs(&self) -> Result<Vec<SocketAddr>, ConfigInvalid> {
        if !self.upstreams.is_empty() {
            return self
                .upstreams
                .iter()
                .map(|u| parse_upstream(u).ok_or(()))
                .collect::<Result<_, _>>()
                .or_else(|_| invalid("upstreams", "each must be `ip` or `ip:port`"));
        }
        let text = std::fs::read_to_string(&self.resolv_conf).unwrap_or_default();
        Ok(resolv_conf_nameservers(&text))
    }
}

fn parse_upstream(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| {
        s.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// The `nameserver` addresses of a resolv.conf, port 53.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        // A zone index (`fe80::1%eth0`) cannot be parsed into a SocketAddr: skipped.
        .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl DaemonConfig for Config {
    fn validate(&self) -> Result<(), ConfigInvalid> {
        if self.port == 0 {
            return invalid(
                "port",
                "must be a fixed port; containers are told to use it",
            );
        }
        if self.ttl_secs > 3600 {
            return invalid("ttl_secs", "at most 3600: answers follow the state");
        }
        if self.forward_timeout_ms == 0 {
            return invalid("forward_timeout_ms", "must be above 0");
        }
        if self.max_forwards == 0 {
            return invalid("max_forwards", "must be above 0");
        }
        if !self.resolved_link.is_empty() && self.port != 53 {
            return invalid(
                "resolved_link",
                "systemd-resolved asks port 53 only: set resolved_link = \"\" with another port",
            );
        }
        self.upstream_addrs()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_is_the_default() {
        uncloud_common::config::check_shipped_config::<Config>(include_str!("../dist/dnsd.toml"))
            .unwrap();
    }

    #[test]
    fn upstreams_come_from_the_config_or_resolv_conf() {
        let text = "# comment\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nsearch x\nnameserver 2001:db8::53\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            vec![
                "192.0.2.53:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
        let c = Config {
            upstreams: vec!["192.0.2.1".into(), "192.0.2.2:5353".into()],
            ..Default::default()
        };
        assert_eq!(
            c.upstream_addrs().unwrap(),
            vec![
                "192.0.2.1:53".parse().unwrap(),
                "192.0.2.2:5353".parse().unwrap()
            ]
        );
        let bad = Config {
            upstreams: vec!["resolver.example".into()],
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}

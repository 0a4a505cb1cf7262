//! `/etc/uncloud/ingressd.toml`: every knob, its default, and why.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
pub use uncloud_common::config::ConfigInvalid;
use uncloud_common::config::{invalid, DaemonConfig};

/// Default config file path.
pub const DEFAULT_PATH: &str = "/etc/uncloud/ingressd.toml";

/// Let's Encrypt's production directory: the default, so a real hostname gets a trusted
/// certificate without any setting.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (untrusted certificates, generous rate limits).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// How upstreams are chosen among a route's healthy containers.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    RoundRobin,
    LeastConnections,
}

/// ingressd's configuration. Every field has a default, so an empty (or missing) file works.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where plain HTTP is served (routes published `/http`, redirects to HTTPS and ACME
    /// HTTP-01 challenges). Default `0.0.0.0:80`.
    pub http_listen: Vec<SocketAddr>,
    /// Where HTTPS is served. Default `0.0.0.0:443`.
    pub https_listen: Vec<SocketAddr>,
    /// The ACME directory certificates are ordered from. Default Let's Encrypt production;
    /// `staging` is short for Let's Encrypt staging; any URL works (a test CA such as pebble).
    pub acme_directory: String,
    /// Contact address given to the ACME directory (expiry mail from Let's Encrypt). Empty:
    /// none.
    pub acme_email: String,
    /// PEM roots trusted when talking to the ACME directory. Default the system's
    /// (`/etc/ssl/certs/ca-certificates.crt`); a test CA's root for pebble.
    pub acme_roots: PathBuf,
    /// Whether hostnames get certificates at all. Off: only `self_signed` ones, if that is on.
    /// Default true.
    pub acme: bool,
    /// Serve a self-signed certificate for an HTTPS hostname that has no issued certificate
    /// yet. Browsers warn about it; only for networks without a public DNS name. Default false.
    pub self_signed: bool,
    /// How long one ordering machine's claim on a hostname lasts, in seconds: another machine
    /// orders only after it lapses (the orderer died mid-order). Default 600.
    pub order_claim_secs: u64,
    /// Seconds between a claim and asking the CA to validate, so the claim (with the account
    /// key every ingress machine answers challenges with) has reached the other ingress
    /// machines. Default 3.
    pub challenge_delay_secs: u64,
    /// First back-off after a failed order, in seconds; it doubles per failure up to
    /// `retry_max_secs`. Default 60.
    pub retry_min_secs: u64,
    /// Longest back-off, in seconds. Default 21600 (6 h).
    pub retry_max_secs: u64,
    /// The fraction of a certificate's lifetime after which it is renewed. Default 2/3.
    pub renew_at: f64,
    /// How upstreams are chosen: `round-robin` or `least-connections`. Default round-robin.
    pub balance: Balance,
    /// How long an upstream that refused or timed out is skipped, in ms. Default 10000.
    pub upstream_down_ms: u64,
    /// Connecting to an upstream may take this long, in ms; then the next one is tried.
    /// Default 3000.
    pub connect_timeout_ms: u64,
    /// An upstream may send nothing for this long while it has a request, in ms; then 504
    /// (or the response is cut off if it had begun). Default 60000.
    pub response_timeout_ms: u64,
    /// A client must send a request's headers within this, in ms (slow clients are cut off).
    /// Default 10000.
    pub header_timeout_ms: u64,
    /// A connection (client or upgraded) with no byte either way for this long is closed,
    /// in ms. Default 300000 (5 min).
    pub idle_timeout_ms: u64,
    /// Idle upstream connections are kept this long for reuse, in ms (below the upstream's
    /// own idle timeout: a connection it just closed must not be handed out). Default 30000.
    pub upstream_idle_ms: u64,
    /// Largest request head a client may send, in bytes; more gets 431. Default 65536.
    pub max_header_bytes: usize,
    /// Client connections served at once; more wait in the kernel's accept queue.
    /// Default 10000.
    pub max_connections: usize,
    /// Which D-Bus to use: `system`, `session`, or a bus address such as
    /// `unix:path=/run/test-bus`. Default `system`.
    pub bus: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_listen: vec![SocketAddr::from(([0, 0, 0, 0], 80))],
            https_listen: vec![SocketAddr::from(([0, 0, 0, 0], 443))],
            acme_directory: LETS_ENCRYPT.into(),
            acme_email: String::new(),
            acme_roots: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            acme: true,
            self_signed: false,
            order_claim_secs: 600,
            challenge_delay_secs: 3,
            retry_min_secs: 60,
            retry_max_secs: 6 * 3600,
            renew_at: 2.0 / 3.0,
            balance: Balance::RoundRobin,
            upstream_down_ms: 10_000,
            connect_timeout_ms: 3000,
            response_timeout_ms: 60_000,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            upstream_idle_ms: 30_000,
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            bus: "system".into(),
        }
    }
}

impl Config {
    /// The directory URL, with `staging` expanded.
    pub fn directory(&self) -> &str {
        match self.acme_directory.as_str() {
            "staging" => LETS_ENCRYPT_STAGING,
            "production" | "" => LETS_ENCRYPT,
            url => url,
        }
    }

    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

impl DaemonConfig for Config {
    fn validate(&self) -> Result<(), ConfigInvalid> {
        if self.http_listen.is_empty() && self.https_listen.is_empty() {
            return invalid(
                "http_listen",
                "nothing to listen on (https_listen is empty too)",
            );
        }
        if !self.directory().starts_with("https://") {
            return invalid(
                "acme_directory",
                "must be an https:// URL, staging or production",
            );
        }
        if !(self.renew_at > 0.0 && self.renew_at < 1.0) {
            return invalid(
                "renew_at",
                "must be between 0 and 1 (a fraction of the lifetime)",
            );
        }
        if self.retry_min_secs == 0 || self.retry_max_secs < self.retry_min_secs {
            return invalid(
                "retry_min_secs",
                "must be at least 1 and at most retry_max_secs",
            );
        }
        if self.order_claim_secs < 30 {
            return invalid("order_claim_secs", "at least 30 (an order takes a while)");
        }
        for (key, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("response_timeout_ms", self.response_timeout_ms),
            ("header_timeout_ms", self.header_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("upstream_idle_ms", self.upstream_idle_ms),
        ] {
            if v == 0 {
                return invalid(key, "must be more than 0");
            }
        }
        if self.max_header_bytes < 8192 {
            return invalid(
                "max_header_bytes",
                "at least 8192 (hyper's smallest buffer)",
            );
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be more than 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_is_the_default() {
        uncloud_common::config::check_shipped_config::<Config>(include_str!(
            "../dist/ingressd.toml"
        ))
        .unwrap();
    }

    #[test]
    fn an_empty_file_is_the_defaults_and_they_are_valid() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c, Config::default());
        c.validate().unwrap();
        assert_eq!(c.directory(), LETS_ENCRYPT);
    }

    #[test]
    fn nonsense_is_refused_by_name() {
        let c: Config =
            toml::from_str("acme_directory = \"staging\"\nbalance = \"least-connections\"")
                .unwrap();
        assert_eq!(c.directory(), LETS_ENCRYPT_STAGING);
        assert_eq!(c.balance, Balance::LeastConnections);
        let bad = |text: &str| {
            toml::from_str::<Config>(text)
                .unwrap()
                .validate()
                .unwrap_err()
                .key
        };
        assert_eq!(bad("acme_directory = \"http://x\""), "acme_directory");
        assert_eq!(bad("renew_at = 1.5"), "renew_at");
        assert_eq!(bad("max_header_bytes = 100"), "max_header_bytes");
        assert_eq!(bad("http_listen = []\nhttps_listen = []"), "http_listen");
        assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
    }
}

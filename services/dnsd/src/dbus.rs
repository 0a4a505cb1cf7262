//! `org.uncloud.Dns1` at `/org/uncloud/Dns1`: what this machine's dnsd serves right now.
//!
//! ```text
//! busctl call org.uncloud.Dns1 /org/uncloud/Dns1 org.uncloud.Dns1 Names
//! busctl call org.uncloud.Dns1 /org/uncloud/Dns1 org.uncloud.Dns1 Resolve s db.shop.internal
//! busctl call org.uncloud.Dns1 /org/uncloud/Dns1 org.uncloud.Dns1 Counters
//! busctl get-property org.uncloud.Dns1 /org/uncloud/Dns1 org.uncloud.Dns1 Listening
//! ```

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use uncloud_common::dbus::{DnsNameRow, DNS_NAME, DNS_PATH};
use zbus::{interface, Connection};

use crate::forward::Forwarder;
use crate::names::Resolution;
use crate::server::{Counters, Served};

pub struct Dns1 {
    pub served: watch::Receiver<Arc<Served>>,
    pub counters: Arc<Counters>,
    pub forwarder: Arc<Forwarder>,
    /// The addresses the server is bound to; the daemon updates it when they move.
    pub listening: Arc<Mutex<Vec<String>>>,
}

#[interface(name = "org.uncloud.Dns1")]
impl Dns1 {
    /// Every name of the `internal` zone with the addresses it resolves to right now, as
    /// asked from this machine (not from a container: bare service names are not scoped).
    fn names(&self) -> Vec<DnsNameRow> {
        self.served
            .borrow()
            .names()
            .list()
            .into_iter()
            .map(|(name, ips)| (name, ips.iter().map(ToString::to_string).collect()))
            .collect()
    }

    /// The addresses `name` resolves to right now, as asked from this machine. A name that
    /// does not exist is an error.
    fn resolve(&self, name: &str) -> zbus::fdo::Result<Vec<String>> {
        match self.served.borrow().names().resolve(name, None) {
            Resolution::Addresses(ips) => Ok(ips.iter().map(ToString::to_string).collect()),
            Resolution::Exists => Ok(Vec::new()),
            Resolution::Missing => Err(zbus::fdo::Error::InvalidArgs(format!(
                "{name}: no such name in the internal zone"
            ))),
        }
    }

    /// Queries received, answered from the zone, refused (not from loopback or the mesh),
    /// forwarded upstream, answered from the cache, failed upstream, replies not sent, datagrams
    /// that were no DNS message.
    fn counters(&self) -> HashMap<String, u64> {
        let c = &self.counters;
        let f = &self.forwarder.counters;
        [
            ("queries", c.queries.load(Ordering::Relaxed)),
            (
                "answered_locally",
                c.answered_locally.load(Ordering::Relaxed),
            ),
            ("from_bytes", c.from_bytes.load(Ordering::Relaxed)),
            ("refused", c.refused.load(Ordering::Relaxed)),
            ("forwarded", f.forwarded.load(Ordering::Relaxed)),
            ("cache_hits", f.cache_hits.load(Ordering::Relaxed)),
            ("upstream_failures", f.failures.load(Ordering::Relaxed)),
            ("send_errors", c.errors.load(Ordering::Relaxed)),
            ("malformed", c.malformed.load(Ordering::Relaxed)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The `ip:port`s served on (UDP and TCP).
    #[zbus(property(emits_changed_signal = "false"))]
    fn listening(&self) -> Vec<String> {
        self.listening.lock().unwrap().clone()
    }

    /// The upstream resolvers names outside `internal` go to.
    #[zbus(property(emits_changed_signal = "const"))]
    fn upstreams(&self) -> Vec<String> {
        self.forwarder
            .upstreams()
            .iter()
            .map(ToString::to_string)
            .collect()
    }
}

/// Serves the interface and takes the well-known name.
pub async fn serve(conn: &Connection, iface: Dns1) -> zbus::Result<()> {
    conn.object_server().at(DNS_PATH, iface).await?;
    conn.request_name(DNS_NAME).await?;
    Ok(())
}

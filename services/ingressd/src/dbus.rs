//! `org.uncloud.Ingress1` at `/org/uncloud/Ingress1`: what this machine's ingress serves now.
//!
//! ```text
//! busctl call org.uncloud.Ingress1 /org/uncloud/Ingress1 org.uncloud.Ingress1 Routes
//! busctl call org.uncloud.Ingress1 /org/uncloud/Ingress1 org.uncloud.Ingress1 Certificates
//! busctl call org.uncloud.Ingress1 /org/uncloud/Ingress1 org.uncloud.Ingress1 Counters
//! busctl get-property org.uncloud.Ingress1 /org/uncloud/Ingress1 org.uncloud.Ingress1 Listening
//! ```

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use uncloud_common::dbus::{
    IngressCertificate, IngressRoute, IngressUpstream, INGRESS_NAME, INGRESS_PATH,
};
use zbus::{interface, Connection};

use crate::proxy::Shared;

pub struct Ingress1 {
    pub shared: Arc<Shared>,
    /// The certificate rows, rebuilt by the daemon with each change.
    pub certificates: Arc<Mutex<Vec<IngressCertificate>>>,
    /// `http://addr` and `https://addr` served on; empty without the ingress role.
    pub listening: Arc<Mutex<Vec<String>>>,
}

#[interface(name = "org.uncloud.Ingress1")]
impl Ingress1 {
    /// Every route (hostname, path prefix, protocol, service) with its upstreams and their
    /// health as this machine sees them, as JSON.
    fn routes(&self) -> String {
        let now = Instant::now();
        let rows: Vec<IngressRoute> = self
            .shared
            .table()
            .routes()
            .iter()
            .map(|r| IngressRoute {
                hostname: r.hostname.clone(),
                path: r.path.clone(),
                protocol: r.protocol.as_str().to_string(),
                service: r.service.clone(),
                upstreams: r
                    .upstreams
                    .iter()
                    .map(|a| {
                        let u = self.shared.health.get(*a);
                        IngressUpstream {
                            address: a.to_string(),
                            down: self.shared.health.is_down(*a, now),
                            active: u.active.load(Ordering::Relaxed) as u64,
                            failures: u.failures.load(Ordering::Relaxed),
                        }
                    })
                    .collect(),
            })
            .collect();
        serde_json::to_string(&rows).expect("rows serialize")
    }

    /// Every HTTPS hostname's certificate: status, serial, issuer, expiry, renewal, who
    /// issued it, who orders it now, failures. No secret.
    fn certificates(&self) -> String {
        serde_json::to_string(&*self.certificates.lock().unwrap()).expect("rows serialize")
    }

    /// Requests, those answered 404, retried on another upstream, failed for want of an
    /// upstream, upgraded, and ACME challenges answered.
    fn counters(&self) -> HashMap<String, u64> {
        let c = &self.shared.counters;
        [
            ("requests", c.requests.load(Ordering::Relaxed)),
            ("not_found", c.not_found.load(Ordering::Relaxed)),
            ("retries", c.retries.load(Ordering::Relaxed)),
            (
                "upstream_failures",
                c.upstream_failures.load(Ordering::Relaxed),
            ),
            ("upgrades", c.upgrades.load(Ordering::Relaxed)),
            ("challenges", c.challenges.load(Ordering::Relaxed)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn listening(&self) -> Vec<String> {
        self.listening.lock().unwrap().clone()
    }
}

/// Serves the interface and takes the well-known name.
pub async fn serve(conn: &Connection, iface: Ingress1) -> zbus::Result<()> {
    conn.object_server().at(INGRESS_PATH, iface).await?;
    conn.request_name(INGRESS_NAME).await?;
    Ok(())
}

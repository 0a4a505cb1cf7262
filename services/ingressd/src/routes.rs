//! The routing table: which service's containers answer a hostname and path.
//!
//! Built from the state alone ([`View`]), so every ingress machine computes the same routes:
//! the services' published ports with a hostname (`x-ports`, [`uncloud_common::ports`]),
//! conflicts resolved by [`uncloud_common::claims`] (the oldest service keeps a hostname and
//! path). A route's upstreams are the containers of its service that run, are healthy, are
//! not draining and are on a machine this machine can reach. Pure: tested without sockets.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use uncloud_common::claims;
use uncloud_common::model::ContainerState;
use uncloud_common::ports::Protocol;

use crate::view::View;

/// One hostname and path prefix, and where its requests go.
#[derive(Debug)]
pub struct Route {
    pub hostname: String,
    /// `/` or a prefix without a trailing slash.
    pub path: String,
    pub service_id: String,
    /// `name` or `name.project`, for people.
    pub service: String,
    pub protocol: Protocol,
    /// The containers serving it, sorted (the same order on every rebuild).
    pub upstreams: Vec<SocketAddr>,
    /// Round-robin position (starts anew with each rebuild).
    pub next: AtomicUsize,
}

/// Every route, by hostname; each host's routes longest prefix first.
#[derive(Debug, Default)]
pub struct Table {
    hosts: HashMap<String, Vec<Arc<Route>>>,
}

impl Table {
    pub fn build(view: &View) -> Table {
        let claims = claims::resolve(view.services.values());
        let mut hosts: HashMap<String, Vec<Arc<Route>>> = HashMap::new();
        for ((hostname, path), route) in claims.routes {
            let Some(service) = view.services.get(&route.service_id) else {
                continue;
            };
            let mut upstreams: Vec<SocketAddr> = view
                .containers
                .values()
                .filter(|c| c.service_id == route.service_id)
                .filter(|c| c.state == ContainerState::Running && c.healthy && !c.draining)
                .filter(|c| view.reachable(&c.machine_id))
                .filter_map(|c| c.ip.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, route.port.container_port))
                .collect();
            upstreams.sort();
            upstreams.dedup();
            let name = if service.project.is_empty() {
                service.name.clone()
            } else {
                format!("{}.{}", service.name, service.project)
            };
            hosts
                .entry(hostname.clone())
                .or_default()
                .push(Arc::new(Route {
                    hostname,
                    path,
                    service_id: route.service_id.clone(),
                    service: name,
                    protocol: route.port.protocol,
                    upstreams,
                    next: AtomicUsize::new(0),
                }));
        }
        for routes in hosts.values_mut() {
            routes.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then(a.path.cmp(&b.path)));
        }
        Table { hosts }
    }

    /// The route for a request to `host` (as the client sent it: any case, maybe with a port
    /// or a trailing dot) and `path`: the longest prefix that matches whole segments.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        self.lookup_normalized(&normalize_host(host)?, path)
    }

    /// [`Table::lookup`] for a host already passed through [`normalize_host`].
    pub fn lookup_normalized(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        self.hosts
            .get(host)?
            .iter()
            .find(|r| prefix_matches(&r.path, path))
    }

    /// Whether some route of `host` is served over HTTPS (so it gets a certificate, and plain
    /// HTTP requests to it are redirected).
    pub fn is_https(&self, host: &str) -> bool {
        normalize_host(host)
            .and_then(|h| self.hosts.get(&h))
            .is_some_and(|rs| rs.iter().any(|r| r.protocol == Protocol::Https))
    }

    /// Every hostname with an HTTPS route: the ones that need certificates.
    pub fn https_hosts(&self) -> BTreeSet<String> {
        self.hosts
            .iter()
            .filter(|(_, rs)| rs.iter().any(|r| r.protocol == Protocol::Https))
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Every route, by hostname then longest prefix.
    pub fn routes(&self) -> Vec<Arc<Route>> {
        let mut out: Vec<Arc<Route>> = self.hosts.values().flatten().cloned().collect();
        out.sort_by(|a, b| {
            a.hostname
                .cmp(&b.hostname)
                .then(b.path.len().cmp(&a.path.len()))
        });
        out
    }
}

/// The hostname of a `Host` header or `:authority`: lowercase, without port or trailing dot;
/// `None` when it is not a DNS name (an IP address never matches a route).
pub fn normalize_host(host: &str) -> Option<String> {
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    uncloud_common::ports::hostname(host).ok()
}

/// Whether `prefix` covers `path` on a segment boundary: `/api` covers `/api`, `/api/` and
/// `/api/x` but not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uncloud_common::liveness::Liveness;
    use uncloud_common::model::{Container, Machine, Service, ServiceSpec};

    fn service(id: &str, created: u64, ports: &[&str]) -> Service {
        Service {
            id: id.into(),
            name: id.into(),
            project: "shop".into(),
            created_at_ms: created,
            spec: ServiceSpec {
                image: "img".into(),
                ports: ports.iter().map(|p| p.to_string()).collect(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn container(id: &str, service: &str, machine: &str, ip: &str) -> Container {
        Container {
            id: id.into(),
            name: id.into(),
            machine_id: machine.into(),
            service_id: service.into(),
            ip: ip.into(),
            state: ContainerState::Running,
            healthy: true,
            ..Default::default()
        }
    }

    fn view() -> View {
        let mut v = View {
            me: "m1".into(),
            ..Default::default()
        };
        for m in ["m1", "m2", "m3"] {
            v.machines.insert(
                m.into(),
                Machine {
                    id: m.into(),
                    ..Default::default()
                },
            );
        }
        v.liveness.insert("m2".into(), Liveness::Alive);
        v.liveness.insert("m3".into(), Liveness::Down);
        for s in [
            service("web", 1, &["app.example.com:8000/https"]),
            service(
                "api",
                2,
                &[
                    "app.example.com/api:9000/https",
                    "api.example.com:9000/http",
                ],
            ),
            service("late", 3, &["app.example.com:80/http"]),
        ] {
            v.services.insert(s.id.clone(), s);
        }
        for c in [
            container("w1", "web", "m1", "10.210.1.2"),
            container("w2", "web", "m2", "10.210.2.2"),
            container("w3", "web", "m3", "10.210.3.2"),
            container("a1", "api", "m2", "10.210.2.3"),
        ] {
            v.containers.insert(c.id.clone(), c);
        }
        v
    }

    #[test]
    fn longest_prefix_on_whole_segments_and_only_reachable_containers() {
        let t = Table::build(&view());
        let web = t.lookup("App.Example.com:443", "/index.html").unwrap();
        assert_eq!(web.service_id, "web");
        assert_eq!(web.service, "web.shop");
        assert_eq!(
            web.upstreams,
            [
                "10.210.1.2:8000".parse().unwrap(),
                "10.210.2.2:8000".parse().unwrap()
            ],
            "the container on a machine seen down is left out"
        );
        for path in ["/api", "/api/", "/api/v1/x", "/api?q=1"] {
            assert_eq!(
                t.lookup("app.example.com", path).unwrap().service_id,
                "api",
                "{path}"
            );
        }
        assert_eq!(
            t.lookup("app.example.com.", "/apix").unwrap().service_id,
            "web"
        );
        assert!(t.lookup("unknown.example.com", "/").is_none());
        assert!(t.lookup("10.0.0.1", "/").is_none());
        assert!(t.is_https("app.example.com"));
        assert!(!t.is_https("api.example.com"));
        assert_eq!(
            t.https_hosts().into_iter().collect::<Vec<_>>(),
            ["app.example.com"]
        );
    }

    #[test]
    fn draining_unhealthy_and_stopped_containers_get_no_requests() {
        let mut v = view();
        v.containers.get_mut("w1").unwrap().draining = true;
        v.containers.get_mut("w2").unwrap().healthy = false;
        let t = Table::build(&v);
        assert!(t
            .lookup("app.example.com", "/")
            .unwrap()
            .upstreams
            .is_empty());
        let mut v = view();
        v.containers.get_mut("w2").unwrap().state = ContainerState::Exited;
        let t = Table::build(&v);
        assert_eq!(t.lookup("app.example.com", "/").unwrap().upstreams.len(), 1);
    }

    proptest::proptest! {
        /// Whatever a client sends as host and path, looking it up never panics, and a hit is
        /// a route of that (normalised) host whose prefix covers the path.
        #[test]
        fn any_host_and_path_is_looked_up_safely(host in "\\PC{0,80}", path in "\\PC{0,80}") {
            let t = Table::build(&view());
            if let Some(r) = t.lookup(&host, &path) {
                proptest::prop_assert_eq!(Some(r.hostname.clone()), normalize_host(&host));
                proptest::prop_assert!(prefix_matches(&r.path, &path));
            }
            let _ = t.is_https(&host);
        }
    }

    #[test]
    fn the_older_service_keeps_a_contested_hostname() {
        let t = Table::build(&view());
        // "late" also claims app.example.com/ but "web" is older.
        assert_eq!(t.lookup("app.example.com", "/").unwrap().service_id, "web");
        assert_eq!(t.routes().len(), 3);
    }
}

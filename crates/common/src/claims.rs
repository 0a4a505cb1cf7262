//! Which service serves a hostname and path: one answer on every machine.
//!
//! Two sides of a partition may each deploy a service that publishes `app.example.com`. Both
//! writes are accepted (each side works alone), and after the merge both claims are in the
//! state. Nobody rewrites either spec; every reader (ingressd, `uc`) applies the same rule to
//! the same services and gets the same routes: for each hostname and path prefix, the service
//! created first wins (ties: the smaller id). The others are reported as conflicts until
//! their owners change them. A pure function over the state, so no machine has to "fix"
//! anything and no write can race the rule.

use std::collections::BTreeMap;

use crate::model::Service;
use crate::ports::PublishedPort;

/// The service that serves one hostname and path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub service_id: String,
    pub port: PublishedPort,
}

/// A hostname and path prefix claimed by more than one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub hostname: String,
    pub path: String,
    pub winner: String,
    /// The other claimants, oldest first.
    pub losers: Vec<String>,
}

/// Every route and every conflict in a set of services.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// (hostname, path prefix) → who serves it.
    pub routes: BTreeMap<(String, String), Route>,
    pub conflicts: Vec<Conflict>,
}

/// Applies the rule to `services` (in any order). Ports without a hostname claim nothing;
/// entries that do not parse are skipped (stated refuses them on write).
pub fn resolve<'a>(services: impl IntoIterator<Item = &'a Service>) -> Claims {
    // (host, path) → claimants as (created_at_ms, id, port), sorted below.
    type Claimant<'a> = (u64, &'a str, PublishedPort);
    let mut claimants: BTreeMap<(String, String), Vec<Claimant>> = BTreeMap::new();
    for service in services {
        for text in &service.spec.ports {
            let Ok(port) = PublishedPort::parse(text) else {
                continue;
            };
            let Some(host) = port.hostname.clone() else {
                continue;
            };
            let list = claimants.entry((host, port.path.clone())).or_default();
            // A service that lists one hostname and path twice claims it once (the first).
            if !list.iter().any(|(_, id, _)| *id == service.id) {
                list.push((service.created_at_ms, &service.id, port));
            }
        }
    }
    let mut claims = Claims::default();
    for ((hostname, path), mut list) in claimants {
        list.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut list = list.into_iter();
        let (_, winner, port) = list.next().expect("every entry has a claimant");
        let losers: Vec<String> = list.map(|(_, id, _)| id.to_string()).collect();
        if !losers.is_empty() {
            claims.conflicts.push(Conflict {
                hostname: hostname.clone(),
                path: path.clone(),
                winner: winner.to_string(),
                losers,
            });
        }
        claims.routes.insert(
            (hostname, path),
            Route {
                service_id: winner.to_string(),
                port,
            },
        );
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceSpec;
    use proptest::prelude::*;

    fn svc(name: &str, created: u64, ports: &[&str]) -> Service {
        Service {
            id: name.into(),
            name: name.into(),
            created_at_ms: created,
            spec: ServiceSpec {
                image: "img".into(),
                ports: ports.iter().map(|p| p.to_string()).collect(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_older_service_keeps_the_hostname_and_the_other_is_reported() {
        let services = [
            svc(
                "new",
                20,
                &["app.example.com:80/http", "new.example.com:80"],
            ),
            svc("old", 10, &["App.Example.com:8000/https", "8080/http"]),
        ];
        let claims = resolve(&services);
        let app = &claims.routes[&("app.example.com".into(), "/".into())];
        assert_eq!(app.service_id, "old");
        assert_eq!(app.port.container_port, 8000);
        assert_eq!(
            claims.routes[&("new.example.com".into(), "/".into())].service_id,
            "new"
        );
        assert_eq!(
            claims.routes.len(),
            2,
            "a port without a hostname claims nothing"
        );
        assert_eq!(
            claims.conflicts,
            [Conflict {
                hostname: "app.example.com".into(),
                path: "/".into(),
                winner: "old".into(),
                losers: vec!["new".into()],
            }]
        );
        // Different path prefixes of one host are different claims.
        let services = [
            svc("web", 1, &["example.com:80"]),
            svc("api", 2, &["example.com/api:9000"]),
        ];
        let claims = resolve(&services);
        assert!(claims.conflicts.is_empty());
        assert_eq!(claims.routes.len(), 2);
        // Same age: the smaller id, on every machine.
        let claims = resolve(&[svc("b", 5, &["x.com:80"]), svc("a", 5, &["x.com:81"])]);
        assert_eq!(claims.routes[&("x.com".into(), "/".into())].service_id, "a");
    }

    proptest! {
        /// Whatever order a machine reads the services in, it computes the same routes and
        /// conflicts; each winner is the oldest claimant, and no claimant goes unaccounted.
        #[test]
        fn every_order_gives_the_same_answer(
            raw in prop::collection::vec(
                (0u64..4, prop::collection::vec((0usize..3, 0usize..2, 1u16..4), 0..4)),
                1..8,
            ),
            seed in any::<u64>(),
        ) {
            let hosts = ["a.com", "b.com", "c.com"];
            let paths = ["", "/api"];
            let services: Vec<Service> = raw
                .iter()
                .enumerate()
                .map(|(i, (created, ports))| {
                    let ports: Vec<String> = ports
                        .iter()
                        .map(|(h, p, port)| format!("{}{}:{port}", hosts[*h], paths[*p]))
                        .collect();
                    let refs: Vec<&str> = ports.iter().map(String::as_str).collect();
                    svc(&format!("s{i}"), *created, &refs)
                })
                .collect();
            let mut shuffled = services.clone();
            let mut state = seed;
            for i in (1..shuffled.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (state >> 33) as usize % (i + 1));
            }
            let a = resolve(&services);
            prop_assert_eq!(&a, &resolve(&shuffled));
            for ((host, path), route) in &a.routes {
                let claimants: Vec<&Service> = services
                    .iter()
                    .filter(|s| s.spec.ports.iter().any(|p| {
                        let p = PublishedPort::parse(p).unwrap();
                        p.hostname.as_deref() == Some(host.as_str()) && &p.path == path
                    }))
                    .collect();
                let oldest = claimants.iter().map(|s| (s.created_at_ms, &s.id)).min().unwrap();
                prop_assert_eq!(&route.service_id, oldest.1);
                let reported = a.conflicts.iter().find(|c| &c.hostname == host && &c.path == path);
                let losers = reported.map_or(0, |c| c.losers.len());
                prop_assert_eq!(losers + 1, claimants.len());
            }
        }
    }
}

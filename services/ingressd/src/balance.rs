//! Choosing an upstream: round-robin or least connections among a route's containers,
//! skipping those that recently refused or timed out (passive health).
//!
//! No probes: an upstream is marked down when a connection to it fails, and tried again
//! after `down_for`. When every upstream is marked down the least recently marked one is
//! tried anyway (the marks may be stale; a 502 without trying helps nobody). Pure apart from
//! atomics: time is passed in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::Balance;
use crate::routes::Route;

/// What ingressd knows of one upstream address.
#[derive(Debug, Default)]
pub struct Upstream {
    /// Requests in flight to it.
    pub active: AtomicUsize,
    /// Until when it is skipped (ms since the health registry's start); 0: it is not.
    down_until_ms: AtomicU64,
    /// Failures since the last success (for `uc ingress ls`).
    pub failures: AtomicU64,
}

/// Every upstream's health, shared by all connections.
#[derive(Debug)]
pub struct Health {
    start: Instant,
    down_for: Duration,
    upstreams: RwLock<HashMap<SocketAddr, Arc<Upstream>>>,
}

impl Health {
    pub fn new(down_for: Duration) -> Health {
        Health {
            start: Instant::now(),
            down_for,
            upstreams: RwLock::default(),
        }
    }

    pub fn get(&self, addr: SocketAddr) -> Arc<Upstream> {
        if let Some(u) = self.upstreams.read().unwrap().get(&addr) {
            return u.clone();
        }
        self.upstreams
            .write()
            .unwrap()
            .entry(addr)
            .or_default()
            .clone()
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_millis() as u64 + 1
    }

    /// A connection to `addr` failed: skip it for a while.
    pub fn failed(&self, addr: SocketAddr, now: Instant) {
        let u = self.get(addr);
        u.failures.fetch_add(1, Ordering::Relaxed);
        u.down_until_ms.store(
            self.ms(now) + self.down_for.as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    pub fn is_down(&self, addr: SocketAddr, now: Instant) -> bool {
        self.get(addr).down_until_ms.load(Ordering::Relaxed) > self.ms(now)
    }

    /// Whether a request to any port of `ip` is in flight.
    pub fn busy(&self, ip: std::net::IpAddr) -> bool {
        self.upstreams
            .read()
            .unwrap()
            .iter()
            .any(|(a, u)| a.ip() == ip && u.active.load(Ordering::Relaxed) > 0)
    }

    /// Forgets upstreams no route has any more (and no request is in flight to).
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.upstreams
            .write()
            .unwrap()
            .retain(|a, u| keep(a) || u.active.load(Ordering::Relaxed) > 0);
    }

    /// Chooses an upstream of `route` other than those in `tried`, with its health entry.
    /// `now` is read only when there is a choice to make (not for a route with one upstream).
    pub fn pick(
        &self,
        route: &Route,
        policy: Balance,
        tried: &[SocketAddr],
        now: impl FnOnce() -> Instant,
    ) -> Option<(SocketAddr, Arc<Upstream>)> {
        // One container (the common case): it, whatever its marks say.
        if let [only] = route.upstreams[..] {
            return (!tried.contains(&only)).then(|| (only, self.get(only)));
        }
        let candidates: Vec<(SocketAddr, Arc<Upstream>)> = route
            .upstreams
            .iter()
            .filter(|a| !tried.contains(a))
            .map(|a| (*a, self.get(*a)))
            .collect();
        let now_ms = self.ms(now());
        let up = |(_, u): &&(SocketAddr, Arc<Upstream>)| {
            u.down_until_ms.load(Ordering::Relaxed) <= now_ms
        };
        let turn = route.next.fetch_add(1, Ordering::Relaxed);
        let chosen = match policy {
            Balance::RoundRobin => nth_cyclic(&candidates, up, turn),
            Balance::LeastConnections => {
                let active =
                    |(_, u): &&(SocketAddr, Arc<Upstream>)| u.active.load(Ordering::Relaxed);
                let least = candidates.iter().filter(up).map(|c| active(&c)).min();
                least.and_then(|least| {
                    nth_cyclic(&candidates, |c| up(c) && active(c) == least, turn)
                })
            }
        };
        // None up (or the counts moved between the passes): the one whose mark ends first.
        chosen
            .or_else(|| {
                candidates
                    .iter()
                    .min_by_key(|(_, u)| u.down_until_ms.load(Ordering::Relaxed))
            })
            .cloned()
    }
}

/// The `turn`-th, counting round, of the `items` that `keep` keeps; none if it keeps none.
fn nth_cyclic<T>(items: &[T], keep: impl Fn(&&T) -> bool, turn: usize) -> Option<&T> {
    let n = items.iter().filter(&keep).count();
    (n > 0)
        .then(|| items.iter().filter(&keep).nth(turn % n))
        .flatten()
}

impl Upstream {
    /// It answered.
    pub fn succeeded(&self) {
        if self.down_until_ms.load(Ordering::Relaxed) != 0 {
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }
}

/// Counts a request in flight to an upstream for as long as it lives.
pub struct InFlight(Arc<Upstream>);

impl InFlight {
    pub fn new(u: Arc<Upstream>) -> InFlight {
        u.active.fetch_add(1, Ordering::Relaxed);
        InFlight(u)
    }

    pub fn upstream(&self) -> &Upstream {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uncloud_common::ports::Protocol;

    fn pick(
        h: &Health,
        r: &Route,
        policy: Balance,
        tried: &[SocketAddr],
        now: Instant,
    ) -> Option<SocketAddr> {
        h.pick(r, policy, tried, || now).map(|(a, _)| a)
    }

    fn route(n: usize) -> Route {
        Route {
            hostname: "a.com".into(),
            path: "/".into(),
            service_id: "s".into(),
            service: "s".into(),
            protocol: Protocol::Http,
            upstreams: (0..n)
                .map(|i| SocketAddr::from(([10, 210, 1, 2 + i as u8], 80)))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    #[test]
    fn round_robin_visits_every_upstream_and_skips_one_that_failed_until_its_time_is_up() {
        let h = Health::new(Duration::from_secs(10));
        let r = route(3);
        let now = Instant::now();
        let picks: Vec<_> = (0..6)
            .map(|_| pick(&h, &r, Balance::RoundRobin, &[], now).unwrap())
            .collect();
        for a in &r.upstreams {
            assert_eq!(picks.iter().filter(|p| *p == a).count(), 2);
        }
        h.failed(r.upstreams[1], now);
        for _ in 0..6 {
            assert_ne!(
                pick(&h, &r, Balance::RoundRobin, &[], now),
                Some(r.upstreams[1])
            );
        }
        let later = now + Duration::from_secs(11);
        assert!(!h.is_down(r.upstreams[1], later));
        assert!(
            (0..3).any(|_| pick(&h, &r, Balance::RoundRobin, &[], later) == Some(r.upstreams[1]))
        );
    }

    #[test]
    fn a_retry_goes_elsewhere_and_all_down_still_tries_one() {
        let h = Health::new(Duration::from_secs(10));
        let r = route(2);
        let now = Instant::now();
        let first = pick(&h, &r, Balance::RoundRobin, &[], now).unwrap();
        let second = pick(&h, &r, Balance::RoundRobin, &[first], now).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            pick(&h, &r, Balance::RoundRobin, &[first, second], now),
            None
        );
        h.failed(r.upstreams[0], now);
        h.failed(r.upstreams[1], now + Duration::from_secs(1));
        assert_eq!(
            pick(&h, &r, Balance::RoundRobin, &[], now),
            Some(r.upstreams[0]),
            "every upstream is down: the one whose mark ends first"
        );
        h.get(r.upstreams[0]).succeeded();
        assert!(!h.is_down(r.upstreams[0], now));
        assert_eq!(pick(&h, &route(0), Balance::RoundRobin, &[], now), None);
    }

    #[test]
    fn least_connections_prefers_the_idle_upstream() {
        let h = Health::new(Duration::from_secs(10));
        let r = route(2);
        let now = Instant::now();
        let _busy = InFlight::new(h.get(r.upstreams[0]));
        for _ in 0..4 {
            assert_eq!(
                pick(&h, &r, Balance::LeastConnections, &[], now),
                Some(r.upstreams[1])
            );
        }
        drop(_busy);
        assert_eq!(h.get(r.upstreams[0]).active.load(Ordering::Relaxed), 0);
    }
}

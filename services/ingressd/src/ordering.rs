//! Who orders which certificate, and when: pure decisions over the state.
//!
//! Exactly one machine orders in a healthy network: the **orderer** is the ingress machine
//! with the smallest id among those this machine can reach (every machine that sees the same
//! ones agrees; in a partition each side has its own, so at most one order per side). Before
//! ordering a hostname the orderer writes a **claim** on it in the state (itself, until when);
//! nobody else orders that hostname while another machine's claim holds, so a new orderer
//! after a leader change waits for the old one's order to finish or its claim to lapse
//! instead of ordering it again. A hostname is due when it has no certificate, when the
//! certificate has passed `renew_at` of its lifetime (2/3 by default), or when it does not
//! parse; after a failure the next try waits out a back-off that doubles per failure.

use std::collections::BTreeSet;
use std::time::Duration;

use uncloud_common::model::Certificate;

/// Why a hostname is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It has no certificate yet (or an unreadable one).
    New,
    /// Its certificate is past the renewal point.
    Renew,
}

/// A hostname's entry in the state and the validity of its bundle when it reads
/// (`(not_before_ms, not_after_ms)`).
pub type Entry = (Certificate, Option<(u64, u64)>);

/// The inputs of one decision.
pub struct Situation<'a> {
    pub me: &'a str,
    pub now_ms: u64,
    /// Ingress machines this machine can reach, itself included.
    pub reachable_ingress: &'a [String],
    /// Hostnames with an HTTPS route.
    pub hostnames: &'a BTreeSet<String>,
    /// A hostname's entry, if the state has one.
    pub entry: &'a dyn Fn(&str) -> Option<Entry>,
    pub renew_at: f64,
}

/// The machine that orders among `reachable_ingress`.
pub fn orderer(reachable_ingress: &[String]) -> Option<&str> {
    reachable_ingress.iter().map(String::as_str).min()
}

/// When a certificate valid over `[not_before, not_after]` is renewed.
pub fn renewal_ms(not_before_ms: u64, not_after_ms: u64, renew_at: f64) -> u64 {
    let life = not_after_ms.saturating_sub(not_before_ms) as f64;
    not_before_ms + (life * renew_at) as u64
}

/// The hostnames this machine should order now, with why.
pub fn due(s: &Situation<'_>) -> Vec<(String, Why)> {
    if orderer(s.reachable_ingress) != Some(s.me) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for host in s.hostnames {
        let (entry, validity) = match (s.entry)(host) {
            Some((e, v)) => (Some(e), v),
            None => (None, None),
        };
        let why = match validity {
            None => Why::New,
            Some((nb, na)) if s.now_ms >= renewal_ms(nb, na, s.renew_at) => Why::Renew,
            Some(_) => continue,
        };
        if let Some(e) = &entry {
            let claimed_by_other = !e.claim_by.is_empty() && e.claim_by != s.me;
            if claimed_by_other && e.claim_until_ms > s.now_ms {
                continue;
            }
            if e.retry_after_ms > s.now_ms {
                continue;
            }
        }
        out.push((host.clone(), why));
    }
    out
}

/// The wait before the next try after `failures` failures in a row.
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(20);
    (min * factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const DAY: u64 = 86_400_000;

    fn decide(
        me: &str,
        now: u64,
        ingress: &[&str],
        entries: &BTreeMap<String, Entry>,
    ) -> Vec<(String, Why)> {
        let hosts: BTreeSet<String> = ["a.com", "b.com"].map(String::from).into();
        let ingress: Vec<String> = ingress.iter().map(|s| s.to_string()).collect();
        let lookup = |h: &str| entries.get(h).cloned();
        due(&Situation {
            me,
            now_ms: now,
            reachable_ingress: &ingress,
            hostnames: &hosts,
            entry: &lookup,
            renew_at: 2.0 / 3.0,
        })
    }

    fn issued(nb: u64, na: u64) -> Entry {
        (Certificate::default(), Some((nb, na)))
    }

    #[test]
    fn only_the_smallest_reachable_ingress_machine_orders() {
        let none = BTreeMap::new();
        assert_eq!(decide("m1", 0, &["m1", "m2"], &none).len(), 2);
        assert!(decide("m2", 0, &["m1", "m2"], &none).is_empty());
        // m1 cut off: m2 is the orderer on its side.
        assert_eq!(decide("m2", 0, &["m2"], &none).len(), 2);
    }

    #[test]
    fn renewal_at_two_thirds_of_the_lifetime() {
        let mut e = BTreeMap::new();
        e.insert("a.com".to_string(), issued(0, 90 * DAY));
        e.insert("b.com".to_string(), issued(0, 90 * DAY));
        assert!(decide("m1", 59 * DAY, &["m1"], &e).is_empty());
        assert_eq!(
            decide("m1", 61 * DAY, &["m1"], &e),
            [
                ("a.com".to_string(), Why::Renew),
                ("b.com".to_string(), Why::Renew)
            ]
        );
        assert_eq!(renewal_ms(0, 90 * DAY, 2.0 / 3.0), 60 * DAY);
    }

    #[test]
    fn another_machines_claim_holds_until_it_lapses_and_back_off_is_respected() {
        let claim = |by: &str, until: u64| Certificate {
            claim_by: by.into(),
            claim_until_ms: until,
            ..Default::default()
        };
        let mut e = BTreeMap::new();
        e.insert("a.com".to_string(), (claim("m0", 1000), None));
        e.insert("b.com".to_string(), (claim("m1", 1000), None));
        // m0 (gone now) claimed a.com: m1 waits until the claim lapses; its own claim on
        // b.com (an order it was making when it restarted) does not stop it.
        assert_eq!(
            decide("m1", 500, &["m1"], &e),
            [("b.com".to_string(), Why::New)]
        );
        assert_eq!(decide("m1", 1001, &["m1"], &e).len(), 2);
        let failed = Certificate {
            failures: 3,
            retry_after_ms: 5000,
            ..Default::default()
        };
        e.insert("a.com".to_string(), (failed, None));
        assert!(!decide("m1", 4999, &["m1"], &e)
            .iter()
            .any(|(h, _)| h == "a.com"));
        assert!(decide("m1", 5000, &["m1"], &e)
            .iter()
            .any(|(h, _)| h == "a.com"));
    }

    #[test]
    fn backoff_doubles_up_to_the_ceiling() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        assert_eq!(backoff(1, min, max), min);
        assert_eq!(backoff(2, min, max), min * 2);
        assert_eq!(backoff(4, min, max), min * 8);
        assert_eq!(backoff(40, min, max), max);
    }
}

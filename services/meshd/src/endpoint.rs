//! Choosing which endpoint of a peer to send to, as a pure function over a timeline.
//!
//! A peer may be reachable at several `ip:port`s: addresses it advertises (its interfaces, a
//! configured public address) and the address other machines observe it at (its NAT's
//! reflexive address). We cannot know which works, so we try them in turn:
//!
//! - a freshly chosen endpoint gets [`Timing::handshake_timeout`] (15 s) to complete a
//!   WireGuard handshake; if none completes, the next candidate is tried (round robin);
//! - once a handshake completed on the current endpoint the peer is **up** and we stay there;
//! - an up peer with no handshake for [`Timing::down_after`] (275 s: WireGuard rekeys every
//!   120 s and retries for 90 s more, so this is well past any healthy silence) is **down**,
//!   and rotation resumes with the next candidate;
//! - if the current endpoint disappears from the candidates while the peer is not up, the
//!   first candidate is chosen; an up peer keeps its endpoint (it works, whatever the state
//!   now advertises).
//!
//! Time is a plain millisecond counter so every transition is table-tested without clocks.

use std::net::SocketAddr;

/// Milliseconds on a monotonic clock.
pub type Millis = u64;

/// The timing rules, all configurable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a newly chosen endpoint may take to complete a handshake. Default 15 s.
    pub handshake_timeout: Millis,
    /// How long an established peer may go without a handshake before it is down. Default 275 s.
    pub down_after: Millis,
    /// WireGuard persistent keepalive, so NAT mappings stay open. Default 25 s.
    pub keepalive: Millis,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            handshake_timeout: 15_000,
            down_after: 275_000,
            keepalive: 25_000,
        }
    }
}

/// How far before an endpoint was chosen a handshake may read and still count for it.
///
/// The device stamps a handshake with its own coarse clock (gotatun's timers tick every
/// 250 ms, later on a busy machine), so a handshake that completed just after the choice can
/// read as slightly before it. Without this slack a peer that came up flapped between up and
/// connecting on every step, as the reading jittered around the choice time.
pub const HANDSHAKE_STAMP_SLACK: Millis = 1_000;

/// Whether a handshake at `handshake` happened on an endpoint chosen at `chosen_at`.
pub fn handshake_since_choice(handshake: Millis, chosen_at: Millis) -> bool {
    handshake.saturating_add(HANDSHAKE_STAMP_SLACK) >= chosen_at
}

/// Whether traffic to the peer is flowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerStatus {
    /// Trying an endpoint that has not completed a handshake yet.
    Connecting,
    /// A handshake completed on the current endpoint recently enough.
    Up,
    /// No candidate endpoint at all.
    Unreachable,
}

/// What we remember about one peer between steps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// The endpoint in use, if any.
    pub current: Option<SocketAddr>,
    /// When `current` was chosen.
    pub chosen_at: Millis,
}

/// The outcome of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub selection: Selection,
    pub status: PeerStatus,
    /// Whether the endpoint to configure on the device changed.
    pub changed: bool,
}

/// Decides the endpoint at `now`, given the candidates (in preference order) and the time of
/// the peer's last completed handshake as the WireGuard device reports it.
pub fn step(
    previous: &Selection,
    candidates: &[SocketAddr],
    last_handshake: Option<Millis>,
    now: Millis,
    timing: &Timing,
) -> Decision {
    let choose = |addr: Option<SocketAddr>| {
        let selection = Selection {
            current: addr,
            chosen_at: now,
        };
        Decision {
            changed: selection.current != previous.current,
            status: if addr.is_some() {
                PeerStatus::Connecting
            } else {
                PeerStatus::Unreachable
            },
            selection,
        }
    };
    let Some(current) = previous.current else {
        return choose(candidates.first().copied());
    };
    let keep = |status| Decision {
        selection: previous.clone(),
        status,
        changed: false,
    };
    // A handshake counts for the current endpoint only if it happened after we chose it.
    let handshake = last_handshake.filter(|&h| handshake_since_choice(h, previous.chosen_at));
    if handshake.is_some_and(|h| now.saturating_sub(h) < timing.down_after) {
        return keep(PeerStatus::Up);
    }
    let Some(position) = candidates.iter().position(|c| *c == current) else {
        return choose(candidates.first().copied());
    };
    let next = candidates[(position + 1) % candidates.len()];
    match handshake {
        Some(_) => choose(Some(next)),
        None if now.saturating_sub(previous.chosen_at) < timing.handshake_timeout => {
            keep(PeerStatus::Connecting)
        }
        None => choose(Some(next)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const E1: &str = "198.51.100.1:51820";
    const E2: &str = "203.0.113.7:51820";
    const E3: &str = "[2001:db8::5]:51820";

    fn sel(current: &str, chosen_at: Millis) -> Selection {
        Selection {
            current: Some(a(current)),
            chosen_at,
        }
    }

    /// One row: previous selection, candidates, last handshake, now -> expected endpoint,
    /// status, changed.
    struct Row {
        what: &'static str,
        previous: Selection,
        candidates: Vec<&'static str>,
        handshake: Option<Millis>,
        now: Millis,
        endpoint: Option<&'static str>,
        status: PeerStatus,
        changed: bool,
    }

    #[test]
    fn every_transition() {
        let t = Timing::default();
        let rows = [
            Row {
                what: "no endpoint yet: take the first candidate",
                previous: Selection::default(),
                candidates: vec![E1, E2],
                handshake: None,
                now: 1_000,
                endpoint: Some(E1),
                status: PeerStatus::Connecting,
                changed: true,
            },
            Row {
                what: "no candidates at all",
                previous: Selection::default(),
                candidates: vec![],
                handshake: None,
                now: 1_000,
                endpoint: None,
                status: PeerStatus::Unreachable,
                changed: false,
            },
            Row {
                what: "current endpoint withdrawn and nothing left",
                previous: sel(E1, 0),
                candidates: vec![],
                handshake: None,
                now: 1_000,
                endpoint: None,
                status: PeerStatus::Unreachable,
                changed: true,
            },
            Row {
                what: "within the handshake timeout: keep trying",
                previous: sel(E1, 0),
                candidates: vec![E1, E2],
                handshake: None,
                now: 14_999,
                endpoint: Some(E1),
                status: PeerStatus::Connecting,
                changed: false,
            },
            Row {
                what: "handshake timeout passed: next candidate",
                previous: sel(E1, 0),
                candidates: vec![E1, E2],
                handshake: None,
                now: 15_000,
                endpoint: Some(E2),
                status: PeerStatus::Connecting,
                changed: true,
            },
            Row {
                what: "last candidate timed out: wrap to the first",
                previous: sel(E2, 15_000),
                candidates: vec![E1, E2],
                handshake: None,
                now: 30_000,
                endpoint: Some(E1),
                status: PeerStatus::Connecting,
                changed: true,
            },
            Row {
                what: "a handshake from before the endpoint was chosen does not count",
                previous: sel(E2, 15_000),
                candidates: vec![E1, E2],
                handshake: Some(10_000),
                now: 30_000,
                endpoint: Some(E1),
                status: PeerStatus::Connecting,
                changed: true,
            },
            Row {
                what: "a handshake the device stamped just before the choice counts",
                previous: sel(E2, 15_000),
                candidates: vec![E1, E2],
                handshake: Some(15_000 - HANDSHAKE_STAMP_SLACK),
                now: 20_000,
                endpoint: Some(E2),
                status: PeerStatus::Up,
                changed: false,
            },
            Row {
                what: "handshake completed: up, stay",
                previous: sel(E2, 15_000),
                candidates: vec![E1, E2],
                handshake: Some(16_000),
                now: 30_000,
                endpoint: Some(E2),
                status: PeerStatus::Up,
                changed: false,
            },
            Row {
                what: "up and quiet for less than 275 s: still up",
                previous: sel(E2, 15_000),
                candidates: vec![E1, E2],
                handshake: Some(16_000),
                now: 16_000 + 274_999,
                endpoint: Some(E2),
                status: PeerStatus::Up,
                changed: false,
            },
            Row {
                what: "up but no handshake for 275 s: down, rotate on",
                previous: sel(E2, 15_000),
                candidates: vec![E1, E2, E3],
                handshake: Some(16_000),
                now: 16_000 + 275_000,
                endpoint: Some(E3),
                status: PeerStatus::Connecting,
                changed: true,
            },
            Row {
                what: "current endpoint withdrawn while up: keep it, it works",
                previous: sel(E2, 15_000),
                candidates: vec![E3, E1],
                handshake: Some(16_000),
                now: 20_000,
                endpoint: Some(E2),
                status: PeerStatus::Up,
                changed: false,
            },
            Row {
                what: "current endpoint withdrawn while connecting: back to the first",
                previous: sel(E2, 15_000),
                candidates: vec![E3, E1],
                handshake: None,
                now: 20_000,
                endpoint: Some(E3),
                status: PeerStatus::Connecting,
                changed: true,
            },
            Row {
                what: "a single candidate that times out is retried afresh",
                previous: sel(E1, 0),
                candidates: vec![E1],
                handshake: None,
                now: 15_000,
                endpoint: Some(E1),
                status: PeerStatus::Connecting,
                changed: false,
            },
        ];
        for row in rows {
            let candidates: Vec<SocketAddr> = row.candidates.iter().map(|c| a(c)).collect();
            let d = step(&row.previous, &candidates, row.handshake, row.now, &t);
            assert_eq!(d.selection.current, row.endpoint.map(a), "{}", row.what);
            assert_eq!(d.status, row.status, "{}", row.what);
            assert_eq!(d.changed, row.changed, "{}", row.what);
            if d.selection.current != row.previous.current || row.endpoint.is_none() {
                assert_eq!(d.selection.chosen_at, row.now, "{}: choice time", row.what);
            }
        }
    }

    #[test]
    fn a_retried_single_candidate_gets_a_fresh_timeout() {
        let t = Timing::default();
        let c = [a(E1)];
        let d = step(&sel(E1, 0), &c, None, 15_000, &t);
        assert_eq!(d.selection.chosen_at, 15_000);
        let d = step(&d.selection, &c, None, 29_999, &t);
        assert_eq!(d.status, PeerStatus::Connecting);
        assert_eq!(d.selection.chosen_at, 15_000);
    }

    #[test]
    fn rotation_visits_every_candidate_until_one_answers() {
        let t = Timing::default();
        let c: Vec<SocketAddr> = [E1, E2, E3].iter().map(|e| a(e)).collect();
        let mut s = Selection::default();
        let mut visited = Vec::new();
        let mut now = 0;
        // Only E3 ever answers, 1 s after it is chosen.
        let mut handshake = None;
        for _ in 0..200 {
            let d = step(&s, &c, handshake, now, &t);
            if d.changed {
                visited.push(d.selection.current.unwrap());
            }
            s = d.selection;
            if s.current == Some(a(E3)) && now >= s.chosen_at + 1_000 {
                handshake = Some(now);
            }
            if d.status == PeerStatus::Up {
                break;
            }
            now += 500;
        }
        assert_eq!(visited, vec![a(E1), a(E2), a(E3)]);
        assert_eq!(s.current, Some(a(E3)));
        assert!(now <= 2 * t.handshake_timeout + 2_000, "took {now} ms");
    }
}

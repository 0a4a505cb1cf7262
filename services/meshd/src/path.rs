//! Direct or relayed: the whole per-peer path decision, as a pure function over time.
//!
//! Built on [`endpoint::step`] (rotation over direct candidates) and adds:
//!
//! - **relay fallback**: a peer that has not come up after one full round of its direct
//!   candidates (each given the handshake timeout) is tried through a relay, a machine that is
//!   up with both sides (see [`crate::relay`]); if no handshake completes there within the
//!   timeout, direct rotation resumes for another full round;
//! - **probing back**: while traffic to a peer goes through a relay (chosen here, or because
//!   the peer came to us through one), its direct candidates are probed; the first that
//!   answers takes over at once, and the running WireGuard session carries on over it.

use std::net::SocketAddr;

use crate::endpoint::{self, Millis, PeerStatus, Selection, Timing};
use crate::relay::{parse_relay_addr, relay_addr};

/// What is remembered about one peer between steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathState {
    pub selection: Selection,
    /// Since when the peer has not been up (None while up).
    pub connecting_since: Option<Millis>,
    /// The relay tried last, so the next attempt tries the next one.
    pub last_relay: Option<u32>,
}

/// What is known at this step.
#[derive(Debug, Clone)]
pub struct PathInput<'a> {
    /// Direct endpoints, in preference order.
    pub candidates: &'a [SocketAddr],
    /// Subnet indices of machines that can relay to this peer, best first.
    pub relays: &'a [u32],
    pub peer_index: u32,
    /// When the last handshake completed, on the same clock as `now`.
    pub last_handshake: Option<Millis>,
    /// Where the device sends to now (WireGuard roaming may have moved it).
    pub device_endpoint: Option<SocketAddr>,
    /// A direct endpoint that answered a probe since the last step.
    pub pong: Option<SocketAddr>,
    pub now: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathDecision {
    pub state: PathState,
    pub status: PeerStatus,
    /// Endpoint to configure on the device, when it must change.
    pub set_endpoint: Option<SocketAddr>,
    /// Start a handshake now.
    pub kick: bool,
    /// Probe the direct candidates (traffic goes through a relay).
    pub probe: bool,
}

fn is_relay(addr: Option<SocketAddr>) -> bool {
    addr.as_ref().and_then(parse_relay_addr).is_some()
}

pub fn decide(prev: &PathState, input: &PathInput<'_>, timing: &Timing) -> PathDecision {
    let now = input.now;
    let recent = |h: Millis| now.saturating_sub(h) < timing.down_after;

    // A direct endpoint answered while we were relayed: move to it, keeping the session (the
    // handshake that made it stays valid for this endpoint).
    if let Some(direct) = input.pong {
        let fresh = input.last_handshake.filter(|&h| recent(h));
        let up = fresh.is_some();
        return PathDecision {
            state: PathState {
                selection: Selection {
                    current: Some(direct),
                    // Without a live session the endpoint must prove itself with a handshake.
                    chosen_at: fresh.unwrap_or(now),
                },
                connecting_since: if up { None } else { prev.connecting_since },
                last_relay: prev.last_relay,
            },
            status: if up {
                PeerStatus::Up
            } else {
                PeerStatus::Connecting
            },
            set_endpoint: Some(direct),
            kick: !up,
            probe: false,
        };
    }

    // On a relay we chose.
    if let Some((relay, _)) = prev.selection.current.as_ref().and_then(parse_relay_addr) {
        let chosen = prev.selection.chosen_at;
        // A relay that is no longer up with us (or no longer reaches the peer) forwards
        // nothing: give up on it at once.
        let usable = input.relays.contains(&relay);
        match input
            .last_handshake
            .filter(|&h| endpoint::handshake_since_choice(h, chosen))
        {
            Some(h) if usable && recent(h) => {
                return PathDecision {
                    state: PathState {
                        selection: prev.selection.clone(),
                        connecting_since: None,
                        last_relay: prev.last_relay,
                    },
                    status: PeerStatus::Up,
                    set_endpoint: None,
                    kick: false,
                    probe: true,
                }
            }
            None if usable && now.saturating_sub(chosen) < timing.handshake_timeout => {
                return PathDecision {
                    state: prev.clone(),
                    status: PeerStatus::Connecting,
                    set_endpoint: None,
                    kick: false,
                    probe: true,
                }
            }
            // The relay did not work out (or went silent): a fresh round of direct candidates.
            _ => {
                let d = endpoint::step(&Selection::default(), input.candidates, None, now, timing);
                return PathDecision {
                    state: PathState {
                        selection: d.selection.clone(),
                        connecting_since: Some(now),
                        last_relay: prev.last_relay,
                    },
                    status: d.status,
                    set_endpoint: d.selection.current,
                    kick: d.selection.current.is_some(),
                    probe: false,
                };
            }
        }
    }

    // Direct.
    let d = endpoint::step(
        &prev.selection,
        input.candidates,
        input.last_handshake,
        now,
        timing,
    );
    if d.status == PeerStatus::Up {
        // Roaming may have moved the device to another real address that works (the peer's
        // NAT changed its mapping): that is the endpoint now, whatever we chose.
        let mut selection = d.selection;
        if let Some(e) = input
            .device_endpoint
            .filter(|e| parse_relay_addr(e).is_none())
        {
            selection.current = Some(e);
        }
        return PathDecision {
            state: PathState {
                selection,
                connecting_since: None,
                last_relay: prev.last_relay,
            },
            status: PeerStatus::Up,
            set_endpoint: None,
            kick: false,
            // The peer reached us through a relay and roaming moved us onto it.
            probe: is_relay(input.device_endpoint),
        };
    }
    let since = prev.connecting_since.unwrap_or(now);
    let round = timing.handshake_timeout * input.candidates.len().max(1) as Millis;
    if now.saturating_sub(since) >= round {
        // The relay after the one tried last, so one that cannot forward is not retried
        // forever while others could.
        let relay = prev
            .last_relay
            .and_then(|last| input.relays.iter().find(|&&r| r > last))
            .or(input.relays.first());
        if let Some(&relay) = relay {
            let via = relay_addr(relay, input.peer_index);
            return PathDecision {
                state: PathState {
                    selection: Selection {
                        current: Some(via),
                        chosen_at: now,
                    },
                    connecting_since: Some(now),
                    last_relay: Some(relay),
                },
                status: PeerStatus::Connecting,
                set_endpoint: Some(via),
                kick: true,
                probe: true,
            };
        }
    }
    PathDecision {
        set_endpoint: if d.changed { d.selection.current } else { None },
        kick: d.changed && d.selection.current.is_some(),
        state: PathState {
            selection: d.selection,
            connecting_since: Some(since),
            last_relay: prev.last_relay,
        },
        status: d.status,
        probe: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        handshake_timeout: 15_000,
        down_after: 275_000,
        keepalive: 25_000,
    };

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn input<'a>(candidates: &'a [SocketAddr], relays: &'a [u32], now: Millis) -> PathInput<'a> {
        PathInput {
            candidates,
            relays,
            peer_index: 2,
            last_handshake: None,
            device_endpoint: None,
            pong: None,
            now,
        }
    }

    /// Runs `decide` once a second from `from` to `to` with no handshake, like the mesh tick.
    fn run(mut s: PathState, input: &PathInput<'_>, from: Millis, to: Millis) -> PathState {
        let mut t = from;
        while t <= to {
            let mut i = input.clone();
            i.now = t;
            s = decide(&s, &i, &T).state;
            t += 1000;
        }
        s
    }

    #[test]
    fn a_peer_no_direct_candidate_reaches_goes_through_a_relay_after_one_round() {
        let c = [a("10.0.2.2:51820"), a("192.0.2.12:40000")];
        let relays = [3];
        let s = run(PathState::default(), &input(&c, &relays, 0), 0, 29_000);
        assert_eq!(s.selection.current, Some(c[1]), "still on the direct round");
        let d = decide(&s, &input(&c, &relays, 30_000), &T);
        assert_eq!(d.set_endpoint, Some(relay_addr(3, 2)));
        assert!(d.kick && d.probe);
        assert_eq!(d.status, PeerStatus::Connecting);
    }

    #[test]
    fn without_relays_rotation_just_goes_on() {
        let c = [a("10.0.2.2:51820"), a("192.0.2.12:40000")];
        let s = run(PathState::default(), &input(&c, &[], 0), 0, 29_000);
        let d = decide(&s, &input(&c, &[], 30_000), &T);
        assert_eq!(d.set_endpoint, Some(c[0]));
        assert!(!d.probe);
    }

    #[test]
    fn a_handshake_through_the_relay_makes_the_peer_up_and_probing() {
        let c = [a("10.0.2.2:51820")];
        let via = relay_addr(3, 2);
        let s = PathState {
            selection: Selection {
                current: Some(via),
                chosen_at: 30_000,
            },
            connecting_since: Some(30_000),
            last_relay: Some(3),
        };
        let mut i = input(&c, &[3], 31_000);
        i.last_handshake = Some(30_500);
        i.device_endpoint = Some(via);
        let d = decide(&s, &i, &T);
        assert_eq!(d.status, PeerStatus::Up);
        assert!(d.probe && d.set_endpoint.is_none());
        assert_eq!(d.state.connecting_since, None);
    }

    #[test]
    fn a_silent_relay_gives_way_to_a_new_direct_round() {
        let c = [a("10.0.2.2:51820"), a("192.0.2.12:40000")];
        let s = PathState {
            selection: Selection {
                current: Some(relay_addr(3, 2)),
                chosen_at: 30_000,
            },
            connecting_since: Some(30_000),
            last_relay: Some(3),
        };
        let d = decide(&s, &input(&c, &[3], 44_000), &T);
        assert_eq!(d.status, PeerStatus::Connecting);
        assert!(d.set_endpoint.is_none());
        let d = decide(&s, &input(&c, &[3], 45_000), &T);
        assert_eq!(d.set_endpoint, Some(c[0]));
        assert_eq!(d.state.connecting_since, Some(45_000));
        // And the relay is only tried again after a full direct round.
        let s = run(d.state, &input(&c, &[3], 0), 46_000, 74_000);
        assert!(!is_relay(s.selection.current));
        let d = decide(&s, &input(&c, &[3], 75_000), &T);
        assert_eq!(d.set_endpoint, Some(relay_addr(3, 2)));
    }

    #[test]
    fn an_answered_probe_moves_traffic_direct_and_keeps_the_session() {
        let c = [a("192.0.2.12:51820")];
        let s = PathState {
            selection: Selection {
                current: Some(relay_addr(3, 2)),
                chosen_at: 30_000,
            },
            connecting_since: None,
            last_relay: Some(3),
        };
        let mut i = input(&c, &[3], 90_000);
        i.last_handshake = Some(31_000);
        i.pong = Some(c[0]);
        let d = decide(&s, &i, &T);
        assert_eq!(d.set_endpoint, Some(c[0]));
        assert_eq!(d.status, PeerStatus::Up);
        assert!(!d.kick);
        // Next step: direct and up on the old handshake, no rotation.
        i.pong = None;
        i.now = 120_000;
        i.device_endpoint = Some(c[0]);
        let d = decide(&d.state, &i, &T);
        assert_eq!(d.status, PeerStatus::Up);
        assert!(d.set_endpoint.is_none() && !d.probe);
    }

    #[test]
    fn a_relay_that_goes_away_is_dropped_at_once() {
        let c = [a("10.0.2.2:51820")];
        let s = PathState {
            selection: Selection {
                current: Some(relay_addr(3, 2)),
                chosen_at: 30_000,
            },
            connecting_since: None,
            last_relay: Some(3),
        };
        let mut i = input(&c, &[4], 40_000);
        i.last_handshake = Some(31_000);
        let d = decide(&s, &i, &T);
        assert_eq!(d.set_endpoint, Some(c[0]));
        assert_eq!(d.status, PeerStatus::Connecting);
    }

    #[test]
    fn relays_are_tried_in_turn() {
        let c = [a("10.0.2.2:51820")];
        let relays = [3, 5, 8];
        let mut s = PathState {
            last_relay: Some(5),
            connecting_since: Some(0),
            ..Default::default()
        };
        s.selection = Selection {
            current: Some(c[0]),
            chosen_at: 0,
        };
        let d = decide(&s, &input(&c, &relays, 15_000), &T);
        assert_eq!(d.set_endpoint, Some(relay_addr(8, 2)));
        s.last_relay = Some(8);
        let d = decide(&s, &input(&c, &relays, 15_000), &T);
        assert_eq!(d.set_endpoint, Some(relay_addr(3, 2)), "wraps around");
    }

    #[test]
    fn an_up_peer_follows_roaming_to_another_real_address() {
        let c = [a("192.0.2.12:40000")];
        let s = PathState {
            selection: Selection {
                current: Some(c[0]),
                chosen_at: 0,
            },
            ..Default::default()
        };
        let mut i = input(&c, &[], 60_000);
        i.last_handshake = Some(50_000);
        i.device_endpoint = Some(a("192.0.2.12:41234"));
        let d = decide(&s, &i, &T);
        assert_eq!(d.status, PeerStatus::Up);
        assert_eq!(d.state.selection.current, i.device_endpoint);
        assert!(d.set_endpoint.is_none());
        // The old endpoint leaving the candidates changes nothing while up.
        let none: [SocketAddr; 0] = [];
        let mut i2 = input(&none, &[], 61_000);
        i2.last_handshake = Some(50_000);
        i2.device_endpoint = i.device_endpoint;
        let d = decide(&d.state, &i2, &T);
        assert_eq!(d.status, PeerStatus::Up);
        assert!(d.set_endpoint.is_none());
    }

    #[test]
    fn a_probe_answer_without_a_live_session_must_prove_itself() {
        let c = [a("192.0.2.12:51820")];
        let s = PathState {
            selection: Selection {
                current: Some(relay_addr(3, 2)),
                chosen_at: 0,
            },
            ..Default::default()
        };
        let mut i = input(&c, &[3], 500_000);
        i.last_handshake = Some(1_000); // long ago
        i.pong = Some(c[0]);
        let d = decide(&s, &i, &T);
        assert_eq!(d.status, PeerStatus::Connecting);
        assert!(d.kick);
        assert_eq!(d.state.selection.chosen_at, 500_000);
        // One second later it is still given its handshake timeout.
        i.pong = None;
        i.now = 501_000;
        let d = decide(&d.state, &i, &T);
        assert!(d.set_endpoint.is_none());
    }

    #[test]
    fn a_peer_that_came_through_a_relay_is_probed() {
        let c = [a("192.0.2.12:51820")];
        let s = PathState {
            selection: Selection {
                current: Some(c[0]),
                chosen_at: 0,
            },
            connecting_since: Some(0),
            last_relay: None,
        };
        let mut i = input(&c, &[3], 5_000);
        i.last_handshake = Some(4_000);
        i.device_endpoint = Some(relay_addr(3, 2));
        let d = decide(&s, &i, &T);
        assert_eq!(d.status, PeerStatus::Up);
        assert!(d.probe);
    }
}

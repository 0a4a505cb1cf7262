//! Relaying WireGuard ciphertext through a third machine, and probing direct paths, on the
//! WireGuard UDP port itself.
//!
//! # Background
//! Two machines behind NATs that defeat hole punching (symmetric NATs) cannot reach each other,
//! but both reach a third machine with a public address. That machine forwards their
//! WireGuard packets as opaque bytes: it never holds their session keys, so it sees only
//! ciphertext, and WireGuard's own authentication still holds end to end.
//!
//! # Design
//! meshd wraps gotatun's UDP socket ([`RelayTransport`]). Messages of its own are told apart
//! from WireGuard's by the first byte (WireGuard uses 1-4); every one starts with a 4-byte
//! type and a 4-byte big-endian subnet index:
//!
//! | type | sent by | index | then |
//! |---|---|---|---|
//! | [`RELAY`] | A to relay R | destination B | the WireGuard packet |
//! | [`RELAYED`] | R to B | source A | the WireGuard packet |
//! | [`PING`] | A to a candidate endpoint of B | A | B's index (4), nonce (8) |
//! | [`PONG`] | B back to the ping's source | B | nonce (8) |
//!
//! For gotatun, a relayed peer simply has a synthetic IPv6 endpoint `fd75:6e63:6c6f:7564:R:B`
//! ([`relay_addr`]): sending to it wraps the packet for relay R; a packet relayed from A via R
//! is handed to gotatun as coming from `relay_addr(R, A)`, so WireGuard's roaming moves the
//! reply path onto the relay by itself.
//!
//! A relay forwards only between machines it has a live direct tunnel with, identified by the
//! endpoint WireGuard authenticated ([`RelayTable`]); anything else is dropped, so it is not
//! an open relay. A receiver accepts relayed packets only from such a machine too.
//!
//! # Limitations
//! Pings and pongs are not authenticated. The mesh engine takes an answer only from an address
//! it probed (a candidate from the state) and trusts a peer's endpoint for relaying only after
//! WireGuard authenticated traffic from it; a forged pong can at worst point traffic at a
//! candidate where the handshake then fails, and the endpoint timeline moves on. Relayed traffic costs
//! the relay's bandwidth; it is meant as a fallback, and probes move traffic back to a direct
//! path as soon as one answers.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use gotatun::packet::{Packet, PacketBufPool};
use gotatun::udp::socket::{UdpSocket, UdpSocketFactory};
use gotatun::udp::{UdpRecv, UdpSend, UdpTransportFactory, UdpTransportFactoryParams};

pub const RELAY: u8 = 0x10;
pub const RELAYED: u8 = 0x11;
pub const PING: u8 = 0x12;
pub const PONG: u8 = 0x13;
const HEADER: usize = 8;

/// The /64 prefix of synthetic relay endpoints: `fd75:6e63:6c6f:7564` ("uncloud" in ASCII,
/// more or less), in the unique-local range, never a real destination.
const PREFIX: [u16; 4] = [0xfd75, 0x6e63, 0x6c6f, 0x7564];

/// The synthetic endpoint for "peer `peer`, via relay `relay`" (both subnet indices).
pub fn relay_addr(relay: u32, peer: u32) -> SocketAddr {
    let ip = Ipv6Addr::new(
        PREFIX[0],
        PREFIX[1],
        PREFIX[2],
        PREFIX[3],
        (relay >> 16) as u16,
        relay as u16,
        (peer >> 16) as u16,
        peer as u16,
    );
    SocketAddr::new(IpAddr::V6(ip), 1)
}

/// `(relay, peer)` if `addr` is a synthetic relay endpoint.
pub fn parse_relay_addr(addr: &SocketAddr) -> Option<(u32, u32)> {
    let IpAddr::V6(ip) = addr.ip() else {
        return None;
    };
    let s = ip.segments();
    if s[..4] != PREFIX || addr.port() != 1 {
        return None;
    }
    Some((
        (u32::from(s[4]) << 16) | u32::from(s[5]),
        (u32::from(s[6]) << 16) | u32::from(s[7]),
    ))
}

/// One of meshd's own messages, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Relay { to: u32, packet: &'a [u8] },
    Relayed { from: u32, packet: &'a [u8] },
    Ping { from: u32, to: u32, nonce: u64 },
    Pong { from: u32, nonce: u64 },
}

/// Whether a datagram is one of meshd's (else it is WireGuard's or garbage for gotatun).
pub fn is_ours(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(&(RELAY | RELAYED | PING | PONG)))
}

/// Parses one of meshd's messages; `None` for anything malformed (dropped silently: it
/// arrives from the internet).
pub fn parse(d: &[u8]) -> Option<Message<'_>> {
    if d.len() < HEADER || d[1..4] != [0, 0, 0] {
        return None;
    }
    let index = u32::from_be_bytes(d[4..8].try_into().ok()?);
    let rest = &d[HEADER..];
    match d[0] {
        RELAY if !rest.is_empty() => Some(Message::Relay {
            to: index,
            packet: rest,
        }),
        RELAYED if !rest.is_empty() => Some(Message::Relayed {
            from: index,
            packet: rest,
        }),
        PING if rest.len() == 12 => Some(Message::Ping {
            from: index,
            to: u32::from_be_bytes(rest[..4].try_into().ok()?),
            nonce: u64::from_be_bytes(rest[4..12].try_into().ok()?),
        }),
        PONG if rest.len() == 8 => Some(Message::Pong {
            from: index,
            nonce: u64::from_be_bytes(rest.try_into().ok()?),
        }),
        _ => None,
    }
}

fn header(kind: u8, index: u32) -> [u8; HEADER] {
    let i = index.to_be_bytes();
    [kind, 0, 0, 0, i[0], i[1], i[2], i[3]]
}

/// `kind`'s header, then `payload`.
pub fn encode(kind: u8, index: u32, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::with_capacity(HEADER + payload.len());
    b.extend_from_slice(&header(kind, index));
    b.extend_from_slice(payload);
    b
}

pub fn ping(from: u32, to: u32, nonce: u64) -> BytesMut {
    let mut p = [0u8; 12];
    p[..4].copy_from_slice(&to.to_be_bytes());
    p[4..].copy_from_slice(&nonce.to_be_bytes());
    encode(PING, from, &p)
}

pub fn pong(from: u32, nonce: u64) -> BytesMut {
    encode(PONG, from, &nonce.to_be_bytes())
}

/// Who this machine may relay for and accept relayed packets from, kept current by the mesh
/// engine; plus the answers to probes.
#[derive(Debug, Default)]
pub struct RelayTable {
    /// This machine's subnet index.
    pub my_index: u32,
    /// Subnet index -> authenticated endpoint, for peers up over a direct path.
    pub direct: HashMap<u32, SocketAddr>,
    /// The reverse of `direct`.
    pub by_addr: HashMap<SocketAddr, u32>,
    /// Probes sent: peer index -> nonce.
    pub pings: HashMap<u32, u64>,
    /// Probes answered: peer index -> the endpoint that answered.
    pub pongs: HashMap<u32, SocketAddr>,
    /// Packets forwarded for others (as a relay).
    pub relayed_packets: u64,
}

impl RelayTable {
    /// Replaces the set of directly reachable peers.
    pub fn set_direct(&mut self, direct: HashMap<u32, SocketAddr>) {
        self.by_addr = direct.iter().map(|(i, a)| (*a, *i)).collect();
        self.direct = direct;
    }
}

pub type SharedTable = Arc<Mutex<RelayTable>>;

/// What the transport does with one received datagram of ours.
#[derive(Debug, PartialEq, Eq)]
pub enum Handling {
    /// Hand this WireGuard packet to gotatun as if it came from this address.
    Deliver(SocketAddr),
    /// Send these bytes to that address.
    Send(BytesMut, SocketAddr),
    Drop,
}

/// Decides what to do with a message of ours from `source`. Pure apart from the table.
pub fn handle(table: &mut RelayTable, msg: &Message<'_>, source: SocketAddr) -> Handling {
    match *msg {
        Message::Relay { to, packet } => {
            let Some(&from) = table.by_addr.get(&source) else {
                return Handling::Drop;
            };
            match table.direct.get(&to) {
                Some(&dest) if to != from && to != table.my_index => {
                    table.relayed_packets += 1;
                    Handling::Send(encode(RELAYED, from, packet), dest)
                }
                _ => Handling::Drop,
            }
        }
        Message::Relayed { from, .. } => match table.by_addr.get(&source) {
            Some(&relay) if from != table.my_index && from != relay => {
                Handling::Deliver(relay_addr(relay, from))
            }
            _ => Handling::Drop,
        },
        Message::Ping { to, nonce, .. } if to == table.my_index => {
            Handling::Send(pong(table.my_index, nonce), source)
        }
        Message::Ping { .. } => Handling::Drop,
        Message::Pong { from, nonce } => {
            if table.pings.get(&from) == Some(&nonce) {
                table.pings.remove(&from);
                table.pongs.insert(from, source);
            }
            Handling::Drop
        }
    }
}

/// gotatun's UDP socket factory with relaying and probing layered on.
pub struct RelayFactory {
    inner: UdpSocketFactory,
    table: SharedTable,
    /// The socket in use, for the mesh engine's probes.
    socket: Arc<Mutex<Option<UdpSocket>>>,
}

impl RelayFactory {
    pub fn new(table: SharedTable) -> (RelayFactory, ProbeSender) {
        let socket = Arc::new(Mutex::new(None));
        (
            RelayFactory {
                inner: UdpSocketFactory::default(),
                table,
                socket: socket.clone(),
            },
            ProbeSender { socket },
        )
    }
}

/// Sends probes on the WireGuard socket.
#[derive(Clone)]
pub struct ProbeSender {
    socket: Arc<Mutex<Option<UdpSocket>>>,
}

impl ProbeSender {
    pub async fn send(&self, bytes: BytesMut, to: SocketAddr) {
        let socket = self.socket.lock().unwrap().clone();
        if let Some(s) = socket {
            if let Err(e) = s.send_to(Packet::from_bytes(bytes), to).await {
                tracing::debug!(%to, error = %e, "probe not sent");
            }
        }
    }
}

impl UdpTransportFactory for RelayFactory {
    type Send = RelayTransport;
    type Recv = RelayRecv;

    async fn bind(
        &mut self,
        params: &UdpTransportFactoryParams,
    ) -> io::Result<(Self::Send, Self::Recv)> {
        let (send, recv) = self.inner.bind(params).await?;
        *self.socket.lock().unwrap() = Some(send.clone());
        let transport = RelayTransport {
            inner: send,
            table: self.table.clone(),
        };
        Ok((
            transport.clone(),
            RelayRecv {
                inner: recv,
                out: transport,
                inbox: Vec::new(),
            },
        ))
    }
}

/// Sending side: synthetic relay endpoints are wrapped for their relay.
#[derive(Clone)]
pub struct RelayTransport {
    inner: UdpSocket,
    table: SharedTable,
}

impl RelayTransport {
    /// Where a packet for `dest` really goes, and its wrapped bytes if relayed. `None` if the
    /// relay is no longer reachable (the packet is dropped, as a lost UDP packet would be).
    fn route(&self, packet: Packet, dest: SocketAddr) -> Option<(Packet, SocketAddr)> {
        let Some((relay, peer)) = parse_relay_addr(&dest) else {
            return Some((packet, dest));
        };
        let relay_endpoint = *self.table.lock().unwrap().direct.get(&relay)?;
        Some((
            Packet::from_bytes(encode(RELAY, peer, &packet)),
            relay_endpoint,
        ))
    }
}

impl UdpSend for RelayTransport {
    type SendManyBuf = <UdpSocket as UdpSend>::SendManyBuf;

    async fn send_to(&self, packet: Packet, destination: SocketAddr) -> io::Result<()> {
        match self.route(packet, destination) {
            Some((p, d)) => self.inner.send_to(p, d).await,
            None => Ok(()),
        }
    }

    fn max_number_of_packets_to_send(&self) -> usize {
        self.inner.max_number_of_packets_to_send()
    }

    async fn send_many_to(
        &self,
        send_buf: &mut Self::SendManyBuf,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        // The fast path (no relayed peer in the batch) costs one scan.
        if packets.iter().any(|(_, d)| parse_relay_addr(d).is_some()) {
            let routed: Vec<_> = packets
                .drain(..)
                .filter_map(|(p, d)| self.route(p, d))
                .collect();
            packets.extend(routed);
        }
        self.inner.send_many_to(send_buf, packets).await
    }

    fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        UdpSend::local_addr(&self.inner)
    }

    fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        self.inner.set_fwmark(mark)
    }
}

/// Receiving side: meshd's messages are handled here and never reach gotatun.
pub struct RelayRecv {
    inner: UdpSocket,
    out: RelayTransport,
    inbox: Vec<(Packet, SocketAddr)>,
}

impl RelayRecv {
    /// Handles our messages in `packets` in place; returns what to send in reply.
    fn filter(&self, packets: &mut Vec<(Packet, SocketAddr)>) -> Vec<(Packet, SocketAddr)> {
        if !packets.iter().any(|(p, _)| is_ours(p)) {
            return Vec::new();
        }
        let mut replies = Vec::new();
        let mut table = self.out.table.lock().unwrap();
        let mut kept = Vec::with_capacity(packets.len());
        for (mut p, source) in packets.drain(..) {
            if !is_ours(&p) {
                kept.push((p, source));
                continue;
            }
            let handling = match parse(&p) {
                Some(msg) => handle(&mut table, &msg, source),
                None => Handling::Drop,
            };
            match handling {
                Handling::Deliver(from) => {
                    p.buf_mut().advance(HEADER);
                    kept.push((p, from));
                }
                Handling::Send(bytes, to) => replies.push((Packet::from_bytes(bytes), to)),
                Handling::Drop => {}
            }
        }
        *packets = kept;
        replies
    }

    async fn send_replies(&self, replies: Vec<(Packet, SocketAddr)>) {
        for (p, to) in replies {
            let _ = self.out.inner.send_to(p, to).await;
        }
    }
}

impl UdpRecv for RelayRecv {
    type RecvManyBuf = <UdpSocket as UdpRecv>::RecvManyBuf;

    async fn recv_from(&mut self, pool: &mut PacketBufPool) -> io::Result<(Packet, SocketAddr)> {
        loop {
            if let Some(p) = self.inbox.pop() {
                return Ok(p);
            }
            let mut batch = vec![self.inner.recv_from(pool).await?];
            let replies = self.filter(&mut batch);
            self.send_replies(replies).await;
            self.inbox = batch;
        }
    }

    async fn recv_many_from(
        &mut self,
        recv_buf: &mut Self::RecvManyBuf,
        pool: &mut PacketBufPool,
        packets: &mut Vec<(Packet, SocketAddr)>,
    ) -> io::Result<()> {
        loop {
            let start = packets.len();
            self.inner.recv_many_from(recv_buf, pool, packets).await?;
            let mut fresh = packets.split_off(start);
            let replies = self.filter(&mut fresh);
            self.send_replies(replies).await;
            let got = !fresh.is_empty();
            packets.extend(fresh);
            if got {
                return Ok(());
            }
        }
    }

    fn enable_udp_gro(&self) -> io::Result<()> {
        self.inner.enable_udp_gro()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn synthetic_addresses_round_trip_and_real_ones_are_not_synthetic() {
        for (r, p) in [(1, 2), (255, 7), (65535, 65534), (70000, 1)] {
            assert_eq!(parse_relay_addr(&relay_addr(r, p)), Some((r, p)));
        }
        assert_eq!(parse_relay_addr(&a("192.0.2.1:51820")), None);
        assert_eq!(parse_relay_addr(&a("[2001:db8::1]:1")), None);
        let mut wrong_port = relay_addr(1, 2);
        wrong_port.set_port(51820);
        assert_eq!(parse_relay_addr(&wrong_port), None);
    }

    #[test]
    fn messages_round_trip_and_garbage_is_rejected() {
        assert_eq!(
            parse(&encode(RELAY, 9, b"wg")),
            Some(Message::Relay {
                to: 9,
                packet: b"wg"
            })
        );
        assert_eq!(
            parse(&ping(3, 4, 77)),
            Some(Message::Ping {
                from: 3,
                to: 4,
                nonce: 77
            })
        );
        assert_eq!(
            parse(&pong(4, 77)),
            Some(Message::Pong { from: 4, nonce: 77 })
        );
        for bad in [
            &b""[..],
            &[RELAY],
            &[RELAY, 0, 0, 0, 0, 0, 0, 1],    // nothing to relay
            &[RELAY, 1, 0, 0, 0, 0, 0, 1, 5], // reserved bytes set
            &[PING, 0, 0, 0, 0, 0, 0, 1, 1],  // short ping
            &[1, 0, 0, 0, 0, 0, 0, 1, 1],     // WireGuard's
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert!(!is_ours(&[1, 0, 0, 0]));
        assert!(is_ours(&[PONG]));
    }

    fn table(me: u32, direct: &[(u32, &str)]) -> RelayTable {
        let mut t = RelayTable {
            my_index: me,
            ..Default::default()
        };
        t.set_direct(direct.iter().map(|(i, s)| (*i, a(s))).collect());
        t
    }

    #[test]
    fn a_relay_forwards_only_between_its_direct_peers() {
        // Relay 3 with direct peers 1 and 2.
        let mut t = table(3, &[(1, "198.51.100.1:4000"), (2, "203.0.113.2:5000")]);
        let from_1 = a("198.51.100.1:4000");
        let h = handle(
            &mut t,
            &parse(&encode(RELAY, 2, b"cipher")).unwrap(),
            from_1,
        );
        assert_eq!(
            h,
            Handling::Send(encode(RELAYED, 1, b"cipher"), a("203.0.113.2:5000"))
        );
        assert_eq!(t.relayed_packets, 1);
        // Unknown sender, unknown destination, to itself, to the sender: dropped.
        let stranger = a("192.0.2.66:1");
        for (msg, src) in [
            (encode(RELAY, 2, b"x"), stranger),
            (encode(RELAY, 9, b"x"), from_1),
            (encode(RELAY, 3, b"x"), from_1),
            (encode(RELAY, 1, b"x"), from_1),
        ] {
            assert_eq!(handle(&mut t, &parse(&msg).unwrap(), src), Handling::Drop);
        }
        assert_eq!(t.relayed_packets, 1);
    }

    #[test]
    fn relayed_packets_are_accepted_only_from_a_direct_peer() {
        let mut t = table(2, &[(3, "192.0.2.3:51820")]);
        let msg = encode(RELAYED, 1, b"cipher");
        assert_eq!(
            handle(&mut t, &parse(&msg).unwrap(), a("192.0.2.3:51820")),
            Handling::Deliver(relay_addr(3, 1))
        );
        assert_eq!(
            handle(&mut t, &parse(&msg).unwrap(), a("192.0.2.4:51820")),
            Handling::Drop
        );
        // Claiming to be from this machine itself or from the relay: dropped.
        for from in [2, 3] {
            let m = encode(RELAYED, from, b"x");
            assert_eq!(
                handle(&mut t, &parse(&m).unwrap(), a("192.0.2.3:51820")),
                Handling::Drop
            );
        }
    }

    proptest::proptest! {
        /// Whatever arrives from the internet: parsing and handling never panic, a relay
        /// only ever forwards to a direct peer, and only what came from a direct peer is
        /// delivered.
        #[test]
        fn arbitrary_datagrams_are_handled_safely(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            kind in 0x10u8..=0x13,
            from_peer in proptest::prelude::any::<bool>(),
        ) {
            let mut t = table(3, &[(1, "198.51.100.1:4000"), (2, "203.0.113.2:5000")]);
            let source = if from_peer { a("198.51.100.1:4000") } else { a("192.0.2.66:9") };
            for d in [bytes.clone(), [vec![kind, 0, 0, 0], bytes].concat()] {
                if let Some(msg) = parse(&d) {
                    match handle(&mut t, &msg, source) {
                        Handling::Send(_, to) => proptest::prop_assert!(
                            t.direct.values().any(|e| *e == to) || to == source
                        ),
                        Handling::Deliver(addr) => {
                            proptest::prop_assert!(from_peer);
                            proptest::prop_assert!(parse_relay_addr(&addr).is_some());
                        }
                        Handling::Drop => {}
                    }
                }
            }
        }

        #[test]
        fn relay_messages_round_trip(index in proptest::prelude::any::<u32>(),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..100)) {
            let encoded = encode(RELAY, index, &payload);
            proptest::prop_assert_eq!(
                parse(&encoded),
                Some(Message::Relay { to: index, packet: &payload })
            );
        }
    }

    #[test]
    fn pings_for_this_machine_are_answered_and_only_expected_pongs_count() {
        let mut t = table(2, &[]);
        let src = a("198.51.100.9:6000");
        assert_eq!(
            handle(&mut t, &parse(&ping(1, 2, 5)).unwrap(), src),
            Handling::Send(pong(2, 5), src)
        );
        assert_eq!(
            handle(&mut t, &parse(&ping(1, 7, 5)).unwrap(), src),
            Handling::Drop
        );
        t.pings.insert(4, 99);
        handle(&mut t, &parse(&pong(4, 98)).unwrap(), src);
        assert!(t.pongs.is_empty());
        handle(&mut t, &parse(&pong(4, 99)).unwrap(), src);
        assert_eq!(t.pongs.get(&4), Some(&src));
        assert!(t.pings.is_empty());
    }
}

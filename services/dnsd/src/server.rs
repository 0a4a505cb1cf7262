//! The DNS server: dnsd's request handler, hickory-server's TCP listeners and dnsd's own UDP
//! listeners ([`crate::udp`]).
//!
//! The handler checks the header (one question, EDNS version 0, who asks), then either
//! answers from the zone ([`crate::answer`]) or relays the upstream answer
//! ([`crate::forward`]). hickory-server frames TCP; UDP replies stop at 512 bytes (or the
//! client's EDNS size) with the TC bit set, so a client retries over TCP.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::Record;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::answer::{decide, Decision, Zone};
use crate::cache::relayable;
use crate::fast::FastTable;
use crate::fast::Question;
use crate::forward::Forwarder;
use crate::names::Names;
use crate::udp::UdpListener;

/// What is served right now; replaced whole on every change of the state.
#[derive(Debug, Clone)]
/// Built only whole ([`Served::new`]), so the fast path always answers what the full path
/// would.
pub struct Served {
    names: Names,
    zone: Zone,
    fast: FastTable,
}

impl Served {
    pub fn new(names: Names, zone: Zone) -> Served {
        let fast = FastTable::build(&names, zone.ttl);
        Served { names, zone, fast }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// The same names for the fast path.
    pub fn fast(&self) -> &FastTable {
        &self.fast
    }
}

/// Counters of the server, for `org.uncloud.Dns1`.
#[derive(Debug, Default)]
pub struct Counters {
    pub queries: AtomicU64,
    pub answered_locally: AtomicU64,
    /// Answered on the UDP fast path, from bytes (names of the zone, or the forward cache).
    pub from_bytes: AtomicU64,
    pub refused: AtomicU64,
    pub errors: AtomicU64,
    /// Datagrams that were no DNS message.
    pub malformed: AtomicU64,
}

/// Who may ask: this machine and the mesh (machines and containers); nobody else, so dnsd is
/// never an open resolver even if a listen address faces the internet.
pub fn allowed(src: IpAddr, zone: &Zone) -> bool {
    match src {
        IpAddr::V4(ip) => ip.is_loopback() || zone.cidr.as_ref().is_some_and(|c| c.contains(ip)),
        IpAddr::V6(ip) => {
            ip.is_loopback()
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| allowed(IpAddr::V4(v4), zone))
        }
    }
}

pub struct Handler {
    served: watch::Receiver<Arc<Served>>,
    forwarder: Arc<Forwarder>,
    pub counters: Arc<Counters>,
}

impl Handler {
    pub fn new(
        served: watch::Receiver<Arc<Served>>,
        forwarder: Arc<Forwarder>,
        counters: Arc<Counters>,
    ) -> Handler {
        Handler {
            served,
            forwarder,
            counters,
        }
    }

    /// What is served right now.
    pub fn served(&self) -> Arc<Served> {
        self.served.borrow().clone()
    }

    /// A query answered by the fast path (it never reaches [`RequestHandler::handle_request`]).
    pub fn count_fast_answer(&self) {
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        self.counters
            .answered_locally
            .fetch_add(1, Ordering::Relaxed);
        self.counters.from_bytes.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes the reply to the plain query `request` (parsed into `q`) from the forward
    /// cache, if it holds a fresh answer; counted like the full path counts a cache hit.
    pub fn cached_answer(&self, q: &Question, request: &[u8], out: &mut Vec<u8>) -> bool {
        let hit = self.forwarder.answer_plain(q, request, out);
        if hit {
            self.counters.queries.fetch_add(1, Ordering::Relaxed);
            self.counters.from_bytes.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// A datagram that was no DNS message.
    pub fn count_malformed(&self) {
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        self.counters.malformed.fetch_add(1, Ordering::Relaxed);
    }
}

/// The EDNS version dnsd speaks.
const EDNS_VERSION: u8 = 0;
/// The largest UDP reply dnsd offers to send (RFC 6891; the DNS flag day 2020 value).
const MAX_PAYLOAD: u16 = 1232;

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        let served = self.served.borrow().clone();
        let response_edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().clamp(512, MAX_PAYLOAD));
            e.set_version(EDNS_VERSION);
            e
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &response_edns {
            builder.edns(e);
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;

        let error = |code: ResponseCode| {
            let mut m = metadata;
            m.response_code = code;
            m
        };
        let rcode_only = if request.metadata.message_type != MessageType::Query {
            Some(ResponseCode::FormErr)
        } else if request
            .edns
            .as_ref()
            .is_some_and(|e| e.version() > EDNS_VERSION)
        {
            Some(ResponseCode::BADVERS)
        } else if !allowed(request.src().ip(), &served.zone) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            Some(ResponseCode::Refused)
        } else {
            None
        };
        let info = match (rcode_only, request.request_info()) {
            (Some(code), _) => None.ok_or(code),
            // Not exactly one question.
            (None, Err(_)) => None.ok_or(ResponseCode::FormErr),
            (None, Ok(info)) => Ok(info),
        };
        let info = match info {
            Ok(info) => info,
            Err(code) => {
                let response = builder.build_no_records(error(code));
                return send(&mut response_handle, response, &self.counters).await;
            }
        };
        let query = info.query.original();
        let asker = match request.src().ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(ip) => ip.to_ipv4_mapped(),
        };
        match decide(
            &served.names,
            &served.zone,
            request.metadata.op_code,
            query.name(),
            query.query_type(),
            query.query_class(),
            asker,
        ) {
            Decision::Local(reply) => {
                self.counters
                    .answered_locally
                    .fetch_add(1, Ordering::Relaxed);
                let mut m = error(reply.rcode);
                m.authoritative =
                    reply.rcode != ResponseCode::Refused && reply.rcode != ResponseCode::NotImp;
                let response = builder.build(
                    m,
                    reply.answers.iter(),
                    reply.authorities.iter(),
                    std::iter::empty::<&Record>(),
                    std::iter::empty::<&Record>(),
                );
                send(&mut response_handle, response, &self.counters).await
            }
            Decision::Forward => {
                match self
                    .forwarder
                    .resolve(query, request.metadata.checking_disabled)
                    .await
                {
                    Ok(up) => {
                        let m = error(up.metadata.response_code);
                        let response = builder.build(
                            m,
                            up.answers.iter(),
                            up.authorities.iter().filter(|r| relayable(r)),
                            std::iter::empty::<&Record>(),
                            up.additionals.iter().filter(|r| relayable(r)),
                        );
                        send(&mut response_handle, response, &self.counters).await
                    }
                    Err(e) => {
                        tracing::debug!(name = %query.name(), error = %e, "forwarding failed");
                        let response = builder.build_no_records(error(ResponseCode::ServFail));
                        send(&mut response_handle, response, &self.counters).await
                    }
                }
            }
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    counters: &Counters,
) -> ResponseInfo {
    let metadata = *response.metadata();
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "could not send a DNS reply");
            let mut m = metadata;
            m.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata: m,
                counts: HeaderCounts::default(),
            })
        }
    }
}

/// How long a TCP client may stay silent before its connection is closed.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("binding DNS on {addr} ({proto}): {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        source: std::io::Error,
    },
}

/// A running server on some addresses; [`Running::stop`] stops it and frees them.
pub struct Running {
    server: Server<Handler>,
    udp: Vec<UdpListener>,
    pub addrs: Vec<SocketAddr>,
}

impl Running {
    pub async fn stop(mut self) {
        let _ = self.server.shutdown_gracefully().await;
        for u in self.udp {
            u.stop().await;
        }
    }
}

/// Serves UDP and TCP at each of `addrs` with handlers from `handler` (port 0: a free port,
/// the same for UDP and TCP).
pub async fn serve(
    handler: impl Fn() -> Handler,
    addrs: &[SocketAddr],
) -> Result<Running, BindError> {
    let mut server = Server::new(handler());
    let udp_handler = Arc::new(handler());
    let mut bound = Vec::new();
    let mut listeners = Vec::new();
    for &addr in addrs {
        let bind_error = |addr, proto, source| BindError::Bind {
            addr,
            proto,
            source,
        };
        let udp = std::net::UdpSocket::bind(addr).map_err(|e| bind_error(addr, "udp", e))?;
        let local = udp.local_addr().map_err(|e| bind_error(addr, "udp", e))?;
        // TCP on the port UDP got (matters when asked for port 0).
        let tcp = TcpListener::bind(local)
            .await
            .map_err(|e| bind_error(local, "tcp", e))?;
        server.register_listener(tcp, TCP_TIMEOUT, 65535);
        let listener =
            UdpListener::spawn(udp, udp_handler.clone(), tokio::runtime::Handle::current())
                .map_err(|e| bind_error(local, "udp", e))?;
        listeners.push(listener);
        bound.push(local);
    }
    Ok(Running {
        server,
        udp: listeners,
        addrs: bound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_and_the_mesh_may_ask() {
        let zone = Zone {
            ttl: 5,
            cidr: Some("10.210.0.0/16".parse().unwrap()),
        };
        for ok in ["127.0.0.1", "10.210.3.7", "::1", "::ffff:10.210.1.1"] {
            assert!(allowed(ok.parse().unwrap(), &zone), "{ok}");
        }
        for no in ["198.18.0.10", "10.211.0.1", "2001:db8::1", "192.168.1.1"] {
            assert!(!allowed(no.parse().unwrap(), &zone), "{no}");
        }
    }
}

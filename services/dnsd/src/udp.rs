//! dnsd's UDP listener: one thread per address taking datagrams in batches.
//!
//! Each round takes up to [`BATCH`] waiting datagrams with one `recvmmsg` and sends the fast
//! answers with one `sendmmsg` (a server of small answers spends most of its time in system
//! calls: batching is what lets it keep up with dnsmasq). A datagram the fast path
//! ([`crate::fast`]) does not answer goes to the full handler on the tokio runtime, which
//! replies on its own (a forwarded question may take seconds and never holds the loop).
//! TCP stays with hickory-server ([`crate::server`]).

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

use crate::fast::Question;
use crate::server::{allowed, Handler};

/// Datagrams taken (and fast answers sent) per system call at most.
pub const BATCH: usize = 32;
/// Room for one request; a longer datagram is cut and then fails to parse. Queries are a few
/// dozen bytes; this is the DNS flag day's UDP size, far above any real one (a 4 KiB buffer
/// per slot cost 128 KiB per listener in touched pages).
const REQUEST_BYTES: usize = 1232;
/// How often a listener with nothing to do checks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// A running listener; [`UdpListener::stop`] ends its thread and frees the address.
pub struct UdpListener {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpListener {
    /// Serves `socket` on a thread of its own; the full path runs on `runtime`.
    pub fn spawn(
        socket: UdpSocket,
        handler: Arc<Handler>,
        runtime: tokio::runtime::Handle,
    ) -> std::io::Result<UdpListener> {
        socket.set_read_timeout(Some(STOP_CHECK))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let name = format!("dns-udp-{}", socket.local_addr()?);
            std::thread::Builder::new()
                .name(name)
                .spawn(move || serve(Arc::new(socket), handler, runtime, stop))?
        };
        Ok(UdpListener {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (at most [`STOP_CHECK`]), so the address is free.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl Drop for UdpListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}

fn serve(
    socket: Arc<UdpSocket>,
    handler: Arc<Handler>,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) {
    let fd = socket.as_raw_fd();
    let mut requests = vec![[0u8; REQUEST_BYTES]; BATCH];
    let mut replies: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(512)).collect();
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut random: u64 = rand::random::<u64>() | 1;
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        let received: Vec<(usize, Option<SocketAddr>)> = {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = requests
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            match recvmmsg(
                fd,
                &mut recv_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(results) => results
                    .map(|m| (m.bytes, m.address.as_ref().and_then(to_std)))
                    .collect(),
                // The read timeout passed (to look at `stop`), or a signal.
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "receiving DNS datagrams failed");
                        failing = true;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        };
        failing = false;
        let served = handler.served();
        let mut fast: Vec<(usize, SockaddrStorage)> = Vec::with_capacity(received.len());
        for (i, (len, src)) in received.into_iter().enumerate() {
            let Some(src) = src else { continue };
            let request = &requests[i][..len.min(REQUEST_BYTES)];
            // xorshift: a cheap varying number for the order of addresses.
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            let question = allowed(src.ip(), served.zone())
                .then(|| Question::parse(request))
                .flatten();
            let answered = question.is_some_and(|q| {
                if served
                    .fast()
                    .answer_question(&q, request, &mut replies[i], random)
                {
                    handler.count_fast_answer();
                    true
                } else {
                    // Names of the zone never reach the cache: it holds forwarded answers.
                    handler.cached_answer(&q, request, &mut replies[i])
                }
            });
            if answered {
                fast.push((i, SockaddrStorage::from(src)));
            } else {
                full_path(request.to_vec(), src, &socket, &handler, &runtime);
            }
        }
        if fast.is_empty() {
            continue;
        }
        let slices: Vec<[IoSlice<'_>; 1]> = fast
            .iter()
            .map(|(i, _)| [IoSlice::new(&replies[*i])])
            .collect();
        let addrs: Vec<Option<SockaddrStorage>> = fast.iter().map(|(_, a)| Some(*a)).collect();
        if let Err(e) = sendmmsg(
            fd,
            &mut send_headers,
            slices.iter(),
            &addrs,
            [],
            MsgFlags::empty(),
        ) {
            tracing::debug!(error = %e, "sending DNS replies failed");
        }
    }
}

/// Hands a datagram to the full handler; one that is not even a DNS message gets FORMERR
/// when it has a header to answer to (never a reply to a reply).
fn full_path(
    bytes: Vec<u8>,
    src: SocketAddr,
    socket: &Arc<UdpSocket>,
    handler: &Arc<Handler>,
    runtime: &tokio::runtime::Handle,
) {
    let head: Option<[u8; 4]> = bytes.get(..4).map(|h| [h[0], h[1], h[2], h[3]]);
    match Request::from_bytes(bytes, src, Protocol::Udp) {
        Ok(request) => {
            let reply = UdpReply {
                socket: socket.clone(),
                dst: src,
            };
            let handler = handler.clone();
            runtime.spawn(async move {
                handler
                    .handle_request::<_, TokioTime>(&request, reply)
                    .await;
            });
        }
        Err(_) => {
            handler.count_malformed();
            if let Some([a, b, flags, _]) = head.filter(|h| h[2] & 0x80 == 0) {
                // Same id and opcode, QR set, FORMERR, no records.
                let formerr = [a, b, 0x80 | (flags & 0x78), 1, 0, 0, 0, 0, 0, 0, 0, 0];
                let _ = socket.send_to(&formerr, src);
            }
        }
    }
}

/// Sends what the full handler answers, at most the client's UDP size (512 bytes without
/// EDNS); a longer answer is truncated with TC set, so the client asks again over TCP.
#[derive(Clone)]
struct UdpReply {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpReply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let max = response.edns().map_or(512, |e| e.max_payload().max(512));
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = response
            .destructive_emit(&mut encoder)
            .map_err(|e| NetError::from(e.to_string()))?;
        self.socket.send_to(&bytes, self.dst)?;
        Ok(info)
    }
}

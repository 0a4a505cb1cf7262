//! HTTP/1.1 from clients: plain requests (nearly all) read, forwarded and answered on the
//! connection's own task, without hyper's server.
//!
//! # Background
//! hyper's server makes a `Request` of each head (a parsed URI, a header map, extensions)
//! and writes each response from a header map; ingressd then made the upstream's head from
//! that map again. For small kept-alive requests this was most of ingressd's user CPU time
//! per request, and what kept it behind nginx.
//!
//! # Design
//! A connection starts here. Each request head is parsed with `httparse` (as hyper parses it)
//! and sorted ([`request`]). A plain one (HTTP/1.1, no body, no upgrade, one `Host`, a route
//! that forwards it) has the upstream's head written straight from the client's bytes, is
//! exchanged by [`crate::proxy::forward_direct`], and its response written back
//! ([`reply`], [`response`]). The route is chosen by the same function hyper's path uses
//! ([`crate::proxy::routed`]). The first request that is not plain, or that ingress answers itself (404,
//! the redirect to HTTPS, an ACME challenge), hands the connection, with the bytes read and
//! not used ([`prefixed`]), to hyper's server ([`crate::hyper_conn::http1`]) for the rest of
//! its life: every request is read by exactly one parser, from its first byte.
//!
//! As hyper's server does: a head is parsed again only once its end may have arrived (not
//! for every packet of a slow one); the client is watched while the upstream works, and a
//! client that hangs up has its exchange dropped; once the listeners stop, the response in
//! flight says `connection: close` and the connection ends.
//!
//! # Limitations
//! A connection handed to hyper stays with it. Bodies are written to the client in the
//! chunked coding when their length is not known (never close-delimited: HTTP/1.0 clients
//! go to hyper).

pub mod deadline;
pub mod prefixed;
pub mod reply;
pub mod request;
pub mod response;

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use http::Method;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::hyper_conn;
use crate::limits::Limits;
use crate::proxy::{forward_direct, routed, Routed, Shared, Via};
use crate::routes::{normalize_host, Route};
use deadline::HeadDeadline;
use prefixed::Prefixed;
use request::{Parsed, Plain};

/// Read buffer room made before each read.
const READ_ROOM: usize = 8 * 1024;

/// Serves one client connection speaking HTTP/1.1 (plain, or TLS without `h2`).
pub async fn serve<S>(
    mut io: S,
    shared: Arc<Shared>,
    via: Via,
    limits: Limits,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max = limits.max_header_bytes;
    let mut read = BytesMut::with_capacity(READ_ROOM);
    // The upstream's request head and the client's response head, remade per request.
    let mut up = Vec::new();
    let mut out = Vec::new();
    let mut deadline = HeadDeadline::new(limits.header_timeout);
    let mut stopped = Box::pin(stopped(stop.clone()));
    loop {
        if *stop.borrow() {
            let _ = io.shutdown().await;
            return;
        }
        deadline.start();
        // How much of `read` was looked at for the end of the head.
        let mut scanned = 0;
        let taken = loop {
            if !read.is_empty()
                && (scanned == 0 || read.len() >= max || request::may_be_complete(&read, scanned))
            {
                let mut fields = request::fields();
                match request::parse(&read, &mut fields, max) {
                    Parsed::Partial => {}
                    Parsed::Other => break None,
                    Parsed::Plain(req) => break take(&shared, &via, &req, &mut up),
                }
            }
            scanned = read.len();
            read.reserve(READ_ROOM);
            let step = poll_fn(|cx| {
                if stopped.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Step::Stop);
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut io), cx, &mut read) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Step::Closed),
                    Poll::Ready(Ok(_)) => return Poll::Ready(Step::Read),
                    Poll::Pending => {}
                }
                // Slow clients are cut off (hyper's server closes them too, without a 408).
                deadline.poll_expired(cx).map(|()| Step::Late)
            })
            .await;
            match step {
                Step::Read => {}
                Step::Stop => {
                    let _ = io.shutdown().await;
                    return;
                }
                Step::Late => {
                    tracing::debug!(peer = %via.peer, "a request head took too long");
                    return;
                }
                Step::Closed => return,
            }
        };
        let Some(Taken {
            len,
            route,
            method,
            close,
        }) = taken
        else {
            return hand_over(io, read, shared, via, limits, stop).await;
        };
        read.advance(len);
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        let to_head = method == Method::HEAD;
        let response = {
            let forward = pin!(forward_direct(shared.clone(), route, method, &up[..]));
            match until_answered_or_gone(forward, &mut io, &mut read, max).await {
                Some(r) => r,
                // The client hung up: the exchange is dropped (as hyper's server drops it).
                None => return,
            }
        };
        // Once told to stop, the connection ends after this response, and says so.
        let close = close || *stop.borrow();
        if !reply::reply(&mut io, response, to_head, close, &mut out).await || close {
            let _ = io.shutdown().await;
            return;
        }
    }
}

enum Step {
    Read,
    Stop,
    Late,
    Closed,
}

/// A plain request this module forwards.
struct Taken {
    len: usize,
    route: Arc<Route>,
    method: Method,
    close: bool,
}

/// The route of a plain request and its head for the upstream (in `up`); `None` when ingress
/// answers it itself (no route, an ACME challenge, the redirect to HTTPS), which hyper's
/// path does.
fn take(shared: &Shared, via: &Via, req: &Plain<'_, '_>, up: &mut Vec<u8>) -> Option<Taken> {
    let host = normalize_host(req.host)?;
    let Routed::Forward(route) = routed(&shared.table(), &host, req.path(), via.tls) else {
        return None;
    };
    request::write_upstream(req, via.tls, via.client_ip(), &host, up);
    Some(Taken {
        len: req.len,
        route,
        method: req.method.clone(),
        close: req.close,
    })
}

/// Awaits `answer` while watching the client: `None` if it hangs up first. What it sends
/// meanwhile (a pipelined request) is kept in `read`, up to `max` bytes.
async fn until_answered_or_gone<F, S>(
    mut answer: Pin<&mut F>,
    io: &mut S,
    read: &mut BytesMut,
    max: usize,
) -> Option<F::Output>
where
    F: Future,
    S: AsyncRead + Unpin,
{
    poll_fn(|cx| {
        if let Poll::Ready(r) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        while read.len() < max {
            read.reserve(READ_ROOM);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut *read) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

/// Gives the connection, and `read`'s bytes not yet used, to hyper's server.
async fn hand_over<S>(
    io: S,
    read: BytesMut,
    shared: Arc<Shared>,
    via: Via,
    limits: Limits,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Prefixed::new(read.freeze(), io));
    // Boxed: hyper's connection is a large future, and most connections never get here.
    Box::pin(hyper_conn::http1(io, shared, via, limits, stop)).await
}

/// Completes once the listeners are told to stop (or are gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

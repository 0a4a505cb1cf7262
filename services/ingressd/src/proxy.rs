//! One request: find its route, answer what ingress answers itself (ACME challenges, the
//! redirect to HTTPS, 404 for unknown hosts), else forward it to an upstream container.
//!
//! Forwarding follows what Caddy and nginx do: `Host` kept; `X-Forwarded-For/Proto/Host`
//! set; hop-by-hop headers dropped (and `Upgrade` re-added for WebSocket and other
//! upgrades, whose bytes are then copied both ways); bodies streamed both ways; HTTP/1.1 to
//! the upstream whatever the client spoke. A request that could not be sent (connection
//! refused, timed out, or a kept-alive connection that had closed) is tried on another
//! upstream, body included, since nothing of it left; once any of it was sent it is not
//! retried.
//!
//! A request without a body (nearly all) is exchanged with its upstream on the task that
//! serves the client ([`crate::upstream`]); one with a body, or asking to upgrade, goes
//! through hyper's client. Plain HTTP/1.1 requests reach [`forward_direct`] from
//! [`crate::front`] with their upstream head already written; the rest come through hyper's
//! server to [`handle`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::{self, Either};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;

use crate::balance::{Health, InFlight};
use crate::certs::Store;
use crate::config::Balance;
use crate::pool::{ConnectError, Pool};
use crate::routes::{normalize_host, Route, Table};
use crate::upstream::head::write_request;
use crate::upstream::{ExchangeError, Got, Reader};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body ingressd sends or forwards. One type rather than a boxed trait object, so
/// forwarding a request and its response allocates no body.
pub enum Body {
    /// A whole body ingressd wrote itself (empty once sent).
    Full(Option<Bytes>),
    /// A client's request body, on its way to an upstream.
    Client(Incoming),
    /// An upstream's response body read by hyper's client, on its way to the client.
    /// (Boxed, as is `Direct`: a response is moved several times on its way out, and most
    /// are `Full`.)
    Upstream(Box<Guarded>),
    /// An upstream's response body read on the request's own task ([`crate::upstream`]).
    Direct(Box<Streamed>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Body::Client(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Body::Upstream(b) => b.poll_frame(cx),
            Body::Direct(b) => b.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Body::Client(b) => b.is_end_stream(),
            Body::Upstream(b) => b.inner.is_end_stream(),
            Body::Direct(b) => b.reader.as_ref().is_none_or(|r| r.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Client(b) => b.size_hint(),
            Body::Upstream(b) => b.inner.size_hint(),
            Body::Direct(b) => match b.reader.as_ref().map_or(Some(0), |r| r.exact_left()) {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Counts for `org.uncloud.Ingress1`.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    /// Answered by ingressd with 502/503/504 (no upstream could answer).
    pub upstream_failures: AtomicU64,
    /// Retried on another upstream after a failed connection.
    pub retries: AtomicU64,
    pub not_found: AtomicU64,
    pub upgrades: AtomicU64,
    pub challenges: AtomicU64,
}

/// What every connection shares.
pub struct Shared {
    pub table: RwLock<Arc<Table>>,
    pub certs: Arc<Store>,
    pub health: Health,
    pub pool: Arc<Pool>,
    pub balance: Balance,
    pub counters: Counters,
}

impl Shared {
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap().clone()
    }
}

/// Which listener a request came in on, and from whom.
#[derive(Debug, Clone)]
pub struct Via {
    pub tls: bool,
    pub peer: SocketAddr,
    /// The peer's address as a header value, made once per connection.
    client: HeaderValue,
}

impl Via {
    pub fn new(tls: bool, peer: SocketAddr) -> Via {
        let client = HeaderValue::try_from(peer.ip().to_string())
            .expect("an IP address is a valid header value");
        Via { tls, peer, client }
    }

    /// The peer's address as text.
    pub fn client_ip(&self) -> &[u8] {
        self.client.as_bytes()
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Body::Full(Some(b.into()))
}

/// The hostname a request is for: `Host` (HTTP/1.1) or the URI's authority (HTTP/2).
fn request_host(req: &Request<Incoming>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    normalize_host(raw)
}

/// Answers one request.
///
/// A plain function returning a future rather than an `async fn`: hyper keeps this future
/// for every request and moves it about, and an `async fn` future carries its arguments
/// twice (rustc keeps both the argument and the local it is moved to). What needs no
/// waiting is done before the future is made ([`decide`]), so the future holds only what
/// the wait needs (about 560 bytes, from 2,256).
pub fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    via: Via,
) -> impl Future<Output = Response<Body>> + Send + 'static {
    // `Either` rather than an `async` block around a `match`: that would keep `Next` beside
    // the future made from it.
    match decide(&shared, req, &via) {
        Next::Answer(r) => Either::Left(future::ready(r)),
        Next::Direct(route, parts) => {
            let mut head = Vec::with_capacity(256);
            write_request(&parts, &mut head);
            Either::Right(Either::Left(forward_direct(
                shared,
                route,
                parts.method,
                head,
            )))
        }
        // Boxed: a larger future, and the rarer path.
        Next::Hyper(h) => Either::Right(Either::Right(Box::pin(forward(shared, *h)))),
    }
}

/// What a request needs after [`decide`].
enum Next {
    /// Answered by ingressd itself.
    Answer(Response<Body>),
    /// Forwarded on this task ([`crate::upstream`]).
    Direct(Arc<Route>, request::Parts),
    /// Forwarded through hyper's client: a request with a body, or an upgrade.
    Hyper(Box<Hyper>),
}

struct Hyper {
    route: Arc<Route>,
    out: Request<Body>,
    upgrade: Option<HeaderValue>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// What to do with a request: everything about it that needs no waiting.
fn decide(shared: &Shared, mut req: Request<Incoming>, via: &Via) -> Next {
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let Some(host) = request_host(&req) else {
        shared.counters.not_found.fetch_add(1, Ordering::Relaxed);
        return Next::Answer(text(
            StatusCode::NOT_FOUND,
            "no service is published at this address\n",
        ));
    };
    let path = req.uri().path();
    let route = match routed(&shared.table(), &host, path, via.tls) {
        Routed::Forward(route) => route,
        Routed::Challenge(token) => {
            shared.counters.challenges.fetch_add(1, Ordering::Relaxed);
            return Next::Answer(match shared.certs.key_authorization(&host, token) {
                Some(answer) => {
                    tracing::info!(%host, peer = %via.peer, "answered an ACME HTTP-01 challenge");
                    let mut r = text(StatusCode::OK, answer);
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    r
                }
                None => text(StatusCode::NOT_FOUND, "no such challenge\n"),
            });
        }
        Routed::NotFound => {
            shared.counters.not_found.fetch_add(1, Ordering::Relaxed);
            return Next::Answer(text(
                StatusCode::NOT_FOUND,
                format!("no service is published at {host}{path}\n"),
            ));
        }
        Routed::ToHttps => {
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let location = format!("https://{host}{pq}");
            let mut r = text(StatusCode::PERMANENT_REDIRECT, format!("{location}\n"));
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return Next::Answer(r);
        }
    };

    let upgrade = upgrade_protocol(req.headers(), req.version());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let out = match prepare(req, host, via, upgrade.as_ref()) {
        Ok(r) => r,
        Err(why) => return Next::Answer(text(StatusCode::BAD_REQUEST, format!("{why}\n"))),
    };

    // Most requests have no body: their exchange runs on this task. The rest go through
    // hyper's client.
    if upgrade.is_none() && out.body().is_end_stream() && out.method() != Method::CONNECT {
        Next::Direct(route, out.into_parts().0)
    } else {
        Next::Hyper(Box::new(Hyper {
            route,
            out,
            upgrade,
            client_upgrade,
        }))
    }
}

/// Where a request to `host` (normalised) and `path` goes: the one routing decision, made for
/// requests read by hyper's server ([`decide`]) and by [`crate::front`].
pub(crate) enum Routed<'p> {
    /// Forwarded to the route's upstreams.
    Forward(Arc<Route>),
    /// An ACME HTTP-01 challenge (plain HTTP only), with its token.
    Challenge(&'p str),
    /// No route: 404.
    NotFound,
    /// An HTTPS route asked for over plain HTTP: 308 to HTTPS.
    ToHttps,
}

pub(crate) fn routed<'p>(table: &Table, host: &str, path: &'p str, tls: bool) -> Routed<'p> {
    if !tls {
        if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
            return Routed::Challenge(token);
        }
    }
    match table.lookup_normalized(host, path) {
        None => Routed::NotFound,
        Some(r) if !tls && r.protocol == uncloud_common::ports::Protocol::Https => Routed::ToHttps,
        Some(r) => Routed::Forward(r.clone()),
    }
}

/// Forwards a request through hyper's client (a request with a body, or an upgrade).
async fn forward(shared: Arc<Shared>, h: Hyper) -> Response<Body> {
    let Hyper {
        route,
        mut out,
        upgrade,
        client_upgrade,
    } = h;
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        let Some((addr, upstream)) =
            shared
                .health
                .pick(&route, shared.balance, &tried, Instant::now)
        else {
            return unavailable(&shared, &route);
        };
        let conn = if upgrade.is_some() {
            shared.pool.connect_for_upgrade(addr).await
        } else {
            shared.pool.checkout(addr).await
        };
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                refused(&shared, addr, &mut tried, e);
                continue;
            }
        };
        let guard = InFlight::new(upstream);
        let response = match conn.sender.try_send_request(out).await {
            Ok(r) => r,
            Err(mut e) => match e.take_message() {
                // Nothing of it was sent: try again, elsewhere unless the connection was a
                // kept-alive one that had closed.
                Some(back) => {
                    out = back;
                    if !conn.reused {
                        shared.health.failed(addr, Instant::now());
                        tried.push(addr);
                    }
                    shared.counters.retries.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                None => {
                    // The connection's response timeout ([`crate::idle`]).
                    let timeout = crate::idle::is_timeout(e.error());
                    return failed(&shared, &route, addr, timeout, e.error());
                }
            },
        };
        guard.upstream().succeeded();
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return switch(shared, response, client_upgrade, guard);
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = Body::Upstream(Box::new(Guarded {
            inner: body,
            _guard: guard,
            // A connection made for an upgrade the upstream declined keeps its long silence
            // limit: not for the pool.
            reuse: upgrade
                .is_none()
                .then(|| (shared.pool.clone(), addr, conn.sender)),
        }));
        return Response::from_parts(parts, body);
    }
}

/// Forwards a request without a body, whose head as the upstream gets it is `head`, over a
/// connection driven by this task. (A function returning an `async` block, for the reason
/// [`handle`] is one.)
#[allow(clippy::manual_async_fn)]
pub(crate) fn forward_direct<H: AsRef<[u8]> + Send>(
    shared: Arc<Shared>,
    route: Arc<Route>,
    method: Method,
    head: H,
) -> impl Future<Output = Response<Body>> + Send {
    async move {
        let (shared, route, head) = (&shared, &*route, head.as_ref());
        let mut tried: Vec<SocketAddr> = Vec::new();
        // After a kept-alive connection failed, the next goes on a new one.
        let mut fresh = false;
        loop {
            let Some((addr, upstream)) =
                shared
                    .health
                    .pick(route, shared.balance, &tried, Instant::now)
            else {
                return unavailable(shared, route);
            };
            let (mut conn, reused) = match shared.pool.checkout_direct(addr, fresh).await {
                Ok(c) => c,
                Err(e) => {
                    refused(shared, addr, &mut tried, e);
                    continue;
                }
            };
            let guard = InFlight::new(upstream);
            let (answer, framing, keep) = match conn.exchange(&method, head).await {
                Ok(answer) => answer,
                // Most likely the upstream closed the kept-alive connection as the request
                // went out: it goes again, once, on a new connection (`fresh` is never reused).
                Err(e) if reused && e.may_send_again(&method) => {
                    shared.counters.retries.fetch_add(1, Ordering::Relaxed);
                    fresh = true;
                    continue;
                }
                Err(e) => {
                    let timeout = matches!(e, ExchangeError::TimedOut);
                    return failed(shared, route, addr, timeout, &e);
                }
            };
            guard.upstream().succeeded();
            let body = match conn.body(framing, keep) {
                Got::Whole(data, conn) => {
                    if let Some(c) = conn {
                        shared.pool.checkin_direct(addr, c);
                    }
                    Body::Full(Some(data))
                }
                Got::Streaming(reader) => Body::Direct(Box::new(Streamed {
                    reader: Some(reader),
                    _guard: guard,
                    pool: shared.pool.clone(),
                    addr,
                })),
            };
            let mut r = Response::new(body);
            *r.status_mut() = answer.status;
            *r.headers_mut() = answer.headers;
            strip_hop_by_hop(r.headers_mut());
            return r;
        }
    }
}

/// No upstream left to try: 503 when the service has no container, else 502.
fn unavailable(shared: &Shared, route: &Route) -> Response<Body> {
    shared
        .counters
        .upstream_failures
        .fetch_add(1, Ordering::Relaxed);
    let (status, why) = if route.upstreams.is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "service {} has no healthy container right now",
                route.service
            ),
        )
    } else {
        (
            StatusCode::BAD_GATEWAY,
            format!("no container of service {} could be reached", route.service),
        )
    };
    text(status, format!("{why}\n"))
}

/// An upstream could not be connected to: skip it for a while and try another.
fn refused(shared: &Shared, addr: SocketAddr, tried: &mut Vec<SocketAddr>, e: ConnectError) {
    tracing::debug!(error = %e, "upstream refused; trying another");
    shared.health.failed(addr, Instant::now());
    shared.counters.retries.fetch_add(1, Ordering::Relaxed);
    tried.push(addr);
}

/// The upstream took the request and then failed: 504 if it went silent, else 502.
fn failed(
    shared: &Shared,
    route: &Route,
    addr: SocketAddr,
    timeout: bool,
    e: &(dyn std::error::Error + 'static),
) -> Response<Body> {
    shared
        .counters
        .upstream_failures
        .fetch_add(1, Ordering::Relaxed);
    if timeout {
        shared.health.failed(addr, Instant::now());
        return text(
            StatusCode::GATEWAY_TIMEOUT,
            format!("service {} did not answer in time\n", route.service),
        );
    }
    tracing::debug!(error = %e, upstream = %addr, "upstream failed mid-request");
    text(
        StatusCode::BAD_GATEWAY,
        format!("service {} failed to answer\n", route.service),
    )
}

/// The protocol a request asks to upgrade to (HTTP/1.1 `Connection: upgrade` + `Upgrade`).
fn upgrade_protocol(headers: &HeaderMap, version: Version) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    wants
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Headers that belong to one connection, not to the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    KEEP_ALIVE,
    PROXY_CONNECTION,
];

/// Drops the hop-by-hop headers, and those the `Connection` header names.
///
/// Scans the (few) headers present rather than probing for each hop-by-hop name: most
/// messages have none or one (`Connection: keep-alive`).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    // Options that name other headers; `keep-alive` and `close` (nearly all there are) do not.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    while let Some(k) = headers.keys().find(|k| HOP_BY_HOP.contains(k)).cloned() {
        headers.remove(k);
    }
}

/// The request as the upstream gets it.
fn prepare(
    req: Request<Incoming>,
    host: String,
    via: &Via,
    upgrade: Option<&HeaderValue>,
) -> Result<Request<Body>, &'static str> {
    let (mut parts, body) = req.into_parts();
    // HTTP/2 (and an absolute-form HTTP/1.1 target) carry the authority in the URI; the
    // upstream gets the origin form and the authority as `Host`.
    let authority = parts.uri.authority().cloned();
    if authority.is_some() || parts.uri.scheme().is_some() {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = None;
        uri.authority = None;
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        parts.uri = Uri::from_parts(uri).map_err(|_| "the request target is not valid")?;
    }
    parts.version = Version::HTTP_11;
    let authority = authority.as_ref().map(|a| a.as_str());
    forward_headers(&mut parts.headers, authority, host, via, upgrade)?;
    Ok(Request::from_parts(parts, Body::Client(body)))
}

/// The headers of a request as the upstream gets them: hop-by-hop ones dropped, `Host` kept
/// (or made from `authority`, else `host`), `X-Forwarded-*` set, and the upgrade asked for
/// re-added.
pub(crate) fn forward_headers(
    headers: &mut HeaderMap,
    authority: Option<&str>,
    host: String,
    via: &Via,
    upgrade: Option<&HeaderValue>,
) -> Result<(), &'static str> {
    strip_hop_by_hop(headers);
    if !headers.contains_key(header::HOST) {
        let h = authority.unwrap_or(host.as_str());
        let v = HeaderValue::from_str(h).map_err(|_| "the host is not valid")?;
        headers.insert(header::HOST, v);
    }
    let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => HeaderValue::try_from(format!("{prior}, {}", via.peer.ip())).ok(),
        None => Some(via.client.clone()),
    };
    if let Some(xff) = xff {
        headers.insert(X_FORWARDED_FOR, xff);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if via.tls { "https" } else { "http" }),
    );
    if let Ok(v) = HeaderValue::try_from(host) {
        headers.insert(X_FORWARDED_HOST, v);
    }
    if let Some(proto) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
    Ok(())
}

/// The upstream agreed to switch protocols: answer 101 and copy bytes both ways.
fn switch(
    shared: Arc<Shared>,
    mut response: Response<Incoming>,
    client: Option<hyper::upgrade::OnUpgrade>,
    guard: InFlight,
) -> Response<Body> {
    let Some(client) = client else {
        return text(
            StatusCode::BAD_GATEWAY,
            "the upstream switched protocols unasked\n",
        );
    };
    shared.counters.upgrades.fetch_add(1, Ordering::Relaxed);
    let upstream = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let _guard = guard;
        match tokio::try_join!(client, upstream) {
            Ok((c, u)) => {
                let mut c = TokioIo::new(c);
                let mut u = TokioIo::new(u);
                let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
            }
            Err(e) => tracing::debug!(error = %e, "an upgrade did not complete"),
        }
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, full(Bytes::new()))
}

/// A response body that counts its upstream as busy until it is done, and gives the
/// upstream connection back to the pool once it was read to the end.
pub struct Guarded {
    inner: Incoming,
    _guard: InFlight,
    reuse: Option<(
        Arc<Pool>,
        SocketAddr,
        hyper::client::conn::http1::SendRequest<Body>,
    )>,
}

impl Guarded {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.reuse = None,
            _ => {}
        }
        polled.map_err(BoxError::from)
    }

    fn give_back(&mut self) {
        if let Some((pool, addr, sender)) = self.reuse.take() {
            pool.checkin(addr, sender);
        }
    }
}

/// A response body read on the request's task ([`crate::upstream::Reader`]); like
/// [`Guarded`], it counts its upstream as busy and gives the connection back at its end.
pub struct Streamed {
    reader: Option<Reader>,
    _guard: InFlight,
    pool: Arc<Pool>,
    addr: SocketAddr,
}

impl Streamed {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(reader) = self.reader.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = reader.poll_data(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if reader.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.reader = None,
            _ => {}
        }
        polled.map(|o| o.map(|r| r.map(Frame::data).map_err(BoxError::from)))
    }

    fn give_back(&mut self) {
        if let Some(c) = self.reader.take().and_then(Reader::into_reusable) {
            self.pool.checkin_direct(self.addr, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::HOST, HeaderValue::from_static("a.example.com"));
        h.insert(
            "close",
            HeaderValue::from_static("kept: an option, not a header"),
        );
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["close", "host"]);
        let untouched = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, untouched, "nothing hop-by-hop: nothing changes");
    }

    #[test]
    fn only_an_http11_request_with_connection_upgrade_asks_for_one() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(upgrade_protocol(&h, Version::HTTP_11), None);
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(
            upgrade_protocol(&h, Version::HTTP_11),
            Some(HeaderValue::from_static("websocket"))
        );
        assert_eq!(upgrade_protocol(&h, Version::HTTP_2), None);
    }
}

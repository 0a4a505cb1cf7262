//! Connections served by hyper's server: HTTP/2, and HTTP/1.1 from the first request
//! [`crate::front`] does not take itself (malformed ones get hyper's 400, oversized heads
//! its 431).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::FutureExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::watch;

use crate::limits::Limits;
use crate::proxy::{handle, Shared, Via};

/// Serves HTTP/1.1 on `io` with hyper's server, from its first byte (which may be one
/// [`crate::front`] read: see `front::prefixed`). `max_buf_size` is the head limit: a head
/// that does not fit gets 431.
pub async fn http1<I>(
    io: I,
    shared: Arc<Shared>,
    via: Via,
    limits: Limits,
    stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // `map`, not an `async` block around `handle`: that would keep the request beside the
    // future made from it.
    let svc = service_fn(move |req| {
        handle(shared.clone(), req, via.clone()).map(Ok::<_, std::convert::Infallible>)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .serve_connection(io, svc)
        .with_upgrades();
    until_stopped(conn, stop, |c| c.graceful_shutdown()).await;
}

/// Serves HTTP/2 on `io` (a TLS stream that chose `h2`) with hyper's server.
pub async fn http2<I>(
    io: I,
    shared: Arc<Shared>,
    via: Via,
    limits: Limits,
    stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // `map`, not an `async` block around `handle`: that would keep the request beside the
    // future made from it.
    let svc = service_fn(move |req| {
        handle(shared.clone(), req, via.clone()).map(Ok::<_, std::convert::Infallible>)
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .serve_connection(io, svc);
    until_stopped(conn, stop, |c| c.graceful_shutdown()).await;
}

/// Serves `conn` to its end; when told to stop, lets it finish what is in flight.
async fn until_stopped<C, E>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    graceful: impl FnOnce(Pin<&mut C>),
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = stop.changed() => {}
    }
    graceful(conn.as_mut());
    let _ = conn.await;
}

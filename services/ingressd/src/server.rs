//! The listeners: plain HTTP and HTTPS (HTTP/2 or HTTP/1.1 by ALPN), with the limits that
//! keep a public listener standing: a cap on connections served at once, on a request
//! head's size (431 past it) and on the time to send it (slow clients are cut off), and an
//! idle timeout on every connection. HTTP/1.1 connections go to [`crate::front`], HTTP/2
//! ones to hyper's server ([`crate::hyper_conn`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::idle::Idle;
use crate::proxy::{Shared, Via};
use crate::{front, hyper_conn};

use crate::limits::Limits;

/// Running listeners; dropping or [`Listeners::stop`]ping them ends them.
pub struct Listeners {
    pub addrs: Vec<String>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Listeners {
    /// Binds every address (all or nothing) and serves them.
    pub async fn bind(
        shared: Arc<Shared>,
        tls: Arc<rustls::ServerConfig>,
        http: &[SocketAddr],
        https: &[SocketAddr],
        limits: Limits,
    ) -> io::Result<Listeners> {
        let mut bound = Vec::new();
        for (addr, secure) in http
            .iter()
            .map(|a| (a, false))
            .chain(https.iter().map(|a| (a, true)))
        {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?;
            bound.push((l, secure));
        }
        let (stop, _) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        for (l, secure) in bound {
            let local = l.local_addr()?;
            addrs.push(format!(
                "{}://{local}",
                if secure { "https" } else { "http" }
            ));
            let acceptor = secure.then(|| tokio_rustls::TlsAcceptor::from(tls.clone()));
            tasks.spawn(accept_loop(
                l,
                acceptor,
                shared.clone(),
                limits,
                slots.clone(),
                stop.subscribe(),
            ));
        }
        Ok(Listeners { addrs, stop, tasks })
    }

    /// Stops accepting; connections finish their requests (for at most `grace`).
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    limits: Limits,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        // Past the cap, new connections wait in the kernel's queue.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let (shared, tls, stop) = (shared.clone(), tls.clone(), stop.clone());
        conns.spawn(async move {
            let _permit = permit;
            serve(stream, peer, tls, shared, limits, stop).await;
        });
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    limits: Limits,
    stop: watch::Receiver<bool>,
) {
    let stream = Idle::new(stream, limits.idle_timeout);
    match tls {
        None => {
            let via = Via::new(false, peer);
            front::serve(stream, shared, via, limits, stop).await
        }
        Some(acceptor) => {
            let accepted =
                tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await;
            let tls = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let via = Via::new(true, peer);
            if h2 {
                hyper_conn::http2(TokioIo::new(tls), shared, via, limits, stop).await
            } else {
                front::serve(tls, shared, via, limits, stop).await
            }
        }
    }
}

//! Connections to upstreams, kept open for reuse (HTTP/1.1 keep-alive).
//!
//! ingressd's own small pool rather than hyper-util's client: a request that could not be
//! sent (the connection failed, or one kept idle turned out closed) comes back whole, so it
//! is retried on another upstream, bodies included. An idle connection is kept for
//! `kept`, below upstreams' own idle timeouts, so one an upstream is closing is rarely
//! handed out (and when it is, the request comes back and goes again).
//!
//! Two kinds of connection are kept, on two shelves: those [`crate::upstream`] drives on the
//! request's own task (requests without a body), and hyper's client connections (requests
//! with a body). A kept [`upstream::Conn`] has no task watching it, so before one is handed
//! out it is checked, without a system call in the usual case, for having been closed or
//! sent bytes unasked ([`upstream::Conn::is_reusable`]).
//!
//! The response timeout lives on the connection ([`Idle`]), not on each request: an upstream
//! that sends nothing for `response` while it has a request fails the connection, so the
//! request gets a 504 without a timer set and cleared per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use tokio::net::TcpStream;

use crate::idle::Idle;
use crate::proxy::Body;
use crate::upstream;

/// Idle connections kept per upstream at most.
const MAX_IDLE_PER_UPSTREAM: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {0}: timed out")]
    Timeout(SocketAddr),
    #[error("connecting to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP/1.1 handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// Idle connections of one kind, newest last, by upstream.
struct Shelf<C> {
    idle: Mutex<HashMap<SocketAddr, Vec<(C, Instant)>>>,
}

impl<C> Default for Shelf<C> {
    fn default() -> Self {
        Shelf {
            idle: Mutex::default(),
        }
    }
}

impl<C> Shelf<C> {
    /// The newest connection to `addr` kept less than `kept` (older ones are dropped).
    fn take(&self, addr: SocketAddr, kept: Duration) -> Option<C> {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.get_mut(&addr)?;
        while let Some((c, since)) = list.pop() {
            if since.elapsed() < kept {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, c: C, kept: Duration) {
        let mut idle = self.idle.lock().unwrap();
        let list = idle.entry(addr).or_default();
        if list.len() >= MAX_IDLE_PER_UPSTREAM {
            list.retain(|(_, since)| since.elapsed() < kept);
        }
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push((c, Instant::now()));
        }
    }

    fn retain(
        &self,
        keep: &impl Fn(&SocketAddr) -> bool,
        mut alive: impl FnMut(&mut C) -> bool,
        kept: Duration,
    ) {
        let mut idle = self.idle.lock().unwrap();
        idle.retain(|a, _| keep(a));
        for list in idle.values_mut() {
            list.retain_mut(|(c, since)| since.elapsed() < kept && alive(c));
        }
    }
}

/// How long an upstream connection may take, in each of its phases.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// An idle connection is kept this long for reuse.
    pub kept: Duration,
    /// Silence from an upstream that has a request (then 504).
    pub response: Duration,
    /// Silence both ways on an upgraded (WebSocket) connection.
    pub upgraded: Duration,
}

/// Keep-alive connections by upstream address.
pub struct Pool {
    /// hyper's client connections (requests with a body).
    senders: Shelf<http1::SendRequest<Body>>,
    /// Connections driven by the request itself ([`crate::upstream`]).
    conns: Shelf<upstream::Conn>,
    timeouts: Timeouts,
}

/// A connection checked out of the pool.
pub struct Conn {
    pub sender: http1::SendRequest<Body>,
    /// It was used before (so a failure to send may just mean the upstream closed it).
    pub reused: bool,
}

impl Pool {
    pub fn new(timeouts: Timeouts) -> Arc<Pool> {
        Arc::new(Pool {
            senders: Shelf::default(),
            conns: Shelf::default(),
            timeouts,
        })
    }

    /// An idle connection to `addr` that can take a request, or a new one.
    pub async fn checkout(&self, addr: SocketAddr) -> Result<Conn, ConnectError> {
        while let Some(mut sender) = self.senders.take(addr, self.timeouts.kept) {
            if sender.is_closed() {
                continue;
            }
            // Given back as its response ended: its connection may need a moment to be
            // ready for the next request (it always is, unless the upstream closed it).
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Ok(Conn {
                    sender,
                    reused: true,
                });
            }
        }
        // Boxed: rare, and a large future that would otherwise be part of every request's.
        Box::pin(self.connect(addr, self.timeouts.response)).await
    }

    /// An idle connection to `addr` for a request without a body (unless `fresh`), or a
    /// new one; and whether it was used before.
    pub async fn checkout_direct(
        &self,
        addr: SocketAddr,
        fresh: bool,
    ) -> Result<(upstream::Conn, bool), ConnectError> {
        if !fresh {
            while let Some(mut c) = self.conns.take(addr, self.timeouts.kept) {
                if c.is_reusable() {
                    return Ok((c, true));
                }
            }
        }
        let stream = Box::pin(self.dial(addr)).await?;
        Ok((upstream::Conn::new(stream, self.timeouts.response), false))
    }

    /// Gives a connection back: its response was read to the end.
    pub fn checkin_direct(&self, addr: SocketAddr, c: upstream::Conn) {
        self.conns.put(addr, c, self.timeouts.kept);
    }

    /// A new connection, not from the pool, for a request that asks to upgrade: once
    /// upgraded it may stay silent as long as a client connection may.
    pub async fn connect_for_upgrade(&self, addr: SocketAddr) -> Result<Conn, ConnectError> {
        Box::pin(self.connect(addr, self.timeouts.upgraded)).await
    }

    async fn dial(&self, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
        let stream = tokio::time::timeout(self.timeouts.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout(addr))?
            .map_err(|source| ConnectError::Io { addr, source })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect(&self, addr: SocketAddr, silent: Duration) -> Result<Conn, ConnectError> {
        let stream = self.dial(addr).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(Idle::new(stream, silent)))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        tokio::spawn(async move {
            // Ends when either side closes; upgrades (WebSocket) take the connection over.
            let _ = conn.with_upgrades().await;
        });
        Ok(Conn {
            sender,
            reused: false,
        })
    }

    /// Gives a connection back: its response was read to the end.
    pub fn checkin(&self, addr: SocketAddr, sender: http1::SendRequest<Body>) {
        if !sender.is_closed() {
            self.senders.put(addr, sender, self.timeouts.kept);
        }
    }

    /// Drops idle connections to upstreams no route has any more, and stale ones.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        let kept = self.timeouts.kept;
        self.senders.retain(&keep, |s| !s.is_closed(), kept);
        // Those the upstream closed go now, not when next handed out.
        self.conns.retain(&keep, |c| c.is_reusable(), kept);
    }
}

//! Forwarding names outside the zone to the machine's upstream resolvers, with a cache.
//!
//! Each question goes to the upstreams in order, over UDP from a fresh socket and a random
//! id (a reply must come from the upstream asked, with that id and that question, or it is
//! dropped: no answer from a spoofer is cached). A truncated reply is asked again over TCP.
//! At most `max_inflight` questions wait on upstreams at once; past that, and when every
//! upstream failed within the deadline, the client gets SERVFAIL quickly rather than a hang.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::cache::{self, Cache};
use crate::fast::Question;

/// The UDP payload size we offer upstreams (the DNS flag day 2020 value).
const UPSTREAM_PAYLOAD: u16 = 1232;

/// Why a question got no answer from upstream.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolver is configured")]
    NoUpstream,
    #[error("too many questions are waiting on upstreams already")]
    Busy,
    #[error("no upstream answered within {0:?}")]
    Timeout(Duration),
    #[error("upstream {upstream}: {source}")]
    Io {
        upstream: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream {upstream} sent a malformed reply: {reason}")]
    Malformed {
        upstream: SocketAddr,
        reason: String,
    },
}

/// Counters of forwarding, for `org.uncloud.Dns1`.
#[derive(Debug, Default)]
pub struct ForwardCounters {
    pub forwarded: AtomicU64,
    pub cache_hits: AtomicU64,
    pub failures: AtomicU64,
}

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<Cache>,
    inflight: Semaphore,
    timeout: Duration,
    pub counters: ForwardCounters,
}

impl Forwarder {
    pub fn new(
        upstreams: Vec<SocketAddr>,
        cache_entries: usize,
        max_inflight: usize,
        timeout: Duration,
    ) -> Forwarder {
        Forwarder {
            upstreams,
            cache: Mutex::new(Cache::new(cache_entries)),
            inflight: Semaphore::new(max_inflight),
            timeout,
            counters: ForwardCounters::default(),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The upstream answer to `query` (from the cache when fresh).
    pub async fn resolve(
        &self,
        query: &Query,
        checking_disabled: bool,
    ) -> Result<Message, ForwardError> {
        let key = cache::key(query);
        if let Some(hit) = key
            .as_ref()
            .and_then(|k| self.cache.lock().unwrap().get(k, Instant::now()))
        {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        let result = self.ask_upstreams(query, checking_disabled).await;
        match &result {
            Ok(reply) => self.cache.lock().unwrap().put(query, reply, Instant::now()),
            Err(_) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Writes the reply to the plain query `request` (parsed into `q`) from the cache, if a
    /// fresh answer is there (see [`Cache::answer_plain`]).
    pub fn answer_plain(&self, q: &Question, request: &[u8], out: &mut Vec<u8>) -> bool {
        let hit = self
            .cache
            .lock()
            .unwrap()
            .answer_plain(q, request, out, Instant::now());
        if hit {
            self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    async fn ask_upstreams(
        &self,
        query: &Query,
        checking_disabled: bool,
    ) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let _permit = self
            .inflight
            .try_acquire()
            .map_err(|_| ForwardError::Busy)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        // Each upstream gets an equal share of the deadline, so a dead first one leaves
        // time for the next.
        let share = self.timeout / u32::try_from(self.upstreams.len()).unwrap_or(u32::MAX);
        let mut last = ForwardError::Timeout(self.timeout);
        for &upstream in &self.upstreams {
            let until = (tokio::time::Instant::now() + share).min(deadline);
            match tokio::time::timeout_at(until, ask(upstream, query, checking_disabled)).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => {
                    tracing::debug!(%upstream, error = %e, "upstream failed");
                    last = e;
                }
                Err(_) => {
                    tracing::debug!(%upstream, "upstream timed out");
                }
            }
        }
        Err(last)
    }
}

/// One question to one upstream: UDP, then TCP if the reply was truncated.
async fn ask(
    upstream: SocketAddr,
    query: &Query,
    checking_disabled: bool,
) -> Result<Message, ForwardError> {
    let io = |source| ForwardError::Io { upstream, source };
    let id: u16 = rand::random();
    let mut request = Message::new(id, MessageType::Query, OpCode::Query);
    request.metadata.recursion_desired = true;
    request.metadata.checking_disabled = checking_disabled;
    request.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(UPSTREAM_PAYLOAD);
    request.set_edns(edns);
    let bytes = request.to_vec().map_err(|e| ForwardError::Malformed {
        upstream,
        reason: e.to_string(),
    })?;

    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let socket = UdpSocket::bind(bind).await.map_err(io)?;
    // Connected: the kernel drops datagrams from anyone but the upstream.
    socket.connect(upstream).await.map_err(io)?;
    socket.send(&bytes).await.map_err(io)?;
    let mut buf = vec![0u8; 65535];
    let reply = loop {
        let n = socket.recv(&mut buf).await.map_err(io)?;
        match Message::from_vec(&buf[..n]) {
            Ok(m) if matches_request(&m, id, query) => break m,
            // Not the answer to this question (late, or forged): keep waiting.
            _ => continue,
        }
    };
    if !reply.metadata.truncation {
        return Ok(reply);
    }
    let mut stream = TcpStream::connect(upstream).await.map_err(io)?;
    let len = u16::try_from(bytes.len()).expect("one question fits");
    stream.write_all(&len.to_be_bytes()).await.map_err(io)?;
    stream.write_all(&bytes).await.map_err(io)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(io)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await.map_err(io)?;
    let m = Message::from_vec(&buf).map_err(|e| ForwardError::Malformed {
        upstream,
        reason: e.to_string(),
    })?;
    if !matches_request(&m, id, query) {
        return Err(ForwardError::Malformed {
            upstream,
            reason: "the TCP reply answers another question".into(),
        });
    }
    Ok(m)
}

fn matches_request(m: &Message, id: u16, query: &Query) -> bool {
    m.metadata.id == id
        && m.metadata.message_type == MessageType::Response
        && m.queries.len() == 1
        && m.queries[0].query_type() == query.query_type()
        && m.queries[0].query_class() == query.query_class()
        && m.queries[0]
            .name()
            .to_ascii()
            .eq_ignore_ascii_case(&query.name().to_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{Name, RecordType};

    #[tokio::test]
    async fn no_upstream_and_a_silent_upstream_fail_within_the_deadline() {
        let q = Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::A);
        let f = Forwarder::new(Vec::new(), 10, 4, Duration::from_millis(200));
        assert!(matches!(
            f.resolve(&q, false).await,
            Err(ForwardError::NoUpstream)
        ));

        // A socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let f = Forwarder::new(
            vec![silent.local_addr().unwrap()],
            10,
            4,
            Duration::from_millis(200),
        );
        let started = Instant::now();
        assert!(f.resolve(&q, false).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(f.counters.failures.load(Ordering::Relaxed), 1);
    }
}

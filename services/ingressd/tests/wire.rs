//! ingressd's listeners over real sockets on loopback, with real HTTP upstreams and `curl`:
//! routing, 404, the redirect, forwarded headers, retries past a dead upstream, HTTP/2 over
//! TLS, upgrades (a WebSocket echo among them), and the limits that keep a public listener standing (slow
//! clients, oversized heads, malformed requests).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ingressd::balance::Health;
use ingressd::certs::{self, Store};
use ingressd::config::Balance;
use ingressd::limits::Limits;
use ingressd::pool::{Pool, Timeouts};
use ingressd::proxy::{Counters, Shared};
use ingressd::routes::Table;
use ingressd::server::Listeners;
use ingressd::view::View;
use uncloud_common::model::{Container, ContainerState, Machine, Service, ServiceSpec};

/// An upstream that answers with what it saw (`name`, host, path, forwarded headers), and
/// for `Upgrade: echo` switches protocols and echoes bytes back.
async fn upstream(addr: SocketAddr, name: &'static str) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<hyper::body::Incoming>| async move {
                    if req
                        .headers()
                        .get("upgrade")
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
                    {
                        // RFC 6455: accept the handshake, then echo each frame, unmasked.
                        let key = req
                            .headers()
                            .get("sec-websocket-key")
                            .map(|k| k.as_bytes().to_vec())
                            .unwrap_or_default();
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let up = on.await.unwrap();
                            let _ = websocket_echo(TokioIo::new(up)).await;
                        });
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                        r.headers_mut()
                            .insert("upgrade", "websocket".parse().unwrap());
                        r.headers_mut()
                            .insert("connection", "Upgrade".parse().unwrap());
                        r.headers_mut().insert(
                            "sec-websocket-accept",
                            websocket_accept(&key).parse().unwrap(),
                        );
                        return Ok::<_, hyper::Error>(r);
                    }
                    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let up = on.await.unwrap();
                            let mut io = TokioIo::new(up);
                            let (mut r, mut w) = tokio::io::split(&mut io);
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        });
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                        r.headers_mut().insert("upgrade", "echo".parse().unwrap());
                        r.headers_mut()
                            .insert("connection", "upgrade".parse().unwrap());
                        return Ok::<_, hyper::Error>(r);
                    }
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let seen = serde_json::json!({
                        "upstream": name,
                        "host": h("host"),
                        "path": req.uri().to_string(),
                        "xff": h("x-forwarded-for"),
                        "proto": h("x-forwarded-proto"),
                        "xhost": h("x-forwarded-host"),
                        "version": format!("{:?}", req.version()),
                    });
                    let body = req.into_body().collect().await?.to_bytes();
                    let mut seen = seen;
                    seen["body_len"] = body.len().into();
                    Ok(Response::new(Full::new(Bytes::from(seen.to_string()))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    })
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455 §4.2.2).
fn websocket_accept(key: &[u8]) -> String {
    use base64::prelude::*;
    let mut input = key.to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    BASE64_STANDARD.encode(digest.as_ref())
}

/// Echoes WebSocket frames (short, final, masked from the client) back unmasked, until the
/// client closes.
async fn websocket_echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut io: S,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await?;
        let (opcode, masked, len) = (
            head[0] & 0x0f,
            head[1] & 0x80 != 0,
            (head[1] & 0x7f) as usize,
        );
        assert!(masked && len < 126, "a short masked frame from the client");
        let mut mask = [0u8; 4];
        io.read_exact(&mut mask).await?;
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        let mut frame = vec![0x80 | opcode, len as u8];
        frame.extend_from_slice(&payload);
        io.write_all(&frame).await?;
        if opcode == 0x8 {
            return Ok(());
        }
    }
}

fn service(id: &str, ports: &[&str]) -> Service {
    Service {
        id: id.into(),
        name: id.into(),
        created_at_ms: 1,
        spec: ServiceSpec {
            image: "img".into(),
            ports: ports.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn container(id: &str, service: &str, ip: &str) -> Container {
    Container {
        id: id.into(),
        name: id.into(),
        machine_id: "me".into(),
        service_id: service.into(),
        ip: ip.into(),
        state: ContainerState::Running,
        healthy: true,
        ..Default::default()
    }
}

struct Proxy {
    http: SocketAddr,
    https: SocketAddr,
    shared: Arc<Shared>,
    _listeners: Listeners,
}

/// Each test its own upstream port (tests run in parallel).
fn next_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(18_080);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The proxy under test, with routes to upstreams on 127.0.0.2-7 (`port`); 127.0.0.5 has
/// nothing listening (a container that died).
async fn proxy(limits: Limits, port: u16) -> Proxy {
    let mut view = View {
        me: "me".into(),
        ..Default::default()
    };
    view.machines.insert(
        "me".into(),
        Machine {
            id: "me".into(),
            roles: vec!["ingress".into()],
            ..Default::default()
        },
    );
    for s in [
        service("web", &[&format!("app.example.com:{port}/https")]),
        service("plain", &[&format!("plain.example.com:{port}/http")]),
        service("api", &[&format!("plain.example.com/api:{port}/http")]),
        service("slow", &[&format!("slow.example.com:{port}/http")]),
        service("raw", &[&format!("raw.example.com:{port}/http")]),
    ] {
        view.services.insert(s.id.clone(), s);
    }
    for c in [
        container("w1", "web", "127.0.0.2"),
        container("p1", "plain", "127.0.0.3"),
        container("p2", "plain", "127.0.0.5"),
        container("a1", "api", "127.0.0.4"),
        container("s1", "slow", "127.0.0.6"),
        container("r1", "raw", "127.0.0.7"),
    ] {
        view.containers.insert(c.id.clone(), c);
    }
    let store = Arc::new(Store::default());
    store.update(&BTreeMap::new(), &["app.example.com".to_string()]);
    let shared = Arc::new(Shared {
        table: RwLock::new(Arc::new(Table::build(&view))),
        certs: store.clone(),
        health: Health::new(Duration::from_secs(10)),
        pool: Pool::new(Timeouts {
            connect: Duration::from_secs(1),
            kept: Duration::from_secs(30),
            response: RESPONSE_TIMEOUT,
            upgraded: Duration::from_secs(5),
        }),
        balance: Balance::RoundRobin,
        counters: Counters::default(),
    });
    let l = Listeners::bind(
        shared.clone(),
        certs::server_config(store),
        &["127.0.0.1:0".parse().unwrap()],
        &["127.0.0.1:0".parse().unwrap()],
        limits,
    )
    .await
    .unwrap();
    let addr = |scheme: &str| -> SocketAddr {
        l.addrs
            .iter()
            .find_map(|a| a.strip_prefix(&format!("{scheme}://")))
            .unwrap()
            .parse()
            .unwrap()
    };
    Proxy {
        http: addr("http"),
        https: addr("https"),
        shared,
        _listeners: l,
    }
}

/// How long an upstream may stay silent while it has a request.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1500);

fn limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(5),
        max_header_bytes: 16 * 1024,
        max_connections: 64,
    }
}

/// `curl` with `args`; returns (status line code, headers, body).
async fn curl(args: Vec<String>) -> (u16, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-"])
        .args(&args)
        .output()
        .await
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, head.to_string(), body.to_string())
}

/// `curl` of `url` with `Host: host`.
async fn get(host: &str, url: String) -> (u16, String, String) {
    curl(vec!["-H".into(), format!("Host: {host}"), url]).await
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

async fn upstreams(port: u16) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        upstream(SocketAddr::from(([127, 0, 0, 2], port)), "web").await,
        upstream(SocketAddr::from(([127, 0, 0, 3], port)), "plain").await,
        upstream(SocketAddr::from(([127, 0, 0, 4], port)), "api").await,
    ]
}

/// Raw bytes to the HTTP listener; returns what came back until the proxy closed or 3 s.
fn raw(addr: SocketAddr, chunks: &[(&[u8], Duration)]) -> (String, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    for (bytes, pause) in chunks {
        if s.write_all(bytes).is_err() {
            break;
        }
        std::thread::sleep(*pause);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).to_string(), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_redirects_forwards_and_retries_past_a_dead_upstream() {
    let port = next_port();
    let _u = upstreams(port).await;
    let p = proxy(limits(), port).await;
    let http = p.http.to_string();

    // A published http route: the upstream sees Host kept and the forwarded headers.
    let (code, _, body) = get("plain.example.com", format!("http://{http}/x?y=1")).await;
    assert_eq!(code, 200);
    let seen = json(&body);
    assert_eq!(seen["upstream"], "plain");
    assert_eq!(seen["host"], "plain.example.com");
    assert_eq!(seen["path"], "/x?y=1");
    assert_eq!(seen["xff"], "127.0.0.1");
    assert_eq!(seen["proto"], "http");
    assert_eq!(seen["xhost"], "plain.example.com");

    // Longest prefix on whole segments.
    for (path, who) in [("/api", "api"), ("/api/v1", "api"), ("/apis", "plain")] {
        let (_, _, body) = get("plain.example.com", format!("http://{http}{path}")).await;
        assert_eq!(json(&body)["upstream"], who, "{path}");
    }

    // 127.0.0.5 refuses: every request still gets an answer from 127.0.0.3, and the dead one
    // is marked down after its first refusal.
    for _ in 0..10 {
        let (code, _, body) = curl(vec![
            "-H".into(),
            "Host: plain.example.com".into(),
            "--data-binary".into(),
            "0123456789".into(),
            format!("http://{http}/post"),
        ])
        .await;
        assert_eq!(code, 200);
        assert_eq!(
            json(&body)["body_len"],
            10,
            "the body went along on the retry"
        );
    }
    let dead: SocketAddr = SocketAddr::from(([127, 0, 0, 5], port));
    assert!(p.shared.health.is_down(dead, Instant::now()));
    assert!(
        p.shared
            .counters
            .retries
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );

    // An https route over plain HTTP: 308 to https, path and query kept.
    let (code, head, _) = get("app.example.com", format!("http://{http}/a/b?c=d")).await;
    assert_eq!(code, 308);
    assert!(
        head.to_ascii_lowercase()
            .contains("location: https://app.example.com/a/b?c=d"),
        "{head}"
    );

    // Unknown hosts and bare addresses: 404, never an open proxy.
    for host in ["evil.example.com", "127.0.0.1", "10.210.1.2:80"] {
        let (code, _, _) = get(host, format!("http://{http}/")).await;
        assert_eq!(code, 404, "{host}");
    }
    let (code, _, _) = curl(vec![
        "-x".into(),
        format!("http://{http}"),
        "http://evil.example.com/".into(),
    ])
    .await;
    assert_eq!(code, 404, "an absolute-form request for another host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_and_http11_by_alpn() {
    let port = next_port();
    let _u = upstreams(port).await;
    let p = proxy(limits(), port).await;
    let resolve = format!("app.example.com:{}:127.0.0.1", p.https.port());
    let url = format!("https://app.example.com:{}/h", p.https.port());
    let (code, head, body) = curl(vec![
        "-k".into(),
        "--http2".into(),
        "--resolve".into(),
        resolve.clone(),
        url.clone(),
    ])
    .await;
    assert_eq!(code, 200);
    assert!(head.starts_with("HTTP/2"), "{head}");
    let seen = json(&body);
    assert_eq!(seen["upstream"], "web");
    assert_eq!(seen["proto"], "https");
    assert_eq!(seen["host"], format!("app.example.com:{}", p.https.port()));
    assert_eq!(
        seen["version"], "HTTP/1.1",
        "upstreams are spoken to in HTTP/1.1"
    );
    let (code, head, _) = curl(vec![
        "-k".into(),
        "--http1.1".into(),
        "--resolve".into(),
        resolve,
        url,
    ])
    .await;
    assert_eq!(code, 200);
    assert!(head.starts_with("HTTP/1.1"), "{head}");
    // A name without a certificate: the handshake fails (no default certificate leaks).
    let out = tokio::process::Command::new("curl")
        .args(["-sk", "--max-time", "5", "--resolve"])
        .arg(format!("other.example.com:{}:127.0.0.1", p.https.port()))
        .arg(format!("https://other.example.com:{}/", p.https.port()))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_copied_both_ways() {
    let port = next_port();
    let _u = upstreams(port).await;
    let p = proxy(limits(), port).await;
    let addr = p.http;
    let got = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: plain.example.com\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        // Quiet past the header timeout (1 s): an upgraded connection waits for no head.
        std::thread::sleep(Duration::from_millis(2500));
        s.write_all(b"hello through the proxy").unwrap();
        let mut echoed = vec![0u8; 23];
        s.read_exact(&mut echoed).unwrap();
        (head, String::from_utf8(echoed).unwrap())
    })
    .await
    .unwrap();
    assert!(got.0.starts_with("HTTP/1.1 101"), "{}", got.0);
    assert!(
        got.0.to_ascii_lowercase().contains("upgrade: echo"),
        "{}",
        got.0
    );
    assert_eq!(got.1, "hello through the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_echoes_through_the_proxy() {
    let port = next_port();
    let _u = upstreams(port).await;
    let p = proxy(limits(), port).await;
    let addr = p.http;
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let (head, echoed) = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /chat HTTP/1.1\r\nHost: plain.example.com\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut r, &mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head += &line;
        }
        // A masked text frame, as a browser sends it.
        let (text, mask) = (b"hello, websocket", [0x12u8, 0x34, 0x56, 0x78]);
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&frame).unwrap();
        let mut back = [0u8; 2];
        r.read_exact(&mut back).unwrap();
        let mut payload = vec![0u8; (back[1] & 0x7f) as usize];
        r.read_exact(&mut payload).unwrap();
        (head, (back[0], String::from_utf8(payload).unwrap()))
    })
    .await
    .unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The accept value the RFC's own example gives for this key: the handshake went through
    // untouched.
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert_eq!(echoed, (0x81, "hello, websocket".to_string()));
    assert_eq!(
        p.shared
            .counters
            .upgrades
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_oversized_and_malformed_requests_are_cut_off_cleanly() {
    let port = next_port();
    let _u = upstreams(port).await;
    let p = proxy(limits(), port).await;
    let addr = p.http;
    tokio::task::spawn_blocking(move || {
        // Slowloris: a header line every 400 ms never finishes the head; cut off at 1 s.
        let drip: Vec<(&[u8], Duration)> = std::iter::once((
            &b"GET / HTTP/1.1\r\nHost: plain.example.com\r\n"[..],
            Duration::from_millis(400),
        ))
        .chain(std::iter::repeat_n(
            (&b"X-a: b\r\n"[..], Duration::from_millis(400)),
            10,
        ))
        .collect();
        let (out, took) = raw(addr, &drip);
        assert!(!out.contains("200 OK"), "{out}");
        assert!(took < Duration::from_secs(4), "cut off after {took:?}");

        // The same on a kept-alive connection: one request answered, then the next head
        // dripped; the deadline counts from the end of the first response.
        let kept: Vec<(&[u8], Duration)> = std::iter::once((
            &b"GET / HTTP/1.1\r\nHost: plain.example.com\r\n\r\n"[..],
            Duration::from_millis(400),
        ))
        .chain(drip.iter().copied())
        .collect();
        let (out, took) = raw(addr, &kept);
        assert_eq!(out.matches("200 OK").count(), 1, "{out}");
        assert!(took < Duration::from_secs(4), "cut off after {took:?}");

        // A head past the limit: 431.
        let big = format!(
            "GET / HTTP/1.1\r\nHost: plain.example.com\r\nX-Big: {}\r\n\r\n",
            "a".repeat(40 * 1024)
        );
        let (out, _) = raw(addr, &[(big.as_bytes(), Duration::ZERO)]);
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");

        // Garbage: 400.
        for junk in [
            &b"\x16\x03\x01\x02\x00garbage\r\n\r\n"[..],
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET\r\n\r\n",
        ] {
            let (out, _) = raw(addr, &[(junk, Duration::ZERO)]);
            assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        }
    })
    .await
    .unwrap();
    // Still serving after all that.
    let (code, _, _) = get("plain.example.com", format!("http://{}/", p.http)).await;
    assert_eq!(code, 200);
}

/// An upstream on 127.0.0.6 that reads a request, then for `/silent` says nothing, and for
/// `/trickle` answers with a chunk every 0.5 s for 3 s (twice the response timeout, but never
/// silent that long).
async fn slow_upstream(port: u16) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 6], port)))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if head.starts_with(b"GET /silent ") {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                for _ in 0..6 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = s.write_all(b"2\r\nok\r\n").await;
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_gets_504_and_a_slow_but_steady_one_streams_to_the_end() {
    let port = next_port();
    let _u = slow_upstream(port).await;
    let p = proxy(limits(), port).await;
    let http = p.http.to_string();

    // A client that hangs up while the upstream works has its exchange dropped then, not
    // when the upstream answers or times out: the upstream is no longer counted busy.
    let busy = p
        .shared
        .health
        .get(SocketAddr::from(([127, 0, 0, 6], port)));
    let active = || busy.active.load(std::sync::atomic::Ordering::Relaxed);
    let mut client = tokio::net::TcpStream::connect(p.http).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut client,
        b"GET /silent HTTP/1.1\r\nHost: slow.example.com\r\n\r\n",
    )
    .await
    .unwrap();
    let sent = Instant::now();
    while active() == 0 && sent.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(active(), 1, "the request reached the upstream");
    drop(client);
    let gone = Instant::now();
    while active() > 0 && gone.elapsed() < RESPONSE_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        active(),
        0,
        "still busy {:?} after the client left",
        gone.elapsed()
    );
    assert!(
        gone.elapsed() < RESPONSE_TIMEOUT / 2,
        "{:?}",
        gone.elapsed()
    );

    let start = Instant::now();
    let (code, _, body) = get("slow.example.com", format!("http://{http}/silent")).await;
    let waited = start.elapsed();
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("did not answer in time"), "{body}");
    assert!(
        waited >= RESPONSE_TIMEOUT && waited < RESPONSE_TIMEOUT * 3,
        "answered after {waited:?}"
    );

    // Not a cap on the whole response: 3 s of chunks, never 1.5 s apart, arrive whole.
    let (code, _, body) = get("slow.example.com", format!("http://{http}/trickle")).await;
    assert_eq!(code, 200);
    assert_eq!(body, "ok".repeat(6));
}

/// An upstream on 127.0.0.7 that answers each request on a connection with bytes written by
/// hand, by path: every way RFC 9112 lets a response end, and some it does not. Each answer
/// says which connection (`x-conn`) and which request on it carried it.
async fn raw_upstream(port: u16) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 7], port)))
        .await
        .unwrap();
    tokio::spawn(async move {
        for conn in 0.. {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for i in 0.. {
                    let head = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            break String::from_utf8(head).unwrap();
                        }
                        let mut more = [0u8; 4096];
                        match s.read(&mut more).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&more[..n]),
                        }
                    };
                    let target = head.split(' ').nth(1).unwrap_or("").to_string();
                    let id = format!("x-conn: {conn}\r\nx-request: {i}\r\n");
                    let answer: Vec<u8> = match target.as_str() {
                        "/chunked" => {
                            // In pieces, with an extension, a trailer and a chunk split
                            // across writes.
                            let first = format!(
                                "HTTP/1.1 200 OK\r\n{id}Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel"
                            );
                            let parts: [&[u8]; 5] = [
                                first.as_bytes(),
                                b"lo\r\n",
                                b"6\r\n world\r\n",
                                b"0\r\nX-Trailer: t\r\n",
                                b"\r\n",
                            ];
                            for p in parts {
                                if s.write_all(p).await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            continue;
                        }
                        "/head" => format!("HTTP/1.1 200 OK\r\n{id}Content-Length: 5\r\n\r\n").into(),
                        "/no-content" => format!("HTTP/1.1 204 No Content\r\n{id}\r\n").into(),
                        "/not-modified" => {
                            format!("HTTP/1.1 304 Not Modified\r\n{id}Content-Length: 10\r\n\r\n").into()
                        }
                        "/until-close" => {
                            let _ = s
                                .write_all(format!("HTTP/1.1 200 OK\r\n{id}Connection: close\r\n\r\nuntil ").as_bytes())
                                .await;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            let _ = s.write_all(b"closed").await;
                            return;
                        }
                        "/http10" => format!("HTTP/1.0 200 OK\r\n{id}Content-Length: 4\r\n\r\n1.0!").into(),
                        "/interim" => format!(
                            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n{id}Content-Length: 5\r\n\r\nfinal"
                        )
                        .into(),
                        "/big" => {
                            let body = "0123456789".repeat(20_000);
                            let head = format!("HTTP/1.1 200 OK\r\n{id}Content-Length: {}\r\n\r\n", body.len());
                            let _ = s.write_all(head.as_bytes()).await;
                            for piece in body.as_bytes().chunks(30_000) {
                                let _ = s.write_all(piece).await;
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                            continue;
                        }
                        "/both" => format!(
                            "HTTP/1.1 200 OK\r\n{id}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                        )
                        .into(),
                        "/bad-chunk" => format!(
                            "HTTP/1.1 200 OK\r\n{id}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
                        )
                        .into(),
                        "/extra" => format!("HTTP/1.1 200 OK\r\n{id}Content-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n").into(),
                        // The second request on a connection is read and dropped unanswered
                        // (an upstream closing a kept-alive connection as a request arrives).
                        "/drop" if i > 0 => return,
                        _ => format!("HTTP/1.1 200 OK\r\n{id}Content-Length: 2\r\n\r\nok").into(),
                    };
                    if s.write_all(&answer).await.is_err() {
                        return;
                    }
                    if target == "/http10" {
                        return;
                    }
                }
            });
        }
    })
}

/// A header's value in a `curl -D -` head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_response_can_end_reaches_the_client_and_keeps_the_connection_in_step() {
    let port = next_port();
    let _u = raw_upstream(port).await;
    let p = proxy(limits(), port).await;
    let http = p.http.to_string();
    let url = |path: &str| format!("http://{http}{path}");
    let get = |path: &'static str| get("raw.example.com", url(path));

    let (code, first, body) = get("/a").await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    let conn = header(&first, "x-conn").unwrap().to_string();

    // Chunked in pieces, with an extension and a trailer: decoded whole.
    let (code, head, body) = get("/chunked").await;
    assert_eq!((code, body.as_str()), (200, "hello world"));
    assert_eq!(header(&head, "x-conn"), Some(conn.as_str()), "kept alive");

    // HEAD: a length but no body. A response without a body that announces one (to HEAD,
    // a 304 with a length) ends its connection's use: an upstream that sent the body anyway
    // would have it read as the next client's response. A 204 without one keeps it.
    let (code, head, _) = curl(vec![
        "-I".into(),
        "-H".into(),
        "Host: raw.example.com".into(),
        url("/head"),
    ])
    .await;
    assert_eq!(code, 200);
    assert_eq!(header(&head, "content-length"), Some("5"));
    assert_eq!(header(&head, "x-conn"), Some(conn.as_str()));
    let (code, head, body) = get("/no-content").await;
    assert_eq!((code, body.as_str()), (204, ""));
    let after_head = header(&head, "x-conn").unwrap().to_string();
    assert_ne!(after_head, conn, "not reused after a HEAD");
    assert_eq!(header(&head, "content-length"), None, "never on a 204");
    let (code, head, body) = get("/not-modified").await;
    assert_eq!((code, body.as_str()), (304, ""));
    assert_eq!(header(&head, "content-length"), None, "nor on a 304");
    assert_eq!(
        header(&head, "x-conn"),
        Some(after_head.as_str()),
        "kept after a 204"
    );
    let (code, head, body) = get("/b").await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    assert_ne!(
        header(&head, "x-conn"),
        Some(after_head.as_str()),
        "not after a 304 with a length"
    );
    assert_eq!(header(&head, "x-request"), Some("0"));

    // Interim responses are dropped; the final one is forwarded.
    let (code, _, body) = get("/interim").await;
    assert_eq!((code, body.as_str()), (200, "final"));

    // A body that ends when the upstream closes; an HTTP/1.0 answer, which closes too.
    let (code, _, body) = get("/until-close").await;
    assert_eq!((code, body.as_str()), (200, "until closed"));
    let (code, _, body) = get("/http10").await;
    assert_eq!((code, body.as_str()), (200, "1.0!"));

    // A large body, streamed as it arrives.
    let (code, head, body) = get("/big").await;
    assert_eq!((code, body.len()), (200, 200_000));
    assert_eq!(body, "0123456789".repeat(20_000));
    let big = header(&head, "x-conn").unwrap().to_string();

    // Framing that could be read two ways (on the connection `/big` left in the pool): 502,
    // and that connection is not used again.
    let (code, _, body) = get("/both").await;
    assert_eq!(code, 502, "{body}");
    let (code, head, _) = get("/c").await;
    assert_eq!(code, 200);
    let after_both = header(&head, "x-conn").unwrap().to_string();
    assert_ne!(after_both, big);

    // Bytes past the end of a response: it is forwarded, the connection is not reused.
    let (code, _, body) = get("/extra").await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (_, head, body) = get("/d").await;
    assert_eq!(body, "ok");
    assert_ne!(header(&head, "x-conn"), Some(after_both.as_str()));

    // A malformed chunk after the head was sent: the client's response is cut short (curl
    // fails) rather than completed with made-up bytes.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "-H", "Host: raw.example.com"])
        .arg(url("/bad-chunk"))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "{out:?}");

    // A kept-alive connection dropped as a GET arrives: sent again on a new one.
    let retries = p
        .shared
        .counters
        .retries
        .load(std::sync::atomic::Ordering::Relaxed);
    let (_, head, _) = get("/e").await;
    let before = header(&head, "x-conn").unwrap().to_string();
    let (code, head, body) = get("/drop").await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    assert_ne!(header(&head, "x-conn"), Some(before.as_str()));
    assert_eq!(
        p.shared
            .counters
            .retries
            .load(std::sync::atomic::Ordering::Relaxed),
        retries + 1
    );
}

/// The answers in a raw exchange: (status, body) of each response, in order.
fn answers(raw: &str) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some((head, after)) = rest.split_once("\r\n\r\n") {
        let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let len: usize = header(head, "content-length")
            .map(|v| v.parse().unwrap())
            .expect("these answers have a length");
        out.push((code, after[..len].to_string()));
        rest = &after[len..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_and_the_rest_are_answered_in_order_on_one_connection() {
    let port = next_port();
    let _u = upstreams(port).await;
    let p = proxy(limits(), port).await;
    let addr = p.http;
    tokio::task::spawn_blocking(move || {
        // Pipelined in one write: plain GETs (read by ingressd's own front), then a 404 (from
        // which hyper's server reads the rest, starting with the bytes already read), a plain
        // GET, a POST with a body, and a last GET asking to close.
        let burst = b"GET /api/one HTTP/1.1\r\nHost: plain.example.com\r\n\r\n\
            GET /api/two?x=1 HTTP/1.1\r\nHost: plain.example.com\r\nX-Forwarded-For: 192.0.2.9\r\n\r\n\
            GET / HTTP/1.1\r\nHost: nowhere.example.com\r\n\r\n\
            GET /api/three HTTP/1.1\r\nHost: plain.example.com\r\n\r\n\
            POST /api/four HTTP/1.1\r\nHost: plain.example.com\r\nContent-Length: 5\r\n\r\nhello\
            GET /api/five HTTP/1.1\r\nHost: plain.example.com\r\nConnection: close\r\n\r\n";
        let (out, took) = raw(addr, &[(&burst[..], Duration::ZERO)]);
        assert!(took < Duration::from_secs(3), "closed after the last: {took:?}");
        let got = answers(&out);
        let codes: Vec<u16> = got.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, [200, 200, 404, 200, 200, 200], "{out}");
        let seen: Vec<serde_json::Value> = got
            .iter()
            .filter(|(c, _)| *c == 200)
            .map(|(_, b)| json(b))
            .collect();
        let paths: Vec<&str> = seen.iter().map(|j| j["path"].as_str().unwrap()).collect();
        assert_eq!(
            paths,
            ["/api/one", "/api/two?x=1", "/api/three", "/api/four", "/api/five"]
        );
        for j in &seen {
            assert_eq!(j["upstream"], "api");
            assert_eq!(j["host"], "plain.example.com");
            assert_eq!(j["proto"], "http");
            assert_eq!(j["xhost"], "plain.example.com");
            assert_eq!(j["version"], "HTTP/1.1");
        }
        assert_eq!(seen[0]["xff"], "127.0.0.1");
        assert_eq!(seen[1]["xff"], "192.0.2.9, 127.0.0.1");
        assert_eq!(seen[3]["body_len"], 5);
        assert!(out.contains("connection: close"), "{out}");

        // A plain request asking to close: answered, and nothing after it.
        let (out, _) = raw(
            addr,
            &[(
                &b"GET /api/a HTTP/1.1\r\nHost: plain.example.com\r\nConnection: close\r\n\r\n\
                   GET /api/b HTTP/1.1\r\nHost: plain.example.com\r\n\r\n"[..],
                Duration::ZERO,
            )],
        );
        assert_eq!(answers(&out).len(), 1, "{out}");

        // A head dripped a byte at a time is still read (its end found in the new bytes).
        let head = b"GET /api/drip HTTP/1.1\r\nHost: plain.example.com\r\nConnection: close\r\n\r\n";
        let drip: Vec<(&[u8], Duration)> = head
            .chunks(1)
            .map(|b| (b, Duration::from_millis(2)))
            .collect();
        let (out, _) = raw(addr, &drip);
        let got = answers(&out);
        assert_eq!(got.len(), 1, "{out}");
        assert_eq!(json(&got[0].1)["path"], "/api/drip");
    })
    .await
    .unwrap();
}

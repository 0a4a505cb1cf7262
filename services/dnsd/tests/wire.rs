//! dnsd over the wire: its real server on loopback, asked with `dig` and with hand-made
//! packets, forwarding to a real `dnsmasq`.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dnsd::daemon::served;
use dnsd::forward::Forwarder;
use dnsd::names::View;
use dnsd::server::{self, Counters, Handler, Running};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::sync::watch;
use uncloud_common::liveness::Liveness;
use uncloud_common::model::{Container, ContainerState, Machine, Service};

fn view() -> View {
    let mut v = View {
        me: "m1".into(),
        cidr: Some("10.210.0.0/16".parse().unwrap()),
        ..Default::default()
    };
    for (id, name, subnet) in [("m1", "one", 1), ("m2", "two", 2)] {
        v.add_machine(Machine {
            id: id.into(),
            name: name.into(),
            subnet,
            ..Default::default()
        });
    }
    v.liveness.insert("m2".into(), Liveness::Alive);
    for (id, name) in [("p/web", "web"), ("p/big", "big")] {
        v.add_service(Service {
            id: id.into(),
            name: name.into(),
            project: "p".into(),
            ..Default::default()
        });
    }
    let mut add = |id: String, machine: &str, service: &str, ip: String| {
        v.add_container(Container {
            id: id.clone(),
            machine_id: machine.into(),
            name: id,
            service_id: service.into(),
            ip,
            state: ContainerState::Running,
            healthy: true,
            ..Default::default()
        });
    };
    add("web-1".into(), "m1", "p/web", "10.210.1.2".into());
    add("web-2".into(), "m2", "p/web", "10.210.2.2".into());
    // Enough addresses that the answer does not fit 512 bytes.
    for k in 0..60 {
        add(
            format!("big-{k}"),
            "m1",
            "p/big",
            format!("10.210.1.{}", 10 + k),
        );
    }
    v
}

struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real dnsmasq answering `fwd.test` (192.0.2.7) and nothing else, as the upstream.
fn dnsmasq() -> Dnsmasq {
    let port = free_port();
    let child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            &format!("--port={port}"),
            "--address=/fwd.test/192.0.2.7",
            // Its own answers have TTL 0 by default, which nobody caches.
            "--local-ttl=60",
            "--ptr-record=7.2.0.192.in-addr.arpa,fwd.test",
            "--user=root",
            "--pid-file=",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq is installed (scripts/test installs dnsmasq-base)");
    // Owned at once: a panic below still kills it.
    let dnsmasq = Dnsmasq {
        child,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = dig_at(dnsmasq.addr, &["fwd.test", "+short", "+tries=1", "+time=1"]);
        if out.contains("192.0.2.7") {
            return dnsmasq;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("dnsmasq did not answer on {}", dnsmasq.addr);
}

fn dig_at(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(args)
        .output()
        .expect("dig is installed (scripts/test installs bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Dnsd {
    running: Option<Running>,
    addr: SocketAddr,
    counters: Arc<Counters>,
    forwarder: Arc<Forwarder>,
    _names: watch::Sender<Arc<server::Served>>,
}

async fn dnsd(upstreams: Vec<SocketAddr>) -> Dnsd {
    let (tx, rx) = watch::channel(Arc::new(served(&view(), 5)));
    let counters = Arc::new(Counters::default());
    let forwarder = Arc::new(Forwarder::new(
        upstreams,
        100,
        16,
        Duration::from_millis(500),
    ));
    let handler = || Handler::new(rx.clone(), forwarder.clone(), counters.clone());
    let running = server::serve(handler, &["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    let addr = running.addrs[0];
    Dnsd {
        running: Some(running),
        addr,
        counters,
        forwarder,
        _names: tx,
    }
}

impl Dnsd {
    /// `dig` in a blocking thread (the server runs on this runtime).
    async fn dig(&self, args: &[&str]) -> String {
        let addr = self.addr;
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            dig_at(addr, &args)
        })
        .await
        .unwrap()
    }

    /// Sends raw bytes over UDP; the reply, if one came within a second.
    async fn raw(&self, bytes: Vec<u8>) -> Option<Message> {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(&bytes, self.addr).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let n = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(Message::from_vec(&buf[..n]).expect("dnsd's reply parses"))
    }

    async fn stop(mut self) {
        self.running.take().unwrap().stop().await;
    }
}

fn query(name: &str, qtype: RecordType, op: OpCode) -> Message {
    let mut m = Message::new(4242, MessageType::Query, op);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

fn answers(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_name_answers_with_the_rfc_behaviours() {
    let d = dnsd(Vec::new()).await;

    let out = d.dig(&["one.machine.internal", "A"]).await;
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains("flags: qr aa rd ra"), "authoritative: {out}");
    assert!(
        out.contains("one.machine.internal.\t5\tIN\tA\t10.210.1.1"),
        "{out}"
    );

    let out = d.dig(&["+short", "web-2.two.machine.internal"]).await;
    assert_eq!(out.trim(), "10.210.2.2");
    let out = d.dig(&["+short", "web.p.internal"]).await;
    let mut got = answers(&out);
    got.sort();
    assert_eq!(got, ["10.210.1.2", "10.210.2.2"]);

    // Without EDNS, the fast path answers: the same flags, records and case.
    let before = d.counters.answered_locally.load(Ordering::Relaxed);
    let out = d.dig(&["+noedns", "OnE.machine.internal", "A"]).await;
    assert!(out.contains("flags: qr aa rd ra"), "{out}");
    assert!(
        out.contains("OnE.machine.internal.\t5\tIN\tA\t10.210.1.1"),
        "{out}"
    );
    let out = d.dig(&["+noedns", "+short", "web.p.internal"]).await;
    let mut got = answers(&out);
    got.sort();
    assert_eq!(got, ["10.210.1.2", "10.210.2.2"]);
    assert_eq!(
        d.counters.answered_locally.load(Ordering::Relaxed),
        before + 2
    );

    // The question comes back in the case it was asked in.
    let out = d.dig(&["WeB.P.InTeRnAl"]).await;
    assert!(out.contains(";WeB.P.InTeRnAl.\t\t\tIN\tA"), "{out}");

    // A missing name: NXDOMAIN for every type, with the zone's SOA; an existing name of
    // another type: NODATA with the SOA.
    for t in ["A", "AAAA", "TXT"] {
        let out = d.dig(&["nope.internal", t]).await;
        assert!(out.contains("status: NXDOMAIN"), "{t}: {out}");
        assert!(
            out.contains("internal.\t\t5\tIN\tSOA\tns.internal. hostmaster.internal."),
            "{t}: {out}"
        );
    }
    let out = d.dig(&["web.p.internal", "AAAA"]).await;
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "{out}"
    );
    assert!(out.contains("AUTHORITY: 1"), "{out}");

    // ANY: the A records only (RFC 8482).
    let out = d.dig(&["web.p.internal", "ANY"]).await;
    assert!(out.contains("ANSWER: 2"), "{out}");

    // PTR for a mesh address.
    let out = d.dig(&["+short", "-x", "10.210.2.1"]).await;
    assert_eq!(out.trim(), "two.machine.internal.");

    // Without EDNS a UDP answer stops at 512 bytes with TC set, and dig's TCP retry gets all.
    let out = d.dig(&["+noedns", "+ignore", "big.p.internal"]).await;
    assert!(out.contains(" tc"), "truncated: {out}");
    let out = d.dig(&["+noedns", "+short", "big.p.internal"]).await;
    assert_eq!(answers(&out).len(), 60, "over TCP: {out}");
    // With EDNS and a big enough buffer, all over UDP.
    let out = d.dig(&["+bufsize=1232", "+ignore", "big.p.internal"]).await;
    assert!(!out.contains(" tc") && out.contains("ANSWER: 60"), "{out}");
    assert!(out.contains("udp: 1232"), "{out}");
    let out = d
        .dig(&["+edns=1", "+noednsneg", "one.machine.internal"])
        .await;
    assert!(out.contains("status: BADVERS"), "{out}");

    // Zone transfers are refused, UPDATE is not implemented.
    let r = d
        .raw(
            query("internal.", RecordType::AXFR, OpCode::Query)
                .to_vec()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    let r = d
        .raw(
            query("internal.", RecordType::SOA, OpCode::Update)
                .to_vec()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NotImp);

    // Not exactly one question: FORMERR.
    let mut two = query("one.machine.internal.", RecordType::A, OpCode::Query);
    two.add_query(Query::query(
        Name::from_ascii("two.machine.internal.").unwrap(),
        RecordType::A,
    ));
    let r = d.raw(two.to_vec().unwrap()).await.unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    let none = Message::new(7, MessageType::Query, OpCode::Query);
    let r = d.raw(none.to_vec().unwrap()).await.unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);

    // No upstream: SERVFAIL at once, not a hang.
    let started = Instant::now();
    let out = d.dig(&["+tries=1", "+time=5", "example.com"]).await;
    assert!(out.contains("status: SERVFAIL"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(3));

    assert!(d.counters.queries.load(Ordering::Relaxed) >= 20);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_names_go_to_the_upstream_and_are_cached() {
    let upstream = tokio::task::spawn_blocking(dnsmasq).await.unwrap();
    // A silent first upstream: its share of the deadline passes, then dnsmasq answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let d = dnsd(vec![silent.local_addr().unwrap(), upstream.addr]).await;

    let out = d.dig(&["fwd.test"]).await;
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains("192.0.2.7"), "{out}");
    assert!(
        !out.contains(" aa"),
        "not authoritative for upstream names: {out}"
    );
    let out = d.dig(&["FWD.test", "+short"]).await;
    assert_eq!(out.trim(), "192.0.2.7");
    assert_eq!(d.forwarder.counters.forwarded.load(Ordering::Relaxed), 1);
    assert_eq!(d.forwarder.counters.cache_hits.load(Ordering::Relaxed), 1);

    // A plain query (no EDNS, as dnsperf and most stub resolvers send) is answered from the
    // cache's bytes by the UDP fast path: the same records, its own id and case.
    let mut plain = query("Fwd.TEST.", RecordType::A, OpCode::Query);
    plain.metadata.recursion_desired = true;
    let from_bytes = d.counters.from_bytes.load(Ordering::Relaxed);
    let reply = d.raw(plain.to_vec().unwrap()).await.expect("an answer");
    assert_eq!(d.forwarder.counters.cache_hits.load(Ordering::Relaxed), 2);
    assert_eq!(
        d.counters.from_bytes.load(Ordering::Relaxed),
        from_bytes + 1,
        "the fast path answered"
    );
    assert_eq!(d.forwarder.counters.forwarded.load(Ordering::Relaxed), 1);
    assert_eq!(reply.metadata.id, plain.metadata.id);
    assert!(reply.metadata.recursion_desired && reply.metadata.recursion_available);
    assert!(!reply.metadata.authoritative);
    assert_eq!(reply.queries[0].name().to_ascii(), "Fwd.TEST.");
    assert!(reply.edns.is_none(), "no OPT to a query without one");
    let [answer] = reply.answers.as_slice() else {
        panic!("one A record: {reply:?}")
    };
    assert_eq!(answer.data, RData::A(A::new(192, 0, 2, 7)));
    assert!((55..=60).contains(&answer.ttl), "{}", answer.ttl);

    // dnsmasq with no upstream of its own refuses other names; that comes back as is.
    let out = d.dig(&["other.example"]).await;
    assert!(out.contains("status: REFUSED"), "{out}");
    // PTR outside the mesh is not ours either.
    // dnsmasq has a PTR record for it.
    let out = d.dig(&["+short", "-x", "192.0.2.7"]).await;
    assert_eq!(out.trim(), "fwd.test.", "{out}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_packets_get_no_answer_or_an_error_and_the_server_carries_on() {
    let d = dnsd(Vec::new()).await;
    let good = query("one.machine.internal.", RecordType::A, OpCode::Query)
        .to_vec()
        .unwrap();
    let mut hostile: Vec<Vec<u8>> = vec![Vec::new(), vec![0; 5], good[..good.len() - 3].to_vec()];
    // A name that points at itself (a compression loop).
    let mut looped = good[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    hostile.push(looped);
    // Counts far beyond the packet.
    let mut counts = good.clone();
    counts[4..12].copy_from_slice(&[0xff; 8]);
    hostile.push(counts);
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..500 {
        let len = (rng_state % 300) as usize;
        let mut p = Vec::with_capacity(len);
        for _ in 0..len {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            p.push(rng_state as u8);
        }
        hostile.push(p);
    }
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for p in &hostile {
        socket.send_to(p, d.addr).await.unwrap();
    }
    // Still answering. (The burst may overflow the socket's buffer, so the first query after
    // it can be dropped by the kernel: ask as a stub resolver does, a few times.)
    let mut reply = None;
    for _ in 0..3 {
        reply = d.raw(good.clone()).await;
        if reply.is_some() {
            break;
        }
    }
    let r = reply.expect("dnsd still answers");
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    d.stop().await;
}

/// Zone settings are part of what is served: a new TTL shows in the next answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_view_shows_in_the_next_answer() {
    let d = dnsd(Vec::new()).await;
    let mut v = view();
    v.containers.get_mut("web-2").unwrap().healthy = false;
    d._names.send_replace(Arc::new(served(&v, 7)));
    let out = d.dig(&["+noall", "+answer", "web.p.internal"]).await;
    assert_eq!(answers(&out), ["web.p.internal.\t\t7\tIN\tA\t10.210.1.2"]);
    // The fast path too.
    let out = d
        .dig(&["+noedns", "+noall", "+answer", "web.p.internal"])
        .await;
    assert_eq!(answers(&out), ["web.p.internal.\t\t7\tIN\tA\t10.210.1.2"]);
    d.stop().await;
}

//! Another machine acting here over tarpc, and containers reaching the mesh and the internet,
//! with real network namespaces around a real dockerd:
//!
//! ```text
//!  remote machines 10.210.2.1 and 10.210.3.1, and 10.210.2.5 posing as a container
//!      │ veth "ucmesh" (stands in for meshd's TUN)
//!  dockerd's namespace: machine 1, bridge uncloud0 10.210.1.0/24, the shim's RPC on 10.210.1.1
//!      │ veth "uplink" 192.0.2.1
//!  internet host 192.0.2.2
//! ```

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dockerd_shim::firewall;
use dockerd_shim::remote::{self, Remote};
use support::{cmd, gateway, IMAGE};
use tarpc::context;
use uncloud_common::address::MeshCidr;
use uncloud_common::docker::{ErrorKind, ExecRequest, LogsRequest, StreamEnd, StreamKind};
use uncloud_common::model::{Service, ServiceSpec};
use uncloud_common::rpc::{container_ops_client, ContainerOpsClient, CONTAINER_OPS_PORT};
use uncloud_testkit::{init_tracing, Netns};

const NETWORK: &str = "testnet";

fn service(name: &str, command: &[&str]) -> Service {
    Service {
        id: name.into(),
        name: name.into(),
        spec: ServiceSpec {
            image: IMAGE.into(),
            command: cmd(command),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The remote machine's namespace, wired to dockerd's as the mesh would be.
fn remote_machine(docker_ns: &Netns) -> Netns {
    let r = Netns::new("remote");
    docker_ns.veth("ucmesh", &r, "eth0");
    docker_ns.addr("ucmesh", "10.210.1.1/32");
    docker_ns.ip(&["route", "add", "10.210.2.0/24", "dev", "ucmesh"]);
    docker_ns.ip(&["route", "add", "10.210.3.0/24", "dev", "ucmesh"]);
    r.addr("eth0", "10.210.2.1/32");
    r.addr("eth0", "10.210.2.5/32");
    r.addr("eth0", "10.210.3.1/32"); // a third machine
    r.ip(&[
        "route",
        "add",
        "10.210.1.0/24",
        "via",
        "10.210.1.1",
        "dev",
        "eth0",
        "onlink",
    ]);
    r
}

/// The internet beyond machine `d`'s uplink: 192.0.2.2, with a route to the machine's
/// containers through it (as a neighbour on a provider's LAN could have).
fn internet_of(d: &Netns) -> Netns {
    let internet = Netns::new("inet");
    d.veth("uplink", &internet, "eth0");
    d.addr("uplink", "192.0.2.1/24");
    internet.addr("eth0", "192.0.2.2/24");
    internet.ip(&["route", "add", "10.210.0.0/16", "via", "192.0.2.1"]);
    internet
}

/// The shim's firewall rules for machine 1 with the veth standing in for the mesh.
fn machine_rules() -> firewall::Rules {
    firewall::Rules {
        bridge: "uncloud0".into(),
        mesh_interface: "ucmesh".into(),
        subnet: "10.210.1.0/24".into(),
        mesh: MeshCidr::default(),
    }
}

/// A TCP connection from `ns`, from source address `from`, to `to`.
async fn connect_from(
    ns: &Netns,
    from: &str,
    to: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = ns.enter(tokio::net::TcpSocket::new_v4)?;
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// A listener bound inside `ns`.
fn listen_in(ns: &Netns, addr: &str) -> tokio::net::TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    let std = ns.enter(|| std::net::TcpListener::bind(addr)).unwrap();
    std.set_nonblocking(true).unwrap();
    tokio::net::TcpListener::from_std(std).unwrap()
}

/// Reads a stream to its end: (stdout, stderr, end).
async fn drain(c: &ContainerOpsClient, stream: u64) -> (String, String, StreamEnd) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        let o = c
            .stream_read(context::current(), stream, 1000)
            .await
            .unwrap()
            .unwrap();
        for (kind, data) in o.chunks {
            match kind {
                StreamKind::Stdout => out.extend(data),
                StreamKind::Stderr => err.extend(data),
            }
        }
        if let Some(end) = o.end {
            return (
                String::from_utf8_lossy(&out).into_owned(),
                String::from_utf8_lossy(&err).into_owned(),
                end,
            );
        }
    }
    panic!("stream {stream} never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_machine_acts_here_over_the_mesh() {
    init_tracing();
    let (engine, docker) = support::engine(1).await;
    let r = remote_machine(&engine.ns);
    let listener = listen_in(&engine.ns, &format!("10.210.1.1:{CONTAINER_OPS_PORT}"));
    let shim = Remote::new(
        support::local(docker, 1),
        NETWORK.into(),
        MeshCidr::default(),
        gateway(1),
    );
    let server = tokio::spawn(remote::serve(listener, Arc::new(shim)));
    let addr: SocketAddr = format!("10.210.1.1:{CONTAINER_OPS_PORT}").parse().unwrap();

    // A container's address is turned away before any request; so is another network.
    let posing = connect_from(&r, "10.210.2.5", addr).await.unwrap();
    let e = container_ops_client(posing, NETWORK, "m2")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
    let stranger = connect_from(&r, "10.210.2.1", addr).await.unwrap();
    let e = container_ops_client(stranger, "othernet", "m2")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Refused, "{e}");
    assert!(e.message.contains("othernet"), "{e}");

    let c = container_ops_client(
        connect_from(&r, "10.210.2.1", addr).await.unwrap(),
        NETWORK,
        "m2",
    )
    .await
    .unwrap();
    let ctx = context::current;

    // Run, inspect; a bad spec and an unknown image are refused with their kind.
    let id = c
        .run_service(
            ctx(),
            service("web", &["sh", "-c", "echo out; echo err >&2; sleep 300"]),
            "web-1".into(),
        )
        .await
        .unwrap()
        .unwrap();
    let inspected = c.inspect(ctx(), "web-1".into()).await.unwrap().unwrap();
    assert_eq!(inspected.id, id);
    assert_eq!(inspected.service_id, "web");
    assert!(inspected.ip.starts_with("10.210.1."), "{}", inspected.ip);
    let mut bad = service("bad", &["true"]);
    bad.spec.image = String::new();
    let e = c
        .run_service(ctx(), bad, "bad-1".into())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    let mut unknown = service("unknown", &["true"]);
    unknown.spec.image = "uncloud-test/absent:1".into();
    let e = c
        .run_service(ctx(), unknown, "unknown-1".into())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NoImage, "{e}");
    let e = c
        .inspect(ctx(), "unknown-1".into())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "nothing half-made: {e}");

    // Logs as a stream, both streams apart.
    let mut logs = (String::new(), String::new());
    for _ in 0..50 {
        let s = c
            .logs(ctx(), "web-1".into(), LogsRequest::default())
            .await
            .unwrap()
            .unwrap();
        let (out, err, end) = drain(&c, s).await;
        assert_eq!(end.error, None);
        logs = (out, err);
        if !logs.1.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(logs, ("out\n".to_string(), "err\n".to_string()));

    // A stream belongs to the machine (address) that opened it.
    let following = c
        .logs(
            ctx(),
            "web-1".into(),
            LogsRequest {
                follow: true,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    let other = container_ops_client(
        connect_from(&r, "10.210.3.1", addr).await.unwrap(),
        NETWORK,
        "m3",
    )
    .await
    .unwrap();
    let e = other
        .stream_read(ctx(), following, 0)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let e = other.inspect(ctx(), "web-1".into()).await.unwrap();
    assert!(e.is_ok(), "but it may act here itself");
    c.stream_close(ctx(), following).await.unwrap().unwrap();

    // Exec with input written over the RPC; the end carries the exit code.
    let s = c
        .exec(
            ctx(),
            "web-1".into(),
            ExecRequest {
                cmd: cmd(&["sh", "-c", "cat; echo done >&2; exit 3"]),
                stdin: true,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    c.stream_write(ctx(), s, b"typed\n".to_vec(), true)
        .await
        .unwrap()
        .unwrap();
    let (out, err, end) = drain(&c, s).await;
    assert_eq!((out.as_str(), err.as_str()), ("typed\n", "done\n"));
    assert_eq!(end.exit_code, Some(3));
    let e = c.stream_read(ctx(), s, 0).await.unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "an ended stream is gone");

    // A pull that cannot reach its registry ends its stream with the reason.
    let s = c
        .pull_image(ctx(), "127.0.0.1:1/nothing:1".into())
        .await
        .unwrap()
        .unwrap();
    let (_, _, end) = drain(&c, s).await;
    let e = end.error.expect("the pull fails");
    assert_eq!(e.kind, ErrorKind::Engine, "{e}");

    // An image sent as a tarball in chunks, no registry involved.
    engine.docker_ok(&["tag", IMAGE, "uncloud-test/shipped:1"]);
    let tar = engine.dir().join("shipped.tar");
    engine.docker_ok(&[
        "save",
        "-o",
        tar.to_str().unwrap(),
        "uncloud-test/shipped:1",
    ]);
    engine.docker_ok(&["rmi", "uncloud-test/shipped:1"]);
    let bytes = std::fs::read(&tar).unwrap();
    let upload = c.load_image_begin(ctx()).await.unwrap().unwrap();
    let mut chunks = 0;
    for chunk in bytes.chunks(256 * 1024) {
        c.load_image_chunk(ctx(), upload, chunk.to_vec())
            .await
            .unwrap()
            .unwrap();
        chunks += 1;
    }
    assert!(chunks > 1);
    let loaded = c.load_image_end(ctx(), upload).await.unwrap().unwrap();
    assert_eq!(loaded, ["uncloud-test/shipped:1"]);
    let images = c.list_images(ctx()).await.unwrap().unwrap();
    assert!(images
        .iter()
        .any(|i| i.tags.contains(&"uncloud-test/shipped:1".to_string())));

    // A truncated tarball loads nothing and says why.
    let upload = c.load_image_begin(ctx()).await.unwrap().unwrap();
    let _ = c
        .load_image_chunk(ctx(), upload, bytes[..bytes.len() / 2].to_vec())
        .await
        .unwrap();
    let e = c.load_image_end(ctx(), upload).await.unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");

    // Volumes, stats, and the lifecycle to the end.
    let v = c
        .create_volume(ctx(), "data".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.name, "data");
    assert!(c
        .list_volumes(ctx())
        .await
        .unwrap()
        .unwrap()
        .iter()
        .any(|v| v.name == "data"));
    c.remove_volume(ctx(), "data".into())
        .await
        .unwrap()
        .unwrap();
    let stats = c.stats(ctx(), "web-1".into()).await.unwrap().unwrap();
    assert!(stats.pids >= 1 && stats.memory_bytes > 0, "{stats:?}");
    c.stop(ctx(), "web-1".into(), 1).await.unwrap().unwrap();
    c.remove(ctx(), "web-1".into()).await.unwrap().unwrap();
    let e = c.inspect(ctx(), "web-1".into()).await.unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_reach_the_mesh_directly_and_the_internet_masqueraded_but_not_the_metadata_service(
) {
    init_tracing();
    let (engine, docker) = support::engine(1).await;
    let d = &engine.ns;
    let r = remote_machine(d);
    let internet = internet_of(d);
    let local = support::local(docker, 1);
    local
        .run_service(&service("box", &["sleep", "300"]), "box-1")
        .await
        .unwrap();
    let ip = local.inspect("box-1").await.unwrap().ip;

    // Docker's FORWARD policy keeps the mesh out of the bridge until the shim's rule is in.
    assert!(
        !r.ping(&ip, 1),
        "the mesh reached a container without the rule"
    );
    let rules = machine_rules();
    d.enter(|| firewall::apply(&rules)).unwrap();
    d.enter(|| firewall::apply(&rules)).unwrap();
    let user = String::from_utf8(d.exec("iptables", &["-S", "DOCKER-USER"]).stdout).unwrap();
    assert_eq!(
        user.matches("-j ACCEPT").count(),
        1,
        "applied twice, one rule: {user}"
    );
    assert!(r.ping(&ip, 2), "the mesh reaches the container");

    // Out to the mesh with the container's own address; out to the internet as the machine.
    let mesh_server = listen_in(&r, "10.210.2.1:9001");
    let internet_server = listen_in(&internet, "192.0.2.2:9002");
    // The peer address of the one connection a container makes to `server` by running `nc`.
    // Accepting (and so closing) concurrently lets nc finish.
    let peer_of = |server: tokio::net::TcpListener, to: &str| {
        let accepted = tokio::spawn(async move {
            let (_, peer) = tokio::time::timeout(Duration::from_secs(10), server.accept())
                .await
                .expect("the container connects")
                .unwrap();
            peer.ip()
        });
        // nc's exit status says nothing useful; the accepted connection is the evidence.
        let cmd = format!("echo hi | nc -w 2 {to}");
        engine.docker(&["exec", "box-1", "sh", "-c", &cmd]);
        accepted
    };
    let peer = peer_of(mesh_server, "10.210.2.1 9001").await.unwrap();
    assert_eq!(
        peer,
        ip.parse::<IpAddr>().unwrap(),
        "no NAT inside the mesh"
    );
    let peer = peer_of(internet_server, "192.0.2.2 9002").await.unwrap();
    assert_eq!(peer.to_string(), "192.0.2.1", "masqueraded beyond the mesh");

    // The provider's metadata service, beyond the uplink as on a VPS: the machine reaches it,
    // its containers do not (user-data can hold the setup token).
    internet.addr("eth0", "169.254.169.254/32");
    d.ip(&["route", "add", "169.254.169.254/32", "via", "192.0.2.2"]);
    let metadata = listen_in(&internet, "169.254.169.254:80");
    let to: SocketAddr = "169.254.169.254:80".parse().unwrap();
    d.enter(|| std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)))
        .expect("the machine itself reaches the metadata service");
    let (_, peer) = tokio::time::timeout(Duration::from_secs(10), metadata.accept())
        .await
        .expect("the machine's connection arrives")
        .unwrap();
    assert_eq!(peer.ip().to_string(), "192.0.2.1");
    engine.docker(&[
        "exec",
        "box-1",
        "sh",
        "-c",
        "echo hi | nc -w 2 169.254.169.254 80",
    ]);
    assert!(
        tokio::time::timeout(Duration::from_secs(3), metadata.accept())
            .await
            .is_err(),
        "a container reached the metadata service"
    );
}

/// meshd turns `ip_forward` on, usually before dockerd starts; Docker then leaves `FORWARD`'s
/// policy at ACCEPT, and only the shim's rules keep the internet out of the container bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_mesh_and_published_ports_reach_containers_when_forwarding_was_on_before_docker() {
    init_tracing();
    let ns = Netns::new("docker");
    ns.sysctl("ipv4/ip_forward", "1");
    let (engine, docker) = support::engine_in(ns, 1).await;
    let d = &engine.ns;
    let r = remote_machine(d);
    let internet = internet_of(d);
    let local = support::local(docker, 1);
    let mut web = service("web", &["httpd", "-f", "-p", "8080"]);
    web.spec.publish = vec!["8081:8080".into()];
    local.run_service(&web, "web-1").await.unwrap();
    let ip = local.inspect("web-1").await.unwrap().ip;
    let direct: SocketAddr = format!("{ip}:8080").parse().unwrap();
    let published: SocketAddr = "192.0.2.1:8081".parse().unwrap();
    let policy = String::from_utf8(d.exec("iptables", &["-S", "FORWARD"]).stdout).unwrap();
    assert!(policy.contains("-P FORWARD ACCEPT"), "{policy}");
    // httpd listens a moment after its container runs (later still on a busy machine).
    let mut before = connect_from(&internet, "192.0.2.2", direct).await;
    let waiting = std::time::Instant::now();
    while before.is_err() && waiting.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        before = connect_from(&internet, "192.0.2.2", direct).await;
    }
    assert!(
        before.is_ok(),
        "without the shim's rules the internet reaches a container, the case this test is about: \
         {before:?}"
    );

    let rules = machine_rules();
    d.enter(|| firewall::apply(&rules)).unwrap();
    let refused = connect_from(&internet, "192.0.2.2", direct).await;
    assert!(
        refused.is_err(),
        "the internet reached a container directly"
    );
    assert!(!internet.ping(&ip, 1), "the internet pinged a container");
    connect_from(&r, "10.210.2.1", direct)
        .await
        .expect("the mesh reaches the container");
    connect_from(&internet, "192.0.2.2", published)
        .await
        .expect("the internet reaches the published port");
    // Replies to what containers start still come back in.
    let internet_server = listen_in(&internet, "192.0.2.2:9002");
    let accepted = tokio::spawn(async move {
        let (mut s, _) = internet_server.accept().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, b"pong\n")
            .await
            .unwrap();
    });
    let out = engine.docker(&[
        "exec",
        "web-1",
        "sh",
        "-c",
        "nc -w 3 192.0.2.2 9002 </dev/null",
    ]);
    accepted.await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pong",
        "{out:?}"
    );
}

//! The mesh on real TUN devices in network namespaces: three machines on one bridge.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use support::TestMesh;

const UP: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_machines_reach_each_other_and_containers_see_true_sources() {
    let mut mesh = TestMesh::start(3, |_| String::new()).await;
    mesh.wait_all_up(&[0, 1, 2], 2, UP).await;

    // Every pair, both ways, on the machines' mesh addresses.
    for from in 0..3 {
        for to in 0..3 {
            if from != to {
                let ip = mesh.mesh_ip(to).to_string();
                assert!(mesh.pings(from, &ip), "machine {from} cannot ping {ip}");
            }
        }
    }

    // A server in machine 1's subnet (behind its container bridge) is reached from machine 0
    // and sees machine 0's mesh address: no NAT anywhere on the path.
    let server_ip = mesh.add_container(1, 7);
    let container = &mesh.machines[1].containers[0];
    let listener = container.enter(|| TcpListener::bind((server_ip, 8080)).unwrap());
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        conn.write_all(peer.to_string().as_bytes()).unwrap();
        peer
    });
    let seen_by_server: String = mesh.machines[0].ns.enter(|| {
        let mut conn = TcpStream::connect_timeout(
            &SocketAddr::from((server_ip, 8080)),
            Duration::from_secs(10),
        )
        .expect("machine 0 connects to the container on machine 1");
        let mut s = String::new();
        conn.read_to_string(&mut s).unwrap();
        s
    });
    let peer = server.join().unwrap();
    assert_eq!(peer.ip().to_string(), mesh.mesh_ip(0).to_string());
    assert_eq!(seen_by_server, peer.to_string());

    // The container reaches another machine through the mesh too.
    let ip2 = mesh.mesh_ip(2).to_string();
    assert!(
        mesh.machines[1].containers[0].ping(&ip2, 5),
        "container cannot ping machine 2"
    );

    // D-Bus reports every peer direct, on the peer's internet address, with traffic counted.
    for (i, m) in mesh.machines.iter().enumerate() {
        let proxy = m.proxy().await;
        let rows = proxy.peers().await.unwrap();
        assert_eq!(rows.len(), 2);
        for r in &rows {
            let j = mesh.machines.iter().position(|o| o.id == r.0).unwrap();
            assert_eq!(
                r.4,
                format!("{}:51820", mesh.machines[j].public_ip),
                "{r:?}"
            );
            assert_eq!(r.5, "up");
            assert!(r.6 >= 0, "{r:?}");
            assert!(r.7 > 0 && r.8 > 0, "{r:?}");
            assert_eq!(r.9, "direct");
        }
        assert_eq!(proxy.address().await.unwrap(), mesh.mesh_ip(i).to_string());
        let endpoints = proxy.endpoints().await.unwrap();
        assert_eq!(endpoints, vec![format!("{}:51820", m.public_ip)]);
        // The published key is the device's.
        let state_key = mesh
            .cluster
            .node(i)
            .machine(&m.id)
            .unwrap()
            .wireguard_public_key;
        assert_eq!(proxy.public_key().await.unwrap(), state_key);
        // The firewall table is in place while meshd runs.
        let out = m.ns.exec("nft", &["list", "table", "inet", "uncloud_mesh"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The same from busctl, as an operator would ask.
    let (ok, out, err) = mesh.machines[0].bus.busctl(&[
        "call",
        "org.uncloud.Mesh1",
        "/org/uncloud/Mesh1",
        "org.uncloud.Mesh1",
        "Peers",
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("a(ssssssxtts) 2 "), "{out}");
    assert!(
        out.contains(&mesh.machines[1].id) && out.contains("\"direct\""),
        "{out}"
    );

    // Each machine observed the others at their internet addresses and published that
    // (meshd publishes every few seconds, so wait for it).
    let ids: Vec<String> = mesh.machines.iter().map(|m| m.id.clone()).collect();
    let ips: Vec<String> = mesh.machines.iter().map(|m| m.public_ip.clone()).collect();
    uncloud_testkit::cluster::wait_for("observed endpoints", Duration::from_secs(20), || {
        let state = mesh.cluster.node(0).state();
        ids.iter().all(|id| {
            let observed = &state.machines[id].observed_endpoints;
            observed.len() == 2
                && observed.iter().all(|(peer, e)| {
                    let j = ids.iter().position(|i| i == peer).unwrap();
                    *e == format!("{}:51820", ips[j])
                })
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_first_endpoint_is_skipped_for_the_next() {
    // Each machine advertises a dead address first; nothing answers there.
    let mesh = TestMesh::start(2, |i| {
        format!("public_endpoints = [\"192.0.2.{}:51820\"]\n", 200 + i)
    })
    .await;
    mesh.wait_all_up(&[0, 1], 1, UP).await;
    for i in 0..2 {
        let rows = mesh.machines[i].proxy().await.peers().await.unwrap();
        let other = &mesh.machines[1 - i];
        assert_eq!(rows[0].4, format!("{}:51820", other.public_ip));
        let log = mesh.machines[i].log();
        assert!(
            log.contains("trying the next endpoint"),
            "machine {i} never rotated:\n{log}"
        );
    }
    assert!(mesh.pings(0, &mesh.mesh_ip(1).to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_machine_disappears_and_keys_survive_a_restart() {
    let mut mesh = TestMesh::start(3, |_| String::new()).await;
    mesh.wait_all_up(&[0, 1, 2], 2, UP).await;
    let key_before = mesh.machines[0].proxy().await.public_key().await.unwrap();
    let ip2 = mesh.mesh_ip(2).to_string();

    // Remove machine 2 from the state: the others drop it (announcing PeerDown), their tunnel
    // to each other stays.
    let proxy0 = mesh.machines[0].proxy().await;
    let mut downs = proxy0.receive_peer_down().await.unwrap();
    mesh.cluster
        .node(0)
        .mutate(stated::document::Mutation::RemoveMachine(
            stated::document::MachineRemoval {
                machine_id: mesh.machines[2].id.clone(),
                by: mesh.machines[0].id.clone(),
                at_ms: 1,
            },
        ))
        .await
        .unwrap();
    let ip1 = mesh.mesh_ip(1).to_string();
    let mut pinger = tokio::task::spawn_blocking({
        let ns = mesh.machines[0].ns.name().to_string();
        move || {
            // Pings 0 -> 1 continuously while peers change: none may be lost for long.
            let out = std::process::Command::new("ip")
                .args([
                    "netns", "exec", &ns, "ping", "-c", "20", "-i", "0.2", "-W", "1", &ip1,
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    });
    mesh.wait_all_up(&[0, 1], 1, UP).await;
    let down = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut downs),
    )
    .await
    .expect("PeerDown within 10 s")
    .unwrap();
    assert_eq!(down.args().unwrap().machine_id, mesh.machines[2].id);
    assert!(
        !mesh.machines[0].ns.ping(&ip2, 1),
        "removed machine still reachable"
    );
    let ping_out = (&mut pinger).await.unwrap();
    assert!(
        ping_out.contains(" 0% packet loss"),
        "tunnel 0-1 was disturbed by removing machine 2:\n{ping_out}"
    );

    // Restart machine 0's meshd: SIGTERM removes its firewall table, the key stays.
    let m0 = &mut mesh.machines[0];
    assert!(
        m0.meshd.as_mut().unwrap().stop(Duration::from_secs(10)),
        "meshd ignored SIGTERM"
    );
    let out = m0
        .ns
        .exec("nft", &["list", "table", "inet", "uncloud_mesh"]);
    assert!(
        !out.status.success(),
        "firewall table left behind after stop"
    );
    // Listen before it starts: the restarted meshd announces machine 1 coming up.
    let mut ups = m0.proxy().await.receive_peer_up().await.unwrap();
    m0.start_meshd();
    mesh.wait_all_up(&[0, 1], 1, UP).await;
    let up = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut ups))
        .await
        .expect("PeerUp within 10 s")
        .unwrap();
    assert_eq!(up.args().unwrap().machine_id, mesh.machines[1].id);
    assert_eq!(
        mesh.machines[0].proxy().await.public_key().await.unwrap(),
        key_before
    );
    assert!(mesh.pings(1, &mesh.mesh_ip(0).to_string()));
}

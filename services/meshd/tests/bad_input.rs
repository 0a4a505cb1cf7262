//! Garbage on the WireGuard port and bogus machine entries in the state are ignored; the rest
//! of the mesh keeps working.

mod support;

use std::net::UdpSocket;
use std::time::Duration;

use rand::{Rng, RngCore};
use stated::document::Mutation;
use support::TestMesh;
use uncloud_common::model::Machine;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_udp_and_bogus_peers_are_ignored() {
    let mesh = TestMesh::start(3, |_| String::new()).await;
    mesh.wait_all_up(&[0, 1, 2], 2, Duration::from_secs(60))
        .await;

    // Bogus entries, written on machine 0 and replicated to all: a key that is not base64,
    // machine 1's key again, machine 2's subnet again (a younger claim, so stated's conflict
    // rules keep machine 2's), a subnet outside the mesh.
    let state = mesh.cluster.node(0).state();
    let real = |i: usize| state.machines[&mesh.machines[i].id].clone();
    let late = u64::MAX / 4;
    let bogus = |id: &str, subnet: u32, key: String| Machine {
        id: id.into(),
        name: id.into(),
        name_claimed_at_ms: late,
        subnet,
        subnet_claimed_at_ms: late,
        wireguard_public_key: key,
        endpoints: vec!["192.0.2.99:51820".into()],
        ..Default::default()
    };
    for m in [
        bogus("bogus-key", 40, "not base64 at all!".into()),
        bogus("bogus-dupkey", 41, real(1).wireguard_public_key),
        bogus("bogus-subnet", real(2).subnet, unused_key(42)),
        bogus("bogus-range", 4000, unused_key(43)),
    ] {
        mesh.cluster
            .node(0)
            .mutate(Mutation::UpsertMachine(m))
            .await
            .unwrap();
    }

    // Garbage at every machine's WireGuard port: random lengths, and packets shaped like
    // WireGuard messages (types 1-4 with the right sizes) full of noise.
    let targets: Vec<String> = mesh
        .machines
        .iter()
        .map(|m| format!("{}:51820", m.public_ip))
        .collect();
    mesh.internet.ns.addr("br0", "192.0.2.254/24");
    mesh.internet.ns.enter(|| {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut rng = rand::rng();
        for _ in 0..3000 {
            for t in &targets {
                let (kind, len) = match rng.random_range(0..5u8) {
                    0 => (1u8, 148usize),
                    1 => (2, 92),
                    2 => (3, 64),
                    3 => (4, rng.random_range(32..1500)),
                    _ => (rng.random(), rng.random_range(0..2000)),
                };
                let mut buf = vec![0u8; len];
                rng.fill_bytes(&mut buf);
                if let Some(b) = buf.first_mut() {
                    *b = kind;
                }
                let _ = sock.send_to(&buf, t);
            }
        }
    });
    // And from a member of the mesh, at a peer.
    mesh.machines[0].ns.enter(|| {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut rng = rand::rng();
        for _ in 0..3000 {
            let mut buf = vec![0u8; rng.random_range(1..1400)];
            rng.fill_bytes(&mut buf);
            let _ = sock.send_to(&buf, &targets[1]);
        }
    });

    // Give the plan time to run on every machine, then check nothing broke.
    tokio::time::sleep(Duration::from_secs(3)).await;
    mesh.wait_all_up(&[0, 1, 2], 2, Duration::from_secs(30))
        .await;
    for from in 0..3 {
        for to in 0..3 {
            if from != to {
                let ip = mesh.mesh_ip(to).to_string();
                assert!(mesh.pings(from, &ip), "machine {from} cannot ping {ip}");
            }
        }
    }
    for (i, m) in mesh.machines.iter().enumerate() {
        let log = m.log();
        for id in ["bogus-key", "bogus-dupkey", "bogus-subnet", "bogus-range"] {
            assert!(
                log.lines()
                    .any(|l| l.contains("ignoring a machine entry") && l.contains(id)),
                "machine {i} did not report {id}:\n{log}"
            );
        }
    }
    let mut mesh = mesh;
    for m in mesh.machines.iter_mut() {
        assert!(m.meshd.as_mut().unwrap().is_running(), "{} died", m.id);
    }
}

/// A valid key nobody uses.
fn unused_key(n: u8) -> String {
    meshd::keys::encode(&[n; 32])
}

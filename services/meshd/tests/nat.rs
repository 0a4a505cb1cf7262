//! NAT to NAT: two machines behind symmetric NATs talk through a public machine that relays
//! their ciphertext; when one of them becomes reachable (its NAT opens a port forward),
//! traffic moves to the direct path.

mod support;

use std::time::Duration;

use support::{Place, TestMesh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_behind_nats_talk_through_a_relay_then_directly() {
    // 0: behind a NAT. 1: behind a NAT whose port forward is still closed; it advertises the
    // forwarded address anyway. 2: public, the only possible relay.
    let mesh = TestMesh::start_with(
        3,
        |i| {
            if i == 1 {
                "public_endpoints = [\"192.0.2.12:51820\"]\n".into()
            } else {
                String::new()
            }
        },
        |i| match i {
            0 => Place::BehindNat { forward: false },
            1 => Place::BehindNat { forward: true },
            _ => Place::Internet,
        },
    )
    .await;
    let relay_name = mesh
        .cluster
        .node(2)
        .machine(&mesh.machines[2].id)
        .unwrap()
        .name;
    mesh.wait_all_up(&[0, 1, 2], 2, Duration::from_secs(120))
        .await;
    for (from, to) in [(0, 1), (1, 0)] {
        let row = mesh.peer_row(from, to).await.unwrap();
        assert_eq!(row.9, "relayed", "{from} -> {to}: {row:?}");
        assert_eq!(
            row.4, "192.0.2.3:51820",
            "relayed through machine 2: {row:?}"
        );
    }
    let json = mesh.machines[0].proxy().await.peers_json().await.unwrap();
    assert!(
        json.contains(&format!("\"relay\":\"{relay_name}\"")),
        "{json}"
    );
    assert!(
        mesh.pings(0, &mesh.mesh_ip(1).to_string()),
        "0 cannot ping 1 through the relay"
    );
    assert!(
        mesh.pings(1, &mesh.mesh_ip(0).to_string()),
        "1 cannot ping 0 through the relay"
    );

    // Machine 1's NAT opens its port forward: machine 0's probes get through, and both sides
    // move to the direct path.
    let nat1 = mesh.machines[1].nat.as_ref().unwrap();
    nat1.ns.exec("nft", &["delete", "table", "ip", "gate"]);
    let row = mesh
        .wait_row(0, 1, "up directly", Duration::from_secs(60), |r| {
            r.9 == "direct" && r.5 == "up"
        })
        .await;
    assert_eq!(row.4, "192.0.2.12:51820");
    assert!(mesh.pings(0, &mesh.mesh_ip(1).to_string()));
    let row = mesh
        .wait_row(1, 0, "up directly", Duration::from_secs(60), |r| {
            r.9 == "direct" && r.5 == "up"
        })
        .await;
    assert!(
        row.4.starts_with("192.0.2.11:"),
        "1 sees 0 at its NAT: {row:?}"
    );
    assert_eq!(row.5, "up");
}

//! Hostile or broken input over the network and the API: a clear log line, no panic, no state
//! change, and the node keeps working.

mod support;

use std::time::Duration;

use stated::document::Mutation;
use support::{wait_for, write_service};
use tarpc::tokio_util::codec::{Framed, LengthDelimitedCodec};
use tarpc::{client, context};
use tokio::io::AsyncWriteExt;
use uncloud_common::model::Container;
use uncloud_common::model::{Machine, ModelError, MAX_FIELD_BYTES};
use uncloud_common::rpc::{
    StateSyncClient, SyncError, SyncRequest, TableDelta, TableRow, TablesMessage,
};

async fn raw_client(addr: std::net::SocketAddr) -> StateSyncClient {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let transport = tarpc::serde_transport::new(
        Framed::new(stream, LengthDelimitedCodec::new()),
        uncloud_common::rpc::MsgPack::default(),
    );
    StateSyncClient::new(client::Config::default(), transport).spawn()
}

fn request(network: &str, from: &str, message: Option<Vec<u8>>) -> SyncRequest {
    SyncRequest {
        network_id: network.into(),
        from: from.into(),
        session: 7,
        message,
        tables: None,
        more: false,
    }
}

fn deltas(deltas: Vec<TableDelta>) -> Option<TablesMessage> {
    Some(TablesMessage {
        versions: Default::default(),
        deltas,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sync_and_wrong_network_are_refused() {
    let cluster = support::cluster(2).await;
    cluster
        .all_converged(Duration::from_secs(10))
        .await
        .unwrap();
    let node = cluster.node(0);
    let heads = node.heads();
    let client = raw_client(node.sync_addr()).await;

    for garbage in [
        vec![],
        vec![0x42],
        b"not an automerge message".to_vec(),
        vec![0x43; 5000],
    ] {
        let r = client
            .sync(
                context::current(),
                request("test-net", "intruder", Some(garbage)),
            )
            .await
            .unwrap();
        assert!(matches!(r, Err(SyncError::Malformed(_))), "{r:?}");
    }
    let r = client
        .sync(context::current(), request("other-net", "intruder", None))
        .await
        .unwrap();
    assert!(matches!(r, Err(SyncError::WrongNetwork { .. })), "{r:?}");
    let r = client
        .sync(context::current(), request("test-net", "bad/id\n", None))
        .await
        .unwrap();
    assert!(matches!(r, Err(SyncError::InvalidCaller(_))), "{r:?}");
    assert_eq!(node.heads(), heads, "refused input changed the state");

    // Container tables: a row of another machine inside a table, versions backwards, an
    // invalid id are refused; a table of this machine itself (only it writes that) or of a
    // machine that is not in the state is ignored.
    let me = node.machine_id.clone();
    let other = cluster.ids[1].clone();
    let row = |machine: &str| TableRow {
        version: 5,
        container: Container {
            id: "forged".into(),
            machine_id: machine.into(),
            name: "forged".into(),
            ..Default::default()
        },
    };
    let table = |machine: &str, rows: Vec<TableRow>| TableDelta {
        machine_id: machine.into(),
        since: 0,
        version: 5,
        rows,
        removed: vec![],
    };
    for hostile in [
        table(&other, vec![row(&me)]),
        TableDelta {
            since: 9,
            ..table(&other, vec![])
        },
        table("bad/id", vec![]),
    ] {
        let r = client
            .sync(
                context::current(),
                SyncRequest {
                    tables: deltas(vec![hostile]),
                    ..request("test-net", &other, None)
                },
            )
            .await
            .unwrap();
        assert!(matches!(r, Err(SyncError::Malformed(_))), "{r:?}");
    }
    for ignored in [
        table(&me, vec![row(&me)]),
        table("not-a-member", vec![row("not-a-member")]),
    ] {
        let r = client
            .sync(
                context::current(),
                SyncRequest {
                    tables: deltas(vec![ignored]),
                    ..request("test-net", &other, None)
                },
            )
            .await
            .unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
    assert!(node.state().containers.is_empty(), "a forged row was taken");
    assert!(node.table_versions().is_empty());

    // Raw garbage on the TCP port and the UDP gossip port.
    let mut s = tokio::net::TcpStream::connect(node.sync_addr())
        .await
        .unwrap();
    s.write_all(&[0xff; 64]).await.unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap(); // an absurd frame length
    drop(s);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for len in [0usize, 1, 7, 512, 1400] {
        let junk: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        udp.send_to(&junk, node.gossip_addr()).unwrap();
    }

    // The node still syncs normally.
    write_service(cluster.node(1), "after-garbage", "img").await;
    cluster
        .all_converged(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(node.state().services.contains_key("after-garbage"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_invalid_values_change_nothing() {
    let cluster = support::cluster(1).await;
    let node = cluster.node(0);
    wait_for("self registration", Duration::from_secs(10), || {
        node.machine(&node.machine_id).is_some()
    })
    .await;
    let heads = node.heads();
    let mut m = node.machine(&node.machine_id).unwrap();
    m.labels
        .insert("blob".into(), "x".repeat(MAX_FIELD_BYTES + 1));
    let err = node.mutate(Mutation::UpsertMachine(m)).await.unwrap_err();
    assert!(
        matches!(
            err,
            stated::WriteError::Invalid(ModelError::TooLarge { .. })
        ),
        "{err}"
    );
    let err = node
        .mutate(Mutation::UpsertMachine(Machine {
            id: "x".into(),
            name: "ok".into(),
            subnet: 0,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("subnet"), "{err}");
    let err = node
        .mutate(Mutation::SetMeshCidr("192.168.0.0/30".into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CIDR"), "{err}");
    assert_eq!(node.heads(), heads);
}

/// A machine configured with another network id, seeded with our machines, never enters
/// their view and never exchanges state with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_of_another_network_stays_out() {
    let cluster = support::cluster(2).await;
    cluster
        .all_converged(Duration::from_secs(10))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stranger = stated::Node::start(support::test_config(
        dir.path(),
        "other-net",
        vec![cluster.node(0).gossip_addr().to_string()],
    ))
    .await
    .unwrap();
    write_service(&stranger, "foreign", "img").await;
    write_service(cluster.node(0), "native", "img").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (_, node) in cluster.running() {
        assert!(!node.liveness().contains_key(&stranger.machine_id));
        assert!(!node.state().services.contains_key("foreign"));
    }
    assert!(!stranger.state().services.contains_key("native"));
    assert_eq!(
        stranger.liveness().len(),
        1,
        "the stranger sees only itself"
    );

    stranger.shutdown().await;
}

/// A store file damaged while the machine was off: stated starts anyway, says which file, keeps
/// the damaged copy, recovers what is readable, and gets the rest back from its peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_salvaged_and_refilled_from_peers() {
    let mut cluster = support::cluster(2).await;
    cluster
        .all_converged(Duration::from_secs(10))
        .await
        .unwrap();
    for k in 0..30 {
        write_service(cluster.node(0), &format!("s{k}"), "img").await;
    }
    cluster
        .all_converged(Duration::from_secs(10))
        .await
        .unwrap();
    let node = cluster.nodes[0].take().unwrap();
    node.shutdown().await;

    // Cut the file in half.
    let path = cluster.configs[0].store_path();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();

    let node = cluster.start_node(0).await;
    let dir = path.parent().unwrap();
    let kept: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("damaged"))
        .collect();
    assert_eq!(kept.len(), 1, "the damaged file is kept aside");
    cluster.nodes[0] = Some(node);
    cluster
        .all_converged(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let services = cluster.node(0).state().services;
    assert!((0..30).all(|k| services.contains_key(&format!("s{k}"))));
}

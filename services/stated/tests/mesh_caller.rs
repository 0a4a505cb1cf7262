//! On the mesh, a sync caller speaks only for the machine whose address it calls from: two
//! machines in network namespaces with the real daemons (`uncloud_testkit::network`), and a
//! hand-made sync client on one of them naming the other.

use std::net::SocketAddr;

use tarpc::{client, context};
use uncloud_common::rpc::{transport, StateSyncClient, SyncError, SyncRequest};
use uncloud_testkit::network::{Binaries, LocalNetwork};

fn request(network: &str, from: &str) -> SyncRequest {
    SyncRequest {
        network_id: network.into(),
        from: from.into(),
        session: 7,
        message: None,
        tables: None,
        more: false,
    }
}

#[test]
fn a_machine_cannot_sync_in_another_machines_name() {
    let mut net = LocalNetwork::new(Binaries::beside(env!("CARGO_BIN_EXE_stated")));
    let alpha = net.boot("alpha", None);
    let beta = net.boot("beta", None);
    net.uc_ok(&net.machines[alpha].enrol("init"));
    net.uc_ok(&net.machines[beta].enrol("add"));
    let (alpha_id, beta_id) = (
        net.machines[alpha].machine_id(),
        net.machines[beta].machine_id(),
    );
    net.wait_until("alpha sees beta alive over the mesh", 60, || {
        net.machines[alpha].sees_alive(&beta_id)
    });
    let beta_sync: SocketAddr = format!("{}:7947", net.machines[beta].mesh_ip().unwrap())
        .parse()
        .unwrap();
    let network = net.machines[alpha].state().unwrap()["network"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // From alpha's namespace: the connection comes from alpha's mesh address.
    let (as_beta, as_alpha) = net.machines[alpha].ns.enter(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(beta_sync).await.unwrap();
            let c = StateSyncClient::new(client::Config::default(), transport(stream)).spawn();
            let as_beta = c
                .sync(context::current(), request(&network, &beta_id))
                .await
                .unwrap();
            let as_alpha = c
                .sync(context::current(), request(&network, &alpha_id))
                .await
                .unwrap();
            (as_beta, as_alpha)
        })
    });
    assert!(
        matches!(&as_beta, Err(SyncError::InvalidCaller(why)) if why.contains("not its mesh address")),
        "{as_beta:?}"
    );
    assert!(as_alpha.is_ok(), "alpha for itself: {as_alpha:?}");
    let log = std::fs::read_to_string(net.machines[beta].root().join("stated.log")).unwrap();
    assert!(
        log.contains("refusing sync that names another machine than its address"),
        "{log}"
    );
}

//! The shim notices when this machine is renumbered (and only then): the daemon exits on it and
//! systemd's restart moves the container network (`network::ensure` repairs a network on the
//! wrong subnet, tested in `network.rs`).

use std::time::Duration;

use dockerd_shim::renumbering::until_renumbered;
use stated::document::{MachineUpdate, Mutation};
use uncloud_common::dbus::StateProxy;
use uncloud_testkit::cluster::Cluster;
use uncloud_testkit::PrivateBus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subnet_is_noticed_and_other_changes_are_not() {
    let cluster = Cluster::start(1).await;
    let bus = PrivateBus::start();
    let _dbus = stated::dbus::serve(
        stated::Membership::of_running(cluster.node(0).shared().clone()),
        &bus.address,
    )
    .await
    .unwrap();
    let conn = bus.connect().await;
    let proxy = StateProxy::new(&conn).await.unwrap();
    let id = cluster.ids[0].clone();
    let subnet = cluster.node(0).machine(&id).unwrap().subnet;
    let watcher = {
        let id = id.clone();
        tokio::spawn(async move { until_renumbered(&proxy, &id, subnet).await })
    };
    // A change of another field of this machine is not a renumbering.
    cluster
        .node(0)
        .mutate(Mutation::UpdateMachine(MachineUpdate {
            machine_id: id.clone(),
            roles: Some(vec!["ingress".into()]),
            ..Default::default()
        }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !watcher.is_finished(),
        "a role change was taken for a renumbering"
    );

    cluster
        .node(0)
        .mutate(Mutation::UpdateMachine(MachineUpdate {
            machine_id: id.clone(),
            subnet: Some((subnet + 7, 1)),
            ..Default::default()
        }))
        .await
        .unwrap();
    let new = tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the renumbering was not noticed within 5 s")
        .unwrap();
    assert_eq!(new, subnet + 7);
}

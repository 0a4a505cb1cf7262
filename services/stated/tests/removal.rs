//! `uc machine rm` at the state level: a removed machine is gone everywhere with its
//! containers' records, it cannot be admitted again, and coming back online with its old
//! state changes nothing: the members refuse its sync.

mod support;

use std::time::Duration;

use stated::document::{MachineRemoval, Mutation};
use stated::{Admission, WriteError};
use support::wait_for;
use uncloud_common::model::Container;

fn record(id: &str, machine: &str) -> Container {
    Container {
        id: id.into(),
        machine_id: machine.into(),
        name: id.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_machine_stays_removed_when_it_comes_back() {
    let mut cluster = support::cluster(3).await;
    cluster
        .settled(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let gone = cluster.ids[2].clone();
    for (i, cid) in [(1usize, "kept"), (2, "doomed")] {
        let owner = cluster.ids[i].clone();
        cluster
            .node(i)
            .mutate(Mutation::UpsertContainer(record(cid, &owner)))
            .await
            .unwrap();
    }
    cluster
        .all_converged(Duration::from_secs(10))
        .await
        .unwrap();

    // The machine is off when it is removed.
    cluster.nodes[2].take().unwrap().shutdown().await;
    let removal = MachineRemoval {
        machine_id: gone.clone(),
        by: cluster.ids[0].clone(),
        at_ms: 1,
    };
    cluster
        .node(0)
        .mutate(Mutation::RemoveMachine(removal))
        .await
        .unwrap();
    cluster
        .converged(&[0, 1], Duration::from_secs(10))
        .await
        .unwrap();
    for i in [0, 1] {
        let s = cluster.node(i).state();
        assert!(!s.machines.contains_key(&gone), "node {i} still lists it");
        assert!(s.removed.contains_key(&gone));
        assert_eq!(s.containers.keys().collect::<Vec<_>>(), vec!["kept"]);
    }
    let err = cluster
        .node(1)
        .admit(Admission {
            machine_id: gone.clone(),
            name: "again".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, WriteError::Removed(_)), "{err}");

    // It comes back with its old state and keeps writing: nothing of it reaches the members.
    cluster.nodes[2] = Some(cluster.start_node(2).await);
    cluster
        .node(2)
        .mutate(Mutation::UpsertContainer(record("after", &gone)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in [0, 1] {
        let s = cluster.node(i).state();
        assert!(!s.machines.contains_key(&gone), "node {i} took it back");
        assert!(
            s.containers.values().all(|c| c.machine_id != gone),
            "node {i} took a record of the removed machine: {:?}",
            s.containers.keys().collect::<Vec<_>>()
        );
    }
    // The members still agree with each other.
    wait_for("the members to agree", Duration::from_secs(10), || {
        cluster.node(0).heads() == cluster.node(1).heads()
    })
    .await;
}

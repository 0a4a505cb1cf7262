//! Bounded history: a 20-node network runs 10,000 container starts and stops and some service
//! churn while one machine is off the whole time. The container churn adds nothing to the
//! automerge document (it lives in the per-machine tables, decision 0014), and the machine
//! that was off catches up to the same state when it comes back, with sync messages bigger
//! than one part (`sync_chunk_bytes`).

mod support;

use std::time::{Duration, Instant};

use stated::document::Mutation;
use support::write_service;
use uncloud_common::model::{Container, ContainerState};

const NODES: usize = 20;
const CONTAINERS: usize = 10_000;
/// One container in this many is still running at the end.
const KEEP_ONE_IN: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_off_during_ten_thousand_container_starts_catches_up() {
    // Small parts, so the catch-up's sync messages travel in many of them (a part is a frame;
    // in production 32 MiB, frames are capped at 64 MiB).
    let mut cluster = support::cluster_with(NODES, |c| c.sync_chunk_bytes = 16 * 1024).await;
    cluster
        .settled(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let off = NODES - 1;
    cluster.nodes[off].take().unwrap().shutdown().await;
    let doc_before = cluster.node(0).save_document().len();
    let heads_before = cluster.node(0).heads();

    // Every running machine starts and stops its own containers, all at once.
    let started = Instant::now();
    let per_node = CONTAINERS / (NODES - 1) + 1;
    futures::future::join_all((0..NODES - 1).map(|i| {
        let node = cluster.node(i);
        async move {
            for k in 0..per_node {
                let id = format!("n{i}-c{k}");
                let c = Container {
                    id: id.clone(),
                    machine_id: node.machine_id.clone(),
                    name: id.clone(),
                    image: "registry.example/app:1".into(),
                    state: ContainerState::Running,
                    healthy: true,
                    ..Default::default()
                };
                node.mutate(Mutation::UpsertContainer(c)).await.unwrap();
                if k % KEEP_ONE_IN != 0 {
                    node.mutate(Mutation::RemoveContainer(id)).await.unwrap();
                }
            }
        }
    }))
    .await;
    let running: Vec<usize> = (0..NODES - 1).collect();
    cluster
        .converged(&running, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{} container starts and stops on {} machines converged in {:?}",
        per_node * (NODES - 1),
        NODES - 1,
        started.elapsed()
    );
    assert_eq!(
        cluster.node(0).heads(),
        heads_before,
        "container churn changed the automerge document"
    );
    assert_eq!(cluster.node(0).save_document().len(), doc_before);
    let expected = (NODES - 1) * per_node.div_ceil(KEEP_ONE_IN);
    assert_eq!(cluster.node(0).state().containers.len(), expected);

    // Some service churn too, about 400 KB of it: that is the document's.
    for k in 0..200 {
        let node = cluster.node(k % (NODES - 1));
        // Random, so automerge's compression cannot shrink it.
        let padding: String = (0..1000)
            .map(|_| format!("{:x}", rand::random::<u8>() % 16))
            .collect();
        write_service(node, &format!("s{k}"), &format!("img:{k}-{padding}")).await;
        if k % 2 == 1 {
            node.mutate(Mutation::RemoveService(format!("s{k}")))
                .await
                .unwrap();
        }
    }

    let churn = Instant::now();
    cluster
        .converged(&running, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "the service churn settled {:?} after the last write",
        churn.elapsed()
    );

    // The machine that was off the whole time comes back and catches up.
    let back = Instant::now();
    cluster.nodes[off] = Some(cluster.start_node(off).await);
    cluster
        .all_converged(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let parts = cluster
        .node(off)
        .metrics
        .sync_parts
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "the machine that was off caught up in {:?}, {parts} message parts after the first",
        back.elapsed()
    );
    assert!(parts > 0, "the catch-up never needed a message in parts");
    let (caught_up, reference) = (cluster.node(off).state(), cluster.node(0).state());
    assert_eq!(caught_up.containers, reference.containers);
    assert_eq!(caught_up.services, reference.services);
    assert_eq!(caught_up.services.len(), 100);
}

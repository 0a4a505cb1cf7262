//! In-process multi-node tests: random writers, partitions, heals; every node must reach the
//! same state by a deadline, else the failure says what each node is missing.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use stated::document::Mutation;
use support::{wait_for, write_service, Cluster};
use uncloud_common::liveness::Liveness;

/// Writes `count` services from random nodes among `nodes`, all nodes writing concurrently
/// (each node's own writes in order); returns their ids.
async fn random_writes(
    cluster: &Cluster,
    nodes: &[usize],
    count: usize,
    tag: &str,
    rng: &mut rand::rngs::StdRng,
) -> Vec<String> {
    let mut per_node: std::collections::BTreeMap<usize, Vec<String>> = Default::default();
    for k in 0..count {
        let i = nodes[rng.random_range(0..nodes.len())];
        per_node.entry(i).or_default().push(format!("{tag}{k}"));
    }
    let writers = per_node.iter().map(|(&i, ids)| async move {
        for id in ids {
            write_service(cluster.node(i), id, &format!("img:{}", cluster.ids[i])).await;
        }
    });
    futures::future::join_all(writers).await;
    per_node.into_values().flatten().collect()
}

fn assert_all_have(cluster: &Cluster, ids: &[String]) {
    for (i, node) in cluster.running() {
        let state = node.state();
        let missing: Vec<_> = ids
            .iter()
            .filter(|id| !state.services.contains_key(*id))
            .collect();
        assert!(missing.is_empty(), "{} misses {missing:?}", cluster.ids[i]);
    }
}

async fn wait_all_reachable(cluster: &Cluster, deadline: Duration) {
    let n = cluster.nodes.len();
    let start = std::time::Instant::now();
    loop {
        let views: Vec<usize> = cluster
            .running()
            .map(|(_, node)| {
                node.liveness()
                    .values()
                    .filter(|v| **v == Liveness::Alive)
                    .count()
            })
            .collect();
        if views.iter().all(|&alive| alive >= n) {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "not every node sees all {n} reachable; counts per node: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn partition_scenario(
    n: usize,
    cut: std::ops::Range<usize>,
    writes_per_side: usize,
    seed: u64,
) {
    let cluster = support::cluster(n).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let all: Vec<usize> = (0..n).collect();
    wait_all_reachable(&cluster, Duration::from_secs(30)).await;

    // Connected: writes propagate.
    let mut written = random_writes(&cluster, &all, 10, "before-", &mut rng).await;
    cluster
        .all_converged(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("before the partition: {e}"));

    // Partition: both sides keep accepting writes and converge among themselves.
    let side_a: Vec<usize> = cut.clone().collect();
    let side_b: Vec<usize> = all.iter().copied().filter(|i| !cut.contains(i)).collect();
    cluster.net.partition(&[
        cluster.group(cut.clone()),
        side_b.iter().map(|&i| cluster.ids[i].clone()).collect(),
    ]);
    written.extend(random_writes(&cluster, &side_a, writes_per_side, "a-", &mut rng).await);
    written.extend(random_writes(&cluster, &side_b, writes_per_side, "b-", &mut rng).await);
    cluster
        .converged(&side_a, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("side A during the partition: {e}"));
    cluster
        .converged(&side_b, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("side B during the partition: {e}"));
    assert_ne!(
        cluster.node(side_a[0]).heads(),
        cluster.node(side_b[0]).heads()
    );
    // Each side sees the other as unreachable.
    wait_for(
        "side A to see side B down or suspect",
        Duration::from_secs(20),
        || {
            let l = cluster.node(side_a[0]).liveness();
            side_b
                .iter()
                .all(|&i| l.get(&cluster.ids[i]) != Some(&Liveness::Alive))
        },
    )
    .await;

    // Heal: everyone converges to the same state holding every write.
    cluster.net.heal();
    let took = cluster
        .all_converged(Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("after healing: {e}"));
    eprintln!("{n} nodes converged {took:?} after healing");
    assert_all_have(&cluster, &written);
    let states: BTreeSet<String> = cluster
        .running()
        .map(|(_, node)| serde_json::to_string(&node.state()).unwrap())
        .collect();
    assert_eq!(states.len(), 1, "same heads but different states");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_cut_off_then_healed() {
    partition_scenario(3, 2..3, 15, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_split_in_halves_then_healed() {
    partition_scenario(20, 0..10, 40, 2).await;
}

/// Machines admitted on both sides of a partition get the same lowest free subnet (and the
/// same name); after the heal every node computes the same winner and the loser renumbers
/// itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_in_a_partition_end_unique() {
    let cluster = support::cluster(4).await;
    wait_all_reachable(&cluster, Duration::from_secs(30)).await;
    cluster
        .settled(Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let machines = cluster.node(0).state().machines;
    assert_eq!(machines.len(), 4, "every node was admitted");

    // Two more machines with the same name are admitted, one on each side of a partition.
    let mut cluster = cluster;
    let net = cluster.net.clone();
    let mut extra = Vec::new();
    for (k, seed_node) in [(4usize, 0usize), (5, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let id = format!("n{k:02}");
        std::fs::write(dir.path().join("machine-id"), &id).unwrap();
        let mut c = support::test_config(
            dir.path(),
            "test-net",
            vec![cluster.configs[seed_node].gossip_addr().to_string()],
        );
        c.machine_name = Some("newcomer".into());
        net.register(&id, c.gossip_addr());
        cluster.ids.push(id);
        cluster.configs.push(c);
        extra.push(dir);
    }
    let side_a = vec![
        cluster.ids[0].clone(),
        cluster.ids[1].clone(),
        cluster.ids[4].clone(),
    ];
    let side_b = vec![
        cluster.ids[2].clone(),
        cluster.ids[3].clone(),
        cluster.ids[5].clone(),
    ];
    net.partition(&[side_a, side_b]);
    let a = cluster.admit(0, 4).await;
    let b = cluster.admit(2, 5).await;
    assert_eq!(
        a.subnet, b.subnet,
        "both sides handed out the same free subnet"
    );
    assert_eq!(a.name, b.name);
    for k in [4, 5] {
        let node = cluster.start_node(k).await;
        cluster.nodes.push(Some(node));
    }

    net.heal();
    wait_for(
        "conflicts resolved everywhere",
        Duration::from_secs(30),
        || {
            cluster.running().all(|(_, node)| {
                let m = node.state().machines;
                let names: BTreeSet<_> = m.values().map(|m| m.name.clone()).collect();
                let subnets: BTreeSet<_> = m.values().map(|m| m.subnet).collect();
                m.len() == 6 && names.len() == 6 && subnets.len() == 6
            })
        },
    )
    .await;
    cluster
        .all_converged(Duration::from_secs(10))
        .await
        .unwrap();
    // The older claim kept its values; the same on every node.
    let m = cluster.node(0).state().machines;
    let (winner, loser) = if a.subnet_claimed_at_ms <= b.subnet_claimed_at_ms
        && (a.subnet_claimed_at_ms, &a.id) < (b.subnet_claimed_at_ms, &b.id)
    {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(m[&winner.id].subnet, winner.subnet);
    assert_eq!(m[&winner.id].name, "newcomer");
    assert_ne!(m[&loser.id].subnet, loser.subnet);
    assert_eq!(m[&loser.id].name, "newcomer-2");
    drop(extra);
}

/// A push that never arrives (one-way cut of the writer's traffic) is still pulled by the
/// receiver once gossip shows it the writer's heads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_push_is_pulled_by_anti_entropy() {
    let cluster = support::cluster(3).await;
    wait_all_reachable(&cluster, Duration::from_secs(30)).await;
    cluster
        .all_converged(Duration::from_secs(10))
        .await
        .unwrap();
    // n00's pushes to n01 are lost; gossip (through n02) still carries n00's heads to n01.
    cluster.net.cut_one_way(&cluster.ids[0], &cluster.ids[1]);
    write_service(cluster.node(0), "pushed", "img").await;
    cluster
        .all_converged(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(cluster.node(1).state().services.contains_key("pushed"));
}

/// Both sides of a partition deploy `web` in project `shop` (each its own spec) and each
/// deploys a service claiming `app.example.com`. After the heal every node holds one whole
/// spec of `web` (never a mix), the other side's spec in its history, and computes the same
/// owner of the hostname with the other claimant reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploys_and_hostname_claims_resolve_the_same_everywhere() {
    use uncloud_common::model::{Service, ServiceSpec};
    let cluster = support::cluster(4).await;
    wait_all_reachable(&cluster, Duration::from_secs(30)).await;
    let deploy = |name: &str, image: &str, replicas: u32, ports: &[&str]| Service {
        id: Service::key("shop", name),
        name: name.into(),
        project: "shop".into(),
        spec: ServiceSpec {
            image: image.into(),
            replicas,
            ports: ports.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        },
        ..Default::default()
    };
    // Revision 1, everywhere, before the partition.
    cluster
        .node(0)
        .mutate(Mutation::UpsertService(Box::new(deploy(
            "web",
            "web:1",
            1,
            &[],
        ))))
        .await
        .unwrap();
    cluster
        .all_converged(Duration::from_secs(10))
        .await
        .unwrap();

    cluster
        .net
        .partition(&[cluster.group(0..2), cluster.group(2..4)]);
    // Side A changes the image, side B the replicas: a field-by-field merge would run
    // web:2 with 5 replicas, which nobody deployed.
    cluster
        .node(0)
        .mutate(Mutation::UpsertService(Box::new(deploy(
            "web",
            "web:2",
            1,
            &[],
        ))))
        .await
        .unwrap();
    cluster
        .node(3)
        .mutate(Mutation::UpsertService(Box::new(deploy(
            "web",
            "web:1",
            5,
            &[],
        ))))
        .await
        .unwrap();
    // Both sides publish app.example.com; side B's service is created first.
    cluster
        .node(3)
        .mutate(Mutation::UpsertService(Box::new(deploy(
            "shop-b",
            "b:1",
            1,
            &["app.example.com:80/https"],
        ))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    cluster
        .node(1)
        .mutate(Mutation::UpsertService(Box::new(deploy(
            "shop-a",
            "a:1",
            1,
            &["app.example.com:8080/https"],
        ))))
        .await
        .unwrap();

    cluster.net.heal();
    // Converged, and settled: the merged conflict of `web` has been written away.
    wait_for(
        "one settled state everywhere",
        Duration::from_secs(30),
        || {
            let states: BTreeSet<String> = cluster
                .running()
                .map(|(_, node)| serde_json::to_string(&node.state()).unwrap())
                .collect();
            states.len() == 1
                && cluster
                    .node(0)
                    .state()
                    .services
                    .get("web.shop")
                    .is_some_and(|w| w.history.len() == 2)
        },
    )
    .await;
    let state = cluster.node(2).state();
    let web = &state.services["web.shop"];
    let (a, b) = (("web:2", 1), ("web:1", 5));
    let now = (web.spec.image.as_str(), web.spec.replicas);
    assert!(now == a || now == b, "a mix of two deploys: {now:?}");
    let lost = if now == a { b } else { a };
    assert!(
        web.history
            .iter()
            .any(|r| (r.spec.image.as_str(), r.spec.replicas) == lost),
        "the losing deploy is not in the history: {:?}",
        web.history
    );
    assert!(
        web.history
            .iter()
            .any(|r| (r.spec.image.as_str(), r.spec.replicas) == ("web:1", 1)),
        "revision 1 is not in the history: {:?}",
        web.history
    );

    // The hostname: the same owner on every node, the other claimant reported.
    let claims: BTreeSet<String> = cluster
        .running()
        .map(|(_, node)| {
            let claims = uncloud_common::claims::resolve(node.state().services.values());
            format!("{:?}", claims)
        })
        .collect();
    assert_eq!(claims.len(), 1, "nodes disagree: {claims:?}");
    let claims = uncloud_common::claims::resolve(state.services.values());
    let route = &claims.routes[&("app.example.com".to_string(), "/".to_string())];
    assert_eq!(
        route.service_id, "shop-b.shop",
        "the older service keeps the hostname"
    );
    assert_eq!(claims.conflicts.len(), 1);
    assert_eq!(claims.conflicts[0].losers, ["shop-a.shop"]);
}

//! Many `stated` nodes in one process on loopback, members of one network, with links that
//! can be cut ([`crate::simnet`]).
//!
//! Used by the multi-node tests of stated, meshd and dockerd-shim and by the benchmark. It
//! panics on setup failures: it is for tests, never for production paths.

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uncloud_common::model::{Service, ServiceSpec};

use stated::config::Config;
use stated::document::Mutation;
use stated::links::Links;
use stated::Node;

use crate::simnet::SimulatedNetwork;

/// A UDP port free right now on loopback.
pub fn free_udp_port() -> u16 {
    // Ports handed out before, in this process: a node may not have bound its port yet when
    // the next is asked for, and the kernel would happily offer the same one again.
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// Config for a test node: fast gossip, sync on an ephemeral port, no D-Bus.
pub fn test_config(dir: &std::path::Path, network: &str, seeds: Vec<String>) -> Config {
    Config {
        network_id: Some(network.into()),
        data_dir: dir.to_owned(),
        gossip_port: free_udp_port(),
        sync_port: 0,
        seeds,
        gossip_interval_ms: 150,
        suspect_after_ms: 600,
        anti_entropy_interval_ms: 2_000,
        sync_timeout_ms: 2_000,
        bus: "none".into(),
        listen_address: stated::config::Listen::LOOPBACK,
        ..Config::default()
    }
}

/// N nodes sharing one simulated network.
pub struct Cluster {
    pub net: SimulatedNetwork,
    pub nodes: Vec<Option<Node>>,
    pub configs: Vec<Config>,
    pub ids: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `n` nodes `n00`, `n01`, …, members of one network whose first node admitted
    /// all of them (`node-0` on subnet 1, `node-1` on 2, …); the first three are everyone's
    /// seeds.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, |_| {}).await
    }

    /// Like [`Cluster::start`], with `tune` applied to every node's config first.
    pub async fn start_with(n: usize, tune: impl Fn(&mut Config)) -> Cluster {
        let net = SimulatedNetwork::new();
        let mut dirs = Vec::new();
        let mut configs: Vec<Config> = Vec::new();
        let mut ids = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let id = format!("n{i:02}");
            std::fs::write(dir.path().join("machine-id"), &id).unwrap();
            let mut c = test_config(dir.path(), "test-net", vec![]);
            c.machine_name = Some(format!("node-{i}"));
            tune(&mut c);
            net.register(&id, c.gossip_addr());
            ids.push(id);
            configs.push(c);
            dirs.push(dir);
        }
        let seeds: Vec<String> = configs
            .iter()
            .take(3)
            .map(|c| c.gossip_addr().to_string())
            .collect();
        for c in &mut configs {
            c.seeds = seeds.clone();
        }
        let mut cluster = Cluster {
            net,
            nodes: Vec::new(),
            configs,
            ids,
            _dirs: dirs,
        };
        for i in 0..n {
            let node = cluster.start_node(i).await;
            cluster.nodes.push(Some(node));
        }
        for i in 0..n {
            cluster.admit(0, i).await;
        }
        cluster
    }

    /// Node `by` admits node `who` under its configured name.
    pub async fn admit(&self, by: usize, who: usize) -> uncloud_common::model::Machine {
        self.node(by)
            .admit(stated::Admission {
                machine_id: self.ids[who].clone(),
                name: self.configs[who].machine_name(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{} admitting {}: {e}", self.ids[by], self.ids[who]))
    }

    pub async fn start_node(&self, i: usize) -> Node {
        Node::start_with_links(
            self.configs[i].clone(),
            Links::filtered(Arc::new(self.net.clone())),
        )
        .await
        .unwrap_or_else(|e| panic!("node {i} did not start: {e}"))
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub fn running(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
    }

    pub fn group(&self, range: std::ops::Range<usize>) -> Vec<String> {
        self.ids[range].to_vec()
    }

    /// Waits until every running node in `members` has the same heads and container tables;
    /// on timeout returns what each node is missing compared with the union of all.
    pub async fn converged(
        &self,
        members: &[usize],
        deadline: Duration,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let heads: BTreeSet<_> = members
                .iter()
                .map(|&i| (self.node(i).heads(), self.node(i).table_versions()))
                .collect();
            if heads.len() == 1 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > deadline {
                return Err(self.describe_divergence(members));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until every running node has registered, no name or subnet conflict is left to
    /// fix, and all heads are equal: after this, the state changes only when a test writes.
    pub async fn settled(&self, deadline: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let n = self.running().count();
        loop {
            let clean = self.running().all(|(_, node)| {
                let machines = node.state().machines;
                machines.len() >= n
                    && uncloud_common::conflict::resolve(machines.values()).is_clean()
            });
            if clean {
                let left = deadline.saturating_sub(start.elapsed());
                self.all_converged(left).await?;
                // Converged on a clean state: nobody has a conflict left to fix.
                if self.running().all(|(_, node)| {
                    uncloud_common::conflict::resolve(node.state().machines.values()).is_clean()
                }) {
                    return Ok(start.elapsed());
                }
            }
            if start.elapsed() > deadline {
                return Err(format!(
                    "cluster did not settle: {}",
                    self.describe_divergence(&self.running().map(|(i, _)| i).collect::<Vec<_>>())
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn all_converged(&self, deadline: Duration) -> Result<Duration, String> {
        let members: Vec<usize> = self.running().map(|(i, _)| i).collect();
        self.converged(&members, deadline).await
    }

    fn describe_divergence(&self, members: &[usize]) -> String {
        let states: BTreeMap<usize, BTreeSet<String>> = members
            .iter()
            .map(|&i| {
                let s = self.node(i).state();
                let ids = s
                    .machines
                    .keys()
                    .map(|k| format!("machine/{k}"))
                    .chain(s.services.keys().map(|k| format!("service/{k}")))
                    .chain(s.containers.keys().map(|k| format!("container/{k}")))
                    .collect();
                (i, ids)
            })
            .collect();
        let union: BTreeSet<String> = states.values().flatten().cloned().collect();
        let mut out = format!(
            "nodes did not converge ({} entities in all):\n",
            union.len()
        );
        for (i, have) in &states {
            let missing: Vec<_> = union.difference(have).take(10).collect();
            out += &format!(
                "  {} heads={:?} missing {} {:?}\n",
                self.ids[*i],
                self.node(*i).heads().len(),
                union.len() - have.len(),
                missing
            );
        }
        out
    }
}

/// A small service outside any project, named `id` (a DNS label), whose image says who
/// wrote it.
pub fn service(id: &str, image: &str) -> Service {
    Service {
        id: id.into(),
        name: id.into(),
        spec: ServiceSpec {
            image: image.into(),
            replicas: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

pub async fn write_service(node: &Node, id: &str, image: &str) {
    node.mutate(Mutation::UpsertService(Box::new(service(id, image))))
        .await
        .unwrap_or_else(|e| panic!("write {id} on {}: {e}", node.machine_id));
}

/// Waits until `cond` holds, polling.
pub async fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

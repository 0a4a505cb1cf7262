//! Resident memory per node, measured in a fresh child process (this binary again, with the
//! hidden `--rss-probe` flag) so that memory freed by earlier scenarios does not blur it:
//! (RSS after starting and settling N nodes − RSS before) / N; then the same nodes holding
//! some containers, for the cost of 1,000 containers per node.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{reference, subject};
use crate::sys::rss_bytes;

/// What the child prints on stdout, one JSON line.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Probe {
    pub nodes: usize,
    pub before: u64,
    pub after: u64,
    /// Containers then written (spread over the nodes, each its own), 0 for none.
    #[serde(default)]
    pub containers: usize,
    /// RSS once every node holds them all.
    #[serde(default)]
    pub with_containers: u64,
}

impl Probe {
    pub fn per_node(&self) -> f64 {
        self.after.saturating_sub(self.before) as f64 / self.nodes as f64
    }

    /// What holding 1,000 containers costs one node.
    pub fn per_node_per_1000_containers(&self) -> f64 {
        if self.containers == 0 {
            return f64::NAN;
        }
        self.with_containers.saturating_sub(self.after) as f64
            / self.nodes as f64
            / (self.containers as f64 / 1000.0)
    }
}

/// Which cluster a probe starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stated,
    Chitchat,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Stated => "stated",
            Kind::Chitchat => "chitchat",
        }
    }

    pub fn parse(s: &str) -> Result<Kind> {
        match s {
            "stated" => Ok(Kind::Stated),
            "chitchat" => Ok(Kind::Chitchat),
            _ => bail!("unknown probe {s:?}: expected stated or chitchat"),
        }
    }
}

/// In the child: start the cluster, let it settle, measure, stop it, print the probe.
pub async fn child(
    kind: Kind,
    nodes: usize,
    gossip_interval_ms: u64,
    containers: usize,
) -> Result<()> {
    let before = rss_bytes()?;
    // Idle: a few gossip rounds, and long enough for stated's idle sync connections to close.
    let quiet = Duration::from_millis(3 * gossip_interval_ms) + stated::sync::CONNECTION_LINGER;
    let (after, with_containers) = match kind {
        Kind::Stated => {
            let (cluster, _) = subject::start(nodes, gossip_interval_ms).await?;
            tokio::time::sleep(quiet).await;
            let after = rss_bytes()?;
            subject::containers(&cluster, containers).await?;
            tokio::time::sleep(quiet).await;
            let with = rss_bytes()?;
            subject::shutdown(cluster).await;
            (after, with)
        }
        Kind::Chitchat => {
            let cluster = reference::RefCluster::start(nodes, gossip_interval_ms).await?;
            tokio::time::sleep(quiet).await;
            let after = rss_bytes()?;
            cluster.containers(containers).await?;
            tokio::time::sleep(quiet).await;
            let with = rss_bytes()?;
            cluster.shutdown().await;
            (after, with)
        }
    };
    let probe = Probe {
        nodes,
        before,
        after,
        containers,
        with_containers,
    };
    println!("{}", serde_json::to_string(&probe)?);
    Ok(())
}

/// In the parent: run the child, bounded by `deadline` (the child is killed past it).
pub async fn measure(
    kind: Kind,
    nodes: usize,
    gossip_interval_ms: u64,
    containers: usize,
    deadline: Duration,
) -> Result<Probe> {
    let exe = std::env::current_exe().context("locating this benchmark's executable")?;
    let child = tokio::process::Command::new(exe)
        .args(["--rss-probe", kind.as_str()])
        .args(["--nodes", &nodes.to_string()])
        .args(["--gossip-ms", &gossip_interval_ms.to_string()])
        .args(["--containers", &containers.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the memory probe")?;
    let out = tokio::time::timeout(deadline, child.wait_with_output())
        .await
        .with_context(|| format!("the {} memory probe took over {deadline:?}", kind.as_str()))??;
    if !out.status.success() {
        bail!("the {} memory probe failed: {}", kind.as_str(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("reading the probe's output {line:?}"))
}

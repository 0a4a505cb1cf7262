//! Test support: the in-process harness lives in `uncloud_testkit::cluster` (the private D-Bus daemon
//! in `uncloud-testkit`); this adds logging.
#![allow(dead_code)]

pub use uncloud_testkit::cluster::*;
pub use uncloud_testkit::init_tracing;

/// Starts `n` nodes with test logging on.
pub async fn cluster(n: usize) -> Cluster {
    init_tracing();
    Cluster::start(n).await
}

/// Like [`cluster`], with `tune` applied to every node's config.
pub async fn cluster_with(n: usize, tune: impl Fn(&mut stated::config::Config)) -> Cluster {
    init_tracing();
    Cluster::start_with(n, tune).await
}

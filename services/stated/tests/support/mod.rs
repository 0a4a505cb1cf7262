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

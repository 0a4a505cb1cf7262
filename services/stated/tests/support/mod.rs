//! Test support: the in-process harness lives in `stated::testkit` (the private D-Bus daemon
//! in `uncloud-testkit`); this adds logging.
#![allow(dead_code)]

pub use stated::testkit::*;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Starts `n` nodes with test logging on.
pub async fn cluster(n: usize) -> Cluster {
    init_tracing();
    Cluster::start(n).await
}

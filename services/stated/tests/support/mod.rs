//! Test support: the in-process harness lives in `stated::testkit`; this adds logging and a
//! private D-Bus daemon.
#![allow(dead_code)]

pub use stated::testkit::*;

pub mod bus;

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

//! Test harness shared by Uncloud's crates.
//!
//! # Background
//! Uncloud's tests run real components: a real `dbus-daemon`, real TUN devices in network
//! namespaces, real child processes. The helpers for that live here once.
//!
//! # Design
//! - [`bus`]: a private `dbus-daemon` per test and `busctl` against it.
//! - [`netns`]: network namespaces, veth links and a bridge standing in for the internet, all
//!   removed when the test's handles drop (also when it panics).
//! - [`process`]: child processes that are killed when their handle drops.
//! - [`dockerd`]: a real Docker engine per test, in its own namespace and directories.
//! - [`cluster`], [`simnet`]: many `stated` nodes in one process on loopback, through a
//!   network whose links a test cuts and heals (stated's convergence tests, the benchmark).
//! - [`pebble`]: a test ACME CA (pebble and its DNS) on the test internet, for ingress.
//! - [`network`]: a local Uncloud network of machines as namespaces running the real
//!   daemons, and a laptop namespace running `uc` (the harness of every multi-machine test
//!   and of `./scripts/up`).
//!
//! # Limitations
//! Network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN); tests that use them fail
//! loudly without it rather than skip. Nothing here is used outside tests.

pub mod bus;
pub mod cluster;
pub mod dockerd;
pub mod nat;
pub mod netns;
pub mod network;
pub mod pebble;
pub mod process;
pub mod simnet;
pub mod up;

pub use bus::PrivateBus;
pub use dockerd::Dockerd;
pub use nat::Nat;
pub use netns::{Internet, Netns};
pub use process::Daemon;

/// The source folder of the package being tested or run: `$CARGO_MANIFEST_DIR` at run time
/// (cargo sets it for `cargo test` and `cargo run`), else `built_in`, the caller's
/// `env!("CARGO_MANIFEST_DIR")`. Files read at run time must be found this way: unchanged
/// binaries are reused by another clone of the workspace (CI restores source times), and
/// the folder they were built in may be gone.
pub fn manifest_dir(built_in: &str) -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(built_in))
}

/// Test logging (`RUST_LOG`, default `warn`) captured per test; call it from any test.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

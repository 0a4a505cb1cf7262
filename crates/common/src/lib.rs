//! Types shared by Uncloud's daemons and the `uc` CLI.
//!
//! # Background
//! Uncloud is a set of small daemons (`stated`, `meshd`, `dnsd`, …) that talk over D-Bus on one
//! machine and over tarpc between machines. Anything two of them need lives here once, so a
//! daemon never carries a private copy of another's types.
//!
//! # Design
//! - [`address`]: the mesh address plan (one /24 per machine, `10.210.X.1` per machine).
//! - [`model`]: the replicated state (network, machines, services, containers, routes), as plain
//!   serde types. With the `automerge` feature they also map onto an automerge document.
//! - [`conflict`]: the deterministic rules that keep machine names and subnet indices unique after
//!   partitions merge. Pure functions, so every machine computes the same winners.
//! - [`ports`]: a service's published ports (`x-ports` syntax), its only way to say routes.
//! - [`files`]: files services mount (Compose secrets and configs): digests, checks, clean-up.
//! - [`constraint`]: placement constraints on machine names and labels (`node.labels.KEY == V`).
//! - [`claims`]: which service serves a hostname and path, the same on every machine.
//! - [`liveness`]: a machine's view of the others (alive / suspect / down).
//! - [`dbus`]: well-known names, object paths and zbus proxies of the local D-Bus APIs.
//! - [`rpc`]: tarpc services spoken between machines over the mesh.
//! - [`docker`]: types of container operations (images, volumes, stats, logs, exec, errors).
//! - [`nft`]: loading a daemon's own nftables table in one transaction.
//! - [`logging`]: journald or stderr logging, the same in every daemon.
//! - [`config`]: loading a daemon's TOML config with errors that name the file or the key.
//! - [`daemon`]: the `main` every daemon shares (logging, config, `--check-config`, runtime).
//! - [`fail_fast`]: a panic aborts the process (no daemon lives on with a poisoned lock).
//! - [`state_follow`]: following stated's state by change (`Changed`, `GetMany`, `Resync`).
//! - [`watchdog`]: systemd's watchdog, fed only while a probe of the daemon's work succeeds.
//! - [`identity`]: where the machine's TLS key, certificate, setup token and join ticket live
//!   (written by `uncloud-firstboot`, served by `apid`).
//!
//! # Limitations
//! Only what `stated`, `meshd` and `dockerd-shim` need exists so far; other daemons add their
//! interfaces as they arrive.

pub mod address;
pub mod claims;
pub mod config;
pub mod conflict;
pub mod constraint;
pub mod daemon;
pub mod dbus;
pub mod docker;
pub mod durable;
pub mod fail_fast;
pub mod files;
pub mod identity;
pub mod liveness;
pub mod logging;
pub mod model;
pub mod nft;
pub mod ports;
pub mod rpc;
#[cfg(feature = "automerge")]
pub mod service_doc;
pub mod state_follow;
pub mod vips;
pub mod watchdog;

//! `uncloud-api`: what `uc` and apid say to each other, and how `uc` connects.
//!
//! # Background
//! apid is the one public management port of a machine (besides WireGuard). A fresh machine
//! offers only `init`, authenticated by its one-time setup token, over TLS that the user
//! checks by the key fingerprint on the console. A member offers the rest over mutual TLS with
//! client certificates issued by the network's machine CAs.
//!
//! # Design
//! - [`wire`]: one tarpc service, JSON frames (self-describing, so fields added later are
//!   optional and older peers keep working), typed errors with a kind to act on.
//! - [`tls`]: rustls on ring; the pinned-key verifier for maintenance mode and the network-CA
//!   verifier for members.
//! - [`client`]: connect with a timeout; never hangs on an unreachable machine.
//! - [`host`]: what a machine reports about itself (status, journal, mesh peers).
//! - [`peer`]: apid to apid over the mesh, for calls `uc` sends to other machines (`-m`).
//! - [`service`]: services and their containers (`uc run|ls|ps|rm`); the spec is the shared
//!   model's.
//! - [`image`] and [`exec`]: `uc image push` and `uc exec`, bytes in chunks through apid.
//!
//! # Limitations
//! - A call an older apid does not know fails the connection rather than returning a typed
//!   "unsupported" error (tarpc reads the method name as an enum tag).

pub mod client;
pub mod exec;
pub mod host;
pub mod image;
pub mod peer;
pub mod service;
pub mod tls;
pub mod wire;

pub use client::{connect, context, ConnectError};
pub use wire::{ApiClient, ApiError, ErrorKind};

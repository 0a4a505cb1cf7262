//! dnsd: the DNS server of an Uncloud network.
//!
//! # Background
//! Containers find each other by name: a compose project reaches its database as plain `db`.
//! Docker's embedded DNS knows only the containers of one machine; an Uncloud network spans
//! many, and its state (machines, services, containers, who is reachable) lives in stated.
//!
//! # Design
//! - [`names`] (pure) builds every name of the `internal` zone from one machine's view of the
//!   state, and resolves a name for an asker: a container's own project wins for bare service
//!   names; only running, healthy containers on machines this machine sees reachable answer.
//! - [`answer`] (pure) decides the reply to one question: authoritative from the zone
//!   (NXDOMAIN vs NODATA with the SOA, PTR for the mesh range, refusals), or forward.
//! - [`cache`] (pure) keeps forwarded answers by TTL; [`forward`] asks the upstreams.
//! - [`server`] is dnsd's request handler (header checks: one question, EDNS version, only
//!   loopback and the mesh may ask) behind hickory-server's TCP listeners and [`udp`], dnsd's
//!   own UDP listeners, which take datagrams in batches and answer the common question from
//!   [`fast`] (pure: bytes in, bytes out) without decoding it.
//! - [`mirror`] keeps the view up to date from stated's `Changed` signals (only the ids that
//!   changed are read) and `LivenessChanged`; [`dbus`] shows what is served
//!   (`org.uncloud.Dns1`); [`resolved`] points the machine's own resolver at dnsd for
//!   `internal`; [`vip`] balances the services' virtual addresses in nftables; [`daemon`]
//!   wires it all.
//! - [`cli`]: the command line and entry point, run by the binary and by the image's
//!   multi-call executable.
//!
//! # Limitations
//! - A virtual address balances new connections only: one open to a container that stops
//!   stays until it ends (see [`vip`]).
//! - IPv6: the mesh is IPv4, so every name has A records only (AAAA is NODATA).

pub mod answer;
pub mod cache;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dbus;
pub mod fast;
pub mod forward;
pub mod mirror;
pub mod names;
pub mod resolved;
pub mod server;
pub mod udp;
pub mod vip;

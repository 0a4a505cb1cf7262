//! `stated`: the replicated state of an Uncloud network.
//!
//! # Background
//! Uncloud has no control plane. Every machine holds the whole state (machines, services,
//! containers, routes), any machine accepts writes, and each side of a partition keeps working;
//! when the partition heals, everything converges. `stated` is the daemon that makes that true
//! on each machine; the other daemons read and write through its D-Bus API.
//!
//! # Design
//! - [`document`]: one automerge document per network behind typed accessors; every machine
//!   starts from the same deterministic genesis change. It holds what people change
//!   (machines, services, clients, removals).
//! - [`tables`]: the containers, outside the document: one table per machine, versioned by
//!   its only writer, passed between machines as deltas beside the automerge sync, with no
//!   history kept (decision 0014).
//! - [`persist`]: each change is appended to a redb store (crate `uncloud-docstore`) before a
//!   write is acknowledged; group commit, periodic compaction, salvage of a damaged file. The
//!   tables' rows go to a second file (`containers.redb`) through the same writer.
//! - [`sync`]: automerge's sync protocol over tarpc/TCP, and the tables' deltas in the same
//!   rounds; a write is pushed to live peers at once.
//! - [`gossip`]: chitchat over UDP for membership, liveness and heads; a peer with heads we lack
//!   is pulled from (anti-entropy), so missed pushes and healed partitions converge.
//! - [`replica`]: what the node's tasks share ([`Shared`]): the document, its store writer,
//!   change announcements, and the conflict loop (uniqueness of machine names and subnets by
//!   `uncloud_common::conflict`, applied after every merge by the losing machine itself;
//!   settling concurrent deploys of a service). [`peers`] keeps the sync workers, [`node`]
//!   starts and stops everything. Module dependencies run one way: gossip, sync and the mesh
//!   listener use the replica; the replica knows none of them.
//! - [`errors`], [`clock`]: why a start or a write failed; the wall clock in ms.
//! - [`dbus`]: `org.uncloud.State1`; [`links`]: the seam where tests cut the network (the
//!   in-process harness itself lives in `uncloud_testkit::{cluster, simnet}`).
//! - [`cli`]: the command line and entry point, run by the binary and by the image's
//!   multi-call executable.
//!
//! # Limitations
//! - Gossip and sync listen on the machine's mesh address ([`mesh_listener`]), so they work
//!   only once meshd has configured it; a fresh machine listens nowhere.
//! - A write is durable locally when acknowledged; it reaches other machines when they are
//!   reachable. Concurrent writes of the same field resolve last-writer-wins (automerge); a
//!   service's spec is one such field.
//! - Certificates and DNS extras are not in the model yet.

pub mod cli;
pub mod clock;
pub mod config;
pub mod dbus;
pub mod document;
pub mod errors;
pub mod gossip;
pub mod identity;
pub mod links;
pub mod liveness;
pub mod membership;
pub mod mesh_listener;
pub mod mesh_peers;
pub mod node;
pub mod peers;
pub mod persist;
pub mod replica;
pub mod sync;
pub mod tables;

pub use errors::{StartError, WriteError};
pub use membership::{Membership, MembershipError};
pub use node::Node;
pub use replica::{Admission, Event, Shared};

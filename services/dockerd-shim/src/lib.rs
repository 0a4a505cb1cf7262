//! `dockerd-shim`: the only process that talks to the Docker engine.
//!
//! # Background
//! Every machine runs its containers with Debian's docker.io. The shim turns requests from
//! anywhere in the network into containers on its machine and keeps the replicated state true
//! to what really runs.
//!
//! # Design
//! - [`config`]: the config file, `/etc/uncloud/dockerd-shim.toml`.
//! - [`engine`]: the bollard connection, API version negotiated down to the engine's, and
//!   [`engine::Local`], what both APIs act through; [`refusal`]: the engine's status and
//!   message when it refuses, below every module that calls it (no module cycles).
//! - [`spec`]: a service spec as a Docker create request (API 1.41 fields only). Pure.
//! - [`containers`]: create-and-start (never half-made), stop, restart, remove, inspect.
//! - [`dbus`]: `org.uncloud.Docker1`, container operations for other daemons and busctl.
//! - [`exec`]: a command in a container with stdin, stdout, stderr, TTY and resize.
//! - [`images`]: pull with progress, load a `docker save` tarball in chunks, list, remove.
//! - [`logs`]: a container's logs, both streams, to two writers (file descriptors on D-Bus);
//!   or a page of lines with their times (`LogLines`, what `uc logs` reads through apid).
//! - [`mirror`]: engine events and periodic resyncs written into the replicated state.
//! - [`drain`]: a running container leaves its service's addresses for a while before it is
//!   removed.
//! - [`files`]: the files a service mounts (Compose secrets and configs), read from the state
//!   by digest, written for each container and bind-mounted read-only.
//! - [`stats`]: a container's CPU, memory and network use.
//! - [`volumes`]: named volumes: create, list, inspect, remove (never while in use).
//! - [`network`]: the `uncloud` bridge network on this machine's mesh subnet; planned by a
//!   pure function, created or repaired.
//! - [`cli`]: the command line and entry point, run by the binary and by the image's
//!   multi-call executable.
//!
//! - [`remote`]: `ContainerOps` over tarpc on the mesh address, for other machines; with
//!   [`streams`] (logs, exec, pull progress that outlive one call) and [`uploads`] (image
//!   tarballs arriving in chunks).
//! - [`firewall`]: the mesh into the bridge (Docker's `DOCKER-USER`), masquerade beyond the
//!   mesh, no spoofed container sources.
//! - [`renumbering`]: the daemon restarts when this machine moves to another subnet.
//!
//! # Limitations
//! - Remote streams are polled (`stream_read` waits up to 5 s per call): tarpc has no server
//!   streaming. Output is never lost, but an interactive remote exec pays a round trip per
//!   read.
//! - An exec whose stream is closed early keeps running in the container; Docker cannot kill
//!   an exec.
//! - Only IPv4 inside the mesh, like the address plan.

pub mod cli;
pub mod config;
pub mod containers;
pub mod dbus;
pub mod drain;
pub mod engine;
pub mod exec;
pub mod files;
pub mod firewall;
pub mod images;
pub mod logs;
pub mod mirror;
pub mod network;
pub mod refusal;
pub mod remote;
pub mod renumbering;
pub mod spec;
pub mod stats;
pub mod streams;
pub mod uploads;
pub mod volumes;

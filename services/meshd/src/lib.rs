//! `meshd`: joins machines into one WireGuard mesh.
//!
//! # Background
//! Every machine gets `10.210.X.1/32` on a userspace WireGuard TUN device (`uncloud`) and
//! routes the whole mesh CIDR through it; containers on `10.210.X.0/24` reach every other
//! machine's containers without NAT. There is no coordination server: peers (public key,
//! subnet, endpoints) come from the replicated state that `stated` serves on D-Bus, and meshd
//! publishes its own key and endpoints there.
//!
//! # Design
//! - [`config`]: the config file, `/etc/uncloud/meshd.toml`.
//! - [`keys`]: the key pair, created once and stored 0600.
//! - [`plan`]: the peers to have, from the state; bogus entries refused with a reason. Pure.
//! - [`endpoint`]: which of a peer's endpoints to use, as a pure function over time (after
//!   Talos KubeSpan): a new endpoint gets a while to complete a handshake, then the next one is
//!   tried; an established peer is down after a long silence and rotation resumes.
//! - [`path`]: direct or through a relay, and back to direct when a probe answers. Pure.
//! - [`relay`]: relaying ciphertext through a third machine and probing direct paths, on the
//!   WireGuard port, as a layer around gotatun's UDP socket.
//! - [`wg`]: the gotatun device on the TUN device.
//! - [`mesh`]: keeps the device's peers equal to the plan, peer by peer, and drives the
//!   endpoint timelines; reports peers up and down.
//! - [`netconf`]: the TUN's address, MTU and mesh route; advertisable local addresses.
//! - [`firewall`]: the nftables table `inet uncloud_mesh`.
//! - [`dbus`]: the D-Bus API, `org.uncloud.Mesh1`.
//! - [`daemon`]: the wiring.
//! - [`cli`]: the command line and entry point, run by the binary and by the image's
//!   multi-call executable.
//!
//! # Limitations
//! - No hole punching beyond what WireGuard's roaming gives: two machines behind NATs talk
//!   through a relay unless one of them is reachable directly.
//! - IPv4 mesh addresses only (endpoints may be IPv6).

pub mod cli;
pub mod config;
pub mod daemon;
pub mod dbus;
pub mod endpoint;
pub mod firewall;
pub mod keys;
pub mod mesh;
pub mod netconf;
pub mod path;
pub mod plan;
pub mod relay;
pub mod wg;

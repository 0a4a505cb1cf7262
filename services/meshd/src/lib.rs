//! `meshd`: joins machines into one WireGuard mesh.
//!
//! # Background
//! Every machine gets `10.210.X.1/32` on a userspace WireGuard TUN device and routes the whole
//! mesh CIDR through it; containers on `10.210.X.0/24` reach every other machine's containers
//! without NAT. Peers (public key, subnet, endpoints) come from the replicated state.
//!
//! # Design
//! - [`endpoint`]: which of a peer's endpoints to use, as a pure function over time (after
//!   Talos KubeSpan): a new endpoint gets a while to complete a handshake, then the next one is
//!   tried; an established peer is down after a long silence and rotation resumes.
//!
//! # Limitations
//! In progress (issue 3): the TUN device, the WireGuard implementation, the D-Bus API and the
//! firewall are not here yet; only the endpoint selection logic is.

pub mod endpoint;

//! `apid`: a machine's management API, the one public port besides WireGuard.
//!
//! # Background
//! An appliance has no shell to log in to: people manage it with `uc` over the network. A
//! fresh machine must be claimable only by whoever holds its console's setup token, and a
//! member only by holders of client certificates of its network.
//!
//! # Design
//! - [`api`]: what each call does for a [`Caller`](caller::Caller) ([`caller`]); transport-free.
//! - [`server`]: TLS on [`uncloud_api::wire::PORT`], one tarpc channel of JSON frames per
//!   connection; the caller comes from the TLS session.
//! - [`tls`]: the two faces. **Maintenance mode** (stated says `fresh`): the identity key
//!   firstboot made, whose fingerprint the console shows; only `init` is served, with the
//!   one-time setup token ([`token`]: constant-time compare, backoff after failures).
//!   **Member mode**: a certificate from the machine's own CA ([`credentials`], decision
//!   0009); client certificates carry the role (`admin`, `reader`).
//! - Client certificates are recorded in the state (`clients`) when issued; a revocation
//!   marks the record, and every apid refuses the serial once the mark reaches it
//!   ([`revocation`] decides what `uc cert revoke X` names).
//! - [`fanout`]: `uc -m`: calls for other machines, forwarded over the mesh to their apid's
//!   peer port; [`peer_server`] serves that port (7949 on the mesh address; only machines of
//!   the state get in).
//! - [`host`]: the machine itself for `uc machine status|logs|reboot` (the appliance has no
//!   shell): `/proc`, `statvfs`, `systemctl show`, `journalctl --output=json`.
//! - [`services`]: `uc run|rm|ls|ps`: [`placement`] (pure) picks the machines, the service
//!   goes into the state, and each chosen machine's dockerd-shim starts a container
//!   ([`engines`]: this machine's over D-Bus, another's over the mesh).
//! - [`update`]: `uc deploy` of a changed service and `uc rollback`: [`rollout`] (pure)
//!   plans the replacements and judges each new container (healthy, or running through the
//!   monitor period); a failure rolls the previous spec back out.
//! - [`reconcile`]: each machine, every 10 s, starts its own container of each global service
//!   it lacks (machines that join later) and removes its containers whose service is gone.
//! - [`drain`]: `uc machine drain|enable`: the mark in the state, then each service with
//!   containers on the machine rolled out again elsewhere (successors ready before removal).
//! - [`files`]: contents of Compose secrets and configs, stored in the state by digest before
//!   the specs that name them; a run or update naming a content not there is refused; the
//!   reconciler removes contents no spec has named for an hour.
//! - [`push`]: `uc image push`: a tarball in chunks to every target machine's shim at once.
//! - [`exec`]: `uc exec`: a command in a container on any machine, its input, output and
//!   terminal size relayed by this machine (sessions long-polled by the client).
//! - [`control`]: `uc stop|start|restart`; [`engine_calls`]: `uc logs` pages, volumes and
//!   images, answered by this machine's shim for `call` and `fan_out`.
//! - [`change`]: what `uc machine rename|label|role` writes, checked before anything is.
//! - `init` asks stated to create the network, makes the CA, issues an admin certificate for
//!   the public key the client sent (its private key never leaves the client), then consumes
//!   the token. Until the token is consumed the same token may retry, so a crash half-way
//!   never locks the user out.
//! - [`cli`]: the command line and entry point, run by the binary and by the image's
//!   multi-call executable.
//!
//! - [`dbus`]: `org.uncloud.Api1` on the system bus: the mode, the network, who is
//!   connected ([`connections`]).
//!
//! # Limitations
//! - `uc machine logs -f` and `uc logs -f` ask again every second (no server push).
//! - Nothing reschedules the containers of a machine that died; an update through one
//!   machine refuses a second update of the same service through it, but two machines may
//!   update one service at once (the state keeps one spec; the next deploy settles).

pub mod api;
pub mod caller;
pub mod change;
pub mod cli;
pub mod config;
pub mod connections;
pub mod control;
pub mod credentials;
pub mod dbus;
pub mod drain;
pub mod engine_calls;
pub mod engines;
pub mod exec;
pub mod fanout;
pub mod files;
pub mod host;
pub mod peer_server;
pub mod placement;
pub mod push;
pub mod reconcile;
pub mod redeemed;
pub mod revocation;
pub mod rollout;
pub mod server;
pub mod services;
pub mod tls;
pub mod token;
pub mod update;

pub use api::Apid;
pub use config::Config;

//! Compose files for `uc deploy`: a `compose.yaml` (and the `.env` beside it) read the way
//! `docker compose` reads it, turned into Uncloud service specs.
//!
//! # Background
//!
//! People arrive with Compose files. `uc deploy` runs them across the machines of a network,
//! so it must read them as Docker does (interpolation, `.env`, list-or-map forms, string or
//! list commands) and be honest about the rest: a key that cannot be honoured is either
//! harmless to ignore (a warning that says why) or would change what the service does if
//! ignored (an error that says what to do instead). Either way the message names the key and
//! its line.
//!
//! # Design
//!
//! - [`yaml`]: the document as a tree of nodes that keep their line, from `yaml-rust2`'s event
//!   parser, with aliases and merge keys resolved and a bound on depth and size.
//! - [`interpolate`]: `${VAR}` in all its forms and `.env` / `env_file` parsing.
//! - [`project`]: the Compose keys to [`uncloud_common::model::ServiceSpec`]s, the project
//!   name, named volumes under the project's name, services ordered by `depends_on`.
//! - `secrets:` and `configs:` (in `project`'s `files` module): contents read from their
//!   files or variables here and named in the spec by digest ([`Project::files`]).
//! - [`units`]: CPU, size and duration values, shared with `uc run`'s flags.
//!
//! Pure: reading the file and its `.env` is the only I/O; nothing here talks to a network.
//!
//! # Limitations
//!
//! Relative binds are uploaded as read-only files (the folder is on this computer, the
//! container on another machine), so a container cannot write to them.
//!
//! Not yet: `build` (images come from a registry), `external` secrets and configs,
//! `privileged`,
//! `devices`, `extends`, Compose's `!reset` and
//! `!override` tags, several files with `-f a -f b`.

pub mod interpolate;
pub mod project;
pub mod units;
pub mod yaml;

pub use project::{
    load, ComposeService, Dependency, Diagnostic, LoadError, Options, Project, UpdateConfig,
};

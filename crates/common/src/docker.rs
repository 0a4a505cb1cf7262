//! Container operations' types, shared by dockerd-shim's D-Bus and tarpc APIs and their callers.
//!
//! On D-Bus they travel as JSON; over tarpc as MessagePack with named fields
//! ([`crate::rpc::MsgPack`]). A field added later must be optional (`Option` or
//! `#[serde(default)]`) so that messages of older peers still decode.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An image on a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub id: String,
    pub tags: Vec<String>,
    pub size_bytes: u64,
}

/// A named volume on a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub driver: String,
    pub mountpoint: String,
    pub labels: BTreeMap<String, String>,
}

/// A container's resource use over the engine's ~1 s sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSummary {
    /// Percent of one CPU (200 = two full cores).
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    /// 0 when unlimited (the engine reports the host's memory then).
    pub memory_limit_bytes: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub pids: u64,
}

/// One step of an image pull, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullProgress {
    /// Layer id, empty for messages about the whole image.
    pub layer: String,
    /// "Pulling fs layer", "Downloading", "Pull complete", …
    pub status: String,
    pub current: u64,
    pub total: u64,
}

/// Which log lines of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsRequest {
    /// Keep streaming new lines until the container stops or the reader goes away.
    pub follow: bool,
    /// Only lines since this Unix time (seconds); 0 for all.
    pub since_secs: i32,
    /// Only the last N lines; `None` for all.
    pub tail: Option<u32>,
}

/// A command to run in a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    /// A pseudo-terminal: output comes as one stream (on stdout), and the size can be set.
    pub tty: bool,
    /// Pass input to the command (its stdin closes when the input ends).
    pub stdin: bool,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
}

/// What kind of failure, so a caller can react without parsing the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Malformed input or an invalid spec field.
    InvalidArgument,
    /// No such container, image, volume or stream.
    NotFound,
    /// The image is not on the machine.
    NoImage,
    /// The name is taken, or the thing is in use.
    Conflict,
    /// The engine refused or is unreachable.
    Engine,
    /// The caller is not allowed: another network, not a machine, or no `hello` yet.
    Refused,
    /// Too many open streams or uploads; try again later.
    Busy,
    /// The machine could not be reached, or the connection broke.
    Unreachable,
}

/// A failed container operation: a kind to branch on and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct OpsError {
    pub kind: ErrorKind,
    pub message: String,
}

impl OpsError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        OpsError {
            kind,
            message: message.into(),
        }
    }
}

/// Which output stream a chunk of bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// What one read of a remote stream (logs, exec, pull progress) returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOutput {
    /// Output in the order it was produced.
    pub chunks: Vec<(StreamKind, Vec<u8>)>,
    /// Set once the stream has ended; no more output follows.
    pub end: Option<StreamEnd>,
}

/// How a remote stream ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEnd {
    /// An exec's exit code; `None` for logs and pulls.
    pub exit_code: Option<i64>,
    /// Why the stream ended early, if it did.
    pub error: Option<OpsError>,
}

//! `uc image push`: an image from the client's Docker to machines' engines, through the
//! connected machine's apid, without a registry. The tarball of `docker save` travels in
//! chunks (`push_chunk`, base64 in the JSON frames) that apid passes on to every target
//! machine's dockerd-shim at once; the engine loads it only once it is whole
//! (`push_end`), so an interrupted push loads nothing. Added in API version 7.

use serde::{Deserialize, Serialize};

/// Raw bytes in one `push_chunk`: base64 of it stays well under the 4 MiB frame.
pub const PUSH_CHUNK_BYTES: usize = 1024 * 1024;

/// `push_begin`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PushBegin {
    /// Machine names or ids; `all` for every machine.
    pub machines: Vec<String>,
    /// The image, for logs and messages (`app:1`).
    pub image: String,
    /// The tarball's size, when known, for progress; 0 when not.
    pub size: u64,
}

/// What `push_begin` started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PushStarted {
    /// The upload's id, for `push_chunk` and `push_end`.
    pub upload: u64,
    /// The machines the upload goes to, by name.
    pub machines: Vec<String>,
    /// Machines it cannot go to, and why (unknown, unreachable).
    pub failed: Vec<crate::service::MachineFailure>,
}

/// `push_chunk`: the next bytes of the tarball.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PushChunk {
    pub upload: u64,
    /// Where these bytes start in the tarball: a chunk that does not follow the last one is
    /// refused (nothing is skipped or written twice).
    pub offset: u64,
    /// At most [`PUSH_CHUNK_BYTES`] bytes, base64 (standard alphabet, padded).
    pub data: String,
}

/// How far each machine is, after a chunk or at the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PushProgress {
    pub machines: Vec<MachinePush>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MachinePush {
    pub machine: String,
    /// Bytes its engine has taken.
    pub bytes: u64,
    /// The `name:tag`s its engine loaded (at the end).
    pub loaded: Vec<String>,
    /// Why it stopped taking the image; it loaded nothing then.
    pub error: String,
}

/// `push_end` and `push_abort`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PushRef {
    pub upload: u64,
}

//! `uc exec`: a command in a running container on any machine, through the connected
//! machine's apid. `exec_begin` starts it (by the container's machine's dockerd-shim) and
//! opens a session on the connected apid; `uc` then reads its output with `exec_read` (a long
//! poll, so output arrives as it is written) while it sends input with `exec_write` and
//! terminal sizes with `exec_resize` on the same connection, and ends with `exec_end`. Bytes
//! travel as base64 in the JSON frames. Added in API version 9.

use serde::{Deserialize, Serialize};

/// Most raw output bytes one `exec_read` returns (base64 of it stays well under a frame).
pub const EXEC_READ_BYTES: usize = 512 * 1024;
/// Most raw input bytes one `exec_write` may carry.
pub const EXEC_WRITE_BYTES: usize = 512 * 1024;
/// Longest an `exec_read` waits for output.
pub const EXEC_MAX_WAIT_MS: u32 = 10_000;

/// `exec_begin`: which container, and what to run in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecBegin {
    /// The machine that runs the container (name or id).
    pub machine: String,
    /// The container's id (or name) on that machine.
    pub container: String,
    /// The command and its arguments; empty is an error.
    pub command: Vec<String>,
    /// A pseudo-terminal: output comes as one stream, and `exec_resize` sets its size.
    pub tty: bool,
    /// Pass input to the command; without it the command's stdin is closed at once.
    pub stdin: bool,
    /// `KEY=VALUE` pairs added to the container's environment.
    pub env: Vec<String>,
    /// Run as this user (`name`, `uid`, `uid:gid`) instead of the container's.
    pub user: Option<String>,
    /// Run in this directory instead of the container's.
    pub working_dir: Option<String>,
    /// The terminal's first size, with `tty` (0 leaves the engine's default).
    pub height: u16,
    pub width: u16,
}

/// What `exec_begin` started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecStarted {
    /// The session's id, for the other `exec_*` calls on the same machine.
    pub session: u64,
}

/// `exec_read`: output written since the last read, waiting up to `wait_ms` for some.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecRead {
    pub session: u64,
    /// At most [`EXEC_MAX_WAIT_MS`].
    pub wait_ms: u32,
}

/// What an `exec_read` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecOutput {
    /// Output in the order it was written: `(true, …)` for stderr, `(false, …)` for stdout;
    /// the bytes base64 (standard alphabet, padded).
    pub chunks: Vec<(bool, String)>,
    /// Set once the command has ended and all its output was read.
    pub end: Option<ExecEnd>,
}

/// How a command ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecEnd {
    /// Its exit code; `None` when the engine could not tell (see `error`).
    pub exit_code: Option<i64>,
    /// Why the session ended without an exit code, if it did.
    pub error: String,
}

/// `exec_write`: input for the command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecWrite {
    pub session: u64,
    /// At most [`EXEC_WRITE_BYTES`] bytes, base64.
    pub data: String,
    /// The input ends after `data` (the command sees end of file).
    pub close: bool,
}

/// `exec_resize`: the terminal's new size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecResize {
    pub session: u64,
    pub height: u16,
    pub width: u16,
}

/// `exec_end`: the client is done (the session's output is dropped; a command still running
/// loses its input and its output).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRef {
    pub session: u64,
}

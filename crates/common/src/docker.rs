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

/// A page of a container's log lines (`uc logs`), each with its time, so a reader that asks
/// again for what came after the last one it saw follows the logs without a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogLinesRequest {
    /// Only lines after this time, in ns since the Unix epoch; 0 for all.
    pub after_ns: i64,
    /// Only the last N lines (of those after `after_ns`); `None` for all.
    pub tail: Option<u32>,
    /// At most this many lines (the oldest first when following); 0 for [`MAX_LOG_LINES`].
    pub limit: u32,
}

/// Most lines one page carries.
pub const MAX_LOG_LINES: u32 = 5_000;

/// One line a container wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogLine {
    /// When the engine got it, in ns since the Unix epoch.
    pub time_ns: i64,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its end of line (invalid UTF-8 replaced).
    pub text: String,
}

/// Splits a line Docker wrote with `timestamps` (`2026-12-05T03:40:00.123456789Z text`) into
/// its time in ns since the Unix epoch and its text.
pub fn split_log_timestamp(line: &str) -> Option<(i64, &str)> {
    let (stamp, text) = line.split_once(' ').unwrap_or((line, ""));
    Some((rfc3339_ns(stamp)?, text))
}

/// Nanoseconds since the Unix epoch of an RFC 3339 UTC time as Docker writes it
/// (`2026-11-25T04:38:54.430206640Z`, the fraction 0 to 9 digits); `None` for anything
/// unreadable or out of `i64`'s range (Docker's "never", `0001-01-01T00:00:00Z`).
pub fn rfc3339_ns(stamp: &str) -> Option<i64> {
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, mo, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(str::parse::<i64>);
    let (h, mi, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>().ok()? * 10i64.pow(9 - frac.len() as u32)
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3_600 + mi * 60 + s;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
mod log_tests {
    use super::*;

    #[test]
    fn docker_timestamps_split_into_nanoseconds_and_text() {
        assert_eq!(
            split_log_timestamp("1970-01-01T00:00:01.5Z hello world"),
            Some((1_500_000_000, "hello world"))
        );
        assert_eq!(
            split_log_timestamp("2026-12-05T03:40:00.123456789Z x"),
            Some((1_796_442_000_123_456_789, "x"))
        );
        assert_eq!(
            split_log_timestamp("2000-03-01T00:00:00Z"),
            Some((951_868_800_000_000_000, ""))
        );
        for bad in [
            "",
            "hello",
            "2026-13-01T00:00:00Z x",
            "2026-12-05T03:40:00.1234567891Z x",
            "2026-12-05 03:40:00Z x",
        ] {
            assert_eq!(split_log_timestamp(bad), None, "{bad}");
        }
    }
}

//! A container's logs, both streams, copied to two writers (on D-Bus: two file descriptors
//! the caller passes, so a `uc logs -f` is a plain stream with no polling).

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use bollard::Docker;
use futures::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::containers::{engine, ContainerError};

pub use uncloud_common::docker::LogsRequest;
use uncloud_common::docker::{split_log_timestamp, MAX_LOG_LINES};
pub use uncloud_common::docker::{LogLine, LogLinesRequest};

/// Copies the logs of `container` to `stdout` and `stderr` (container output to the
/// matching writer). Ends when the logs end (or, following, when the container stops) or when
/// a writer is closed by its reader; returns the bytes written.
pub async fn copy<O, E>(
    docker: &Docker,
    container: &str,
    req: &LogsRequest,
    mut stdout: O,
    mut stderr: E,
) -> Result<u64, ContainerError>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let mut logs = docker.logs(
        container,
        Some(LogsOptions {
            follow: req.follow,
            stdout: true,
            stderr: true,
            since: req.since_secs,
            tail: req
                .tail
                .map_or_else(|| "all".to_string(), |n| n.to_string()),
            ..Default::default()
        }),
    );
    let mut written = 0u64;
    while let Some(item) = logs.next().await {
        let item = item.map_err(|e| engine("read the logs of", container, e))?;
        let result = match &item {
            LogOutput::StdErr { message } => stderr.write_all(message).await,
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                stdout.write_all(message).await
            }
            LogOutput::StdIn { .. } => Ok(()),
        };
        match result {
            Ok(()) => written += item.as_ref().len() as u64,
            // The reader went away (`uc logs -f` interrupted): not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            Err(e) => {
                return Err(ContainerError::Engine {
                    what: "pass on the logs of",
                    name: container.to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }
    let _ = stdout.flush().await;
    let _ = stderr.flush().await;
    Ok(written)
}

/// A page of `container`'s log lines with their times (`uc logs`, `-f` asks again with the
/// last time it saw). Bounded: at most `req.limit` lines (the oldest first), or the last
/// `req.tail`.
pub async fn lines(
    docker: &Docker,
    container: &str,
    req: &LogLinesRequest,
) -> Result<Vec<LogLine>, ContainerError> {
    let limit = match req.limit {
        0 => MAX_LOG_LINES,
        n => n.min(MAX_LOG_LINES),
    } as usize;
    let mut logs = docker.logs(
        container,
        Some(LogsOptions {
            follow: false,
            stdout: true,
            stderr: true,
            timestamps: true,
            // Whole seconds: the lines of the same second before `after_ns` are dropped here.
            since: i32::try_from(req.after_ns.max(0) / 1_000_000_000).unwrap_or(i32::MAX),
            tail: req
                .tail
                .map_or_else(|| "all".to_string(), |n| n.to_string()),
            ..Default::default()
        }),
    );
    let mut out: Vec<LogLine> = Vec::new();
    while let Some(item) = logs.next().await {
        let item = item.map_err(|e| engine("read the logs of", container, e))?;
        let (stream, message) = match &item {
            LogOutput::StdErr { message } => ("stderr", message),
            LogOutput::StdOut { message } | LogOutput::Console { message } => ("stdout", message),
            LogOutput::StdIn { .. } => continue,
        };
        let text = String::from_utf8_lossy(message);
        for line in text.lines() {
            let Some((time_ns, text)) = split_log_timestamp(line) else {
                continue;
            };
            if time_ns <= req.after_ns {
                continue;
            }
            out.push(LogLine {
                time_ns,
                stream: stream.into(),
                text: text.to_string(),
            });
            // Following: the oldest `limit`, the rest next time. Tail: Docker bounded it.
            if req.tail.is_none() && out.len() >= limit {
                return Ok(out);
            }
        }
    }
    let from = out.len().saturating_sub(limit);
    Ok(out.split_off(from))
}

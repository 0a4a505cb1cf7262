//! A container's logs, both streams, copied to two writers (on D-Bus: two file descriptors
//! the caller passes, so a `uc logs -f` is a plain stream with no polling).

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use bollard::Docker;
use futures::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::containers::{engine, ContainerError};

pub use uncloud_common::docker::LogsRequest;

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

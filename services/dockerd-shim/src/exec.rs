//! Running a command in a container: stdin, stdout and stderr streamed, optionally on a TTY
//! that can be resized, and the exit code afterwards.

use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::ResizeExecOptions;
use bollard::Docker;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::containers::{engine, ContainerError};

pub use uncloud_common::docker::ExecRequest;

/// Creates the exec instance; returns its id (needed to resize it or read its exit code).
pub async fn create(
    docker: &Docker,
    container: &str,
    req: &ExecRequest,
) -> Result<String, ContainerError> {
    if req.cmd.is_empty() {
        return Err(ContainerError::Spec(crate::spec::SpecError {
            field: "command",
            value: String::new(),
            why: "must not be empty",
        }));
    }
    let created = docker
        .create_exec(
            container,
            ExecConfig {
                attach_stdin: Some(req.stdin),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(req.tty),
                env: (!req.env.is_empty()).then(|| req.env.clone()),
                cmd: Some(req.cmd.clone()),
                user: req.user.clone(),
                working_dir: req.working_dir.clone(),
                // ConsoleSize is API 1.42: never sent; resize instead.
                ..Default::default()
            },
        )
        .await
        .map_err(|e| engine("exec in", container, e))?;
    Ok(created.id)
}

/// Starts exec `id` and pumps the streams until the command ends; returns its exit code.
pub async fn run<I, O, E>(
    docker: &Docker,
    container: &str,
    id: &str,
    tty: bool,
    stdin: Option<I>,
    mut stdout: O,
    mut stderr: E,
) -> Result<i64, ContainerError>
where
    I: AsyncRead + Unpin + Send + 'static,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let started = docker
        .start_exec(
            id,
            Some(StartExecOptions {
                detach: false,
                tty,
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| engine("start exec in", container, e))?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        return Err(ContainerError::Engine {
            what: "attach to exec in",
            name: container.to_string(),
            reason: "the engine detached".into(),
        });
    };
    let feeder = stdin.map(|mut r| {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut r, &mut input).await;
            let _ = input.shutdown().await;
        })
    });
    while let Some(item) = output.next().await {
        let item = item.map_err(|e| engine("read exec output in", container, e))?;
        let result = match &item {
            LogOutput::StdErr { message } => stderr.write_all(message).await,
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                stdout.write_all(message).await
            }
            LogOutput::StdIn { .. } => Ok(()),
        };
        if result.is_err() {
            break; // the reader went away
        }
    }
    let _ = stdout.flush().await;
    let _ = stderr.flush().await;
    if let Some(f) = feeder {
        f.abort();
    }
    let inspected = docker
        .inspect_exec(id)
        .await
        .map_err(|e| engine("inspect exec in", container, e))?;
    Ok(inspected.exit_code.unwrap_or(-1))
}

/// Sets the TTY size of a running exec.
pub async fn resize(
    docker: &Docker,
    id: &str,
    height: u16,
    width: u16,
) -> Result<(), ContainerError> {
    docker
        .resize_exec(
            id,
            ResizeExecOptions {
                h: height.into(),
                w: width.into(),
            },
        )
        .await
        .map_err(|e| engine("resize exec", id, e))
}

/// The exit code of a finished exec; `None` while it runs.
pub async fn exit_code(docker: &Docker, id: &str) -> Result<Option<i64>, ContainerError> {
    let i = docker
        .inspect_exec(id)
        .await
        .map_err(|e| engine("inspect exec", id, e))?;
    Ok(if i.running == Some(true) {
        None
    } else {
        i.exit_code
    })
}

//! `uc exec`: a command in one of a service's containers, on whichever machine runs it, with
//! this terminal's input, output, size and the command's exit code.
//!
//! The connected machine's apid relays the session (`exec_begin`, then `exec_read` long
//! polls while `exec_write` and `exec_resize` go alongside on the same connection). With a
//! terminal (`-t`) this one is put in raw mode, so keys like Ctrl-C reach the command, and
//! restored however `uc` ends.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use uncloud_api::exec::{ExecBegin, ExecRead, ExecRef, ExecResize, ExecWrite, EXEC_WRITE_BYTES};
use uncloud_api::service::ServiceRow;

use uncloud_api::ApiClient;

use crate::context::Store;
use crate::remote::{self, answer};
use crate::Global;

/// The API version that has `exec_*`.
pub const EXEC_API: u32 = 9;

/// `uc exec SERVICE[/CONTAINER] [COMMAND…]`.
#[derive(Debug, clap::Args)]
pub struct Exec {
    /// The service (`web`, `web.shop`): one of its running containers; or one container as
    /// `SERVICE/CONTAINER` (a prefix of its name will do).
    #[arg(value_name = "SERVICE[/CONTAINER]")]
    pub target: String,
    /// The command and its arguments; an interactive `sh` when none is given.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
    /// Pass this terminal's input to the command (implied without a COMMAND).
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the command a terminal (implied without a COMMAND when this is a terminal).
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable for the command.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Run as this user (`name`, `uid` or `uid:gid`).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Run in this directory.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
}

/// The container to run in: `(machine id, container id, its name)`. `SERVICE` takes its first
/// running container; `SERVICE/CONTAINER` that one, running or not (the engine says). Pure.
fn pick(rows: &[ServiceRow], target: &str) -> anyhow::Result<(String, String, String)> {
    let sources = crate::logs::sources(rows, &[target.to_string()])?;
    let state = |id: &str| {
        rows.iter()
            .flat_map(|r| &r.containers)
            .find(|c| c.id == id)
            .map(|c| (c.state.clone(), c.machine_state.clone()))
            .unwrap_or_default()
    };
    if target.contains('/') {
        let s = sources.into_iter().next().context("no such container")?;
        return Ok((s.machine_id, s.id, s.name));
    }
    let running = sources
        .iter()
        .find(|s| state(&s.id) == ("running".to_string(), "alive".to_string()))
        .or_else(|| sources.iter().find(|s| state(&s.id).0 == "running"));
    match running {
        Some(s) => Ok((s.machine_id.clone(), s.id.clone(), s.name.clone())),
        None => bail!("{target} has no running container (see `uc ps`)"),
    }
}

/// The command to run and whether it gets input and a terminal, from what was asked and
/// whether this is a terminal. Pure.
fn plan(cmd: &Exec, terminal: bool) -> (Vec<String>, bool, bool) {
    if cmd.command.is_empty() {
        return (vec!["sh".into()], true, cmd.tty || terminal);
    }
    (cmd.command.clone(), cmd.interactive, cmd.tty)
}

/// This terminal's size (rows, columns), if stdout is one.
fn terminal_size() -> Option<(u16, u16)> {
    // SAFETY: `winsize` is plain integers; TIOCGWINSZ fills it and reads nothing else.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is to a live `winsize`, which is what TIOCGWINSZ writes.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// This terminal in raw mode while it lives: keys go to the command as typed.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = self.0.take() {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                &saved,
            );
        }
    }
}

/// Runs the command; returns its exit code.
pub async fn exec(cmd: Exec, g: &Global) -> anyhow::Result<i32> {
    let terminal = std::io::stdin().is_terminal();
    let (command, interactive, tty) = plan(&cmd, terminal);
    if tty && !terminal {
        bail!("-t needs a terminal, and this input is not one (leave -t out, or use -i)");
    }
    let store = Store::default_location();
    let ctx = store.load(g.context.as_deref())?;
    let (member, via) = remote::member(&ctx, g).await?;
    remote::require_api(&member, &via, EXEC_API).await?;
    let rows = remote::services(&member).await?;
    let (machine, container, name) = pick(&rows, &cmd.target)?;
    let (height, width) = if tty {
        terminal_size().unwrap_or((0, 0))
    } else {
        (0, 0)
    };
    let started = answer(
        member
            .exec_begin(
                uncloud_api::context(Duration::from_secs(30)),
                ExecBegin {
                    machine,
                    container,
                    command,
                    tty,
                    stdin: interactive,
                    env: cmd.env.clone(),
                    user: cmd.user.clone(),
                    working_dir: cmd.workdir.clone(),
                    height,
                    width,
                },
            )
            .await,
    )
    .with_context(|| format!("exec in {name}"))?;
    let session = started.session;
    let raw = tty.then(RawMode::enter);
    if interactive {
        tokio::spawn(send_input(member.clone(), session));
    }
    if tty {
        tokio::spawn(send_sizes(member.clone(), session));
    }
    let ended = relay_output(&member, session).await;
    drop(raw);
    let _ = member
        .exec_end(
            uncloud_api::context(Duration::from_secs(5)),
            ExecRef { session },
        )
        .await;
    let end = ended?;
    match end.exit_code {
        Some(code) => Ok(i32::try_from(code).unwrap_or(1)),
        None => bail!(
            "the command in {name} ended without an exit code: {}",
            end.error
        ),
    }
}

/// Prints the command's output as it comes until it ends.
async fn relay_output(
    member: &ApiClient,
    session: u64,
) -> anyhow::Result<uncloud_api::exec::ExecEnd> {
    let b64 = base64::engine::general_purpose::STANDARD;
    loop {
        let out = answer(
            member
                .exec_read(
                    uncloud_api::context(Duration::from_secs(20)),
                    ExecRead {
                        session,
                        wait_ms: 5_000,
                    },
                )
                .await,
        )?;
        for (stderr, data) in out.chunks {
            let bytes = b64.decode(data).context("output that is not base64")?;
            // At once: a prompt without an end of line must show.
            let mut to: Box<dyn Write> = if stderr {
                Box::new(std::io::stderr().lock())
            } else {
                Box::new(std::io::stdout().lock())
            };
            let _ = to.write_all(&bytes).and_then(|()| to.flush());
        }
        if let Some(end) = out.end {
            return Ok(end);
        }
    }
}

/// This terminal's input to the command, until it ends (then the command's input ends).
async fn send_input(member: ApiClient, session: u64) {
    use tokio::io::AsyncReadExt;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; EXEC_WRITE_BYTES.min(64 * 1024)];
    loop {
        let n = stdin.read(&mut buf).await.unwrap_or(0);
        let write = ExecWrite {
            session,
            data: b64.encode(&buf[..n]),
            close: n == 0,
        };
        let sent = member
            .exec_write(uncloud_api::context(Duration::from_secs(20)), write)
            .await;
        if n == 0 || !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
}

/// The terminal's size each time it changes.
async fn send_sizes(member: ApiClient, session: u64) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut changes) = signal(SignalKind::window_change()) else {
        return;
    };
    while changes.recv().await.is_some() {
        if let Some((height, width)) = terminal_size() {
            let _ = member
                .exec_resize(
                    uncloud_api::context(Duration::from_secs(10)),
                    ExecResize {
                        session,
                        height,
                        width,
                    },
                )
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use uncloud_api::service::ContainerRow;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        exec: Exec,
    }

    fn parse(args: &[&str]) -> Exec {
        Cli::try_parse_from(std::iter::once("uc").chain(args.iter().copied()))
            .unwrap()
            .exec
    }

    #[test]
    fn the_command_keeps_its_own_flags_and_a_shell_is_the_default() {
        let e = parse(&["-i", "web", "ls", "-l", "/"]);
        assert!(e.interactive);
        assert_eq!(
            plan(&e, true),
            (vec!["ls".into(), "-l".into(), "/".into()], true, false)
        );
        let e = parse(&["web"]);
        assert_eq!(plan(&e, true), (vec!["sh".into()], true, true));
        assert_eq!(plan(&e, false), (vec!["sh".into()], true, false));
        let e = parse(&["-u", "root", "web", "--", "env"]);
        assert_eq!(e.user.as_deref(), Some("root"));
        assert_eq!(e.command, ["env"]);
    }

    #[test]
    fn a_service_means_a_running_container_of_it() {
        let row = |state: &str, name: &str, machine_state: &str| ContainerRow {
            id: format!("id-{name}"),
            name: name.into(),
            machine: "m".into(),
            machine_id: "mid".into(),
            state: state.into(),
            machine_state: machine_state.into(),
            ..Default::default()
        };
        let rows = vec![ServiceRow {
            id: "web".into(),
            name: "web".into(),
            containers: vec![
                row("exited", "web-1", "alive"),
                row("running", "web-2", "down"),
                row("running", "web-3", "alive"),
            ],
            ..Default::default()
        }];
        assert_eq!(pick(&rows, "web").unwrap().2, "web-3");
        assert_eq!(pick(&rows, "web/web-1").unwrap().2, "web-1");
        let none = vec![ServiceRow {
            containers: vec![row("exited", "web-1", "alive")],
            ..rows[0].clone()
        }];
        let err = pick(&none, "web").unwrap_err().to_string();
        assert!(err.contains("no running container"), "{err}");
        assert!(pick(&rows, "nope").is_err());
    }
}

//! A root shell in a test VM, over a virtio serial port: what `succeed`/`fail` run commands
//! with, as the NixOS test driver's backdoor does.
//!
//! The image has no login and no SSH, and ships no shell service: a test asks for one in the
//! VM's user-data ([`user_data`], cloud-init's `bootcmd`, run on every boot), which is what
//! its owner can do on any machine. The guest side is `sh` reading the port; the host side
//! is the Unix socket QEMU listens on ([`crate::Machine::shell_port`]).
//!
//! Each command travels base64-encoded (no quoting), runs with stdin from `/dev/null` (so
//! it cannot eat the next command), stderr into stdout, and ends with a marker line that
//! carries its exit status.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::machine::SHELL_PORT;

/// The cloud-config lines that start the shell on every boot (a transient unit, restarted
/// when the host side goes away). Add them to the VM's user-data.
///
/// `--no-block` and no default dependencies: `bootcmd` runs in `cloud-init.service`, which
/// comes before `sysinit.target`, which a default unit would wait for. The port is opened
/// once, read-write (`<>`): the virtio console driver refuses a second open.
pub fn user_data() -> String {
    let port = format!("/dev/virtio-ports/{SHELL_PORT}");
    format!(
        "bootcmd:\n  - [systemd-run, --no-block, --unit=uncloud-test-shell, \
         --property=DefaultDependencies=no, --property=Restart=always, \
         --property=RestartSec=1, --property=StartLimitIntervalSec=0, /bin/sh, -c, \
         \"exec /bin/sh <>{port} >&0 2>&1\"]\n"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("the test shell's socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("the test shell: {0}")]
    Io(#[from] std::io::Error),
    #[error("the test shell gave no answer to `{command}` within {secs} s; it printed:\n{output}")]
    Timeout {
        command: String,
        secs: u64,
        output: String,
    },
    #[error("the test shell closed while running `{command}`; it printed:\n{output}")]
    Closed { command: String, output: String },
}

/// The line sent for `command`, and the marker its output ends with (`<marker> <status>`).
pub fn framed(command: &str, nonce: u64) -> (String, String) {
    let marker = format!("__uncloud_test_shell_{nonce:016x}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(command);
    // The newline before the marker puts it on a line of its own after output with none.
    let line =
        format!("sh -c \"$(echo {b64} | base64 -d)\" </dev/null 2>&1; echo \"\n{marker} $?\"\n");
    (line, marker)
}

/// Where `line` is `marker`'s: the exit status it carries.
pub fn status_of(line: &str, marker: &str) -> Option<i32> {
    line.trim_end().strip_prefix(marker)?.trim().parse().ok()
}

/// A connection to one VM's test shell.
pub struct Shell {
    stream: BufReader<UnixStream>,
}

/// One marker per command of this process, across connections: a command that timed out
/// may still print its marker on the next connection, which must not be taken for another's.
fn next_nonce() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let _ = NEXT.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Shell {
    /// Connects to the socket QEMU listens on, waiting up to `timeout` for it to appear.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Shell, ShellError> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => {
                    return Ok(Shell {
                        stream: BufReader::new(stream),
                    })
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(ShellError::Connect {
                        path: path.display().to_string(),
                        source: e,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Runs `command` in the guest's `sh`; its exit status and output (stdout and stderr).
    /// A guest not yet serving its shell (still booting) is waited for up to `timeout`.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(i32, String), ShellError> {
        let (line, marker) = framed(command, next_nonce());
        self.stream.get_mut().write_all(line.as_bytes())?;
        let deadline = Instant::now() + timeout;
        let mut output = String::new();
        let mut buf = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ShellError::Timeout {
                    command: command.to_owned(),
                    secs: timeout.as_secs(),
                    output: output + &String::from_utf8_lossy(&buf),
                });
            }
            self.stream.get_ref().set_read_timeout(Some(left))?;
            // `buf` holds a line until it is whole: a read that times out mid-line keeps
            // what it got there, and the next one goes on from it.
            match self.stream.read_until(b'\n', &mut buf) {
                Ok(0) => {
                    output.push_str(&String::from_utf8_lossy(&buf));
                    return Err(ShellError::Closed {
                        command: command.to_owned(),
                        output,
                    });
                }
                Ok(_) if buf.ends_with(b"\n") => {
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    buf.clear();
                    if let Some(status) = status_of(&text, &marker) {
                        // The newline the marker's echo put before it.
                        if output.ends_with('\n') {
                            output.pop();
                        }
                        return Ok((status, output));
                    }
                    output.push_str(&text);
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What this host's sh prints for the very line the guest's sh would read.
    fn host_sh(line: &str) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(line)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn a_framed_command_runs_in_sh_and_reports_its_status_after_its_output() {
        let (line, marker) = framed("echo 'a b' | wc -w; exit 3", 7);
        let text = host_sh(&line);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, ["2", "", &format!("{marker} 3")], "{text}");
        assert_eq!(status_of(lines[2], &marker), Some(3));
        assert_eq!(status_of("2", &marker), None);
        assert_eq!(status_of(&format!("{marker}x 1"), &marker), None);
    }

    #[test]
    fn quotes_and_newlines_in_a_command_need_no_escaping() {
        let (line, _) = framed("printf '%s\\n' \"$((1+1))\" '\"'\necho done", 1);
        let text = host_sh(&line);
        assert!(text.starts_with("2\n\"\ndone\n"), "{text}");
    }

    #[test]
    fn the_user_data_starts_the_shell_on_the_named_port_every_boot() {
        let ud = user_data();
        assert!(ud.starts_with("bootcmd:\n"), "{ud}");
        assert!(
            ud.contains("<>/dev/virtio-ports/org.uncloud.test-shell >&0"),
            "{ud}"
        );
        assert!(ud.contains("--no-block"), "{ud}");
        assert!(ud.contains("Restart=always"), "{ud}");
    }
}

//! `uc` as a user on the host runs it against a VM: its own config directory, the VM's apid
//! through a port QEMU forwards on the host's loopback.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The `uc` built beside this test or benchmark (`target/debug/uc`), or `$UNCLOUD_UC`.
/// Missing fails with what to build; it never skips.
pub fn uc_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("UNCLOUD_UC") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the process knows its path");
    // A benchmark: target/debug/e2e-bench → target/debug/uc; a test:
    // target/debug/deps/image_network-… → target/debug/uc.
    let dir = exe.parent().expect("a directory");
    let uc = [dir.join("uc"), dir.join("../uc")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "no uc beside {}: build it first (cargo build -p uc)",
                exe.display()
            )
        });
    uc
}

pub struct Uc {
    bin: PathBuf,
    config: tempfile::TempDir,
    /// `HOST:PORT` of the machine every command talks to; `None`: the context's endpoints.
    pub endpoint: Option<String>,
    /// The network namespace `uc` runs in (a "laptop" on the VMs' segment); `None`: the
    /// host's.
    netns: Option<String>,
}

impl Uc {
    /// `uc` on the host, talking to `endpoint` only.
    pub fn new(endpoint: &str) -> Uc {
        Uc {
            bin: uc_binary(),
            config: tempfile::tempdir().expect("a temporary directory"),
            endpoint: Some(endpoint.to_string()),
            netns: None,
        }
    }

    /// `uc` in the network namespace `name`, using its contexts' endpoints.
    pub fn in_netns(name: &str) -> Uc {
        Uc {
            bin: uc_binary(),
            config: tempfile::tempdir().expect("a temporary directory"),
            endpoint: None,
            netns: Some(name.to_string()),
        }
    }

    /// `uc ARGS` with this client's contexts and endpoint, to run as the caller likes (more
    /// environment: `DOCKER_HOST` for `uc image push`).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.args(args)
            .env("UNCLOUD_CONFIG_DIR", self.config.path())
            .env_remove("UNCLOUD_CONTEXT");
        match &self.endpoint {
            Some(e) => cmd.env("UNCLOUD_ENDPOINT", e),
            None => cmd.env_remove("UNCLOUD_ENDPOINT"),
        };
        cmd
    }

    /// Runs `uc ARGS` with this client's contexts and endpoint.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("uc runs")
    }

    /// `uc ARGS`, killed as soon as `stop` is set: `None` then. A write in a stream through a
    /// machine whose power was just cut would otherwise wait out uc's call timeout (60 s)
    /// for an answer that cannot come; killed, it counts as not acknowledged, which it was
    /// not.
    pub fn run_unless(&self, args: &[&str], stop: &AtomicBool) -> Option<Output> {
        // Output into files, not pipes: a pipe nobody reads while uc runs could fill and
        // hold uc until the stop.
        let mut stdout = tempfile::tempfile().expect("a temporary file");
        let mut stderr = tempfile::tempfile().expect("a temporary file");
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().expect("a second handle"))
            .stderr(stderr.try_clone().expect("a second handle"))
            .spawn()
            .expect("uc runs");
        let status = loop {
            if let Some(status) = child.try_wait().expect("uc can be waited for") {
                break status;
            }
            if stop.load(Ordering::Relaxed) {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let read = |f: &mut std::fs::File| {
            let mut all = Vec::new();
            f.seek(SeekFrom::Start(0))
                .and_then(|_| f.read_to_end(&mut all))
                .expect("uc's output");
            all
        };
        Some(Output {
            status,
            stdout: read(&mut stdout),
            stderr: read(&mut stderr),
        })
    }

    /// `uc ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "uc {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `uc ARGS -o json`, parsed; `None` when it fails (for waiting until it works).
    pub fn try_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.run(&all);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// `uc ARGS -o json`, which must succeed, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("uc {}: {e}: {out}", args.join(" ")))
    }
}

/// A TCP port on the host's loopback that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A client whose "uc" is another program, to see what `run_unless` does with it.
    fn client_running(program: &str) -> Uc {
        Uc {
            bin: PathBuf::from(program),
            config: tempfile::tempdir().expect("a temporary directory"),
            endpoint: None,
            netns: None,
        }
    }

    #[test]
    fn run_unless_kills_the_call_when_stopped() {
        let uc = client_running("sleep");
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                stop.store(true, Ordering::Relaxed);
            });
            assert!(
                uc.run_unless(&["30"], &stop).is_none(),
                "stopped: no output"
            );
        });
        // Killed, not waited out: far less than the 30 s it would take.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn run_unless_takes_more_output_than_a_pipe_holds() {
        let uc = client_running("head");
        let stop = AtomicBool::new(false);
        let out = uc
            .run_unless(&["-c", "300000", "/dev/zero"], &stop)
            .expect("not stopped");
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), 300_000);
    }

    #[test]
    fn run_unless_returns_what_finished() {
        let uc = client_running("sh");
        let stop = AtomicBool::new(false);
        let out = uc
            .run_unless(&["-c", "echo ok; echo no >&2; exit 3"], &stop)
            .expect("not stopped");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"ok\n");
        assert_eq!(out.stderr, b"no\n");
    }
}

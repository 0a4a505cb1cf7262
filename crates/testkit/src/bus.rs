//! A private D-Bus daemon per test, and `busctl` against it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateBus {
    child: Child,
    pub address: String,
    _dir: tempfile::TempDir,
}

impl PrivateBus {
    /// Starts `dbus-daemon --session` on a socket in a temp dir. Panics (never skips) when
    /// dbus-daemon is missing: the README's test command installs it.
    pub fn start() -> PrivateBus {
        let dir = tempfile::tempdir().unwrap();
        let socket: PathBuf = dir.path().join("bus");
        let address = format!("unix:path={}", socket.display());
        let child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address={address}"))
            .stdout(Stdio::null())
            .spawn()
            .expect("dbus-daemon is required for this test (apt-get install dbus)");
        let start = Instant::now();
        // The socket file appears at bind(), a moment before the daemon listens: wait until a
        // connection is accepted, or an early client gets "connection refused".
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "dbus-daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        PrivateBus {
            child,
            address,
            _dir: dir,
        }
    }

    /// Runs `busctl --address=… ARGS`; returns (success, stdout, stderr).
    pub fn busctl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args(args)
            .output()
            .expect("busctl is required for this test (apt-get install systemd)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .build()
            .await
            .unwrap()
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

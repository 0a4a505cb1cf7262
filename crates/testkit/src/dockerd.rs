//! A real Docker engine per test: Debian's docker.io with its own data root, exec root and
//! socket, in a network namespace of its own so its bridges and iptables rules never touch
//! the host. Stopped, unmounted and deleted when the handle drops.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{Daemon, Netns};

pub struct Dockerd {
    daemon: Option<Daemon>,
    pub socket: PathBuf,
    pub ns: Netns,
    dir: tempfile::TempDir,
}

impl Dockerd {
    /// Starts dockerd in a namespace of its own and waits until it answers. Panics (never
    /// skips) if docker.io is not installed: the README's test command installs it.
    pub fn start() -> Dockerd {
        let ns = Netns::new("docker");
        // A new namespace starts with the host's ip_forward (devconf_inherit_init_net 0);
        // where something on the host turned it on, dockerd would leave FORWARD open. As on a
        // fresh machine, then: Docker turns it on itself and sets FORWARD's policy to DROP.
        let out = ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=0"]);
        assert!(out.status.success(), "sysctl in {}: {out:?}", ns.name());
        Dockerd::start_in(ns)
    }

    /// Starts dockerd in `ns` (a machine's namespace: [`Netns::share`]).
    pub fn start_in(ns: Netns) -> Dockerd {
        let dir = tempfile::Builder::new()
            .prefix("ucd")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("docker.sock");
        let mut d = Dockerd {
            daemon: None,
            socket,
            ns,
            dir,
        };
        d.spawn();
        d
    }

    /// The engine's address for a docker CLI: `DOCKER_HOST=…`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        let root = self.dir.path();
        // nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroup
        // hierarchies dockerd needs.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns.name()))
            .arg("dockerd")
            .arg(format!("--data-root={}", root.join("data").display()))
            .arg(format!("--exec-root={}", root.join("exec").display()))
            .arg(format!("--pidfile={}", root.join("dockerd.pid").display()))
            .arg(format!("--host=unix://{}", self.socket.display()));
        self.daemon = Some(Daemon::spawn("dockerd", cmd, root.join("dockerd.log")));
        let start = Instant::now();
        loop {
            if self
                .docker(&["version", "--format", "{{.Server.APIVersion}}"])
                .status
                .success()
            {
                return;
            }
            let running = self.daemon.as_mut().is_some_and(|d| d.is_running());
            if !running || start.elapsed() > Duration::from_secs(60) {
                panic!(
                    "dockerd did not start (apt-get install docker.io):\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// `docker -H unix://<socket> ARGS`.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("the docker CLI is required (apt-get install docker.io)")
    }

    /// Like [`Dockerd::docker`], panicking with docker's error on failure; returns stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops dockerd (SIGTERM; it stops its containers) and starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops dockerd, SIGKILL after 30 s.
    pub fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(30));
        }
    }

    /// Imports a busybox-static root filesystem as image `tag`: no registry is needed.
    pub fn import_busybox(&self, tag: &str) {
        self.import_busybox_with(tag, &[]);
    }

    /// [`Dockerd::import_busybox`] with Dockerfile instructions applied to the image
    /// (`docker import --change`), e.g. an `ENTRYPOINT` that stands in for a real image's.
    pub fn import_busybox_with(&self, tag: &str, changes: &[&str]) {
        self.import_busybox_padded(tag, changes, 0);
    }

    /// [`Dockerd::import_busybox_with`] plus a file `/pad` of `pad_bytes` random bytes: an
    /// image as big as a test needs.
    pub fn import_busybox_padded(&self, tag: &str, changes: &[&str], pad_bytes: usize) {
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.exists(),
            "/bin/busybox is required (apt-get install busybox-static)"
        );
        self.import_busybox_binary(tag, busybox, None, changes, pad_bytes);
    }

    /// Imports an arm64 busybox-static root filesystem as image `tag`, for an arm64 machine:
    /// `busybox` is the arm64 executable (Debian's `busybox-static:arm64`, unpacked).
    pub fn import_busybox_arm64(&self, tag: &str, busybox: &Path) {
        assert!(busybox.exists(), "{} is missing", busybox.display());
        self.import_busybox_binary(tag, busybox, Some("linux/arm64"), &[], 0);
    }

    /// A root filesystem of `busybox` and its applets as image `tag`, of `platform` (this
    /// machine's when `None`).
    fn import_busybox_binary(
        &self,
        tag: &str,
        busybox: &Path,
        platform: Option<&str>,
        changes: &[&str],
        pad_bytes: usize,
    ) {
        let root = self.dir.path().join("busybox-root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "sleep", "echo", "cat", "ls", "nc", "wget", "true", "false", "hostname", "id",
            "ps", "kill", "env", "ip", "ping", "httpd", "yes", "head", "touch", "mkdir", "rm",
            "test", "[", "nslookup", "stat",
        ] {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        let pad = root.join("pad");
        if pad_bytes > 0 {
            let mut random = std::fs::File::open("/dev/urandom").unwrap();
            let mut file = std::fs::File::create(&pad).unwrap();
            let copied = std::io::copy(&mut (&mut random).take(pad_bytes as u64), &mut file);
            assert_eq!(copied.unwrap(), pad_bytes as u64);
        } else {
            let _ = std::fs::remove_file(&pad);
        }
        let tar = self.dir.path().join("busybox.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(status.success());
        let mut args = vec!["import"];
        for change in changes {
            args.extend(["--change", change]);
        }
        if let Some(platform) = platform {
            args.extend(["--platform", platform]);
        }
        args.extend([tar.to_str().unwrap(), tag]);
        self.docker_ok(&args);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Kill the test's containers first: a shell as PID 1 ignores SIGTERM, and dockerd
        // would wait 10 s for each.
        if self.daemon.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
        self.stop();
        // Whatever dockerd left mounted under its roots (overlays, netns bind mounts).
        let root = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&root))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
    }
}

//! A local Uncloud network: machines as network namespaces on one "internet" bridge, each
//! with its own D-Bus daemon and the real `stated`, `meshd`, `apid` and `dnsd` processes, set up by
//! the real `uncloud-firstboot`, and a "laptop" namespace on the same bridge where `uc` runs.
//! Nothing is joined for you: tests (and `./scripts/up`) form the network with `uc` exactly
//! as a user would.
//!
//! A machine's files live under its own root directory (`<root>/etc/uncloud`,
//! `<root>/var/lib/uncloud/...`), laid out as on the image.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::{Daemon, Dockerd, Internet, Netns, PrivateBus};

/// The Uncloud programs a network runs, found next to each other in a cargo target dir.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    /// The directory holding `any_binary` (for example `env!("CARGO_BIN_EXE_apid")`).
    pub fn beside(any_binary: &str) -> Binaries {
        let dir = Path::new(any_binary)
            .parent()
            .expect("a binary has a directory")
            .to_owned();
        Binaries { dir }
    }

    /// The path of `name`; panics (never skips) when it was not built.
    pub fn get(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        assert!(
            p.exists(),
            "{} is missing: build every binary first (`cargo build --workspace --bins`)",
            p.display()
        );
        p
    }
}

/// The "internet" the machines share: 198.18.0.0/24 (a range reserved for network tests,
/// RFC 2544), chosen so that plugging the host in (`./scripts/up`) cannot clash with a
/// documentation range the host itself may use.
pub const INTERNET_PREFIX: &str = "198.18.0";

/// The "internet" address of machine `i` (0-based).
pub fn public_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + i as u8)
}

/// One machine. Field order is drop order: daemons stop before the bus and the namespace go.
pub struct LocalMachine {
    pub apid: Option<Daemon>,
    pub ingressd: Option<Daemon>,
    pub dnsd: Option<Daemon>,
    pub shim: Option<Daemon>,
    pub docker: Option<Dockerd>,
    pub meshd: Option<Daemon>,
    pub stated: Option<Daemon>,
    pub bus: PrivateBus,
    pub ns: Netns,
    pub root: tempfile::TempDir,
    pub name: String,
    pub public_ip: Ipv4Addr,
    bins: Binaries,
    /// Lines added to ingressd's config (the ACME directory a test gives).
    ingressd_extra: String,
    /// libfaketime's timestamp file when this machine's clock is off (see
    /// [`LocalNetwork::boot_with_clock`]).
    clock: Option<PathBuf>,
}

/// Where Debian's libfaketime keeps the preload library (the multi-threaded variant: the
/// daemons are).
fn libfaketime() -> PathBuf {
    PathBuf::from(format!(
        "/usr/lib/{}-linux-gnu/faketime/libfaketimeMT.so.1",
        std::env::consts::ARCH
    ))
}

/// Gives `cmd` the machine's clock: `offset` in libfaketime's syntax (`-730d`, `+0`), read
/// from `file` at most once a second, so that [`LocalMachine::set_clock`] moves it while the
/// daemons run, as time sync does. Monotonic clocks are left alone (timers keep working).
fn with_clock(cmd: &mut Command, file: &Path) {
    let lib = libfaketime();
    assert!(
        lib.exists(),
        "{} is missing: install libfaketime (scripts/test does)",
        lib.display()
    );
    cmd.env("LD_PRELOAD", lib)
        .env("FAKETIME_TIMESTAMP_FILE", file)
        .env("FAKETIME_CACHE_DURATION", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
}

impl LocalMachine {
    /// Sets this machine's clock offset (libfaketime syntax: `+0` is the right time). Only
    /// for a machine booted with [`LocalNetwork::boot_with_clock`].
    pub fn set_clock(&self, offset: &str) {
        let file = self.clock.as_ref().expect("booted with boot_with_clock");
        std::fs::write(file, format!("{offset}\n")).unwrap();
        // libfaketime reads the file again within a second.
        std::thread::sleep(Duration::from_millis(1500));
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn identity(&self, file: &str) -> PathBuf {
        self.root().join("var/lib/uncloud/identity").join(file)
    }

    /// The one-time setup token, as the console shows it.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.identity("setup-token"))
            .map(|t| t.trim().to_string())
            .unwrap_or_default()
    }

    /// The console banner, as `uncloud-firstboot banner` shows it on this machine (its
    /// addresses are the namespace's).
    pub fn banner(&self) -> String {
        let out = self
            .ns
            .command(self.bins.get("uncloud-firstboot"))
            .args(["banner", "--wait", "0", "--stdout", "--root"])
            .arg(self.root())
            .output()
            .expect("uncloud-firstboot runs");
        assert!(
            out.status.success(),
            "uncloud-firstboot banner: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The value of the banner line `key: value`.
    fn banner_line(&self, key: &str) -> String {
        let banner = self.banner();
        banner
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
            .unwrap_or_else(|| panic!("no {key:?} line in the banner of {}:\n{banner}", self.name))
            .to_string()
    }

    /// The fingerprint of apid's maintenance key, as the console shows it.
    pub fn fingerprint(&self) -> String {
        self.banner_line("fingerprint")
    }

    /// `uc machine VERB` (`init`, `add`) for this fresh machine, copied from the command its
    /// console shows, as a user would.
    pub fn enrol(&self, verb: &str) -> Vec<String> {
        let key = match verb {
            "init" => "new network",
            "add" => "or join one",
            _ => panic!("the banner shows init and add, not {verb}"),
        };
        let line = self.banner_line(key);
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        assert_eq!(words[..3], ["uc", "machine", verb], "{line}");
        words[1..].to_vec()
    }

    /// This machine's id (stated's `MachineId`).
    pub fn machine_id(&self) -> String {
        let (ok, out, err) = self.busctl(&[
            "get-property",
            "org.uncloud.State1",
            "/org/uncloud/State1",
            "org.uncloud.State1",
            "MachineId",
        ]);
        assert!(ok, "MachineId of {}: {err}", self.name);
        out.trim()
            .strip_prefix("s ")
            .unwrap_or_default()
            .trim_matches('"')
            .to_string()
    }

    /// Whether this machine's stated sees machine `id` alive.
    pub fn sees_alive(&self, id: &str) -> bool {
        let (ok, out, _) = self.busctl(&[
            "--json=short",
            "call",
            "org.uncloud.State1",
            "/org/uncloud/State1",
            "org.uncloud.State1",
            "Liveness",
        ]);
        ok && serde_json::from_str::<serde_json::Value>(&out)
            .is_ok_and(|v| v["data"][0][id] == "alive")
    }

    /// `apid` address on the internet.
    pub fn api(&self) -> String {
        format!("{}:7443", self.public_ip)
    }

    pub fn busctl(&self, args: &[&str]) -> (bool, String, String) {
        self.bus.busctl(args)
    }

    /// stated's view of the network (`GetState`), parsed; `None` while fresh.
    pub fn state(&self) -> Option<serde_json::Value> {
        let (ok, out, _) = self.busctl(&[
            "--json=short",
            "call",
            "org.uncloud.State1",
            "/org/uncloud/State1",
            "org.uncloud.State1",
            "GetState",
        ]);
        if !ok {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        serde_json::from_str(v["data"][0].as_str()?).ok()
    }

    /// The machine's mesh address, once it is a member.
    pub fn mesh_ip(&self) -> Option<String> {
        let (ok, out, _) = self.busctl(&[
            "get-property",
            "org.uncloud.Mesh1",
            "/org/uncloud/Mesh1",
            "org.uncloud.Mesh1",
            "Address",
        ]);
        let ip = out.trim().strip_prefix("s ")?.trim_matches('"').to_string();
        (ok && !ip.is_empty()).then_some(ip)
    }

    /// Every daemon's log, for a failing test.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for d in [
            "stated",
            "meshd",
            "apid",
            "dnsd",
            "ingressd",
            "dockerd-shim",
            "firstboot",
        ] {
            let text =
                std::fs::read_to_string(self.root().join(format!("{d}.log"))).unwrap_or_default();
            // A panic's message first: its backtrace would push it out of the tail.
            let lines: Vec<&str> = text.lines().collect();
            for (i, l) in lines.iter().enumerate() {
                if l.contains("panicked at") {
                    out += &format!(
                        "----- {} {d} PANIC: {}\n",
                        self.name,
                        lines[i..lines.len().min(i + 3)].join(" | ")
                    );
                }
            }
            let tail: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with("  ") && !l.contains("close_notify"))
                .rev()
                .take(60)
                .collect();
            out += &format!("----- {} {d} (last {} lines)\n", self.name, tail.len());
            for l in tail.into_iter().rev() {
                out += l;
                out.push('\n');
            }
        }
        out
    }

    fn spawn(&self, program: &str, config: &str) -> Daemon {
        let path = self.root().join(format!("etc/uncloud/{program}.toml"));
        std::fs::write(&path, config).unwrap();
        let mut cmd = self.ns.command(self.bins.get(program));
        if let Some(clock) = &self.clock {
            with_clock(&mut cmd, clock);
        }
        cmd.arg("--config")
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("UNCLOUD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1");
        Daemon::spawn(
            &format!("{program}-{}", self.name),
            cmd,
            self.root().join(format!("{program}.log")),
        )
    }

    /// Starts the daemons (as systemd would after firstboot).
    pub fn start(&mut self) {
        let root = self.root().display().to_string();
        let bus = self.bus.address.clone();
        self.stated = Some(self.spawn(
            "stated",
            &format!(
                "machine_name = \"{name}\"\ndata_dir = \"{root}/var/lib/uncloud/stated\"\n\
                 bus = \"{bus}\"\ngossip_interval_ms = 300\nsuspect_after_ms = 1500\n",
                name = self.name
            ),
        ));
        self.meshd = Some(self.spawn(
            "meshd",
            &format!(
                "data_dir = \"{root}/var/lib/uncloud/meshd\"\nbus = \"{bus}\"\n\
                 keepalive_secs = 5\nhandshake_timeout_secs = 5\n"
            ),
        ));
        // A harness machine is processes in a namespace, not a kernel: `uc machine reboot`
        // leaves a mark in its root instead (see `LocalMachine::rebooted`).
        self.apid = Some(self.spawn(
            "apid",
            &format!(
                "root = \"{root}\"\ndata_dir = \"{root}/var/lib/uncloud/apid\"\nbus = \"{bus}\"\n\
                 token_backoff_max_secs = 2\nreboot_command = [\"touch\", \"{root}/rebooted\"]\n"
            ),
        ));
        // No upstream in a namespace without internet: names outside `internal` get SERVFAIL.
        self.dnsd = Some(self.spawn(
            "dnsd",
            &format!(
                "bus = \"{bus}\"\nresolv_conf = \"{root}/etc/resolv.conf\"\n\
                 extra_listen = [\"127.0.0.1:53\"]\nresolved_link = \"\"\n"
            ),
        ));
        self.start_ingressd();
        self.start_shim();
    }

    /// Starts ingressd: it listens on :80 and :443 of the namespace once the machine has the
    /// ingress role.
    fn start_ingressd(&mut self) {
        let config = format!(
            "bus = \"{}\"\nheader_timeout_ms = 3000\n{}",
            self.bus.address, self.ingressd_extra
        );
        self.ingressd = Some(self.spawn("ingressd", &config));
    }

    /// Replaces the lines added to this machine's ingressd config; [`Self::restart_ingressd`]
    /// applies them.
    pub fn set_ingressd_extra(&mut self, extra: &str) {
        self.ingressd_extra = extra.to_string();
    }

    /// Stops ingressd (SIGTERM) and starts it again with its config.
    pub fn restart_ingressd(&mut self) {
        if let Some(mut d) = self.ingressd.take() {
            d.stop(Duration::from_secs(15));
        }
        self.start_ingressd();
    }

    /// Restarts dnsd with the config it had (it reads the machine's `etc/resolv.conf` again:
    /// how a test gives it upstream resolvers).
    pub fn restart_dnsd(&mut self) {
        if let Some(mut d) = self.dnsd.take() {
            d.stop(Duration::from_secs(5));
        }
        let path = self.root().join("etc/uncloud/dnsd.toml");
        let config = std::fs::read_to_string(path).expect("dnsd was started before");
        self.dnsd = Some(self.spawn("dnsd", &config));
    }

    /// Starts dockerd-shim when the machine has a dockerd ([`Boot::docker`]).
    fn start_shim(&mut self) {
        let Some(docker) = &self.docker else {
            return;
        };
        // Its own place for containers' files: a shim removes the ones it has no container for.
        let config = format!(
            "docker_socket = \"{}\"\nbus = \"{}\"\nfiles_dir = \"{}\"\n",
            docker.socket.display(),
            self.bus.address,
            self.root()
                .join("var/lib/uncloud/dockerd-shim/files")
                .display()
        );
        self.shim = Some(self.spawn("dockerd-shim", &config));
    }

    /// Whether `uc machine reboot` reached this machine (its apid ran the reboot command).
    pub fn rebooted(&self) -> bool {
        self.root().join("rebooted").exists()
    }

    /// Stops the daemons (SIGTERM); dockerd keeps running, as its containers would.
    pub fn stop(&mut self) {
        for d in [
            &mut self.apid,
            &mut self.ingressd,
            &mut self.dnsd,
            &mut self.shim,
            &mut self.meshd,
            &mut self.stated,
        ] {
            if let Some(mut d) = d.take() {
                d.stop(Duration::from_secs(5));
            }
        }
    }
}

/// How [`LocalNetwork::boot_with`] boots a machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct Boot<'a> {
    /// A pre-seeded join ticket, as cloud-init user-data would leave it.
    pub ticket: Option<&'a str>,
    /// The machine's clock offset from the real time (libfaketime syntax, `-730d`): a
    /// Raspberry Pi without a real-time clock, before time sync. [`LocalMachine::set_clock`]
    /// changes it later.
    pub clock: Option<&'a str>,
    /// Its own dockerd and dockerd-shim: containers on the machine's subnet.
    pub docker: bool,
}

/// Machines, the internet between them, and a laptop running `uc`.
pub struct LocalNetwork {
    pub machines: Vec<LocalMachine>,
    pub laptop: Netns,
    pub internet: Internet,
    /// `uc`'s contexts (`UNCLOUD_CONFIG_DIR`).
    pub uc_config: tempfile::TempDir,
    pub bins: Binaries,
    /// Lines added to every machine's ingressd config from the next boot on (for example
    /// the ACME directory of a [`crate::pebble::Pebble`]).
    pub ingressd_config: String,
}

impl LocalNetwork {
    pub fn new(bins: Binaries) -> LocalNetwork {
        let internet = Internet::new();
        let laptop = Netns::new("laptop");
        internet.attach(&laptop, "eth0", &format!("{INTERNET_PREFIX}.2/24"));
        LocalNetwork {
            machines: Vec::new(),
            laptop,
            internet,
            uc_config: tempfile::tempdir().unwrap(),
            bins,
            ingressd_config: String::new(),
        }
    }

    /// Boots a fresh machine: its namespace on the internet, firstboot (with a pre-seeded
    /// join ticket, as cloud-init user-data would leave it), then its daemons. Returns its
    /// index.
    pub fn boot(&mut self, name: &str, ticket: Option<&str>) -> usize {
        self.boot_with(
            name,
            Boot {
                ticket,
                ..Boot::default()
            },
        )
    }

    /// [`LocalNetwork::boot`] with more of a real machine: see [`Boot`].
    pub fn boot_with(&mut self, name: &str, boot: Boot<'_>) -> usize {
        let Boot {
            ticket,
            clock: offset,
            docker,
        } = boot;
        let i = self.machines.len();
        let ns = Netns::new(name);
        let ip = public_ip(i);
        self.internet.attach(&ns, "eth0", &format!("{ip}/24"));
        let root = tempfile::Builder::new()
            .prefix(&format!("uncloud-{name}-"))
            .tempdir()
            .unwrap();
        if std::env::var_os("UNCLOUD_KEEP").is_some() {
            eprintln!("{name}'s files: {}", root.path().display());
        }
        std::fs::create_dir_all(root.path().join("etc/uncloud")).unwrap();
        if let Some(t) = ticket {
            std::fs::write(root.path().join("etc/uncloud/join-ticket"), t).unwrap();
        }
        let clock = offset.map(|o| {
            let file = root.path().join("faketime");
            std::fs::write(&file, format!("{o}\n")).unwrap();
            file
        });
        let mut firstboot = Command::new(self.bins.get("uncloud-firstboot"));
        if let Some(clock) = &clock {
            with_clock(&mut firstboot, clock);
        }
        let out = firstboot
            .args(["init", "--root"])
            .arg(root.path())
            .output()
            .expect("uncloud-firstboot runs");
        std::fs::write(
            root.path().join("firstboot.log"),
            [&out.stdout[..], &out.stderr[..]].concat(),
        )
        .unwrap();
        assert!(
            out.status.success(),
            "firstboot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let docker = docker.then(|| Dockerd::start_in(ns.share()));
        let mut m = LocalMachine {
            apid: None,
            ingressd: None,
            dnsd: None,
            shim: None,
            docker,
            meshd: None,
            stated: None,
            bus: PrivateBus::start(),
            ns,
            root,
            name: name.to_string(),
            public_ip: ip,
            bins: self.bins.clone(),
            ingressd_extra: self.ingressd_config.clone(),
            clock,
        };
        m.start();
        self.machines.push(m);
        self.wait_for_api(i);
        i
    }

    /// Waits until machine `i`'s apid accepts connections.
    pub fn wait_for_api(&self, i: usize) {
        let addr = std::net::SocketAddr::from((public_ip(i), 7443));
        let start = Instant::now();
        loop {
            let ok = self.laptop.enter(|| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
            });
            if ok {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "apid of {} did not listen within 60 s\n{}",
                self.machines[i].name,
                self.machines[i].logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `uc ARGS` on the laptop, to run as the caller likes (more environment, in the
    /// background).
    pub fn uc_command<S: AsRef<str>>(&self, args: &[S]) -> Command {
        let mut cmd = self.laptop.command(self.bins.get("uc"));
        cmd.args(args.iter().map(|a| a.as_ref()))
            .env("UNCLOUD_CONFIG_DIR", self.uc_config.path())
            .env_remove("UNCLOUD_CONTEXT")
            .env_remove("UNCLOUD_ENDPOINT");
        cmd
    }

    /// Runs `uc ARGS` on the laptop.
    pub fn uc<S: AsRef<str>>(&self, args: &[S]) -> Output {
        self.uc_command(args).output().expect("uc runs")
    }

    /// `uc ARGS` that must succeed; returns its stdout.
    pub fn uc_ok<S: AsRef<str>>(&self, args: &[S]) -> String {
        let out = self.uc(args);
        assert!(
            out.status.success(),
            "uc {} failed: {}\n{}",
            joined(args),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `uc ARGS` that must fail; returns its stderr.
    pub fn uc_fails<S: AsRef<str>>(&self, args: &[S]) -> String {
        let out = self.uc(args);
        assert!(
            !out.status.success(),
            "uc {} succeeded but should have failed: {}",
            joined(args),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Every machine's logs.
    pub fn logs(&self) -> String {
        self.machines.iter().map(|m| m.logs()).collect()
    }

    /// Cuts every link between the machines of `a` and those of `b` (indices), both ways, as
    /// a broken internet would: each drops packets from and to the other side's public
    /// addresses. The laptop still reaches everyone. [`LocalNetwork::heal`] undoes it.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        for (side, other) in [(a, b), (b, a)] {
            let set: Vec<String> = other
                .iter()
                .map(|&i| self.machines[i].public_ip.to_string())
                .collect();
            let set = set.join(", ");
            let rules = format!(
                "table inet {PARTITION_TABLE} {{\n\
                 chain input {{ type filter hook input priority -10; ip saddr {{ {set} }} drop; }}\n\
                 chain output {{ type filter hook output priority -10; ip daddr {{ {set} }} drop; }}\n\
                 }}\n"
            );
            for &i in side {
                let m = &self.machines[i];
                let mut child =
                    m.ns.command("nft")
                        .args(["-f", "-"])
                        .stdin(std::process::Stdio::piped())
                        .spawn()
                        .expect("nft runs");
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(rules.as_bytes())
                    .unwrap();
                assert!(child.wait().unwrap().success(), "partitioning {}", m.name);
            }
        }
    }

    /// Ends every partition.
    pub fn heal(&self) {
        for m in &self.machines {
            // Machines that were in no partition have no table: that error is fine.
            let _ =
                m.ns.exec("nft", &["delete", "table", "inet", PARTITION_TABLE]);
        }
    }

    /// Polls `check` until it is true, or panics after `secs` with every log.
    pub fn wait_until(&self, what: &str, secs: u64, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "not within {secs} s: {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The nftables table a partition lives in.
const PARTITION_TABLE: &str = "uncloud_test_partition";

/// `program ARGS`' stdout if it succeeded, else an error naming the command with its stderr.
pub fn stdout_or_error<S: AsRef<str>>(
    program: &str,
    args: &[S],
    out: &Output,
) -> Result<String, String> {
    if !out.status.success() {
        return Err(format!(
            "{program} {} failed: {}",
            joined(args),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn joined<S: AsRef<str>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref())
        .collect::<Vec<_>>()
        .join(" ")
}

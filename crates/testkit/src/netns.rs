//! Network namespaces as machines, and a bridge namespace as their internet.
//!
//! Every namespace a test creates is named `uct<pid>-<n>-<label>` and deleted when its
//! [`Netns`] drops. Namespaces left behind by a test process that died (kill -9, power loss
//! of the CI runner) are swept the next time any test creates one.

use std::os::fd::AsFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

const PREFIX: &str = "uct";
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `program args`, panicking with its stderr on failure.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (apt-get install iproute2): {e}"));
    if !out.status.success() {
        panic!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes namespaces of test processes that no longer run.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A network namespace; deleted on drop. Processes started in it must be stopped first (a
/// [`crate::Daemon`] declared after the namespace drops before it).
pub struct Netns {
    name: String,
    /// Whether dropping this handle deletes the namespace (false for [`Netns::share`]).
    owned: bool,
}

impl Netns {
    /// Creates a namespace with its loopback up. Panics (never skips) without root.
    pub fn new(label: &str) -> Netns {
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{label}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Another handle to this namespace, which does not delete it when dropped: for a
    /// daemon's helper that lives no longer than the namespace's owner (a machine's dockerd).
    pub fn share(&self) -> Netns {
        Netns {
            name: self.name.clone(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ARGS`; panics with ip's error on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `program args` in the namespace and returns its output, whatever the exit status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.name))
    }

    /// Writes a sysctl under `/proc/sys/net` in this namespace (e.g. `ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/net/{key}");
        let value = value.to_string();
        self.enter(move || std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("cannot set {key} in {}: {e}", self.name));
    }

    /// Runs `f` on a thread that has entered this namespace, so sockets it opens live there.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("cannot enter {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Connects this namespace to `other` with a veth pair and returns nothing; addresses are
    /// the caller's business.
    pub fn veth(&self, ifname: &str, other: &Netns, other_ifname: &str) {
        self.ip(&[
            "link",
            "add",
            ifname,
            "type",
            "veth",
            "peer",
            "name",
            other_ifname,
            "netns",
            &other.name,
        ]);
        self.ip(&["link", "set", ifname, "up"]);
        other.ip(&["link", "set", other_ifname, "up"]);
    }

    /// Adds `cidr` to `ifname`.
    pub fn addr(&self, ifname: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", ifname]);
    }

    /// Whether `ping -c1` from here reaches `ip` within `wait_secs`.
    pub fn ping(&self, ip: &str, wait_secs: u32) -> bool {
        self.exec("ping", &["-c", "1", "-W", &wait_secs.to_string(), ip])
            .status
            .success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A namespace holding one bridge: the "internet" the test's machines are plugged into.
pub struct Internet {
    pub ns: Netns,
    ports: AtomicU32,
}

impl Internet {
    pub fn new() -> Internet {
        let ns = Netns::new("inet");
        ns.ip(&["link", "add", "br0", "type", "bridge"]);
        ns.ip(&["link", "set", "br0", "up"]);
        Internet {
            ns,
            ports: AtomicU32::new(0),
        }
    }

    /// Plugs `machine` into the bridge as `ifname` with address `cidr` (e.g. `192.0.2.1/24`).
    pub fn attach(&self, machine: &Netns, ifname: &str, cidr: &str) {
        let port = format!("port{}", self.ports.fetch_add(1, Ordering::Relaxed));
        self.ns.veth(&port, machine, ifname);
        self.ns.ip(&["link", "set", &port, "master", "br0"]);
        machine.addr(ifname, cidr);
    }
}

impl Internet {
    /// Plugs this host itself (the root namespace) into the bridge as `ifname` with address
    /// `cidr`, so programs on the host reach the machines. Removed with the internet.
    pub fn attach_host(&self, ifname: &str, cidr: &str) {
        let net = cidr.rsplit_once('.').map_or(cidr, |(n, _)| n);
        let routes = run("ip", &["-4", "route"]);
        assert!(
            !routes.contains(&format!("{net}.")),
            "this host already routes {net}.x ({routes}); not plugging it into a test internet there"
        );
        let port = format!("port{}", self.ports.fetch_add(1, Ordering::Relaxed));
        run(
            "ip",
            &[
                "link",
                "add",
                ifname,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &self.ns.name,
            ],
        );
        self.ns.ip(&["link", "set", &port, "master", "br0"]);
        self.ns.ip(&["link", "set", &port, "up"]);
        run("ip", &["addr", "add", cidr, "dev", ifname]);
        run("ip", &["link", "set", ifname, "up"]);
    }
}

impl Default for Internet {
    fn default() -> Self {
        Self::new()
    }
}

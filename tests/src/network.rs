//! A network of VMs from the real image, and the words its tests are told in: boot machines,
//! wait for units, run commands in them, cut and heal links, cut a machine's power.
//!
//! The VMs share one Ethernet segment: each has a tap device on the bridge of the test's
//! "internet" (the namespace harness's `uncloud_testkit::Internet`, 198.18.0.0/24) and a
//! static address from its NoCloud `network-config`. `uc` runs in the "laptop" namespace on
//! the same bridge, as a user's laptop on the internet would. Links are cut at the bridge
//! (nftables' bridge family, by tap device), so a cut is what a broken internet does to the
//! machines: frames between them dropped, the laptop still reaching every one. A lossy link
//! drops a share of them at random there; a far machine's NIC holds its frames a while
//! ([`uncloud_qemu::Machine::link_delay`]). This kernel has no netem: these two stand in.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uncloud_qemu::{Arch, Boot, Machine, SeedDisk, Vm};
use uncloud_testkit::{Internet, Nat, Netns};

use crate::uc::Uc;
use crate::{image, is_status_line, Banner};

/// Bounds a hung boot (several VMs share two cores under TCG), not a slow one.
pub const READY_TIMEOUT: Duration = Duration::from_secs(900);

/// The nftables table (bridge family, in the internet's namespace) cut links live in.
const CUTS_TABLE: &str = "uncloud_e2e_cuts";

/// The test's segment: the bridge, the laptop, and `uc` on the laptop.
pub struct Lan {
    pub internet: Internet,
    pub laptop: Netns,
    pub uc: Uc,
    /// Links cut, as (from tap, to tap): frames from the first to the second are dropped.
    cuts: Mutex<BTreeSet<(String, String)>>,
    /// Lossy links, as (from tap, to tap) and the percentage of frames dropped.
    losses: Mutex<BTreeMap<(String, String), u8>>,
}

/// One VM of the network.
pub struct Node {
    pub name: &'static str,
    /// On the segment, or on its NAT's LAN.
    pub address: Ipv4Addr,
    pub vm: Vm,
    /// Its tap on the segment's bridge; `None` behind a NAT.
    segment_tap: Option<String>,
}

/// Where a VM's cloud-init finds its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datasource {
    /// A `CIDATA` disk (what people use on their own hypervisors).
    NoCloud,
    /// An OpenStack config drive (several VPS providers): the hostname from its metadata.
    ConfigDrive,
}

/// A scenario VM: the amd64 image, one vCPU, the test shell's port.
fn vm_machine(name: &str, boot: Boot) -> Machine {
    let mut machine = Machine::new(name, Arch::Amd64, boot);
    // One vCPU each: several two-vCPU guests on two host cores spin on each other's
    // locks under TCG.
    machine.cpus = 1;
    machine.shell_port = true;
    machine
}

/// The cloud-config of `name`: its hostname, `user_data`, the test shell.
fn with_shell(name: &str, user_data: &str) -> String {
    format!(
        "hostname: {name}\n{user_data}{}",
        uncloud_qemu::shell::user_data()
    )
}

/// A fixed instance uuid per name (a config drive's metadata has one).
fn uuid_of(name: &str) -> String {
    let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
    format!("0b5e3d2c-9a41-4f7e-8d55-{:0>12.12}", hex)
}

/// Starts the VM.
fn start(
    name: &'static str,
    address: Ipv4Addr,
    machine: Machine,
    seed: &SeedDisk,
    segment_tap: Option<String>,
) -> Node {
    let vm =
        Vm::start(&machine, &image("-amd64.qcow2"), Some(seed)).unwrap_or_else(|e| panic!("{e}"));
    Node {
        name,
        address,
        vm,
        segment_tap,
    }
}

impl Default for Lan {
    fn default() -> Lan {
        Lan::new()
    }
}

impl Lan {
    pub fn new() -> Lan {
        let internet = Internet::new();
        let laptop = Netns::new("laptop");
        internet.attach(&laptop, "eth0", "198.18.0.2/24");
        let uc = Uc::in_netns(laptop.name());
        Lan {
            internet,
            laptop,
            uc,
            cuts: Mutex::new(BTreeSet::new()),
            losses: Mutex::new(BTreeMap::new()),
        }
    }

    /// A tap device on the bridge for a VM (QEMU runs in the bridge's namespace).
    fn tap(&self, name: &str) -> String {
        let tap = format!("tap-{name}");
        self.internet
            .ns
            .ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
        self.internet
            .ns
            .ip(&["link", "set", &tap, "master", "br0", "up"]);
        tap
    }

    /// Starts `name` from the amd64 image at `address`, with `user_data` (cloud-config lines)
    /// and the test shell. Returns at once: VMs started one after another boot in parallel.
    pub fn boot(&self, name: &'static str, address: Ipv4Addr, user_data: &str) -> Node {
        self.boot_with(name, address, user_data, |_| {})
    }

    /// [`Lan::boot`], with `configure` changing the machine first (a larger disk, ...).
    pub fn boot_with(
        &self,
        name: &'static str,
        address: Ipv4Addr,
        user_data: &str,
        configure: impl FnOnce(&mut Machine),
    ) -> Node {
        let mut machine = vm_machine(name, Boot::Uefi);
        let tap = self.tap(name);
        machine.tap = Some(tap.clone());
        machine.netns = Some(self.internet.ns.name().to_string());
        configure(&mut machine);
        let network = format!(
            "version: 2\nethernets:\n  lan:\n    match:\n      macaddress: \"{}\"\n    \
             addresses: [{address}/24]\n",
            machine.mac
        );
        let seed = SeedDisk::nocloud(&format!("iid-{name}"), &with_shell(name, user_data))
            .with_network_config(&network);
        start(name, address, machine, &seed, Some(tap))
    }

    /// Starts `name` behind `nat` as the one machine of its LAN (`10.0.<subnet>.0/24`): a
    /// tap in the router's namespace, the address `.2` handed out by the router's DHCP, no
    /// network configuration in the seed (the image's default: DHCP on the first NIC). The
    /// machine reaches the internet through the router; nothing reaches it from there, so it
    /// has no [`Node::endpoint`] and links to it cannot be cut ([`Lan::block`]).
    pub fn boot_behind_nat(
        &self,
        name: &'static str,
        nat: &mut Nat,
        subnet: u8,
        boot: Boot,
        datasource: Datasource,
        user_data: &str,
    ) -> Node {
        let (gateway, address) = (
            Ipv4Addr::new(10, 0, subnet, 1),
            Ipv4Addr::new(10, 0, subnet, 2),
        );
        let mut machine = vm_machine(name, boot);
        let tap = format!("tap-{name}");
        nat.tap(&tap, gateway);
        nat.dhcp(&tap, gateway, address);
        machine.tap = Some(tap);
        machine.netns = Some(nat.ns.name().to_string());
        let cloud_config = with_shell(name, user_data);
        let seed = match datasource {
            Datasource::NoCloud => SeedDisk::nocloud(&format!("iid-{name}"), &cloud_config),
            Datasource::ConfigDrive => SeedDisk::config_drive(&uuid_of(name), name, &cloud_config),
        };
        start(name, address, machine, &seed, None)
    }

    /// Starts `machine` (any architecture; a provider's metadata service, or a seed) on
    /// QEMU's own user network, run in the laptop's namespace: the VM sits behind QEMU's NAT
    /// and reaches the segment as the laptop does, nothing reaching it from there. Its
    /// cloud-config must include [`uncloud_qemu::shell::user_data`] for [`Node::execute`].
    pub fn boot_behind_qemu_nat(
        &self,
        name: &'static str,
        mut machine: Machine,
        image_suffix: &str,
        seed: Option<&SeedDisk>,
    ) -> Node {
        machine.shell_port = true;
        machine.netns = Some(self.laptop.name().to_string());
        let address = machine
            .guest_address()
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .expect("QEMU's guest address");
        let vm = Vm::start(&machine, &image(image_suffix), seed).unwrap_or_else(|e| panic!("{e}"));
        Node {
            name,
            address,
            vm,
            segment_tap: None,
        }
    }

    /// The machines as `node` sees them (`uc machine ls` through its apid); `None` when it
    /// does not answer.
    pub fn machines_seen_by(&self, node: &Node) -> Option<Vec<serde_json::Value>> {
        self.uc
            .try_json(&["machine", "ls", "--endpoint", &node.endpoint()])
            .and_then(|rows| rows.as_array().cloned())
    }

    /// Whether `node` answers and sees exactly `names`, all alive.
    pub fn sees_alive(&self, node: &Node, names: &[&str]) -> bool {
        self.machines_seen_by(node)
            .is_some_and(|rows| all_alive(&rows, names))
    }

    /// Whether `node` answers and sees `names` all alive, whoever else it lists.
    pub fn sees_alive_among(&self, node: &Node, names: &[&str]) -> bool {
        self.machines_seen_by(node)
            .is_some_and(|rows| alive_among(&rows, names))
    }

    /// Machine `name`'s mesh address as `node` sees it.
    pub fn mesh_ip(&self, node: &Node, name: &str) -> Option<String> {
        self.machines_seen_by(node)?
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["mesh_ip"].as_str().map(String::from))
    }

    /// Cuts the link between `a` and `b`, both ways.
    pub fn block(&self, a: &Node, b: &Node) {
        self.block_one_way(a, b);
        self.block_one_way(b, a);
    }

    /// Drops what `from` sends to `to`; what `to` sends to `from` still arrives.
    pub fn block_one_way(&self, from: &Node, to: &Node) {
        eprintln!("-- cut {} -> {}", from.name, to.name);
        self.cuts
            .lock()
            .unwrap()
            .insert((from.segment_tap(), to.segment_tap()));
        self.apply_cuts();
    }

    /// Drops `percent` % of the frames between `a` and `b`, each way, at random: a bad link,
    /// not a broken one, until [`Lan::heal`].
    pub fn lossy(&self, a: &Node, b: &Node, percent: u8) {
        assert!(percent <= 100, "{percent} %");
        eprintln!(
            "-- {percent} % of the frames between {} and {} lost",
            a.name, b.name
        );
        let (ta, tb) = (a.segment_tap(), b.segment_tap());
        let mut losses = self.losses.lock().unwrap();
        losses.insert((ta.clone(), tb.clone()), percent);
        losses.insert((tb, ta), percent);
        drop(losses);
        self.apply_cuts();
    }

    /// Frames the lossy links dropped since they were set (nftables' counters).
    pub fn frames_lost(&self) -> u64 {
        let out = self
            .internet
            .ns
            .command("nft")
            .args(["list", "table", "bridge", CUTS_TABLE])
            .output()
            .expect("nft runs (package nftables)");
        assert!(out.status.success(), "nft list: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .split("counter packets ")
            .skip(1)
            .map(|rest| {
                let n = rest.split_whitespace().next().unwrap_or_default();
                n.parse::<u64>()
                    .unwrap_or_else(|e| panic!("nft's counter {n:?}: {e}"))
            })
            .sum()
    }

    /// Splits the machines into two sides that cannot reach each other.
    pub fn partition(&self, a: &[&Node], b: &[&Node]) {
        for x in a {
            for y in b {
                self.block(x, y);
            }
        }
    }

    /// Restores every link: no cut, no loss.
    pub fn heal(&self) {
        eprintln!("-- every link restored");
        self.cuts.lock().unwrap().clear();
        self.losses.lock().unwrap().clear();
        self.apply_cuts();
    }

    fn apply_cuts(&self) {
        let mut rules: String = self
            .cuts
            .lock()
            .unwrap()
            .iter()
            .map(|(from, to)| format!("    iifname \"{from}\" oifname \"{to}\" drop\n"))
            .collect();
        // Counted, so a test can tell the loss happened.
        for ((from, to), percent) in self.losses.lock().unwrap().iter() {
            rules.push_str(&format!(
                "    iifname \"{from}\" oifname \"{to}\" numgen random mod 100 < {percent} \
                 counter drop\n"
            ));
        }
        // `add` then `flush`: one transaction that works whether the table exists or not.
        let script = format!(
            "add table bridge {CUTS_TABLE}\nflush table bridge {CUTS_TABLE}\n\
             table bridge {CUTS_TABLE} {{\n  chain forward {{\n    \
             type filter hook forward priority -10; policy accept;\n{rules}  }}\n}}\n"
        );
        let mut child = self
            .internet
            .ns
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft runs (package nftables)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft -f:\n{script}");
    }

    /// How long a TCP connection from the laptop to `node`'s `port` takes to open: the
    /// median of `tries` (a round trip through the segment and the machine's NIC).
    pub fn connect_time(&self, node: &Node, port: u16, tries: usize) -> Duration {
        let (name, addr) = (node.name, SocketAddr::from((node.address, port)));
        let mut times: Vec<Duration> = self.laptop.enter(|| {
            (0..tries)
                .map(|_| {
                    let started = Instant::now();
                    TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                        .unwrap_or_else(|e| panic!("connecting to {name} at {addr}: {e}"));
                    started.elapsed()
                })
                .collect()
        });
        times.sort();
        times[times.len() / 2]
    }

    /// The TCP ports of `ip` that accept a connection from the laptop, all 65535 tried.
    pub fn open_tcp_ports(&self, ip: Ipv4Addr) -> Vec<u16> {
        self.laptop.enter(|| {
            let ports: Vec<u16> = (1..=u16::MAX).collect();
            let mut open: Vec<u16> = std::thread::scope(|s| {
                // 128 at a time: a far machine answers each try a round trip of up to
                // 80 ms later.
                let workers: Vec<_> = ports
                    .chunks(u16::MAX as usize / 128 + 1)
                    .map(|chunk| {
                        s.spawn(move || {
                            chunk
                                .iter()
                                .copied()
                                .filter(|&p| {
                                    let addr = SocketAddr::from((ip, p));
                                    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                                        .is_ok()
                                })
                                .collect::<Vec<u16>>()
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().unwrap())
                    .collect()
            });
            open.sort();
            open
        })
    }
}

/// Memory of a set of processes, summed (KiB).
///
/// The daemons are one executable (`daemons/`), so they share its code pages: `rss` counts a
/// shared page once in every process that maps it, `pss` divides it among them. `pss` is what
/// the processes take from the machine; `rss` is what `ps` and `top` show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Proportional set size: each page divided by the number of processes mapping it.
    pub pss_kib: u64,
    /// Resident set size (`VmRSS`).
    pub rss_kib: u64,
}

impl Memory {
    /// Sums `processes` processes' `Rss:` and `Pss:` lines of `smaps_rollup`; `None` unless
    /// each process gave one of each.
    fn parse(out: &str, processes: usize) -> Option<Memory> {
        let (mut pss, mut rss) = (Vec::new(), Vec::new());
        for l in out.lines() {
            let mut words = l.split_whitespace();
            let (key, kib) = (
                words.next(),
                words.next().and_then(|k| k.parse::<u64>().ok()),
            );
            match (key, kib) {
                (Some("Pss:"), Some(k)) => pss.push(k),
                (Some("Rss:"), Some(k)) => rss.push(k),
                _ => {}
            }
        }
        (pss.len() == processes && rss.len() == processes).then(|| Memory {
            pss_kib: pss.iter().sum(),
            rss_kib: rss.iter().sum(),
        })
    }

    pub fn pss_mib(&self) -> f64 {
        self.pss_kib as f64 / 1024.0
    }

    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

impl Node {
    /// Its tap on the segment's bridge, where its links are cut or made lossy.
    fn segment_tap(&self) -> String {
        self.segment_tap
            .clone()
            .unwrap_or_else(|| panic!("{} is behind a NAT: its links are not cut", self.name))
    }

    /// The memory of `units`' main processes, summed, from `/proc/PID/smaps_rollup`; `Err`
    /// with what the machine printed when a unit has no main process.
    pub fn memory(&mut self, units: &[&str]) -> Result<Memory, String> {
        let script: String = units
            .iter()
            .map(|u| {
                format!(
                    "grep -E '^(Rss|Pss):' /proc/$(systemctl show -P MainPID {u})/smaps_rollup; "
                )
            })
            .collect();
        let (status, out) = self.execute(&script);
        match Memory::parse(&out, units.len()) {
            Some(m) if status == 0 => Ok(m),
            _ => Err(format!("{}: memory of {units:?}: {out}", self.name)),
        }
    }

    /// The memory of Uncloud's daemons ([`uncloud_daemons`]), summed.
    pub fn daemons_memory(&mut self) -> Memory {
        let units: Vec<&str> = uncloud_daemons().collect();
        self.memory(&units).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `HOST:PORT` of this machine's apid, for `uc --endpoint`.
    pub fn endpoint(&self) -> String {
        assert!(
            self.segment_tap.is_some(),
            "{} is behind a NAT: ask it through another machine (uc -m {})",
            self.name,
            self.name
        );
        format!("{}:7443", self.address)
    }

    /// Waits for the console banner (printed once every Uncloud unit and Docker started)
    /// and returns it; it must say ready.
    pub fn wait_for_banner(&mut self) -> Banner {
        self.wait_for_banner_since(0)
    }

    /// [`Node::wait_for_banner`], for a banner printed after console position `mark`.
    pub fn wait_for_banner_since(&mut self, mark: usize) -> Banner {
        self.vm
            .wait_for_line_since(
                mark,
                &format!("{}'s console banner", self.name),
                READY_TIMEOUT,
                is_status_line,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(Duration::from_secs(2));
        let _ = self.vm.save_console(&uncloud_qemu::vm::logs_dir());
        let console = self.vm.console();
        let banner = Banner::parse_last(console.get(mark..).unwrap_or(&console)).expect("a banner");
        eprintln!(
            "{}: banner after {:.0?}: {banner:?}",
            self.name,
            self.vm.elapsed()
        );
        assert!(banner.ready, "{}: {}", self.name, banner.status);
        banner
    }

    /// Runs `command` as root in the machine (its test shell): exit status and output.
    pub fn execute(&mut self, command: &str) -> (i32, String) {
        self.vm
            .run(command, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `command`, which must succeed; its output.
    pub fn succeed(&mut self, command: &str) -> String {
        let (status, out) = self.execute(command);
        assert_eq!(
            status, 0,
            "{}: `{command}` failed ({status}):\n{out}",
            self.name
        );
        out
    }

    /// Runs `command`, which must fail; its output.
    pub fn fail(&mut self, command: &str) -> String {
        let (status, out) = self.execute(command);
        assert_ne!(
            status, 0,
            "{}: `{command}` succeeded, expected to fail:\n{out}",
            self.name
        );
        out
    }

    /// Runs `command` every 2 s until it succeeds; its output then.
    pub fn wait_until_succeeds(&mut self, command: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let out = match self.vm.run(command, Duration::from_secs(60).min(timeout)) {
                Ok((0, out)) => return out,
                Ok((status, out)) => format!("exit status {status}:\n{out}"),
                Err(e) => e.to_string(),
            };
            assert!(
                start.elapsed() < timeout,
                "{}: `{command}` did not succeed within {timeout:?}; last:\n{out}",
                self.name
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Waits until systemd says `unit` is active.
    pub fn wait_for_unit(&mut self, unit: &str) {
        self.wait_until_succeeds(
            &format!("systemctl is-active --quiet {unit}"),
            Duration::from_secs(300),
        );
    }

    /// Cuts the machine's power (QEMU killed with the guest running).
    pub fn crash(&mut self) {
        eprintln!("-- power cut: {}", self.name);
        self.vm.crash();
    }

    /// Powers the machine on again, and waits for its banner.
    pub fn power_on(&mut self) -> Banner {
        eprintln!("-- power on: {}", self.name);
        let mark = self.vm.mark();
        self.vm.power_on().unwrap_or_else(|e| panic!("{e}"));
        self.wait_for_banner_since(mark)
    }
}

/// Whether `rows` (one view, `uc machine ls`) has exactly `names`, all alive.
pub fn all_alive(rows: &[serde_json::Value], names: &[&str]) -> bool {
    rows.len() == names.len() && alive_among(rows, names)
}

/// Whether `rows` (`uc machine ls -o json`) list each of `names` alive, whoever else.
pub fn alive_among(rows: &[serde_json::Value], names: &[&str]) -> bool {
    names.iter().all(|n| {
        rows.iter()
            .any(|r| r["name"] == *n && r["state"] == "alive")
    })
}

/// The units `uc machine status` reports that keep running (all but first boot's
/// one-shot): each is active and running once the machine is ready.
pub fn running_units() -> impl Iterator<Item = &'static str> {
    uncloud_api::host::UNITS
        .iter()
        .copied()
        .filter(|u| *u != "uncloud-firstboot.service")
}

/// Uncloud's own daemons: [`running_units`] but Docker.
pub fn uncloud_daemons() -> impl Iterator<Item = &'static str> {
    running_units().filter(|u| *u != "docker.service")
}

/// Polls `check` every 2 s until it holds, or fails the test after `timeout`; says how long
/// it took.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!("{what}: after {:.0?}", start.elapsed());
    start.elapsed()
}

/// Polls `check` every second for `period`, failing the test the first time it does not hold:
/// a property that must stay true, not one that becomes true.
pub fn holds_for(what: &str, period: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut polls = 0;
    while start.elapsed() < period {
        polls += 1;
        assert!(
            check(),
            "{what}: broken after {:.0?} ({polls} polls)",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("{what}: held for {period:?} ({polls} polls)");
}

#[cfg(test)]
mod tests {
    use super::Memory;

    #[test]
    fn memory_sums_each_process_rollup() {
        let out = "Rss:               12000 kB\nPss:                4000 kB\n\
                   Rss:                 800 kB\nPss:                 300 kB\n";
        assert_eq!(
            Memory::parse(out, 2),
            Some(Memory {
                pss_kib: 4300,
                rss_kib: 12800
            })
        );
    }

    #[test]
    fn memory_of_a_process_without_rollup_is_none() {
        // The second unit had no main process: grep printed an error, not its lines.
        let out = "Rss:               12000 kB\nPss:                4000 kB\n\
                   grep: /proc/0/smaps_rollup: No such file or directory\n";
        assert_eq!(Memory::parse(out, 2), None);
    }
}

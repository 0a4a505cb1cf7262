//! Three VMs from the real amd64 image form a network, driven with `uc` as a user would.
//!
//! The VMs share one Ethernet segment: each has a tap device on the bridge of the test's
//! "internet" (the namespace harness's, `uncloud_testkit::Internet`, 198.18.0.0/24) and a
//! static address from its NoCloud `network-config`. `uc` runs in the "laptop" namespace on
//! the same bridge. The story: `uc machine init` on alpha with the values its console shows,
//! `uc machine add` for bravo, charlie joining by itself with a ticket in its user-data; all
//! three alive through each of them, every pair's WireGuard up; and from the laptop, a scan of
//! every TCP port finds only apid's open.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use uncloud_e2e::uc::Uc;
use uncloud_e2e::{image, is_status_line, Banner};
use uncloud_qemu::seed::write_uncloud_file;
use uncloud_qemu::{Arch, Boot, Machine, SeedDisk, Vm};
use uncloud_testkit::{Internet, Netns};

/// Bounds a hung boot (three VMs share two cores under TCG), not a slow one.
const READY_TIMEOUT: Duration = Duration::from_secs(900);

/// One VM of the network.
struct Node {
    name: &'static str,
    address: Ipv4Addr,
    vm: Vm,
}

/// The test's segment: the bridge, the laptop, and `uc` on the laptop.
struct Lan {
    internet: Internet,
    laptop: Netns,
    uc: Uc,
}

impl Lan {
    fn new() -> Lan {
        let internet = Internet::new();
        let laptop = Netns::new("laptop");
        internet.attach(&laptop, "eth0", "198.18.0.2/24");
        let uc = Uc::in_netns(laptop.name());
        Lan {
            internet,
            laptop,
            uc,
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

    /// Boots `name` from the image at `address`, with `user_data` (cloud-config).
    fn boot(&self, name: &'static str, address: Ipv4Addr, user_data: &str) -> Node {
        let mut machine = Machine::new(name, Arch::Amd64, Boot::Uefi);
        machine.tap = Some(self.tap(name));
        machine.netns = Some(self.internet.ns.name().to_string());
        let network = format!(
            "version: 2\nethernets:\n  lan:\n    match:\n      macaddress: \"{}\"\n    \
             addresses: [{address}/24]\n",
            machine.mac
        );
        let seed = SeedDisk::nocloud(
            &format!("iid-{name}"),
            &format!("hostname: {name}\n{user_data}"),
        )
        .with_network_config(&network);
        let vm = Vm::start(&machine, &image("-amd64.qcow2"), Some(&seed))
            .unwrap_or_else(|e| panic!("{e}"));
        Node { name, address, vm }
    }

    /// The TCP ports of `ip` that accept a connection from the laptop, all 65535 tried.
    fn open_tcp_ports(&self, ip: Ipv4Addr) -> Vec<u16> {
        self.laptop.enter(|| {
            let ports: Vec<u16> = (1..=u16::MAX).collect();
            let mut open: Vec<u16> = std::thread::scope(|s| {
                let workers: Vec<_> = ports
                    .chunks(u16::MAX as usize / 32 + 1)
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

/// Waits for `node`'s console banner and returns it, ready.
fn banner(node: &mut Node) -> Banner {
    node.vm
        .wait_for_line(
            &format!("{}'s console banner", node.name),
            READY_TIMEOUT,
            is_status_line,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(2));
    let _ = node.vm.save_console(&uncloud_qemu::vm::logs_dir());
    let banner = Banner::parse_last(&node.vm.console()).expect("a banner");
    eprintln!(
        "{}: banner after {:.0?}: {banner:?}",
        node.name,
        node.vm.elapsed()
    );
    assert!(banner.ready, "{}: {}", node.name, banner.status);
    banner
}

/// The banner's command line for `verb`, as words to hand to `uc` (without `uc`).
fn command_of(banner: &Banner, verb: &str) -> Vec<String> {
    let line = match verb {
        "init" => banner.init_command.clone(),
        _ => banner
            .init_command
            .as_ref()
            .map(|l| l.replacen("uc machine init", "uc machine add", 1)),
    }
    .unwrap_or_else(|| panic!("the banner shows no command: {banner:?}"));
    line.split_whitespace().skip(1).map(String::from).collect()
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!("{what}: after {:.0?}", start.elapsed());
}

#[test]
#[ignore = "boots three amd64 VMs in QEMU: run image/build, then cargo test -p uncloud-e2e -- --ignored"]
fn three_vms_form_a_network_with_init_add_and_a_ticket_in_user_data() {
    let lan = Lan::new();
    let token = |name: &str| format!("{name}-token-0123456789");
    let with_token = |name: &str| write_uncloud_file("setup-token", &token(name));
    // alpha and bravo boot together; charlie once there is a network to join.
    let mut alpha = lan.boot("alpha", Ipv4Addr::new(198, 18, 0, 21), &with_token("alpha"));
    let mut bravo = lan.boot("bravo", Ipv4Addr::new(198, 18, 0, 22), &with_token("bravo"));

    // init on alpha, with the command its console shows (its address on the segment).
    let alpha_banner = banner(&mut alpha);
    let init = command_of(&alpha_banner, "init");
    assert_eq!(init[2], alpha.address.to_string(), "{init:?}");
    lan.uc
        .ok(&init.iter().map(String::as_str).collect::<Vec<_>>());

    // A ticket for charlie, in its NoCloud user-data: it joins by itself when it boots.
    let ticket = lan
        .uc
        .ok(&["machine", "token", "--ttl", "1h", "--name", "charlie"]);
    let mut charlie = lan.boot(
        "charlie",
        Ipv4Addr::new(198, 18, 0, 23),
        &write_uncloud_file("join-ticket", ticket.trim()),
    );

    // add bravo.
    let bravo_banner = banner(&mut bravo);
    let add = command_of(&bravo_banner, "add");
    lan.uc
        .ok(&add.iter().map(String::as_str).collect::<Vec<_>>());

    banner(&mut charlie);

    // All three alive, as each of them sees it (through each one's own apid).
    let nodes = [&alpha, &bravo, &charlie];
    for node in nodes {
        let endpoint = format!("{}:7443", node.address);
        wait_until(
            &format!("{} sees three machines alive", node.name),
            Duration::from_secs(300),
            || {
                lan.uc
                    .try_json(&["machine", "ls", "--endpoint", &endpoint])
                    .and_then(|rows| rows.as_array().cloned())
                    .is_some_and(|rows| {
                        rows.len() == 3 && rows.iter().all(|r| r["state"] == "alive")
                    })
            },
        );
    }
    // Every pair's WireGuard is up, direct, with traffic both ways; and asking every machine
    // through one goes over that mesh.
    wait_until(
        "every machine has both peers up",
        Duration::from_secs(120),
        || {
            lan.uc
                .try_json(&["mesh", "peers", "-m", "all"])
                .and_then(|r| r.as_array().cloned())
                .is_some_and(|replies| {
                    replies.len() == 3
                        && replies.iter().all(|r| {
                            r["answer"]["mesh_peers"].as_array().is_some_and(|peers| {
                                peers.len() == 2
                                    && peers.iter().all(|p| {
                                        p["status"] == "up"
                                            && p["path"] == "direct"
                                            && p["rx_bytes"].as_u64() > Some(0)
                                            && p["tx_bytes"].as_u64() > Some(0)
                                    })
                            })
                        })
                })
        },
    );
    // Every machine's dnsd names every machine, and told systemd-resolved to send
    // `*.internal` to it (the machine itself resolves the names).
    wait_until(
        "every machine's dnsd names all three machines",
        Duration::from_secs(120),
        || {
            lan.uc
                .try_json(&["dns", "ls", "-m", "all"])
                .and_then(|r| r.as_array().cloned())
                .is_some_and(|replies| {
                    replies.len() == 3
                        && replies.iter().all(|r| {
                            r["answer"]["dns_names"].as_array().is_some_and(|names| {
                                nodes.iter().all(|n| {
                                    names.iter().any(|d| {
                                        d["name"] == format!("{}.machine.internal", n.name)
                                            && d["addresses"]
                                                .as_array()
                                                .is_some_and(|a| a.len() == 1)
                                    })
                                })
                            })
                        })
                })
        },
    );
    let log = lan.uc.ok(&[
        "machine",
        "logs",
        "-u",
        "dnsd",
        "-n",
        "200",
        "--endpoint",
        &format!("{}:7443", alpha.address),
    ]);
    assert!(
        log.contains("systemd-resolved sends *.internal here"),
        "dnsd on the image registers with systemd-resolved:\n{log}"
    );
    let views = lan.uc.json(&["machine", "ls", "-m", "all"]);
    for view in views.as_array().unwrap() {
        let rows = view["answer"]["machines"].as_array().expect("rows");
        assert_eq!(rows.len(), 3, "{view}");
    }

    // From the internet side, nothing but apid's TLS port answers TCP on any machine.
    for node in nodes {
        let open = lan.open_tcp_ports(node.address);
        assert_eq!(open, [7443], "{} has TCP ports open: {open:?}", node.name);
    }
}

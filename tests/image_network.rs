//! A network of VMs from the real amd64 image, driven with `uc` as a user would, through a
//! partition, daemons killed, a power cut and a removal (`uncloud_e2e::network` has the words).
//!
//! The story: `uc machine init` on alpha with the values its console shows, `uc machine add`
//! for bravo, charlie joining by itself with a ticket in its user-data; all three alive
//! through each of them, every pair's WireGuard up, every machine named in every dnsd; from
//! the laptop, a scan of every TCP port finds only apid's open. Then alpha is cut off from
//! bravo and charlie: each side still answers `uc` and takes a write, and once the links
//! are back both writes are everywhere. Each of bravo's daemons is killed (SIGKILL) in turn:
//! systemd starts it again and nothing is lost. Charlie's power is cut in the middle of a
//! stream of writes through it: every write it acknowledged is there after it boots again,
//! and it is back in the mesh. Last, charlie is removed: gone from every machine's view.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uncloud_e2e::network::{wait_until, Lan, Node};
use uncloud_e2e::{cloud_init_warnings, Banner};
use uncloud_qemu::seed::write_uncloud_file;

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

/// The machines as `node` sees them (`uc machine ls` through its apid); `None` when it does
/// not answer.
fn machines_seen_by(lan: &Lan, node: &Node) -> Option<Vec<serde_json::Value>> {
    lan.uc
        .try_json(&["machine", "ls", "--endpoint", &node.endpoint()])
        .and_then(|rows| rows.as_array().cloned())
}

/// Each machine's dnsd names (`uc dns ls -m all`), one list per machine that answered;
/// `None` when the call fails or a machine's answer has none.
fn dns_views(lan: &Lan) -> Option<Vec<Vec<serde_json::Value>>> {
    let replies = lan.uc.try_json(&["dns", "ls", "-m", "all"])?;
    replies
        .as_array()?
        .iter()
        .map(|r| r["answer"]["dns_names"].as_array().cloned())
        .collect()
}

/// Whether `rows` (one view) has exactly `names`, all alive.
fn all_alive(rows: &[serde_json::Value], names: &[&str]) -> bool {
    rows.len() == names.len()
        && names.iter().all(|n| {
            rows.iter()
                .any(|r| r["name"] == *n && r["state"] == "alive")
        })
}

/// Machine `name`'s label `key` in one view.
fn label<'a>(rows: &'a [serde_json::Value], name: &str, key: &str) -> Option<&'a str> {
    rows.iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["labels"][key].as_str())
}

/// A network of one, alpha, through the API as an administrator sees it: every unit
/// active, the grown disk, its journal, no peers.
fn check_insides(lan: &Lan, alpha: &Node) {
    let ep = alpha.endpoint();
    let rows = lan.uc.json(&["machine", "ls", "--endpoint", &ep]);
    assert_eq!(rows[0]["name"], "alpha", "{rows}");
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    let replies = lan.uc.json(&["machine", "status", "--endpoint", &ep]);
    let status = &replies[0]["answer"]["status"];
    assert_eq!(status["machine"], "alpha", "{replies}");
    for unit in running_units() {
        let u = status["units"]
            .as_array()
            .and_then(|us| us.iter().find(|u| u["name"] == *unit))
            .unwrap_or_else(|| panic!("{unit} missing: {status}"));
        assert_eq!(
            (u["active"].as_str(), u["sub"].as_str()),
            (Some("active"), Some("running")),
            "{u}"
        );
    }
    assert!(
        status["disk_total_bytes"].as_u64() > Some(3 << 30),
        "the grown disk: {status}"
    );
    assert!(
        status["os"]
            .as_str()
            .is_some_and(|os| os.contains("Debian")),
        "{status}"
    );
    let out = lan.uc.ok(&[
        "machine",
        "logs",
        "-u",
        "meshd",
        "-n",
        "500",
        "--endpoint",
        &ep,
    ]);
    assert!(out.contains("systemd watchdog on"), "{out}");
    // stated's own lines, as many as asked.
    let out = lan.uc.ok(&[
        "machine",
        "logs",
        "-u",
        "stated",
        "-n",
        "5",
        "-o",
        "json",
        "--endpoint",
        &ep,
    ]);
    let entries: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!entries.is_empty() && entries.len() <= 5, "{out}");
    assert!(
        entries.iter().all(|e| e["unit"] == "stated.service"),
        "{out}"
    );
    // Without -u, every Uncloud daemon's journal (all of it since boot: under 5000 entries).
    let table = lan
        .uc
        .ok(&["machine", "logs", "-n", "5000", "--endpoint", &ep]);
    for daemon in ["stated", "meshd", "apid"] {
        assert!(
            table.contains(&format!(" {daemon}: ")),
            "{daemon}'s lines among Uncloud's: {table}"
        );
    }
    let peers = lan.uc.json(&["mesh", "peers", "--endpoint", &ep]);
    assert_eq!(
        peers[0]["answer"]["mesh_peers"],
        serde_json::json!([]),
        "alone: {peers}"
    );
}

/// Every daemon runs under systemd's watchdog (WatchdogSec=60), fed by its own probe: once
/// `node` has been up well past that, none has been restarted.
fn check_no_restarts(lan: &Lan, node: &Node) {
    let watched = loop {
        let replies = lan
            .uc
            .json(&["machine", "status", "--endpoint", &node.endpoint()]);
        let now = replies[0]["answer"]["status"].clone();
        if now["uptime_secs"].as_u64() > Some(90) {
            break now;
        }
        std::thread::sleep(Duration::from_secs(5));
    };
    for unit in running_units() {
        let u = watched["units"]
            .as_array()
            .and_then(|us| us.iter().find(|u| u["name"] == *unit))
            .unwrap_or_else(|| panic!("{unit} missing: {watched}"));
        assert_eq!(
            (u["restarts"].as_u64(), u["sub"].as_str()),
            (Some(0), Some("running")),
            "{}: {unit} after {} s: {u}",
            node.name,
            watched["uptime_secs"]
        );
    }
}

/// The resident memory of Uncloud's daemons on `node`, summed (KiB).
fn daemons_rss_kib(node: &mut Node) -> u64 {
    let out = node.succeed(
        "for u in stated meshd dnsd apid dockerd-shim ingressd; do \
         grep VmRSS /proc/$(systemctl show -P MainPID $u.service)/status; done",
    );
    let kib: Vec<u64> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert_eq!(kib.len(), 6, "{out}");
    kib.iter().sum()
}

/// The units `uc machine status` reports that keep running (all but first boot's one-shot):
/// each must be active and running once the machine is ready.
fn running_units() -> impl Iterator<Item = &'static str> {
    uncloud_api::host::UNITS
        .iter()
        .copied()
        .filter(|u| *u != "uncloud-firstboot.service")
}

/// Every machine's WireGuard peers (`uc mesh peers -m all`): `count` each, up, with traffic.
fn mesh_up(lan: &Lan, machines: usize) -> bool {
    lan.uc
        .try_json(&["mesh", "peers", "-m", "all"])
        .and_then(|r| r.as_array().cloned())
        .is_some_and(|replies| {
            replies.len() == machines
                && replies.iter().all(|r| {
                    r["answer"]["mesh_peers"].as_array().is_some_and(|peers| {
                        peers.len() == machines - 1
                            && peers.iter().all(|p| {
                                p["status"] == "up"
                                    && p["path"] == "direct"
                                    && p["rx_bytes"].as_u64() > Some(0)
                                    && p["tx_bytes"].as_u64() > Some(0)
                            })
                    })
                })
        })
}

#[test]
#[ignore = "boots three amd64 VMs in QEMU: run image/build, then cargo test -p uncloud-e2e -- --ignored"]
fn three_vms_form_a_network_and_keep_it_through_a_partition_kills_and_a_power_cut() {
    let lan = Lan::new();
    let token = |name: &str| format!("{name}-token-0123456789");
    let with_token = |name: &str| write_uncloud_file("setup-token", &token(name));
    // alpha and bravo boot together; charlie once there is a network to join.
    // alpha's disk is larger than the image: its root partition grows on first boot.
    let mut alpha = lan.boot_with(
        "alpha",
        Ipv4Addr::new(198, 18, 0, 21),
        &with_token("alpha"),
        |m| m.disk_size_bytes = Some(4 << 30),
    );
    let mut bravo = lan.boot("bravo", Ipv4Addr::new(198, 18, 0, 22), &with_token("bravo"));

    // alpha's console: cloud-init's hostname and token, the key fingerprint `uc` pins, and
    // the exact command to copy, with its address on the segment.
    let alpha_banner = alpha.wait_for_banner();
    alpha.wait_for_unit("stated.service");
    assert_eq!(
        alpha_banner.hostname, "alpha",
        "cloud-init set the hostname"
    );
    assert_eq!(
        alpha_banner.setup_token.as_deref(),
        Some(token("alpha").as_str())
    );
    let fp = alpha_banner.fingerprint.clone().unwrap_or_default();
    assert!(
        fp.parse::<uncloud_pki::Fingerprint>().is_ok() && fp.starts_with("sha256:"),
        "{alpha_banner:?}"
    );
    assert_eq!(
        alpha_banner.init_command,
        Some(format!(
            "uc machine init {} --fingerprint {fp} --token {}",
            alpha.address,
            token("alpha")
        )),
    );
    assert!(
        alpha_banner
            .mode
            .as_deref()
            .is_some_and(|m| m.starts_with("maintenance")),
        "{alpha_banner:?}"
    );
    let console = alpha.vm.console();
    assert!(
        console.lines().any(|l| l.contains("growroot: CHANGED")),
        "the root partition grew to the 4 GiB disk"
    );
    // cloud-init took the user-data without complaint (it logs schema errors and ignored
    // keys as warnings on the console).
    let warnings = cloud_init_warnings(&console);
    assert!(
        warnings.is_empty(),
        "cloud-init warned:\n{}",
        warnings.join("\n")
    );

    // init on alpha, with that command.
    let init = command_of(&alpha_banner, "init");
    lan.uc
        .ok(&init.iter().map(String::as_str).collect::<Vec<_>>());
    check_insides(&lan, &alpha);

    // A ticket for charlie, in its NoCloud user-data: it joins by itself when it boots.
    let ticket = lan
        .uc
        .ok(&["machine", "token", "--ttl", "1h", "--name", "charlie"]);
    let mut charlie = lan.boot(
        "charlie",
        Ipv4Addr::new(198, 18, 0, 23),
        &write_uncloud_file("join-ticket", ticket.trim()),
    );
    let charlie_started = Instant::now();

    // add bravo.
    let bravo_banner = bravo.wait_for_banner();
    let add = command_of(&bravo_banner, "add");
    lan.uc
        .ok(&add.iter().map(String::as_str).collect::<Vec<_>>());

    charlie.wait_for_banner();

    // All three alive, as each of them sees it (through each one's own apid).
    let names = ["alpha", "bravo", "charlie"];
    for node in [&alpha, &bravo, &charlie] {
        wait_until(
            &format!("{} sees three machines alive", node.name),
            Duration::from_secs(300),
            || machines_seen_by(&lan, node).is_some_and(|rows| all_alive(&rows, &names)),
        );
    }
    eprintln!(
        "charlie: from power on to a member seen alive by all, with a ticket in its user-data: {:.0?}",
        charlie_started.elapsed()
    );
    // Every pair's WireGuard is up, direct, with traffic both ways; and asking every machine
    // through one goes over that mesh.
    wait_until(
        "every machine has both peers up",
        Duration::from_secs(120),
        || mesh_up(&lan, 3),
    );
    // Every machine's dnsd names every machine, and told systemd-resolved to send
    // `*.internal` to it: the machine itself resolves the names.
    wait_until(
        "every machine's dnsd names all three machines",
        Duration::from_secs(120),
        || {
            dns_views(&lan).is_some_and(|views| {
                views.len() == 3
                    && views.iter().all(|dns| {
                        names.iter().all(|n| {
                            dns.iter().any(|d| {
                                d["name"] == format!("{n}.machine.internal")
                                    && d["addresses"].as_array().is_some_and(|a| a.len() == 1)
                            })
                        })
                    })
            })
        },
    );
    let bravo_mesh_ip = machines_seen_by(&lan, &alpha)
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["name"] == "bravo")
                .and_then(|r| r["mesh_ip"].as_str().map(String::from))
        })
        .expect("bravo's mesh address");
    let resolved = alpha.succeed("resolvectl query --legend=no bravo.machine.internal");
    assert!(
        resolved.split_whitespace().any(|w| w == bravo_mesh_ip),
        "alpha resolves bravo to its mesh address {bravo_mesh_ip}: {resolved}"
    );
    let log = lan.uc.ok(&[
        "machine",
        "logs",
        "-u",
        "dnsd",
        "-n",
        "200",
        "--endpoint",
        &alpha.endpoint(),
    ]);
    assert!(
        log.contains("systemd-resolved sends *.internal here"),
        "dnsd on the image registers with systemd-resolved:\n{log}"
    );

    // From the internet side, nothing but apid's TLS port answers TCP on any machine.
    std::thread::scope(|s| {
        for node in [&alpha, &bravo, &charlie] {
            let lan = &lan;
            s.spawn(move || {
                let open = lan.open_tcp_ports(node.address);
                assert_eq!(open, [7443], "{} has TCP ports open: {open:?}", node.name);
            });
        }
    });

    for node in [&alpha, &bravo, &charlie] {
        check_no_restarts(&lan, node);
    }
    eprintln!(
        "resident memory of Uncloud's daemons on bravo, an idle member: {:.1} MiB",
        daemons_rss_kib(&mut bravo) as f64 / 1024.0
    );

    // A partition: alpha alone | bravo and charlie. Each side notices the other gone, still
    // answers, and takes a write.
    lan.partition(&[&alpha], &[&bravo, &charlie]);
    wait_until(
        "alpha sees bravo and charlie gone, bravo sees alpha gone",
        Duration::from_secs(180),
        || {
            let a = machines_seen_by(&lan, &alpha).unwrap_or_default();
            let b = machines_seen_by(&lan, &bravo).unwrap_or_default();
            let state = |rows: &[serde_json::Value], n: &str| {
                rows.iter()
                    .find(|r| r["name"] == n)
                    .map(|r| r["state"].as_str().unwrap_or_default().to_owned())
            };
            state(&a, "bravo").is_some_and(|s| s != "alive")
                && state(&a, "charlie").is_some_and(|s| s != "alive")
                && state(&b, "alpha").is_some_and(|s| s != "alive")
                && state(&b, "charlie").as_deref() == Some("alive")
        },
    );
    lan.uc.ok(&[
        "machine",
        "label",
        "alpha",
        "side=one",
        "--endpoint",
        &alpha.endpoint(),
    ]);
    lan.uc.ok(&[
        "machine",
        "label",
        "bravo",
        "side=two",
        "--endpoint",
        &bravo.endpoint(),
    ]);
    wait_until(
        "charlie has bravo's write from its side",
        Duration::from_secs(60),
        || {
            machines_seen_by(&lan, &charlie)
                .is_some_and(|rows| label(&rows, "bravo", "side") == Some("two"))
        },
    );
    let b = machines_seen_by(&lan, &bravo).expect("bravo answers during the partition");
    assert_eq!(
        label(&b, "alpha", "side"),
        None,
        "the partition leaked: {b:?}"
    );

    // Healed: one state everywhere, both writes in it.
    lan.heal();
    let converged = wait_until(
        "after the partition heals, every machine has both writes and all three alive",
        Duration::from_secs(300),
        || {
            [&alpha, &bravo, &charlie].iter().all(|node| {
                machines_seen_by(&lan, node).is_some_and(|rows| {
                    all_alive(&rows, &names)
                        && label(&rows, "alpha", "side") == Some("one")
                        && label(&rows, "bravo", "side") == Some("two")
                })
            })
        },
    );
    eprintln!("converged {converged:.0?} after the partition healed");
    wait_until("the mesh is whole again", Duration::from_secs(120), || {
        mesh_up(&lan, 3)
    });

    // Each of bravo's daemons killed in turn: systemd starts it again.
    for unit in [
        "stated",
        "meshd",
        "dnsd",
        "apid",
        "dockerd-shim",
        "ingressd",
    ] {
        let restarts = |node: &mut Node| -> u32 {
            node.succeed(&format!("systemctl show -P NRestarts {unit}.service"))
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("NRestarts of {unit}: {e}"))
        };
        let before = restarts(&mut bravo);
        bravo.succeed(&format!("systemctl kill --signal=KILL {unit}.service"));
        bravo.wait_until_succeeds(
            &format!(
                "test \"$(systemctl show -P NRestarts {unit}.service)\" -gt {before} && \
                 systemctl is-active --quiet {unit}.service"
            ),
            Duration::from_secs(120),
        );
        eprintln!("bravo: {unit} killed and started again by systemd");
    }
    // Nothing was lost, and the network has bravo back: alive everywhere, mesh up.
    for node in [&alpha, &bravo, &charlie] {
        wait_until(
            &format!(
                "after the kills, {} sees all three alive with both writes",
                node.name
            ),
            Duration::from_secs(300),
            || {
                machines_seen_by(&lan, node).is_some_and(|rows| {
                    all_alive(&rows, &names)
                        && label(&rows, "alpha", "side") == Some("one")
                        && label(&rows, "bravo", "side") == Some("two")
                })
            },
        );
    }
    wait_until(
        "the mesh is whole after the kills",
        Duration::from_secs(180),
        || mesh_up(&lan, 3),
    );

    // A power cut in the middle of a stream of writes through charlie: every write it
    // acknowledged is there when it is back.
    let charlie_endpoint = charlie.endpoint();
    let acknowledged = Mutex::new(Vec::<u32>::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Stops the writer however this scope ends: a failed wait below must not leave the
        // scope waiting for it forever.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop_on_drop = StopOnDrop(&stop);
        let writer = s.spawn(|| {
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let out = lan.uc.run(&[
                    "machine",
                    "label",
                    "charlie",
                    &format!("w{n}={n}"),
                    "--endpoint",
                    &charlie_endpoint,
                ]);
                if out.status.success() {
                    acknowledged.lock().unwrap().push(n);
                } else {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        });
        wait_until(
            "charlie acknowledged 3 writes",
            Duration::from_secs(120),
            || acknowledged.lock().unwrap().len() >= 3,
        );
        charlie.crash();
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    });
    let acknowledged = acknowledged.into_inner().unwrap();
    eprintln!("charlie acknowledged writes {acknowledged:?} before its power was cut");
    assert!(acknowledged.len() >= 3, "{acknowledged:?}");
    // Back on cut off from its peers: what it shows then is what its own disk kept, not
    // what they would give it again.
    lan.partition(&[&charlie], &[&alpha, &bravo]);
    charlie.power_on();
    let lost = |rows: &[serde_json::Value]| -> Vec<u32> {
        acknowledged
            .iter()
            .copied()
            .filter(|n| label(rows, "charlie", &format!("w{n}")) != Some(&n.to_string()))
            .collect()
    };
    let mut after = Vec::new();
    wait_until(
        "charlie answers after its power came back",
        Duration::from_secs(120),
        || {
            machines_seen_by(&lan, &charlie)
                .map(|rows| after = rows)
                .is_some()
        },
    );
    assert_eq!(
        lost(&after),
        Vec::<u32>::new(),
        "acknowledged writes lost in charlie's power cut: {after:?}"
    );
    lan.heal();
    for node in [&alpha, &bravo, &charlie] {
        wait_until(
            &format!(
                "after the power cut, {} sees all three alive and charlie's writes",
                node.name
            ),
            Duration::from_secs(300),
            || {
                machines_seen_by(&lan, node)
                    .is_some_and(|rows| all_alive(&rows, &names) && lost(&rows).is_empty())
            },
        );
    }
    wait_until(
        "the mesh is whole after the power cut",
        Duration::from_secs(180),
        || mesh_up(&lan, 3),
    );

    // charlie removed through alpha: gone from every remaining machine's view and names.
    lan.uc
        .ok(&["machine", "rm", "charlie", "--endpoint", &alpha.endpoint()]);
    for node in [&alpha, &bravo] {
        wait_until(
            &format!("{} no longer lists charlie", node.name),
            Duration::from_secs(120),
            || {
                machines_seen_by(&lan, node)
                    .is_some_and(|rows| all_alive(&rows, &["alpha", "bravo"]))
            },
        );
    }
    wait_until(
        "no dnsd names charlie any more",
        Duration::from_secs(120),
        || {
            dns_views(&lan).is_some_and(|views| {
                views.len() == 2
                    && views
                        .iter()
                        .all(|dns| !dns.iter().any(|d| d["name"] == "charlie.machine.internal"))
            })
        },
    );
    alpha.fail("resolvectl query --legend=no charlie.machine.internal");

    // A reboot of alpha through the API: it comes back (another boot), still a member, and
    // bravo sees it alive again.
    let boot_id = |lan: &Lan, node: &Node| -> String {
        lan.uc
            .json(&["machine", "status", "--endpoint", &node.endpoint()])[0]["answer"]["status"]
            ["boot_id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let before = boot_id(&lan, &alpha);
    assert_eq!(before.len(), 36, "a boot id: {before}");
    let mark = alpha.vm.mark();
    lan.uc
        .ok(&["machine", "reboot", "--endpoint", &alpha.endpoint()]);
    alpha.wait_for_banner_since(mark);
    let after = boot_id(&lan, &alpha);
    assert!(
        after.len() == 36 && after != before,
        "another boot: {after}, was {before}"
    );
    wait_until(
        "after alpha's reboot, both see both alive",
        Duration::from_secs(300),
        || {
            [&alpha, &bravo].iter().all(|node| {
                machines_seen_by(&lan, node)
                    .is_some_and(|rows| all_alive(&rows, &["alpha", "bravo"]))
            })
        },
    );
}

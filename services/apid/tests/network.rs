//! A network forms the way a user forms it: three fresh machines (namespaces running the real
//! daemons), `uc machine init` on the first, `uc machine add` for the second, a ticket from
//! `uc machine token` pre-seeded on the third, which joins by itself when it boots. Then
//! everyone sees everyone, over the mesh, and the front door refuses what it should.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use uncloud_testkit::network::Boot;
use uncloud_testkit::network::{Binaries, LocalNetwork};

/// `args` with the value after `flag` replaced.
fn with_flag(args: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut out = args.to_vec();
    let i = out
        .iter()
        .position(|a| a == flag)
        .expect("the flag is there")
        + 1;
    out[i] = value.to_string();
    out
}

/// An admin client certificate for a new key, signed by the CA in a machine's apid data
/// directory, as someone holding that machine's disk could make one: (cert, key) PEM.
fn signed_by_machine_ca(apid_dir: &Path) -> (String, String) {
    let creds = apid::credentials::Credentials::load(apid_dir)
        .unwrap()
        .expect("the machine has credentials");
    let key = rcgen::KeyPair::generate().unwrap();
    use rcgen::PublicKeyData;
    let issued = creds
        .ca
        .issue_client(
            &key.subject_public_key_info(),
            "mallory",
            uncloud_pki::Role::Admin,
            time::OffsetDateTime::now_utc(),
            time::Duration::hours(1),
        )
        .unwrap();
    (issued.cert_pem, key.serialize_pem())
}

/// Whether apid at `addr` answers `info` for this client certificate, asked from the laptop.
fn accepts(net: &LocalNetwork, addr: &str, ca_pem: &str, cert: &(String, String)) -> bool {
    let addr: SocketAddr = addr.parse().unwrap();
    let tls = uncloud_api::tls::client_member(ca_pem, &cert.0, &cert.1).unwrap();
    net.laptop.enter(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let Ok(client) =
                    uncloud_api::client::connect(addr, tls, Duration::from_secs(5)).await
                else {
                    return false;
                };
                matches!(
                    client
                        .info(uncloud_api::client::context(Duration::from_secs(5)))
                        .await,
                    Ok(Ok(_))
                )
            })
    })
}

/// Rows of `uc machine ls -o json` through `endpoint`.
fn rows_via(net: &LocalNetwork, endpoint: &str) -> Vec<serde_json::Value> {
    let out = net.uc_ok(&["machine", "ls", "-o", "json", "--endpoint", endpoint]);
    serde_json::from_str(&out).unwrap()
}

/// `uc machine ls -m all -o json` through `endpoint`: one reply per machine, whether or not
/// every machine answered.
fn fan_out(net: &LocalNetwork, endpoint: &str) -> Vec<serde_json::Value> {
    let out = net.uc(&[
        "machine",
        "ls",
        "-m",
        "all",
        "-o",
        "json",
        "--endpoint",
        endpoint,
    ]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// (name, state) of each row of `uc machine ls -o json`.
fn names_and_states(json: &str) -> Vec<(String, String)> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
    rows.iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A root process on `from` gossips as a machine nobody admitted ("mallory"), seeded with
/// `target`'s gossip port and advertising the laptop as its gossip and sync address. Returns
/// the machine ids mallory heard of (so that the check below can fail: it was heard) and how
/// many packets and connections the laptop got meanwhile (none, if machines dial only the
/// mesh addresses of machines in the state).
fn forged_gossip(
    net: &LocalNetwork,
    from: usize,
    from_mesh: &str,
    target_mesh: &str,
    network_id: &str,
) -> (Vec<String>, usize) {
    use std::net::{SocketAddr, TcpListener, UdpSocket};
    let laptop_gossip: SocketAddr = format!("{}.2:7946", uncloud_testkit::network::INTERNET_PREFIX)
        .parse()
        .unwrap();
    let laptop_sync = SocketAddr::new(laptop_gossip.ip(), 7947);
    let (udp, tcp) = net.laptop.enter(|| {
        let udp = UdpSocket::bind(laptop_gossip).unwrap();
        let tcp = TcpListener::bind(laptop_sync).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        (udp, tcp)
    });
    let listen: SocketAddr = format!("{from_mesh}:17946").parse().unwrap();
    let seed = format!("{target_mesh}:7946");
    let network_id = network_id.to_string();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let counter = s.spawn(|| {
            let mut got = 0;
            let mut buf = [0u8; 65536];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if udp.recv_from(&mut buf).is_ok() {
                    got += 1;
                }
                if tcp.accept().is_ok() {
                    got += 1;
                }
            }
            got
        });
        let heard = net.machines[from].ns.enter(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use chitchat::transport::UdpTransport;
                use chitchat::{spawn_chitchat, ChitchatId};
                let mut config = stated::gossip::chitchat_config(
                    ChitchatId::new("mallory", 1, laptop_gossip),
                    network_id,
                    vec![seed],
                    Duration::from_millis(200),
                    stated::config::Config::default().phi_threshold,
                );
                config.listen_addr = listen;
                let handle = spawn_chitchat(
                    config,
                    vec![("sync".to_string(), laptop_sync.to_string())],
                    &UdpTransport,
                )
                .await
                .unwrap();
                // Long enough for several rounds of everyone's gossip (300 ms here).
                tokio::time::sleep(Duration::from_secs(6)).await;
                let chitchat = handle.chitchat();
                let heard: Vec<String> = chitchat
                    .lock()
                    .await
                    .node_states()
                    .keys()
                    .map(|id| id.node_id.to_string())
                    .filter(|id| id != "mallory")
                    .collect();
                let _ = handle.shutdown().await;
                heard
            })
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (heard, counter.join().unwrap())
    })
}

#[test]
fn three_machines_form_a_network_with_init_add_and_a_preseeded_ticket() {
    let mut net = LocalNetwork::new(Binaries::beside(env!("CARGO_BIN_EXE_apid")));
    // alpha runs containers too: its own dockerd and dockerd-shim.
    let alpha = net.boot_with(
        "alpha",
        Boot {
            docker: true,
            ..Boot::default()
        },
    );
    let beta = net.boot("beta", None);

    // A wrong fingerprint or token is refused with advice, and nothing changes.
    let init = net.machines[alpha].enrol("init");
    let other_fp = net.machines[beta].fingerprint();
    let err = net.uc_fails(&with_flag(&init, "--fingerprint", &other_fp));
    assert!(err.contains("fingerprint"), "{err}");
    let err = net.uc_fails(&with_flag(&init, "--token", "WRONG"));
    assert!(err.contains("wrong setup token"), "{err}");
    assert!(net.machines[alpha].state().is_none(), "still fresh");
    let err = net.uc_fails(&init);
    assert!(
        err.contains("too many wrong setup tokens"),
        "right after a wrong one: {err}"
    );
    // The harness caps apid's backoff at 2 s.
    std::thread::sleep(std::time::Duration::from_millis(2500));

    // init: a network of one, and a context for it. Once a member, alpha shows its network
    // certificate, not the key its console showed: a second init goes nowhere.
    net.uc_ok(&init);
    let err = net.uc_fails(&init);
    assert!(err.contains("already belongs to a network"), "{err}");
    assert!(
        net.machines[alpha].token().is_empty(),
        "the token was consumed"
    );

    // add: beta joins through alpha.
    net.uc_ok(&net.machines[beta].enrol("add"));
    assert!(
        net.machines[beta].token().is_empty(),
        "beta's token was consumed"
    );

    // A pre-seeded ticket: gamma joins by itself at boot, as a Raspberry Pi does, with no
    // real-time clock: its first boot thinks it is two years ago.
    let ticket = net.uc_ok(&["machine", "token", "--ttl", "1h", "--name", "gamma"]);
    let gamma = net.boot_with(
        "gamma",
        Boot {
            ticket: Some(ticket.trim()),
            clock: Some("-730d"),
            ..Boot::default()
        },
    );
    // Joined, and the redeemed ticket file removed (apid does that last).
    net.wait_until("gamma joins with its pre-seeded ticket", 60, || {
        net.machines[gamma].state().is_some()
            && !net.machines[gamma].identity("join-ticket").exists()
            && net.machines[gamma].identity("initialised").exists()
    });
    let log = std::fs::read_to_string(net.machines[gamma].root().join("apid.log")).unwrap();
    assert!(log.contains("dated by the issuer's clock"), "{log}");
    // Then time sync sets its clock: the certificates it made while wrong are good (dated by
    // alpha's clock), so uc reaches it below like any other machine.
    net.machines[gamma].set_clock("+0");

    // Every machine, asked directly, lists all three alive.
    for m in [alpha, beta, gamma] {
        let api = net.machines[m].api();
        net.wait_until(&format!("{api} sees three machines alive"), 60, || {
            let out = net.uc(&["machine", "ls", "-o", "json", "--endpoint", &api]);
            out.status.success() && {
                let rows = names_and_states(&String::from_utf8_lossy(&out.stdout));
                rows.len() == 3 && rows.iter().all(|(_, s)| s == "alive")
            }
        });
    }
    let table = net.uc_ok(&["machine", "ls"]);
    for name in ["alpha", "beta", "gamma"] {
        assert!(table.contains(name), "{table}");
    }

    // Every pair pings over the mesh.
    let ips: Vec<String> = net
        .machines
        .iter()
        .map(|m| m.mesh_ip().expect("a member has a mesh address"))
        .collect();
    for (i, m) in net.machines.iter().enumerate() {
        for (j, ip) in ips.iter().enumerate() {
            if i != j {
                assert!(
                    m.ns.ping(ip, 5),
                    "{} cannot ping {ip}\n{}",
                    m.name,
                    net.logs()
                );
            }
        }
    }

    // Who reaches whom, as each machine sees it: both peers up, direct, with traffic.
    let replies: Vec<serde_json::Value> =
        serde_json::from_str(&net.uc_ok(&["mesh", "peers", "-m", "all", "-o", "json"])).unwrap();
    assert_eq!(replies.len(), 3, "{replies:?}");
    for r in &replies {
        let peers = r["answer"]["mesh_peers"].as_array().expect("peers");
        assert_eq!(peers.len(), 2, "{r}");
        for p in peers {
            assert_eq!(
                (p["status"].as_str(), p["path"].as_str()),
                (Some("up"), Some("direct")),
                "{r}"
            );
            assert!(p["rx_bytes"].as_u64() > Some(0), "{r}");
        }
    }
    // Each machine's status through one: named as in the state, with memory and disk.
    let replies: Vec<serde_json::Value> =
        serde_json::from_str(&net.uc_ok(&["machine", "status", "-m", "all", "-o", "json"]))
            .unwrap();
    let named: Vec<&str> = replies
        .iter()
        .map(|r| {
            r["answer"]["status"]["machine"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(named, ["alpha", "beta", "gamma"], "{replies:?}");
    assert!(replies
        .iter()
        .all(|r| r["answer"]["status"]["memory_total_bytes"].as_u64() > Some(0)));
    // An admin call forwarded to gamma runs there, and only there.
    net.uc_ok(&["machine", "reboot", "-m", "gamma"]);
    net.wait_until("gamma's apid runs its reboot command", 10, || {
        net.machines[gamma].rebooted()
    });
    assert!(!net.machines[alpha].rebooted() && !net.machines[beta].rebooted());

    // A container reaches what is meant for it (apid's port, here on its machine's mesh
    // address) but no machine-to-machine port, on its own machine or another.
    let docker = net.machines[alpha]
        .docker
        .as_ref()
        .expect("alpha runs dockerd");
    docker.import_busybox("busybox:net");
    net.wait_until(
        "alpha's dockerd-shim makes the container network",
        30,
        || {
            docker
                .docker(&["network", "inspect", "uncloud"])
                .status
                .success()
        },
    );
    let reaches = |ip: &str, port: u16| {
        docker
            .docker(&[
                "run",
                "--rm",
                "--network",
                "uncloud",
                "busybox:net",
                "sh",
                "-c",
                &format!("echo | nc -w 3 {ip} {port}"),
            ])
            .status
            .success()
    };
    assert!(
        reaches(&ips[alpha], 7443),
        "a container reaches apid on the mesh (else the refusals below prove nothing)\n{}",
        net.logs()
    );
    for (m, port) in [
        (alpha, 7947),
        (alpha, 7948),
        (alpha, 7949),
        (beta, 7947),
        (beta, 7949),
    ] {
        assert!(
            !reaches(&ips[m], port),
            "a container reached {}'s port {port}",
            net.machines[m].name
        );
    }

    // A forged gossip node makes no one dial it: a root process on beta gossips to alpha as
    // a machine no one admitted, advertising the laptop. alpha answers it (it came through
    // the mesh from beta's address) but nobody sends a packet to where it says it is.
    let network_id = net.machines[alpha].state().expect("a member")["network"]["id"]
        .as_str()
        .expect("the network's id")
        .to_string();
    let (heard, at_laptop) = forged_gossip(&net, beta, &ips[beta], &ips[alpha], &network_id);
    assert!(
        heard.contains(&net.machines[alpha].machine_id()),
        "the forged node was answered (else this proves nothing): {heard:?}"
    );
    assert_eq!(at_laptop, 0, "a machine dialled the forged node's address");

    // On a member, only root may open stated's sync port at the mesh address: meshd's rule
    // refuses an unprivileged local user, while root gets through.
    let sync_probe = |unprivileged: bool| {
        let mut cmd = net.machines[alpha].ns.command("timeout");
        cmd.arg("3");
        if unprivileged {
            cmd.args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ]);
        }
        cmd.args([
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{}/7947", ips[alpha]),
        ]);
        cmd.status().unwrap().success()
    };
    assert!(
        sync_probe(false),
        "root reaches stated at the mesh address (else the next check proves nothing)"
    );
    assert!(!sync_probe(true), "an unprivileged user reached stated");

    // A member cannot be added again (here or to another network): its banner no longer
    // offers the commands, and the key it showed as fresh is no longer the one it serves.
    assert!(
        !net.machines[gamma].banner().contains("uc machine"),
        "a member's banner offers no enrolment"
    );
    let gamma_fp = net.machines[gamma].fingerprint();
    let again = [
        "machine",
        "add",
        &net.machines[gamma].api(),
        "--fingerprint",
        &gamma_fp,
        "--token",
        "x",
    ];
    let err = net.uc_fails(&again);
    assert!(err.contains("already belongs to a network"), "{err}");

    // The ticket was single-use: a fourth machine pre-seeded with it stays fresh.
    let delta = net.boot("delta", Some(ticket.trim()));
    net.wait_until("delta's reused ticket is refused", 30, || {
        std::fs::read_to_string(net.machines[delta].root().join("apid.log"))
            .unwrap_or_default()
            .contains("was refused")
    });
    assert!(net.machines[delta].state().is_none(), "delta stays fresh");
    let log = std::fs::read_to_string(net.machines[delta].root().join("apid.log")).unwrap();
    assert!(log.contains("used already"), "{log}");

    // A ticket changed on the way (here: to name another network) and one that expired
    // before its machine booted are refused by the issuer; their machines stay fresh.
    let (mut claims, _, signature) = uncloud_pki::ticket::read(ticket.trim()).unwrap();
    claims.network_id = "another-network".into();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let tampered = format!(
        "{}{}.{}",
        uncloud_pki::ticket::PREFIX,
        b64.encode(serde_json::to_vec(&claims).unwrap()),
        b64.encode(signature)
    );
    let expired = net.uc_ok(&["machine", "token", "--ttl", "1"]);
    std::thread::sleep(Duration::from_secs(2));
    let epsilon = net.boot("epsilon", Some(&tampered));
    let zeta = net.boot("zeta", Some(expired.trim()));
    for (m, why) in [(epsilon, "signature does not match"), (zeta, "expired")] {
        let log_path = net.machines[m].root().join("apid.log");
        let name = net.machines[m].name.clone();
        net.wait_until(&format!("{name}'s ticket is refused"), 30, || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("was refused")
        });
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert!(log.contains(why), "{name}: {log}");
        assert!(net.machines[m].state().is_none(), "{name} stays fresh");
    }

    // A host on the internet that routes the mesh range to alpha cannot reach alpha's stated
    // at its mesh address: machine ports answer only through the mesh device.
    let alpha_mesh = ips[alpha].clone();
    let via = net.machines[alpha].public_ip.to_string();
    net.laptop
        .ip(&["route", "add", "10.210.0.0/16", "via", &via]);
    let sync = std::net::SocketAddr::new(alpha_mesh.parse().unwrap(), 7947);
    let reached = net.laptop.enter(|| {
        std::net::TcpStream::connect_timeout(&sync, std::time::Duration::from_secs(2)).is_ok()
    });
    assert!(!reached, "{sync} answered a host outside the mesh");
    // ... while apid, on every address, does: the route itself works.
    let api = std::net::SocketAddr::new(alpha_mesh.parse().unwrap(), 7443);
    let reached = net.laptop.enter(|| {
        std::net::TcpStream::connect_timeout(&api, std::time::Duration::from_secs(2)).is_ok()
    });
    assert!(
        reached,
        "{api} should answer through the route (the check above would prove nothing)"
    );

    // Nothing but apid and WireGuard answers on a machine's public address: stated's ports
    // are bound to the mesh address only.
    for port in [7946u16, 7947] {
        let addr = std::net::SocketAddr::from((net.machines[alpha].public_ip, port));
        let open = net.laptop.enter(|| {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).is_ok()
        });
        assert!(!open, "{addr} answers from the internet");
    }

    // Managing machines, through any member: rename, labels, roles. Each shows on the other
    // machines once it has spread.
    let out = net.uc_ok(&["machine", "rename", "beta", "bravo", "-o", "json"]);
    assert!(out.contains("\"name\": \"bravo\""), "{out}");
    net.uc_ok(&["machine", "label", "bravo", "disk=ssd", "zone=eu"]);
    net.uc_ok(&["machine", "label", "bravo", "--rm", "zone"]);
    net.uc_ok(&["machine", "role", "add", "bravo", "ingress"]);
    let alpha_api = net.machines[alpha].api();
    let bravo_api = net.machines[beta].api();
    let gamma_api = net.machines[gamma].api();
    net.wait_until("gamma sees bravo's new name, labels and role", 30, || {
        rows_via(&net, &gamma_api).iter().any(|r| {
            r["name"] == "bravo"
                && r["labels"] == serde_json::json!({"disk": "ssd"})
                && r["roles"] == serde_json::json!(["ingress"])
        })
    });
    let err = net.uc_fails(&["machine", "rename", "alpha", "gamma"]);
    assert!(err.contains("taken"), "{err}");
    let err = net.uc_fails(&["machine", "role", "add", "bravo", "database"]);
    assert!(
        err.contains("unknown role") && err.contains("ingress"),
        "{err}"
    );
    let err = net.uc_fails(&["machine", "label", "bravo", "bad key=x"]);
    assert!(err.contains("label key"), "{err}");
    let err = net.uc_fails(&["machine", "rm", "nosuch"]);
    assert!(err.contains("no machine named \"nosuch\""), "{err}");
    let err = net.uc_fails(&["machine", "rm", "alpha", "--endpoint", &alpha_api]);
    assert!(err.contains("answering this call"), "{err}");

    // Fan-out: each machine's own view, asked through one.
    let views = fan_out(&net, &alpha_api);
    assert_eq!(views.len(), 3, "{views:?}");
    for v in &views {
        assert_eq!(
            v["answer"]["machines"].as_array().map(Vec::len),
            Some(3),
            "{v}"
        );
    }

    // A partition: alpha | bravo, gamma. uc still answers on each side, shows the other side
    // unreachable within seconds, and each side makes a change.
    net.partition(&[alpha], &[beta, gamma]);
    for (api, here, there) in [
        (&alpha_api, vec!["alpha"], vec!["bravo", "gamma"]),
        (&bravo_api, vec!["bravo", "gamma"], vec!["alpha"]),
    ] {
        let started = Instant::now();
        let views = fan_out(&net, api);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "unreachable machines were waited for: {:?}",
            started.elapsed()
        );
        for v in &views {
            let name = v["machine"].as_str().unwrap();
            if here.contains(&name) {
                assert!(v["answer"]["machines"].is_array(), "{api}: {v}");
            } else {
                assert!(there.contains(&name), "{v}");
                assert_eq!(v["error"]["kind"], "unreachable", "{api}: {v}");
            }
        }
    }
    net.uc_ok(&[
        "machine",
        "label",
        "alpha",
        "side=a",
        "--endpoint",
        &alpha_api,
    ]);
    net.uc_ok(&[
        "machine",
        "label",
        "gamma",
        "side=b",
        "--endpoint",
        &bravo_api,
    ]);
    net.wait_until("alpha sees the other side down", 30, || {
        rows_via(&net, &alpha_api)
            .iter()
            .filter(|r| r["state"] != "alive")
            .count()
            == 2
    });

    // Healed: one state everywhere, both sides' changes in it, everyone alive.
    net.heal();
    for api in [&alpha_api, &bravo_api, &gamma_api] {
        net.wait_until(&format!("{api} converges after the heal"), 60, || {
            let rows = rows_via(&net, api);
            let label = |name: &str| {
                rows.iter()
                    .find(|r| r["name"] == name)
                    .map(|r| r["labels"]["side"].clone())
            };
            rows.iter().all(|r| r["state"] == "alive")
                && label("alpha") == Some("a".into())
                && label("gamma") == Some("b".into())
        });
    }

    // Client certificates. A reader's, issued for ten days: the first command that uses it
    // renews it (less than 30 days left); it may look but not change anything.
    let ro_file = net.uc_config.path().join("grafana.uccontext");
    let ro_file = ro_file.to_str().unwrap();
    net.uc_ok(&[
        "cert", "issue", "grafana", "--role", "reader", "--ttl", "10d", "--out", ro_file,
    ]);
    net.uc_ok(&["ctx", "import", ro_file, "--name", "ro"]);
    let out = net.uc(&["--context", "ro", "machine", "ls"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("renewed this context's certificate"),
        "{stderr}"
    );
    let err = net.uc_fails(&["--context", "ro", "machine", "rename", "bravo", "x"]);
    assert!(err.contains("a reader certificate cannot"), "{err}");
    let err = net.uc_fails(&["--context", "ro", "cert", "revoke", "grafana"]);
    assert!(err.contains("a reader certificate cannot"), "{err}");
    let certs: Vec<serde_json::Value> =
        serde_json::from_str(&net.uc_ok(&["cert", "ls", "-o", "json"])).unwrap();
    let grafana = certs.iter().filter(|c| c["subject"] == "grafana").count();
    assert_eq!(grafana, 2, "issued and renewed: {certs:?}");
    assert!(
        certs.iter().any(|c| c["role"] == "admin"),
        "init's admin certificate is listed: {certs:?}"
    );

    // Revocation reaches a machine that is offline when it is made. bravo accepts the reader
    // now, goes down, the reader is revoked through alpha, bravo comes back: it refuses it.
    net.uc_ok(&["--context", "ro", "machine", "ls", "--endpoint", &bravo_api]);
    net.machines[beta].stop();
    net.uc_ok(&["cert", "revoke", "grafana", "--endpoint", &alpha_api]);
    // apid re-reads the revocations at most once a second.
    net.wait_until("alpha refuses the revoked reader", 5, || {
        let out = net.uc(&["--context", "ro", "machine", "ls", "--endpoint", &alpha_api]);
        String::from_utf8_lossy(&out.stderr).contains("was revoked")
    });
    net.machines[beta].start();
    net.wait_until("bravo, back, refuses the revoked reader", 60, || {
        let out = net.uc(&["--context", "ro", "machine", "ls", "--endpoint", &bravo_api]);
        String::from_utf8_lossy(&out.stderr).contains("was revoked")
    });
    // The admin's certificate still works there: what bravo refuses is the revoked one.
    net.wait_until("bravo answers the admin again", 30, || {
        net.uc(&["machine", "ls", "--endpoint", &bravo_api])
            .status
            .success()
    });
    let err = net.uc_fails(&["cert", "revoke", "nobody"]);
    assert!(err.contains("no client certificate"), "{err}");

    // Removal. Before: a certificate gamma's CA signs is as good as any member's.
    let rows = rows_via(&net, &alpha_api);
    let ca_bundle: String = rows
        .iter()
        .map(|r| r["ca_cert"].as_str().unwrap().to_string())
        .collect();
    let gamma_ca = rows.iter().find(|r| r["name"] == "gamma").unwrap()["ca_cert"]
        .as_str()
        .unwrap()
        .trim()
        .to_string();
    assert!(!gamma_ca.is_empty(), "gamma published its CA");
    let apid_dir = |m: usize| net.machines[m].root().join("var/lib/uncloud/apid");
    let by_gamma = signed_by_machine_ca(&apid_dir(gamma));
    let by_bravo = signed_by_machine_ca(&apid_dir(beta));
    assert!(accepts(&net, &alpha_api, &ca_bundle, &by_gamma));
    let gamma_mesh = ips[gamma].clone();
    net.uc_ok(&["machine", "rm", "gamma", "--endpoint", &alpha_api]);

    // Gone from every remaining machine's state, and from the client's context.
    for api in [&alpha_api, &bravo_api] {
        net.wait_until(&format!("{api} lists two machines"), 30, || {
            let rows = rows_via(&net, api);
            rows.len() == 2 && rows.iter().all(|r| r["name"] != "gamma")
        });
    }
    let bundle =
        std::fs::read_to_string(net.uc_config.path().join("contexts/default/ca.pem")).unwrap();
    assert!(
        !bundle.contains(&gamma_ca),
        "the context still trusts gamma"
    );

    // Nothing gamma holds or signs is accepted any more: its CA's certificates are refused
    // (a certificate of a remaining machine's CA still works: the refusal is about gamma) ...
    net.wait_until("alpha refuses what gamma's CA signs", 10, || {
        !accepts(&net, &alpha_api, &ca_bundle, &by_gamma)
    });
    net.wait_until("bravo refuses what gamma's CA signs", 10, || {
        !accepts(&net, &bravo_api, &ca_bundle, &by_gamma)
    });
    assert!(accepts(&net, &alpha_api, &ca_bundle, &by_bravo));
    // ... and it is out of the mesh, both ways.
    net.wait_until("alpha no longer reaches gamma over the mesh", 30, || {
        !net.machines[alpha].ns.ping(&gamma_mesh, 1)
    });
    assert!(!net.machines[gamma].ns.ping(&ips[beta], 2));
    // gamma restarts (it was only offline, as far as it knows) and tries again: still
    // refused, and it reappears nowhere.
    net.machines[gamma].stop();
    net.machines[gamma].start();
    std::thread::sleep(Duration::from_secs(5));
    for api in [&alpha_api, &bravo_api] {
        let rows = rows_via(&net, api);
        assert_eq!(rows.len(), 2, "{api}: {rows:?}");
    }
    assert!(!net.machines[gamma].ns.ping(&ips[alpha], 2));
}

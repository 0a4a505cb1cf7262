//! A network forms the way a user forms it: three fresh machines (namespaces running the real
//! daemons), `uc machine init` on the first, `uc machine add` for the second, a ticket from
//! `uc machine token` pre-seeded on the third, which joins by itself when it boots. Then
//! everyone sees everyone, over the mesh, and the front door refuses what it should.

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

#[test]
fn three_machines_form_a_network_with_init_add_and_a_preseeded_ticket() {
    let mut net = LocalNetwork::new(Binaries::beside(env!("CARGO_BIN_EXE_apid")));
    let alpha = net.boot("alpha", None);
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

    // A pre-seeded ticket: gamma joins by itself at boot.
    let ticket = net.uc_ok(&["machine", "token", "--ttl", "1h", "--name", "gamma"]);
    let gamma = net.boot("gamma", Some(ticket.trim()));
    // Joined, and the redeemed ticket file removed (apid does that last).
    net.wait_until("gamma joins with its pre-seeded ticket", 60, || {
        net.machines[gamma].state().is_some()
            && !net.machines[gamma].identity("join-ticket").exists()
            && net.machines[gamma].identity("initialised").exists()
    });

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

    // A member cannot be added again (here or to another network): it no longer shows its
    // maintenance key.
    let again = with_flag(&net.machines[gamma].enrol("add"), "--token", "x");
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
}

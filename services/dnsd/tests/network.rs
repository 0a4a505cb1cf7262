//! dnsd in a local network: two machines (namespaces with the real daemons and their own
//! dockerd), formed with `uc`, serving names of real containers and balancing the services'
//! virtual addresses, through a partition.

use std::collections::BTreeSet;

use uncloud_testkit::network::{Binaries, Boot, LocalNetwork};

const STATE: [&str; 4] = [
    "call",
    "org.uncloud.State1",
    "/org/uncloud/State1",
    "org.uncloud.State1",
];
const DOCKER: [&str; 4] = [
    "call",
    "org.uncloud.Docker1",
    "/org/uncloud/Docker1",
    "org.uncloud.Docker1",
];

fn service_json(project: &str, name: &str) -> String {
    service_running(project, name, &["sleep", "3600"])
}

fn service_running(project: &str, name: &str, command: &[&str]) -> String {
    serde_json::json!({
        "id": format!("{name}.{project}"),
        "name": name,
        "project": project,
        "spec": {"image": "busybox:uc", "command": command, "replicas": 1},
    })
    .to_string()
}

/// A web server that answers its container's hostname on port 8080.
const ECHO: [&str; 3] = [
    "sh",
    "-c",
    "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 8080 -h /w",
];

/// `n` fresh connections to `host` port 8080 with busybox's `nc` (a shell loop, in a
/// container or on a machine); what answered each: a hostname, or the last line of the error.
fn fetch_hostnames(
    run: impl Fn(&[&str]) -> std::process::Output,
    nc: &str,
    host: &str,
    n: u32,
) -> Vec<String> {
    let script = format!(
        "i=0; while [ $i -lt {n} ]; do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | {nc} -w 3 {host} 8080 2>&1; echo; echo --; i=$((i+1)); done"
    );
    let out = run(&["sh", "-c", &script]);
    String::from_utf8_lossy(&out.stdout)
        .split("\n--\n")
        .filter_map(|answer| answer.lines().rev().find(|l| !l.trim().is_empty()))
        .map(|l| l.trim().to_string())
        .collect()
}

/// `dig +short` on machine `i` against its own dnsd (127.0.0.1), sorted lines.
fn dig(net: &LocalNetwork, i: usize, name: &str) -> Vec<String> {
    let out = net.machines[i].ns.exec(
        "dig",
        &["@127.0.0.1", "+short", "+tries=1", "+time=2", name],
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn names_of_machines_containers_and_services_follow_the_state_and_the_partition() {
    let mut net = LocalNetwork::new(Binaries::beside(env!("CARGO_BIN_EXE_dnsd")));
    let docker = Boot {
        docker: true,
        ..Boot::default()
    };
    let alpha = net.boot_with("alpha", docker);
    let beta = net.boot_with("beta", docker);
    net.uc_ok(&net.machines[alpha].enrol("init"));
    net.uc_ok(&net.machines[beta].enrol("add"));
    let ips: Vec<String> = [alpha, beta]
        .iter()
        .map(|&i| {
            let mut ip = None;
            net.wait_until("a mesh address", 30, || {
                ip = net.machines[i].mesh_ip();
                ip.is_some()
            });
            ip.unwrap()
        })
        .collect();

    // Machines by name, from either machine.
    for i in [alpha, beta] {
        net.wait_until("machine names resolve", 30, || {
            dig(&net, i, "alpha.machine.internal") == [ips[0].clone()]
                && dig(&net, i, "BETA.machine.internal") == [ips[1].clone()]
        });
    }

    // Two projects each with a `db`, and shop's `web`: db of shop on alpha, the rest on beta.
    for (project, name) in [("shop", "db"), ("blog", "db"), ("shop", "web")] {
        let (ok, _, err) = net.machines[alpha].busctl(
            &[
                &STATE[..],
                &["UpsertService", "s", &service_json(project, name)],
            ]
            .concat(),
        );
        assert!(ok, "{err}");
    }
    for i in [alpha, beta] {
        net.machines[i]
            .docker
            .as_ref()
            .unwrap()
            .import_busybox("busybox:uc");
    }
    let run_spec = |i: usize, project: &str, name: &str, spec: &str, container: &str| {
        net.wait_until("the service reached the machine", 30, || {
            net.machines[i]
                .busctl(
                    &[
                        &STATE[..],
                        &["Get", "ss", "services", &format!("{name}.{project}")],
                    ]
                    .concat(),
                )
                .0
        });
        let (ok, _, err) =
            net.machines[i].busctl(&[&DOCKER[..], &["RunService", "ss", spec, container]].concat());
        assert!(ok, "{err}\n{}", net.logs());
    };
    let run = |i: usize, project: &str, name: &str, container: &str| {
        run_spec(i, project, name, &service_json(project, name), container)
    };
    run(alpha, "shop", "db", "shop-db-1");
    run(beta, "blog", "db", "blog-db-1");
    run(beta, "shop", "web", "shop-web-1");
    let container_ip = |i: usize, name: &str| {
        net.machines[i]
            .docker
            .as_ref()
            .unwrap()
            .docker_ok(&[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                name,
            ])
            .trim()
            .to_string()
    };
    let shop_db = container_ip(alpha, "shop-db-1");
    let blog_db = container_ip(beta, "blog-db-1");
    assert!(shop_db.starts_with("10.210."), "{shop_db}");

    // Services by project, containers by machine, from both machines.
    for i in [alpha, beta] {
        net.wait_until("service and container names resolve", 30, || {
            dig(&net, i, "db.shop.internal") == [shop_db.clone()]
                && dig(&net, i, "db.blog.internal") == [blog_db.clone()]
                && dig(&net, i, "blog-db-1.beta.machine.internal") == [blog_db.clone()]
        });
    }
    // The local API shows the same names.
    let (ok, out, err) = net.machines[beta].busctl(&[
        "call",
        "org.uncloud.Dns1",
        "/org/uncloud/Dns1",
        "org.uncloud.Dns1",
        "Resolve",
        "s",
        "db.shop.internal",
    ]);
    assert!(ok && out.contains(&shop_db), "{out} {err}");

    // And `uc` shows what each machine answers.
    let table = net.uc_ok(&["dns", "ls", "-m", "all"]);
    for want in [
        "answered by alpha",
        "answered by beta",
        "db.shop.internal",
        &shop_db,
    ] {
        assert!(table.contains(want), "{want}: {table}");
    }

    // Inside a container of shop (on beta), plain `db` is shop's db (on alpha), through the
    // search domain and beta's dnsd; a container of blog gets blog's.
    let beta_docker = net.machines[beta].docker.as_ref().unwrap();
    let out = beta_docker.docker(&["exec", "shop-web-1", "nslookup", "db"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&shop_db),
        "shop's db for shop: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = beta_docker.docker(&["exec", "blog-db-1", "nslookup", "db"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&blog_db), "blog's db for blog: {text}");

    // An unhealthy container leaves its service's answers (its own name stays).
    let id = beta_docker.docker_ok(&["inspect", "-f", "{{.Id}}", "blog-db-1"]);
    let (ok, _, err) = net.machines[beta].busctl(
        &[
            &STATE[..],
            &["SetContainerHealth", "sb", id.trim(), "false"],
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    net.wait_until("an unhealthy container leaves its service", 10, || {
        dig(&net, alpha, "db.blog.internal").is_empty()
            && dig(&net, alpha, "blog-db-1.beta.machine.internal") == [blog_db.clone()]
    });

    // A virtual address: shop's `echo` has two containers on alpha and one on beta; 30 new
    // connections to `lb.echo` reach all three, from a container of the project on beta (bare
    // name through the search domain), from one of echo's own containers on alpha (the
    // answer may be itself, through the bridge), and from the machine alpha itself.
    let echo = service_running("shop", "echo", &ECHO);
    let (ok, _, err) =
        net.machines[alpha].busctl(&[&STATE[..], &["UpsertService", "s", &echo]].concat());
    assert!(ok, "{err}");
    let echoes = [
        (alpha, "shop-echo-1"),
        (alpha, "shop-echo-2"),
        (beta, "shop-echo-3"),
    ];
    for (i, name) in echoes {
        run_spec(i, "shop", "echo", &echo, name);
    }
    let docker = |i: usize| net.machines[i].docker.as_ref().unwrap();
    let hostname = |i: usize, name: &str| {
        docker(i)
            .docker_ok(&["exec", name, "hostname"])
            .trim()
            .to_string()
    };
    let all: BTreeSet<String> = echoes.iter().map(|&(i, n)| hostname(i, n)).collect();
    assert_eq!(all.len(), 3);
    let echo_ips: BTreeSet<String> = echoes.iter().map(|&(i, n)| container_ip(i, n)).collect();
    let vip = dig(&net, alpha, "lb.echo.shop.internal");
    assert_eq!(vip.len(), 1, "one virtual address: {vip:?}");
    let vip = vip[0].clone();
    assert!(
        vip.starts_with("10.210.0."),
        "from the mesh's index-0 /24: {vip}"
    );
    // nftables on each machine balances over all three once it sees them.
    let balanced_on = |i: usize| {
        let out = net.machines[i]
            .ns
            .exec("nft", &["list", "table", "ip", "uncloud_vips"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // Whole addresses only: 10.210.2.4 is not in 10.210.2.40.
        let listed: BTreeSet<&str> = text
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .collect();
        echo_ips
            .iter()
            .filter(|ip| listed.contains(ip.as_str()))
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    for i in [alpha, beta] {
        net.wait_until("every machine balances over the three", 30, || {
            dig(&net, i, "lb.echo.shop.internal") == [vip.clone()] && balanced_on(i) == echo_ips
        });
    }
    let from_container = |i: usize, name: &str| {
        fetch_hostnames(
            |cmd| docker(i).docker(&[&["exec", name][..], cmd].concat()),
            "nc",
            "lb.echo",
            30,
        )
    };
    let from_machine = |i: usize| {
        fetch_hostnames(
            |cmd| net.machines[i].ns.exec("busybox", cmd),
            "busybox nc",
            &vip,
            30,
        )
    };
    let reach = |who: &str, got: Vec<String>, want: &BTreeSet<String>| {
        assert_eq!(got.len(), 30, "{who}: every connection answered: {got:?}");
        let reached: BTreeSet<String> = got.into_iter().collect();
        assert_eq!(&reached, want, "{who}: the containers reached");
    };
    reach(
        "a shop container on beta",
        from_container(beta, "shop-web-1"),
        &all,
    );
    reach(
        "echo's own container on alpha",
        from_container(alpha, "shop-echo-1"),
        &all,
    );
    reach("the machine alpha", from_machine(alpha), &all);
    // One stops: no new connection goes to it.
    docker(beta).docker_ok(&["stop", "-t", "1", "shop-echo-3"]);
    let left: BTreeSet<String> = echoes[..2]
        .iter()
        .map(|&(i, n)| container_ip(i, n))
        .collect();
    let left_names: BTreeSet<String> = echoes[..2].iter().map(|&(i, n)| hostname(i, n)).collect();
    for i in [alpha, beta] {
        net.wait_until("the stopped container leaves the balancing", 30, || {
            balanced_on(i) == left
        });
    }
    reach(
        "a shop container on beta",
        from_container(beta, "shop-web-1"),
        &left_names,
    );
    reach("the machine alpha", from_machine(alpha), &left_names);

    // A partition: alpha stops answering with beta's containers once it sees beta down,
    // and answers again after the heal.
    net.partition(&[alpha], &[beta]);
    net.wait_until("beta's containers leave alpha's answers", 30, || {
        dig(&net, alpha, "web.shop.internal").is_empty()
    });
    let seen: serde_json::Value = serde_json::from_str(&net.uc_ok(&[
        "dns",
        "ls",
        "-o",
        "json",
        "--endpoint",
        &net.machines[alpha].api(),
    ]))
    .unwrap();
    let web = seen[0]["answer"]["dns_names"]
        .as_array()
        .expect("names")
        .iter()
        .find(|n| n["name"] == "web.shop.internal")
        .cloned();
    assert_eq!(
        web.map(|w| w["addresses"].clone()),
        Some(serde_json::json!([])),
        "alpha's view, through uc, in the partition"
    );
    assert_eq!(
        dig(&net, beta, "web.shop.internal").len(),
        1,
        "beta still answers with its own"
    );
    net.heal();
    net.wait_until("beta's containers come back after the heal", 60, || {
        dig(&net, alpha, "web.shop.internal").len() == 1
    });
}

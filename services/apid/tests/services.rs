//! Services across a network, the way a user runs them: three machines (namespaces with the
//! real daemons and their own dockerd), formed with `uc`, then `uc run` spreads containers over
//! them, `uc scale` changes how many, `uc ls`/`uc ps` show them from the state, DNS answers for
//! them, `uc deploy` runs Compose projects (real ones among them) and rolls changes out (and
//! back), a machine that joins later gets the global services, and `uc rm` leaves nothing
//! behind, even when a machine was cut off at first.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::Stdio;

use uncloud_testkit::network::{Binaries, Boot, LocalNetwork};
use uncloud_testkit::Dockerd;

/// A web server that answers its container's hostname on port 8080.
const ECHO: &str = "mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 8080 -h /w";

/// `uc ps -o json` as (service, machine, state, machine_state, ip) rows, sorted.
fn ps(net: &LocalNetwork, endpoint: &str) -> Vec<(String, String, String, String, String)> {
    let out = net.uc_ok(&["ps", "-o", "json", "--endpoint", endpoint]);
    let replies: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut rows = Vec::new();
    for service in replies[0]["answer"]["services"].as_array().unwrap() {
        let name = service["name"].as_str().unwrap().to_string();
        let name = match service["project"].as_str().unwrap() {
            "" => name,
            p => format!("{name}.{p}"),
        };
        for c in service["containers"].as_array().unwrap() {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            rows.push((
                name.clone(),
                s("machine"),
                s("state"),
                s("machine_state"),
                s("ip"),
            ));
        }
    }
    rows.sort();
    rows
}

/// Managed containers in machine `i`'s engine, by name.
fn engine_containers(net: &LocalNetwork, i: usize) -> Vec<String> {
    let out = net.machines[i].docker.as_ref().unwrap().docker_ok(&[
        "ps",
        "-a",
        "--filter",
        "label=org.uncloud.service.id",
        "--format",
        "{{.Names}}",
    ]);
    let mut names: Vec<String> = out.lines().map(str::to_string).collect();
    names.sort();
    names
}

/// The name of a running container of `service` on `machine`, from `uc ps`.
fn container_on(net: &LocalNetwork, endpoint: &str, service: &str, machine: &str) -> String {
    let out = net.uc_ok(&["ps", "-o", "json", "--endpoint", endpoint]);
    let replies: serde_json::Value = serde_json::from_str(&out).unwrap();
    for s in replies[0]["answer"]["services"].as_array().unwrap() {
        if s["name"] != service {
            continue;
        }
        for c in s["containers"].as_array().unwrap() {
            if c["machine"] == machine && c["state"] == "running" {
                return c["name"].as_str().unwrap().to_string();
            }
        }
    }
    panic!("no running container of {service} on {machine}: {out}")
}

fn count(rows: &[(String, String, String, String, String)], service: &str, machine: &str) -> usize {
    rows.iter()
        .filter(|r| r.0 == service && r.1 == machine && r.2 == "running")
        .count()
}

#[test]
fn services_spread_over_the_machines_and_leave_nothing_behind() {
    let mut net = LocalNetwork::new(Binaries::beside(env!("CARGO_BIN_EXE_apid")));
    let docker = Boot {
        docker: true,
        ..Boot::default()
    };
    let alpha = net.boot_with("alpha", docker);
    let beta = net.boot_with("beta", docker);
    let gamma = net.boot_with("gamma", docker);
    net.uc_ok(&net.machines[alpha].enrol("init"));
    net.uc_ok(&net.machines[beta].enrol("add"));
    net.uc_ok(&net.machines[gamma].enrol("add"));
    for i in [alpha, beta, gamma] {
        net.machines[i]
            .docker
            .as_ref()
            .unwrap()
            .import_busybox("busybox:uc");
    }
    let ids: Vec<String> = [alpha, beta, gamma]
        .iter()
        .map(|&i| net.machines[i].machine_id())
        .collect();
    net.wait_until("alpha sees every machine alive", 60, || {
        ids.iter().all(|id| net.machines[alpha].sees_alive(id))
    });
    let at_alpha = net.machines[alpha].api();

    // Three replicas go one to each machine; `uc run` says where.
    let out = net.uc_ok(&[
        "run",
        "--name",
        "web",
        "--replicas",
        "3",
        "busybox:uc",
        "sh",
        "-c",
        ECHO,
    ]);
    for name in ["alpha", "beta", "gamma"] {
        assert!(out.contains(name), "{out}");
    }
    net.wait_until("every machine's container is in the state", 30, || {
        let rows = ps(&net, &at_alpha);
        ["alpha", "beta", "gamma"]
            .iter()
            .all(|m| count(&rows, "web", m) == 1)
    });
    let ls = net.uc_ok(&["ls", "--endpoint", &at_alpha]);
    assert!(ls.contains("web") && ls.contains("3/3"), "{ls}");

    // `uc exec` through alpha: in the container on beta (over the mesh) and in alpha's own
    // (over D-Bus), stdout and stderr apart, the exit code returned, input passed with -i.
    for (i, machine) in [(beta, "beta"), (alpha, "alpha")] {
        let name = container_on(&net, &at_alpha, "web", machine);
        let target = format!("web/{name}");
        let out = net
            .uc_command(&["exec", "--endpoint", &at_alpha, &target, "sh", "-c"])
            .arg("hostname; echo oops >&2; exit 3")
            .output()
            .unwrap();
        let engine = net.machines[i].docker.as_ref().unwrap();
        let hostname = engine.docker_ok(&["exec", &name, "hostname"]);
        assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
            (Some(3), hostname.trim()),
            "uc exec on {machine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "oops");
        let mut child = net
            .uc_command(&[
                "exec",
                "-i",
                "--endpoint",
                &at_alpha,
                &target,
                "busybox",
                "wc",
                "-c",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let input = vec![b'x'; 300_000];
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "uc exec -i on {machine}: {:?} {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "300000");
    }
    // A terminal (`script` gives uc one, of 30 rows and 100 columns): the command gets one of
    // that size (set right after it starts, as `docker exec -t` does with engines before API
    // 1.42, hence the pause).
    let name = container_on(&net, &at_alpha, "web", "gamma");
    let uc = net.uc_command(&[
        "exec",
        "-t",
        "--endpoint",
        &at_alpha,
        &format!("web/{name}"),
    ]);
    let line = std::iter::once(uc.get_program())
        .chain(uc.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = std::process::Command::new("script")
        .args([
            "-qec",
            &format!(
                "stty rows 30 cols 100; (sleep 4; stty rows 40 cols 120 </dev/tty) & \
                 {line} sh -c 'busybox tty; sleep 1; busybox stty size; sleep 6; busybox stty size'"
            ),
            "/dev/null",
        ])
        .env("UNCLOUD_CONFIG_DIR", net.uc_config.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Then this terminal grows (the kernel tells uc with SIGWINCH): so does the command's.
    assert!(
        text.contains("/dev/pts/") && text.contains("30 100") && text.contains("40 120"),
        "uc exec -t: {text}"
    );
    // A command the container does not have: 126, as with Docker, and the engine's reason.
    let out = net.uc(&["exec", "--endpoint", &at_alpha, "web", "nosuchcommand"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nosuchcommand"));
    // Without a running container of the service, it says so.
    let err = net.uc_fails(&["exec", "--endpoint", &at_alpha, "nope", "true"]);
    assert!(err.contains("no service named"), "{err}");

    // The containers answer under the service's name, from any machine.
    let ips: Vec<String> = ps(&net, &at_alpha).into_iter().map(|r| r.4).collect();
    net.wait_until("web.internal resolves to the three containers", 30, || {
        let out = net.machines[gamma].ns.exec(
            "dig",
            &[
                "@127.0.0.1",
                "+short",
                "+tries=1",
                "+time=2",
                "web.internal",
            ],
        );
        let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        got.sort();
        got == ips
    });

    // Scaled up, the new ones spread; scaled down, what stays is spread; back to one each.
    let web_per_machine = |net: &LocalNetwork| -> Vec<usize> {
        let rows = ps(net, &at_alpha);
        ["alpha", "beta", "gamma"]
            .iter()
            .map(|m| count(&rows, "web", m))
            .collect()
    };
    net.uc_ok(&["scale", "web", "5"]);
    net.wait_until("five web containers, at most two a machine", 30, || {
        let per = web_per_machine(&net);
        per.iter().sum::<usize>() == 5 && per.iter().all(|&n| (1..=2).contains(&n))
    });
    net.uc_ok(&["scale", "web", "2"]);
    net.wait_until("two web containers on two machines", 30, || {
        let per = web_per_machine(&net);
        per.iter().sum::<usize>() == 2 && per.iter().all(|&n| n <= 1)
    });
    net.uc_ok(&["scale", "web", "3"]);
    net.wait_until("one web container on each machine again", 30, || {
        web_per_machine(&net) == [1, 1, 1]
    });
    assert!(net.uc_ok(&["ls", "--endpoint", &at_alpha]).contains("3/3"));

    // Global: one on every machine. Pinned with -m: only where asked, doubled up.
    net.uc_ok(&[
        "run",
        "--mode",
        "global",
        "--name",
        "agent",
        "busybox:uc",
        "sleep",
        "3600",
    ]);
    net.uc_ok(&[
        "run",
        "-m",
        "beta",
        "--project",
        "shop",
        "--name",
        "db",
        "--replicas",
        "2",
        "busybox:uc",
        "sleep",
        "3600",
    ]);
    net.wait_until("agent everywhere and db twice on beta", 30, || {
        let rows = ps(&net, &at_alpha);
        ["alpha", "beta", "gamma"]
            .iter()
            .all(|m| count(&rows, "agent", m) == 1)
            && count(&rows, "db.shop", "beta") == 2
            && rows.iter().filter(|r| r.0 == "db.shop").count() == 2
    });

    // What cannot run says why and leaves no service behind.
    let err = net.uc_fails(&[
        "run",
        "--pull",
        "never",
        "--name",
        "ghost",
        "nosuch/image:1",
        "true",
    ]);
    assert!(err.contains("not on the machine"), "{err}");
    let err = net.uc_fails(&["run", "--name", "web", "busybox:uc"]);
    assert!(err.contains("exists already"), "{err}");
    let err = net.uc_fails(&["run", "--name", "lb", "busybox:uc"]);
    assert!(err.contains("reserved"), "{err}");
    let err = net.uc_fails(&["run", "-m", "zeta", "busybox:uc"]);
    assert!(err.contains("no machine named \"zeta\""), "{err}");
    let ls = net.uc_ok(&["ls", "--endpoint", &at_alpha]);
    assert!(!ls.contains("ghost"), "{ls}");
    let err = net.uc_fails(&["scale", "agent", "2"]);
    assert!(err.contains("global"), "{err}");
    let err = net.uc_fails(&["rm", "--endpoint", &at_alpha, "nosuch"]);
    assert!(
        err.contains("no service named") && !err.contains("machine ls"),
        "{err}"
    );
    // Removed right after it ran: `uc run` returned once the records were in the state, so
    // `uc rm` finds every container.
    net.uc_ok(&[
        "run",
        "--name",
        "brief",
        "--replicas",
        "3",
        "busybox:uc",
        "sleep",
        "3600",
    ]);
    net.uc_ok(&["rm", "brief"]);
    for i in [alpha, beta, gamma] {
        let left = engine_containers(&net, i);
        assert!(!left.iter().any(|n| n.starts_with("brief-")), "{left:?}");
    }

    // A Compose project: planned, deployed in dependency order (web waits for db to be
    // healthy), idempotent, a change replaces what changed, a service left out is removed.
    let project = tempfile::tempdir().unwrap();
    let file = project.path().join("compose.yaml");
    let compose = |with_web: bool| {
        let web = "  web:\n    image: busybox:uc\n    command: [\"sleep\", \"3600\"]\n    \
                   deploy:\n      replicas: 2\n    environment:\n      GREETING: ${GREETING:-hello}\n    \
                   depends_on:\n      db:\n        condition: service_healthy\n    networks: [front]\n    \
                   secrets:\n      - token\n    configs:\n      - source: motd\n        target: /etc/motd\n        mode: 0440\n";
        let db = "  db:\n    image: busybox:uc\n    command: sleep 3600\n    x-machines: beta\n    \
                  healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 1s\n      retries: 1\n";
        format!(
            "name: store\nservices:\n{}{db}networks:\n  front:\nsecrets:\n  token:\n    file: ./token.txt\n\
             configs:\n  motd:\n    content: welcome\n",
            if with_web { web } else { "" }
        )
    };
    std::fs::write(&file, compose(true)).unwrap();
    std::fs::write(project.path().join("token.txt"), "t0ken-1\n").unwrap();
    std::fs::write(project.path().join(".env"), "GREETING=hi\n").unwrap();
    let f = file.to_str().unwrap();
    let dry = net.uc(&["deploy", "-f", f, "--dry-run"]);
    let (plan, warnings) = (
        String::from_utf8_lossy(&dry.stdout).into_owned(),
        String::from_utf8_lossy(&dry.stderr).into_owned(),
    );
    assert!(dry.status.success(), "{plan}{warnings}");
    let db_at = plan.find("+ create  db").expect(&plan);
    let web_at = plan.find("+ create  web").expect(&plan);
    assert!(db_at < web_at, "db first, as web depends on it: {plan}");
    assert!(
        warnings.contains("compose.yaml:13: services.web.networks: ignored"),
        "{warnings}"
    );
    assert!(
        !net.uc_ok(&["ls"]).contains("store"),
        "a dry run changes nothing"
    );
    let err = net.uc_fails(&["deploy", "-f", f]);
    assert!(err.contains("add -y"), "{err}");
    net.uc_ok(&["deploy", "-f", f, "-y"]);
    let rows = ps(&net, &at_alpha);
    assert_eq!(count(&rows, "db.store", "beta"), 1, "{rows:?}");
    assert_eq!(
        rows.iter().filter(|r| r.0 == "web.store").count(),
        2,
        "{rows:?}"
    );
    // `docker ARGS… <container>…` on each of web's containers, wherever it runs (the name
    // goes where `{}` is).
    let on_web = |net: &LocalNetwork, args: &[&str]| -> Vec<String> {
        let mut out = Vec::new();
        for i in [alpha, beta, gamma] {
            let docker = net.machines[i].docker.as_ref().unwrap();
            for name in engine_containers(net, i) {
                if name.starts_with("store-web-") {
                    let args: Vec<&str> = args
                        .iter()
                        .map(|a| if *a == "{}" { name.as_str() } else { a })
                        .collect();
                    out.push(docker.docker_ok(&args));
                }
            }
        }
        out
    };
    let web_env = |net: &LocalNetwork| on_web(net, &["inspect", "-f", "{{.Config.Env}}", "{}"]);
    let envs = web_env(&net);
    assert!(
        envs.len() == 2 && envs.iter().all(|e| e.contains("GREETING=hi")),
        "{envs:?}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&net.uc_ok(&["inspect", "web.store"])).unwrap();
    assert_eq!(inspect["spec"]["env"]["GREETING"], "hi", "{inspect}");
    // Secrets and configs: files in every container, wherever it runs; `uc inspect` shows
    // where and which digest, never the content.
    let files = |net: &LocalNetwork| {
        on_web(
            net,
            &[
                "exec",
                "{}",
                "sh",
                "-c",
                "cat /run/secrets/token /etc/motd; stat -c %a /etc/motd",
            ],
        )
    };
    let seen = files(&net);
    assert!(
        seen.len() == 2 && seen.iter().all(|f| f == "t0ken-1\nwelcome440"), // (a plain `content:` has no newline)
        "{seen:?}"
    );
    assert_eq!(
        net.uc_ok(&["exec", "web.store", "cat", "/run/secrets/token"]),
        "t0ken-1\n"
    );
    let shown = inspect["spec"]["files"].to_string();
    assert!(
        shown.contains("/run/secrets/token")
            && shown.contains("sha256-")
            && !shown.contains("t0ken"),
        "{shown}"
    );
    // A reader sees where a secret goes but not its digest (a weak secret's digest can be
    // guessed offline); a config's digest stays.
    let viewer = net.uc_config.path().join("viewer.uccontext");
    let viewer = viewer.to_str().unwrap();
    net.uc_ok(&[
        "cert", "issue", "viewer", "--role", "reader", "--out", viewer,
    ]);
    net.uc_ok(&["ctx", "import", viewer, "--name", "viewer"]);
    let seen: serde_json::Value =
        serde_json::from_str(&net.uc_ok(&["--context", "viewer", "inspect", "web.store"])).unwrap();
    let mounts = seen["spec"]["files"].as_array().unwrap();
    let digest_at = |target: &str| {
        mounts.iter().find(|f| f["target"] == target).unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(digest_at("/run/secrets/token"), "hidden", "{seen}");
    assert!(digest_at("/etc/motd").starts_with("sha256-"), "{seen}");
    assert_eq!(
        inspect["containers"].as_array().unwrap().len(),
        2,
        "{inspect}"
    );
    let err = net.uc_fails(&["inspect", "db"]);
    assert!(err.contains("db.shop") && err.contains("db.store"), "{err}");
    let again = net.uc_ok(&["deploy", "-f", f, "-y"]);
    assert!(again.contains("nothing to change"), "{again}");
    std::fs::write(project.path().join(".env"), "GREETING=hey\n").unwrap();
    std::fs::write(project.path().join("token.txt"), "t0ken-2\n").unwrap();
    let out = net.uc_ok(&["deploy", "-f", f, "-y"]);
    assert!(
        out.contains("~ update  web") && out.contains("(changed: env, files)"),
        "{out}"
    );
    let seen = files(&net);
    assert!(
        seen.len() == 2 && seen.iter().all(|f| f.starts_with("t0ken-2\n")),
        "a new secret is a rolling update: {seen:?}"
    );
    assert!(out.contains("= same    db"), "{out}");
    let envs = web_env(&net);
    assert!(
        envs.len() == 2 && envs.iter().all(|e| e.contains("GREETING=hey")),
        "{envs:?}"
    );
    std::fs::write(&file, compose(false)).unwrap();
    let out = net.uc_ok(&["deploy", "-f", f, "-y"]);
    assert!(out.contains("- remove  web"), "{out}");
    assert!(web_env(&net).is_empty());
    // A file that cannot be deployed says every line at fault and changes nothing.
    std::fs::write(
        &file,
        "services:\n  app:\n    build: .\n    volumes:\n      - ./conf:/etc/app\n",
    )
    .unwrap();
    let err = net.uc_fails(&["deploy", "-f", f, "-y"]);
    assert!(
        err.contains("compose.yaml:3: services.app.build")
            && err.contains("compose.yaml:5: services.app.volumes"),
        "{err}"
    );
    net.uc_ok(&["rm", "db.store"]);

    // Rolling updates. Project `roll`: `web`, three replicas with a health check, and `edge`,
    // one replica on a host port. A change rolls out one container at a time: `web`
    // start-first, never fewer than three healthy containers; `edge` stop-first, as its host
    // port forces.
    for i in [alpha, beta, gamma] {
        let docker = net.machines[i].docker.as_ref().unwrap();
        docker.docker_ok(&["tag", "busybox:uc", "app:1"]);
    }
    let roll_dir = tempfile::tempdir().unwrap();
    let roll_file = roll_dir.path().join("compose.yaml");
    let rf = roll_file.to_str().unwrap();
    let echo = serde_json::to_string(ECHO).unwrap();
    let roll = |image: &str, version: &str| {
        format!(
            "name: roll\nservices:\n  web:\n    image: {image}\n    command: [\"sh\", \"-c\", {echo}]\n    \
             environment:\n      VERSION: \"{version}\"\n    deploy:\n      replicas: 3\n    \
             healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 1s\n      timeout: 1s\n      \
             retries: 1\n  edge:\n    image: app:1\n    command: [\"sh\", \"-c\", {echo}]\n    \
             environment:\n      VERSION: \"{version}\"\n    ports: [\"18080:8080\"]\n    deploy:\n      \
             update_config:\n        monitor: 1s\n"
        )
    };
    // (container, machine index) of a service of `roll`.
    let roll_containers = |net: &LocalNetwork, service: &str| -> Vec<(String, usize)> {
        let prefix = format!("roll-{service}-");
        [alpha, beta, gamma]
            .into_iter()
            .flat_map(|i| {
                engine_containers(net, i)
                    .into_iter()
                    .filter(|n| n.starts_with(&prefix))
                    .map(move |n| (n, i))
            })
            .collect()
    };
    // `{{.Config.Image}} VERSION=…` of each `web` container.
    let web_versions = |net: &LocalNetwork| -> Vec<String> {
        let mut out: Vec<String> = roll_containers(net, "web")
            .into_iter()
            .map(|(n, i)| {
                let docker = net.machines[i].docker.as_ref().unwrap();
                let image = docker.docker_ok(&["inspect", "-f", "{{.Config.Image}}", &n]);
                let env = docker.docker_ok(&["inspect", "-f", "{{.Config.Env}}", &n]);
                let version = env
                    .split([' ', '[', ']'])
                    .find(|e| e.starts_with("VERSION="))
                    .unwrap_or("VERSION=?")
                    .to_string();
                format!("{} {version}", image.trim())
            })
            .collect();
        out.sort();
        out
    };
    let healthy_web = |net: &LocalNetwork| -> usize {
        [alpha, beta, gamma]
            .iter()
            .map(|&i| {
                net.machines[i]
                    .docker
                    .as_ref()
                    .unwrap()
                    .docker_ok(&[
                        "ps",
                        "-q",
                        "--filter",
                        "label=org.uncloud.service.id=web.roll",
                        "--filter",
                        "health=healthy",
                    ])
                    .lines()
                    .count()
            })
            .sum()
    };
    std::fs::write(&roll_file, roll("app:1", "1")).unwrap();
    net.uc_ok(&["deploy", "-f", rf, "-y"]);
    net.wait_until("three healthy web containers", 30, || {
        healthy_web(&net) == 3
    });
    assert_eq!(web_versions(&net), ["app:1 VERSION=1"; 3]);

    std::fs::write(&roll_file, roll("app:1", "2")).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (out, (least, samples)) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let (mut least, mut samples) = (usize::MAX, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                least = least.min(healthy_web(&net));
                samples += 1;
            }
            (least, samples)
        });
        let out = net.uc(&["deploy", "-f", rf, "-y"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, sampler.join().unwrap())
    });
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("start-first") && err.contains("stop-first"),
        "{err}"
    );
    assert_eq!(err.matches("replaced roll-web-").count(), 3, "{err}");
    assert!(
        samples >= 5 && least >= 3,
        "{samples} samples, at least {least} healthy: {err}"
    );
    assert_eq!(web_versions(&net), ["app:1 VERSION=2"; 3]);
    let edge = roll_containers(&net, "edge");
    assert_eq!(edge.len(), 1, "{edge:?}");
    let edge_engine = net.machines[edge[0].1].docker.as_ref().unwrap();
    assert!(edge_engine
        .docker_ok(&["port", &edge[0].0])
        .contains("18080"));

    // A new image that cannot start on the machine the update reaches last: the deploy fails
    // there, says why with the container's last lines, and every container goes back to the
    // previous spec, the two already replaced too.
    let last = (0..ids.len()).max_by_key(|&i| &ids[i]).unwrap();
    for i in [alpha, beta, gamma] {
        let docker = net.machines[i].docker.as_ref().unwrap();
        if i == last {
            docker.import_busybox_with(
                "app:next",
                &["ENTRYPOINT [\"/bin/sh\", \"-c\", \"echo app:next cannot start on this machine; exit 3\"]"],
            );
        } else {
            docker.docker_ok(&["tag", "busybox:uc", "app:next"]);
        }
    }
    std::fs::write(&roll_file, roll("app:next", "2")).unwrap();
    let out = net.uc(&["deploy", "-f", rf, "-y"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("| app:next cannot start on this machine")
            && err.contains(&format!("on {}", net.machines[last].name))
            && err.contains("went back to its previous spec"),
        "{err}"
    );
    assert_eq!(
        err.matches("rollback: replaced roll-web-").count(),
        2,
        "{err}"
    );
    assert_eq!(web_versions(&net), ["app:1 VERSION=2"; 3]);
    net.wait_until("three healthy web containers again", 30, || {
        healthy_web(&net) == 3
    });
    // A health check that never passes: the first new container is not healthy in time
    // (start period + (interval + timeout) × (retries + 1) + 2 s = 6 s), and back it goes.
    let failing = roll("app:1", "5").replace("[\"CMD\", \"true\"]", "[\"CMD\", \"false\"]");
    std::fs::write(&roll_file, &failing).unwrap();
    let out = net.uc(&["deploy", "-f", rf, "-y", "web"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("was not healthy within 6 s")
            && err.contains("went back to its previous spec"),
        "{err}"
    );
    assert_eq!(web_versions(&net), ["app:1 VERSION=2"; 3]);
    let history = net.uc_ok(&["service", "history", "web.roll"]);
    let rows: Vec<&str> = history.lines().skip(1).collect();
    assert_eq!(rows.len(), 6, "{history}");
    assert!(
        rows[2].contains("app:next") && rows[2].contains(" 0 "),
        "{history}"
    );
    assert!(rows[4].contains("env, healthcheck"), "{history}");
    assert!(
        rows[5].starts_with("6 *") && rows[5].contains("app:1"),
        "{history}"
    );

    // `uc rollback` goes to what ran before, skipping the two failed updates: version 1. A
    // revision not kept is refused.
    let out = net.uc(&["rollback", "web.roll"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(web_versions(&net), ["app:1 VERSION=1"; 3]);
    let err = net.uc_fails(&["rollback", "web.roll", "--to", "99"]);
    assert!(err.contains("no revision 99"), "{err}");

    // `uc stop` one container by a prefix of its name; `uc start` the service brings it back;
    // `uc restart` starts the container anew. The spec and the containers stay.
    let (first, fi) = roll_containers(&net, "web").into_iter().next().unwrap();
    let state = |net: &LocalNetwork, i: usize, name: &str, field: &str| {
        net.machines[i].docker.as_ref().unwrap().docker_ok(&[
            "inspect",
            "-f",
            &format!("{{{{.State.{field}}}}}"),
            name,
        ])
    };
    net.uc_ok(&[
        "stop",
        "-t",
        "1",
        &format!("web.roll/{}", &first[..first.len() - 1]),
    ]);
    assert_eq!(state(&net, fi, &first, "Status").trim(), "exited");
    net.wait_until("uc ps shows it exited", 30, || {
        ps(&net, &at_alpha)
            .iter()
            .any(|r| r.0 == "web.roll" && r.2 == "exited")
    });
    let err = net.uc_fails(&["stop", "web.roll/roll-web-"]);
    assert!(err.contains("names several containers"), "{err}");
    net.uc_ok(&["start", "web.roll"]);
    assert_eq!(state(&net, fi, &first, "Status").trim(), "running");
    let (edge_name, ei) = roll_containers(&net, "edge").into_iter().next().unwrap();
    let before = state(&net, ei, &edge_name, "StartedAt");
    net.uc_ok(&["restart", "-t", "1", "edge.roll"]);
    assert_ne!(state(&net, ei, &edge_name, "StartedAt"), before);
    assert_eq!(roll_containers(&net, "web").len(), 3);

    // `uc logs`: each container's lines, from its machine, merged by time with its name in
    // front; one container by a prefix; `-f` keeps printing what comes.
    net.uc_ok(&[
        "run",
        "--name",
        "chatty",
        "--replicas",
        "2",
        "busybox:uc",
        "sh",
        "-c",
        // More than a page (5,000 lines) at once first, for `uc logs -n all`.
        "i=0; while [ $i -lt 6000 ]; do echo \"burst $i\"; i=$((i+1)); done; i=0; \
         while true; do echo \"line $i from $(hostname)\"; i=$((i+1)); sleep 0.3; done",
    ]);
    let chatty: Vec<String> = ps(&net, &at_alpha)
        .iter()
        .filter(|r| r.0 == "chatty")
        .map(|r| r.1.clone())
        .collect();
    assert_eq!(chatty.len(), 2, "{chatty:?}");
    let names: Vec<String> = [alpha, beta, gamma]
        .into_iter()
        .flat_map(|i| engine_containers(&net, i))
        .filter(|n| n.starts_with("chatty-"))
        .collect();
    net.wait_until("uc logs shows lines of both containers", 30, || {
        let out = net.uc_ok(&["logs", "chatty"]);
        names
            .iter()
            .all(|n| out.contains(&format!("{n} | line 1 from ")))
    });
    // A prefix of the first container's name that the other does not share (their random
    // suffixes may start alike): `uc logs SERVICE/PREFIX` names one container.
    let shared = names[0]
        .bytes()
        .zip(names[1].bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let first = format!("chatty/{}", &names[0][..(shared + 1).max(9)]);
    let every = net.uc_ok(&["logs", "-n", "all", &first]);
    let bursts: Vec<&str> = every.lines().filter(|l| l.contains("| burst ")).collect();
    assert_eq!(bursts.len(), 6000, "uc logs -n all reads every page");
    assert!(bursts[0].ends_with("| burst 0") && bursts[5999].ends_with("| burst 5999"));
    let one = net.uc_ok(&["logs", "-n", "1", &first]);
    assert_eq!(one.lines().count(), 1, "{one}");
    assert!(one.starts_with(&format!("{} | line ", names[0])), "{one}");
    let mut follow = net
        .laptop
        .command(net.bins.get("uc"))
        .args(["logs", "-f", "-n", "0", "-t", "chatty"])
        .env("UNCLOUD_CONFIG_DIR", net.uc_config.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    follow.kill().unwrap();
    let followed = String::from_utf8_lossy(&follow.wait_with_output().unwrap().stdout).into_owned();
    for n in &names {
        assert!(
            followed
                .lines()
                .filter(|l| l.contains(&format!("{n} | line ")))
                .count()
                >= 3,
            "{followed}"
        );
    }
    let times: Vec<&str> = followed.lines().map(|l| &l[..24]).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "merged by time: {followed}"
    );
    net.uc_ok(&["rm", "chatty"]);

    // Volumes live on one machine each: `uc volume` with -m says which. One in use is kept.
    net.uc_ok(&["volume", "create", "scratch", "-m", "beta"]);
    assert!(net
        .uc_ok(&["volume", "ls", "-m", "beta"])
        .contains("scratch"));
    assert!(!net
        .uc_ok(&["volume", "ls", "-m", "alpha"])
        .contains("scratch"));
    let inspect = net.uc_ok(&["volume", "inspect", "scratch", "-m", "beta"]);
    assert!(inspect.contains("\"mountpoint\""), "{inspect}");
    net.uc_ok(&["volume", "rm", "scratch", "-m", "beta"]);
    assert!(!net
        .uc_ok(&["volume", "ls", "-m", "beta"])
        .contains("scratch"));
    net.uc_ok(&[
        "run",
        "-m",
        "gamma",
        "--name",
        "holder",
        "-v",
        "held:/data",
        "busybox:uc",
        "sleep",
        "3600",
    ]);
    let err = net.uc_fails(&["volume", "rm", "held", "-m", "gamma"]);
    assert!(err.contains("gamma"), "{err}");
    net.uc_ok(&["rm", "holder"]);
    net.uc_ok(&["volume", "rm", "held", "-m", "gamma"]);
    let err = net.uc_fails(&["volume", "inspect", "held", "-m", "gamma"]);
    assert!(err.contains("gamma"), "{err}");
    let images = net.uc_ok(&["image", "ls", "-m", "all"]);
    assert_eq!(images.matches("busybox:uc").count(), 3, "{images}");

    // `uc image push`: an image in the laptop's Docker reaches the machines without a
    // registry. An interrupted push loads nothing; machines that have the image are skipped.
    let laptop = Dockerd::start();
    laptop.import_busybox_padded("big:1", &["CMD [\"sleep\", \"3600\"]"], 50 << 20);
    let big_id = laptop.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "big:1"]);
    let mut push = net
        .uc_command(&["image", "push", "big:1", "-m", "alpha,beta"])
        .env("DOCKER_HOST", laptop.host())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut progress = BufReader::new(push.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains(" MB") {
        line.clear();
        assert!(
            progress.read_line(&mut line).unwrap() > 0,
            "uc image push ended early"
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(push.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut rest = String::new();
    progress.read_to_string(&mut rest).unwrap();
    assert!(!push.wait().unwrap().success(), "{rest}");
    assert!(rest.contains("nothing was loaded anywhere"), "{rest}");
    for i in [alpha, beta] {
        let engine = net.machines[i].docker.as_ref().unwrap();
        assert!(!engine
            .docker(&["image", "inspect", "big:1"])
            .status
            .success());
    }

    // The whole image to every machine at once (this one's engine through D-Bus, the others'
    // over the mesh), then again: nothing to send.
    let t0 = std::time::Instant::now();
    let out = net
        .uc_command(&["image", "push", "big:1"])
        .env("DOCKER_HOST", laptop.host())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}{}", net.logs());
    eprintln!(
        "pushed 52 MB to three machines in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    for name in ["alpha", "beta", "gamma"] {
        let row = stdout.lines().find(|l| l.starts_with(name));
        assert!(row.is_some_and(|r| r.ends_with("loaded big:1")), "{stdout}");
    }
    for i in [alpha, beta, gamma] {
        let engine = net.machines[i].docker.as_ref().unwrap();
        assert_eq!(
            engine.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "big:1"]),
            big_id
        );
    }
    let out = net
        .uc_command(&["image", "push", "big:1"])
        .env("DOCKER_HOST", laptop.host())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("every machine has big:1 already"),
        "{stderr}"
    );
    let images = net.uc_ok(&["image", "ls", "-m", "all"]);
    assert_eq!(images.matches("big:1").count(), 3, "{images}");
    drop(laptop);

    // Placement by machine labels: only gamma has disk=ssd, so both replicas go there; a
    // constraint no machine matches is refused before anything starts.
    net.uc_ok(&["machine", "label", "gamma", "disk=ssd"]);
    net.wait_until("alpha's state has gamma's label", 30, || {
        net.uc_ok(&["machine", "ls", "-o", "json", "--endpoint", &at_alpha])
            .contains("ssd")
    });
    net.uc_ok(&[
        "run",
        "--name",
        "fast",
        "--replicas",
        "2",
        "--constraint",
        "node.labels.disk == ssd",
        "busybox:uc",
        "sleep",
        "3600",
    ]);
    net.wait_until("both replicas of fast are on gamma", 30, || {
        count(&ps(&net, &at_alpha), "fast", "gamma") == 2
    });
    let err = net.uc_fails(&[
        "run",
        "--name",
        "gpu",
        "--constraint",
        "node.labels.gpu==yes",
        "busybox:uc",
        "sleep",
        "3600",
    ]);
    assert!(
        err.contains("no machine matches node.labels.gpu==yes"),
        "{err}"
    );
    net.uc_ok(&["rm", "fast"]);

    // Real Compose projects (crates/compose/tests/samples, from awesome-compose). Each image
    // they name is a busybox standing in for the real one: it serves its hostname over HTTP on
    // the ports the samples use, so a service reaching another by its Compose name shows whose
    // container answered. Every sample plans; those that can run here deploy, reach each other,
    // redeploy as "nothing to change", and are removed again (two of them publish port 80).
    let stand_in = "mkdir -p /w && hostname > /w/index.html && \
                    for p in 80 3000 3306 5432 6379 9090; do httpd -p $p -h /w; done; exec sleep 3600";
    let entrypoint = format!(
        "ENTRYPOINT [\"/bin/sh\", \"-c\", {}, \"stand-in\"]",
        serde_json::to_string(stand_in).unwrap()
    );
    for i in [alpha, beta, gamma] {
        let docker = net.machines[i].docker.as_ref().unwrap();
        docker.import_busybox_with("stand-in:uc", &[&entrypoint]);
        for image in [
            "gitea/gitea:latest",
            "postgres:alpine",
            "nextcloud:apache",
            "redis:alpine",
            "mariadb:10.5",
            "mariadb:10.6.4-focal",
            "wordpress:latest",
            "postgres:latest",
            "dpage/pgadmin4:latest",
            "prom/prometheus",
            "grafana/grafana",
        ] {
            docker.docker_ok(&["tag", "stand-in:uc", image]);
        }
    }
    let samples = uncloud_testkit::manifest_dir(env!("CARGO_MANIFEST_DIR"))
        .join("../../crates/compose/tests/samples");
    // The container of `<project>-<service>-…` and the machine whose engine runs it.
    let find = |net: &LocalNetwork, project: &str, service: &str| -> Option<(usize, String)> {
        let prefix = format!("{project}-{service}-");
        [alpha, beta, gamma].into_iter().find_map(|i| {
            engine_containers(net, i)
                .into_iter()
                .find(|n| n.starts_with(&prefix))
                .map(|n| (i, n))
        })
    };
    // (sample, services, client reaching server:port by name).
    type Link<'a> = (&'a str, &'a str, &'a str);
    let runnable: [(&str, &[&str], &[Link]); 5] = [
        (
            "gitea-postgres",
            &["gitea", "db"],
            &[("gitea", "db", "5432")],
        ),
        (
            "nextcloud-redis-mariadb",
            &["nc", "redis", "db"],
            &[("nc", "db", "3306"), ("nc", "redis", "6379")],
        ),
        (
            "postgresql-pgadmin",
            &["postgres", "pgadmin"],
            &[("pgadmin", "postgres", "5432")],
        ),
        (
            "wordpress-mysql",
            &["db", "wordpress"],
            &[("wordpress", "db", "3306")],
        ),
        // Its relative binds are uploaded: read-only copies of the folders' files.
        (
            "prometheus-grafana",
            &["prometheus", "grafana"],
            &[("grafana", "prometheus", "9090")],
        ),
    ];
    for (sample, services, links) in runnable {
        let file = samples.join(sample).join("compose.yaml");
        let f = file.to_str().unwrap();
        let plan = net.uc_ok(&["deploy", "-f", f, "--dry-run"]);
        for service in services {
            assert!(plan.contains(&format!("+ create  {service}")), "{plan}");
        }
        net.uc_ok(&["deploy", "-f", f, "-y"]);
        for (client, server, port) in links {
            let (ci, client_name) = find(&net, sample, client).expect(client);
            let (si, server_name) = find(&net, sample, server).expect(server);
            let hostname = net.machines[si].docker.as_ref().unwrap().docker_ok(&[
                "exec",
                &server_name,
                "hostname",
            ]);
            // HTTP by hand with nc: busybox-static's wget crashes in these containers.
            let fetch = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {server} {port}");
            net.wait_until(
                &format!("{sample}: {client} reaches {server} by name"),
                30,
                || {
                    let out = net.machines[ci].docker.as_ref().unwrap().docker(&[
                        "exec",
                        &client_name,
                        "sh",
                        "-c",
                        &fetch,
                    ]);
                    let body = String::from_utf8_lossy(&out.stdout);
                    body.lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .map(str::trim)
                        == Some(hostname.as_str())
                },
            );
        }
        if sample == "prometheus-grafana" {
            let (i, name) = find(&net, sample, "prometheus").unwrap();
            let inside = net.machines[i].docker.as_ref().unwrap().docker_ok(&[
                "exec",
                &name,
                "cat",
                "/etc/prometheus/prometheus.yml",
            ]);
            let here =
                std::fs::read_to_string(samples.join(sample).join("prometheus/prometheus.yml"))
                    .unwrap();
            assert_eq!(inside, here.trim(), "the uploaded copy");
        }
        let again = net.uc_ok(&["deploy", "-f", f, "-y"]);
        assert!(again.contains("nothing to change"), "{sample}: {again}");
        let names: Vec<String> = services.iter().map(|s| format!("{s}.{sample}")).collect();
        let mut rm = vec!["rm"];
        rm.extend(names.iter().map(String::as_str));
        net.uc_ok(&rm);
        for i in [alpha, beta, gamma] {
            let left = engine_containers(&net, i);
            let prefix = format!("{sample}-");
            assert!(!left.iter().any(|n| n.starts_with(&prefix)), "{left:?}");
        }
    }
    // Portainer binds the machine's Docker socket, which these test machines do not have at
    // that path: it only plans.
    let portainer = samples.join("portainer/compose.yaml");
    let plan = net.uc_ok(&["deploy", "-f", portainer.to_str().unwrap(), "--dry-run"]);
    assert!(plan.contains("+ create  portainer"), "{plan}");

    // gamma is cut off: new replicas avoid it, `uc ps` says its containers are unreachable,
    // and `uc rm` removes what it reaches, says what is left, and keeps the service.
    net.partition(&[alpha, beta], &[gamma]);
    net.wait_until("alpha no longer sees gamma alive", 30, || {
        !net.machines[alpha].sees_alive(&ids[gamma])
    });
    net.uc_ok(&[
        "run",
        "--endpoint",
        &at_alpha,
        "--name",
        "late",
        "--replicas",
        "2",
        "busybox:uc",
        "sleep",
        "3600",
    ]);
    net.wait_until("late runs once on alpha and once on beta", 30, || {
        let rows = ps(&net, &at_alpha);
        count(&rows, "late", "alpha") == 1 && count(&rows, "late", "beta") == 1
    });
    let rows = ps(&net, &at_alpha);
    assert!(
        rows.iter()
            .any(|r| r.0 == "web" && r.1 == "gamma" && r.3 != "alive"),
        "{rows:?}"
    );
    // An update while gamma is cut off replaces what alpha reaches and says what it left.
    std::fs::write(&roll_file, roll("app:1", "3")).unwrap();
    let out = net.uc(&["deploy", "--endpoint", &at_alpha, "-f", rf, "-y", "web"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: gamma:") && err.contains("left as it was"),
        "{err}"
    );
    assert_eq!(err.matches("replaced roll-web-").count(), 2, "{err}");
    // Meanwhile gamma's side deploys another change: it replaces its own container.
    let at_gamma = net.machines[gamma].api();
    std::fs::write(&roll_file, roll("app:1", "4")).unwrap();
    let out = net.uc(&["deploy", "--endpoint", &at_gamma, "-f", rf, "-y", "web"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: alpha:") && err.contains("warning: beta:"),
        "{err}"
    );
    assert_eq!(err.matches("replaced roll-web-").count(), 1, "{err}");
    let err = net.uc_fails(&["rm", "--endpoint", &at_alpha, "web"]);
    assert!(
        err.contains("2 of 3 containers removed") && err.contains("gamma"),
        "{err}"
    );
    assert!(
        net.uc_ok(&["ls", "--endpoint", &at_alpha]).contains("web"),
        "the service stays until every container is gone"
    );

    // Healed, `uc rm` finishes the job; in the end no engine has a container left.
    net.heal();
    net.wait_until("alpha sees gamma again", 60, || {
        net.machines[alpha].sees_alive(&ids[gamma])
    });
    net.wait_until("gamma's shim answers alpha again", 60, || {
        net.uc(&["rm", "--endpoint", &at_alpha, "web"])
            .status
            .success()
    });
    // Healed, the two deploys merge into one spec that every machine agrees on (the other
    // goes to the history). Containers of the two sides share a revision number and cannot
    // be told apart, so a deploy of the winning spec replaces all three.
    let version_at = |endpoint: &str| -> String {
        let v: serde_json::Value =
            serde_json::from_str(&net.uc_ok(&["inspect", "--endpoint", endpoint, "web.roll"]))
                .unwrap();
        v["spec"]["env"]["VERSION"].as_str().unwrap().to_string()
    };
    let mut winner = String::new();
    net.wait_until("alpha and gamma hold one spec of web.roll", 60, || {
        winner = version_at(&at_alpha);
        winner == version_at(&at_gamma)
    });
    assert!(winner == "3" || winner == "4", "{winner}");
    let history = net.uc_ok(&["service", "history", "--endpoint", &at_alpha, "web.roll"]);
    let loser = if winner == "3" { "4" } else { "3" };
    assert!(history.lines().count() >= 3, "{history}");
    std::fs::write(&roll_file, roll("app:1", &winner)).unwrap();
    let plan = net.uc_ok(&[
        "deploy",
        "--endpoint",
        &at_alpha,
        "-f",
        rf,
        "--dry-run",
        "web",
    ]);
    assert!(
        plan.contains("3 container(s) still of an earlier spec"),
        "{plan} (the spec of {loser} lost)"
    );
    let out = net.uc(&["deploy", "--endpoint", &at_alpha, "-f", rf, "-y", "web"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("on gamma by roll-web-"), "{err}");
    assert_eq!(
        web_versions(&net),
        vec![format!("app:1 VERSION={winner}"); 3]
    );
    let again = net.uc_ok(&["deploy", "--endpoint", &at_gamma, "-f", rf, "-y", "web"]);
    assert!(again.contains("nothing to change"), "{again}");
    net.uc_ok(&["rm", "--endpoint", &at_alpha, "web.roll", "edge.roll"]);

    // A machine that joins later gets its container of the global service `agent` by itself
    // (its reconciler starts it), and nothing of the replicated ones.
    let delta = net.boot_with("delta", docker);
    net.machines[delta]
        .docker
        .as_ref()
        .unwrap()
        .import_busybox("busybox:uc");
    net.uc_ok(&net.machines[delta].enrol("add"));
    net.wait_until("delta runs its agent container", 120, || {
        count(&ps(&net, &at_alpha), "agent", "delta") == 1
    });
    let on_delta = engine_containers(&net, delta);
    assert!(
        on_delta.len() == 1 && on_delta[0].starts_with("agent-"),
        "{on_delta:?}"
    );

    // Draining delta: the replicated service's container there is started again elsewhere
    // before it goes, the global ones' go; nothing new lands on delta until it is enabled.
    for args in [
        &[
            "run",
            "--name",
            "spread",
            "--replicas",
            "4",
            "busybox:uc",
            "sleep",
            "3600",
        ][..],
        &[
            "run",
            "--name",
            "everywhere",
            "--mode",
            "global",
            "busybox:uc",
            "sleep",
            "3600",
        ][..],
    ] {
        // `--endpoint` before the image: what follows it is the container's command.
        let mut all = vec![args[0], "--endpoint", &at_alpha];
        all.extend(&args[1..]);
        net.uc_ok(&all);
    }
    net.wait_until("spread and everywhere run on delta", 30, || {
        let rows = ps(&net, &at_alpha);
        count(&rows, "spread", "delta") == 1 && count(&rows, "everywhere", "delta") == 1
    });
    let drained = net.uc(&["machine", "drain", "delta", "--endpoint", &at_alpha]);
    if !drained.status.success() {
        for i in [alpha, beta, gamma, delta] {
            let engine = net.machines[i].docker.as_ref().unwrap();
            let all = engine.docker_ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
            eprintln!("engine {i}:\n{all}");
            for name in all.lines().filter_map(|l| l.split_whitespace().next()) {
                if name.starts_with("spread-") {
                    let logs = engine.docker(&["logs", "--tail", "5", name]);
                    eprintln!(
                        "{name}: {}{}",
                        String::from_utf8_lossy(&logs.stdout),
                        String::from_utf8_lossy(&logs.stderr)
                    );
                    eprintln!("{}", engine.docker_ok(&["inspect", "-f", "{{json .State}} {{json .Config.Cmd}} {{json .HostConfig.RestartPolicy}}", name]));
                }
            }
        }
        panic!("drain failed: {}", String::from_utf8_lossy(&drained.stderr));
    }
    let out = String::from_utf8_lossy(&drained.stdout).into_owned();
    assert!(out.contains("spread: started"), "{out}");
    assert!(out.contains("everywhere: removed"), "{out}");
    assert!(out.contains("agent: removed"), "{out}");
    net.wait_until("nothing of a service on delta", 30, || {
        let rows = ps(&net, &at_alpha);
        let on = |m: &str| count(&rows, "spread", m);
        on("delta") == 0
            && on("alpha") + on("beta") + on("gamma") == 4
            && !rows.iter().any(|r| r.1 == "delta")
    });
    assert_eq!(engine_containers(&net, delta), Vec::<String>::new());
    let ls = net.uc_ok(&["machine", "ls", "--endpoint", &at_alpha]);
    assert!(ls.contains("drained"), "{ls}");
    let err = net.uc_fails(&[
        "run",
        "--endpoint",
        &at_alpha,
        "--name",
        "later",
        "-m",
        "delta",
        "busybox:uc",
        "true",
    ]);
    assert!(err.contains("delta is drained"), "{err}");
    net.uc_ok(&["machine", "enable", "delta", "--endpoint", &at_alpha]);
    net.uc_ok(&["scale", "spread", "5", "--endpoint", &at_alpha]);
    net.wait_until("the fifth replica goes to delta, the emptiest", 30, || {
        count(&ps(&net, &at_alpha), "spread", "delta") == 1
    });
    net.uc_ok(&["rm", "--endpoint", &at_alpha, "spread", "everywhere"]);

    net.uc_ok(&["rm", "--endpoint", &at_alpha, "agent", "db.shop", "late"]);
    // A global service's container that a machine's reconciler was starting while `uc rm`
    // ran (delta's agent, just after `enable`) is removed by that reconciler when it sees the
    // service gone (at once, or with the orphans once the grace period is over).
    net.wait_until("no managed container left in any engine", 90, || {
        [alpha, beta, gamma, delta]
            .iter()
            .all(|&i| engine_containers(&net, i).is_empty())
    });
    net.wait_until("the state has no service and no container left", 30, || {
        ps(&net, &at_alpha).is_empty()
            && !net
                .uc_ok(&["ls", "--endpoint", &at_alpha])
                .contains("busybox")
    });
}

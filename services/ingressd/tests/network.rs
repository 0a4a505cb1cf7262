//! Ingress across a network, the way a user runs it: three machines (namespaces with the real
//! daemons and their own dockerd) formed with `uc`, two of them with the `ingress` role, a
//! test ACME CA (pebble) on the same internet standing in for Let's Encrypt.
//!
//! The story: a Compose project publishes `app.example.com` (HTTPS, with an `/api` prefix
//! served by containers on the third machine only) and `plain.example.com` (HTTP). One
//! certificate is ordered, by one machine, while the hostname resolves only to the other one
//! (so the challenge lands on the machine that did not order), and both serve it. Requests
//! route by host and prefix; unknown hosts get 404, HTTP gets the redirect. Under constant
//! load a rolling deploy fails no request, and a container killed under load fails at most the
//! request in flight on it. Cut off from the others, each side routes only to what it
//! reaches; the side without the orderer renews the certificate on its own.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use uncloud_testkit::network::{public_ip, Binaries, Boot, LocalNetwork};
use uncloud_testkit::pebble::Pebble;

/// A web server that answers its container's hostname (and `VERSION`) on port 8080.
const ECHO: &str =
    "mkdir -p /w/api && echo $(hostname) $$VERSION > /w/index.html && cp /w/index.html /w/api/index.html && exec httpd -f -p 8080 -h /w";

fn project(version: &str) -> String {
    let echo = serde_json::to_string(ECHO).unwrap();
    format!(
        "name: shop\nservices:\n  site:\n    image: busybox:uc\n    command: [\"sh\", \"-c\", {echo}]\n    \
         environment:\n      VERSION: \"{version}\"\n    x-ports:\n      - app.example.com:8080/https\n      \
         - plain.example.com:8080/http\n    deploy:\n      replicas: 3\n    healthcheck:\n      \
         test: [\"CMD\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8080/\"]\n      \
         interval: 1s\n      timeout: 1s\n      retries: 1\n  api:\n    image: busybox:uc\n    \
         command: [\"sh\", \"-c\", {echo}]\n    environment:\n      VERSION: \"api\"\n    x-ports:\n      \
         - app.example.com/api:8080/https\n    deploy:\n      replicas: 2\n      placement:\n        \
         constraints: [\"node.hostname!=alpha\", \"node.hostname!=beta\"]\n"
    )
}

/// `org.uncloud.Ingress1.Certificates` of a machine, parsed (none while ingressd (re)starts).
fn certificates(net: &LocalNetwork, i: usize) -> Vec<serde_json::Value> {
    let (ok, out, err) = net.machines[i].busctl(&[
        "--json=short",
        "call",
        "org.uncloud.Ingress1",
        "/org/uncloud/Ingress1",
        "org.uncloud.Ingress1",
        "Certificates",
    ]);
    if !ok {
        eprintln!("Certificates of {}: {err}", net.machines[i].name);
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    serde_json::from_str(v["data"][0].as_str().unwrap()).unwrap()
}

/// The serial machine `i` serves for `host` and who issued it, once it serves an issued one.
fn served(net: &LocalNetwork, i: usize, host: &str) -> Option<(String, String)> {
    certificates(net, i)
        .into_iter()
        .find(|c| c["hostname"] == host && c["status"] == "issued")
        .map(|c| {
            (
                c["serial"].as_str().unwrap().to_string(),
                c["issued_by"].as_str().unwrap().to_string(),
            )
        })
}

/// `curl` from the laptop; returns (HTTP code, body).
fn curl(net: &LocalNetwork, args: &[&str]) -> (u16, String) {
    let out = net
        .laptop
        .command("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `curl https://app.example.com<path>` through machine `i`, trusting pebble's root.
fn https(net: &LocalNetwork, i: usize, path: &str, roots: &str, extra: &[&str]) -> (u16, String) {
    let resolve = format!("app.example.com:443:{}", public_ip(i));
    let url = format!("https://app.example.com{path}");
    let mut args = vec!["--cacert", roots, "--resolve", &resolve];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(net, &args)
}

/// Who answers `plain.example.com` through machine `i`: the container hostnames seen in `n`
/// requests.
fn answering(net: &LocalNetwork, i: usize, n: usize) -> BTreeSet<String> {
    (0..n)
        .filter_map(|_| {
            let (code, body) = curl(
                net,
                &[
                    "-H",
                    "Host: plain.example.com",
                    &format!("http://{}/", public_ip(i)),
                ],
            );
            (code == 200).then(|| body.split_whitespace().next().unwrap_or("").to_string())
        })
        .collect()
}

/// Requests without pause through the ingress machines (HTTP/1.1 keep-alive, reconnecting
/// when the proxy closes), counting successes and failures, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(net: &LocalNetwork, targets: &[Ipv4Addr]) -> Load {
        let (stop, ok, failed) = (Arc::default(), Arc::default(), Arc::default());
        let mut threads = Vec::new();
        for ip in targets {
            let addr = SocketAddr::from((*ip, 80));
            let ns = net.laptop.share();
            let (stop, ok, failed): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) =
                (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            threads.push(std::thread::spawn(move || {
                ns.enter(|| {
                    let mut errors = Vec::new();
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.take() {
                            Some(c) => c,
                            None => match TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                            {
                                Ok(s) => {
                                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                                    BufReader::new(s)
                                }
                                Err(e) => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    errors.push(format!("connect: {e}"));
                                    std::thread::sleep(Duration::from_millis(50));
                                    continue;
                                }
                            },
                        };
                        match request(c) {
                            Ok((200, c)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                conn = c;
                            }
                            Ok((code, c)) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(format!("HTTP {code}"));
                                conn = c;
                            }
                            // The proxy may close a kept-alive connection between requests:
                            // only a request that was answered with nothing counts.
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(e);
                            }
                        }
                    }
                    errors
                })
            }));
        }
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops; returns (succeeded, failed, the failures' reasons).
    fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

type Kept = Option<BufReader<TcpStream>>;

/// One keep-alive `GET /` for `plain.example.com`; returns the status and the connection if
/// it stays open.
fn request(mut c: BufReader<TcpStream>) -> Result<(u16, Kept), String> {
    c.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: plain.example.com\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut status = String::new();
    c.read_line(&mut status)
        .map_err(|e| format!("status: {e}"))?;
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {status:?}"))?;
    let (mut len, mut close) = (0usize, false);
    loop {
        let mut line = String::new();
        c.read_line(&mut line).map_err(|e| format!("header: {e}"))?;
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if l == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    Ok((code, (!close).then_some(c)))
}

#[test]
fn ingress_serves_one_certificate_routes_and_drains_across_the_network() {
    let mut net = LocalNetwork::new(Binaries::beside(env!("CARGO_BIN_EXE_ingressd")));
    let pebble = Pebble::start(&net.internet);
    net.ingressd_config = format!(
        "acme_directory = \"{}\"\nacme_roots = \"{}\"\nacme_email = \"ops@example.com\"\n\
         challenge_delay_secs = 2\nretry_min_secs = 2\nretry_max_secs = 10\norder_claim_secs = 60\n",
        pebble.directory(),
        pebble.roots().display()
    );
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
    net.wait_until("every machine sees every other alive", 60, || {
        [alpha, beta, gamma]
            .iter()
            .all(|&i| ids.iter().all(|id| net.machines[i].sees_alive(id)))
    });
    net.uc_ok(&["machine", "role", "add", "alpha", "ingress"]);
    net.uc_ok(&["machine", "role", "add", "beta", "ingress"]);
    // The orderer is the ingress machine with the smaller id; the hostname resolves only to
    // the other one, where the CA's challenge lands.
    let (orderer, other) = if ids[alpha] < ids[beta] {
        (alpha, beta)
    } else {
        (beta, alpha)
    };
    pebble.resolve("app.example.com", &[public_ip(other)]);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compose.yaml");
    let f = file.to_str().unwrap();
    std::fs::write(&file, project("1")).unwrap();
    net.uc_ok(&["deploy", "-f", f, "-y"]);

    // One certificate, ordered by the orderer, served by both.
    net.wait_until(
        "both ingress machines serve an issued certificate",
        120,
        || {
            served(&net, alpha, "app.example.com").is_some()
                && served(&net, beta, "app.example.com").is_some()
        },
    );
    let (serial, issued_by) = served(&net, alpha, "app.example.com").unwrap();
    assert_eq!(served(&net, beta, "app.example.com").unwrap().0, serial);
    assert_eq!(issued_by, ids[orderer], "{}", pebble.logs());
    let roots_file = dir.path().join("pebble-root.pem");
    std::fs::write(&roots_file, pebble.issuing_root()).unwrap();
    let roots = roots_file.to_str().unwrap();
    for i in [alpha, beta] {
        let (code, body) = https(&net, i, "/", roots, &["--http2"]);
        assert_eq!(
            code,
            200,
            "through {}: {body}\n{}",
            net.machines[i].name,
            net.machines[i].logs()
        );
        assert!(body.trim().ends_with(" 1"), "{body}");
    }
    // What `uc` shows: the routes with their upstreams, the certificate with its issuer.
    let ls = net.uc_ok(&["ingress", "ls"]);
    for want in [
        "https://app.example.com/api",
        "api.shop",
        "http://plain.example.com",
        "site.shop",
    ] {
        assert!(ls.contains(want), "{want}: {ls}");
    }
    let certs = net.uc_ok(&["ingress", "certs"]);
    assert!(
        certs.contains("app.example.com") && certs.contains("issued"),
        "{certs}"
    );
    assert!(certs.contains("Pebble"), "the issuer: {certs}");
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        pebble.issued(),
        1,
        "no second order while both are alive\n{}",
        pebble.logs()
    );

    // Routing: the `/api` prefix reaches the containers on gamma only; HTTP redirects; unknown
    // hosts get 404.
    let (code, body) = https(&net, alpha, "/api/", roots, &[]);
    assert_eq!(code, 200);
    assert!(body.trim().ends_with(" api"), "{body}");
    let (code, _) = curl(
        &net,
        &[
            "-H",
            "Host: app.example.com",
            &format!("http://{}/x", public_ip(beta)),
        ],
    );
    assert_eq!(code, 308);
    let (code, _) = curl(
        &net,
        &[
            "-H",
            "Host: nope.example.com",
            &format!("http://{}/", public_ip(beta)),
        ],
    );
    assert_eq!(code, 404);
    let everyone = answering(&net, alpha, 12);
    assert_eq!(
        everyone.len(),
        3,
        "round-robin over the three site containers: {everyone:?}"
    );

    // A rolling deploy under constant load through both ingress machines: no failed request.
    let load = Load::start(&net, &[public_ip(alpha), public_ip(beta)]);
    net.wait_until("the load runs", 20, || load.ok() > 50);
    std::fs::write(&file, project("2")).unwrap();
    net.uc_ok(&["deploy", "-f", f, "-y"]);
    let before = load.ok();
    net.wait_until("the load carries on after the deploy", 20, || {
        load.ok() > before + 50
    });
    let (ok, failed, errors) = load.finish();
    assert_eq!(failed, 0, "{ok} succeeded; failures: {errors:?}");
    // Each replaced container was removed once both ingress machines had let go of it, not
    // after the shim's timeout.
    for i in [alpha, beta, gamma] {
        let log = std::fs::read_to_string(net.machines[i].root().join("dockerd-shim.log")).unwrap();
        assert!(
            !log.contains("did not let go in time"),
            "{}: {log}",
            net.machines[i].name
        );
    }
    let (_, body) = https(&net, beta, "/", roots, &[]);
    assert!(
        body.trim().ends_with(" 2"),
        "the new version answers: {body}"
    );

    // A container killed under load: at most the requests in flight on it fail (one per
    // load thread), and the rest go to the others.
    let load = Load::start(&net, &[public_ip(alpha), public_ip(beta)]);
    net.wait_until("the load runs", 20, || load.ok() > 50);
    let victim = net.machines[gamma].docker.as_ref().unwrap().docker_ok(&[
        "ps",
        "-q",
        "--filter",
        "label=org.uncloud.service.id=site.shop",
    ]);
    let victim = victim
        .lines()
        .next()
        .expect("a site container on gamma")
        .to_string();
    net.machines[gamma]
        .docker
        .as_ref()
        .unwrap()
        .docker_ok(&["kill", &victim]);
    let before = load.ok();
    net.wait_until("the load carries on after the kill", 20, || {
        load.ok() > before + 100
    });
    let (ok, failed, errors) = load.finish();
    assert!(failed <= 2, "{ok} succeeded; failures: {errors:?}");

    // Cut the orderer off: each side routes only to the containers it reaches.
    net.machines[gamma]
        .docker
        .as_ref()
        .unwrap()
        .docker_ok(&["start", &victim]);
    net.wait_until("the killed container is back", 60, || {
        answering(&net, other, 12).len() == 3
    });
    net.partition(&[orderer], &[other, gamma]);
    let name = |i: usize| net.machines[i].name.clone();
    net.wait_until("each side answers only from its own containers", 60, || {
        let lonely = answering(&net, orderer, 8);
        let rest = answering(&net, other, 12);
        lonely.len() == 1 && rest.len() == 2 && lonely.is_disjoint(&rest)
    });
    eprintln!(
        "partition {} | {}, {} routes as expected",
        name(orderer),
        name(other),
        name(gamma)
    );

    // On its side the other machine is the orderer now: told to renew early, it renews.
    net.machines[other]
        .set_ingressd_extra(&format!("{}renew_at = 0.0000001\n", net.ingressd_config));
    net.machines[other].restart_ingressd();
    net.wait_until("the other machine renewed the certificate", 120, || {
        served(&net, other, "app.example.com")
            .is_some_and(|(s, by)| s != serial && by == ids[other])
    });
    let (code, _) = https(&net, other, "/", roots, &[]);
    assert_eq!(code, 200);
    net.heal();
    net.wait_until(
        "after the heal the orderer serves a renewed certificate too",
        60,
        || served(&net, orderer, "app.example.com").is_some_and(|(s, _)| s != serial),
    );

    // Without the role a machine stops listening; the other ingress machine still serves.
    let orderer_name = net.machines[orderer].name.clone();
    net.uc_ok(&["machine", "role", "rm", &orderer_name, "ingress"]);
    net.wait_until(
        "the machine without the role refuses connections",
        30,
        || {
            let (code, _) = curl(
                &net,
                &[
                    "-H",
                    "Host: plain.example.com",
                    &format!("http://{}/", public_ip(orderer)),
                ],
            );
            code == 0
        },
    );
    let (code, _) = curl(
        &net,
        &[
            "-H",
            "Host: plain.example.com",
            &format!("http://{}/", public_ip(other)),
        ],
    );
    assert_eq!(code, 200);
}

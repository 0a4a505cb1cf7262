//! ingressd beside Caddy 2.6 and nginx 1.22: requests per second over HTTP/1.1, HTTPS and
//! HTTP/2, latency at a fixed rate, CPU time per 1,000 requests, resident memory, and the time
//! from a container written healthy to the state until it is routed.
//!
//! One machine of a local network (`uncloud_testkit::network`: a namespace running the real
//! firstboot, stated, meshd, apid and ingressd, initialised with `uc machine init`, with the
//! `ingress` role) has a service publishing `plain.example.com` (HTTP) and `bench.example.com`
//! (HTTPS) whose one container is an nginx answering a short body at 10.210.200.1:80 (an
//! address on the namespace's loopback). Caddy and nginx, configured as fairly as they allow
//! (upstream keep-alive, no access log, one worker), proxy the same hostnames to the same
//! upstream in the same namespace. Every proxy is pinned to CPU 0 (and started there, so it
//! sizes its threads to one CPU); wrk, h2load, the fixed-rate client and the upstream to
//! CPU 1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use uncloud_testkit::network::{Binaries, LocalNetwork};

use crate::progress;
use crate::report::{fmt_num, line, write_json, Metric, Results};
use crate::stats::percentile;
use crate::sys::{need, rss_of, workspace_binary, Machine};

#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    /// Runs of each measurement per proxy (the figure is their median).
    pub runs: usize,
    /// Length of one wrk or h2load run, seconds.
    pub secs: u32,
    /// Client connections of the throughput runs.
    pub connections: u32,
    /// Rate of the latency runs, requests per second (below every proxy's saturation).
    pub fixed_rps: u32,
    pub latency_secs: u32,
    /// Routes timed from container to routed.
    pub route_samples: usize,
    /// Stop after the setup and keep every proxy running until stdin closes (for profiling
    /// by hand: the namespace, ports and pids are printed).
    pub hold: bool,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            quick: false,
            runs: 5,
            secs: 5,
            connections: 50,
            fixed_rps: 1000,
            latency_secs: 5,
            route_samples: 20,
            hold: false,
        }
    }

    pub fn quick() -> Plan {
        Plan {
            quick: true,
            runs: 1,
            secs: 1,
            connections: 20,
            fixed_rps: 200,
            latency_secs: 1,
            route_samples: 3,
            hold: false,
        }
    }
}

const PROXY_CPU: &str = "0";
const CLIENT_CPU: &str = "1";
const UPSTREAM_IP: &str = "10.210.200.1";
const BODY: &str = "hello from the upstream\n";
/// nginx sets the forwarded headers ingressd and Caddy set, so every proxy does the same work.
const FORWARDED: &str = " proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; \
    proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $host;";

/// One proxy under test.
#[derive(Debug, Clone)]
struct Proxy {
    name: &'static str,
    http: u16,
    https: u16,
    pid: u32,
}

/// A process killed on drop.
struct Server(Child);

impl Drop for Server {
    /// SIGTERM, so nginx's master stops its worker (a SIGKILL would orphan it), then SIGKILL
    /// after 3 s, and any child still there.
    fn drop(&mut self) {
        let pid = self.0.id();
        let kids = children(pid);
        // SAFETY: signalling a child process this benchmark started.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        for k in kids {
            // SAFETY: as above; a pid gone already gets ESRCH.
            unsafe {
                libc::kill(k as i32, libc::SIGKILL);
            }
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Figures {
    http_rps: Vec<f64>,
    https_rps: Vec<f64>,
    h2_rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    cpu_per_1000: Vec<f64>,
    route_ms: Vec<f64>,
    rss: f64,
}

/// Runs `program` pinned to `cpu` in the machine's namespace.
fn pinned(net: &LocalNetwork, cpu: &str, program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args([
        "-c",
        cpu,
        "ip",
        "netns",
        "exec",
        net.machines[0].ns.name(),
        program,
    ]);
    c
}

fn spawn(mut cmd: Command, log: &Path) -> Result<Server> {
    let out = std::fs::File::create(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    Ok(Server(child))
}

/// The pid of the process `ip netns exec` became (it execs, so the same pid).
fn pid(s: &Server) -> u32 {
    s.0.id()
}

/// Waits until `GET http://host:port/` through the namespace answers 200.
fn wait_routed(net: &LocalNetwork, host: &str, port: u16, what: &str) -> Result<Duration> {
    let start = Instant::now();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while start.elapsed() < Duration::from_secs(20) {
        let ok = net.machines[0]
            .ns
            .enter(|| get_once(addr, host).is_ok_and(|c| c == 200));
        if ok {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("{what}: {host} not routed on port {port} within 20 s")
}

/// One `GET /` on a fresh connection; the status code.
fn get_once(addr: SocketAddr, host: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status: {line:?}")))
}

/// CPU seconds `pid` and its children (nginx's worker) used so far (user + system, all
/// threads).
fn cpu_secs(pid: u32) -> f64 {
    own_cpu_secs(pid) + children(pid).into_iter().map(own_cpu_secs).sum::<f64>()
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

fn own_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command.
    (ticks(11) + ticks(12)) / 100.0
}

fn wrk(net: &LocalNetwork, url: &str, plan: &Plan) -> Result<(f64, f64)> {
    let out = pinned(net, CLIENT_CPU, "wrk")
        .args(["-t1", "-c"])
        .arg(plan.connections.to_string())
        .arg("-d")
        .arg(format!("{}s", plan.secs))
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("wrk {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk {url} saw errors:\n{text}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Requests/sec in wrk's output")?;
    let total = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .context("no request count in wrk's output")?;
    Ok((rps, total))
}

fn h2load(net: &LocalNetwork, url: &str, plan: &Plan) -> Result<f64> {
    let out = pinned(net, CLIENT_CPU, "h2load")
        .args(["-c", "10", "-m", "10", "-n"])
        .arg((plan.secs * 10_000).to_string())
        .arg(url)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let failed = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("requests:"))
        .and_then(|l| l.split(',').find_map(|p| p.trim().strip_suffix(" failed")))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    if !out.status.success() || failed != 0 || !text.contains("h2") {
        bail!(
            "h2load {url}: {failed} failed\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text.lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.trim().strip_suffix(" req/s"))
        .and_then(|v| v.trim().parse().ok())
        .context("no req/s in h2load's output")
}

/// Requests at a fixed rate over 10 keep-alive connections from CPU 1; every latency is
/// measured from when the request was due (no coordinated omission). Returns p50 and p99, ms.
fn fixed_rate(net: &LocalNetwork, port: u16, plan: &Plan) -> Result<(f64, f64)> {
    const CONNS: u32 = 10;
    let per_conn = Duration::from_secs_f64(CONNS as f64 / plan.fixed_rps as f64);
    let total = plan.fixed_rps * plan.latency_secs / CONNS;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let ns = net.machines[0].ns.share();
    let samples = ns.enter(|| -> Result<Vec<f64>> {
        let threads: Vec<_> = (0..CONNS)
            .map(|_| {
                std::thread::spawn(move || -> Result<Vec<f64>> {
                    pin_to(1);
                    let s = TcpStream::connect(addr)?;
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let mut r = BufReader::new(s.try_clone()?);
                    let mut w = s;
                    let start = Instant::now();
                    let mut out = Vec::with_capacity(total as usize);
                    for i in 0..total {
                        let due = start + per_conn * i;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        w.write_all(b"GET / HTTP/1.1\r\nHost: plain.example.com\r\n\r\n")?;
                        read_response(&mut r)?;
                        out.push(due.elapsed().as_secs_f64() * 1000.0);
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            all.extend(t.join().expect("client thread")?);
        }
        Ok(all)
    })?;
    Ok((
        percentile(&samples, 0.5).context("no samples")?,
        percentile(&samples, 0.99).context("no samples")?,
    ))
}

fn read_response(r: &mut BufReader<TcpStream>) -> Result<()> {
    let mut status = String::new();
    r.read_line(&mut status)?;
    if !status.contains(" 200 ") {
        bail!("answer {status:?}");
    }
    let mut len = 0usize;
    loop {
        let mut l = String::new();
        r.read_line(&mut l)?;
        let l = l.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse()?;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(())
}

/// Pins the calling thread to one CPU.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn service_json(id: &str, ports: &[String]) -> String {
    serde_json::json!({"id": id, "name": id, "spec": {"image": "nginx", "replicas": 1, "ports": ports}})
        .to_string()
}

fn container_json(machine: &str, id: &str, service: &str) -> String {
    serde_json::json!({
        "id": id, "machine_id": machine, "name": id, "service_id": service, "image": "nginx",
        "ip": UPSTREAM_IP, "state": "running", "healthy": true,
    })
    .to_string()
}

struct Setup {
    dir: tempfile::TempDir,
    hosts_dir: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.hosts_dir);
    }
}

fn write_configs(net: &LocalNetwork) -> Result<Setup> {
    let dir = tempfile::tempdir()?;
    let p = |f: &str| dir.path().join(f);
    crate::sys::run(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=bench.example.com",
                "-addext",
                "subjectAltName=DNS:bench.example.com",
            ])
            .arg("-keyout")
            .arg(p("key.pem"))
            .arg("-out")
            .arg(p("cert.pem")),
    )?;
    std::fs::write(
        p("upstream.conf"),
        format!(
            "worker_processes 1;\npid {up}/upstream.pid;\nerror_log {up}/upstream.err;\ndaemon off;\n\
             events {{ worker_connections 4096; }}\nhttp {{ access_log off; keepalive_requests 100000;\n\
             server {{ listen {UPSTREAM_IP}:80 reuseport; location / {{ default_type text/plain; return 200 \"{}\"; }} }} }}\n",
            BODY.trim_end().to_string() + "\\n",
            up = dir.path().display()
        ),
    )?;
    std::fs::write(
        p("nginx.conf"),
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\ndaemon off;\n\
             events {{ worker_connections 4096; }}\nhttp {{ access_log off; keepalive_requests 1000000;\n\
             upstream up {{ server {UPSTREAM_IP}:80; keepalive 64; keepalive_requests 1000000; }}\n\
             server {{ listen 127.0.0.1:8083; server_name plain.example.com;\n\
               location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host;{FORWARDED} }} }}\n\
             server {{ listen 127.0.0.1:8443 ssl http2; server_name bench.example.com;\n\
               ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;\n\
               location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host;{FORWARDED} }} }}\n\
             include {d}/nginx-extra*.conf;\n}}\n",
            d = dir.path().display()
        ),
    )?;
    std::fs::write(
        p("Caddyfile"),
        format!(
            "{{\n  admin off\n  auto_https off\n  storage file_system {d}/caddy\n}}\n\
             http://plain.example.com:8082 {{\n  reverse_proxy {UPSTREAM_IP}:80\n}}\n\
             https://bench.example.com:8442 {{\n  tls {d}/cert.pem {d}/key.pem\n  reverse_proxy {UPSTREAM_IP}:80\n}}\n",
            d = dir.path().display()
        ),
    )?;
    // `ip netns exec` shows this file as /etc/hosts in the namespace: wrk and h2load send
    // the hostname (SNI) and reach 127.0.0.1.
    let hosts_dir = PathBuf::from("/etc/netns").join(net.machines[0].ns.name());
    std::fs::create_dir_all(&hosts_dir)?;
    std::fs::write(
        hosts_dir.join("hosts"),
        "127.0.0.1 localhost bench.example.com plain.example.com\n",
    )?;
    Ok(Setup { dir, hosts_dir })
}

pub fn run(plan: &Plan, out: &Path, command: &str) -> Result<Results> {
    for (tool, package) in [
        ("wrk", "wrk"),
        ("h2load", "nghttp2-client"),
        ("caddy", "caddy"),
        ("nginx", "nginx-light"),
        ("openssl", "openssl"),
        ("taskset", "util-linux"),
    ] {
        need(tool, package)?;
    }
    let mut dir = None;
    for p in [
        "stated",
        "meshd",
        "dnsd",
        "apid",
        "ingressd",
        "uncloud-firstboot",
        "uc",
    ] {
        dir = Some(workspace_binary(p)?.parent().unwrap().to_owned());
    }
    let bins = Binaries {
        dir: dir.expect("listed above"),
    };
    let rt = tokio::runtime::Runtime::new()?;
    let mut net = LocalNetwork::new(bins.clone());
    net.ingressd_config =
        "http_listen = [\"127.0.0.1:8081\"]\nhttps_listen = [\"127.0.0.1:8441\"]\n\
                           acme = false\nself_signed = true\n"
            .into();
    progress("booting a machine and creating its network");
    let m = net.boot("m0", None);
    net.uc_ok(&net.machines[m].enrol("init"));
    let me = net.machines[m].machine_id();
    net.machines[m]
        .ns
        .ip(&["addr", "add", &format!("{UPSTREAM_IP}/32"), "dev", "lo"]);
    let setup = write_configs(&net)?;
    let d = setup.dir.path().to_owned();
    let _upstream = spawn(
        {
            let mut c = pinned(&net, CLIENT_CPU, "nginx");
            c.arg("-c").arg(d.join("upstream.conf"));
            c
        },
        &d.join("upstream.log"),
    )?;

    let conn = rt.block_on(net.machines[m].bus.connect());
    let state = rt.block_on(uncloud_common::dbus::StateProxy::new(&conn))?;
    rt.block_on(state.upsert_service(&service_json(
        "bench",
        &[
            "bench.example.com:80/https".into(),
            "plain.example.com:80/http".into(),
        ],
    )))?;
    rt.block_on(state.upsert_container(&container_json(&me, "bench-1", "bench")))?;
    net.uc_ok(&["machine", "role", "add", "m0", "ingress"]);

    // ingressd again, started on CPU 0 so that it sizes its threads to one CPU as the others.
    if let Some(mut i) = net.machines[m].ingressd.take() {
        i.stop(Duration::from_secs(10));
    }
    let ingressd = spawn(
        {
            let mut c = pinned(&net, PROXY_CPU, bins.get("ingressd").to_str().unwrap());
            c.arg("--config")
                .arg(net.machines[m].root().join("etc/uncloud/ingressd.toml"))
                .env("RUST_LOG", "warn");
            c
        },
        &d.join("ingressd.log"),
    )?;
    let nginx = spawn(
        {
            let mut c = pinned(&net, PROXY_CPU, "nginx");
            c.arg("-c").arg(d.join("nginx.conf"));
            c
        },
        &d.join("nginx.log"),
    )?;
    let caddy = spawn(
        {
            let mut c = pinned(&net, PROXY_CPU, "caddy");
            c.args(["run", "--adapter", "caddyfile", "--config"])
                .arg(d.join("Caddyfile"))
                .env("GOMAXPROCS", "1")
                .env("HOME", &d);
            c
        },
        &d.join("caddy.log"),
    )?;
    let proxies = [
        Proxy {
            name: "ingressd",
            http: 8081,
            https: 8441,
            pid: pid(&ingressd),
        },
        Proxy {
            name: "caddy",
            http: 8082,
            https: 8442,
            pid: pid(&caddy),
        },
        Proxy {
            name: "nginx",
            http: 8083,
            https: 8443,
            pid: pid(&nginx),
        },
    ];
    for p in &proxies {
        wait_routed(&net, "plain.example.com", p.http, p.name).with_context(|| {
            format!(
                "{}\n{}",
                std::fs::read_to_string(d.join(format!("{}.log", p.name))).unwrap_or_default(),
                net.logs()
            )
        })?;
    }

    if plan.hold {
        for p in &proxies {
            progress(format!(
                "{}: pid {}, http 127.0.0.1:{}, https 127.0.0.1:{} in namespace {}",
                p.name,
                p.pid,
                p.http,
                p.https,
                net.machines[m].ns.name()
            ));
        }
        progress("holding until stdin closes (hosts: plain.example.com, bench.example.com)");
        std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
        drop((ingressd, caddy, nginx, setup));
        return Ok(Results::default());
    }

    let mut figures = vec![Figures::default(); proxies.len()];
    for run in 0..plan.runs {
        for (p, f) in proxies.iter().zip(figures.iter_mut()) {
            progress(format!("run {}/{}: {}", run + 1, plan.runs, p.name));
            let cpu0 = cpu_secs(p.pid);
            let (rps, total) = wrk(&net, &format!("http://plain.example.com:{}/", p.http), plan)?;
            f.cpu_per_1000
                .push((cpu_secs(p.pid) - cpu0) / total * 1000.0);
            f.http_rps.push(rps);
            let (rps, _) = wrk(
                &net,
                &format!("https://bench.example.com:{}/", p.https),
                plan,
            )?;
            f.https_rps.push(rps);
            f.h2_rps.push(h2load(
                &net,
                &format!("https://bench.example.com:{}/", p.https),
                plan,
            )?);
            let (p50, p99) = fixed_rate(&net, p.http, plan)?;
            f.p50.push(p50);
            f.p99.push(p99);
        }
    }

    progress("time from a container written healthy to routed");
    for k in 0..plan.route_samples {
        // ingressd: a new service and its healthy container, written as dockerd-shim does.
        let host = format!("r{k}.example.com");
        rt.block_on(state.upsert_service(&service_json(
            &format!("r{k}"),
            &[format!("{host}:80/http")],
        )))?;
        let start = Instant::now();
        rt.block_on(state.upsert_container(&container_json(
            &me,
            &format!("r{k}-1"),
            &format!("r{k}"),
        )))?;
        wait_routed(&net, &host, 8081, "ingressd")?;
        figures[0]
            .route_ms
            .push(start.elapsed().as_secs_f64() * 1000.0);
        // nginx: a new server block and a reload (SIGHUP), its way to take a new route.
        std::fs::write(
            d.join(format!("nginx-extra{k}.conf")),
            format!(
                "server {{ listen 127.0.0.1:8083; server_name {host};\n  location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n"
            ),
        )?;
        let start = Instant::now();
        crate::sys::run(Command::new("kill").args(["-HUP", &proxies[2].pid.to_string()]))?;
        wait_routed(&net, &host, 8083, "nginx")?;
        figures[2]
            .route_ms
            .push(start.elapsed().as_secs_f64() * 1000.0);
    }
    for (p, f) in proxies.iter().zip(figures.iter_mut()) {
        f.rss = tree_rss(p.pid) as f64;
    }

    let results = results(&figures);
    crate::report::print(&results);
    std::fs::create_dir_all(out)?;
    write_json(&out.join("ingressd.json"), &results)?;
    std::fs::write(
        out.join("ingressd.md"),
        markdown(plan, &results, &figures, command),
    )?;
    progress(format!(
        "wrote {} and {}",
        out.join("ingressd.json").display(),
        out.join("ingressd.md").display()
    ));
    drop((ingressd, caddy, nginx, setup));
    Ok(results)
}

/// RSS of `pid` and its children (nginx's worker).
fn tree_rss(pid: u32) -> u64 {
    rss_of(pid) + children(pid).into_iter().map(rss_of).sum::<u64>()
}

type Pick = fn(&Figures) -> &Vec<f64>;

fn results(f: &[Figures]) -> Results {
    let (i, c, n) = (&f[0], &f[1], &f[2]);
    let mut r = Results::new();
    let pairs: [(&str, Pick, &str); 6] = [
        ("http_rps", |f| &f.http_rps, "requests/s"),
        ("https_rps", |f| &f.https_rps, "requests/s"),
        ("h2_rps", |f| &f.h2_rps, "requests/s"),
        ("p50_ms", |f| &f.p50, "ms"),
        ("p99_ms", |f| &f.p99, "ms"),
        (
            "cpu_ms_per_1000",
            |f| &f.cpu_per_1000,
            "CPU-s/1000 requests",
        ),
    ];
    for (name, pick, unit) in pairs {
        let precise = unit != "requests/s";
        for (reference, suffix) in [(c, ""), (n, "_vs_nginx")] {
            let m = if precise {
                Metric::spread_precise(pick(i), pick(reference), unit)
            } else {
                Metric::spread(pick(i), pick(reference), unit)
            };
            r.insert(format!("{name}{suffix}"), m);
        }
    }
    let p = |v: &[f64], q: f64| percentile(v, q).unwrap_or(f64::NAN);
    r.insert(
        "healthy_to_routed_p50_ms".into(),
        Metric::new(p(&i.route_ms, 0.5), p(&n.route_ms, 0.5), "ms"),
    );
    r.insert(
        "healthy_to_routed_max_ms".into(),
        Metric::new(p(&i.route_ms, 1.0), p(&n.route_ms, 1.0), "ms"),
    );
    r.insert("rss_bytes".into(), Metric::new(i.rss, c.rss, "B"));
    r.insert("rss_bytes_vs_nginx".into(), Metric::new(i.rss, n.rss, "B"));
    r
}

/// The issue's targets and whether they hold.
pub fn verdicts(r: &Results) -> Vec<(String, bool)> {
    let ratio = |k: &str| r.get(k).map_or(f64::NAN, |m| m.ratio);
    let value = |k: &str| r.get(k).map_or(f64::NAN, |m| m.value);
    let at_least = |k: &str, who: &str| {
        (
            format!("{k} at least {who}'s: ratio {}", fmt_num(ratio(k))),
            ratio(k) >= 1.0,
        )
    };
    vec![
        at_least("http_rps", "Caddy"),
        at_least("https_rps", "Caddy"),
        at_least("h2_rps", "Caddy"),
        at_least("http_rps_vs_nginx", "nginx"),
        (
            format!("p99 at most Caddy's: ratio {}", fmt_num(ratio("p99_ms"))),
            ratio("p99_ms") <= 1.0,
        ),
        (
            format!(
                "CPU per 1,000 requests at most Caddy's: ratio {}",
                fmt_num(ratio("cpu_ms_per_1000"))
            ),
            ratio("cpu_ms_per_1000") <= 1.0,
        ),
        (
            format!(
                "container healthy to routed under 1 s: max {} ms",
                fmt_num(value("healthy_to_routed_max_ms"))
            ),
            value("healthy_to_routed_max_ms") < 1000.0,
        ),
        (
            format!(
                "resident memory under 20 MiB: {:.1} MiB",
                value("rss_bytes") / 1048576.0
            ),
            value("rss_bytes") < 20.0 * 1048576.0,
        ),
    ]
}

fn markdown(plan: &Plan, r: &Results, f: &[Figures], command: &str) -> String {
    let mut s = String::new();
    line(&mut s, "# ingressd benchmark\n");
    line(&mut s, "Command (from the workspace root, as root):\n");
    line(&mut s, format!("```\n{command}\n```\n"));
    line(&mut s, "## Machine\n");
    let workspace = crate::workspace();
    line(&mut s, Machine::describe(&workspace).markdown_list());
    line(&mut s, "## Results\n");
    line(&mut s, "`ratio` = ingressd / reference; the reference is Caddy 2.6, or nginx 1.22 for the `_vs_nginx` rows (and for `healthy_to_routed_*`: nginx's reload). Each figure is the median of the runs, min and max beside it.\n");
    crate::report::spread_table(&mut s, "ingressd", r);
    line(&mut s, "\n## Targets (issue 16)\n");
    for (what, ok) in verdicts(r) {
        line(
            &mut s,
            format!("- {what}: **{}**", if ok { "PASS" } else { "FAIL" }),
        );
    }
    line(&mut s, "\n## How each figure is measured\n");
    line(&mut s, "- **Setup**: one machine of a local network (a network namespace running the real `uncloud-firstboot`, `stated`, `meshd`, `apid` and `ingressd`, initialised with `uc machine init`, given the `ingress` role with `uc machine role add`). A service publishing `plain.example.com:80/http` and `bench.example.com:80/https` and its one healthy container are written to the state through stated's D-Bus API, as dockerd-shim writes them; the container is an nginx (1 worker, CPU 1) answering a 24-byte body on 10.210.200.1:80, an address on the namespace's loopback. Caddy 2.6 (`auto_https off`, `admin off`, no access log, `GOMAXPROCS=1`, `reverse_proxy`, whose upstream keep-alive is on by default) and nginx 1.22 (`worker_processes 1`, `keepalive_requests` raised from 1,000 so connections are not closed mid-run, `upstream` with `keepalive 64`, `proxy_http_version 1.1`, `Connection \"\"`, `X-Forwarded-For/Proto/Host` set as ingressd and Caddy set them, `access_log off`, `http2` on its TLS listener) proxy the same two hostnames to the same upstream. TLS: ingressd its self-signed fallback (ECDSA P-256), Caddy and nginx one ECDSA P-256 certificate made by `openssl`. Every proxy is started pinned to CPU 0 (`taskset`), so it sizes its threads to one CPU; the clients and the upstream run on CPU 1.");
    line(&mut s, format!("- **Throughput** (`http_rps`, `https_rps`): `wrk -t1 -c{} -d{}s` over HTTP/1.1 keep-alive, plain and TLS (SNI `bench.example.com`). `h2_rps`: `h2load -c 10 -m 10 -n {}` over TLS with HTTP/2. A run with any non-2xx answer or socket error fails the benchmark. {} run(s) per proxy, alternating proxies.", plan.connections, plan.secs, plan.secs * 10_000, plan.runs));
    line(&mut s, format!("- **Latency** (`p50_ms`, `p99_ms`): {} requests/s over 10 HTTP/1.1 keep-alive connections for {} s from CPU 1, each request's latency measured from when it was due (open loop, so queueing shows), nearest-rank percentiles per run, the median of the runs.", plan.fixed_rps, plan.latency_secs));
    line(&mut s, "- **CPU** (`cpu_ms_per_1000`): the proxy's user + system CPU seconds (all its threads, and nginx's worker, `/proc/PID/stat`) during the HTTP/1.1 wrk run, per 1,000 requests it served.");
    line(&mut s, format!("- **Container healthy to routed** (`healthy_to_routed_*`, {} samples): ingressd: from stated's `UpsertContainer` of a new healthy container of a new service publishing `rK.example.com` (acknowledged once on disk) until a request for it through ingressd answers 200, polled every millisecond: stated's write, its `Changed` signal, ingressd reading that container and rebuilding its routes. nginx (its way to take a new route): from SIGHUP after writing a new `server` block until it answers 200.", plan.route_samples));
    line(&mut s, "- **Resident memory** (`rss_bytes`): `VmRSS` of each proxy after the runs (nginx: master and worker), holding its connections' buffers; ingressd is the real daemon, with its D-Bus connection and its mirror of the state.");
    line(&mut s, "\n## Details\n");
    for (name, fig) in ["ingressd", "caddy", "nginx"].iter().zip(f) {
        line(&mut s, format!(
            "- {name}: HTTP/1.1 req/s {:?}; HTTPS req/s {:?}; HTTP/2 req/s {:?}; p99 ms {:?}; RSS {:.1} MiB",
            fig.http_rps.iter().map(|x| x.round()).collect::<Vec<_>>(),
            fig.https_rps.iter().map(|x| x.round()).collect::<Vec<_>>(),
            fig.h2_rps.iter().map(|x| x.round()).collect::<Vec<_>>(),
            fig.p99.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            fig.rss / 1048576.0
        ));
    }
    s
}

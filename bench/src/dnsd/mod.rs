//! dnsd beside dnsmasq and unbound: queries per second, latency at a fixed rate, state
//! change to answer, and resident memory.
//!
//! One machine of a local network (`uncloud_testkit::network`: a namespace running the real
//! firstboot, stated, meshd, dnsd and apid, initialised with `uc machine init`) holds N
//! services with one container each in its state, written through stated's D-Bus API as
//! dockerd-shim writes them; its dnsd serves them as `svc-K.p.internal`. In the same
//! namespace, dnsmasq (an addn-hosts file) and unbound (`local-data`) serve the same N names,
//! and all three forward `example.test` to one more dnsmasq (the upstream, on 127.0.0.2:53).
//! Every server is pinned to CPU 0 and dnsperf to CPU 1 (`taskset`).

use std::io::Write;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use uncloud_testkit::network::{Binaries, LocalNetwork};

use crate::progress;
use crate::report::{fmt_num, line, write_json, Metric, Results};
use crate::stats::percentile;
use crate::sys::{need, rss_of, workspace_binary, Machine};

#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    /// Names each server holds.
    pub names: usize,
    /// Runs of each measurement per server (the figure is their median).
    pub runs: usize,
    /// Length of one dnsperf run.
    pub secs: u32,
    /// The fixed rate of the latency runs, queries per second.
    pub fixed_qps: u32,
    /// Length of one latency run.
    pub latency_secs: u32,
    /// State changes timed per server.
    pub change_samples: usize,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            quick: false,
            names: 1000,
            runs: 5,
            secs: 3,
            fixed_qps: 2000,
            latency_secs: 10,
            change_samples: 100,
        }
    }

    pub fn quick() -> Plan {
        Plan {
            quick: true,
            names: 100,
            runs: 1,
            secs: 1,
            fixed_qps: 500,
            latency_secs: 1,
            change_samples: 10,
        }
    }
}

/// The CPU servers run on, and the one dnsperf runs on.
const SERVER_CPU: &str = "0";
const CLIENT_CPU: &str = "1";
/// Ports of the references in the machine's namespace (dnsd serves 127.0.0.1:53 there).
const DNSMASQ_PORT: u16 = 5301;
const UNBOUND_PORT: u16 = 5302;

fn ip_of(k: usize) -> String {
    format!("10.210.{}.{}", 100 + k / 250, k % 250 + 1)
}

/// A reference server process, killed on drop.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server under test, as dnsperf reaches it.
#[derive(Debug, Clone, Copy)]
struct Target {
    name: &'static str,
    port: u16,
    pid: u32,
}

/// What one server measured: each list holds one value per run.
#[derive(Debug, Default, Clone)]
struct Figures {
    internal_qps: Vec<f64>,
    internal_p50: Vec<f64>,
    internal_p99: Vec<f64>,
    forwarded_qps: Vec<f64>,
    forwarded_p50: Vec<f64>,
    forwarded_p99: Vec<f64>,
    change_ms: Vec<f64>,
    rss: f64,
    rss_anon: f64,
    rss_file: f64,
}

/// A UDP socket in the machine's namespace, for timing single queries.
fn query_once(socket: &UdpSocket, port: u16, name: &str) -> bool {
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("a valid name"),
        RecordType::A,
    ));
    let bytes = m.to_vec().expect("encodes");
    if socket.send_to(&bytes, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    match socket.recv(&mut buf) {
        Ok(n) => Message::from_vec(&buf[..n]).is_ok_and(|r| !r.answers.is_empty()),
        Err(_) => false,
    }
}

/// Polls `name` until it has an answer; the time since `since`.
fn until_answered(socket: &UdpSocket, port: u16, name: &str, since: Instant) -> Result<f64> {
    while since.elapsed() < Duration::from_secs(10) {
        if query_once(socket, port, name) {
            return Ok(since.elapsed().as_secs_f64() * 1000.0);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    bail!("{name} not answered on port {port} within 10 s")
}

/// dnsperf on CPU 1 in the namespace; its stdout.
fn dnsperf(net: &LocalNetwork, t: Target, file: &Path, args: &[&str]) -> Result<String> {
    let out = net.machines[0]
        .ns
        .command("taskset")
        .args(["-c", CLIENT_CPU, "dnsperf", "-s", "127.0.0.1", "-p"])
        .arg(t.port.to_string())
        .arg("-d")
        .arg(file)
        .args(args)
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "dnsperf against {} failed: {}",
            t.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

fn stat(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Highest rate the server sustains: dnsperf with 100 queries outstanding.
fn max_qps(net: &LocalNetwork, t: Target, file: &Path, secs: u32) -> Result<f64> {
    let text = dnsperf(
        net,
        t,
        file,
        &["-l", &secs.to_string(), "-q", "100", "-c", "8"],
    )?;
    let qps = stat(&text, "Queries per second:").context("no QPS in dnsperf's output")?;
    let lost = stat(&text, "Queries lost:").unwrap_or(0.0);
    let sent = stat(&text, "Queries sent:").unwrap_or(1.0);
    if lost > sent * 0.01 {
        bail!("{}: {lost} of {sent} queries lost:\n{text}", t.name);
    }
    Ok(qps)
}

/// Latencies (ms) of every query at a fixed rate: p50 and p99.
fn latency(net: &LocalNetwork, t: Target, file: &Path, qps: u32, secs: u32) -> Result<(f64, f64)> {
    let text = dnsperf(
        net,
        t,
        file,
        &["-l", &secs.to_string(), "-Q", &qps.to_string(), "-v"],
    )?;
    let samples: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1000.0)
        .collect();
    if samples.len() < (qps * secs) as usize / 2 {
        bail!("{}: only {} answers at {qps}/s", t.name, samples.len());
    }
    Ok((
        percentile(&samples, 0.5).unwrap(),
        percentile(&samples, 0.99).unwrap(),
    ))
}

/// One run of every measurement against one server.
fn measure_once(
    net: &LocalNetwork,
    plan: &Plan,
    t: Target,
    files: &Files,
    f: &mut Figures,
) -> Result<()> {
    f.internal_qps
        .push(max_qps(net, t, &files.internal, plan.secs)?);
    f.forwarded_qps
        .push(max_qps(net, t, &files.forwarded, plan.secs)?);
    let (p50, p99) = latency(net, t, &files.internal, plan.fixed_qps, plan.latency_secs)?;
    f.internal_p50.push(p50);
    f.internal_p99.push(p99);
    let (p50, p99) = latency(net, t, &files.forwarded, plan.fixed_qps, plan.latency_secs)?;
    f.forwarded_p50.push(p50);
    f.forwarded_p99.push(p99);
    Ok(())
}

/// Resident memory of `pid`: total, anonymous (heap, stacks) and file-backed (code) bytes.
fn memory(pid: u32) -> (f64, f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |k| k * 1024.0)
    };
    (rss_of(pid) as f64, kib("RssAnon:"), kib("RssFile:"))
}

struct Files {
    dir: tempfile::TempDir,
    internal: PathBuf,
    forwarded: PathBuf,
    hosts: PathBuf,
}

fn write_files(names: usize) -> Result<Files> {
    let dir = tempfile::tempdir()?;
    let internal = dir.path().join("internal.txt");
    let forwarded = dir.path().join("forwarded.txt");
    let hosts = dir.path().join("hosts");
    let mut i = String::new();
    let mut f = String::new();
    let mut h = String::new();
    for k in 0..names {
        i += &format!("svc-{k}.p.internal A\n");
        f += &format!("fwd-{k}.example.test A\n");
        h += &format!("{} svc-{k}.p.internal\n", ip_of(k));
    }
    std::fs::write(&internal, i)?;
    std::fs::write(&forwarded, f)?;
    std::fs::write(&hosts, h)?;
    Ok(Files {
        dir,
        internal,
        forwarded,
        hosts,
    })
}

/// A process in the machine's namespace on the servers' CPU.
fn spawn_pinned(net: &LocalNetwork, program: &str, args: &[String]) -> Result<Server> {
    let child = net.machines[0]
        .ns
        .command("taskset")
        .args(["-c", SERVER_CPU, program])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    Ok(Server { child })
}

fn dnsmasq(net: &LocalNetwork, files: &Files) -> Result<Server> {
    spawn_pinned(
        net,
        "dnsmasq",
        &[
            "--keep-in-foreground".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--conf-file=/dev/null".into(),
            "--bind-interfaces".into(),
            "--listen-address=127.0.0.1".into(),
            format!("--port={DNSMASQ_PORT}"),
            format!("--addn-hosts={}", files.hosts.display()),
            "--server=127.0.0.2".into(),
            // The same TTL and cache size as dnsd.
            "--local-ttl=5".into(),
            "--cache-size=10000".into(),
            "--user=root".into(),
            "--pid-file=".into(),
        ],
    )
}

fn unbound(net: &LocalNetwork, files: &Files, names: usize) -> Result<Server> {
    let dir = files.dir.path();
    let mut conf = format!(
        "server:\n  interface: 127.0.0.1@{UNBOUND_PORT}\n  port: {UNBOUND_PORT}\n  num-threads: 1\n\
         \x20 do-daemonize: no\n  chroot: \"\"\n  username: \"\"\n  directory: \"{}\"\n  pidfile: \"\"\n\
         \x20 use-syslog: no\n  logfile: \"\"\n  access-control: 127.0.0.0/8 allow\n\
         \x20 do-not-query-localhost: no\n  module-config: \"iterator\"\n\
         \x20 local-zone: \"internal.\" static\n",
        dir.display()
    );
    for k in 0..names {
        conf += &format!(
            "  local-data: \"svc-{k}.p.internal. 5 IN A {}\"\n",
            ip_of(k)
        );
    }
    conf += "forward-zone:\n  name: \"example.test.\"\n  forward-addr: 127.0.0.2@53\n";
    let path = dir.join("unbound.conf");
    std::fs::write(&path, conf)?;
    spawn_pinned(
        net,
        "unbound",
        &["-d".into(), "-c".into(), path.display().to_string()],
    )
}

/// The upstream all three forward to: any name under `example.test` is 192.0.2.7 for an hour.
fn upstream(net: &LocalNetwork) -> Result<Server> {
    let child = net.machines[0]
        .ns
        .command("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--bind-interfaces",
            "--listen-address=127.0.0.2",
            "--port=53",
            "--address=/example.test/192.0.2.7",
            "--local-ttl=3600",
            "--user=root",
            "--pid-file=",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the upstream dnsmasq")?;
    Ok(Server { child })
}

fn wait_answers(net: &LocalNetwork, port: u16, name: &str, what: &str) -> Result<()> {
    let socket = ns_socket(net)?;
    until_answered(&socket, port, name, Instant::now()).with_context(|| what.to_string())?;
    Ok(())
}

fn ns_socket(net: &LocalNetwork) -> Result<UdpSocket> {
    let socket = net.machines[0]
        .ns
        .enter(|| UdpSocket::bind("127.0.0.1:0"))
        .context("a socket in the machine's namespace")?;
    socket.set_read_timeout(Some(Duration::from_millis(5)))?;
    Ok(socket)
}

fn service_json(k: usize) -> String {
    serde_json::json!({
        "id": format!("svc-{k}.p"),
        "name": format!("svc-{k}"),
        "project": "p",
        "spec": {"image": "busybox", "replicas": 1},
    })
    .to_string()
}

fn container_json(machine_id: &str, id: &str, name: &str, service: &str, ip: &str) -> String {
    serde_json::json!({
        "id": id,
        "machine_id": machine_id,
        "name": name,
        "service_id": service,
        "image": "busybox",
        "ip": ip,
        "state": "running",
        "healthy": true,
    })
    .to_string()
}

pub fn run(plan: &Plan, out: &Path, command: &str) -> Result<Results> {
    for (tool, package) in [
        ("dnsperf", "dnsperf"),
        ("dnsmasq", "dnsmasq-base"),
        ("unbound", "unbound"),
        ("taskset", "util-linux"),
    ] {
        need(tool, package)?;
    }
    let mut dir = None;
    for p in ["stated", "meshd", "dnsd", "apid", "uncloud-firstboot", "uc"] {
        dir = Some(workspace_binary(p)?.parent().unwrap().to_owned());
    }
    let rt = tokio::runtime::Runtime::new()?;
    let mut net = LocalNetwork::new(Binaries {
        dir: dir.expect("listed above"),
    });
    progress("booting a machine and creating its network");
    let m = net.boot("m0", None);
    net.uc_ok(&net.machines[m].enrol("init"));
    let machine_id = net.machines[m].machine_id();

    let files = write_files(plan.names)?;
    let _upstream = upstream(&net)?;
    std::fs::write(
        net.machines[m].root().join("etc/resolv.conf"),
        "nameserver 127.0.0.2\n",
    )?;
    net.machines[m].restart_dnsd();
    wait_answers(&net, 53, "m0.machine.internal", "dnsd serves")?;
    wait_answers(&net, 53, "up.example.test", "dnsd forwards")?;

    progress(format!(
        "writing {} services with a container each to stated",
        plan.names
    ));
    let conn = rt.block_on(net.machines[m].bus.connect());
    let state = rt.block_on(uncloud_common::dbus::StateProxy::new(&conn))?;
    for k in 0..plan.names {
        let service = format!("svc-{k}.p");
        rt.block_on(state.upsert_service(&service_json(k)))
            .with_context(|| format!("writing {service}"))?;
        let c = container_json(
            &machine_id,
            &format!("c-{k}"),
            &format!("c-{k}"),
            &service,
            &ip_of(k),
        );
        rt.block_on(state.upsert_container(&c))
            .with_context(|| format!("writing c-{k}"))?;
    }
    let last = format!("svc-{}.p.internal", plan.names - 1);
    wait_answers(&net, 53, &last, "dnsd serves every service")
        .with_context(|| format!("the machine's logs:\n{}", net.logs()))?;

    let dnsd_pid = net.machines[m].dnsd.as_ref().expect("running").pid();
    crate::sys::run(Command::new("taskset").args([
        "-a",
        "-p",
        "-c",
        SERVER_CPU,
        &dnsd_pid.to_string(),
    ]))?;
    let dnsmasq_server = dnsmasq(&net, &files)?;
    let unbound_server = unbound(&net, &files, plan.names)?;
    wait_answers(&net, DNSMASQ_PORT, &last, "dnsmasq serves")?;
    wait_answers(&net, UNBOUND_PORT, &last, "unbound serves")?;

    let targets = [
        Target {
            name: "dnsd",
            port: 53,
            pid: dnsd_pid,
        },
        Target {
            name: "dnsmasq",
            port: DNSMASQ_PORT,
            pid: dnsmasq_server.child.id(),
        },
        Target {
            name: "unbound",
            port: UNBOUND_PORT,
            pid: unbound_server.child.id(),
        },
    ];
    let mut figures: Vec<Figures> = vec![Figures::default(); targets.len()];
    for t in targets {
        // Warm the forwarding caches: every forwarded name once, gently.
        dnsperf(&net, t, &files.forwarded, &["-n", "1", "-Q", "2000"])?;
    }
    // Runs alternate between the servers, so whatever else the machine does at some moment
    // falls on all of them alike.
    for run in 0..plan.runs {
        for (t, f) in targets.iter().zip(figures.iter_mut()) {
            progress(format!("run {}/{}: {}", run + 1, plan.runs, t.name));
            measure_once(&net, plan, *t, &files, f)?;
        }
    }
    for (t, f) in targets.iter().zip(figures.iter_mut()) {
        (f.rss, f.rss_anon, f.rss_file) = memory(t.pid);
    }

    // State change to answer. dnsd: from the call into stated that records a new container
    // (acknowledged once durable) until dnsd answers its name. dnsmasq: from appending the
    // name to its hosts file and sending SIGHUP (its way to reload) until it answers.
    progress(format!(
        "state change to answer, {} samples each",
        plan.change_samples
    ));
    let socket = ns_socket(&net)?;
    for k in 0..plan.change_samples {
        let name = format!("chg-{k}");
        let ip = ip_of(k);
        let json = container_json(&machine_id, &name, &name, "", &ip);
        let since = Instant::now();
        rt.block_on(state.upsert_container(&json))?;
        figures[0].change_ms.push(until_answered(
            &socket,
            53,
            &format!("{name}.m0.machine.internal"),
            since,
        )?);
    }
    for k in 0..plan.change_samples {
        let name = format!("chg-{k}.m0.machine.internal");
        let since = Instant::now();
        let mut hosts = std::fs::OpenOptions::new()
            .append(true)
            .open(&files.hosts)?;
        writeln!(hosts, "{} {name}", ip_of(k))?;
        drop(hosts);
        crate::sys::run(Command::new("kill").args(["-HUP", &targets[1].pid.to_string()]))?;
        figures[1]
            .change_ms
            .push(until_answered(&socket, DNSMASQ_PORT, &name, since)?);
    }
    drop(socket);
    drop(unbound_server);
    drop(dnsmasq_server);
    drop(state);
    drop(conn);
    drop(net);

    let results = results(&figures);
    std::fs::create_dir_all(out)?;
    write_json(&out.join("dnsd.json"), &results)?;
    std::fs::write(
        out.join("dnsd.md"),
        markdown(plan, &results, &figures, command),
    )?;
    progress(format!(
        "wrote {} and {}",
        out.join("dnsd.json").display(),
        out.join("dnsd.md").display()
    ));
    Ok(results)
}

/// One list of a [`Figures`].
type Pick = fn(&Figures) -> &Vec<f64>;

fn results(f: &[Figures]) -> Results {
    let (d, m, u) = (&f[0], &f[1], &f[2]);
    let mut r = Results::new();
    let pairs: [(&str, Pick, &str); 6] = [
        ("internal_max_qps", |f| &f.internal_qps, "queries/s"),
        ("internal_p50_ms", |f| &f.internal_p50, "ms"),
        ("internal_p99_ms", |f| &f.internal_p99, "ms"),
        ("forwarded_max_qps", |f| &f.forwarded_qps, "queries/s"),
        ("forwarded_p50_ms", |f| &f.forwarded_p50, "ms"),
        ("forwarded_p99_ms", |f| &f.forwarded_p99, "ms"),
    ];
    for (name, pick, unit) in pairs {
        let mut against = |reference: &Figures, key: String| {
            let metric = if unit == "ms" {
                Metric::spread_precise(pick(d), pick(reference), unit)
            } else {
                Metric::spread(pick(d), pick(reference), unit)
            };
            r.insert(key, metric);
        };
        against(m, name.to_string());
        against(u, format!("{name}_vs_unbound"));
    }
    let p = |v: &[f64], q: f64| percentile(v, q).unwrap_or(f64::NAN);
    r.insert(
        "change_to_answer_p50_ms".into(),
        Metric::new(p(&d.change_ms, 0.5), p(&m.change_ms, 0.5), "ms"),
    );
    r.insert(
        "change_to_answer_p99_ms".into(),
        Metric::new(p(&d.change_ms, 0.99), p(&m.change_ms, 0.99), "ms"),
    );
    r.insert("rss_bytes".into(), Metric::new(d.rss, m.rss, "B"));
    r.insert(
        "rss_bytes_vs_unbound".into(),
        Metric::new(d.rss, u.rss, "B"),
    );
    r
}

/// The issue's targets and whether they hold.
pub fn verdicts(r: &Results) -> Vec<(String, bool)> {
    let ratio = |k: &str| r.get(k).map_or(f64::NAN, |m| m.ratio);
    let value = |k: &str| r.get(k).map_or(f64::NAN, |m| m.value);
    vec![
        (
            format!(
                "QPS at least dnsmasq's (internal names): ratio {}",
                fmt_num(ratio("internal_max_qps"))
            ),
            ratio("internal_max_qps") >= 1.0,
        ),
        (
            format!(
                "p99 latency at most dnsmasq's (internal names): ratio {}",
                fmt_num(ratio("internal_p99_ms"))
            ),
            ratio("internal_p99_ms") <= 1.0,
        ),
        (
            format!(
                "state change to answer p99 under 100 ms: {} ms",
                fmt_num(value("change_to_answer_p99_ms"))
            ),
            value("change_to_answer_p99_ms") < 100.0,
        ),
        (
            format!(
                "resident memory under 10 MiB: {:.1} MiB",
                value("rss_bytes") / 1048576.0
            ),
            value("rss_bytes") < 10.0 * 1048576.0,
        ),
    ]
}

fn markdown(plan: &Plan, r: &Results, f: &[Figures], command: &str) -> String {
    let mut s = String::new();
    line(&mut s, "# dnsd benchmark\n");
    line(&mut s, "Command (from the workspace root, as root):\n");
    line(&mut s, format!("```\n{command}\n```\n"));
    line(&mut s, "## Machine\n");
    let workspace = crate::workspace();
    line(&mut s, Machine::describe(&workspace).markdown_list());
    line(&mut s, "## Results\n");
    line(&mut s, "`ratio` = dnsd / reference; the reference is dnsmasq, or unbound for the `_vs_unbound` rows. Each figure is the median of the runs, min and max beside it.\n");
    crate::report::spread_table(&mut s, "dnsd", r);
    line(&mut s, "\n## Targets (issue 14)\n");
    for (what, ok) in verdicts(r) {
        line(
            &mut s,
            format!("- {what}: **{}**", if ok { "PASS" } else { "FAIL" }),
        );
    }
    line(&mut s, "\n## How each figure is measured\n");
    line(&mut s, format!(
        "- **Setup**: one machine of a local network (a network namespace running the real `uncloud-firstboot`, `stated`, `meshd`, `dnsd` and `apid`, initialised with `uc machine init`). {n} services with one container each are written to its state through stated's D-Bus API (`UpsertService`, `UpsertContainer`), so dnsd serves `svc-K.p.internal` from the state it mirrors. dnsmasq 2.x (`--addn-hosts`, TTL 5, cache 10000) and unbound (`local-zone static`, `local-data`, one thread, iterator only) serve the same {n} names in the same namespace. All three forward `example.test` to one more dnsmasq on 127.0.0.2:53 that answers any name there. Servers are pinned to CPU {SERVER_CPU} (dnsd with all its threads; stated, meshd and apid stay where they are, idle), dnsperf to CPU {CLIENT_CPU} (`taskset`).",
        n = plan.names
    ));
    line(&mut s, format!(
        "- **Max QPS** (`*_max_qps`): dnsperf for {}s with 100 queries outstanding over 8 clients, cycling through the {} names (internal: `svc-K.p.internal A`; forwarded: `fwd-K.example.test A`, every one answered once before, so from the cache). {} run(s) per server.",
        plan.secs, plan.names, plan.runs
    ));
    line(&mut s, format!(
        "- **Latency** (`*_p50_ms`, `*_p99_ms`): dnsperf at a fixed {} queries/s for {}s with `-v`, every query's latency; p50 and p99 by nearest rank per run, the median of {} run(s). Runs alternate between the three servers (each run measures QPS and latency of one server, then the next), so background noise falls on all alike.",
        plan.fixed_qps, plan.latency_secs, plan.runs
    ));
    line(&mut s, format!(
        "- **State change to answer** (`change_to_answer_*`): {} samples. dnsd: from calling stated's `UpsertContainer` for a new container (acknowledged once it is on disk) until dnsd answers `chg-K.m0.machine.internal`, polled every 0.5 ms over UDP from the namespace: stated's write, its `Changed` signal, dnsd reading that one container and rebuilding its names. dnsmasq (its way to change a name): from appending the name to its hosts file and sending SIGHUP until it answers.",
        plan.change_samples
    ));
    line(&mut s, "- **Resident memory** (`rss_bytes`): `VmRSS` of each server process after the runs, holding the names and a warm cache of the forwarded ones; dnsd is the real daemon (with its D-Bus connection and its mirror of the state).");
    line(&mut s, "\n## Details\n");
    for (name, fig) in ["dnsd", "dnsmasq", "unbound"].iter().zip(f) {
        line(&mut s, format!(
            "- {name}: internal QPS {:?}; forwarded QPS {:?}; internal p99 ms {:?}; forwarded p99 ms {:?}; RSS {:.1} MiB ({:.1} MiB anonymous, {:.1} MiB file-backed: code)",
            fig.internal_qps.iter().map(|x| x.round()).collect::<Vec<_>>(),
            fig.forwarded_qps.iter().map(|x| x.round()).collect::<Vec<_>>(),
            fig.internal_p99.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            fig.forwarded_p99.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            fig.rss / 1048576.0,
            fig.rss_anon / 1048576.0,
            fig.rss_file / 1048576.0
        ));
    }
    s
}

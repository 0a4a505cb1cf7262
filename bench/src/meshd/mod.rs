//! The mesh benchmark: TCP throughput (iperf3), latency (ping) and CPU per GB between two
//! network namespaces through meshd, side by side with Debian's `wireguard-go` on the same
//! namespaces and with the plain veth path underneath both; and meshd's resident memory
//! with 10 and 100 peers beside wireguard-go's.
//!
//! Everything runs in namespaces this benchmark creates and removes: two "machines" on one
//! bridge (`192.0.2.1`, `192.0.2.2`). meshd gets its peers the real way, from stated (in this
//! process, one node per machine, each on a private D-Bus daemon); wireguard-go is configured
//! with `wg` on its own interface and port.

pub mod markdown;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use stated::document::Mutation;
use uncloud_common::dbus::MeshProxy;
use uncloud_common::model::Machine;
use uncloud_testkit::cluster::Cluster;
use uncloud_testkit::{Daemon, Internet, Netns, PrivateBus};

use crate::progress;
use crate::report::{write_json, Metric, Results};
use crate::sys::{need, run};

/// What to measure and how long.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    /// Seconds per iperf3 run.
    pub seconds: u64,
    /// Pings per latency run (10 ms apart).
    pub pings: u32,
    /// Repetitions of each throughput run; the median counts.
    pub repeats: usize,
    pub peer_counts: Vec<usize>,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            quick: false,
            seconds: 10,
            pings: 500,
            repeats: 3,
            peer_counts: vec![10, 100],
        }
    }

    pub fn quick() -> Plan {
        Plan {
            quick: true,
            seconds: 2,
            pings: 50,
            repeats: 1,
            peer_counts: vec![10],
        }
    }
}

/// One path's figures.
#[derive(Debug, Clone, Default)]
pub struct PathFigures {
    pub mbit_s: Vec<f64>,
    pub latency_avg_ms: f64,
    pub latency_max_ms: f64,
    /// CPU seconds of the tunnel daemons (both sides) per GB received; NaN for veth.
    pub cpu_s_per_gb: Vec<f64>,
}

impl PathFigures {
    pub fn median_mbit_s(&self) -> f64 {
        median(&self.mbit_s)
    }
    pub fn median_cpu(&self) -> f64 {
        median(&self.cpu_s_per_gb)
    }
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub veth: PathFigures,
    pub meshd: PathFigures,
    pub wg_go: PathFigures,
    /// (peers, meshd RSS bytes, wireguard-go RSS bytes)
    pub rss: Vec<(usize, u64, u64)>,
    pub mtu_meshd: String,
    pub mtu_wg_go: String,
    pub wg_go_version: String,
}

/// User + system CPU seconds a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux.
}

/// Average and maximum round trip of `count` pings 10 ms apart.
fn latency(ns: &Netns, ip: &str, count: u32) -> Result<(f64, f64)> {
    let out = run(ns.command("ping").args([
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.01",
        "-W",
        "1",
        ip,
    ]))?;
    // rtt min/avg/max/mdev = 0.041/0.060/0.170/0.014 ms
    let nums = out
        .lines()
        .find_map(|l| l.split_once(" = ").filter(|(k, _)| k.starts_with("rtt")))
        .map(|(_, v)| {
            v.trim_end_matches(" ms")
                .split('/')
                .map(str::parse::<f64>)
                .collect::<Vec<_>>()
        })
        .context("no rtt line in ping's output")?;
    match nums.as_slice() {
        [Ok(_), Ok(avg), Ok(max), ..] => Ok((*avg, *max)),
        _ => bail!("cannot parse ping's rtt line: {out}"),
    }
}

/// One iperf3 run from `client` to `server_ip` in `server`; returns (Mbit/s received, bytes)
/// and the CPU seconds `daemons` used meanwhile.
fn throughput(
    client: &Netns,
    server: &Netns,
    server_ip: &str,
    seconds: u64,
    daemons: &[u32],
) -> Result<(f64, f64, f64)> {
    let log = std::env::temp_dir().join(format!("iperf3-{}.log", std::process::id()));
    let mut srv = Daemon::spawn(
        "iperf3 server",
        {
            let mut c = server.command("iperf3");
            c.args(["-s", "-1", "-B", server_ip]);
            c
        },
        log.clone(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let cpu_before: f64 = daemons.iter().map(|&p| cpu_seconds(p)).sum();
    let out =
        run(client
            .command("iperf3")
            .args(["-c", server_ip, "-t", &seconds.to_string(), "-J"]))?;
    let cpu_after: f64 = daemons.iter().map(|&p| cpu_seconds(p)).sum();
    srv.stop(Duration::from_secs(5));
    let _ = std::fs::remove_file(&log);
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    let received = &v["end"]["sum_received"];
    let bps = received["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3's output")?;
    let bytes = received["bytes"].as_f64().unwrap_or(0.0);
    Ok((bps / 1e6, bytes, cpu_after - cpu_before))
}

fn measure_path(
    what: &str,
    plan: &Plan,
    a: &Netns,
    b: &Netns,
    ip: &str,
    daemons: &[u32],
) -> Result<PathFigures> {
    progress(format!("== {what}: latency ({} pings)", plan.pings));
    let (avg, max) = latency(a, ip, plan.pings)?;
    let mut f = PathFigures {
        latency_avg_ms: avg,
        latency_max_ms: max,
        ..Default::default()
    };
    for i in 0..plan.repeats {
        let (mbit, bytes, cpu) = throughput(a, b, ip, plan.seconds, daemons)?;
        progress(format!(
            "{what}: run {}: {mbit:.0} Mbit/s, daemons {cpu:.2} CPU s",
            i + 1
        ));
        f.mbit_s.push(mbit);
        if !daemons.is_empty() && bytes > 0.0 {
            f.cpu_s_per_gb.push(cpu / (bytes / 1e9));
        }
    }
    Ok(f)
}

/// A private bus and stated's service on it.
type Bus = (
    PrivateBus,
    Option<(zbus::Connection, tokio::task::JoinHandle<()>)>,
);

/// A meshd per machine, fed by stated on a private bus.
struct Meshes {
    daemons: Vec<Daemon>,
    _buses: Vec<Bus>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start_meshd(bin: &Path, cluster: &Cluster, machines: &[&Netns]) -> Result<Meshes> {
    let mut m = Meshes {
        daemons: Vec::new(),
        _buses: Vec::new(),
        _dirs: Vec::new(),
    };
    for (i, ns) in machines.iter().enumerate() {
        let bus = PrivateBus::start();
        let serve = stated::dbus::serve(
            stated::Membership::of_running(cluster.node(i).shared().clone()),
            &bus.address,
        )
        .await?;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("meshd.toml");
        std::fs::write(
            &config,
            format!(
                "bus = \"{}\"\ndata_dir = \"{}\"\n",
                bus.address,
                dir.path().join("data").display()
            ),
        )?;
        let mut cmd = ns.command(bin);
        cmd.arg("--config").arg(&config).env("RUST_LOG", "warn");
        m.daemons
            .push(Daemon::spawn("meshd", cmd, dir.path().join("meshd.log")));
        m._buses.push((bus, serve));
        m._dirs.push(dir);
    }
    Ok(m)
}

/// Waits until every meshd reports `want` peers (and, with `up`, all of them up).
async fn wait_peers(meshes: &Meshes, want: usize, up: bool, deadline: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let mut ok = true;
        for (bus, _) in &meshes._buses {
            let conn = bus.connect().await;
            let rows = MeshProxy::new(&conn)
                .await?
                .peers()
                .await
                .unwrap_or_default();
            let ups = rows.iter().filter(|r| r.5 == "up").count();
            ok &= rows.len() == want && (!up || ups == want);
        }
        if ok {
            return Ok(());
        }
        if start.elapsed() > deadline {
            let logs: Vec<String> = meshes.daemons.iter().map(|d| d.log_text()).collect();
            bail!("meshd did not reach {want} peers: logs {logs:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn wg_genkey() -> Result<(String, String)> {
    let private = run(Command::new("wg").arg("genkey"))?.trim().to_string();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(private.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        private,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// Starts wireguard-go as interface `name` in `ns`, waits for its control socket.
fn start_wg_go(ns: &Netns, name: &str, dir: &Path) -> Result<Daemon> {
    // A socket left by a killed run would be found at once and refuse connections.
    let sock = PathBuf::from(format!("/var/run/wireguard/{name}.sock"));
    let _ = std::fs::remove_file(&sock);
    let mut cmd = ns.command("wireguard-go");
    cmd.args(["-f", name]);
    let d = Daemon::spawn("wireguard-go", cmd, dir.join(format!("{name}.log")));
    let start = Instant::now();
    while !sock.exists() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("wireguard-go did not create {}", sock.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(d)
}

pub async fn run_bench(plan: &Plan, out_dir: &Path, command: &str) -> Result<Results> {
    for (tool, pkg) in [
        ("iperf3", "iperf3"),
        ("wireguard-go", "wireguard-go"),
        ("wg", "wireguard-tools"),
        ("ping", "iputils-ping"),
        ("nft", "nftables"),
    ] {
        need(tool, pkg)?;
    }
    let workspace = crate::workspace();
    let machine = crate::sys::Machine::describe(&workspace);
    let bin = crate::sys::workspace_binary("meshd")?;
    let mut m = Measured {
        wg_go_version: run(Command::new("dpkg-query").args([
            "-W",
            "-f=${Version}",
            "wireguard-go",
        ]))
        .unwrap_or_else(|_| "unknown".into()),
        ..Default::default()
    };

    // Two machines on one bridge.
    let internet = Internet::new();
    let a = Netns::new("bench-a");
    let b = Netns::new("bench-b");
    internet.attach(&a, "eth0", "192.0.2.1/24");
    internet.attach(&b, "eth0", "192.0.2.2/24");

    // The plain path underneath both tunnels.
    m.veth = measure_path("veth (no tunnel)", plan, &a, &b, "192.0.2.2", &[])?;

    // meshd.
    progress("starting stated (in process) and meshd on both machines");
    let cluster = Cluster::start(2).await;
    cluster
        .settled(Duration::from_secs(60))
        .await
        .map_err(anyhow::Error::msg)?;
    let meshes = start_meshd(&bin, &cluster, &[&a, &b]).await?;
    wait_peers(&meshes, 1, true, Duration::from_secs(60)).await?;
    let subnet_b = cluster
        .node(1)
        .machine(&cluster.ids[1])
        .context("machine b registered")?
        .subnet;
    let ip_b = format!("10.210.{subnet_b}.1");
    m.mtu_meshd = run(a.command("cat").arg("/sys/class/net/uncloud/mtu"))?
        .trim()
        .to_string();
    let pids: Vec<u32> = meshes.daemons.iter().map(|d| d.pid()).collect();
    m.meshd = measure_path("meshd", plan, &a, &b, &ip_b, &pids)?;
    drop(meshes);

    // wireguard-go, same namespaces, its own interface and port.
    progress("starting wireguard-go on both machines");
    let dir = tempfile::tempdir()?;
    let ka = wg_genkey()?;
    let kb = wg_genkey()?;
    let wa = start_wg_go(&a, "wgref-a", dir.path())?;
    let wb = start_wg_go(&b, "wgref-b", dir.path())?;
    for (ns, ifname, own, peer, ip, peer_ip, peer_addr) in [
        (
            &a,
            "wgref-a",
            &ka,
            &kb,
            "10.99.0.1/24",
            "10.99.0.2/32",
            "192.0.2.2:51821",
        ),
        (
            &b,
            "wgref-b",
            &kb,
            &ka,
            "10.99.0.2/24",
            "10.99.0.1/32",
            "192.0.2.1:51821",
        ),
    ] {
        let keyfile = dir.path().join(format!("{ifname}.key"));
        std::fs::write(&keyfile, &own.0)?;
        run(ns.command("wg").args([
            "set",
            ifname,
            "listen-port",
            "51821",
            "private-key",
            keyfile.to_str().context("utf-8 path")?,
            "peer",
            &peer.1,
            "allowed-ips",
            peer_ip,
            "endpoint",
            peer_addr,
            "persistent-keepalive",
            "25",
        ]))?;
        ns.ip(&["addr", "add", ip, "dev", ifname]);
        ns.ip(&["link", "set", ifname, "up"]);
    }
    m.mtu_wg_go = run(a.command("cat").arg("/sys/class/net/wgref-a/mtu"))?
        .trim()
        .to_string();
    let pids = [wa.pid(), wb.pid()];
    m.wg_go = measure_path("wireguard-go", plan, &a, &b, "10.99.0.2", &pids)?;
    for mut d in [wa, wb] {
        d.stop(Duration::from_secs(5));
    }
    drop(cluster);

    for &n in &plan.peer_counts {
        m.rss.push(memory(&bin, n).await?);
    }

    let results = results(&m);
    std::fs::create_dir_all(out_dir)?;
    let json = out_dir.join("meshd.json");
    write_json(&json, &results)?;
    let md = out_dir.join("meshd.md");
    std::fs::write(&md, markdown::render(plan, &m, &results, command, &machine))?;
    progress(format!("wrote {} and {}", json.display(), md.display()));
    Ok(results)
}

/// Resident memory of meshd with `n` peers (from the state) and of wireguard-go with the same
/// number configured, each alone in a namespace. Peers' endpoints lead nowhere; both keep
/// trying to handshake, as with machines that are down.
async fn memory(bin: &Path, n: usize) -> Result<(usize, u64, u64)> {
    progress(format!("== memory with {n} peers"));
    let ns = Netns::new("bench-rss");
    let cluster = Cluster::start(1).await;
    cluster
        .settled(Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    let mut keys = Vec::new();
    for i in 0..n {
        let (_, public) = wg_genkey()?;
        let subnet = i as u32 + 2;
        cluster
            .node(0)
            .mutate(Mutation::UpsertMachine(Machine {
                id: format!("peer{i:03}"),
                name: format!("peer-{i}"),
                subnet,
                subnet_claimed_at_ms: u64::MAX / 4,
                name_claimed_at_ms: u64::MAX / 4,
                wireguard_public_key: public.clone(),
                endpoints: vec![format!("198.51.100.{}:51820", i % 250 + 1)],
                ..Default::default()
            }))
            .await?;
        keys.push((public, subnet));
    }
    let meshes = start_meshd(bin, &cluster, &[&ns]).await?;
    wait_peers(&meshes, n, false, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ours = crate::sys::rss_of(meshes.daemons[0].pid());
    drop(meshes);

    let dir = tempfile::tempdir()?;
    let wg = start_wg_go(&ns, "wgref-rss", dir.path())?;
    let (private, _) = wg_genkey()?;
    let mut conf = format!("[Interface]\nPrivateKey = {private}\nListenPort = 51821\n");
    for (i, (public, subnet)) in keys.iter().enumerate() {
        conf += &format!(
            "\n[Peer]\nPublicKey = {public}\nAllowedIPs = 10.210.{subnet}.0/24\nEndpoint = 198.51.100.{}:51820\nPersistentKeepalive = 25\n",
            i % 250 + 1
        );
    }
    let conf_path = dir.path().join("wg.conf");
    std::fs::write(&conf_path, conf)?;
    run(ns.command("wg").args([
        "setconf",
        "wgref-rss",
        conf_path.to_str().context("utf-8 path")?,
    ]))?;
    ns.ip(&["link", "set", "wgref-rss", "up"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reference = crate::sys::rss_of(wg.pid());
    let mut wg = wg;
    wg.stop(Duration::from_secs(5));
    progress(format!(
        "memory with {n} peers: meshd {:.1} MiB, wireguard-go {:.1} MiB",
        ours as f64 / 1048576.0,
        reference as f64 / 1048576.0
    ));
    Ok((n, ours, reference))
}

fn results(m: &Measured) -> Results {
    let mut r = Results::new();
    r.insert(
        "tcp_throughput_mbit_s".into(),
        Metric::new(m.meshd.median_mbit_s(), m.wg_go.median_mbit_s(), "Mbit/s"),
    );
    r.insert(
        "tcp_throughput_vs_veth_mbit_s".into(),
        Metric::new(m.meshd.median_mbit_s(), m.veth.median_mbit_s(), "Mbit/s"),
    );
    r.insert(
        "wireguard_go_throughput_vs_veth_mbit_s".into(),
        Metric::new(m.wg_go.median_mbit_s(), m.veth.median_mbit_s(), "Mbit/s"),
    );
    r.insert(
        "latency_avg_ms".into(),
        Metric::precise(m.meshd.latency_avg_ms, m.wg_go.latency_avg_ms, "ms"),
    );
    r.insert(
        "latency_avg_vs_veth_ms".into(),
        Metric::precise(m.meshd.latency_avg_ms, m.veth.latency_avg_ms, "ms"),
    );
    r.insert(
        "cpu_s_per_gb".into(),
        Metric::precise(m.meshd.median_cpu(), m.wg_go.median_cpu(), "CPU s/GB"),
    );
    for &(n, ours, reference) in &m.rss {
        r.insert(
            format!("rss_mib_{n}_peers"),
            Metric::new(ours as f64 / 1048576.0, reference as f64 / 1048576.0, "MiB"),
        );
    }
    r
}

//! The container benchmark: how long from a request to a running container, and to that
//! container being visible (running) in the replicated state, for one container at a time
//! and for a batch started at once; side by side with the same containers started with the
//! `docker` CLI against the same engine in the same run. And the shim's resident memory
//! beside the engine's.
//!
//! Everything is real and private to the run: a dockerd in its own network namespace (with the
//! busybox-static test image, no registry), stated in this process on a private D-Bus, and the
//! release `dockerd-shim` binary as its own process in dockerd's namespace, exactly as it runs
//! on a machine (network, firewall rules, mirror, D-Bus API).

pub mod markdown;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use uncloud_common::dbus::DockerProxy;
use uncloud_common::model::{ContainerState, HealthCheck, NetworkState, Service, ServiceSpec};
use uncloud_testkit::cluster::Cluster;
use uncloud_testkit::{Daemon, Dockerd, PrivateBus};

use crate::progress;
use crate::report::{write_json, Metric, Results};
use crate::stats::percentile;

const IMAGE: &str = "uncloud-bench/busybox:1";

/// What to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    /// Single-container runs per tool; the median counts.
    pub singles: usize,
    /// Containers started at once in a batch.
    pub batch: usize,
    /// Batches per tool; the median counts.
    pub batches: usize,
    /// Health transitions timed.
    pub health_flips: usize,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            quick: false,
            singles: 15,
            batch: 20,
            batches: 3,
            health_flips: 10,
        }
    }

    pub fn quick() -> Plan {
        Plan {
            quick: true,
            singles: 2,
            batch: 5,
            batches: 1,
            health_flips: 2,
        }
    }
}

/// Raw figures, in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub shim_running: Vec<f64>,
    pub shim_visible: Vec<f64>,
    pub cli_running: Vec<f64>,
    pub batch_shim_running: Vec<f64>,
    pub batch_shim_visible: Vec<f64>,
    pub batch_cli_running: Vec<f64>,
    /// A health check flipping: until the state shows it, and until `docker events` does.
    pub health_state: Vec<f64>,
    pub health_events: Vec<f64>,
    pub shim_rss: u64,
    pub dockerd_rss: u64,
    pub engine_version: String,
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5).unwrap_or(f64::NAN)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The shim as a process, on a private bus served by stated node 0.
struct Shim {
    daemon: Daemon,
    api: DockerProxy<'static>,
    _bus: PrivateBus,
    _serve: Option<(zbus::Connection, tokio::task::JoinHandle<()>)>,
    _dir: tempfile::TempDir,
}

impl Shim {
    async fn run(&self, name: &str) -> Result<()> {
        self.run_with(name, None).await
    }

    async fn run_with(&self, name: &str, healthcheck: Option<HealthCheck>) -> Result<()> {
        let service = Service {
            id: "bench".into(),
            name: "bench".into(),
            spec: ServiceSpec {
                image: IMAGE.into(),
                command: vec!["sleep".into(), "600".into()],
                healthcheck,
                ..Default::default()
            },
            ..Default::default()
        };
        let json = serde_json::to_string(&service)?;
        self.api
            .run_service(&json, name)
            .await
            .with_context(|| format!("RunService {name}"))?;
        Ok(())
    }
}

async fn start_shim(cluster: &Cluster, engine: &Dockerd) -> Result<Shim> {
    let bin = crate::sys::workspace_binary("dockerd-shim")?;
    let bus = PrivateBus::start();
    let serve = stated::dbus::serve(
        stated::Membership::of_running(cluster.node(0).shared().clone()),
        &bus.address,
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("dockerd-shim.toml");
    std::fs::write(
        &config,
        format!(
            "bus = \"{}\"\ndocker_socket = \"{}\"\nmtu = 1412\n",
            bus.address,
            engine.socket.display()
        ),
    )?;
    // In dockerd's namespace, as on a machine: the bridge, its address and the rules are there.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", engine.ns.name()))
        .arg(&bin)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn");
    let mut daemon = Daemon::spawn("dockerd-shim", cmd, dir.path().join("shim.log"));
    let api = DockerProxy::new(&bus.connect().await).await?;
    let start = Instant::now();
    while api.list_images().await.is_err() {
        if !daemon.is_running() || start.elapsed() > Duration::from_secs(60) {
            bail!("dockerd-shim did not come up:\n{}", daemon.log_text());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Shim {
        daemon,
        api,
        _bus: bus,
        _serve: serve,
        _dir: dir,
    })
}

/// Waits until `done` holds for the state; returns when, measured from `t0`. Woken by every
/// change of the document.
async fn wait_state(
    cluster: &Cluster,
    what: &str,
    t0: Instant,
    done: impl Fn(&NetworkState) -> bool,
) -> Result<Duration> {
    let mut heads = cluster.node(0).shared().watch_heads();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if done(&cluster.node(0).state()) {
            return Ok(t0.elapsed());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("the state did not show {what} within 60 s");
        }
        let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), heads.changed()).await;
    }
}

/// Whether the state shows every one of `names` running.
fn all_running(s: &NetworkState, names: &[String]) -> bool {
    names.iter().all(|n| {
        s.containers
            .values()
            .any(|c| &c.name == n && c.state == ContainerState::Running)
    })
}

/// Whether the state shows none of `names`.
fn none_left(s: &NetworkState, names: &[String]) -> bool {
    !s.containers.values().any(|c| names.contains(&c.name))
}

/// Starts `names` through the shim at once; returns (all running, all visible in the state).
async fn shim_start(cluster: &Cluster, shim: &Shim, names: &[String]) -> Result<(f64, f64)> {
    let t0 = Instant::now();
    let requests = async {
        let calls = names.iter().map(|n| shim.run(n));
        for r in futures::future::join_all(calls).await {
            r?;
        }
        Ok::<_, anyhow::Error>(t0.elapsed())
    };
    let visible = wait_state(cluster, "the batch running", t0, |s| all_running(s, names));
    let (running, visible) = tokio::join!(requests, visible);
    Ok((ms(running?), ms(visible?)))
}

async fn shim_remove(cluster: &Cluster, shim: &Shim, names: &[String]) -> Result<()> {
    for n in names {
        shim.api.remove(n).await?;
    }
    wait_state(cluster, "the batch gone", Instant::now(), |s| {
        none_left(s, names)
    })
    .await?;
    Ok(())
}

/// Starts `names` with `docker run -d` processes at once; returns when all have returned.
fn cli_start(engine: &Dockerd, names: &[String]) -> Result<f64> {
    let t0 = Instant::now();
    let children: Vec<_> = names
        .iter()
        .map(|n| {
            Command::new("docker")
                .arg("-H")
                .arg(format!("unix://{}", engine.socket.display()))
                .args(["run", "-d", "--network", "uncloud", "--name", n, IMAGE])
                .args(["sleep", "600"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    for c in children {
        let out = c.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "docker run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(ms(t0.elapsed()))
}

fn cli_remove(engine: &Dockerd, names: &[String]) {
    let mut args = vec!["rm", "-f"];
    args.extend(names.iter().map(String::as_str));
    engine.docker_ok(&args);
}

/// `n` containers started at once through the shim, then removed; then `n` with the docker
/// CLI. Returns (shim: all running, shim: all in the state, CLI: all running) in ms.
async fn round(
    cluster: &Cluster,
    shim: &Shim,
    engine: &Dockerd,
    label: &str,
    n: usize,
) -> Result<(f64, f64, f64)> {
    let names =
        |tool: &str| -> Vec<String> { (0..n).map(|i| format!("{label}-{tool}-{i}")).collect() };
    let shim_names = names("shim");
    let (running, visible) = shim_start(cluster, shim, &shim_names).await?;
    shim_remove(cluster, shim, &shim_names).await?;
    let cli_names = names("cli");
    let cli = cli_start(engine, &cli_names)?;
    cli_remove(engine, &cli_names);
    Ok((running, visible, cli))
}

/// Flips a container's health check `flips` times (a file its check tests, created and
/// removed); returns, per flip, the time until the state shows the new verdict and until
/// `docker events` reports it, both from the flip.
async fn health_flips(
    cluster: &Cluster,
    shim: &Shim,
    engine: &Dockerd,
    flips: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let check = HealthCheck {
        test: vec!["CMD-SHELL".into(), "test -f /tmp/ok".into()],
        interval_ms: 500,
        timeout_ms: 2000,
        retries: 1,
        start_period_ms: 0,
    };
    let name = "health".to_string();
    // The engine's own report of each transition, read as it happens.
    let mut events = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", engine.socket.display()))
        .args(["events", "--filter", "event=health_status"])
        .args(["--filter", &format!("container={name}")])
        .args(["--format", "{{.Status}}"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = events.stdout.take().context("docker events stdout")?;
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let result = async {
        shim.run_with(&name, Some(check)).await?;
        let health = |healthy: bool| {
            let name = name.clone();
            move |s: &NetworkState| {
                s.containers
                    .values()
                    .any(|c| c.name == name && c.healthy == healthy)
            }
        };
        wait_state(
            cluster,
            "the container unhealthy",
            Instant::now(),
            health(false),
        )
        .await?;
        let (mut state, mut reported) = (Vec::new(), Vec::new());
        for i in 0..flips {
            let healthy = i % 2 == 0;
            while rx.try_recv().is_ok() {} // earlier reports
            let t0 = Instant::now();
            let op = if healthy { "touch" } else { "rm" };
            engine.docker_ok(&["exec", &name, op, "/tmp/ok"]);
            let want = if healthy {
                "health_status: healthy"
            } else {
                "health_status: unhealthy"
            };
            let from_events = async {
                while let Some((at, line)) = rx.recv().await {
                    if line.trim() == want {
                        return Ok(at.duration_since(t0));
                    }
                }
                bail!("docker events ended")
            };
            let in_state = wait_state(cluster, "the health verdict", t0, health(healthy));
            let (from_events, in_state) = tokio::join!(
                tokio::time::timeout(Duration::from_secs(30), from_events),
                in_state
            );
            let from_events = from_events.context("docker events said nothing for 30 s")??;
            state.push(ms(in_state?));
            reported.push(ms(from_events));
        }
        shim_remove(cluster, shim, std::slice::from_ref(&name)).await?;
        Ok((state, reported))
    }
    .await;
    let _ = events.kill();
    let _ = events.wait();
    result
}

/// Runs the benchmark and writes `dockerd-shim.json` and `.md` into `out`.
pub async fn run_bench(plan: &Plan, out: &Path, command: &str) -> Result<Results> {
    crate::sys::need("dockerd", "docker.io")?;
    crate::sys::need("busybox", "busybox-static")?;
    crate::sys::need("nsenter", "util-linux")?;
    let workspace = crate::workspace();
    let machine = crate::sys::Machine::describe(&workspace);

    progress("starting stated, dockerd and the shim");
    let cluster = Cluster::start(1).await;
    cluster
        .settled(Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    let engine = Dockerd::start();
    engine.import_busybox(IMAGE);
    let mut shim = start_shim(&cluster, &engine).await?;
    let mut m = Measured {
        engine_version: engine
            .docker_ok(&[
                "version",
                "--format",
                "{{.Server.Version}} (API {{.Server.APIVersion}})",
            ])
            .trim()
            .to_string(),
        ..Default::default()
    };

    progress(format!(
        "== one container at a time, {} runs each",
        plan.singles
    ));
    for i in 0..plan.singles {
        let (running, visible, cli) =
            round(&cluster, &shim, &engine, &format!("one{i}"), 1).await?;
        progress(format!(
            "run {}: shim running {running:.0} ms, in state {visible:.0} ms; docker CLI {cli:.0} ms",
            i + 1
        ));
        m.shim_running.push(running);
        m.shim_visible.push(visible);
        m.cli_running.push(cli);
    }

    progress(format!(
        "== {} containers at once, {} batches each",
        plan.batch, plan.batches
    ));
    for b in 0..plan.batches {
        let (running, visible, cli) =
            round(&cluster, &shim, &engine, &format!("b{b}"), plan.batch).await?;
        progress(format!(
            "batch {}: shim all running {running:.0} ms, all in state {visible:.0} ms; docker CLI {cli:.0} ms",
            b + 1
        ));
        m.batch_shim_running.push(running);
        m.batch_shim_visible.push(visible);
        m.batch_cli_running.push(cli);
    }
    // Memory with a batch running and mirrored.
    let names: Vec<String> = (0..plan.batch).map(|i| format!("mem-{i}")).collect();
    shim_start(&cluster, &shim, &names).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    m.shim_rss = crate::sys::rss_of(shim.daemon.pid());
    let pid = std::fs::read_to_string(engine.dir().join("dockerd.pid"))?;
    m.dockerd_rss = crate::sys::rss_of(pid.trim().parse()?);
    shim_remove(&cluster, &shim, &names).await?;

    progress(format!(
        "== a health check flipping {} times",
        plan.health_flips
    ));
    let (state, events) = health_flips(&cluster, &shim, &engine, plan.health_flips).await?;
    for (i, (s, e)) in state.iter().zip(&events).enumerate() {
        progress(format!(
            "flip {}: in the state {s:.0} ms, in docker events {e:.0} ms after the change",
            i + 1
        ));
    }
    m.health_state = state;
    m.health_events = events;
    if !shim.daemon.is_running() {
        bail!("dockerd-shim died:\n{}", shim.daemon.log_text());
    }
    shim.daemon.stop(Duration::from_secs(5));

    let n = plan.batch;
    let mut results = Results::new();
    let cli1 = median(&m.cli_running);
    let clin = median(&m.batch_cli_running);
    results.insert(
        "run_1_to_running_ms".into(),
        Metric::new(median(&m.shim_running), cli1, "ms"),
    );
    results.insert(
        "run_1_to_state_ms".into(),
        Metric::new(median(&m.shim_visible), cli1, "ms"),
    );
    results.insert(
        format!("run_{n}_to_running_ms"),
        Metric::new(median(&m.batch_shim_running), clin, "ms"),
    );
    results.insert(
        format!("run_{n}_to_state_ms"),
        Metric::new(median(&m.batch_shim_visible), clin, "ms"),
    );
    results.insert(
        "health_to_state_ms".into(),
        Metric::new(median(&m.health_state), median(&m.health_events), "ms"),
    );
    results.insert(
        "rss_mib".into(),
        Metric::new(
            m.shim_rss as f64 / 1048576.0,
            m.dockerd_rss as f64 / 1048576.0,
            "MiB",
        ),
    );
    std::fs::create_dir_all(out)?;
    write_json(&out.join("dockerd-shim.json"), &results)?;
    std::fs::write(
        out.join("dockerd-shim.md"),
        markdown::render(plan, &m, &results, command, &machine),
    )?;
    progress(format!("wrote {}", out.join("dockerd-shim.json").display()));
    Ok(results)
}

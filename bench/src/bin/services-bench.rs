//! `services-bench`: services across a network through `uc`, beside Docker's own tools doing
//! the same on one of the same engines, in the same command:
//!
//! - `uc deploy` of a Compose project of 5 services × 2 replicas, against
//!   `docker-compose up -d` of the same file;
//! - `uc run --replicas 20`, against 20 `docker run -d` one after another;
//! - `uc image push` of a 100 MB image from a laptop's Docker to 3 machines, against
//!   `docker save | docker load` into each of them at once;
//! - a rolling update of a 3-replica web service while a client requests it by name without
//!   pause: how long it takes and how many requests fail, against `docker-compose up -d` of
//!   the changed file (which recreates the containers) under the same client.
//!
//! Machines are network namespaces running the real daemons, each with its own dockerd
//! (`uncloud_testkit::network`); the references run against the first machine's dockerd.
//! Written to `bench/results/services.{json,md}`. Needs root and docker-compose.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use uncloud_bench::report::{fmt_num, line, write_json, Metric, Results};
use uncloud_bench::sys::{need, workspace_binary, Machine};
use uncloud_bench::{progress, uc};
use uncloud_testkit::network::{Binaries, Boot, LocalNetwork};
use uncloud_testkit::Dockerd;

#[derive(Parser)]
#[command(
    about = "Benchmark services across machines with uc against docker-compose and the docker CLI (needs root)"
)]
struct Args {
    /// One run of each with a 10 MB image, for a smoke test. Results go to a temp dir unless
    /// --out is given.
    #[arg(long)]
    quick: bool,
    /// Directory for services.json and .md. Default: bench/results (a temp dir with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
}

const IMAGE: &str = "busybox:uc";

/// Five services of two replicas each, as both `uc deploy` and docker-compose read it.
const PROJECT: &str = "\
services:
  s1: {image: busybox:uc, command: [sleep, '3600'], deploy: {replicas: 2}}
  s2: {image: busybox:uc, command: [sleep, '3600'], deploy: {replicas: 2}}
  s3: {image: busybox:uc, command: [sleep, '3600'], deploy: {replicas: 2}}
  s4: {image: busybox:uc, command: [sleep, '3600'], deploy: {replicas: 2}}
  s5: {image: busybox:uc, command: [sleep, '3600'], deploy: {replicas: 2}}
";

/// A web server answering its host name on 8080; `REV` changes its environment, so each
/// deploy of a new `REV` replaces every container.
const WEB: &str = "\
services:
  web:
    image: busybox:uc
    command: [sh, -c, 'mkdir -p /w && hostname > /w/index.html && exec httpd -f -p 8080 -h /w']
    environment:
      REV: ${REV}
    deploy: {replicas: 3}
";

/// The client: one HTTP request after another to `host`, with a 2 s timeout; a line per
/// request. HTTP by hand with `nc`: busybox-static's `wget` crashes resolving names in these
/// containers.
fn load(host: &str) -> String {
    format!(
        "while true; do r=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {host} 8080); \
         case \"$r\" in *' 200 '*) echo ok;; *) echo fail;; esac; done"
    )
}

struct Bench {
    net: LocalNetwork,
    dir: tempfile::TempDir,
}

impl Bench {
    fn engine(&self, i: usize) -> &Dockerd {
        self.net.machines[i].docker.as_ref().unwrap()
    }

    /// Containers in every machine's engine whose label `key` is `value`.
    fn containers_labelled(&self, key: &str, value: &str) -> usize {
        (0..self.net.machines.len())
            .map(|i| {
                self.engine(i)
                    .docker_ok(&["ps", "-q", "--filter", &format!("label={key}={value}")])
                    .lines()
                    .count()
            })
            .sum()
    }

    fn file(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// docker-compose against the first machine's engine.
    fn compose(&self, file: &Path, project: &str, args: &[&str], rev: Option<u32>) -> Result<()> {
        let mut cmd = Command::new("docker-compose");
        cmd.env("DOCKER_HOST", self.engine(0).host())
            .arg("-f")
            .arg(file)
            .args(["-p", project])
            .args(args);
        if let Some(rev) = rev {
            cmd.env("REV", rev.to_string());
        }
        checked(&mut cmd)
    }

    /// `uc` with `REV` set.
    fn uc_rev(&self, args: &[&str], rev: u32) -> Result<()> {
        checked(self.net.uc_command(args).env("REV", rev.to_string()))
    }
}

fn checked(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) -> Result<()> {
    let t = Instant::now();
    while !done() {
        if t.elapsed() > Duration::from_secs(secs) {
            bail!("not within {secs} s: {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// (requests that succeeded, requests that failed) in a client's output.
fn outcomes(output: &str) -> (usize, usize) {
    let ok = output
        .lines()
        .filter(|l| l.trim_end().ends_with("ok"))
        .count();
    let failed = output
        .lines()
        .filter(|l| l.trim_end().ends_with("fail"))
        .count();
    (ok, failed)
}

fn percent_failed((ok, failed): (usize, usize)) -> f64 {
    100.0 * failed as f64 / (ok + failed).max(1) as f64
}

/// The network: three machines with their own dockerd, formed with `uc`, the test image in
/// every engine.
fn network() -> Result<LocalNetwork> {
    let mut dir = None;
    for p in [
        "stated",
        "meshd",
        "dnsd",
        "apid",
        "dockerd-shim",
        "uncloud-firstboot",
        "uc",
    ] {
        dir = Some(workspace_binary(p)?.parent().unwrap().to_owned());
    }
    let mut net = LocalNetwork::new(Binaries { dir: dir.unwrap() });
    progress("booting alpha, beta and gamma, each with its own dockerd, and forming the network");
    let docker = Boot {
        docker: true,
        ..Boot::default()
    };
    for name in ["alpha", "beta", "gamma"] {
        net.boot_with(name, docker);
    }
    uc(&net, &net.machines[0].enrol("init"))?;
    uc(&net, &net.machines[1].enrol("add"))?;
    uc(&net, &net.machines[2].enrol("add"))?;
    for m in &net.machines {
        m.docker.as_ref().unwrap().import_busybox(IMAGE);
    }
    let ids: Vec<String> = net.machines.iter().map(|m| m.machine_id()).collect();
    wait_for("alpha sees every machine alive", 60, || {
        ids.iter().all(|id| net.machines[0].sees_alive(id))
    })?;
    Ok(net)
}

/// Every run's figure under `uc`, and the reference's.
type Samples = (Vec<f64>, Vec<f64>);

struct Figures {
    deploy: Samples,
    run: Samples,
    push: Samples,
    update: Samples,
    failed: Samples,
    requests: (Vec<usize>, Vec<usize>),
    push_mb: usize,
}

fn deploy(b: &Bench, runs: usize, f: &mut Figures) -> Result<()> {
    let file = b.file("project.yaml", PROJECT)?;
    let file_s = file.to_str().unwrap();
    for run in 0..runs {
        let project = format!("d{run}");
        let s = timed(|| uc(&b.net, &["deploy", "-y", "-f", file_s, "-p", &project]).map(|_| ()))?;
        let running: usize = (1..=5)
            .map(|i| b.containers_labelled("org.uncloud.service.id", &format!("s{i}.{project}")))
            .sum();
        if running != 10 {
            bail!("uc deploy left {running} containers running, not 10");
        }
        let names: Vec<String> = (1..=5).map(|i| format!("s{i}.{project}")).collect();
        let mut rm = vec!["rm".to_string()];
        rm.extend(names);
        uc(&b.net, &rm)?;
        wait_for("the project's containers are gone", 60, || {
            (1..=5).all(|i| {
                b.containers_labelled("org.uncloud.service.id", &format!("s{i}.{project}")) == 0
            })
        })?;

        let reference = format!("ref{run}");
        let r = timed(|| b.compose(&file, &reference, &["up", "-d"], None))?;
        let up = b.containers_labelled("com.docker.compose.project", &reference);
        if up != 10 {
            bail!("docker-compose up -d left {up} containers running, not 10");
        }
        b.compose(&file, &reference, &["down", "-t", "0"], None)?;
        progress(format!(
            "deploy {}/{runs}: uc deploy {s:.2} s, docker-compose up -d {r:.2} s",
            run + 1
        ));
        f.deploy.0.push(s);
        f.deploy.1.push(r);
    }
    Ok(())
}

fn run_replicas(b: &Bench, runs: usize, f: &mut Figures) -> Result<()> {
    for run in 0..runs {
        let name = format!("r{run}");
        let s = timed(|| {
            uc(
                &b.net,
                &[
                    "run",
                    "--name",
                    &name,
                    "--replicas",
                    "20",
                    IMAGE,
                    "sleep",
                    "3600",
                ],
            )
            .map(|_| ())
        })?;
        let running = b.containers_labelled("org.uncloud.service.id", &name);
        if running != 20 {
            bail!("uc run --replicas 20 left {running} containers running");
        }
        uc(&b.net, &["rm", &name])?;
        wait_for("the service's containers are gone", 60, || {
            b.containers_labelled("org.uncloud.service.id", &name) == 0
        })?;

        let engine = b.engine(0);
        let r = timed(|| {
            for i in 0..20 {
                let out = engine.docker(&[
                    "run",
                    "-d",
                    "--label",
                    &format!("bench={name}"),
                    "--name",
                    &format!("ref{run}-{i}"),
                    IMAGE,
                    "sleep",
                    "3600",
                ]);
                if !out.status.success() {
                    bail!("docker run: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
            Ok(())
        })?;
        let ids = engine.docker_ok(&["ps", "-aq", "--filter", &format!("label=bench={name}")]);
        let ids: Vec<&str> = ids.lines().collect();
        if ids.len() != 20 {
            bail!("20 docker runs left {} containers", ids.len());
        }
        let mut rm = vec!["rm", "-f"];
        rm.extend(ids);
        engine.docker_ok(&rm);
        progress(format!(
            "run {}/{runs}: uc run --replicas 20 {s:.2} s, 20 × docker run -d {r:.2} s",
            run + 1
        ));
        f.run.0.push(s);
        f.run.1.push(r);
    }
    Ok(())
}

fn push(b: &Bench, runs: usize, f: &mut Figures) -> Result<()> {
    let laptop = Dockerd::start();
    laptop.import_busybox_padded("big:1", &["CMD [\"sleep\", \"3600\"]"], f.push_mb << 20);
    let id = laptop.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "big:1"]);
    let machines = 0..b.net.machines.len();
    let forget = || {
        for i in machines.clone() {
            let _ = b.engine(i).docker(&["rmi", "-f", "big:1"]);
        }
    };
    let everywhere = || {
        machines.clone().all(|i| {
            b.engine(i)
                .docker(&["image", "inspect", "-f", "{{.Id}}", "big:1"])
                .stdout
                .starts_with(id.as_bytes())
        })
    };
    for run in 0..runs {
        forget();
        let s = timed(|| {
            checked(
                b.net
                    .uc_command(&["image", "push", "big:1", "-m", "alpha,beta,gamma"])
                    .env("DOCKER_HOST", laptop.host()),
            )
        })?;
        if !everywhere() {
            bail!("uc image push did not load big:1 on every machine");
        }
        forget();
        // One `docker save | docker load` into one engine.
        let script = format!(
            "docker -H {} save big:1 | docker -H {} load -q >/dev/null",
            laptop.host(),
            b.engine(0).host()
        );
        let r = timed(|| checked(Command::new("bash").args(["-o", "pipefail", "-c", &script])))?;
        let loaded = b
            .engine(0)
            .docker(&["image", "inspect", "-f", "{{.Id}}", "big:1"])
            .stdout
            .starts_with(id.as_bytes());
        if !loaded {
            bail!("docker save | docker load did not load big:1");
        }
        progress(format!(
            "push {}/{runs}: uc image push {s:.2} s, docker save | docker load {r:.2} s",
            run + 1
        ));
        f.push.0.push(s);
        f.push.1.push(r);
    }
    forget();
    Ok(())
}

fn rolling_update(b: &Bench, runs: usize, f: &mut Figures) -> Result<()> {
    let file = b.file("web.yaml", WEB)?;
    let file_s = file.to_str().unwrap();
    let settle = Duration::from_secs(2);
    let deploy = |rev: u32| b.uc_rev(&["deploy", "-y", "-f", file_s, "-p", "roll"], rev);
    deploy(0)?;
    for run in 1..=runs as u32 {
        let load = format!("load{run}");
        uc(
            &b.net,
            &[
                "run",
                "-m",
                "alpha",
                "--name",
                &load,
                IMAGE,
                "sh",
                "-c",
                &self::load("lb.web"),
            ],
        )?;
        std::thread::sleep(settle);
        let s = timed(|| deploy(run))?;
        std::thread::sleep(settle);
        let logs = uc(&b.net, &["logs", "-n", "all", &load])?;
        uc(&b.net, &["rm", &load])?;
        let ours = outcomes(&logs);
        if ours.0 == 0 {
            bail!("the client's requests never succeeded under uc: {logs}");
        }
        f.update.0.push(s);
        f.failed.0.push(percent_failed(ours));
        f.requests.0.push(ours.0 + ours.1);
        progress(format!(
            "rolling update {run}/{runs}: uc deploy {s:.2} s, {} of {} requests failed",
            ours.1,
            ours.0 + ours.1
        ));
    }
    uc(&b.net, &["rm", "web.roll"])?;

    // docker-compose, with the same file, on the first machine's engine; the client on the
    // project's network resolves `web` through Docker's DNS.
    b.compose(&file, "roll", &["up", "-d"], Some(0))?;
    let engine = b.engine(0);
    for run in 1..=runs as u32 {
        let load = format!("refload{run}");
        engine.docker_ok(&[
            "run",
            "-d",
            "--name",
            &load,
            "--network",
            "roll_default",
            IMAGE,
            "sh",
            "-c",
            &self::load("web"),
        ]);
        std::thread::sleep(settle);
        let r = timed(|| b.compose(&file, "roll", &["up", "-d"], Some(run)))?;
        std::thread::sleep(settle);
        let out = engine.docker(&["logs", &load]);
        engine.docker_ok(&["rm", "-f", &load]);
        let theirs = outcomes(&String::from_utf8_lossy(&out.stdout));
        if theirs.0 == 0 {
            bail!("the client's requests never succeeded under docker-compose");
        }
        f.update.1.push(r);
        f.failed.1.push(percent_failed(theirs));
        f.requests.1.push(theirs.0 + theirs.1);
        progress(format!(
            "rolling update {run}/{runs}: docker-compose up -d {r:.2} s, {} of {} requests failed",
            theirs.1,
            theirs.0 + theirs.1
        ));
    }
    b.compose(&file, "roll", &["down", "-t", "0"], None)?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    need("docker-compose", "docker-compose")?;
    let runs = if args.quick { 1 } else { 5 };
    let out = uncloud_bench::out_dir(args.out.clone(), args.quick);
    std::fs::create_dir_all(&out)?;
    let b = Bench {
        net: network()?,
        dir: tempfile::tempdir()?,
    };
    let mut f = Figures {
        deploy: Default::default(),
        run: Default::default(),
        push: Default::default(),
        update: Default::default(),
        failed: Default::default(),
        requests: Default::default(),
        push_mb: if args.quick { 10 } else { 100 },
    };
    progress("uc deploy of 5 services × 2 replicas against docker-compose up -d");
    deploy(&b, runs, &mut f)?;
    progress("uc run --replicas 20 against 20 × docker run -d");
    run_replicas(&b, runs, &mut f)?;
    progress(format!(
        "uc image push of {} MB to 3 machines against docker save | docker load",
        f.push_mb
    ));
    push(&b, runs, &mut f)?;
    progress("rolling update of 3 replicas under a client against docker-compose up -d");
    rolling_update(&b, runs, &mut f)?;
    report(&out, runs, &f)
}

fn report(out: &Path, runs: usize, f: &Figures) -> Result<()> {
    let push_name = format!("image_push_{}mb_3_machines", f.push_mb);
    let rows: Vec<(&str, &Samples, &str, &str)> = vec![
        (
            "deploy_5_services_10_containers",
            &f.deploy,
            "s",
            "`docker-compose up -d` of the same file, one engine",
        ),
        (
            "run_20_replicas",
            &f.run,
            "s",
            "20 × `docker run -d`, one after another, one engine",
        ),
        (
            &push_name,
            &f.push,
            "s",
            "`docker save \\| docker load` into one engine, over local sockets",
        ),
        (
            "rolling_update_3_replicas",
            &f.update,
            "s",
            "`docker-compose up -d` recreating 3 replicas",
        ),
        (
            "rolling_update_failed_requests",
            &f.failed,
            "%",
            "the same client under `docker-compose up -d`",
        ),
    ];
    let mut results = Results::new();
    for (name, (ours, theirs), unit, _) in &rows {
        let metric = if *unit == "%" {
            Metric::spread_precise(ours, theirs, unit)
        } else {
            Metric::spread(ours, theirs, unit)
        };
        results.insert(name.to_string(), metric);
    }
    write_json(&out.join("services.json"), &results)?;

    let workspace = uncloud_bench::workspace();
    let mut md = String::new();
    line(
        &mut md,
        "# Services: deploy, run, image push, rolling update\n",
    );
    line(
        &mut md,
        format!(
            "Command: `{}` (as root).\n",
            uncloud_bench::command_line("services-bench")
        ),
    );
    line(&mut md, "## How\n");
    line(
        &mut md,
        format!(
            "Three machines (alpha, beta, gamma), each a network namespace on a private bridge \
             running the real `uncloud-firstboot`, `stated`, `meshd`, `dnsd`, `apid`, \
             `dockerd-shim` and its own `dockerd` (Debian's docker.io), formed with `uc`; `uc` \
             runs on a laptop namespace over TLS. Every reference runs against alpha's dockerd \
             with Debian's docker CLI and docker-compose 1.29, one after the other with `uc`, \
             {runs} runs of each; a figure is the median, with min and max. All of it shares \
             the machine's CPUs (Docker's engines, the daemons, the clients).\n\n\
             - **deploy**: `uc deploy -y` of 5 services × 2 replicas of `sleep` until it returns \
             (the plan, placement, the state, every container started on its machine), against \
             `docker-compose up -d` of the same file (it honours `deploy.replicas`). Each run is \
             a new project; removal is not timed.\n\
             - **run**: `uc run --replicas 20` (spread over the 3 machines) against 20 `docker run \
             -d` one after another on one engine.\n\
             - **image push**: a {} MB image (busybox and random bytes) from the laptop's own \
             dockerd to the 3 machines with `uc image push` (one `docker save`, streamed through \
             TLS to alpha's apid and over the mesh into each shim's chunked load), against \
             `docker save | docker load` into one machine's engine over local Unix sockets (no \
             network, no encryption: a floor). The image is removed from the machines before \
             each run.\n\
             - **rolling update**: `web`, 3 replicas of busybox `httpd`; a client container \
             makes one HTTP/1.0 request after another (busybox `nc`, 2 s timeout) from 2 s \
             before a deploy that changes the environment until 2 s after it. Under `uc`: the \
             client is a service on alpha requesting `http://lb.web:8080/`, the service's \
             virtual address (balanced by alpha's dnsd rules), and `uc deploy` rolls start-first, \
             one container at a time, each new one running through the monitor period, each old \
             one drained (out of the balancing for the shim's drain period) before it is \
             removed. Under docker-compose: the client runs on the project's network requesting \
             `http://web:8080/` (Docker's DNS, round robin), and `up -d` recreates the \
             containers (stop, then start). Reported: the deploy command's time and the share of \
             requests that failed.\n",
            f.push_mb
        ),
    );
    line(&mut md, "## Results\n");
    line(
        &mut md,
        "| metric | value | min | max | reference | ref. min | ref. max | ratio | reference is |",
    );
    line(&mut md, "|---|---|---|---|---|---|---|---|---|");
    for (name, _, unit, what) in &rows {
        let r = &results[*name];
        let n = |v: Option<f64>| v.map_or("-".to_string(), fmt_num);
        line(
            &mut md,
            format!(
                "| {name} | {} {unit} | {} | {} | {} {unit} | {} | {} | {} | {what} |",
                fmt_num(r.value),
                n(r.min),
                n(r.max),
                fmt_num(r.reference),
                n(r.reference_min),
                n(r.reference_max),
                fmt_num(r.ratio),
            ),
        );
    }
    let total = |v: &[usize]| v.iter().sum::<usize>();
    line(
        &mut md,
        format!(
            "\nRequests made during the rolling updates: {} under uc, {} under docker-compose \
             (all runs).\n",
            total(&f.requests.0),
            total(&f.requests.1)
        ),
    );
    line(&mut md, "## Targets (the issue's)\n");
    let deploy_ratio = results["deploy_5_services_10_containers"].ratio;
    let failed = results["rolling_update_failed_requests"]
        .max
        .unwrap_or(f64::NAN);
    for (what, met) in [
        (
            format!("`uc deploy` within 1.5 × docker-compose's time: {deploy_ratio}"),
            deploy_ratio <= 1.5,
        ),
        (
            format!("no failed request during a rolling update, in any run: at most {failed} %"),
            failed == 0.0,
        ),
    ] {
        line(
            &mut md,
            format!("- {what}: {}", if met { "PASS" } else { "FAIL" }),
        );
    }
    line(&mut md, "");
    line(&mut md, "## Reading it\n");
    line(
        &mut md,
        "- Under `uc` two thirds of the client's requests cross the mesh to other machines \
         (userspace WireGuard in meshd), so it makes fewer requests per second than under \
         docker-compose, where all of them stay on one bridge; its window is longer (the \
         update takes longer), so it makes about as many in all.\n\
         - A request fails under `uc` when it reaches an old container after its removal, that \
         is when alpha's dnsd still balanced to it then: the drain period (the record says \
         `draining` for 2 s before the removal) is there to make that never happen. Under \
         docker-compose requests fail while Docker's DNS still answers with containers that \
         are stopping or gone.\n\
         - `uc image push` sends the image's tarball once, through TLS and the mesh, a chunk \
         at a time to every machine at once (apid queues up to 4 chunks per machine, so the \
         slowest machine sets the pace; 8.6 s before the queues, 7.2 s with them); the \
         reference loads it into one engine over local sockets, and three engines loading at \
         once share the same 2 CPUs with the daemons.\n",
    );
    line(&mut md, "## Runs\n");
    for (name, (ours, theirs), unit, _) in &rows {
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        line(
            &mut md,
            format!(
                "- {name} ({unit}): uc {}; reference {}",
                list(ours),
                list(theirs)
            ),
        );
    }
    line(&mut md, "\n## Machine\n");
    line(&mut md, Machine::describe(&workspace).markdown_list());
    std::fs::write(out.join("services.md"), md)?;
    progress(format!("written to {}", out.display()));
    uncloud_bench::report::print(&results);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_lines_are_counted_whatever_their_prefix() {
        let out = "load-1 | ok\nload-1 | fail\nok\nfail\nfail\n";
        assert_eq!(outcomes(out), (2, 3));
        assert_eq!(percent_failed((2, 3)), 60.0);
        assert_eq!(percent_failed((0, 0)), 0.0);
    }
}

//! `uc run`, `uc ls`, `uc ps`, `uc inspect`, `uc scale`, `uc rm`, `uc stop|start|restart`:
//! services across the network's machines.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context as _};
use uncloud_api::service::{
    ContainerAction, HealthCheck, RunReply, RunRequest, ScaleRequest, ServiceRef, ServiceRow,
    ServiceSpec, MODE_GLOBAL, MODE_REPLICATED,
};
use uncloud_api::wire::{Answer, Call};

use uncloud_compose::units::{parse_bytes, parse_cpus, parse_duration_ms};

use crate::context::Store;
use crate::output::{self, Format, Spinner};
use crate::remote::{self, answer};
use crate::targets::{self, unexpected};
use crate::Global;

/// The API version that knows services.
pub const SERVICES_API: u32 = 5;
/// How long `uc run` waits: longer than apid may take (a pull of a big image, up to 15 min,
/// then the container's start), so the answer is never lost to the client giving up first.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(1300);

/// `uc run IMAGE [COMMAND…]`.
#[derive(Debug, clap::Args)]
pub struct Run {
    /// The image (`busybox`, `nginx:1.25`, `registry.example.com/team/app:3`).
    pub image: String,
    /// Replaces the image's command.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// The service's name, a DNS label (default: from the image, `nginx:1.25` -> `nginx`).
    #[arg(long)]
    pub name: Option<String>,
    /// The project it belongs to: names it `<name>.<project>` and scopes its DNS name.
    #[arg(long)]
    pub project: Option<String>,
    /// Containers to run, spread over the machines (fewest of this service first, then the
    /// least loaded).
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// `global`: one container on every machine (of `-m`, if given).
    #[arg(long, value_parser = [MODE_REPLICATED, MODE_GLOBAL], default_value = MODE_REPLICATED)]
    pub mode: String,
    /// Only machines that match: `node.labels.KEY==VALUE`, `node.labels.KEY!=VALUE`,
    /// `node.hostname!=NAME`, `node.platform.arch==x86_64` (or `aarch64`; `uc machine ls`
    /// shows each machine's; labels: `uc machine label`). Repeatable; all must hold.
    #[arg(long = "constraint", value_name = "node.labels.KEY==VALUE", value_parser = parse_constraint)]
    pub constraints: Vec<String>,
    /// Environment variable `KEY=VALUE`, or `KEY` to pass this shell's value. Repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// A published port. Through ingress machines: `[hostname:]port[/http|https]` or
    /// `hostname/path:port/https`. On the container's own machine: `[ip:]host:container[/tcp|udp]`.
    /// Repeatable.
    #[arg(short = 'p', long = "publish", value_name = "PORT")]
    pub publish: Vec<String>,
    /// A named volume or a bind mount: `name:/path[:ro]`, `/host/path:/path[:ro]`. Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "SOURCE:TARGET[:ro]")]
    pub volumes: Vec<String>,
    /// CPU limit in cores (`0.5`, `2`).
    #[arg(long, value_parser = parse_cpus)]
    pub cpu: Option<u64>,
    /// Memory limit (`512M`, `1G`, bytes without a unit).
    #[arg(long, value_parser = parse_bytes)]
    pub memory: Option<u64>,
    /// Restart policy: `no`, `always`, `on-failure` or `unless-stopped` (the default).
    #[arg(long, value_parser = ["no", "always", "on-failure", "unless-stopped"])]
    pub restart: Option<String>,
    /// A shell command whose success means healthy.
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Time between health checks (`10s`, `1m`).
    #[arg(long, value_parser = parse_duration_ms, requires = "health_cmd")]
    pub health_interval: Option<u64>,
    /// Longest one check may take.
    #[arg(long, value_parser = parse_duration_ms, requires = "health_cmd")]
    pub health_timeout: Option<u64>,
    /// Failed checks in a row that make the container unhealthy.
    #[arg(long, requires = "health_cmd")]
    pub health_retries: Option<u32>,
    /// Time after start when failures do not count yet.
    #[arg(long, value_parser = parse_duration_ms, requires = "health_cmd")]
    pub health_start_period: Option<u64>,
    /// A container label `KEY=VALUE`. Repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// The user to run as (`uid[:gid]` or a name in the image).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Replaces the image's entrypoint (one program; arguments go after the image).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// When to pull the image on each machine.
    #[arg(long, value_parser = ["missing", "always", "never"], default_value = "missing")]
    pub pull: String,
    /// Add a Linux capability (`NET_ADMIN`). Repeatable.
    #[arg(long = "cap-add", value_name = "CAPABILITY")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability (`ALL` drops every one). Repeatable.
    #[arg(long = "cap-drop", value_name = "CAPABILITY")]
    pub cap_drop: Vec<String>,
    /// A namespaced kernel parameter `NAME=VALUE` (`net.core.somaxconn=1024`). Repeatable.
    #[arg(long = "sysctl", value_name = "NAME=VALUE")]
    pub sysctls: Vec<String>,
    /// The signal that stops the containers (default: the image's, else SIGTERM).
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// How long a stop waits for the containers before killing them (`30s`; default 10 s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_ms)]
    pub stop_timeout: Option<u64>,
}

/// Which service: `web`, or `web.shop` for `web` of project `shop`.
#[derive(Debug, clap::Args)]
pub struct Rm {
    #[arg(required = true)]
    pub services: Vec<String>,
}

/// `uc stop|start|restart SERVICE[/CONTAINER]…`.
#[derive(Debug, clap::Args)]
pub struct Act {
    /// Services (`web`, `web.shop`), or one container of one as `SERVICE/CONTAINER` (its
    /// name as `uc ps` shows it, or a prefix of it).
    #[arg(required = true, value_name = "SERVICE[/CONTAINER]")]
    pub services: Vec<String>,
    /// Seconds a stopping container gets to exit before it is killed (default 10).
    #[arg(short = 't', long = "time", value_name = "SECONDS")]
    pub time: Option<u32>,
}

/// `uc inspect SERVICE`.
#[derive(Debug, clap::Args)]
pub struct Inspect {
    /// The service: `web`, or `web.shop` for `web` of project `shop`.
    pub service: String,
}

/// `uc scale SERVICE REPLICAS`.
#[derive(Debug, clap::Args)]
pub struct Scale {
    /// The service: `web`, or `web.shop` for `web` of project `shop`.
    pub service: String,
    /// How many containers it should have (0 keeps the service with none).
    pub replicas: u32,
}

pub async fn scale(cmd: Scale, g: &Global) -> anyhow::Result<()> {
    let store = Store::default_location();
    let ctx = store.load(g.context.as_deref())?;
    let (member, via) = remote::member(&ctx, g).await?;
    remote::require_api(&member, &via, SERVICES_API).await?;
    let spinner = Spinner::start(format!("scaling {} to {}", cmd.service, cmd.replicas));
    let reply = answer(
        member
            .scale(
                uncloud_api::context(RUN_TIMEOUT),
                ScaleRequest {
                    service: cmd.service,
                    replicas: cmd.replicas,
                },
            )
            .await,
    );
    match reply {
        Ok(r) => {
            spinner.done(&format!("{} containers", r.service.containers.len()));
            report(&r, g)
        }
        Err(e) => {
            spinner.done("failed");
            Err(e.into())
        }
    }
}

/// Prints what `run` or `scale` left, and fails naming each machine where it fell short.
fn report(reply: &RunReply, g: &Global) -> anyhow::Result<()> {
    if g.output == Format::Json {
        print!("{}", output::json(reply));
    } else {
        print!("{}", containers_table(std::slice::from_ref(&reply.service)));
    }
    for f in &reply.failed {
        eprintln!("error: {}: {}", f.machine, f.error);
    }
    if !reply.failed.is_empty() {
        bail!(
            "{} of the changes to {} did not happen",
            reply.failed.len(),
            reply.service.display_name()
        );
    }
    Ok(())
}

pub async fn run(cmd: Run, g: &Global) -> anyhow::Result<()> {
    let request = request(cmd, &g.targets)?;
    let store = Store::default_location();
    let ctx = store.load(g.context.as_deref())?;
    let (member, via) = remote::member(&ctx, g).await?;
    remote::require_api(&member, &via, SERVICES_API).await?;
    let what = if request.name.is_empty() {
        request.spec.image.clone()
    } else {
        request.name.clone()
    };
    let spinner = Spinner::start(format!("starting {what}"));
    let reply = answer(member.run(uncloud_api::context(RUN_TIMEOUT), request).await);
    let reply = match reply {
        Ok(r) => {
            spinner.done(&format!("{} started", r.service.containers.len()));
            r
        }
        Err(e) => {
            spinner.done("failed");
            return Err(e.into());
        }
    };
    if !reply.failed.is_empty() && g.output != Format::Json {
        eprintln!(
            "note: the service stays with the containers that started; `uc rm {}` removes it",
            reply.service.display_name()
        );
    }
    report(&reply, g)
}

/// `uc stop`, `uc start`, `uc restart` (`action`): each service's containers on their
/// machines; the spec stays.
pub async fn act(cmd: Act, action: &str, g: &Global) -> anyhow::Result<()> {
    let store = Store::default_location();
    let ctx = store.load(g.context.as_deref())?;
    let (member, via) = remote::member(&ctx, g).await?;
    remote::require_api(&member, &via, crate::update::UPDATE_API).await?;
    let mut failed = 0;
    for target in cmd.services {
        let (service, container) = target.split_once('/').unwrap_or((&target, ""));
        let spinner = Spinner::start(format!("{action} {target}"));
        let request = ContainerAction {
            service: service.to_string(),
            container: container.to_string(),
            action: action.to_string(),
            grace_secs: cmd.time,
        };
        match answer(
            member
                .container_action(uncloud_api::context(RUN_TIMEOUT), request)
                .await,
        ) {
            Ok(r) => {
                spinner.done(&format!(
                    "{} of {} containers",
                    r.done.len(),
                    r.done.len() + r.failed.len()
                ));
                for f in &r.failed {
                    eprintln!("error: {}: {}", f.machine, f.error);
                }
                failed += usize::from(!r.failed.is_empty());
            }
            Err(e) => {
                spinner.done("failed");
                eprintln!("error: {target}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of the services were not fully done");
    }
    Ok(())
}

/// Removes one service (`uc rm`, and `uc deploy` for a service gone from the file), with a
/// spinner that says how many containers went.
pub async fn remove_one(member: &uncloud_api::ApiClient, service: &str) -> anyhow::Result<()> {
    let spinner = Spinner::start(format!("removing {service}"));
    let reply = member
        .remove_service(
            uncloud_api::context(Duration::from_secs(120)),
            ServiceRef {
                service: service.to_string(),
            },
        )
        .await;
    match answer(reply) {
        Ok(r) => {
            spinner.done(&format!("done, {} containers removed", r.removed.len()));
            Ok(())
        }
        Err(e) => {
            spinner.done("failed");
            Err(e.into())
        }
    }
}

/// The request `uc run`'s flags say.
/// A constraint in its canonical text, or why not.
fn parse_constraint(text: &str) -> Result<String, String> {
    uncloud_api::service::Constraint::parse(text).map(|c| c.to_string())
}

fn request(cmd: Run, machines: &[String]) -> anyhow::Result<RunRequest> {
    let mut env = BTreeMap::new();
    for e in &cmd.env {
        match e.split_once('=') {
            Some((k, v)) => env.insert(k.to_string(), v.to_string()),
            None => env.insert(
                e.clone(),
                std::env::var(e).with_context(|| format!("-e {e}: not set in this shell"))?,
            ),
        };
    }
    let labels = pairs("--label", &cmd.labels)?;
    let sysctls = pairs("--sysctl", &cmd.sysctls)?;
    // Host ports end in `@host` or name two port numbers (`8080:80`, Docker's form);
    // everything else goes through ingress.
    let mut publish = Vec::new();
    let mut ports = Vec::new();
    for p in cmd.publish {
        match uncloud_api::service::host_mode(&p) {
            Some(docker) => publish.push(docker.map_err(|e| anyhow::anyhow!("-p {e}"))?),
            None if is_host_port(&p) => publish.push(p),
            None => ports.push(p),
        }
    }
    let healthcheck = cmd.health_cmd.map(|c| HealthCheck {
        test: vec!["CMD-SHELL".into(), c],
        interval_ms: cmd.health_interval.unwrap_or(0),
        timeout_ms: cmd.health_timeout.unwrap_or(0),
        retries: cmd.health_retries.unwrap_or(0),
        start_period_ms: cmd.health_start_period.unwrap_or(0),
    });
    let global = cmd.mode == MODE_GLOBAL;
    Ok(RunRequest {
        name: cmd.name.unwrap_or_default(),
        project: cmd.project.unwrap_or_default(),
        pull: cmd.pull,
        spec: ServiceSpec {
            image: cmd.image,
            command: cmd.command,
            entrypoint: cmd.entrypoint.into_iter().collect(),
            env,
            ports,
            publish,
            volumes: cmd.volumes,
            cpu_millis: cmd.cpu.unwrap_or(0),
            memory_bytes: cmd.memory.unwrap_or(0),
            restart: cmd.restart.unwrap_or_default(),
            healthcheck,
            labels,
            replicas: if global { 0 } else { cmd.replicas },
            mode: if global {
                MODE_GLOBAL.into()
            } else {
                String::new()
            },
            // `-m all` is every machine: no restriction.
            machines: if machines.iter().any(|m| m == "all") {
                Vec::new()
            } else {
                machines.to_vec()
            },
            constraints: cmd.constraints,
            user: cmd.user.unwrap_or_default(),
            cap_add: cmd.cap_add,
            cap_drop: cmd.cap_drop,
            sysctls,
            stop_signal: cmd.stop_signal.unwrap_or_default(),
            stop_grace_ms: cmd.stop_timeout.unwrap_or(0),
            // Secrets and configs come from a Compose file (`uc deploy`).
            files: Vec::new(),
        },
    })
}

/// Repeated `flag KEY=VALUE` values as a map.
fn pairs(flag: &str, items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|i| {
            let (k, v) = i
                .split_once('=')
                .with_context(|| format!("{flag} {i:?}: expected KEY=VALUE"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// `[ip:]host:container[/tcp|udp]`: the last two `:` parts are port numbers.
fn is_host_port(p: &str) -> bool {
    let ports = p.rsplit_once('/').map_or(p, |(ports, _)| ports);
    let parts: Vec<&str> = ports.rsplit(':').take(2).collect();
    parts.len() == 2 && parts.iter().all(|x| x.parse::<u16>().is_ok())
}

pub async fn rm(cmd: Rm, g: &Global) -> anyhow::Result<()> {
    let store = Store::default_location();
    let ctx = store.load(g.context.as_deref())?;
    let (member, via) = remote::member(&ctx, g).await?;
    remote::require_api(&member, &via, SERVICES_API).await?;
    let mut failed = 0;
    for service in cmd.services {
        if let Err(e) = remove_one(&member, &service).await {
            eprintln!("error: {service}: {e:#}");
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} service(s) not removed");
    }
    Ok(())
}

/// `uc ls` (`containers` false) and `uc ps`.
pub async fn list(g: &Global, containers: bool) -> anyhow::Result<()> {
    let replies = targets::ask(g, Call::Services, SERVICES_API).await?;
    if g.output == Format::Json {
        print!("{}", output::json(&replies));
        return targets::each(&replies, |_, _, _| Ok(()));
    }
    targets::each(&replies, |machine, answer, several| {
        let Answer::Services(rows) = answer else {
            return Err(unexpected(machine));
        };
        if several {
            println!("as {machine} sees it:");
        }
        if containers {
            print!("{}", containers_table(rows));
        } else {
            print!("{}", services_table(rows));
        }
        Ok(())
    })
}

pub async fn inspect(cmd: Inspect, g: &Global) -> anyhow::Result<()> {
    let replies = targets::ask(g, Call::Services, SERVICES_API).await?;
    targets::each(&replies, |machine, answer, _| {
        let Answer::Services(rows) = answer else {
            return Err(unexpected(machine));
        };
        let row = find_service(rows, &cmd.service)?;
        println!("{}", serde_json::to_string_pretty(row)?);
        Ok(())
    })
}

/// The row of `name` (`web` or `web.shop`).
fn find_service<'a>(rows: &'a [ServiceRow], name: &str) -> anyhow::Result<&'a ServiceRow> {
    if let Some(row) = rows.iter().find(|r| r.display_name() == name) {
        return Ok(row);
    }
    let in_projects: Vec<String> = rows
        .iter()
        .filter(|r| r.name == name)
        .map(ServiceRow::display_name)
        .collect();
    if in_projects.is_empty() {
        bail!("no service {name}; `uc ls` lists them");
    }
    bail!(
        "no service {name} outside a project; did you mean {}?",
        in_projects.join(" or ")
    )
}

pub fn services_table(rows: &[ServiceRow]) -> String {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            let wanted = if s.mode == MODE_GLOBAL {
                "global".to_string()
            } else {
                s.replicas.to_string()
            };
            vec![
                s.display_name(),
                s.mode.clone(),
                format!("{}/{wanted}", s.running()),
                s.image.clone(),
                s.vip.clone(),
                s.ports.join(", "),
            ]
        })
        .collect();
    output::table(
        &["NAME", "MODE", "RUNNING", "IMAGE", "VIP", "PORTS"],
        &table,
    )
}

pub fn containers_table(rows: &[ServiceRow]) -> String {
    let mut table = Vec::new();
    for s in rows {
        for c in &s.containers {
            let state = if c.machine_state == "alive" {
                c.state.clone()
            } else {
                format!("{} (machine {})", c.state, c.machine_state)
            };
            table.push(vec![
                s.display_name(),
                c.name.clone(),
                c.machine.clone(),
                state,
                if c.healthy { "healthy" } else { "unhealthy" }.to_string(),
                c.ip.clone(),
                c.revision.to_string(),
            ]);
        }
    }
    output::table(
        &[
            "SERVICE",
            "CONTAINER",
            "MACHINE",
            "STATE",
            "HEALTH",
            "IP",
            "REVISION",
        ],
        &table,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: Run,
    }

    #[test]
    fn a_service_is_found_by_name_or_name_dot_project() {
        let row = |name: &str, project: &str| ServiceRow {
            name: name.into(),
            project: project.into(),
            ..Default::default()
        };
        let rows = [row("web", ""), row("db", "shop"), row("db", "blog")];
        assert_eq!(find_service(&rows, "web").unwrap().project, "");
        assert_eq!(find_service(&rows, "db.blog").unwrap().project, "blog");
        let e = find_service(&rows, "db").unwrap_err().to_string();
        assert!(e.contains("db.shop or db.blog"), "{e}");
        let e = find_service(&rows, "cache").unwrap_err().to_string();
        assert!(e.contains("uc ls"), "{e}");
    }

    fn parse(args: &[&str]) -> RunRequest {
        let t = T::try_parse_from([&["run"], args].concat()).unwrap();
        request(t.run, &["beta".to_string()]).unwrap()
    }

    #[test]
    fn flags_become_the_spec() {
        let r = parse(&[
            "--name",
            "web",
            "-e",
            "A=1",
            "-p",
            "8080:80",
            "-p",
            "app.example.com:80/https",
            "--memory",
            "512M",
            "--cpu",
            "0.5",
            "--replicas",
            "3",
            "--health-cmd",
            "true",
            "--health-interval",
            "2s",
            "busybox",
            "httpd",
            "-f",
        ]);
        assert_eq!(r.name, "web");
        assert_eq!(r.spec.image, "busybox");
        assert_eq!(r.spec.command, ["httpd", "-f"]);
        assert_eq!(r.spec.env["A"], "1");
        assert_eq!(r.spec.publish, ["8080:80"]);
        assert_eq!(r.spec.ports, ["app.example.com:80/https"]);
        assert_eq!(r.spec.memory_bytes, 512 << 20);
        assert_eq!(r.spec.cpu_millis, 500);
        assert_eq!(r.spec.replicas, 3);
        assert_eq!(r.spec.machines, ["beta"]);
        let h = r.spec.healthcheck.unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "true"]);
        assert_eq!(h.interval_ms, 2000);
    }

    #[test]
    fn all_machines_is_no_restriction() {
        let t = T::try_parse_from(["run", "busybox"]).unwrap();
        assert!(request(t.run, &["all".to_string()])
            .unwrap()
            .spec
            .machines
            .is_empty());
    }

    #[test]
    fn a_global_service_wants_no_replica_count() {
        let r = parse(&["--mode", "global", "busybox"]);
        assert_eq!(r.spec.mode, "global");
        assert_eq!(r.spec.replicas, 0);
    }

    #[test]
    fn host_mode_ports_are_bound_on_the_machine() {
        let r = parse(&[
            "-p",
            "53/udp@host",
            "-p",
            "8080:80",
            "-p",
            "app.example.com:80/https",
            "busybox",
        ]);
        assert_eq!(r.spec.publish, ["53:53/udp", "8080:80"]);
        assert_eq!(r.spec.ports, ["app.example.com:80/https"]);
    }

    #[test]
    fn host_ports_and_ingress_ports_are_told_apart() {
        for host in ["8080:80", "127.0.0.1:53:53/udp", "9000:9000/tcp"] {
            assert!(is_host_port(host), "{host}");
        }
        for ingress in [
            "80",
            "app.example.com:8000/https",
            "app.example.com/api:80/https",
        ] {
            assert!(!is_host_port(ingress), "{ingress}");
        }
    }

    #[test]
    fn sizes_cpus_and_durations_parse_or_say_why() {
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert!(parse_bytes("1k").unwrap_err().contains("at least 4M"));
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_cpus("1.5"), Ok(1500));
        assert!(parse_cpus("0").is_err());
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert!(parse_duration_ms("2d").is_err());
    }
}

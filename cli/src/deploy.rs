//! `uc deploy`: a Compose file's services onto the network. The file is read here
//! (`uncloud-compose`), compared with the services the network runs, and the difference is
//! shown as a plan, confirmed, then carried out with the same calls as `uc run` and `uc rm`;
//! a changed service is rolled out one container at a time (`update`, API version 6).

use std::collections::BTreeMap;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use uncloud_api::service::{
    PutFiles, RunRequest, ServiceRow, ServiceSpec, StoredFile, UpdateRequest,
};
use uncloud_api::wire::{Answer, Call};
use uncloud_api::ApiClient;
use uncloud_compose::{ComposeService, Options, Project};

use crate::context::Store;
use crate::output::Spinner;
use crate::remote::{self, answer};
use crate::service::{containers_table, remove_one, RUN_TIMEOUT, SERVICES_API};
use crate::update::UPDATE_API;
use crate::Global;

/// The API version that stores secrets and configs (`put_files`).
pub const FILES_API: u32 = 10;

/// Raw bytes of contents in one `put_files` call: base64 of it and the JSON around it stay
/// well inside a frame.
const PUT_FILES_BYTES: usize = 2 * 1024 * 1024;
/// Contents in one `put_files` call (apid's limit).
const PUT_FILES_COUNT: usize = 64;

/// The contents in calls that each fit.
fn batches(files: &[StoredFile]) -> Vec<Vec<StoredFile>> {
    let mut out: Vec<Vec<StoredFile>> = Vec::new();
    let mut bytes = 0;
    for f in files {
        let size = f.content.len() / 4 * 3;
        match out.last_mut() {
            Some(last) if last.len() < PUT_FILES_COUNT && bytes + size <= PUT_FILES_BYTES => {
                bytes += size;
                last.push(f.clone());
            }
            _ => {
                bytes = size;
                out.push(vec![f.clone()]);
            }
        }
    }
    out
}

/// `uc deploy [-f FILE] [SERVICE…]`.
#[derive(Debug, clap::Args)]
pub struct Deploy {
    /// The Compose file (default: compose.yaml, compose.yml, docker-compose.yaml or
    /// docker-compose.yml in this folder). Its `.env` is read from beside it.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// The project name (default: the file's `name:`, else its folder's name). It prefixes
    /// the containers and volumes and scopes the services' DNS names.
    #[arg(short = 'p', long = "project-name")]
    pub project: Option<String>,
    /// Also deploy the services of this profile. Repeatable.
    #[arg(long = "profile")]
    pub profiles: Vec<String>,
    /// Deploy only these services (nothing is removed then).
    pub services: Vec<String>,
    /// Do it without asking.
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Print the plan and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// When to pull images on the machines (a service's `pull_policy` wins).
    #[arg(long, value_parser = ["missing", "always", "never"], default_value = "missing")]
    pub pull: String,
}

/// What happens to one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Create,
    /// Changed: which parts of the spec differ.
    Update(Vec<String>),
    Same,
    Remove,
}

/// The plan: services in the order they are deployed, then those removed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<(String, Step)>,
}

impl Plan {
    pub fn changes(&self) -> usize {
        self.steps.iter().filter(|(_, s)| *s != Step::Same).count()
    }
}

/// Compares the file's services with the network's. Pure. `only`: the services named on the
/// command line (then nothing is removed). `machine_ids`: machine names to ids, since the
/// network keeps pins by id.
pub fn plan(
    project: &Project,
    running: &[ServiceRow],
    only: &[String],
    machine_ids: &BTreeMap<String, String>,
) -> Plan {
    let mut steps = Vec::new();
    for s in &project.services {
        if !only.is_empty() && !only.contains(&s.name) {
            continue;
        }
        let current = running
            .iter()
            .find(|r| r.project == project.name && r.name == s.name);
        let step = match current {
            None => Step::Create,
            Some(row) => match &row.spec {
                Some(spec) => {
                    let differs = differences(&wanted(&s.spec, machine_ids), spec);
                    if differs.is_empty() && row.outdated > 0 {
                        // An update that stopped half way, or machines that were cut off.
                        Step::Update(vec![format!(
                            "{} container(s) still of an earlier spec",
                            row.outdated
                        )])
                    } else if differs.is_empty() {
                        Step::Same
                    } else {
                        Step::Update(differs)
                    }
                }
                // An apid older than the spec in its rows: cannot tell, so replace.
                None => Step::Update(vec!["unknown (the machine's apid is older than uc)".into()]),
            },
        };
        steps.push((s.name.clone(), step));
    }
    if only.is_empty() {
        for row in running.iter().filter(|r| r.project == project.name) {
            let in_file = project.services.iter().any(|s| s.name == row.name);
            if !in_file && !project.inactive.contains(&row.name) {
                steps.push((row.name.clone(), Step::Remove));
            }
        }
    }
    Plan { steps }
}

/// The file's spec as the network stores it: pins by machine id.
fn wanted(spec: &ServiceSpec, machine_ids: &BTreeMap<String, String>) -> ServiceSpec {
    let mut spec = spec.clone();
    for m in &mut spec.machines {
        if let Some(id) = machine_ids.get(m) {
            *m = id.clone();
        }
    }
    spec.machines.sort();
    spec.machines.dedup();
    spec
}

/// The top-level fields of the spec that differ, by their JSON names.
pub(crate) fn differences(wanted: &ServiceSpec, current: &ServiceSpec) -> Vec<String> {
    let mut current = current.clone();
    current.machines.sort();
    current.machines.dedup();
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(wanted), serde_json::to_value(&current))
    else {
        return vec!["spec".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// The plan as the user reads it.
pub fn render(project: &Project, plan: &Plan) -> String {
    let mut out = String::new();
    for (name, step) in &plan.steps {
        let s = project.services.iter().find(|s| &s.name == name);
        let what = s.map(describe).unwrap_or_default();
        let line = match step {
            Step::Create => format!("  + create  {name:<16} {what}"),
            Step::Update(fields) => format!(
                "  ~ update  {name:<16} {what} (changed: {})",
                fields.join(", ")
            ),
            Step::Same => format!("  = same    {name:<16} {what}"),
            Step::Remove => {
                format!("  - remove  {name:<16} its containers on every machine (its volumes stay)")
            }
        };
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn describe(s: &ComposeService) -> String {
    let count = if s.spec.is_global() {
        "on every machine".to_string()
    } else {
        format!("× {}", s.spec.replicas)
    };
    let pins = if s.spec.machines.is_empty() {
        String::new()
    } else {
        format!(" on {}", s.spec.machines.join(","))
    };
    let constraints = if s.spec.constraints.is_empty() {
        String::new()
    } else {
        format!(" where {}", s.spec.constraints.join(" and "))
    };
    format!("{} {count}{pins}{constraints}", s.spec.image)
}

/// The Compose file in this folder, by Compose's own order of names.
fn default_file() -> anyhow::Result<PathBuf> {
    for name in [
        "compose.yaml",
        "compose.yml",
        "docker-compose.yaml",
        "docker-compose.yml",
    ] {
        let p = PathBuf::from(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("no compose.yaml (or compose.yml, docker-compose.yaml, docker-compose.yml) here: give one with -f FILE")
}

pub async fn deploy(cmd: Deploy, g: &Global) -> anyhow::Result<()> {
    let file = match &cmd.file {
        Some(f) => f.clone(),
        None => default_file()?,
    };
    let options = Options {
        project: cmd.project.clone(),
        profiles: cmd.profiles.clone(),
        shell: std::env::vars().collect(),
    };
    let project = uncloud_compose::load(&file, &options)?;
    for w in &project.warnings {
        eprintln!("warning: {}", w.at(&file));
    }
    for name in &cmd.services {
        if !project.services.iter().any(|s| &s.name == name) {
            bail!(
                "{}: no service {name:?} (in its active profiles)",
                file.display()
            );
        }
    }

    let store = Store::default_location();
    let ctx = store.load(g.context.as_deref())?;
    let (member, via) = remote::member(&ctx, g).await?;
    remote::require_api(&member, &via, SERVICES_API).await?;
    let rolling = answer(member.info(remote::ctx()).await)?.api_version >= UPDATE_API;
    let running = remote::services(&member).await?;
    let machine_ids = match answer(member.call(remote::ctx(), Call::Machines).await)? {
        Answer::Machines(rows) => rows.into_iter().map(|m| (m.name, m.id)).collect(),
        _ => BTreeMap::new(),
    };
    let plan = plan(&project, &running, &cmd.services, &machine_ids);
    println!(
        "project {} from {}, through {via}:",
        project.name,
        file.display()
    );
    print!("{}", render(&project, &plan));
    if plan.changes() == 0 {
        println!("nothing to change: the network runs this file already");
        return Ok(());
    }
    if cmd.dry_run {
        return Ok(());
    }
    if !cmd.yes && !confirm(plan.changes())? {
        bail!("nothing done");
    }

    let started = Instant::now();
    if !project.files.is_empty() {
        // The specs name their secrets and configs by digest: the contents go first.
        remote::require_api(&member, &via, FILES_API).await?;
        let mut stored = 0;
        for files in batches(&project.files) {
            let reply = answer(member.put_files(remote::ctx(), PutFiles { files }).await)
                .context("the secrets and configs were not stored")?;
            stored += reply.stored;
        }
        if stored > 0 {
            eprintln!("{stored} secret, config and uploaded file(s) stored");
        }
    }
    for (name, step) in &plan.steps {
        let id = format!("{name}.{}", project.name);
        match step {
            Step::Same => {}
            Step::Remove => remove(&member, &id).await?,
            Step::Create | Step::Update(_) => {
                let s = project
                    .services
                    .iter()
                    .find(|s| &s.name == name)
                    .expect("planned from the file");
                for dep in s.depends_on.iter().filter(|d| d.healthy) {
                    wait_healthy(&member, &format!("{}.{}", dep.service, project.name)).await?;
                }
                let pull = if s.pull.is_empty() {
                    cmd.pull.clone()
                } else {
                    s.pull.clone()
                };
                if matches!(step, Step::Update(_)) {
                    if rolling {
                        let request = UpdateRequest {
                            service: id.clone(),
                            spec: Some(s.spec.clone()),
                            pull,
                            order: s.update.order.clone(),
                            monitor_ms: s.update.monitor_ms,
                            no_rollback: s.update.no_rollback,
                            to_revision: None,
                        };
                        crate::update::update(&member, request, g).await?;
                        continue;
                    }
                    // An apid without rolling updates: the old containers go, then the new
                    // ones start.
                    eprintln!("note: {via} cannot roll updates out (API < {UPDATE_API}): {id} is replaced");
                    remove(&member, &id).await?;
                }
                let request = RunRequest {
                    name: s.name.clone(),
                    project: project.name.clone(),
                    spec: s.spec.clone(),
                    pull,
                };
                let spinner = Spinner::start(format!("starting {id}"));
                match answer(member.run(uncloud_api::context(RUN_TIMEOUT), request).await) {
                    Ok(reply) => {
                        spinner.done(&format!("{} started", reply.service.containers.len()));
                        for f in &reply.failed {
                            eprintln!("error: {}: {}", f.machine, f.error);
                        }
                        if !reply.failed.is_empty() {
                            bail!(
                                "{id}: {} container(s) did not start; `uc deploy` again retries",
                                reply.failed.len()
                            );
                        }
                    }
                    Err(e) => {
                        spinner.done("failed");
                        return Err(anyhow::Error::from(e).context(format!("{id} was not started")));
                    }
                }
            }
        }
    }
    let rows: Vec<ServiceRow> = remote::services(&member)
        .await?
        .into_iter()
        .filter(|r| r.project == project.name)
        .collect();
    print!("{}", containers_table(&rows));
    eprintln!("deployed in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn remove(member: &ApiClient, id: &str) -> anyhow::Result<()> {
    remove_one(member, id)
        .await
        .with_context(|| format!("{id} was not removed"))
}

/// How long a `depends_on: condition: service_healthy` is waited for.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(300);

/// Waits until every container of `id` runs and is healthy.
async fn wait_healthy(member: &ApiClient, id: &str) -> anyhow::Result<()> {
    let spinner = Spinner::start(format!("waiting for {id} to be healthy"));
    let deadline = Instant::now() + HEALTHY_TIMEOUT;
    loop {
        let rows = remote::services(member).await?;
        let row = rows.iter().find(|r| r.display_name() == id);
        if let Some(row) = row {
            if !row.containers.is_empty()
                && row
                    .containers
                    .iter()
                    .all(|c| c.state == "running" && c.healthy)
            {
                spinner.done("healthy");
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            spinner.done("timed out");
            bail!(
                "{id} was not healthy within {} s (`uc ps` shows its containers)",
                HEALTHY_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn confirm(changes: usize) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("not asking on a non-terminal: add -y to deploy these {changes} change(s), or --dry-run");
    }
    eprint!("deploy these {changes} change(s)? [y/N] ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the answer")?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uncloud_compose::Dependency;

    #[test]
    fn contents_go_in_calls_that_fit() {
        // Only the content's length matters here: base64 of n bytes.
        let file = |n: usize, i: usize| StoredFile {
            digest: format!("d{i}"),
            content: "A".repeat(n.div_ceil(3) * 4),
            stored_at_ms: 0,
        };
        // 100 small ones: 64 + 36.
        let small: Vec<StoredFile> = (0..100).map(|i| file(10, i)).collect();
        let b = batches(&small);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [64, 36]);
        // 40 of 64 KiB: two calls, each within the bytes, none lost.
        let big: Vec<StoredFile> = (0..40).map(|i| file(64 * 1024, i)).collect();
        let b = batches(&big);
        assert_eq!(b.len(), 2);
        for call in &b {
            let raw: usize = call.iter().map(|f| f.content.len() / 4 * 3).sum();
            assert!(raw <= PUT_FILES_BYTES, "{raw}");
        }
        assert_eq!(b.concat().len(), 40);
    }

    fn project(services: &[(&str, &str)]) -> Project {
        Project {
            name: "shop".into(),
            services: services
                .iter()
                .map(|(name, image)| ComposeService {
                    name: name.to_string(),
                    spec: ServiceSpec {
                        image: image.to_string(),
                        replicas: 1,
                        machines: vec!["alpha".into()],
                        ..Default::default()
                    },
                    depends_on: Vec::<Dependency>::new(),
                    pull: String::new(),
                    update: Default::default(),
                    line: 1,
                })
                .collect(),
            inactive: vec!["debug".into()],
            warnings: Vec::new(),
            files: Vec::new(),
        }
    }

    fn row(name: &str, project: &str, spec: Option<ServiceSpec>) -> ServiceRow {
        ServiceRow {
            name: name.into(),
            project: project.into(),
            spec,
            ..Default::default()
        }
    }

    #[test]
    fn plans_create_same_update_and_remove() {
        let p = project(&[
            ("db", "postgres:16"),
            ("web", "nginx:1.27"),
            ("cache", "redis:7"),
        ]);
        let ids = BTreeMap::from([("alpha".to_string(), "m-1".to_string())]);
        let stored = |image: &str| ServiceSpec {
            image: image.into(),
            replicas: 1,
            machines: vec!["m-1".into()],
            ..Default::default()
        };
        let running = vec![
            row("db", "shop", Some(stored("postgres:16"))),
            row("web", "shop", Some(stored("nginx:1.25"))),
            row("old", "shop", Some(stored("x"))),
            row("debug", "shop", Some(stored("busybox"))),
            row("web", "other", Some(stored("nginx:1.27"))),
        ];
        let plan = plan(&p, &running, &[], &ids);
        assert_eq!(
            plan.steps,
            [
                ("db".to_string(), Step::Same),
                ("web".to_string(), Step::Update(vec!["image".into()])),
                ("cache".to_string(), Step::Create),
                ("old".to_string(), Step::Remove),
            ]
        );
        assert_eq!(plan.changes(), 3);
        let text = render(&p, &plan);
        assert!(text.contains("~ update  web"), "{text}");
        assert!(text.contains("(changed: image)"), "{text}");
        assert!(text.contains("- remove  old"), "{text}");

        // Named services only: nothing is removed.
        let plan_only = super::plan(&p, &running, &["web".to_string()], &ids);
        assert_eq!(plan_only.steps.len(), 1);

        // The same file against what it deployed: nothing to do.
        let deployed: Vec<ServiceRow> = p
            .services
            .iter()
            .map(|s| row(&s.name, "shop", Some(wanted(&s.spec, &ids))))
            .collect();
        assert_eq!(super::plan(&p, &deployed, &[], &ids).changes(), 0);
        // ... unless some containers still run an earlier spec: they are rolled out again.
        let mut half = deployed.clone();
        half[1].outdated = 1;
        assert!(matches!(
            &super::plan(&p, &half, &[], &ids).steps[1].1,
            Step::Update(w) if w[0].contains("earlier spec")
        ));

        // An older apid's rows have no spec: replaced, saying why.
        let old = vec![row("db", "shop", None)];
        assert!(
            matches!(&super::plan(&p, &old, &["db".to_string()], &ids).steps[0].1, Step::Update(w) if w[0].contains("older"))
        );
    }
}

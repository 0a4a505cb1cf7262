//! Services: `uc run`, `uc scale`, `uc rm`, and the rows of `uc ls` and `uc ps`.
//!
//! Imperative, like the rest of the API: the machine `uc` is connected to decides placement
//! ([`crate::placement`]), writes the service into the state (stated gives it its revision and
//! virtual address), and asks each chosen machine's dockerd-shim to start a container
//! ([`crate::engines`]), all at once. Each shim records its own containers in the state; no
//! daemon reschedules anything later (Docker restarts crashed containers; a machine that dies
//! takes its containers with it until it is back). `run` and `scale` return once the records
//! of the containers they started have reached this machine's state (or a few seconds passed),
//! so what they print, and a `uc rm` right after, see them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::future::join_all;
use uncloud_api::service::{
    ContainerRow, MachineFailure, RemoveReply, RunReply, RunRequest, ScaleRequest, ServiceRef,
    ServiceRow,
};
use uncloud_api::wire::{ApiError, ErrorKind};
use uncloud_common::address::MeshCidr;
use uncloud_common::docker::{ErrorKind as OpsKind, OpsError};
use uncloud_common::model::{
    Container, ContainerState, Machine, Service, ServiceSpec, MODE_GLOBAL, MODE_REPLICATED,
};
use uncloud_common::vips;
use uncloud_pki::Role;

use crate::api::{internal, state_error, Apid, Caller, Member};
use crate::engines::Engine;
use crate::placement::{self, PlacementError};

/// The machines, containers and placement candidates as this machine's state has them.
pub(crate) struct View {
    pub machines: BTreeMap<String, Machine>,
    pub containers: BTreeMap<String, Container>,
    pub cidr: MeshCidr,
    pub candidates: Vec<placement::Candidate>,
}

/// How long `run` and `scale` wait for the records of the containers they started.
const RECORDS_WAIT: Duration = Duration::from_secs(5);

/// What starting containers on several machines gave.
#[derive(Default)]
struct Started {
    /// The machine, id and name of each container that started.
    ids: Vec<(Machine, String, String)>,
    failed: Vec<MachineFailure>,
    /// How many of the failures were machines that could not be reached.
    unreachable: usize,
    /// How many were refusals of the spec or the image (the user's to fix).
    refused: usize,
    /// Containers removed (scaling down): their records go a moment later.
    removed: Vec<String>,
}

/// When to pull the image on a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pull {
    Missing,
    Always,
    Never,
}

impl Pull {
    pub(crate) fn parse(s: &str) -> Result<Pull, ApiError> {
        match s {
            "" | "missing" => Ok(Pull::Missing),
            "always" => Ok(Pull::Always),
            "never" => Ok(Pull::Never),
            other => Err(ApiError::new(
                ErrorKind::Invalid,
                format!("--pull {other:?}: expected missing, always or never"),
            )),
        }
    }
}

/// The service name an image suggests: `registry:5000/team/nginx:1.25` -> `nginx`.
pub fn name_from_image(image: &str) -> String {
    let image = image.split('@').next().unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or_default();
    let repo = last.split(':').next().unwrap_or_default();
    // Room for the containers' `-xxxx` suffix (and a project) within a label's 63.
    uncloud_common::model::to_dns_label(repo, 40)
}

/// A new container's name: `<service>-<4 hex>`, `<project>-<service>-<4 hex>` in a project.
/// A DNS label, so `<container>.<machine>.machine.internal` resolves.
fn container_name(service: &Service) -> String {
    let suffix: u16 = rand::random();
    let prefix = if service.project.is_empty() {
        service.name.clone()
    } else {
        format!("{}-{}", service.project, service.name)
    };
    format!(
        "{}-{suffix:04x}",
        uncloud_common::model::to_dns_label(&prefix, 58)
    )
}

pub(crate) fn placement_error(e: PlacementError) -> ApiError {
    match e {
        PlacementError::UnknownMachine(_) => ApiError::new(ErrorKind::NotFound, e.to_string()),
        PlacementError::NoMachine(_) => ApiError::new(ErrorKind::Unreachable, e.to_string()),
        PlacementError::BadConstraint(_) => ApiError::new(ErrorKind::Invalid, e.to_string()),
        PlacementError::NoMatch(_) => ApiError::new(ErrorKind::NotFound, e.to_string()),
    }
}

pub(crate) fn ops_message(e: &OpsError) -> String {
    match e.kind {
        OpsKind::NoImage => format!(
            "{} (the image is not on the machine: push it with `uc image push`, or let it \
             be pulled with --pull missing)",
            e.message
        ),
        _ => e.message.clone(),
    }
}

impl Apid {
    pub(crate) async fn read_services(&self) -> Result<BTreeMap<String, Service>, ApiError> {
        self.read_all("services").await
    }

    pub(crate) async fn read_containers(&self) -> Result<BTreeMap<String, Container>, ApiError> {
        self.read_all("containers").await
    }

    /// What placing containers of `service_id` needs to know, from this machine's state.
    pub(crate) async fn view(&self, member: &Member, service_id: &str) -> Result<View, ApiError> {
        let machines = self.read_machines().await?;
        let liveness = self.state().liveness().await.map_err(state_error)?;
        let containers = self.read_containers().await?;
        let cidr = self.mesh_cidr().await?;
        let candidates = placement::candidates(
            &machines,
            &liveness,
            &member.machine_id,
            containers
                .values()
                .map(|c| (c.machine_id.as_str(), c.service_id.as_str())),
            service_id,
        );
        Ok(View {
            machines,
            containers,
            cidr,
            candidates,
        })
    }

    /// The shim of machine `m`: this machine's over D-Bus, another's over the mesh.
    pub(crate) async fn engine(
        &self,
        member: &Member,
        cidr: &MeshCidr,
        m: &Machine,
    ) -> Result<Engine, OpsError> {
        if m.id == member.machine_id {
            return Engine::local(self.state().inner().connection()).await;
        }
        let ip = cidr.machine_ip(m.subnet).ok_or_else(|| {
            OpsError::new(
                OpsKind::Unreachable,
                format!("{} has no mesh address", m.name),
            )
        })?;
        Engine::remote(ip, &member.network_id, &member.machine_id).await
    }

    /// Starts one container of `service` on `m`, pulling the image as `pull` says.
    pub(crate) async fn start_on(
        &self,
        member: &Member,
        cidr: &MeshCidr,
        m: &Machine,
        service: &Service,
        pull: Pull,
    ) -> Result<(String, String), OpsError> {
        let engine = self.engine(member, cidr, m).await?;
        if pull == Pull::Always {
            engine.pull(&service.spec.image).await?;
        }
        let mut name = container_name(service);
        let mut run = engine.run(service, &name).await;
        // Two random suffixes met on one engine (1 in 65,536 per pair): another name.
        for _ in 0..3 {
            match &run {
                Err(e) if e.kind == OpsKind::Conflict => {
                    name = container_name(service);
                    run = engine.run(service, &name).await;
                }
                _ => break,
            }
        }
        let id = match run {
            Err(e) if e.kind == OpsKind::NoImage && pull == Pull::Missing => {
                tracing::info!(machine = %m.name, image = %service.spec.image, "pulling");
                engine.pull(&service.spec.image).await.map_err(|p| {
                    OpsError::new(
                        OpsKind::NoImage,
                        format!(
                            "{} is not on {} and pulling it failed: {}",
                            service.spec.image, m.name, p.message
                        ),
                    )
                })?;
                engine.run(service, &name).await
            }
            other => other,
        }?;
        Ok((id, name))
    }

    /// Waits until the records of `ids` are in this machine's state: each machine's shim
    /// writes its own, and they replicate here within moments. Bounded: a slow record only
    /// makes the reply show less.
    pub(crate) async fn wait_for_records(&self, ids: &[String]) {
        let deadline = Instant::now() + RECORDS_WAIT;
        while Instant::now() < deadline {
            match self.read_containers().await {
                Ok(have) if ids.iter().all(|id| have.contains_key(id)) => return,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        tracing::info!(
            containers = ids.len(),
            "not every container's record reached this machine's state in time"
        );
    }

    /// `uc run`.
    pub async fn run_service(
        &self,
        caller: &Caller,
        req: RunRequest,
    ) -> Result<RunReply, ApiError> {
        let member = self.require(caller, Role::Admin)?;
        let pull = Pull::parse(&req.pull)?;
        let name = if req.name.is_empty() {
            name_from_image(&req.spec.image)
        } else {
            req.name.clone()
        };
        let mut spec = req.spec;
        normalize(&mut spec);
        let mut candidate = Service {
            id: Service::key(&req.project, &name),
            name,
            project: req.project,
            spec,
            ..Default::default()
        };
        candidate
            .validate()
            .map_err(|e| ApiError::new(ErrorKind::Invalid, e.to_string()))?;
        self.require_files(&candidate.spec).await?;
        if self.read_services().await?.contains_key(&candidate.id) {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "a service {:?} exists already: remove it first (`uc rm {}`)",
                    candidate.id, candidate.id
                ),
            ));
        }

        let View {
            machines,
            containers: _,
            cidr,
            candidates,
        } = self.view(&member, &candidate.id).await?;
        let eligible =
            placement::eligible(&candidate.spec, &candidates).map_err(placement_error)?;
        candidate.spec.machines = pin_by_id(&candidate.spec.machines, &candidates);
        let targets = if candidate.spec.is_global() {
            placement::global(&eligible)
        } else {
            placement::spread(&eligible, candidate.spec.replicas as usize)
        };

        self.state()
            .upsert_service(&serde_json::to_string(&candidate).expect("services serialize"))
            .await
            .map_err(state_error)?;
        // stated gave it its revision, creation time and virtual address.
        let service = self
            .read_services()
            .await?
            .remove(&candidate.id)
            .ok_or_else(|| internal("stated", "the service it just wrote is gone"))?;
        tracing::info!(service = %service.id, containers = targets.len(), "run");

        let started = self
            .start_all(&member, &cidr, &machines, &service, &targets, pull)
            .await;
        if started.ids.is_empty() && !targets.is_empty() {
            // Nothing runs: leave no service behind, and say why.
            if let Err(e) = self.state().remove_service(&service.id).await {
                tracing::warn!(service = %service.id, error = %e, "cannot remove a service none of whose containers started");
            }
            let why: Vec<String> = started
                .failed
                .iter()
                .map(|f| format!("{}: {}", f.machine, f.error))
                .collect();
            let kind = if started.unreachable == started.failed.len() {
                ErrorKind::Unreachable
            } else if started.refused > 0 {
                ErrorKind::Invalid
            } else {
                ErrorKind::Internal
            };
            return Err(ApiError::new(
                kind,
                format!(
                    "no container of {} started:\n  {}",
                    service.id,
                    why.join("\n  ")
                ),
            ));
        }
        self.reply(&service, started).await
    }

    /// One container of `service` on each of `targets` (machine ids, repeats allowed), all at
    /// once.
    async fn start_all(
        &self,
        member: &Member,
        cidr: &MeshCidr,
        machines: &BTreeMap<String, Machine>,
        service: &Service,
        targets: &[String],
        pull: Pull,
    ) -> Started {
        let results = join_all(targets.iter().map(|id| {
            let m = &machines[id];
            async move { (m, self.start_on(member, cidr, m, service, pull).await) }
        }))
        .await;
        let mut started = Started::default();
        for (m, result) in results {
            match result {
                Ok((id, name)) => started.ids.push((m.clone(), id, name)),
                Err(e) => {
                    started.unreachable += usize::from(e.kind == OpsKind::Unreachable);
                    started.refused += usize::from(matches!(
                        e.kind,
                        OpsKind::InvalidArgument | OpsKind::NoImage
                    ));
                    started.failed.push(MachineFailure {
                        machine: m.name.clone(),
                        error: ops_message(&e),
                    })
                }
            }
        }
        started
    }

    /// The service as it is now, with the containers just started even before their shims
    /// record them (a moment later).
    async fn reply(&self, service: &Service, started: Started) -> Result<RunReply, ApiError> {
        let ids: Vec<String> = started.ids.iter().map(|(_, id, _)| id.clone()).collect();
        self.wait_for_records(&ids).await;
        let mut row = self
            .service_rows()
            .await?
            .into_iter()
            .find(|r| r.id == service.id)
            .unwrap_or_default();
        row.containers.retain(|c| !started.removed.contains(&c.id));
        for (m, id, name) in started.ids {
            if !row.containers.iter().any(|c| c.id == id) {
                row.containers.push(ContainerRow {
                    id,
                    name,
                    healthy: service.spec.healthcheck.is_none(),
                    machine: m.name.clone(),
                    machine_id: m.id.clone(),
                    state: "running".into(),
                    revision: service.revision,
                    machine_state: "alive".into(),
                    ..Default::default()
                });
            }
        }
        Ok(RunReply {
            service: row,
            failed: started.failed,
        })
    }

    /// `uc scale`.
    pub async fn scale_service(
        &self,
        caller: &Caller,
        req: ScaleRequest,
    ) -> Result<RunReply, ApiError> {
        let member = self.require(caller, Role::Admin)?;
        let mut service = find_service(&self.read_services().await?, &req.service)?.clone();
        if service.spec.is_global() {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                format!(
                    "{} is global: it runs one container on each machine it may use, so it \
                     has no replica count",
                    service.id
                ),
            ));
        }
        let View {
            machines,
            containers,
            cidr,
            candidates,
        } = self.view(&member, &service.id).await?;
        let placed: Vec<placement::Placed> = containers
            .values()
            .filter(|c| c.service_id == service.id)
            .map(|c| placement::Placed {
                id: c.id.clone(),
                machine_id: c.machine_id.clone(),
                created_at_ms: c.created_at_ms,
                running: c.state == ContainerState::Running,
            })
            .collect();
        let want = req.replicas as usize;
        // Where new ones would go, decided (and refused) before the count is written.
        let targets = if want > placed.len() {
            let eligible =
                placement::eligible(&service.spec, &candidates).map_err(placement_error)?;
            placement::spread(&eligible, want - placed.len())
        } else {
            Vec::new()
        };
        if service.spec.replicas != req.replicas {
            let mut changed = service.clone();
            changed.spec.replicas = req.replicas;
            self.state()
                .upsert_service(&serde_json::to_string(&changed).expect("services serialize"))
                .await
                .map_err(state_error)?;
            service = self
                .read_services()
                .await?
                .remove(&service.id)
                .ok_or_else(|| internal("stated", "the service it just wrote is gone"))?;
        }
        let mut started = Started::default();
        if !targets.is_empty() {
            tracing::info!(service = %service.id, more = targets.len(), "scale up");
            started = self
                .start_all(&member, &cidr, &machines, &service, &targets, Pull::Missing)
                .await;
        } else if want < placed.len() {
            let alive: Vec<&placement::Candidate> = candidates.iter().filter(|c| c.alive).collect();
            let victims = placement::shrink(&placed, &alive, placed.len() - want);
            tracing::info!(service = %service.id, fewer = victims.len(), "scale down");
            let results = join_all(victims.iter().map(|id| {
                let c = &containers[id];
                let (member, cidr) = (&member, &cidr);
                let m = &machines[&c.machine_id];
                async move {
                    let result = match self.engine(member, cidr, m).await {
                        Ok(engine) => engine.remove(id).await,
                        Err(e) => Err(e),
                    };
                    (m, id, result)
                }
            }))
            .await;
            for (m, id, result) in results {
                match result {
                    Ok(()) => started.removed.push(id.clone()),
                    Err(e) => started.failed.push(MachineFailure {
                        machine: m.name.clone(),
                        error: ops_message(&e),
                    }),
                }
            }
            let short = placed.len() - want - victims.len();
            if short > 0 {
                started.failed.push(MachineFailure {
                    machine: "(unreachable machines)".into(),
                    error: format!(
                        "{short} more container(s) should go, but only machines this one \
                         cannot reach have them; `uc scale` again once they are back"
                    ),
                });
            }
        }
        self.reply(&service, started).await
    }

    /// `uc rm`: every container of the service, on its machine, then the service. A machine
    /// that cannot be reached keeps its containers and the service stays, so that `uc rm`
    /// again finishes the job.
    pub async fn remove_service(
        &self,
        caller: &Caller,
        req: ServiceRef,
    ) -> Result<RemoveReply, ApiError> {
        let member = self.require(caller, Role::Admin)?;
        let services = self.read_services().await?;
        let service = find_service(&services, &req.service)?.clone();
        let machines = self.read_machines().await?;
        let cidr = self.mesh_cidr().await?;
        let containers: Vec<Container> = self
            .read_containers()
            .await?
            .into_values()
            .filter(|c| c.service_id == service.id)
            .collect();
        let results = join_all(containers.iter().map(|c| {
            let (member, cidr, machines) = (&member, &cidr, &machines);
            async move {
                let Some(m) = machines.get(&c.machine_id) else {
                    // Its machine was removed from the network: nothing to ask.
                    return Ok(c.name.clone());
                };
                let engine = self
                    .engine(member, cidr, m)
                    .await
                    .map_err(|e| (e.kind, format!("{}: {}", m.name, e.message)))?;
                engine
                    .remove(&c.id)
                    .await
                    .map(|()| c.name.clone())
                    .map_err(|e| (e.kind, format!("{} on {}: {}", c.name, m.name, e.message)))
            }
        }))
        .await;
        let mut removed = Vec::new();
        let mut left = Vec::new();
        let mut unreachable = 0;
        for r in results {
            match r {
                Ok(name) => removed.push(name),
                Err((kind, e)) => {
                    unreachable += usize::from(kind == OpsKind::Unreachable);
                    left.push(e)
                }
            }
        }
        if !left.is_empty() {
            let (kind, when) = if unreachable == left.len() {
                (ErrorKind::Unreachable, "once their machines are reachable")
            } else {
                (ErrorKind::Internal, "once what failed is fixed")
            };
            return Err(ApiError::new(
                kind,
                format!(
                    "{} of {} containers removed; these are left, and so is the service \
                     (run `uc rm {}` again {when}):\n  {}",
                    removed.len(),
                    containers.len(),
                    service.id,
                    left.join("\n  ")
                ),
            ));
        }
        self.state()
            .remove_service(&service.id)
            .await
            .map_err(state_error)?;
        tracing::info!(service = %service.id, containers = removed.len(), "removed");
        removed.sort();
        Ok(RemoveReply { removed })
    }

    /// Every service with its containers, as this machine's state has them, by name.
    pub async fn service_rows(&self) -> Result<Vec<ServiceRow>, ApiError> {
        let services = self.read_services().await?;
        let containers = self.read_containers().await?;
        let machines = self.read_machines().await?;
        let liveness = self.state().liveness().await.unwrap_or_default();
        let cidr = self.mesh_cidr().await?;
        let own = self
            .member()
            .map(|m| m.machine_id.clone())
            .unwrap_or_default();
        Ok(rows(
            &services,
            &containers,
            &machines,
            &liveness,
            &own,
            &cidr,
        ))
    }
}

/// The spec as stored: replicated mode is the empty default, and a replicated service has at
/// least one replica.
pub(crate) fn normalize(spec: &mut ServiceSpec) {
    if spec.mode == MODE_REPLICATED {
        spec.mode.clear();
    }
    if !spec.is_global() && spec.replicas == 0 {
        spec.replicas = 1;
    }
}

/// Pinned machines by id (names or ids in), so renaming a machine does not break the pin.
pub(crate) fn pin_by_id(machines: &[String], candidates: &[placement::Candidate]) -> Vec<String> {
    machines
        .iter()
        .map(|m| {
            let m = m.trim();
            candidates
                .iter()
                .find(|c| c.id == m || c.name == m)
                .map_or_else(|| m.to_string(), |c| c.id.clone())
        })
        .collect()
}

/// A service by id (`web.shop`), or by name when only one service has it.
pub(crate) fn find_service<'a>(
    services: &'a BTreeMap<String, Service>,
    which: &str,
) -> Result<&'a Service, ApiError> {
    if let Some(s) = services.get(which) {
        return Ok(s);
    }
    let named: Vec<&Service> = services.values().filter(|s| s.name == which).collect();
    match named.as_slice() {
        [one] => Ok(one),
        [] => Err(ApiError::new(
            ErrorKind::NotFound,
            format!("no service named {which:?} (see `uc ls`)"),
        )),
        several => Err(ApiError::new(
            ErrorKind::Invalid,
            format!(
                "{which:?} is a service of several projects: say which, as one of {}",
                several
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The rows of `uc ls` and `uc ps`. Pure.
pub fn rows(
    services: &BTreeMap<String, Service>,
    containers: &BTreeMap<String, Container>,
    machines: &BTreeMap<String, Machine>,
    liveness: &HashMap<String, String>,
    own_id: &str,
    cidr: &MeshCidr,
) -> Vec<ServiceRow> {
    let vip_index = vips::resolve(services.values().map(|s| vips::Claim {
        id: &s.id,
        created_at_ms: s.created_at_ms,
        index: s.vip,
    }));
    let mut out: Vec<ServiceRow> = services
        .values()
        .map(|s| {
            let mut row_containers: Vec<ContainerRow> = containers
                .values()
                .filter(|c| c.service_id == s.id)
                .map(|c| {
                    let machine = machines.get(&c.machine_id);
                    ContainerRow {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        machine: machine.map_or_else(|| c.machine_id.clone(), |m| m.name.clone()),
                        machine_id: c.machine_id.clone(),
                        state: serde_json::to_value(c.state)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        healthy: c.healthy,
                        ip: c.ip.clone(),
                        revision: c.revision,
                        machine_state: if c.machine_id == own_id {
                            "alive".into()
                        } else {
                            liveness
                                .get(&c.machine_id)
                                .cloned()
                                .unwrap_or_else(|| "down".into())
                        },
                    }
                })
                .collect();
            row_containers.sort_by(|a, b| (&a.machine, &a.name).cmp(&(&b.machine, &b.name)));
            let current = s.current_revisions();
            let outdated = row_containers
                .iter()
                .filter(|c| !current.contains(&c.revision))
                .count();
            let mut ports = s.spec.ports.clone();
            ports.extend(s.spec.publish.iter().cloned());
            ServiceRow {
                id: s.id.clone(),
                name: s.name.clone(),
                project: s.project.clone(),
                revision: s.revision,
                mode: if s.spec.is_global() {
                    MODE_GLOBAL.into()
                } else {
                    MODE_REPLICATED.into()
                },
                image: s.spec.image.clone(),
                replicas: s.spec.replicas,
                ports,
                vip: vip_index
                    .get(&s.id)
                    .and_then(|&i| vips::address(cidr, i))
                    .map(|ip| ip.to_string())
                    .unwrap_or_default(),
                containers: row_containers,
                outdated,
                spec: Some(s.spec.clone()),
            }
        })
        .collect();
    out.sort_by_key(|r| r.display_name());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_derived_from_the_image() {
        assert_eq!(name_from_image("nginx"), "nginx");
        assert_eq!(name_from_image("nginx:1.25"), "nginx");
        assert_eq!(name_from_image("registry:5000/team/My_App:1"), "my-app");
        assert_eq!(name_from_image("busybox@sha256:abcd"), "busybox");
    }

    #[test]
    fn a_container_name_is_a_dns_label_with_the_project() {
        let s = Service {
            name: "db".into(),
            project: "shop".into(),
            ..Default::default()
        };
        let n = container_name(&s);
        assert!(
            n.starts_with("shop-db-") && n.len() == "shop-db-".len() + 4,
            "{n}"
        );
        uncloud_common::model::validate_dns_label("container", &n).unwrap();
        let long = Service {
            name: "d".repeat(63),
            project: "p".repeat(63),
            ..Default::default()
        };
        uncloud_common::model::validate_dns_label("container", &container_name(&long)).unwrap();
    }

    fn service(id: &str, name: &str, project: &str) -> Service {
        Service {
            id: id.into(),
            name: name.into(),
            project: project.into(),
            vip: 1,
            spec: ServiceSpec {
                image: "busybox".into(),
                replicas: 2,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn rows_join_containers_to_their_service_and_machine_and_say_what_is_unreachable() {
        let services = BTreeMap::from([
            ("web".to_string(), service("web", "web", "")),
            ("db.shop".to_string(), service("db.shop", "db", "shop")),
        ]);
        let machines = BTreeMap::from([
            (
                "m1".to_string(),
                Machine {
                    id: "m1".into(),
                    name: "alpha".into(),
                    subnet: 1,
                    ..Default::default()
                },
            ),
            (
                "m2".to_string(),
                Machine {
                    id: "m2".into(),
                    name: "beta".into(),
                    subnet: 2,
                    ..Default::default()
                },
            ),
        ]);
        let container = |id: &str, machine: &str, service: &str| Container {
            id: id.into(),
            name: format!("{service}-{id}"),
            machine_id: machine.into(),
            service_id: service.into(),
            state: ContainerState::Running,
            ..Default::default()
        };
        let containers = BTreeMap::from([
            ("c1".to_string(), container("c1", "m1", "web")),
            ("c2".to_string(), container("c2", "m2", "web")),
            ("c3".to_string(), container("c3", "m2", "db.shop")),
        ]);
        let liveness = HashMap::from([("m2".to_string(), "down".to_string())]);
        let cidr: MeshCidr = "10.210.0.0/16".parse().unwrap();
        let rows = rows(&services, &containers, &machines, &liveness, "m1", &cidr);
        let names: Vec<String> = rows.iter().map(ServiceRow::display_name).collect();
        assert_eq!(names, ["db.shop", "web"]);
        let web = &rows[1];
        // Both claim index 1 at the same age: the smaller id keeps it, the other gets the next.
        assert_eq!(
            (rows[0].vip.as_str(), web.vip.as_str()),
            ("10.210.0.1", "10.210.0.2")
        );
        assert_eq!(web.containers.len(), 2);
        assert_eq!(
            (
                web.containers[0].machine.as_str(),
                web.containers[0].state.as_str()
            ),
            ("alpha", "running")
        );
        assert_eq!(web.containers[1].machine_state, "down");
        assert_eq!(web.running(), 1);
    }

    #[test]
    fn a_service_is_found_by_id_or_by_a_name_only_one_project_uses() {
        let services = BTreeMap::from([
            ("db.shop".to_string(), service("db.shop", "db", "shop")),
            ("db.blog".to_string(), service("db.blog", "db", "blog")),
            ("web".to_string(), service("web", "web", "")),
        ]);
        assert_eq!(find_service(&services, "web").unwrap().id, "web");
        assert_eq!(find_service(&services, "db.blog").unwrap().id, "db.blog");
        let e = find_service(&services, "db").unwrap_err();
        assert!(e.message.contains("db.blog, db.shop"), "{e}");
        assert_eq!(
            find_service(&services, "cache").unwrap_err().kind,
            ErrorKind::NotFound
        );
    }
}

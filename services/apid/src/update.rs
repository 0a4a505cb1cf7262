//! `update` and `history`: rolling updates, automatic and asked-for rollback, and the
//! revisions a service went through.
//!
//! The new spec goes into the state first (stated gives it the next revision and keeps the old
//! one in the history), then [`crate::rollout`] plans and each step runs on its machine: a
//! replacement starts a container of the new spec beside the old one (start-first) or after
//! removing it (stop-first), waits until the new one is ready (healthy, or running through the
//! monitor period), then removes the old one. The first container that fails stops the update:
//! its last log lines are kept, it is removed, and unless the caller said otherwise the
//! previous spec is written back (a new revision with the old spec) and rolled out the same
//! way, so the containers already replaced go back too.
//!
//! An update that fails half way without rollback leaves containers of both specs; the service
//! holds the new one, and `uc deploy` or `uc rollback` finishes the job either way.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use uncloud_api::service::{
    HistoryReply, MachineFailure, RevisionRow, ServiceRef, UpdateReply, UpdateRequest,
};
use uncloud_api::wire::{ApiError, ErrorKind};
use uncloud_common::address::MeshCidr;
use uncloud_common::docker::ErrorKind as OpsKind;
use uncloud_common::model::{ContainerState, Machine, Service, ServiceSpec};
use uncloud_pki::Role;

use crate::api::{internal, state_error, Apid, Caller, Member};
use crate::rollout::{self, Order, Step, Verdict};
use crate::services::{find_service, normalize, ops_message, pin_by_id, Pull};

/// How long a new container without a health check must keep running, unless asked.
const DEFAULT_MONITOR: Duration = Duration::from_secs(5);
/// The longest monitor period a caller may ask for.
const MAX_MONITOR: Duration = Duration::from_secs(600);
/// How many log lines of a failed container the reply carries.
const FAILED_LOG_LINES: u32 = 20;
/// How often a new container is looked at while it gets ready.
const POLL: Duration = Duration::from_millis(500);

/// Why an update stopped.
struct Failure {
    reason: String,
    logs: Vec<String>,
}

impl Failure {
    fn new(reason: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            logs: Vec::new(),
        }
    }
}

/// What rolling one spec out did.
#[derive(Default)]
struct Outcome {
    steps: Vec<String>,
    skipped: Vec<MachineFailure>,
    failure: Option<Failure>,
    /// Containers started and removed, by id: the state learns of them a moment later.
    started: Vec<String>,
    removed: HashSet<String>,
}

/// Services being updated through this machine: a second update of one of them is refused
/// rather than interleaved with the first. (Through two machines at once, both go on; the
/// state keeps one spec, and the next deploy settles the containers.)
static UNDER_WAY: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());

/// Holds a service's place in [`UNDER_WAY`] until dropped.
struct UnderWay(String);

impl UnderWay {
    fn claim(service: &str) -> Result<UnderWay, ApiError> {
        let mut set = UNDER_WAY.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(service.to_string()) {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("{service} is being updated already (through this machine): wait for it to finish"),
            ));
        }
        Ok(UnderWay(service.to_string()))
    }
}

impl Drop for UnderWay {
    fn drop(&mut self) {
        UNDER_WAY
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

impl Apid {
    /// `update`: a new spec (or an earlier revision's) rolled out one container at a time.
    pub async fn update_service(
        &self,
        caller: &Caller,
        req: UpdateRequest,
    ) -> Result<UpdateReply, ApiError> {
        let member = self.require(caller, Role::Admin)?;
        let pull = Pull::parse(&req.pull)?;
        let invalid = |m: String| ApiError::new(ErrorKind::Invalid, m);
        let before = find_service(&self.read_services().await?, &req.service)?.clone();
        let _under_way = UnderWay::claim(&before.id)?;
        let going_back = req.spec.is_none();
        let mut target = match req.spec {
            Some(spec) => spec,
            None => earlier(&before, req.to_revision)?.spec.clone(),
        };
        normalize(&mut target);
        let candidates = self.view(&member, &before.id).await?.candidates;
        target.machines = pin_by_id(&target.machines, &candidates);
        let mut check = before.clone();
        check.spec = target.clone();
        check.validate().map_err(|e| invalid(e.to_string()))?;
        self.require_files(&target).await?;
        let order = rollout::order(&req.order, &target).map_err(invalid)?;
        let monitor = match req.monitor_ms {
            0 => DEFAULT_MONITOR,
            ms => Duration::from_millis(ms).min(MAX_MONITOR),
        };

        let service = self.write_spec(&before, target).await?;
        tracing::info!(service = %service.id, revision = service.revision, order = order.as_str(), "update");
        let mut outcome = self
            .roll(&member, &service, order, pull, monitor, &HashSet::new())
            .await;
        let mut reply = UpdateReply {
            order: order.as_str().into(),
            ..Default::default()
        };
        let mut removed = std::mem::take(&mut outcome.removed);
        if let Some(failure) = outcome.failure.take() {
            reply.error = failure.reason;
            reply.logs = failure.logs;
            if !req.no_rollback && !going_back && before.spec != service.spec {
                tracing::warn!(service = %service.id, error = %reply.error, "update failed: going back");
                self.wait_for_records(&outcome.started).await;
                let back = self.write_spec(&service, before.spec.clone()).await?;
                // The order the old spec allows; stop-first is always possible.
                let back_order = rollout::order(&req.order, &back.spec).unwrap_or(Order::StopFirst);
                let again = self
                    .roll(&member, &back, back_order, Pull::Missing, monitor, &removed)
                    .await;
                outcome
                    .steps
                    .extend(again.steps.iter().map(|s| format!("rollback: {s}")));
                outcome.started.extend(again.started);
                removed.extend(again.removed);
                reply.rolled_back = true;
                if let Some(f) = again.failure {
                    reply.error = format!("{}; going back failed too: {}", reply.error, f.reason);
                }
            }
        }
        reply.steps = outcome.steps;
        reply.skipped = outcome.skipped;
        self.wait_for_records(&outcome.started).await;
        let mut row = self
            .service_rows()
            .await?
            .into_iter()
            .find(|r| r.id == service.id)
            .unwrap_or_default();
        row.containers.retain(|c| !removed.contains(&c.id));
        reply.service = row;
        Ok(reply)
    }

    /// Rolls `service`'s own spec out again, as placement sees the machines now: containers
    /// on machines it may no longer use (drained, without the label) are started elsewhere
    /// first, then removed. Returns the steps and why it stopped, if it did.
    pub(crate) async fn reroll(
        &self,
        member: &Member,
        service: &Service,
    ) -> Result<(Vec<String>, String), ApiError> {
        let _under_way = UnderWay::claim(&service.id)?;
        let order = rollout::order("", &service.spec).unwrap_or(Order::StopFirst);
        let outcome = self
            .roll(
                member,
                service,
                order,
                Pull::Missing,
                DEFAULT_MONITOR,
                &HashSet::new(),
            )
            .await;
        self.wait_for_records(&outcome.started).await;
        let mut error = outcome.failure.map(|f| f.reason).unwrap_or_default();
        if error.is_empty() {
            if let Some(s) = outcome.skipped.first() {
                error = format!("{}: {}", s.machine, s.error);
            }
        }
        Ok((outcome.steps, error))
    }

    /// Writes `spec` as `service`'s (a new revision, the old spec kept in the history) unless
    /// it is its spec already; returns the service as stated has it now.
    async fn write_spec(&self, service: &Service, spec: ServiceSpec) -> Result<Service, ApiError> {
        if spec == service.spec {
            return Ok(service.clone());
        }
        let mut changed = service.clone();
        changed.spec = spec;
        self.state()
            .upsert_service(&serde_json::to_string(&changed).expect("services serialize"))
            .await
            .map_err(state_error)?;
        self.read_services()
            .await?
            .remove(&service.id)
            .ok_or_else(|| internal("stated", "the service it just wrote is gone"))
    }

    /// Rolls `service`'s spec out over its containers (those in `forget` are gone already,
    /// whatever the state still says).
    async fn roll(
        &self,
        member: &Member,
        service: &Service,
        order: Order,
        pull: Pull,
        monitor: Duration,
        forget: &HashSet<String>,
    ) -> Outcome {
        let mut out = Outcome::default();
        let view = match self.view(member, &service.id).await {
            Ok(v) => v,
            Err(e) => {
                out.failure = Some(Failure::new(e.message));
                return out;
            }
        };
        let current = service.current_revisions();
        let existing: Vec<rollout::Existing> = view
            .containers
            .values()
            .filter(|c| c.service_id == service.id && !forget.contains(&c.id))
            .map(|c| rollout::Existing {
                id: c.id.clone(),
                name: c.name.clone(),
                machine_id: c.machine_id.clone(),
                current: current.contains(&c.revision),
                running: c.state == ContainerState::Running,
                created_at_ms: c.created_at_ms,
            })
            .collect();
        let eligible = match crate::placement::eligible(&service.spec, &view.candidates) {
            Ok(e) => e,
            Err(e) => {
                out.failure = Some(Failure::new(e.to_string()));
                return out;
            }
        };
        let plan = rollout::plan(&service.spec, &existing, &view.candidates, &eligible);
        for e in &plan.unreachable {
            let machine = view
                .machines
                .get(&e.machine_id)
                .map_or(e.machine_id.as_str(), |m| m.name.as_str());
            out.skipped.push(MachineFailure {
                machine: machine.to_string(),
                error: format!(
                    "{} was left as it was: its machine is not reachable from here; `uc deploy` \
                     again once it is back",
                    e.name
                ),
            });
        }
        let name_of = |id: &str| {
            existing
                .iter()
                .find(|e| e.id == id)
                .map_or_else(|| id.to_string(), |e| e.name.clone())
        };
        let cidr = &view.cidr;
        for step in plan.steps {
            let result = match &step {
                Step::Replace { old, machine_id } => {
                    let m = &view.machines[machine_id];
                    self.replace(
                        member, cidr, m, service, old, order, pull, monitor, &mut out,
                    )
                    .await
                    .map(|new| format!("replaced {} on {} by {new}", name_of(old), m.name))
                }
                Step::Start { machine_id } => {
                    let m = &view.machines[machine_id];
                    self.start_ready(member, cidr, m, service, pull, monitor)
                        .await
                        .map(|(id, name)| {
                            out.started.push(id);
                            format!("started {name} on {}", m.name)
                        })
                }
                Step::Remove { container } => {
                    let c = &view.containers[container];
                    let m = &view.machines[&c.machine_id];
                    self.remove_on(member, cidr, m, container).await.map(|()| {
                        out.removed.insert(container.clone());
                        format!("removed {} on {}", c.name, m.name)
                    })
                }
            };
            match result {
                Ok(line) => {
                    tracing::info!(service = %service.id, "{line}");
                    out.steps.push(line);
                }
                Err(f) => {
                    out.failure = Some(f);
                    break;
                }
            }
        }
        out
    }

    /// One replacement on machine `m`; returns the new container's name.
    #[allow(clippy::too_many_arguments)]
    async fn replace(
        &self,
        member: &Member,
        cidr: &MeshCidr,
        m: &Machine,
        service: &Service,
        old: &str,
        order: Order,
        pull: Pull,
        monitor: Duration,
        out: &mut Outcome,
    ) -> Result<String, Failure> {
        if order == Order::StopFirst {
            self.remove_on(member, cidr, m, old).await?;
            out.removed.insert(old.to_string());
        }
        let (id, name) = self
            .start_ready(member, cidr, m, service, pull, monitor)
            .await?;
        out.started.push(id);
        if order == Order::StartFirst {
            self.remove_on(member, cidr, m, old).await.map_err(|f| {
                Failure::new(format!(
                    "{name} is ready, but the container it replaces stayed: {}",
                    f.reason
                ))
            })?;
            out.removed.insert(old.to_string());
        }
        Ok(name)
    }

    async fn remove_on(
        &self,
        member: &Member,
        cidr: &MeshCidr,
        m: &Machine,
        container: &str,
    ) -> Result<(), Failure> {
        let engine = self
            .engine(member, cidr, m)
            .await
            .map_err(|e| Failure::new(format!("{}: {}", m.name, ops_message(&e))))?;
        engine
            .remove(container)
            .await
            .map_err(|e| Failure::new(format!("removing a container on {}: {}", m.name, e.message)))
    }

    /// Starts a container of `service` on `m` and waits until it is ready; one that fails is
    /// removed, its last log lines kept for the reply.
    async fn start_ready(
        &self,
        member: &Member,
        cidr: &MeshCidr,
        m: &Machine,
        service: &Service,
        pull: Pull,
        monitor: Duration,
    ) -> Result<(String, String), Failure> {
        let (id, name) = self
            .start_on(member, cidr, m, service, pull)
            .await
            .map_err(|e| {
                Failure::new(format!(
                    "a container of revision {} did not start on {}: {}",
                    service.revision,
                    m.name,
                    ops_message(&e)
                ))
            })?;
        let engine = self
            .engine(member, cidr, m)
            .await
            .map_err(|e| Failure::new(format!("{}: {}", m.name, ops_message(&e))))?;
        let deadline = rollout::ready_deadline(&service.spec, monitor);
        let has_check = service.spec.healthcheck.is_some();
        let started = Instant::now();
        let mut first_start = 0;
        let why = loop {
            let verdict = match engine.inspect(&id).await {
                Ok(c) => {
                    if first_start == 0 {
                        first_start = c.started_at_ms;
                    }
                    rollout::judge(&c, has_check, first_start, started.elapsed(), deadline)
                }
                Err(e) if e.kind == OpsKind::NotFound => {
                    Verdict::Failed("it was removed by someone else".into())
                }
                Err(e) if started.elapsed() > deadline + Duration::from_secs(10) => {
                    Verdict::Failed(format!("its machine stopped answering: {}", e.message))
                }
                Err(_) => Verdict::Wait,
            };
            match verdict {
                Verdict::Ready => return Ok((id, name)),
                Verdict::Failed(why) => break why,
                Verdict::Wait => tokio::time::sleep(POLL).await,
            }
        };
        let logs = engine.tail(&id, FAILED_LOG_LINES).await.unwrap_or_default();
        if let Err(e) = engine.remove(&id).await {
            tracing::warn!(container = %name, error = %e.message, "cannot remove a failed new container");
        }
        Err(Failure {
            reason: format!("new container {name} on {}: {why}", m.name),
            logs,
        })
    }

    /// `history`: the revisions kept, oldest first, with how many containers run each.
    pub async fn service_history(
        &self,
        caller: &Caller,
        req: ServiceRef,
    ) -> Result<HistoryReply, ApiError> {
        self.require(caller, Role::Reader)?;
        let service = find_service(&self.read_services().await?, &req.service)?.clone();
        let containers = self.read_containers().await?;
        let count = |rev: u64| {
            containers
                .values()
                .filter(|c| c.service_id == service.id && c.revision == rev)
                .count()
        };
        let mut revisions: Vec<RevisionRow> = service
            .history
            .iter()
            .map(|h| RevisionRow {
                revision: h.revision,
                spec: h.spec.clone(),
                current: false,
                containers: count(h.revision),
            })
            .collect();
        revisions.sort_by_key(|r| r.revision);
        revisions.push(RevisionRow {
            revision: service.revision,
            spec: service.spec.clone(),
            current: true,
            containers: count(service.revision),
        });
        if caller.is_reader() {
            for r in &mut revisions {
                uncloud_common::files::hide_secret_digests(&mut r.spec);
            }
        }
        Ok(HistoryReply {
            service: service.id,
            revisions,
        })
    }
}

/// The revision `uc rollback` goes to: `to`, or else the newest earlier spec that was not
/// itself undone. Walking back from the current revision, it skips revisions with the current
/// spec and revisions between two of the same spec (a failed update that went back by itself,
/// or a rollback), so after a failed update `uc rollback` goes to what ran before, not to the
/// spec that failed. When nothing is left, it goes to the newest other spec (so a rollback
/// can be undone the same way).
fn earlier(
    service: &Service,
    to: Option<u64>,
) -> Result<&uncloud_common::model::ServiceRevision, ApiError> {
    if let Some(rev) = to {
        return service
            .history
            .iter()
            .find(|h| h.revision == rev)
            .ok_or_else(|| {
                let kept: Vec<String> = service
                    .history
                    .iter()
                    .map(|h| h.revision.to_string())
                    .collect();
                ApiError::new(
                    ErrorKind::NotFound,
                    if rev == service.revision {
                        format!("{} runs revision {rev} already", service.id)
                    } else {
                        format!(
                            "{} has no revision {rev} (kept: {}; see `uc service history {}`)",
                            service.id,
                            if kept.is_empty() {
                                "none".into()
                            } else {
                                kept.join(", ")
                            },
                            service.id
                        )
                    },
                )
            });
    }
    let mut history: Vec<&uncloud_common::model::ServiceRevision> =
        service.history.iter().collect();
    history.sort_by_key(|h| h.revision);
    // The specs in order, the current one last.
    let specs: Vec<&ServiceSpec> = history
        .iter()
        .map(|h| &h.spec)
        .chain(std::iter::once(&service.spec))
        .collect();
    let undone = |i: usize| i > 0 && specs[i - 1] == specs[i + 1];
    (0..history.len())
        .rev()
        .find(|&i| history[i].spec != service.spec && !undone(i))
        .or_else(|| {
            (0..history.len())
                .rev()
                .find(|&i| history[i].spec != service.spec)
        })
        .map(|i| history[i])
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "{} has no earlier revision to go back to (see `uc service history {}`)",
                    service.id, service.id
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use uncloud_common::model::ServiceRevision;

    fn spec(image: &str) -> ServiceSpec {
        ServiceSpec {
            image: image.into(),
            replicas: 1,
            ..Default::default()
        }
    }

    #[test]
    fn rollback_goes_to_what_ran_before_the_current_spec_or_the_revision_asked() {
        let s = Service {
            id: "web".into(),
            revision: 4,
            spec: spec("web:2"),
            history: vec![
                ServiceRevision {
                    revision: 1,
                    spec: spec("web:1"),
                },
                ServiceRevision {
                    revision: 2,
                    spec: spec("web:2"),
                },
                ServiceRevision {
                    revision: 3,
                    spec: spec("web:3"),
                },
            ],
            ..Default::default()
        };
        // 3 was undone (web:2 on both sides of it): before web:2, web:1.
        assert_eq!(earlier(&s, None).unwrap().revision, 1);
        // Two failed updates in a row, each undone: still web:1.
        let mut twice = s.clone();
        twice.history.push(ServiceRevision {
            revision: 4,
            spec: spec("web:2"),
        });
        twice.history.push(ServiceRevision {
            revision: 5,
            spec: spec("web:bad"),
        });
        twice.revision = 6;
        assert_eq!(earlier(&twice, None).unwrap().revision, 1);
        // A plain change: the one before.
        let mut plain = s.clone();
        plain.revision = 4;
        plain.spec = spec("web:4");
        assert_eq!(earlier(&plain, None).unwrap().revision, 3);
        // Back at web:1 with nothing before it: the newest other spec, so it can be undone.
        let mut back = s.clone();
        back.history.push(ServiceRevision {
            revision: 4,
            spec: spec("web:2"),
        });
        back.revision = 5;
        back.spec = spec("web:1");
        assert_eq!(earlier(&back, None).unwrap().revision, 4);
        assert_eq!(earlier(&s, Some(1)).unwrap().spec.image, "web:1");
        let e = earlier(&s, Some(9)).unwrap_err();
        assert!(e.message.contains("kept: 1, 2, 3"), "{e}");
        assert!(earlier(&s, Some(4))
            .unwrap_err()
            .message
            .contains("already"));
        let fresh = Service {
            id: "new".into(),
            spec: spec("x"),
            ..Default::default()
        };
        assert_eq!(earlier(&fresh, None).unwrap_err().kind, ErrorKind::NotFound);
    }
}

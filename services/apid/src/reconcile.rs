//! The per-machine reconciler: what no single command can do, each machine does for itself.
//!
//! - A global service runs one container on every machine it may use, also on machines that
//!   joined, or came back, after `uc run`: a machine that has none starts its own.
//! - A container whose service is gone from the state (removed on one side of a partition
//!   while this machine was on the other) is removed by its machine.
//!
//! Conservative, since commands act at the same moment: a service younger than [`GRACE`] is
//! left to the command that is creating it, a container younger than it to the command that
//! started it, and an action is taken only when two passes in a row ([`Debounce`]) want it.
//! Each machine acts only on itself, so two machines never race for one container.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use uncloud_common::constraint::{Constraint, Facts};
use uncloud_common::model::{Container, Machine, Service};

use crate::api::Apid;
use crate::services::Pull;

/// How long a new service or container is left to the command that makes it.
pub const GRACE: Duration = Duration::from_secs(60);
/// Time between passes.
pub const EVERY: Duration = Duration::from_secs(10);

/// How often a pass also removes file contents no spec names (it reads every content).
const FILES_EVERY_PASSES: u64 = 60;

/// What this machine should do about itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Start a container of this global service here. The revision is part of it, so an
    /// update under way (a new revision) restarts the count of passes.
    Start { service: String, revision: u64 },
    /// Remove this container: its service is gone.
    Remove { container: String, name: String },
}

/// The actions the state asks of machine `own` at `now_ms`. Pure.
pub fn wanted(
    own: &Machine,
    services: &BTreeMap<String, Service>,
    containers: &BTreeMap<String, Container>,
    now_ms: u64,
) -> BTreeSet<Action> {
    let grace = GRACE.as_millis() as u64;
    let mine: Vec<&Container> = containers
        .values()
        .filter(|c| c.machine_id == own.id)
        .collect();
    let mut out = BTreeSet::new();
    let facts = Facts::from(own);
    for s in services.values().filter(|s| s.spec.is_global()) {
        let settled = now_ms >= s.created_at_ms.saturating_add(grace);
        let pinned = s.spec.machines.is_empty()
            || s.spec
                .machines
                .iter()
                .any(|m| m.trim() == own.id || m.trim() == own.name);
        // A constraint that does not parse matches nothing (apid refused it when written).
        let constrained = s
            .spec
            .constraints
            .iter()
            .all(|c| Constraint::parse(c).is_ok_and(|c| c.matches(&facts)));
        let allowed = pinned && constrained && !own.drained;
        let has = mine.iter().any(|c| c.service_id == s.id);
        if settled && allowed && !has {
            out.insert(Action::Start {
                service: s.id.clone(),
                revision: s.revision,
            });
        }
    }
    for c in mine {
        let orphan = !c.service_id.is_empty() && !services.contains_key(&c.service_id);
        if orphan && now_ms >= c.created_at_ms.saturating_add(grace) {
            out.insert(Action::Remove {
                container: c.id.clone(),
                name: c.name.clone(),
            });
        }
    }
    out
}

/// Acts only on what two passes in a row wanted.
#[derive(Debug, Default)]
pub struct Debounce {
    last: BTreeSet<Action>,
}

impl Debounce {
    pub fn confirm(&mut self, now: BTreeSet<Action>) -> Vec<Action> {
        let both = now.intersection(&self.last).cloned().collect();
        self.last = now;
        both
    }
}

impl Apid {
    /// Runs the reconciler for as long as apid runs (a pass every [`EVERY`] once this machine
    /// is a member).
    pub async fn reconcile_forever(&self) {
        let mut debounce = Debounce::default();
        // The last error per action, so a failure that repeats is logged once.
        let mut errors: HashMap<Action, String> = HashMap::new();
        let mut forgetting = uncloud_common::files::Forgetting::default();
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for pass in 1u64.. {
            every.tick().await;
            if let Err(e) = self.reconcile_pass(&mut debounce, &mut errors).await {
                tracing::debug!(error = %e, "reconciler: state not readable this pass");
            }
            if pass % FILES_EVERY_PASSES == 0 && self.member().is_some() {
                if let Err(e) = self.forget_unreferenced_files(&mut forgetting).await {
                    tracing::debug!(error = %e, "reconciler: file contents not cleaned up this pass");
                }
            }
        }
    }

    async fn reconcile_pass(
        &self,
        debounce: &mut Debounce,
        errors: &mut HashMap<Action, String>,
    ) -> Result<(), uncloud_api::wire::ApiError> {
        let Some(member) = self.member() else {
            return Ok(());
        };
        let machines = self.read_machines().await?;
        let Some(own) = machines.get(&member.machine_id) else {
            return Ok(());
        };
        let services = self.read_services().await?;
        let containers = self.read_containers().await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let actions = debounce.confirm(wanted(own, &services, &containers, now_ms));
        if actions.is_empty() {
            return Ok(());
        }
        let cidr = self.mesh_cidr().await?;
        for action in actions {
            let result =
                match &action {
                    Action::Start { service, .. } => {
                        let s = &services[service];
                        match self.start_on(&member, &cidr, own, s, Pull::Missing).await {
                            Ok((id, name)) => {
                                tracing::info!(service = %s.id, container = %name, "reconciler: started this machine's container of a global service");
                                self.unless_removed_meanwhile(
                                    &member, &cidr, own, &s.id, &id, &name,
                                )
                                .await;
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Action::Remove { container, name } => {
                        match self.engine(&member, &cidr, own).await {
                        Ok(engine) => engine.remove(container).await.map(|()| {
                            tracing::info!(container = %name, "reconciler: removed a container whose service is gone");
                        }),
                        Err(e) => Err(e),
                    }
                    }
                };
            match result {
                Ok(()) => {
                    errors.remove(&action);
                }
                Err(e) => {
                    if errors.get(&action) != Some(&e.message) {
                        tracing::warn!(?action, error = %e.message, "reconciler: cannot do it (tried again every pass)");
                        errors.insert(action, e.message);
                    }
                }
            }
        }
        Ok(())
    }

    /// `uc rm` may have removed the service while its container started here (too late for
    /// it to see the container): then the container goes now, not a grace period later.
    async fn unless_removed_meanwhile(
        &self,
        member: &crate::api::Member,
        cidr: &uncloud_common::address::MeshCidr,
        own: &Machine,
        service: &str,
        container: &str,
        name: &str,
    ) {
        let gone = self
            .read_services()
            .await
            .is_ok_and(|now| !now.contains_key(service));
        if !gone {
            return;
        }
        let removed = match self.engine(member, cidr, own).await {
            Ok(engine) => engine.remove(container).await,
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => {
                tracing::info!(container = %name, "reconciler: removed the container it started: its service was removed meanwhile")
            }
            Err(e) => {
                tracing::warn!(container = %name, error = %e.message, "reconciler: its service was removed while it started; removed with the orphans later")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uncloud_common::model::{ServiceSpec, MODE_GLOBAL};

    const NOW: u64 = 1_000_000_000;

    fn machine(id: &str) -> Machine {
        Machine {
            id: id.into(),
            name: format!("name-{id}"),
            ..Default::default()
        }
    }

    fn service(id: &str, global: bool, machines: &[&str], created: u64) -> (String, Service) {
        (
            id.to_string(),
            Service {
                id: id.into(),
                name: id.into(),
                created_at_ms: created,
                spec: ServiceSpec {
                    image: "busybox".into(),
                    mode: if global {
                        MODE_GLOBAL.into()
                    } else {
                        String::new()
                    },
                    replicas: u32::from(!global),
                    machines: machines.iter().map(|m| m.to_string()).collect(),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
    }

    fn container(id: &str, machine: &str, service: &str, created: u64) -> (String, Container) {
        (
            id.to_string(),
            Container {
                id: id.into(),
                name: format!("c-{id}"),
                machine_id: machine.into(),
                service_id: service.into(),
                created_at_ms: created,
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_machine_without_its_container_of_a_global_service_starts_one() {
        let old = NOW - 3_600_000;
        let services = BTreeMap::from([
            service("agent", true, &[], old),
            service("pinned", true, &["m2"], old),
            service("by-name", true, &["name-m1"], old),
            service("web", false, &[], old),
            service("fresh", true, &[], NOW - 1_000),
        ]);
        let containers = BTreeMap::from([container("c1", "m2", "agent", old)]);
        let got = wanted(&machine("m1"), &services, &containers, NOW);
        assert_eq!(
            got,
            BTreeSet::from([
                Action::Start {
                    service: "agent".into(),
                    revision: 0
                },
                Action::Start {
                    service: "by-name".into(),
                    revision: 0
                },
            ])
        );
        // m2 has agent already, and is the one pinned.
        let got = wanted(&machine("m2"), &services, &containers, NOW);
        assert_eq!(
            got,
            BTreeSet::from([Action::Start {
                service: "pinned".into(),
                revision: 0
            }])
        );
        // A drained machine starts none; one without the label a constraint asks for neither.
        let drained = Machine {
            drained: true,
            ..machine("m1")
        };
        assert!(wanted(&drained, &services, &containers, NOW).is_empty());
        let (id, mut ssd) = service("ssd", true, &[], old);
        ssd.spec.constraints = vec!["node.labels.disk==ssd".into()];
        let services = BTreeMap::from([(id, ssd)]);
        assert!(wanted(&machine("m1"), &services, &containers, NOW).is_empty());
        let mut labelled = machine("m1");
        labelled.labels.insert("disk".into(), "ssd".into());
        assert_eq!(wanted(&labelled, &services, &containers, NOW).len(), 1);
        // An architecture constraint: only a machine of that architecture starts one.
        let (id, mut web) = service("web", true, &[], old);
        web.spec.constraints = vec!["node.platform.arch==x86_64".into()];
        let services = BTreeMap::from([(id, web)]);
        let arm = Machine {
            arch: "aarch64".into(),
            ..machine("m1")
        };
        let amd = Machine {
            arch: "x86_64".into(),
            ..machine("m1")
        };
        assert!(wanted(&arm, &services, &containers, NOW).is_empty());
        assert_eq!(wanted(&amd, &services, &containers, NOW).len(), 1);
    }

    #[test]
    fn a_container_whose_service_is_gone_is_removed_by_its_machine_after_the_grace() {
        let old = NOW - 3_600_000;
        let services = BTreeMap::from([service("web", false, &[], old)]);
        let containers = BTreeMap::from([
            container("c1", "m1", "web", old),
            container("c2", "m1", "gone", old),
            container("c3", "m1", "gone", NOW - 1_000),
            container("c4", "m2", "gone", old),
            container("c5", "m1", "", old),
        ]);
        let got = wanted(&machine("m1"), &services, &containers, NOW);
        assert_eq!(
            got,
            BTreeSet::from([Action::Remove {
                container: "c2".into(),
                name: "c-c2".into()
            }])
        );
    }

    #[test]
    fn only_what_two_passes_in_a_row_want_is_done() {
        let a = Action::Start {
            service: "a".into(),
            revision: 1,
        };
        let b = Action::Start {
            service: "b".into(),
            revision: 1,
        };
        let mut d = Debounce::default();
        assert!(d.confirm(BTreeSet::from([a.clone()])).is_empty());
        assert_eq!(
            d.confirm(BTreeSet::from([a.clone(), b.clone()])),
            vec![a.clone()]
        );
        assert_eq!(d.confirm(BTreeSet::from([b.clone()])), [b]);
        assert!(d.confirm(BTreeSet::new()).is_empty());
        // A new revision in between: counted anew.
        let a2 = Action::Start {
            service: "a".into(),
            revision: 2,
        };
        d.confirm(BTreeSet::from([a]));
        assert!(d.confirm(BTreeSet::from([a2])).is_empty());
    }
}

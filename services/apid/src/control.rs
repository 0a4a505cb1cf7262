//! `container_action`: `uc stop|start|restart` of a service's containers, each asked of its
//! machine's shim, all at once. The spec stays as it is: a stopped container is still the
//! service's (Docker does not restart a container stopped by hand, and the reconciler counts
//! it), and `uc start` brings it back.

use futures::future::join_all;
use uncloud_api::service::{ActionReply, ContainerAction, MachineFailure};
use uncloud_api::wire::{ApiError, ErrorKind};
use uncloud_common::model::Container;
use uncloud_pki::Role;

use crate::api::{Apid, Caller};
use crate::services::{find_service, ops_message};

/// Docker's own default grace period for a stop.
const DEFAULT_GRACE_SECS: u32 = 10;

/// What can be done to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Stop,
    Start,
    Restart,
}

impl Act {
    pub fn parse(s: &str) -> Result<Act, ApiError> {
        match s {
            "stop" => Ok(Act::Stop),
            "start" => Ok(Act::Start),
            "restart" => Ok(Act::Restart),
            other => Err(ApiError::new(
                ErrorKind::Invalid,
                format!("{other:?}: expected stop, start or restart"),
            )),
        }
    }
}

/// The containers of a service `which` picks: all of them when empty, else the one whose name
/// or id is `which` or starts with it (one only). Pure.
pub fn pick<'a>(
    containers: &[&'a Container],
    which: &str,
    service: &str,
) -> Result<Vec<&'a Container>, ApiError> {
    if which.is_empty() {
        return Ok(containers.to_vec());
    }
    if let Some(exact) = containers.iter().find(|c| c.name == which || c.id == which) {
        return Ok(vec![exact]);
    }
    let prefixed: Vec<&Container> = containers
        .iter()
        .filter(|c| c.name.starts_with(which) || c.id.starts_with(which))
        .copied()
        .collect();
    match prefixed.len() {
        1 => Ok(prefixed),
        0 => Err(ApiError::new(
            ErrorKind::NotFound,
            format!("{service} has no container {which:?} (see `uc ps`)"),
        )),
        _ => Err(ApiError::new(
            ErrorKind::Invalid,
            format!(
                "{which:?} names several containers of {service}: {}",
                prefixed
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

impl Apid {
    pub async fn container_action(
        &self,
        caller: &Caller,
        req: ContainerAction,
    ) -> Result<ActionReply, ApiError> {
        let member = self.require(caller, Role::Admin)?;
        let act = Act::parse(&req.action)?;
        let service = find_service(&self.read_services().await?, &req.service)?.clone();
        let all = self.read_containers().await?;
        let mut of_service: Vec<&Container> = all
            .values()
            .filter(|c| c.service_id == service.id)
            .collect();
        of_service.sort_by(|a, b| a.name.cmp(&b.name));
        let targets = pick(&of_service, &req.container, &service.id)?;
        let machines = self.read_machines().await?;
        let cidr = self.mesh_cidr().await?;
        // Asked for, else the service's `stop_grace_period`; always a number on the wire (older
        // shims pass it to Docker as it is).
        let grace = req
            .grace_secs
            .or(service.spec.stop_grace_secs())
            .unwrap_or(DEFAULT_GRACE_SECS)
            .min(3600) as i32;
        let results = join_all(targets.iter().map(|c| {
            let (member, machines, cidr) = (&member, &machines, &cidr);
            async move {
                let Some(m) = machines.get(&c.machine_id) else {
                    return Err(MachineFailure {
                        machine: c.machine_id.clone(),
                        error: format!("{}: its machine left the network", c.name),
                    });
                };
                let fail = |e: uncloud_common::docker::OpsError| MachineFailure {
                    machine: m.name.clone(),
                    error: format!("{}: {}", c.name, ops_message(&e)),
                };
                let engine = self.engine(member, cidr, m).await.map_err(fail)?;
                match act {
                    Act::Stop => engine.stop(&c.id, grace).await,
                    Act::Start => engine.start(&c.id).await,
                    Act::Restart => engine.restart(&c.id, grace).await,
                }
                .map(|()| c.name.clone())
                .map_err(fail)
            }
        }))
        .await;
        let mut reply = ActionReply::default();
        for r in results {
            match r {
                Ok(name) => reply.done.push(name),
                Err(f) => reply.failed.push(f),
            }
        }
        tracing::info!(service = %service.id, action = req.action, done = reply.done.len(), failed = reply.failed.len(), "containers");
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, name: &str) -> Container {
        Container {
            id: id.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn containers_are_picked_by_name_id_or_a_prefix_naming_one() {
        let (a, b) = (c("abc123", "web-1a2b"), c("abd456", "web-3c4d"));
        let all = [&a, &b];
        assert_eq!(pick(&all, "", "web").unwrap().len(), 2);
        assert_eq!(pick(&all, "web-3c4d", "web").unwrap()[0].id, "abd456");
        assert_eq!(pick(&all, "abc", "web").unwrap()[0].name, "web-1a2b");
        let e = pick(&all, "web-", "web").unwrap_err();
        assert!(e.message.contains("web-1a2b, web-3c4d"), "{e}");
        assert_eq!(
            pick(&all, "zz", "web").unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert!(Act::parse("pause").is_err());
    }
}

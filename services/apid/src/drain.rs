//! `uc machine drain NAME` and `uc machine enable NAME`.
//!
//! Draining marks the machine in the state (`Machine::drained`, through stated, so every
//! machine's placement and reconciler see it), then rolls each service that has containers on
//! it out again with its own spec: placement no longer offers the machine, so the rollout
//! starts each replicated container's successor on another machine, waits until it is ready,
//! and only then removes the one on the drained machine; a global service's container there
//! is removed. New containers (`uc run`, `uc scale`, deploys, the reconciler) stay off it
//! until `uc machine enable` clears the mark. Enabling moves nothing back (as Docker Swarm):
//! global services return by the reconciler, replicated ones as they are scaled or updated.

use uncloud_api::service::{DrainReply, DrainRequest, DrainedService};
use uncloud_api::wire::ApiError;
use uncloud_pki::Role;

use crate::api::{state_error, Apid, Caller};

impl Apid {
    pub async fn drain_machine(
        &self,
        caller: &Caller,
        req: DrainRequest,
    ) -> Result<DrainReply, ApiError> {
        let member = self.require(caller, Role::Admin)?;
        let machine = self.find_machine(&req.machine).await?;
        self.state()
            .set_machine_drained(&machine.id, req.drain)
            .await
            .map_err(state_error)?;
        tracing::info!(machine = %machine.name, drain = req.drain, "machine drained or enabled");
        let mut reply = DrainReply {
            machine: machine.name.clone(),
            services: Vec::new(),
        };
        if !req.drain {
            return Ok(reply);
        }
        let containers = self.read_containers().await?;
        let services = self.read_services().await?;
        for service in services.values() {
            let on_it = containers
                .values()
                .any(|c| c.service_id == service.id && c.machine_id == machine.id);
            if !on_it {
                continue;
            }
            let (steps, error) = match self.reroll(&member, service).await {
                Ok(done) => done,
                Err(e) => (Vec::new(), e.message),
            };
            reply.services.push(DrainedService {
                service: service.id.clone(),
                steps,
                error,
            });
        }
        Ok(reply)
    }
}

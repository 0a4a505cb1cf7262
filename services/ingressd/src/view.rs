//! What ingressd knows of the state: the parts it serves from, as one value.

use std::collections::{BTreeMap, HashMap};

use uncloud_common::liveness::Liveness;
use uncloud_common::model::{Certificate, Container, Machine, Service};

/// This machine's copy of what ingress needs, kept up to date by [`crate::mirror`].
#[derive(Debug, Clone, Default)]
pub struct View {
    /// This machine's id.
    pub me: String,
    pub machines: BTreeMap<String, Machine>,
    pub services: BTreeMap<String, Service>,
    pub containers: BTreeMap<String, Container>,
    pub certificates: BTreeMap<String, Certificate>,
    /// How this machine sees the others (absent: never heard of, so down).
    pub liveness: HashMap<String, Liveness>,
}

/// The role that makes a machine serve ingress.
pub const INGRESS_ROLE: &str = "ingress";

impl View {
    /// Whether `machine` can be reached from here (this machine always can).
    pub fn reachable(&self, machine: &str) -> bool {
        machine == self.me || self.liveness.get(machine).is_some_and(|l| l.is_reachable())
    }

    /// Whether this machine has the ingress role.
    pub fn serves(&self) -> bool {
        self.machines
            .get(&self.me)
            .is_some_and(|m| m.roles.iter().any(|r| r == INGRESS_ROLE))
    }

    /// Ingress machines this machine can reach (itself included when it is one), sorted.
    pub fn reachable_ingress(&self) -> Vec<String> {
        self.machines
            .values()
            .filter(|m| m.roles.iter().any(|r| r == INGRESS_ROLE))
            .filter(|m| self.reachable(&m.id))
            .map(|m| m.id.clone())
            .collect()
    }
}

//! The `uncloud` Docker network: a bridge on this machine's mesh subnet.
//!
//! Containers on machine X get addresses in `10.210.X.0/24` behind the bridge `uncloud0`
//! whose gateway is `10.210.X.1` (the machine's mesh address), so every machine reaches them
//! through the mesh without NAT. Docker's own masquerading is off for this network: traffic
//! between containers and the mesh keeps its true source address.
//!
//! [`plan`] compares what exists with what should (pure, tested without an engine);
//! [`ensure`] applies it: create the network, keep it, or, when a leftover network has the
//! wrong subnet, gateway, bridge or MTU, recreate it and reconnect the containers that were on
//! it. Nothing outside this one network is touched.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::models::{
    Ipam, IpamConfig, NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest,
    NetworkInspect,
};
use bollard::Docker;

/// Labels every network and container the shim creates.
pub const MANAGED_LABEL: &str = "org.uncloud.managed";
const OPT_BRIDGE: &str = "com.docker.network.bridge.name";
const OPT_MTU: &str = "com.docker.network.driver.mtu";
const OPT_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";

/// The network as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub name: String,
    pub bridge: String,
    /// Network address of the machine's /24.
    pub subnet: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mtu: u16,
}

impl Desired {
    pub fn subnet_cidr(&self) -> String {
        format!("{}/24", self.subnet)
    }

    fn options(&self) -> HashMap<String, String> {
        HashMap::from([
            (OPT_BRIDGE.to_string(), self.bridge.clone()),
            (OPT_MTU.to_string(), self.mtu.to_string()),
            (OPT_MASQUERADE.to_string(), "false".to_string()),
        ])
    }

    /// The create request; only fields Docker API 1.41 (Debian's docker.io 20.10) knows.
    pub fn create_request(&self) -> NetworkCreateRequest {
        NetworkCreateRequest {
            name: self.name.clone(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(self.subnet_cidr()),
                    gateway: Some(self.gateway.to_string()),
                    ..Default::default()
                }]),
                options: None,
            }),
            options: Some(self.options()),
            labels: Some(HashMap::from([(MANAGED_LABEL.into(), "true".into())])),
            ..Default::default()
        }
    }
}

/// What to do about the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create,
    Keep,
    /// Remove and create again; why, in words for the log.
    Recreate(Vec<String>),
}

/// Compares an existing network (if any) with the desired one.
pub fn plan(desired: &Desired, existing: Option<&NetworkInspect>) -> Action {
    let Some(n) = existing else {
        return Action::Create;
    };
    let mut why = Vec::new();
    if n.driver.as_deref() != Some("bridge") {
        why.push(format!("driver is {:?}, not bridge", n.driver));
    }
    let configs = n
        .ipam
        .as_ref()
        .and_then(|i| i.config.clone())
        .unwrap_or_default();
    let want_subnet = desired.subnet_cidr();
    let want_gateway = desired.gateway.to_string();
    match configs.as_slice() {
        [c] => {
            if c.subnet.as_deref() != Some(want_subnet.as_str()) {
                why.push(format!("subnet is {:?}, not {want_subnet}", c.subnet));
            }
            if c.gateway.as_deref() != Some(want_gateway.as_str()) {
                why.push(format!("gateway is {:?}, not {want_gateway}", c.gateway));
            }
        }
        other => why.push(format!(
            "{} address ranges, not one {want_subnet}",
            other.len()
        )),
    }
    let options = n.options.clone().unwrap_or_default();
    for (key, want) in desired.options() {
        let have = options.get(&key);
        if have != Some(&want) {
            why.push(format!("option {key} is {have:?}, not {want:?}"));
        }
    }
    if why.is_empty() {
        Action::Keep
    } else {
        Action::Recreate(why)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot {what} network {name}: {source}")]
    Engine {
        what: &'static str,
        name: String,
        source: bollard::errors::Error,
    },
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub action: Action,
    pub id: String,
    /// Containers disconnected from the old network and connected to the new one.
    pub reconnected: Vec<String>,
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Makes the network match `desired`.
pub async fn ensure(docker: &Docker, desired: &Desired) -> Result<Outcome, NetworkError> {
    let err = |what, source| NetworkError::Engine {
        what,
        name: desired.name.clone(),
        source,
    };
    let existing = match docker.inspect_network(&desired.name, None).await {
        Ok(n) => Some(n),
        Err(e) if not_found(&e) => None,
        Err(e) => return Err(err("inspect", e)),
    };
    let action = plan(desired, existing.as_ref());
    let mut reconnected = Vec::new();
    match &action {
        Action::Keep => {
            let id = existing.and_then(|n| n.id).unwrap_or_default();
            return Ok(Outcome {
                action,
                id,
                reconnected,
            });
        }
        Action::Create => {}
        Action::Recreate(why) => {
            tracing::warn!(network = %desired.name, reasons = ?why, "repairing the network");
            let attached: Vec<String> = existing
                .as_ref()
                .and_then(|n| n.containers.as_ref())
                .map(|c| c.keys().cloned().collect())
                .unwrap_or_default();
            for container in &attached {
                docker
                    .disconnect_network(
                        &desired.name,
                        NetworkDisconnectRequest {
                            container: container.clone(),
                            force: Some(true),
                        },
                    )
                    .await
                    .map_err(|e| err("disconnect a container from", e))?;
            }
            docker
                .remove_network(&desired.name)
                .await
                .map_err(|e| err("remove", e))?;
            reconnected = attached;
        }
    }
    let created = docker
        .create_network(desired.create_request())
        .await
        .map_err(|e| err("create", e))?;
    for container in &reconnected {
        docker
            .connect_network(
                &desired.name,
                NetworkConnectRequest {
                    container: container.clone(),
                    endpoint_config: None,
                },
            )
            .await
            .map_err(|e| err("reconnect a container to", e))?;
    }
    tracing::info!(network = %desired.name, subnet = %desired.subnet_cidr(), ?action, "network ready");
    Ok(Outcome {
        action,
        id: created.id,
        reconnected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> Desired {
        Desired {
            name: "uncloud".into(),
            bridge: "uncloud0".into(),
            subnet: "10.210.3.0".parse().unwrap(),
            gateway: "10.210.3.1".parse().unwrap(),
            mtu: 1412,
        }
    }

    /// What the engine reports for a network created from `d`.
    fn as_inspected(d: &Desired) -> NetworkInspect {
        let req = d.create_request();
        NetworkInspect {
            name: Some(req.name),
            id: Some("abc".into()),
            driver: req.driver,
            ipam: req.ipam,
            options: req.options,
            ..Default::default()
        }
    }

    #[test]
    fn missing_is_created_and_matching_is_kept() {
        let d = desired();
        assert_eq!(plan(&d, None), Action::Create);
        assert_eq!(plan(&d, Some(&as_inspected(&d))), Action::Keep);
    }

    #[test]
    fn every_difference_is_named() {
        let d = desired();
        let mut wrong = d.clone();
        wrong.subnet = "10.99.0.0".parse().unwrap();
        wrong.gateway = "10.99.0.1".parse().unwrap();
        wrong.mtu = 1500;
        wrong.bridge = "br-x".into();
        let Action::Recreate(why) = plan(&d, Some(&as_inspected(&wrong))) else {
            panic!("not recreated");
        };
        let text = why.join("; ");
        for word in ["subnet", "gateway", OPT_MTU, OPT_BRIDGE] {
            assert!(text.contains(word), "{word} missing from {text}");
        }
        let mut masq = as_inspected(&d);
        masq.options.as_mut().unwrap().remove(OPT_MASQUERADE);
        assert!(matches!(plan(&d, Some(&masq)), Action::Recreate(_)));
        let mut two = as_inspected(&d);
        two.ipam
            .as_mut()
            .unwrap()
            .config
            .as_mut()
            .unwrap()
            .push(IpamConfig::default());
        assert!(matches!(plan(&d, Some(&two)), Action::Recreate(_)));
    }

    #[test]
    fn the_create_request_uses_only_api_1_41_fields() {
        let json = serde_json::to_value(desired().create_request()).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        for k in &keys {
            assert!(
                ["Name", "Driver", "IPAM", "Options", "Labels"].contains(k),
                "field {k} is not in Docker API 1.41's NetworkCreate"
            );
        }
    }
}

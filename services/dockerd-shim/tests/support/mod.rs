//! A real dockerd with the busybox test image and the `uncloud` network on 10.210.X.0/24.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use dockerd_shim::network::{self, Desired};
use uncloud_testkit::Dockerd;

pub const IMAGE: &str = "uncloud-test/busybox:1";

/// The `uncloud` network of machine `x`.
pub fn desired(x: u8) -> Desired {
    Desired {
        name: "uncloud".into(),
        bridge: "uncloud0".into(),
        subnet: Ipv4Addr::new(10, 210, x, 0),
        gateway: gateway(x),
        mtu: 1412,
    }
}

pub const fn gateway(x: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 210, x, 1)
}

/// Starts dockerd, imports [`IMAGE`], connects and ensures machine `x`'s network.
pub async fn engine(x: u8) -> (Dockerd, bollard::Docker) {
    ready(Dockerd::start(), x).await
}

/// [`engine`] in a namespace the test prepared.
pub async fn engine_in(ns: uncloud_testkit::Netns, x: u8) -> (Dockerd, bollard::Docker) {
    ready(Dockerd::start_in(ns), x).await
}

async fn ready(engine: Dockerd, x: u8) -> (Dockerd, bollard::Docker) {
    engine.import_busybox(IMAGE);
    let docker = dockerd_shim::engine::connect(&engine.socket).await.unwrap();
    network::ensure(&docker, &desired(x)).await.unwrap();
    (engine, docker)
}

pub fn cmd(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// `org.uncloud.Docker1` for machine `x`, served on a private bus, and a client of it.
pub struct Api {
    pub bus: uncloud_testkit::PrivateBus,
    pub client: zbus::Connection,
    _server: zbus::Connection,
}

pub async fn serve_api(docker: bollard::Docker, x: u8) -> Api {
    let bus = uncloud_testkit::PrivateBus::start();
    let server = bus.connect().await;
    dockerd_shim::dbus::serve(
        &server,
        dockerd_shim::dbus::Docker1 {
            local: local(docker, x),
        },
    )
    .await
    .unwrap();
    let client = bus.connect().await;
    Api {
        bus,
        client,
        _server: server,
    }
}

impl Api {
    /// Calls `method` with `body` (a tuple of arguments).
    pub async fn call<B>(&self, method: &str, body: &B) -> zbus::Result<zbus::Message>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.client
            .call_method(
                Some("org.uncloud.Docker1"),
                "/org/uncloud/Docker1",
                Some("org.uncloud.Docker1"),
                method,
                body,
            )
            .await
    }
}

/// What operations on machine `x` (id `m`) need.
pub fn local(docker: bollard::Docker, x: u8) -> dockerd_shim::engine::Local {
    dockerd_shim::engine::Local {
        docker,
        machine_id: "m".into(),
        network: "uncloud".into(),
        dns: gateway(x),
        draining: Default::default(),
        drain: std::time::Duration::ZERO,
        ingress: None,
        files: None,
    }
}

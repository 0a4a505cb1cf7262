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

pub fn gateway(x: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 210, x, 1)
}

/// Starts dockerd, imports [`IMAGE`], connects and ensures machine `x`'s network.
pub async fn engine(x: u8) -> (Dockerd, bollard::Docker) {
    let engine = Dockerd::start();
    engine.import_busybox(IMAGE);
    let docker = dockerd_shim::engine::connect(&engine.socket).await.unwrap();
    network::ensure(&docker, &desired(x)).await.unwrap();
    (engine, docker)
}

pub fn cmd(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

//! The `uncloud` network against a real dockerd the test starts.

mod support;

use dockerd_shim::network::{self, Action, Desired};
use support::IMAGE;
use uncloud_testkit::Dockerd;

fn desired() -> Desired {
    support::desired(3)
}

fn container_ip(engine: &Dockerd, name: &str, network: &str) -> String {
    engine.docker_ok(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        name,
    ])
}

#[tokio::test]
async fn the_network_gets_the_machine_subnet_and_is_kept() {
    let engine = Dockerd::start();
    let docker = dockerd_shim::engine::connect(&engine.socket).await.unwrap();
    let d = desired();
    let first = network::ensure(&docker, &d).await.unwrap();
    assert_eq!(first.action, Action::Create);

    let ipam = engine.docker_ok(&[
        "network",
        "inspect",
        "--format",
        "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}",
        "uncloud",
    ]);
    assert_eq!(ipam, "10.210.3.0/24 10.210.3.1");
    // The bridge device carries the name meshd forwards to and the mesh's MTU.
    engine.import_busybox(IMAGE);
    engine.docker_ok(&[
        "run",
        "-d",
        "--name",
        "c1",
        "--network",
        "uncloud",
        IMAGE,
        "sleep",
        "300",
    ]);
    let link = engine.ns.ip(&["link", "show", "uncloud0"]);
    assert!(link.contains("mtu 1412"), "{link}");
    let ip = container_ip(&engine, "c1", "uncloud");
    assert!(ip.starts_with("10.210.3."), "{ip}");

    // Again: nothing to do, same network.
    let second = network::ensure(&docker, &d).await.unwrap();
    assert_eq!(second.action, Action::Keep);
    assert_eq!(second.id, first.id);
    assert_eq!(container_ip(&engine, "c1", "uncloud"), ip);
}

#[tokio::test]
async fn a_leftover_network_is_repaired_and_nothing_else_is_touched() {
    let engine = Dockerd::start();
    engine.import_busybox(IMAGE);
    // A network called uncloud from an earlier life with another subnet, a container on it;
    // and an unrelated network and container.
    engine.docker_ok(&["network", "create", "--subnet", "10.99.0.0/24", "uncloud"]);
    engine.docker_ok(&["network", "create", "--subnet", "10.98.0.0/24", "other"]);
    for (name, net) in [("ours", "uncloud"), ("theirs", "other")] {
        engine.docker_ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            net,
            IMAGE,
            "sleep",
            "300",
        ]);
    }
    let other_id = engine.docker_ok(&["network", "inspect", "--format", "{{.Id}}", "other"]);
    let theirs_ip = container_ip(&engine, "theirs", "other");

    let docker = dockerd_shim::engine::connect(&engine.socket).await.unwrap();
    let outcome = network::ensure(&docker, &desired()).await.unwrap();
    let Action::Recreate(why) = &outcome.action else {
        panic!("not repaired: {outcome:?}");
    };
    assert!(why.iter().any(|w| w.contains("subnet")), "{why:?}");
    assert_eq!(outcome.reconnected.len(), 1);

    let ours_ip = container_ip(&engine, "ours", "uncloud");
    assert!(ours_ip.starts_with("10.210.3."), "{ours_ip}");
    let running = engine.docker_ok(&["inspect", "--format", "{{.State.Running}}", "ours"]);
    assert_eq!(running, "true");
    // The unrelated network and its container are as they were.
    assert_eq!(
        engine.docker_ok(&["network", "inspect", "--format", "{{.Id}}", "other"]),
        other_id
    );
    assert_eq!(container_ip(&engine, "theirs", "other"), theirs_ip);
    assert_eq!(
        engine.docker_ok(&["inspect", "--format", "{{.State.Running}}", "theirs"]),
        "true"
    );
    assert_eq!(
        network::ensure(&docker, &desired()).await.unwrap().action,
        Action::Keep
    );
}

#[tokio::test]
async fn an_engine_that_is_down_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = dockerd_shim::engine::connect(&dir.path().join("nothing.sock"))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("cannot reach the Docker engine") && text.contains("nothing.sock"),
        "{text}"
    );
}

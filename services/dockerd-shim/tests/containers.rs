//! Container lifecycle and bad input against a real dockerd the test starts.

mod support;

use std::net::Ipv4Addr;

use dockerd_shim::containers::{self, ContainerError};
use support::IMAGE;
use uncloud_common::model::{ContainerState, Service, ServiceSpec};
use uncloud_testkit::Dockerd;

fn service(id: &str, spec: ServiceSpec) -> Service {
    Service {
        id: id.into(),
        name: format!("svc-{id}"),
        revision: 2,
        spec,
        ..Default::default()
    }
}

fn sleeper(publish: &[&str]) -> ServiceSpec {
    ServiceSpec {
        image: IMAGE.into(),
        command: vec!["sleep".into(), "300".into()],
        publish: publish.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    }
}

async fn engine() -> (Dockerd, bollard::Docker) {
    support::engine(3).await
}

const GATEWAY: Ipv4Addr = support::gateway(3);

fn all_containers(engine: &Dockerd) -> Vec<String> {
    engine
        .docker_ok(&["ps", "-a", "--format", "{{.Names}}"])
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_whole_lifecycle() {
    let (engine, docker) = engine().await;
    let svc = service("s1", sleeper(&["18080:80"]));
    let id = containers::run(&docker, &svc, "web-1", "uncloud", GATEWAY)
        .await
        .unwrap();

    let c = containers::inspect(&docker, &id, "m1", "uncloud")
        .await
        .unwrap();
    assert_eq!(c.state, ContainerState::Running);
    assert_eq!(
        (c.name.as_str(), c.service_id.as_str(), c.revision),
        ("web-1", "s1", 2)
    );
    assert_eq!(c.machine_id, "m1");
    assert!(c.ip.starts_with("10.210.3."), "{c:?}");
    assert!(c.image_digest.starts_with("sha256:"), "{c:?}");
    assert!(c.healthy);
    assert!(
        c.created_at_ms > 1_700_000_000_000 && c.started_at_ms >= c.created_at_ms,
        "{c:?}"
    );
    // DNS goes to the machine's mesh address with the internal search domain; the host port
    // is published.
    let dns = engine.docker_ok(&[
        "inspect",
        "--format",
        "{{.HostConfig.Dns}} {{.HostConfig.DnsSearch}} {{.HostConfig.PortBindings}}",
        "web-1",
    ]);
    assert_eq!(
        dns,
        "[10.210.3.1] [internal] map[80/tcp:[map[HostIp: HostPort:18080]]]"
    );

    let st = dockerd_shim::stats::stats(&docker, &id).await.unwrap();
    assert!(st.memory_bytes > 0 && st.pids >= 1, "{st:?}");

    containers::stop(&docker, &id, 1).await.unwrap();
    let c = containers::inspect(&docker, &id, "m1", "uncloud")
        .await
        .unwrap();
    assert_eq!(c.state, ContainerState::Exited);
    assert!(c.finished_at_ms >= c.started_at_ms, "{c:?}");
    containers::stop(&docker, &id, 1).await.unwrap(); // stopping twice is fine
    containers::start(&docker, &id).await.unwrap();
    containers::restart(&docker, &id, 1).await.unwrap();
    let c = containers::inspect(&docker, &id, "m1", "uncloud")
        .await
        .unwrap();
    assert_eq!(c.state, ContainerState::Running);

    containers::remove(&docker, &id).await.unwrap();
    assert!(matches!(
        containers::inspect(&docker, &id, "m1", "uncloud").await,
        Err(ContainerError::NotFound(_))
    ));
    assert!(all_containers(&engine).is_empty());
}

/// Capabilities, sysctls and the stop signal and grace period reach the container.
#[tokio::test]
async fn capabilities_sysctls_and_the_stop_signal_take_effect() {
    let (engine, docker) = engine().await;
    // PID 1 ignores SIGTERM (no handler) but exits 0 on SIGUSR1.
    let spec = ServiceSpec {
        image: IMAGE.into(),
        command: vec![
            "sh".into(),
            "-c".into(),
            "trap 'exit 0' USR1; while true; do sleep 1; done".into(),
        ],
        cap_add: vec!["NET_ADMIN".into()],
        cap_drop: vec!["MKNOD".into()],
        sysctls: [("net.core.somaxconn".to_string(), "1234".to_string())].into(),
        stop_signal: "SIGUSR1".into(),
        stop_grace_ms: 60_000,
        ..Default::default()
    };
    let id = containers::run(&docker, &service("s2", spec), "tuned-1", "uncloud", GATEWAY)
        .await
        .unwrap();
    let somaxconn = engine.docker_ok(&["exec", "tuned-1", "cat", "/proc/sys/net/core/somaxconn"]);
    assert_eq!(somaxconn, "1234");
    // Changing a link needs CAP_NET_ADMIN.
    engine.docker_ok(&["exec", "tuned-1", "ip", "link", "set", "lo", "mtu", "1300"]);
    let caps = engine.docker_ok(&[
        "inspect",
        "--format",
        "{{.HostConfig.CapDrop}} {{.Config.StopSignal}} {{.Config.StopTimeout}}",
        "tuned-1",
    ]);
    assert_eq!(caps, "[MKNOD] SIGUSR1 60");

    // A stop with the container's own grace period sends SIGUSR1: a clean exit at once, not
    // SIGKILL after 60 s.
    let started = std::time::Instant::now();
    containers::stop(&docker, &id, -1).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let code = engine.docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", "tuned-1"]);
    assert_eq!(code, "0", "the stop signal was not SIGUSR1");
    containers::remove(&docker, &id).await.unwrap();
}

#[tokio::test]
async fn bad_requests_are_clear_errors_and_leave_nothing_behind() {
    let (engine, docker) = engine().await;

    // Unknown image.
    let svc = service(
        "s2",
        ServiceSpec {
            image: "nope/missing:1".into(),
            ..sleeper(&[])
        },
    );
    let e = containers::run(&docker, &svc, "a", "uncloud", GATEWAY)
        .await
        .unwrap_err();
    assert!(matches!(e, ContainerError::NoImage { .. }), "{e}");
    assert!(e.to_string().contains("nope/missing:1"), "{e}");

    // An invalid spec never reaches the engine.
    let svc = service("s3", sleeper(&["80"]));
    let e = containers::run(&docker, &svc, "b", "uncloud", GATEWAY)
        .await
        .unwrap_err();
    assert!(matches!(e, ContainerError::Spec(_)), "{e}");
    assert!(e.to_string().contains("published port"), "{e}");

    // A host port already taken: created, cannot start, removed again.
    let first = service("s4", sleeper(&["18081:80"]));
    containers::run(&docker, &first, "first", "uncloud", GATEWAY)
        .await
        .unwrap();
    let second = service("s5", sleeper(&["18081:80"]));
    let e = containers::run(&docker, &second, "second", "uncloud", GATEWAY)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ContainerError::Engine { what: "start", .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("18081") || e.to_string().contains("allocated"),
        "{e}"
    );

    // A name in use.
    let e = containers::run(&docker, &first, "first", "uncloud", GATEWAY)
        .await
        .unwrap_err();
    assert!(matches!(e, ContainerError::NameTaken(_)), "{e}");

    assert_eq!(all_containers(&engine), vec!["first".to_string()]);
}

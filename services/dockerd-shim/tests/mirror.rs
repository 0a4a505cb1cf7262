//! The state mirror against a real dockerd and stated (in process, on a private D-Bus).

mod support;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use dockerd_shim::containers;
use dockerd_shim::drain::Draining;
use dockerd_shim::engine::Local;
use dockerd_shim::mirror::{records_of, Mirror};
use support::IMAGE;
use uncloud_common::dbus::StateProxy;
use uncloud_common::model::{Container, ContainerState, HealthCheck, Service, ServiceSpec};
use uncloud_testkit::cluster::{wait_for, Cluster};
use uncloud_testkit::{Dockerd, PrivateBus};

const GATEWAY: Ipv4Addr = support::gateway(3);
const DEADLINE: Duration = Duration::from_secs(20);

struct Setup {
    cluster: Cluster,
    engine: Dockerd,
    docker: bollard::Docker,
    mirror: tokio::task::JoinHandle<()>,
    draining: Draining,
    bus: PrivateBus,
    _dbus: Option<(zbus::Connection, tokio::task::JoinHandle<()>)>,
}

impl Setup {
    fn machine(&self) -> String {
        self.cluster.ids[0].clone()
    }

    fn records(&self) -> Vec<Container> {
        records_of(&self.cluster.node(0).state(), &self.machine())
    }

    fn record(&self, id: &str) -> Option<Container> {
        self.records().into_iter().find(|c| c.id == id)
    }
}

async fn setup() -> Setup {
    let cluster = Cluster::start(1).await;
    cluster.settled(Duration::from_secs(30)).await.unwrap();
    let bus = PrivateBus::start();
    let dbus = stated::dbus::serve(
        stated::Membership::of_running(cluster.node(0).shared().clone()),
        &bus.address,
    )
    .await
    .unwrap();
    let (engine, docker) = support::engine(3).await;
    let conn = bus.connect().await;
    let machine_id = cluster.ids[0].clone();
    let docker2 = docker.clone();
    let draining = Draining::default();
    let draining2 = draining.clone();
    let mirror = tokio::spawn(async move {
        let m = Mirror {
            docker: docker2,
            state: StateProxy::new(&conn).await.unwrap(),
            machine_id,
            network: "uncloud".into(),
            draining: draining2,
            files: None,
            reconnected: None,
        };
        m.run().await
    });
    Setup {
        cluster,
        engine,
        docker,
        mirror,
        draining,
        bus,
        _dbus: dbus,
    }
}

fn service(id: &str, healthcheck: Option<HealthCheck>) -> Service {
    Service {
        id: id.into(),
        name: format!("svc-{id}"),
        spec: ServiceSpec {
            image: IMAGE.into(),
            command: vec!["sleep".into(), "300".into()],
            healthcheck,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_follows_the_engine() {
    let s = Arc::new(setup().await);
    let svc = service("s1", None);
    let id = containers::run(&s.docker, &svc, "web-1", "uncloud", GATEWAY)
        .await
        .unwrap();
    wait_for("the running container in the state", DEADLINE, || {
        s.record(&id)
            .is_some_and(|c| c.state == ContainerState::Running && c.ip.starts_with("10.210.3."))
    })
    .await;
    let c = s.record(&id).unwrap();
    assert_eq!((c.service_id.as_str(), c.name.as_str()), ("s1", "web-1"));

    // Killed outside Uncloud: reflected.
    s.engine.docker_ok(&["kill", "web-1"]);
    wait_for("the killed container as exited", DEADLINE, || {
        s.record(&id)
            .is_some_and(|c| c.state == ContainerState::Exited)
    })
    .await;

    // Removed outside Uncloud: its record goes.
    s.engine.docker_ok(&["rm", "-f", "web-1"]);
    wait_for("the removed container's record gone", DEADLINE, || {
        s.record(&id).is_none()
    })
    .await;

    // A container the shim does not manage never appears.
    s.engine
        .docker_ok(&["run", "-d", "--name", "foreign", IMAGE, "sleep", "300"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(s.records().is_empty(), "{:?}", s.records());
}

/// A running container's record says `draining` (dnsd stops naming it, ingress routing to
/// it) for the drain period while it still runs; then it is removed, record and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_container_drains_before_it_is_removed() {
    let s = Arc::new(setup().await);
    let id = containers::run(&s.docker, &service("s4", None), "web-4", "uncloud", GATEWAY)
        .await
        .unwrap();
    wait_for("the running container in the state", DEADLINE, || {
        s.record(&id)
            .is_some_and(|c| c.state == ContainerState::Running && !c.draining)
    })
    .await;
    let local = Local {
        docker: s.docker.clone(),
        machine_id: s.machine(),
        network: "uncloud".into(),
        dns: GATEWAY,
        draining: s.draining.clone(),
        drain: Duration::from_secs(3),
        ingress: None,
        files: None,
    };
    let removal = tokio::spawn(async move { local.remove("web-4").await });
    wait_for("the record marked draining", DEADLINE, || {
        s.record(&id)
            .is_some_and(|c| c.draining && c.state == ContainerState::Running)
    })
    .await;
    assert!(!removal.is_finished(), "removed before it drained");
    // From the mark until the record is gone it never says "not draining" again: it must not
    // go back into its service's addresses between the drain and the removal.
    let deadline = std::time::Instant::now() + DEADLINE;
    while let Some(c) = s.record(&id) {
        assert!(c.draining, "the record went back to not draining: {c:?}");
        assert!(std::time::Instant::now() < deadline, "never removed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    removal.await.unwrap().unwrap();
    assert!(s.draining.ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_transitions_reach_the_state() {
    let s = setup().await;
    let check = HealthCheck {
        test: vec!["CMD-SHELL".into(), "test -f /tmp/ok".into()],
        interval_ms: 300,
        timeout_ms: 1000,
        retries: 1,
        start_period_ms: 0,
    };
    let id = containers::run(
        &s.docker,
        &service("s2", Some(check)),
        "hc",
        "uncloud",
        GATEWAY,
    )
    .await
    .unwrap();
    wait_for("unhealthy", DEADLINE, || {
        s.record(&id).is_some_and(|c| !c.healthy)
    })
    .await;
    s.engine.docker_ok(&["exec", "hc", "touch", "/tmp/ok"]);
    wait_for("healthy", DEADLINE, || {
        s.record(&id).is_some_and(|c| c.healthy)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerd_restart_is_survived_and_resynced() {
    let mut s = setup().await;
    let id = containers::run(&s.docker, &service("s3", None), "keep", "uncloud", GATEWAY)
        .await
        .unwrap();
    let gone = containers::run(&s.docker, &service("s4", None), "gone", "uncloud", GATEWAY)
        .await
        .unwrap();
    wait_for("both recorded", DEADLINE, || s.records().len() == 2).await;
    let started = s.record(&id).unwrap().started_at_ms;

    s.engine.stop();
    // While the engine is down, a record goes stale; the shim keeps retrying.
    s.engine.restart();
    s.engine.docker_ok(&["rm", "-f", "gone"]);
    // unless-stopped: the engine brings "keep" back; the state shows the new start and no
    // record of the container removed meanwhile.
    wait_for(
        "resynced after the restart",
        Duration::from_secs(40),
        || {
            s.record(&gone).is_none()
                && s.record(&id).is_some_and(|c| {
                    c.state == ContainerState::Running && c.started_at_ms > started
                })
        },
    )
    .await;
    assert!(!s.mirror.is_finished());
}

/// Compose secrets and configs: contents from the state (checked against their digests),
/// written for the container and mounted read-only with the mode and owner asked; a content
/// the state lacks is a clear error that leaves nothing behind; removal takes the files too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_files_come_from_the_state_read_only_and_go_with_their_container() {
    use dockerd_shim::files::FileStore;
    use uncloud_common::model::FileMount;

    let s = setup().await;
    let state = StateProxy::new(&s.bus.connect().await).await.unwrap();
    let (secret, config) = (b"hunter2\n".as_slice(), b"port = 8080\n".as_slice());
    for content in [secret, config] {
        let f = uncloud_common::files::stored(content, 0);
        state
            .upsert_file(&serde_json::to_string(&f).unwrap())
            .await
            .unwrap();
    }
    // A content whose digest does not match is refused by stated.
    let mut forged = uncloud_common::files::stored(b"x", 0);
    forged.digest = uncloud_common::files::digest(b"y");
    assert!(state
        .upsert_file(&serde_json::to_string(&forged).unwrap())
        .await
        .is_err());

    let dir = tempfile::tempdir().unwrap();
    let local = Local {
        files: Some(FileStore::new(
            dir.path().to_path_buf(),
            state.clone(),
            Duration::from_secs(2),
        )),
        ..support::local(s.docker.clone(), 3)
    };
    let mut svc = service("s5", None);
    svc.id = svc.name.clone();
    svc.spec.files = vec![
        FileMount {
            name: "db_password".into(),
            target: "/run/secrets/db_password".into(),
            digest: uncloud_common::files::digest(secret),
            mode: 0o400,
            uid: 1000,
            gid: 1000,
            secret: true,
        },
        FileMount {
            name: "app".into(),
            target: "/etc/app.conf".into(),
            digest: uncloud_common::files::digest(config),
            ..Default::default()
        },
    ];
    local.run_service(&svc, "files-1").await.unwrap();
    assert_eq!(
        s.engine
            .docker_ok(&["exec", "files-1", "cat", "/run/secrets/db_password"]),
        "hunter2" // (docker_ok trims the output)
    );
    assert_eq!(
        s.engine.docker_ok(&[
            "exec",
            "files-1",
            "stat",
            "-c",
            "%a %u %g",
            "/run/secrets/db_password",
            "/etc/app.conf"
        ]),
        "400 1000 1000\n444 0 0"
    );
    let write = s
        .engine
        .docker(&["exec", "files-1", "sh", "-c", "echo x > /etc/app.conf"]);
    assert!(!write.status.success(), "the mount is read-only");
    // Docker's own restart keeps them.
    s.engine.docker_ok(&["restart", "-t", "0", "files-1"]);
    assert_eq!(
        s.engine
            .docker_ok(&["exec", "files-1", "cat", "/etc/app.conf"]),
        "port = 8080"
    );

    // A content the state does not have: refused after the wait, nothing left behind.
    let mut missing = service("s6", None);
    missing.id = missing.name.clone();
    missing.spec.files = vec![FileMount {
        name: "api_key".into(),
        target: "/run/secrets/api_key".into(),
        digest: uncloud_common::files::digest(b"never stored"),
        ..Default::default()
    }];
    let e = local.run_service(&missing, "files-2").await.unwrap_err();
    assert!(
        e.message.contains("api_key") && e.message.contains("has not reached"),
        "{e}"
    );
    assert!(!s.engine.docker(&["inspect", "files-2"]).status.success());
    assert!(!dir.path().join("files-2").exists());

    // Removal takes the files with the container.
    assert!(dir.path().join("files-1").exists());
    local.remove("files-1").await.unwrap();
    assert!(!dir.path().join("files-1").exists());
}

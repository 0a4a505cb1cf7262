//! `org.uncloud.Docker1` from busctl, against a real dockerd and a private D-Bus.

mod support;

use support::IMAGE;
use uncloud_testkit::PrivateBus;

fn call(bus: &PrivateBus, args: &[&str]) -> (bool, String, String) {
    let mut all = vec![
        "call",
        "org.uncloud.Docker1",
        "/org/uncloud/Docker1",
        "org.uncloud.Docker1",
    ];
    all.extend_from_slice(args);
    bus.busctl(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_operations_from_busctl() {
    let (engine, docker) = support::engine(5).await;
    let api = support::serve_api(docker, 5).await;
    let bus = &api.bus;

    let service = format!(
        r#"{{"id":"web","name":"web","revision":1,"spec":{{"image":"{IMAGE}","command":["sleep","300"]}}}}"#
    );
    let (ok, out, err) = call(bus, &["RunService", "ss", &service, "web-1"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("s \""), "{out}");
    let (ok, out, err) = call(bus, &["Inspect", "s", "web-1"]);
    assert!(ok, "{err}");
    assert!(out.contains(r#"\"state\":\"running\""#), "{out}");
    assert!(out.contains("10.210.5."), "{out}");
    let (ok, _, err) = call(bus, &["Stop", "si", "web-1", "1"]);
    assert!(ok, "{err}");
    let state = engine.docker_ok(&["inspect", "--format", "{{.State.Status}}", "web-1"]);
    assert_eq!(state, "exited");
    let (ok, _, err) = call(bus, &["Remove", "s", "web-1"]);
    assert!(ok, "{err}");

    // Errors carry names a caller can act on (checked through zbus: busctl prints only the
    // message).
    let name_of = |r: zbus::Result<zbus::Message>| match r {
        Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
        other => panic!("expected a D-Bus error, got {other:?}"),
    };
    let missing = r#"{"id":"web","name":"web","spec":{"image":"nope/missing:1"}}"#;
    for (method, body, want) in [
        ("RunService", ("{not json", "x"), "InvalidArgument"),
        (
            "RunService",
            (r#"{"id":"s3","name":"Bad Name","spec":{"image":"x"}}"#, "x"),
            "InvalidArgument",
        ),
        ("RunService", (missing, "x"), "NoImage"),
    ] {
        let r = api.call(method, &body).await;
        assert_eq!(
            name_of(r),
            format!("org.uncloud.Docker1.Error.{want}"),
            "{body:?}"
        );
    }
    for (method, container) in [
        ("Inspect", "web-1"),
        ("Remove", "nothing"),
        ("PullImage", "bad ref"),
    ] {
        let r = api.call(method, &(container,)).await;
        let want = if method == "PullImage" {
            "InvalidArgument"
        } else {
            "NotFound"
        };
        assert_eq!(
            name_of(r),
            format!("org.uncloud.Docker1.Error.{want}"),
            "{method}"
        );
    }
    let left = engine.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(left.is_empty(), "left behind: {left}");

    // An image handed over as a file descriptor (as `uc` would pipe a `docker save`).
    let tar = engine.dir().join("img.tar");
    engine.docker_ok(&["save", "-o", tar.to_str().unwrap(), IMAGE]);
    engine.docker_ok(&["rmi", IMAGE]);
    let file = std::fs::File::open(&tar).unwrap();
    let reply = api
        .call("LoadImage", &(zbus::Fd::from(&file),))
        .await
        .unwrap();
    let loaded: Vec<String> = reply.body().deserialize().unwrap();
    assert_eq!(loaded, vec![IMAGE.to_string()]);
    let (ok, out, err) = call(bus, &["ListImages"]);
    assert!(ok && out.contains(IMAGE), "{out} {err}");
    let (ok, _, err) = call(bus, &["RemoveImage", "s", IMAGE]);
    assert!(ok, "{err}");
}

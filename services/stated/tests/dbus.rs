//! org.uncloud.State1 on a private dbus-daemon, called with real `busctl` and a zbus proxy.

mod support;

use std::time::Duration;

use futures::StreamExt;
use uncloud_common::dbus::{
    StateProxy, STATE_ERROR_INVALID, STATE_ERROR_NOT_FOUND, STATE_ERROR_NOT_OWNER,
};
use uncloud_testkit::PrivateBus;

/// The D-Bus error name of a failed method call.
fn error_name(err: &zbus::Error) -> String {
    match err {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => panic!("expected a D-Bus error reply, got {other}"),
    }
}

const DEST: &str = "org.uncloud.State1";
const PATH: &str = "/org/uncloud/State1";
const IFACE: &str = "org.uncloud.State1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busctl_writes_reads_and_gets_clear_errors() {
    support::init_tracing();
    let bus = PrivateBus::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::test_config(dir.path(), "unused", vec![]);
    config.network_id = None;
    config.machine_name = Some("alpha".into());
    let membership = stated::Membership::start(config, stated::links::Links::real())
        .await
        .unwrap();
    let _served = stated::dbus::serve(membership.clone(), &bus.address)
        .await
        .unwrap()
        .expect("a bus was configured");

    // Fresh: no network, every read says so, and busctl creates one.
    let (ok, out, _) = bus.busctl(&["get-property", DEST, PATH, IFACE, "Mode"]);
    assert!(ok && out.contains("fresh"), "{out}");
    let (ok, _, err) = bus.busctl(&["call", DEST, PATH, IFACE, "GetState"]);
    assert!(!ok && err.contains("belongs to no network"), "{err}");
    let (ok, _, err) = bus.busctl(&[
        "call",
        DEST,
        PATH,
        IFACE,
        "CreateNetwork",
        "sss",
        "dbus-net",
        "",
        "",
    ]);
    assert!(ok, "CreateNetwork: {err}");
    let (ok, out, _) = bus.busctl(&["get-property", DEST, PATH, IFACE, "Mode"]);
    assert!(ok && out.contains("member"), "{out}");
    let (ok, _, err) = bus.busctl(&[
        "call",
        DEST,
        PATH,
        IFACE,
        "CreateNetwork",
        "sss",
        "again",
        "",
        "",
    ]);
    assert!(!ok && err.contains("already a member"), "{err}");

    // The API is discoverable.
    let (ok, out, err) = bus.busctl(&["introspect", DEST, PATH]);
    assert!(ok, "{err}");
    for member in [
        ".GetState",
        ".Get",
        ".GetMany",
        ".Resync",
        ".CreateNetwork",
        ".JoinNetwork",
        ".AdmitMachine",
        ".SaveDocument",
        ".SetMachineName",
        ".SetMachineRoles",
        ".SetMachineLabels",
        ".SetMesh",
        ".RemoveMachine",
        ".UpsertService",
        ".RemoveService",
        ".UpsertContainer",
        ".RemoveContainer",
        ".SetContainerState",
        ".SetContainerHealth",
        ".Liveness",
        ".Changed",
        ".LivenessChanged",
        ".MachineId",
        ".NetworkId",
        ".Mode",
        ".Heads",
    ] {
        assert!(out.contains(member), "introspection lacks {member}:\n{out}");
    }

    // A zbus client subscribes to Changed before a busctl write.
    let conn = bus.connect().await;
    let proxy = StateProxy::new(&conn).await.unwrap();
    let mut changed = proxy.receive_changed().await.unwrap();

    let web = r#"{"id":"web","name":"web","spec":{"image":"nginx:1.27","replicas":2}}"#;
    let (ok, _, err) = bus.busctl(&["call", DEST, PATH, IFACE, "UpsertService", "s", web]);
    assert!(ok, "UpsertService failed: {err}");
    let signal = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let s = changed.next().await.expect("signal stream ended");
            let args = s.args().unwrap();
            if args.kind() == &"services" {
                return args.ids().clone();
            }
        }
    })
    .await
    .expect("no Changed signal for the service");
    assert_eq!(signal, vec!["web".to_string()]);

    // Read back: busctl and the proxy agree.
    let (ok, out, err) = bus.busctl(&[
        "call",
        "--json=short",
        DEST,
        PATH,
        IFACE,
        "Get",
        "ss",
        "services",
        "web",
    ]);
    assert!(ok, "{err}");
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    let service: serde_json::Value =
        serde_json::from_str(reply["data"][0].as_str().unwrap()).unwrap();
    assert_eq!(service["spec"]["image"], "nginx:1.27");
    let state: serde_json::Value = serde_json::from_str(&proxy.get_state().await.unwrap()).unwrap();
    assert_eq!(state["services"]["web"]["spec"]["replicas"], 2);
    assert_eq!(state["network"]["id"], "dbus-net");
    // The machine that created the network is its first member, under its configured name.
    let machine_id = proxy.machine_id().await.unwrap();
    assert_eq!(state["machines"][&machine_id]["name"], "alpha");
    assert_eq!(state["machines"][&machine_id]["subnet"], 1);

    // Per-field machine writes: roles and labels leave the name and subnet alone.
    let (ok, _, err) = bus.busctl(&[
        "call",
        DEST,
        PATH,
        IFACE,
        "SetMachineRoles",
        "sas",
        &machine_id,
        "1",
        "ingress",
    ]);
    assert!(ok, "{err}");
    let mut labels = std::collections::HashMap::new();
    labels.insert("zone", "eu");
    proxy.set_machine_labels(&machine_id, labels).await.unwrap();
    let me: serde_json::Value =
        serde_json::from_str(&proxy.get("machines", &machine_id).await.unwrap()).unwrap();
    assert_eq!(me["roles"][0], "ingress");
    assert_eq!(me["labels"]["zone"], "eu");
    assert_eq!(
        (me["name"].as_str(), me["subnet"].as_u64()),
        (Some("alpha"), Some(1))
    );
    let (ok, out, _) = bus.busctl(&["get-property", DEST, PATH, IFACE, "MachineId"]);
    assert!(ok && out.contains(&machine_id), "{out}");
    let liveness = proxy.liveness().await.unwrap();
    assert_eq!(liveness.get(&machine_id).map(String::as_str), Some("alive"));

    // Bad input: a clear, typed error and no change.
    let heads = proxy.heads().await.unwrap();
    let (ok, _, err) = bus.busctl(&["call", DEST, PATH, IFACE, "UpsertService", "s", "{not json"]);
    assert!(!ok);
    assert!(err.contains("service"), "{err}");
    let (ok, _, err) = bus.busctl(&[
        "call",
        DEST,
        PATH,
        IFACE,
        "SetMachineName",
        "ss",
        &machine_id,
        "Bad Name",
    ]);
    assert!(!ok);
    assert!(err.contains("machine name"), "{err}");
    let (ok, _, err) = bus.busctl(&["call", DEST, PATH, IFACE, "RemoveService", "s", "nope"]);
    assert!(!ok);
    assert!(err.contains("no services with id"), "{err}");
    // A service is keyed by its name (and project); reserved names and bad ports are refused.
    for (bad, why) in [
        (
            r#"{"id":"web","name":"www","spec":{"image":"x"}}"#,
            "<name>.<project>",
        ),
        (
            r#"{"id":"lb","name":"lb","spec":{"image":"x"}}"#,
            "reserved",
        ),
        (
            r#"{"id":"web.machine","name":"web","project":"machine","spec":{"image":"x"}}"#,
            "reserved",
        ),
        (
            r#"{"id":"web","name":"web","spec":{"image":"x","ports":["app.example.com:80/tcp"]}}"#,
            "not a protocol",
        ),
    ] {
        let err = proxy.upsert_service(bad).await.unwrap_err();
        assert_eq!(error_name(&err), STATE_ERROR_INVALID, "{err}");
        assert!(err.to_string().contains(why), "{bad}: {err}");
    }
    let foreign = r#"{"id":"c1","machine_id":"someone-else","name":"web-1"}"#;
    let (ok, _, err) = bus.busctl(&["call", DEST, PATH, IFACE, "UpsertContainer", "s", foreign]);
    assert!(!ok);
    assert!(err.contains("only that machine writes it"), "{err}");
    let big = format!(
        r#"{{"id":"big","name":"big","spec":{{"image":"x","env":{{"K":"{}"}}}}}}"#,
        "v".repeat(100_000)
    );
    let err = proxy.upsert_service(&big).await.unwrap_err();
    assert_eq!(error_name(&err), STATE_ERROR_INVALID, "{err}");
    assert!(err.to_string().contains("more than"), "{err}");
    let err = proxy.remove_service("nope").await.unwrap_err();
    assert_eq!(error_name(&err), STATE_ERROR_NOT_FOUND, "{err}");
    let err = proxy.set_container_health("nope", false).await.unwrap_err();
    assert_eq!(error_name(&err), STATE_ERROR_NOT_FOUND, "{err}");
    let err = proxy.upsert_container(foreign).await.unwrap_err();
    assert_eq!(error_name(&err), STATE_ERROR_NOT_OWNER, "{err}");
    assert_eq!(
        proxy.heads().await.unwrap(),
        heads,
        "a refused write changed the state"
    );

    // The owner may write and remove its own container.
    let own = format!(
        r#"{{"id":"c2","machine_id":"{machine_id}","name":"web-2","ip":"10.210.1.2","state":"running"}}"#
    );
    proxy.upsert_container(&own).await.unwrap();
    // Its shim writes single fields: health and state, leaving the rest.
    proxy.set_container_health("c2", false).await.unwrap();
    proxy.set_container_state("c2", "exited").await.unwrap();
    let c: serde_json::Value =
        serde_json::from_str(&proxy.get("containers", "c2").await.unwrap()).unwrap();
    assert_eq!(
        (&c["healthy"], &c["state"], &c["ip"]),
        (&false.into(), &"exited".into(), &"10.210.1.2".into()),
        "{c}"
    );
    let err = proxy.set_container_state("c2", "sleepy").await.unwrap_err();
    assert_eq!(error_name(&err), STATE_ERROR_INVALID, "{err}");
    proxy.remove_container("c2").await.unwrap();
    membership.shutdown().await;
}

/// The shipped bus policy, on a bus with the system bus's default policy: root may own
/// `org.uncloud.State1`, an unprivileged user may not.
#[test]
fn shipped_bus_policy_lets_only_root_own_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bus");
    let policy = uncloud_testkit::manifest_dir(env!("CARGO_MANIFEST_DIR"))
        .join("dist/org.uncloud.State1.conf")
        .display()
        .to_string();
    let config = dir.path().join("bus.conf");
    // The defaults of Debian's /usr/share/dbus-1/system.conf, then our file.
    std::fs::write(
        &config,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
  </policy>
  <include>{policy}</include>
</busconfig>"#,
            socket.display()
        ),
    )
    .unwrap();
    let mut daemon = std::process::Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--nopidfile"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("dbus-daemon is required (apt-get install dbus)");
    let start = std::time::Instant::now();
    while !socket.exists() {
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "dbus-daemon refused the policy file"
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "dbus-daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let an unprivileged user reach the socket.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let request_name = |as_nobody: bool| {
        let mut cmd = if as_nobody {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl"]);
            c
        } else {
            std::process::Command::new("busctl")
        };
        cmd.arg(format!("--address=unix:path={}", socket.display()))
            .args([
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "RequestName",
                "su",
                "org.uncloud.State1",
                "4", // DBUS_NAME_FLAG_DO_NOT_QUEUE
            ])
            .output()
            .unwrap()
    };
    assert!(
        running_as_root(),
        "this test checks root vs nobody and must run as root"
    );
    let nobody = request_name(true);
    let root = request_name(false);
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(
        !nobody.status.success(),
        "nobody could own org.uncloud.State1"
    );
    assert!(
        String::from_utf8_lossy(&nobody.stderr).contains("ccess"),
        "expected an access error: {}",
        String::from_utf8_lossy(&nobody.stderr)
    );
    assert!(
        root.status.success() && String::from_utf8_lossy(&root.stdout).contains("u 1"),
        "root could not own the name: {}",
        String::from_utf8_lossy(&root.stderr)
    );
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"))
}

/// The next update from a follower, within a deadline.
async fn next_update(
    updates: &mut futures::stream::BoxStream<'static, uncloud_common::state_follow::Update>,
) -> uncloud_common::state_follow::Update {
    tokio::time::timeout(Duration::from_secs(5), updates.next())
        .await
        .expect("no update within 5 s")
        .expect("the update stream ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reads_by_change_and_resyncs_when_stated_restarts() {
    use uncloud_common::model::{Kind, Service};
    use uncloud_common::state_follow::{self, Update};

    support::init_tracing();
    let bus = PrivateBus::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::test_config(dir.path(), "unused", vec![]);
    config.network_id = None;
    let membership = stated::Membership::start(config, stated::links::Links::real())
        .await
        .unwrap();
    let served = stated::dbus::serve(membership.clone(), &bus.address)
        .await
        .unwrap()
        .expect("a bus was configured");

    // A consumer subscribes while the machine is fresh; becoming a member says "read it all".
    let conn = bus.connect().await;
    let mut updates = state_follow::follow(&conn).await.unwrap();
    let proxy = StateProxy::new(&conn).await.unwrap();
    proxy
        .create_network("follow-net", "", "alpha")
        .await
        .unwrap();
    assert_eq!(next_update(&mut updates).await, Update::Resync);
    let machines: std::collections::BTreeMap<String, serde_json::Value> =
        state_follow::fetch_all(&proxy, Kind::Machines)
            .await
            .unwrap();
    assert_eq!(machines.len(), 1);

    // A change names its ids; fetching them reads just those.
    let web = r#"{"id":"web","name":"web","spec":{"image":"nginx:1.27","replicas":2}}"#;
    let db = r#"{"id":"db","name":"db","spec":{"image":"postgres:16","replicas":1}}"#;
    proxy.upsert_service(web).await.unwrap();
    proxy.upsert_service(db).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next_update(&mut updates).await {
            Update::Changed {
                kind: Kind::Services,
                ids,
            } => seen.extend(ids),
            Update::Changed { .. } => {}
            Update::Resync => panic!("no resync expected here"),
        }
    }
    seen.sort();
    assert_eq!(seen, ["db", "web"]);
    let got: std::collections::BTreeMap<String, Service> =
        state_follow::fetch(&proxy, Kind::Services, &["web".into(), "nope".into()])
            .await
            .unwrap();
    assert_eq!(got.keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(got["web"].spec.replicas, 2);

    // A removal: the id is named, and fetching it finds nothing.
    proxy.remove_service("web").await.unwrap();
    loop {
        if let Update::Changed {
            kind: Kind::Services,
            ids,
        } = next_update(&mut updates).await
        {
            assert_eq!(ids, ["web"]);
            break;
        }
    }
    let got: std::collections::BTreeMap<String, Service> =
        state_follow::fetch(&proxy, Kind::Services, &["web".into()])
            .await
            .unwrap();
    assert!(got.is_empty(), "{got:?}");

    // GetMany refuses an unknown kind clearly.
    let err = proxy.get_many("gadgets", &["x"]).await.unwrap_err();
    assert_eq!(error_name(&err), STATE_ERROR_INVALID);

    // stated goes away and comes back (a restart): signals in between are lost, so the
    // consumer is told to read everything again.
    drop(served);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _served = stated::dbus::serve(membership.clone(), &bus.address)
        .await
        .unwrap()
        .expect("a bus was configured");
    assert_eq!(next_update(&mut updates).await, Update::Resync);
    membership.shutdown().await;
}

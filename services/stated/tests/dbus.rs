//! org.uncloud.State1 on a private dbus-daemon, called with real `busctl` and a zbus proxy.

mod support;

use std::time::Duration;

use futures::StreamExt;
use support::bus::PrivateBus;
use uncloud_common::dbus::StateProxy;

const DEST: &str = "org.uncloud.State1";
const PATH: &str = "/org/uncloud/State1";
const IFACE: &str = "org.uncloud.State1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busctl_writes_reads_and_gets_clear_errors() {
    support::init_tracing();
    let bus = PrivateBus::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::test_config(dir.path(), "dbus-net", vec![]);
    config.machine_name = Some("alpha".into());
    let node = stated::Node::start(config).await.unwrap();
    let _served = stated::dbus::serve(node.shared().clone(), &bus.address)
        .await
        .unwrap()
        .expect("a bus was configured");

    // The API is discoverable.
    let (ok, out, err) = bus.busctl(&["introspect", DEST, PATH]);
    assert!(ok, "{err}");
    for member in [
        ".GetState",
        ".Get",
        ".UpsertMachine",
        ".RemoveMachine",
        ".UpsertService",
        ".RemoveService",
        ".UpsertContainer",
        ".RemoveContainer",
        ".UpsertRoute",
        ".RemoveRoute",
        ".Liveness",
        ".Changed",
        ".LivenessChanged",
        ".MachineId",
        ".NetworkId",
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
    // The node registered itself.
    let machine_id = proxy.machine_id().await.unwrap();
    assert_eq!(state["machines"][&machine_id]["name"], "alpha");
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
        "UpsertMachine",
        "s",
        r#"{"id":"m2","name":"Bad Name","subnet":2}"#,
    ]);
    assert!(!ok);
    assert!(err.contains("machine name"), "{err}");
    let (ok, _, err) = bus.busctl(&["call", DEST, PATH, IFACE, "RemoveRoute", "s", "nope"]);
    assert!(!ok);
    assert!(err.contains("no routes with id"), "{err}");
    let foreign = r#"{"id":"c1","machine_id":"someone-else","name":"web-1"}"#;
    let (ok, _, err) = bus.busctl(&["call", DEST, PATH, IFACE, "UpsertContainer", "s", foreign]);
    assert!(!ok);
    assert!(err.contains("only that machine writes it"), "{err}");
    let big = format!(
        r#"{{"id":"big","name":"big","spec":{{"image":"x","env":{{"K":"{}"}}}}}}"#,
        "v".repeat(100_000)
    );
    let err = proxy.upsert_service(&big).await.unwrap_err();
    assert!(
        err.to_string().contains("InvalidArgument") || err.to_string().contains("more than"),
        "{err}"
    );
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
    proxy.remove_container("c2").await.unwrap();
    node.shutdown().await;
}

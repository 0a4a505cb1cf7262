//! kill -9 of a real `stated` process during a write loop: every acknowledged write is there
//! after the restart, and the restarted machine converges with its peer.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use uncloud_common::dbus::StateProxy;
use uncloud_testkit::PrivateBus;

struct Machine {
    bus: PrivateBus,
    config: std::path::PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

fn write_config(dir: &Path, bus: &str, gossip: u16, seed: u16, name: &str) -> std::path::PathBuf {
    let path = dir.join("stated.toml");
    let toml = format!(
        r#"machine_name = "{name}"
data_dir = "{data}"
gossip_port = {gossip}
sync_port = 0
seeds = ["127.0.0.1:{seed}"]
listen_address = "127.0.0.1"
gossip_interval_ms = 150
suspect_after_ms = 600
sync_timeout_ms = 2000
compact_after_entries = 40
bus = "{bus}"
"#,
        data = dir.join("data").display()
    );
    std::fs::write(&path, toml).unwrap();
    path
}

impl Machine {
    fn new(name: &str, gossip: u16, seed: u16) -> Machine {
        let bus = PrivateBus::start();
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &bus.address, gossip, seed, name);
        Machine {
            bus,
            config,
            child: None,
            _dir: dir,
        }
    }

    fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_stated"))
            .arg("--config")
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("STATED_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    async fn proxy(&self) -> StateProxy<'static> {
        let start = Instant::now();
        loop {
            let conn = self.bus.connect().await;
            if let Ok(p) = StateProxy::new(&conn).await {
                if p.machine_id().await.is_ok() {
                    return p;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "stated did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn service_json(id: &str) -> String {
    format!(r#"{{"id":"{id}","name":"{id}","spec":{{"image":"busybox:{id}"}}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_loses_no_acknowledged_write() {
    let (ga, gb) = (support::free_udp_port(), support::free_udp_port());
    let mut a = Machine::new("victim", ga, gb);
    let mut b = Machine::new("witness", gb, ga);
    a.start();
    b.start();
    // Both start fresh; a creates the network and admits b, which joins with a's document,
    // as apid does for `uc machine init` and `uc machine add`.
    let pb = b.proxy().await;
    let pa = a.proxy().await;
    assert_eq!(pa.mode().await.unwrap(), "fresh");
    pa.create_network("crash-net", "", "").await.unwrap();
    let admission = format!(
        r#"{{"machine_id":"{}","name":"witness"}}"#,
        pb.machine_id().await.unwrap()
    );
    pa.admit_machine(&admission).await.unwrap();
    pb.join_network(&pa.save_document().await.unwrap())
        .await
        .unwrap();
    assert_eq!(pb.network_id().await.unwrap(), "crash-net");
    let victim = pa.machine_id().await.unwrap();
    let mut acked: Vec<String> = Vec::new();
    // Its own containers: rows in the container tables, a second store file.
    let mut acked_containers: Vec<String> = Vec::new();
    let mut rng = rand::rng();
    for round in 0..3 {
        let pa = a.proxy().await;
        // Write as fast as acknowledgements come back; kill at a random moment.
        let kill_after = Duration::from_millis(rng.random_range(300..1500));
        let start = Instant::now();
        let mut k = 0;
        let mut in_flight = None;
        while start.elapsed() < kill_after {
            let id = format!("r{round}-w{k}");
            if k % 2 == 0 {
                pa.upsert_service(&service_json(&id)).await.unwrap();
                acked.push(id);
            } else {
                let c = format!(r#"{{"id":"{id}","machine_id":"{victim}","name":"{id}"}}"#);
                pa.upsert_container(&c).await.unwrap();
                acked_containers.push(id);
            }
            k += 1;
            if start.elapsed() >= kill_after / 2 && in_flight.is_none() {
                // Keep one write in flight while the process dies.
                let pa2 = pa.clone();
                in_flight = Some(tokio::spawn(async move {
                    pa2.upsert_service(&service_json("in-flight")).await
                }));
            }
        }
        a.kill9();
        if let Some(h) = in_flight {
            let _ = h.await;
        }
        eprintln!("round {round}: {k} writes acknowledged before kill -9");
        assert!(k > 0);

        a.start();
        let pa = a.proxy().await;
        assert_eq!(
            pa.mode().await.unwrap(),
            "member",
            "a restart is a member of the recorded network"
        );
        let state: serde_json::Value =
            serde_json::from_str(&pa.get_state().await.unwrap()).unwrap();
        let services = state["services"].as_object().unwrap();
        let lost: Vec<&String> = acked
            .iter()
            .filter(|id| !services.contains_key(*id))
            .collect();
        assert!(
            lost.is_empty(),
            "acknowledged writes lost after kill -9: {lost:?}"
        );
        let containers = state["containers"].as_object().unwrap();
        let lost: Vec<&String> = acked_containers
            .iter()
            .filter(|id| !containers.contains_key(*id))
            .collect();
        assert!(
            lost.is_empty(),
            "acknowledged container writes lost after kill -9: {lost:?}"
        );

        // The restarted machine and its peer converge.
        let start = Instant::now();
        loop {
            let (ha, hb) = (pa.heads().await.unwrap(), pb.heads().await.unwrap());
            if ha == hb {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no convergence after restart: {ha:?} vs {hb:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let state_b: serde_json::Value =
            serde_json::from_str(&pb.get_state().await.unwrap()).unwrap();
        for id in &acked {
            assert!(state_b["services"].get(id).is_some(), "peer lacks {id}");
        }
        let start = Instant::now();
        loop {
            let state_b: serde_json::Value =
                serde_json::from_str(&pb.get_state().await.unwrap()).unwrap();
            let missing = acked_containers
                .iter()
                .filter(|id| state_b["containers"].get(*id).is_none())
                .count();
            if missing == 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the peer lacks {missing} of the victim's containers"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

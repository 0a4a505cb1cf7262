//! A disk that fills up: writes are refused while it is full, nothing acknowledged is lost, and
//! once space frees the store catches up by itself. The store lives on a real 4 MiB tmpfs
//! (needs root, as the rest of the suite does).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rand::Rng;
use stated::document::Mutation;
use stated::{Node, WriteError};
use support::*;
use uncloud_common::model::Container;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount a tmpfs (the test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A service whose spec carries `kib` KiB of random (incompressible) text.
fn bulky(id: &str, kib: usize) -> Mutation {
    let mut rng = rand::rng();
    let mut s = service(id, "img");
    let value: String = (0..kib * 1024)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect();
    s.spec.env.insert("FILL".into(), value);
    Mutation::UpsertService(Box::new(s))
}

fn services_in(node: &Node) -> BTreeSet<String> {
    node.state().services.keys().cloned().collect()
}

/// The services in a copy of the store file taken now: what a power cut would leave.
fn services_on_disk(store: &Path) -> BTreeSet<String> {
    let copy_dir = tempfile::tempdir().unwrap();
    let copy: PathBuf = copy_dir.path().join("state.redb");
    std::fs::copy(store, &copy).unwrap();
    let (_, loaded) = uncloud_docstore::Store::open(&copy, automerge::Automerge::new).unwrap();
    assert!(
        loaded.report.missing_deps.is_empty(),
        "the store holds changes whose dependencies were never written: {:?}",
        loaded.report.missing_deps
    );
    stated::document::StateDoc::new(loaded.doc)
        .state()
        .services
        .keys()
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_loses_nothing_acknowledged_and_catches_up() {
    init_tracing();
    let fs = Tmpfs::mount("4m");
    let config = test_config(&fs.path().join("data"), "test-net", vec![]);
    let store = config.store_path();
    let node = Node::start(config.clone()).await.unwrap();
    // Ballast to delete later, so the disk can be freed without touching the store.
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 1536 * 1024]).unwrap();

    // Write until the disk is full and writes have been refused for a while.
    let mut acknowledged = BTreeSet::new();
    let mut refused = 0;
    for i in 0..2_000 {
        let id = format!("s{i:04}");
        match node.mutate(bulky(&id, 8)).await {
            Ok(()) => {
                assert_eq!(
                    refused, 0,
                    "{id} was acknowledged after a refusal, disk still full"
                );
                acknowledged.insert(id);
            }
            Err(WriteError::Storage(e)) => {
                refused += 1;
                if refused == 5 {
                    tracing::info!(error = %e, "the disk is full");
                    break;
                }
            }
            Err(e) => panic!("{id}: unexpected error {e}"),
        }
    }
    assert_eq!(refused, 5, "the disk never filled up");
    assert!(acknowledged.len() > 10, "{acknowledged:?}");
    let on_disk = services_on_disk(&store);
    assert!(
        acknowledged.is_subset(&on_disk),
        "acknowledged but not on disk: {:?}",
        acknowledged.difference(&on_disk).collect::<Vec<_>>()
    );

    // Small writes are refused too while the store is behind: each would depend on a change
    // that never reached the disk.
    assert!(matches!(
        node.mutate(bulky("small", 0)).await,
        Err(WriteError::Storage(_))
    ));
    // So are container writes (the row store shares the full disk): at least one of a few
    // bulky ones finds no room.
    let mut container_refused = false;
    for i in 0..8 {
        if let Err(e) = node.mutate(container(&node, &format!("full{i}"))).await {
            assert!(matches!(e, WriteError::Storage(_)), "{e}");
            container_refused = true;
        }
    }
    assert!(
        container_refused,
        "no container write was refused on a full disk"
    );

    // Space frees: the writer catches up on its own (every few seconds), then writes succeed
    // and each is on disk when acknowledged.
    std::fs::remove_file(&ballast).unwrap();
    let everything = services_in(&node);
    wait_for_async("the store to catch up", Duration::from_secs(15), || {
        let store = store.clone();
        let everything = everything.clone();
        async move { everything.is_subset(&services_on_disk(&store)) }
    })
    .await;
    for i in 0..20 {
        let id = format!("after{i:02}");
        node.mutate(bulky(&id, 1))
            .await
            .unwrap_or_else(|e| panic!("{id} after space was freed: {e}"));
        acknowledged.insert(id);
        node.mutate(container(&node, &format!("c-after{i:02}")))
            .await
            .unwrap_or_else(|e| panic!("container {i} after space was freed: {e}"));
    }
    let containers = node.state().containers;
    let on_disk = services_on_disk(&store);
    assert!(
        acknowledged.is_subset(&on_disk),
        "acknowledged but not on disk: {:?}",
        acknowledged.difference(&on_disk).collect::<Vec<_>>()
    );

    // And a restart loads all of it.
    node.shutdown().await;
    let node = Node::start(config).await.unwrap();
    let after_restart = services_in(&node);
    assert!(acknowledged.is_subset(&after_restart));
    assert!(everything.is_subset(&after_restart));
    // Every container the tables held, the refused ones included (the writer rewrote the
    // row store whole once it could).
    assert_eq!(node.state().containers, containers);
    assert!(containers.contains_key("full0") && containers.contains_key("c-after19"));
    node.shutdown().await;
}

/// One of this machine's containers, of some size.
fn container(node: &Node, id: &str) -> Mutation {
    Mutation::UpsertContainer(Container {
        id: id.into(),
        machine_id: node.machine_id.clone(),
        name: id.into(),
        image: "x".repeat(2_000),
        ..Default::default()
    })
}

async fn wait_for_async<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !cond().await {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

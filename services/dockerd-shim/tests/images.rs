//! Images loaded from a `docker save` tarball (no registry), listed and removed, against a
//! real dockerd.

use dockerd_shim::images::{self, ImageError};
use uncloud_testkit::Dockerd;

const IMAGE: &str = "uncloud-test/busybox:1";

#[tokio::test]
async fn an_image_travels_as_a_tarball() {
    let engine = Dockerd::start();
    engine.import_busybox(IMAGE);
    let tar = engine.dir().join("saved.tar");
    engine.docker_ok(&["save", "-o", tar.to_str().unwrap(), IMAGE]);
    engine.docker_ok(&["rmi", IMAGE]);
    let docker = dockerd_shim::engine::connect(&engine.socket).await.unwrap();
    assert!(!images::list(&docker)
        .await
        .unwrap()
        .iter()
        .any(|i| i.tags.contains(&IMAGE.to_string())));

    // A truncated tarball: a clear error, nothing loaded.
    let bytes = std::fs::read(&tar).unwrap();
    let cut = engine.dir().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = images::load(&docker, tokio::fs::File::open(&cut).await.unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::Load(_)), "{e}");
    assert!(!images::list(&docker)
        .await
        .unwrap()
        .iter()
        .any(|i| i.tags.contains(&IMAGE.to_string())));

    // The whole tarball, streamed in chunks (it is bigger than one).
    assert!(bytes.len() > images::CHUNK);
    let loaded = images::load(&docker, tokio::fs::File::open(&tar).await.unwrap())
        .await
        .unwrap();
    assert_eq!(loaded, vec![IMAGE.to_string()]);
    let listed = images::list(&docker).await.unwrap();
    let img = listed
        .iter()
        .find(|i| i.tags.contains(&IMAGE.to_string()))
        .unwrap();
    assert!(
        img.id.starts_with("sha256:") && img.size_bytes > 0,
        "{img:?}"
    );
    // It runs.
    let out = engine.docker_ok(&["run", "--rm", IMAGE, "echo", "loaded"]);
    assert_eq!(out, "loaded");

    images::remove(&docker, IMAGE).await.unwrap();
    assert!(matches!(
        images::remove(&docker, IMAGE).await,
        Err(ImageError::NotFound(_))
    ));
}

/// A registry (Debian's docker-registry) inside the engine's namespace on 127.0.0.1:5000,
/// which Docker treats as insecure-allowed: a pull with progress, and a clear error for an
/// image the registry does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_with_progress_from_a_local_registry() {
    let engine = Dockerd::start();
    engine.import_busybox(IMAGE);
    let dir = engine.dir().join("registry");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut cmd = engine.ns.command("docker-registry");
    cmd.arg("serve").arg(&config);
    let _registry = uncloud_testkit::Daemon::spawn("docker-registry", cmd, dir.join("log"));
    let up = engine.ns.enter(|| {
        (0..100).any(|_| {
            let ok = std::net::TcpStream::connect("127.0.0.1:5000").is_ok();
            if !ok {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            ok
        })
    });
    assert!(
        up,
        "docker-registry did not start (apt-get install docker-registry)"
    );
    let remote = "127.0.0.1:5000/test/busybox:1";
    engine.docker_ok(&["tag", IMAGE, remote]);
    engine.docker_ok(&["push", remote]);
    engine.docker_ok(&["rmi", remote, IMAGE]);

    let docker = dockerd_shim::engine::connect(&engine.socket).await.unwrap();
    let mut steps = Vec::new();
    images::pull(&docker, remote, |p| steps.push(p))
        .await
        .unwrap();
    assert!(
        steps.iter().any(|p| p.status.contains("Pull complete")),
        "{steps:?}"
    );
    assert!(
        steps.iter().any(|p| p.total > 0 && p.current > 0),
        "no byte counts in {steps:?}"
    );
    assert!(images::list(&docker)
        .await
        .unwrap()
        .iter()
        .any(|i| i.tags.contains(&remote.to_string())));

    let e = images::pull(&docker, "127.0.0.1:5000/test/missing:1", |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::Pull { .. }), "{e}");
    assert!(matches!(
        images::pull(&docker, "bad ref", |_| {}).await,
        Err(ImageError::BadReference(_))
    ));
}

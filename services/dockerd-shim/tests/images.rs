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

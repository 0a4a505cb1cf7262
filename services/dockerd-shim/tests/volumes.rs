//! Named volumes against a real dockerd: data survives the container, removal is refused while
//! in use.

mod support;

use std::net::Ipv4Addr;

use dockerd_shim::containers;
use dockerd_shim::volumes::{self, VolumeError};
use support::IMAGE;
use uncloud_common::model::{Service, ServiceSpec};

const GATEWAY: Ipv4Addr = support::gateway(4);

#[tokio::test]
async fn volumes_keep_data_and_are_not_removed_while_used() {
    let (engine, docker) = support::engine(4).await;

    let v = volumes::create(&docker, "data").await.unwrap();
    assert_eq!((v.name.as_str(), v.driver.as_str()), ("data", "local"));
    assert_eq!(
        v.labels.get("org.uncloud.managed").map(String::as_str),
        Some("true")
    );
    assert_eq!(volumes::create(&docker, "data").await.unwrap().name, "data");
    assert!(matches!(
        volumes::create(&docker, "bad name").await,
        Err(VolumeError::InvalidName(_))
    ));

    let writer = Service {
        id: "writer".into(),
        name: "writer".into(),
        spec: ServiceSpec {
            image: IMAGE.into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "echo kept > /data/f; sleep 300".into(),
            ],
            volumes: vec!["data:/data".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let id = containers::run(&docker, &writer, "writer", "uncloud", GATEWAY)
        .await
        .unwrap();
    let e = volumes::remove(&docker, "data").await.unwrap_err();
    assert!(matches!(e, VolumeError::InUse(_)), "{e}");
    // The data outlives the container.
    containers::remove(&docker, &id).await.unwrap();
    let read = engine.docker_ok(&["run", "--rm", "-v", "data:/data", IMAGE, "cat", "/data/f"]);
    assert_eq!(read, "kept");

    assert!(volumes::list(&docker)
        .await
        .unwrap()
        .iter()
        .any(|v| v.name == "data"));
    volumes::remove(&docker, "data").await.unwrap();
    assert!(matches!(
        volumes::inspect(&docker, "data").await,
        Err(VolumeError::NotFound(_))
    ));
}

//! Logs of a real container: both streams, tail, and following over D-Bus file descriptors.

mod support;

use std::io::Read;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dockerd_shim::containers;
use dockerd_shim::logs::{self, LogsRequest};
use support::IMAGE;
use uncloud_common::model::{Service, ServiceSpec};

const GATEWAY: Ipv4Addr = support::gateway(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_both_streams_tail_and_follow() {
    let (_engine, docker) = support::engine(6).await;
    let script =
        "echo out1; echo err1 >&2; i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.3; done";
    let svc = Service {
        id: "ticker".into(),
        name: "ticker".into(),
        spec: ServiceSpec {
            image: IMAGE.into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        },
        ..Default::default()
    };
    containers::run(&docker, &svc, "ticker", "uncloud", GATEWAY)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (mut out, mut err) = (Vec::new(), Vec::new());
    logs::copy(
        &docker,
        "ticker",
        &LogsRequest::default(),
        &mut out,
        &mut err,
    )
    .await
    .unwrap();
    let (out, err) = (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    );
    assert!(out.starts_with("out1\ntick0\n"), "{out}");
    assert_eq!(err, "err1\n");

    let mut last = Vec::new();
    let req = LogsRequest {
        tail: Some(1),
        ..Default::default()
    };
    logs::copy(&docker, "ticker", &req, &mut last, tokio::io::sink())
        .await
        .unwrap();
    let last = String::from_utf8(last).unwrap();
    assert_eq!(last.lines().count(), 1, "{last}");
    assert!(last.starts_with("tick"), "{last}");

    // Following over D-Bus: the caller passes pipes and reads new lines as they come.
    let api = support::serve_api(docker, 6).await;
    let (mut out_r, out_w) = std::io::pipe().unwrap();
    let (_err_r, err_w) = std::io::pipe().unwrap();
    api.call(
        "Logs",
        &(
            "ticker",
            true,
            0i32,
            0i32,
            zbus::Fd::from(&out_w),
            zbus::Fd::from(&err_w),
        ),
    )
    .await
    .unwrap();
    drop((out_w, err_w));
    let seen = tokio::task::spawn_blocking(move || {
        // tail 0 + follow: only lines written from now on.
        let start = Instant::now();
        let mut text = String::new();
        let mut buf = [0u8; 256];
        while start.elapsed() < Duration::from_secs(15) {
            let n = out_r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.lines().filter(|l| l.starts_with("tick")).count() >= 3 {
                break;
            }
        }
        text
    })
    .await
    .unwrap();
    assert!(
        !seen.contains("out1"),
        "tail 0 still sent old lines: {seen}"
    );
    assert!(
        seen.lines().filter(|l| l.starts_with("tick")).count() >= 3,
        "{seen}"
    );

    // A container that does not exist is an error before anything streams.
    let (_r, w) = std::io::pipe().unwrap();
    let e = api
        .call(
            "Logs",
            &(
                "nothing",
                false,
                0i32,
                -1i32,
                zbus::Fd::from(&w),
                zbus::Fd::from(&w),
            ),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("NotFound")
            || matches!(e, zbus::Error::MethodError(ref n, _, _) if n.as_str().ends_with("NotFound")),
        "{e}"
    );
}

//! Commands in a real container: stdin, both streams, exit codes, TTY and resize, also over
//! D-Bus file descriptors.

mod support;

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::time::Duration;

use dockerd_shim::containers;
use dockerd_shim::exec::{self, ExecRequest};
use support::{cmd, IMAGE};
use uncloud_common::model::{Service, ServiceSpec};

const GATEWAY: Ipv4Addr = support::gateway(7);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_exit_codes_and_tty() {
    let (_engine, docker) = support::engine(7).await;
    let svc = Service {
        id: "box".into(),
        name: "box".into(),
        spec: ServiceSpec {
            image: IMAGE.into(),
            command: cmd(&["sleep", "300"]),
            ..Default::default()
        },
        ..Default::default()
    };
    containers::run(&docker, &svc, "box", "uncloud", GATEWAY)
        .await
        .unwrap();

    // stdin in, stdout and stderr apart, the exit code after.
    let req = ExecRequest {
        cmd: cmd(&["sh", "-c", "cat; echo oops >&2; exit 3"]),
        stdin: true,
        ..Default::default()
    };
    let id = exec::create(&docker, "box", &req).await.unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = exec::run(
        &docker,
        "box",
        &id,
        false,
        Some(&b"hello\n"[..]),
        &mut out,
        &mut err,
    )
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "hello\n");
    assert_eq!(String::from_utf8_lossy(&err), "oops\n");
    assert_eq!(code, 3);
    assert_eq!(exec::exit_code(&docker, &id).await.unwrap(), Some(3));

    // Bad input: empty command, missing container.
    let empty = ExecRequest::default();
    assert!(exec::create(&docker, "box", &empty).await.is_err());
    let missing = exec::create(&docker, "nothing", &req).await.unwrap_err();
    assert!(
        matches!(missing, containers::ContainerError::NotFound(_)),
        "{missing}"
    );

    // Over D-Bus with a TTY: stderr arrives on stdout, and the size can be set while it runs.
    let api = support::serve_api(docker, 7).await;
    let (in_r, mut in_w) = std::io::pipe().unwrap();
    let (mut out_r, out_w) = std::io::pipe().unwrap();
    let (_err_r, err_w) = std::io::pipe().unwrap();
    let reply = api
        .call(
            "Exec",
            &(
                "box",
                cmd(&[
                    "sh",
                    "-c",
                    "read line; echo got $line >&2; busybox stty size",
                ]),
                true,
                zbus::Fd::from(&in_r),
                zbus::Fd::from(&out_w),
                zbus::Fd::from(&err_w),
            ),
        )
        .await
        .unwrap();
    drop((in_r, out_w, err_w));
    let exec_id: String = reply.body().deserialize().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.call("ResizeExec", &(exec_id.as_str(), 33u16, 101u16))
        .await
        .unwrap();
    in_w.write_all(b"ping\n").unwrap();
    // Keep stdin open until the output ends: on a TTY, closing it ends the session.
    let text = tokio::task::spawn_blocking(move || {
        let mut s = String::new();
        out_r.read_to_string(&mut s).unwrap();
        drop(in_w);
        s
    })
    .await
    .unwrap();
    assert!(text.contains("got ping"), "{text:?}");
    assert!(
        text.contains("33 101"),
        "terminal size not applied: {text:?}"
    );
    let code: i64 = api
        .call("ExecExitCode", &(exec_id.as_str(),))
        .await
        .unwrap()
        .body()
        .deserialize()
        .unwrap();
    assert_eq!(code, 0);
}

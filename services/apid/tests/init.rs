//! `uc machine init` against a real stated on a private D-Bus and apid over real TLS on
//! loopback: the token gate, the switch to member mode, and who may call what afterwards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use uncloud_api::wire::{Answer, Call, CertRequest, LogRequest};
use uncloud_api::wire::{ErrorKind, InitRequest};
use uncloud_api::{connect, context, tls};
use uncloud_common::dbus::{ApiProxy, StateProxy};
use uncloud_pki::Fingerprint;
use uncloud_testkit::PrivateBus;

const TOKEN: &str = "k3q9-7hfa-22mx";
const WAIT: Duration = Duration::from_secs(10);

struct Machine {
    _bus: PrivateBus,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    /// The maintenance-mode key's fingerprint, as the console shows it.
    fingerprint: Fingerprint,
    root: std::path::PathBuf,
    _stated: Arc<stated::Membership>,
    _dbus: Option<(zbus::Connection, tokio::task::JoinHandle<()>)>,
    server: tokio::task::JoinHandle<()>,
    /// `org.uncloud.Api1`, as a local tool sees it.
    api1: ApiProxy<'static>,
    /// What `uc machine reboot` runs here: it creates this file.
    rebooted: std::path::PathBuf,
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn fresh_machine() -> Machine {
    let bus = PrivateBus::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let identity = uncloud_common::identity::IdentityPaths::under(&root);
    std::fs::create_dir_all(&identity.dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["fresh".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(identity.tls_key(), key.serialize_pem()).unwrap();
    std::fs::write(identity.tls_cert(), cert.pem()).unwrap();
    std::fs::write(identity.setup_token(), format!("{TOKEN}\n")).unwrap();
    let fingerprint = Fingerprint::of_certificate(cert.der()).unwrap();

    let stated_config: stated::config::Config = toml::from_str(&format!(
        "machine_name = \"alpha\"\ndata_dir = \"{}\"\ngossip_port = 0\nsync_port = 0\nlisten_address = \"127.0.0.1\"\nbus = \"{}\"\n",
        dir.path().join("stated").display(),
        bus.address
    ))
    .unwrap();
    let membership = stated::Membership::start(stated_config, stated::links::Links::real())
        .await
        .unwrap();
    let dbus = stated::dbus::serve(membership.clone(), &bus.address)
        .await
        .unwrap();

    let rebooted = dir.path().join("rebooted");
    let config = apid::Config {
        reboot_command: vec!["touch".into(), rebooted.display().to_string()],
        listen: "127.0.0.1:0".parse().unwrap(),
        bus: bus.address.clone(),
        root: root.clone(),
        data_dir: dir.path().join("apid"),
        token_backoff_max_secs: 2,
        ..apid::Config::default()
    };
    let conn = uncloud_common::dbus::bus_builder(&bus.address)
        .unwrap()
        .build()
        .await
        .unwrap();
    let state = StateProxy::new(&conn).await.unwrap();
    let apid = Arc::new(apid::Apid::start(config, state).await.unwrap());
    apid::dbus::serve(&conn, apid.clone()).await.unwrap();
    let api1 = ApiProxy::new(&conn).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(apid::server::serve(listener, apid));
    Machine {
        _bus: bus,
        _dir: dir,
        addr,
        fingerprint,
        root,
        _stated: membership,
        _dbus: dbus,
        server,
        api1,
        rebooted,
    }
}

fn init_request(token: &str, client_key: &rcgen::KeyPair) -> InitRequest {
    use rcgen::PublicKeyData;
    InitRequest {
        token: token.into(),
        machine_name: String::new(),
        mesh_cidr: String::new(),
        client_public_key: client_key.subject_public_key_info(),
        client_name: "laptop".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_needs_the_token_once_then_only_certificates_of_the_network_get_in() {
    let m = fresh_machine().await;
    let laptop = rcgen::KeyPair::generate().unwrap();
    let pinned = tls::client_pinned(m.fingerprint).unwrap();

    // A wrong fingerprint: the TLS handshake itself fails.
    let other = Fingerprint([7; 32]);
    let Err(err) = connect(m.addr, tls::client_pinned(other).unwrap(), WAIT).await else {
        panic!("a wrong fingerprint is refused");
    };
    assert!(err.to_string().contains("TLS"), "{err}");

    // Maintenance mode: a wrong token is refused, and the next attempt must wait.
    let client = connect(m.addr, pinned.clone(), WAIT).await.unwrap();
    // Locally, D-Bus says so, and who is connected.
    assert_eq!(m.api1.mode().await.unwrap(), "maintenance");
    assert_eq!(m.api1.network_id().await.unwrap(), "");
    let open = m.api1.connections().await.unwrap();
    assert!(
        open.iter().any(|c| c.1 == "maintenance"),
        "the maintenance connection is listed: {open:?}"
    );
    let e = client
        .init(context(WAIT), init_request("guess", &laptop))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadToken, "{e}");
    let e = client
        .init(context(WAIT), init_request(TOKEN, &laptop))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited, "{e}");
    // Nothing else is served before init.
    let e = client.machines(context(WAIT)).await.unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotMember, "{e}");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The right token: a network, this machine in it, an admin certificate for the laptop.
    let reply = client
        .init(context(WAIT), init_request(TOKEN, &laptop))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.machine_name, "alpha");
    assert!(!reply.network_id.is_empty());
    let identity = uncloud_common::identity::IdentityPaths::under(&m.root);
    assert!(!identity.setup_token().exists(), "the token is consumed");
    assert!(identity.initialised().exists());

    // The token works once.
    let e = client
        .init(context(WAIT), init_request(TOKEN, &laptop))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyMember, "{e}");

    // Member mode: the maintenance key is gone from new connections...
    assert!(connect(m.addr, pinned, WAIT).await.is_err());
    // ...the admin certificate gets in...
    let admin =
        tls::client_member(&reply.ca_cert, &reply.client_cert, &laptop.serialize_pem()).unwrap();
    let client = connect(m.addr, admin, WAIT).await.unwrap();
    let info = client.info(context(WAIT)).await.unwrap().unwrap();
    assert_eq!(info.network_id, reply.network_id);
    assert_eq!(
        (info.role.as_str(), info.client.as_str()),
        ("admin", "laptop")
    );
    let machines = client.machines(context(WAIT)).await.unwrap().unwrap();
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0].name, "alpha");
    assert_eq!(machines[0].subnet, "10.210.1.0/24");
    assert_eq!(m.api1.mode().await.unwrap(), "member");
    assert_eq!(m.api1.network_id().await.unwrap(), reply.network_id);
    let open = m.api1.connections().await.unwrap();
    assert!(
        open.iter()
            .any(|c| (c.1.as_str(), c.2.as_str(), c.3.as_str()) == ("client", "laptop", "admin")),
        "the admin's connection is listed with its subject and role: {open:?}"
    );

    // The machine's insides through the API (the appliance has no shell).
    let Answer::Status(status) = client
        .call(context(WAIT), Call::Status)
        .await
        .unwrap()
        .unwrap()
    else {
        panic!("a status answer")
    };
    assert_eq!(
        (status.machine.as_str(), status.machine_id.as_str()),
        ("alpha", info.machine_id.as_str())
    );
    assert!(status.memory_total_bytes > 0 && status.memory_available_bytes > 0);
    assert!(status.disk_total_bytes >= status.disk_available_bytes && status.disk_total_bytes > 0);
    assert!(!status.kernel.is_empty() && status.uptime_secs > 0);
    assert_eq!(status.boot_id.len(), 36, "{status:?}");
    // Units come from systemd; a machine without it (this harness) says why instead.
    assert!(
        status.units.len() == uncloud_api::host::UNITS.len() || status.units_error.is_some(),
        "{status:?}"
    );
    let hostile = Call::Logs(LogRequest {
        units: vec!["stated --file=/etc/shadow".into()],
        ..Default::default()
    });
    let e = client
        .call(context(WAIT), hostile)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid, "{e}");

    // A reader may look but not reboot; an admin may.
    let reader_key = rcgen::KeyPair::generate().unwrap();
    let issued = client
        .issue_cert(
            context(WAIT),
            CertRequest {
                subject: "dashboard".into(),
                role: "reader".into(),
                public_key: {
                    use rcgen::PublicKeyData;
                    reader_key.subject_public_key_info()
                },
                ttl_secs: 0,
            },
        )
        .await
        .unwrap()
        .unwrap();
    let reader = connect(
        m.addr,
        tls::client_member(
            &issued.ca_bundle,
            &issued.cert_pem,
            &reader_key.serialize_pem(),
        )
        .unwrap(),
        WAIT,
    )
    .await
    .unwrap();
    assert!(matches!(
        reader.call(context(WAIT), Call::Status).await.unwrap(),
        Ok(Answer::Status(_))
    ));
    let e = reader
        .call(context(WAIT), Call::Reboot)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden, "{e}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!m.rebooted.exists(), "a reader cannot reboot");
    assert!(matches!(
        client.call(context(WAIT), Call::Reboot).await.unwrap(),
        Ok(Answer::Rebooting)
    ));
    let asked = std::time::Instant::now();
    while !m.rebooted.exists() {
        assert!(
            asked.elapsed() < WAIT,
            "the reboot command ran after the answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // ...no certificate gets nothing but a refusal...
    let anonymous = tls::client_anonymous(&reply.ca_cert).unwrap();
    let client = connect(m.addr, anonymous, WAIT).await.unwrap();
    let e = client.machines(context(WAIT)).await.unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden, "{e}");

    // ...and a certificate of another network's CA is refused.
    let stranger_ca =
        uncloud_pki::MachineCa::generate("other", "m9", time::OffsetDateTime::now_utc()).unwrap();
    use rcgen::PublicKeyData;
    let stranger = stranger_ca
        .issue_client(
            &laptop.subject_public_key_info(),
            "mallory",
            uncloud_pki::Role::Admin,
            time::OffsetDateTime::now_utc(),
            time::Duration::days(1),
        )
        .unwrap();
    let forged =
        tls::client_member(&reply.ca_cert, &stranger.cert_pem, &laptop.serialize_pem()).unwrap();
    // The handshake lets any certificate whose key the client proves through; each call then
    // answers why the certificate is refused.
    let client = connect(m.addr, forged, WAIT).await.unwrap();
    let e = client.info(context(WAIT)).await.unwrap().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Forbidden, "{e}");
    assert!(
        e.message
            .contains("not issued by a machine of this network"),
        "{e}"
    );
}

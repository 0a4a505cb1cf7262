//! A test ACME CA: Debian's `pebble` with `pebble-challtestsrv` as its DNS, in a namespace
//! of their own on the test internet, standing in for Let's Encrypt (which cannot be reached
//! from here; the real path is the same code with the default directory).
//!
//! pebble's HTTPS listener needs a certificate it does not ship: one is made here from a CA
//! of the test's own, whose root ingressd is told to trust ([`Pebble::roots`]). Challenges are
//! validated on port 80 of whatever `pebble-challtestsrv` resolves a hostname to
//! ([`Pebble::resolve`]); authorizations are never reused, so every order is validated anew.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{Daemon, Internet, Netns};

/// Where the CA lives on the test internet.
pub const PEBBLE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

/// A running pebble and its DNS. Field order is drop order.
pub struct Pebble {
    pebble: Daemon,
    dns: Daemon,
    pub ns: Netns,
    dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts pebble and its DNS on `internet`.
    pub fn start(internet: &Internet) -> Pebble {
        let ns = Netns::new("ca");
        internet.attach(&ns, "eth0", &format!("{PEBBLE_IP}/24"));
        let dir = tempfile::Builder::new()
            .prefix("uncloud-pebble-")
            .tempdir()
            .unwrap();
        let p = |f: &str| dir.path().join(f);

        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "uncloud test ACME listener CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["pebble".to_string()]).unwrap();
        leaf.subject_alt_names
            .push(rcgen::SanType::IpAddress(PEBBLE_IP.into()));
        let leaf = leaf.signed_by(&key, &issuer).unwrap();
        std::fs::write(p("roots.pem"), ca_cert.pem()).unwrap();
        std::fs::write(p("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(p("key.pem"), key.serialize_pem()).unwrap();
        let config = serde_json::json!({"pebble": {
            "listenAddress": "0.0.0.0:14000",
            "managementListenAddress": "0.0.0.0:15000",
            "certificate": p("cert.pem"),
            "privateKey": p("key.pem"),
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(p("pebble.json"), config.to_string()).unwrap();

        let mut dns = ns.command("pebble-challtestsrv");
        dns.args([
            "-management",
            ":8055",
            "-dns01",
            ":8053",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-defaultIPv4",
            "192.0.2.1",
            "-defaultIPv6",
            "",
        ]);
        let dns = Daemon::spawn("pebble-challtestsrv", dns, p("challtestsrv.log"));
        let mut pebble = ns.command("pebble");
        pebble
            .arg("-config")
            .arg(p("pebble.json"))
            .args(["-dnsserver", "127.0.0.1:8053"])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        let pebble = Daemon::spawn("pebble", pebble, p("pebble.log"));
        let me = Pebble {
            pebble,
            dns,
            ns,
            dir,
        };
        me.wait_listening();
        me
    }

    fn wait_listening(&self) {
        let start = Instant::now();
        loop {
            let ok = self.ns.enter(|| {
                [14000u16, 15000, 8055].iter().all(|port| {
                    std::net::TcpStream::connect_timeout(
                        &(Ipv4Addr::LOCALHOST, *port).into(),
                        Duration::from_millis(200),
                    )
                    .is_ok()
                })
            });
            if ok {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "pebble did not listen within 30 s:\n{}\n{}",
                self.pebble.log_text(),
                self.dns.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://{PEBBLE_IP}:14000/dir")
    }

    /// ingressd's configuration for this CA: its directory, the listener's root at `roots`
    /// (where the machine finds a copy of [`Pebble::roots`]), and short challenge and retry
    /// delays.
    pub fn ingressd_toml(&self, roots: &str) -> String {
        format!(
            "acme_directory = \"{}\"\nacme_roots = \"{roots}\"\nchallenge_delay_secs = 1\n\
             retry_min_secs = 2\nretry_max_secs = 30\n",
            self.directory()
        )
    }

    /// The PEM file of the root that pebble's listener is signed by (ingressd's
    /// `acme_roots`).
    pub fn roots(&self) -> PathBuf {
        self.dir.path().join("roots.pem")
    }

    /// Makes `host` resolve (for pebble's validation) to `ips` only.
    pub fn resolve(&self, host: &str, ips: &[Ipv4Addr]) {
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        self.manage("clear-a", serde_json::json!({"host": fqdn}));
        let addresses: Vec<String> = ips.iter().map(ToString::to_string).collect();
        self.manage(
            "add-a",
            serde_json::json!({"host": fqdn, "addresses": addresses}),
        );
    }

    fn manage(&self, path: &str, body: serde_json::Value) {
        let out = self
            .ns
            .command("curl")
            .args(["-sS", "--fail", "--max-time", "5", "-d"])
            .arg(body.to_string())
            .arg(format!("http://127.0.0.1:8055/{path}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pebble-challtestsrv {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The root pebble issues under now (it makes a new one at every start), PEM.
    pub fn issuing_root(&self) -> String {
        let out = self
            .ns
            .command("curl")
            .args(["-sSk", "--fail", "--max-time", "5"])
            .arg("https://127.0.0.1:15000/roots/0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// pebble's log, for a failing test.
    pub fn logs(&self) -> String {
        format!(
            "----- pebble\n{}\n----- pebble-challtestsrv\n{}",
            tail(&self.pebble.log_text(), 60),
            tail(&self.dns.log_text(), 30)
        )
    }

    /// How many certificates pebble issued so far (from its log).
    pub fn issued(&self) -> usize {
        self.pebble
            .log_text()
            .lines()
            .filter(|l| l.contains("Issued certificate serial"))
            .count()
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

//! Machines as network namespaces on one bridge ("the internet"), each running a real meshd
//! process on a real TUN device. stated runs in the test process (one node per machine,
//! gossiping over loopback) and serves each machine's private D-Bus daemon; a bus socket is
//! a path, so meshd inside the namespace reaches it.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use uncloud_common::dbus::MeshProxy;
use uncloud_testkit::cluster::Cluster;
use uncloud_testkit::{init_tracing, Daemon, Internet, Nat, Netns, PrivateBus};

/// One machine. Field order is drop order: meshd stops before its namespace goes.
pub struct Machine {
    pub meshd: Option<Daemon>,
    pub containers: Vec<Netns>,
    pub dbus: Option<(zbus::Connection, tokio::task::JoinHandle<()>)>,
    pub bus: PrivateBus,
    pub ns: Netns,
    /// The NAT router in front of the machine, if any.
    pub nat: Option<Nat>,
    pub dir: tempfile::TempDir,
    pub id: String,
    /// The internet address (`192.0.2.N`), the NAT's for a machine behind one.
    pub public_ip: String,
    pub config: String,
}

impl Machine {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("meshd.toml")
    }

    pub fn start_meshd(&mut self) {
        std::fs::write(self.config_path(), &self.config).unwrap();
        let mut cmd = self.ns.command(env!("CARGO_BIN_EXE_meshd"));
        cmd.arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "meshd=debug,info");
        let log = self.dir.path().join("meshd.log");
        self.meshd = Some(Daemon::spawn(&format!("meshd-{}", self.id), cmd, log));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("meshd.log")).unwrap_or_default()
    }

    pub async fn proxy(&self) -> MeshProxy<'static> {
        let conn = self.bus.connect().await;
        MeshProxy::new(&conn).await.unwrap()
    }
}

pub struct TestMesh {
    pub machines: Vec<Machine>,
    pub cluster: Cluster,
    pub internet: Internet,
}

/// Config every test machine starts from: short timelines so rotation shows within seconds.
pub fn base_config(bus: &str, data_dir: &std::path::Path) -> String {
    format!(
        "bus = \"{bus}\"\ndata_dir = \"{}\"\nhandshake_timeout_secs = 3\nkeepalive_secs = 5\ncontainer_bridge = \"ctr0\"\n",
        data_dir.display()
    )
}

/// Where a machine sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// On the internet bridge as `192.0.2.<i+1>`.
    Internet,
    /// Behind a symmetric NAT (`masquerade fully-random`: a new external port per
    /// destination, so no hole punching) at `192.0.2.<i+11>`, the machine at `10.0.<i>.2`.
    /// With `forward`, the NAT forwards UDP 51820 to the machine, but a firewall table
    /// `ip gate` drops what it forwards until the test deletes that table.
    BehindNat { forward: bool },
}

/// Puts a NAT router (`uncloud_testkit::nat`: symmetric, `masquerade fully-random`) between
/// `machine` and the internet; returns it and its public address.
pub fn behind_nat(internet: &Internet, machine: &Netns, i: usize, forward: bool) -> (Nat, String) {
    let public_ip = Ipv4Addr::new(192, 0, 2, i as u8 + 11);
    let nat = Nat::new(internet, &format!("nat{i}"), public_ip);
    nat.attach(
        machine,
        Ipv4Addr::new(10, 0, i as u8, 1),
        Ipv4Addr::new(10, 0, i as u8, 2),
    );
    if forward {
        nat.nft(&format!(
            "table ip nat {{\n chain prerouting {{ type nat hook prerouting priority dstnat; iifname \"eth0\" udp dport 51820 dnat to 10.0.{i}.2:51820; }}\n}}\n\
             table ip gate {{\n chain forward {{ type filter hook forward priority filter; iifname \"eth0\" ct status dnat drop; }}\n}}\n"
        ));
    }
    (nat, public_ip.to_string())
}

/// A failing test shows every machine's log, whichever assertion failed.
impl Drop for TestMesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

impl TestMesh {
    /// `n` machines `192.0.2.1..n` on the internet bridge; `extra(i)` is appended to machine
    /// i's meshd config.
    pub async fn start(n: usize, extra: impl Fn(usize) -> String) -> TestMesh {
        Self::start_with(n, extra, |_| Place::Internet).await
    }

    /// Like [`TestMesh::start`], with each machine placed by `place(i)`.
    pub async fn start_with(
        n: usize,
        extra: impl Fn(usize) -> String,
        place: impl Fn(usize) -> Place,
    ) -> TestMesh {
        init_tracing();
        let internet = Internet::new();
        let cluster = Cluster::start(n).await;
        cluster
            .settled(Duration::from_secs(60))
            .await
            .expect("stated settles");
        let mut machines = Vec::new();
        for i in 0..n {
            let ns = Netns::new(&format!("m{i}"));
            let (nat, public_ip) = match place(i) {
                Place::Internet => {
                    let ip = format!("192.0.2.{}", i + 1);
                    internet.attach(&ns, "eth0", &format!("{ip}/24"));
                    (None, ip)
                }
                Place::BehindNat { forward } => {
                    let (nat, ip) = behind_nat(&internet, &ns, i, forward);
                    (Some(nat), ip)
                }
            };
            let bus = PrivateBus::start();
            let dbus = stated::dbus::serve(
                stated::Membership::of_running(cluster.node(i).shared().clone()),
                &bus.address,
            )
            .await
            .expect("stated serves D-Bus");
            let dir = tempfile::tempdir().unwrap();
            let config = base_config(&bus.address, &dir.path().join("meshd")) + &extra(i);
            let mut m = Machine {
                meshd: None,
                containers: Vec::new(),
                dbus,
                bus,
                ns,
                nat,
                dir,
                id: cluster.ids[i].clone(),
                public_ip,
                config,
            };
            m.start_meshd();
            machines.push(m);
        }
        TestMesh {
            machines,
            cluster,
            internet,
        }
    }

    /// Machine i's subnet index, from its state.
    pub fn subnet(&self, i: usize) -> u32 {
        self.cluster
            .node(i)
            .machine(&self.machines[i].id)
            .expect("registered")
            .subnet
    }

    /// `10.210.X.1` of machine i.
    pub fn mesh_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 210, self.subnet(i) as u8, 1)
    }

    /// Machine `from`'s view of machine `to` on D-Bus.
    pub async fn peer_row(
        &self,
        from: usize,
        to: usize,
    ) -> Option<uncloud_common::dbus::MeshPeerRow> {
        let rows = self.machines[from].proxy().await.peers().await.ok()?;
        rows.into_iter().find(|r| r.0 == self.machines[to].id)
    }

    /// Waits until `cond` holds for machine `from`'s row of machine `to`.
    pub async fn wait_row(
        &self,
        from: usize,
        to: usize,
        what: &str,
        deadline: Duration,
        cond: impl Fn(&uncloud_common::dbus::MeshPeerRow) -> bool,
    ) -> uncloud_common::dbus::MeshPeerRow {
        let start = Instant::now();
        loop {
            let row = self.peer_row(from, to).await;
            if let Some(r) = row.as_ref().filter(|r| cond(r)) {
                return r.clone();
            }
            if start.elapsed() > deadline {
                panic!("machine {from} never saw machine {to} {what}; last: {row:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every machine in `who` reports `want` peers, all up.
    pub async fn wait_all_up(&self, who: &[usize], want: usize, deadline: Duration) {
        let start = Instant::now();
        loop {
            let mut missing = Vec::new();
            for &i in who {
                let rows = match self.machines[i].proxy().await.peers().await {
                    Ok(r) => r,
                    Err(e) => {
                        missing.push(format!("machine {i}: {e}"));
                        continue;
                    }
                };
                let up = rows.iter().filter(|r| r.5 == "up").count();
                if rows.len() != want || up != want {
                    missing.push(format!(
                        "machine {i}: {up}/{} up of {want}: {rows:?}",
                        rows.len()
                    ));
                }
            }
            if missing.is_empty() {
                return;
            }
            if start.elapsed() > deadline {
                panic!("mesh not up: {missing:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn dump_logs(&self) {
        for m in &self.machines {
            eprintln!("===== meshd log of {} =====\n{}", m.id, m.log());
        }
    }

    /// Whether machine `from` pings `ip`, retrying for a few seconds.
    pub fn pings(&self, from: usize, ip: &str) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.machines[from].ns.ping(ip, 1) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// A namespace standing in for a container on machine i: a veth `ctr0` (the configured
    /// container bridge) with `10.210.X.1/24` on the machine side and `10.210.X.<host>/24` in
    /// the container, its default route through the machine.
    pub fn add_container(&mut self, i: usize, host: u8) -> Ipv4Addr {
        let x = self.subnet(i) as u8;
        let c = Netns::new(&format!("c{i}"));
        let m = &mut self.machines[i];
        m.ns.veth("ctr0", &c, "eth0");
        m.ns.addr("ctr0", &format!("10.210.{x}.1/24"));
        let ip = Ipv4Addr::new(10, 210, x, host);
        c.addr("eth0", &format!("{ip}/24"));
        c.ip(&["route", "add", "default", "via", &format!("10.210.{x}.1")]);
        m.containers.push(c);
        ip
    }
}

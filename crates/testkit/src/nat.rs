//! A NAT router: a namespace between a private LAN and the test internet that masquerades
//! what leaves, as a home router or a cloud's NAT gateway does.
//!
//! It is a symmetric NAT (`masquerade fully-random`): every new destination gets a new
//! external port, so a hole punched towards one peer does not open for another, and two
//! machines behind two of them reach each other only through a relay. Its LAN side is a
//! veth to a namespace machine ([`Nat::attach`]) or a tap device for a VM ([`Nat::tap`]),
//! optionally with DHCP ([`Nat::dhcp`], dnsmasq) as a home router hands out addresses.

use std::net::Ipv4Addr;

use crate::{Daemon, Internet, Netns};

pub struct Nat {
    /// dnsmasq serving the LAN, when asked for (dropped before the namespace).
    dhcp: Option<Daemon>,
    pub ns: Netns,
    /// Its address on the internet: what every machine behind it appears as.
    pub public_ip: Ipv4Addr,
    dir: tempfile::TempDir,
}

impl Nat {
    /// A router on `internet` at `public_ip` (a /24 of the internet's).
    pub fn new(internet: &Internet, label: &str, public_ip: Ipv4Addr) -> Nat {
        let ns = Netns::new(label);
        internet.attach(&ns, "eth0", &format!("{public_ip}/24"));
        ns.sysctl("ipv4/ip_forward", "1");
        let dir = tempfile::Builder::new()
            .prefix("uncloud-nat-")
            .tempdir()
            .unwrap();
        let nat = Nat {
            dhcp: None,
            ns,
            public_ip,
            dir,
        };
        nat.nft(
            "table ip nat {\n  chain postrouting {\n    \
             type nat hook postrouting priority srcnat; oifname \"eth0\" masquerade fully-random;\n  }\n}\n",
        );
        nat
    }

    /// Loads `rules` (an nftables script) into the router.
    pub fn nft(&self, rules: &str) {
        let path = self.dir.path().join("rules.nft");
        std::fs::write(&path, rules).unwrap();
        let out = self.ns.exec("nft", &["-f", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "nft in the NAT: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Puts `machine` behind the router: a veth `lan0` (router, `gateway/24`) to the
    /// machine's `eth0` (`address/24`), with its default route through the router.
    pub fn attach(&self, machine: &Netns, gateway: Ipv4Addr, address: Ipv4Addr) {
        self.ns.veth("lan0", machine, "eth0");
        self.ns.addr("lan0", &format!("{gateway}/24"));
        machine.addr("eth0", &format!("{address}/24"));
        machine.ip(&["route", "add", "default", "via", &gateway.to_string()]);
    }

    /// A tap device `ifname` as the router's LAN port for one VM (QEMU must run in
    /// [`Nat::ns`]), the router at `gateway/24` on it.
    pub fn tap(&self, ifname: &str, gateway: Ipv4Addr) {
        self.ns.ip(&["tuntap", "add", "dev", ifname, "mode", "tap"]);
        self.ns.addr(ifname, &format!("{gateway}/24"));
        self.ns.ip(&["link", "set", ifname, "up"]);
    }

    /// Hands `address` (with the router on `ifname` as gateway) to whatever asks for an
    /// address by DHCP on `ifname`: dnsmasq, DHCP only (no DNS).
    pub fn dhcp(&mut self, ifname: &str, gateway: Ipv4Addr, address: Ipv4Addr) {
        let p = |f: &str| self.dir.path().join(f);
        let mut cmd = self.ns.command("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--log-facility=-",
            "--log-dhcp",
            "--port=0",
            "--no-resolv",
            "--no-hosts",
            "--bind-dynamic",
            "--user=root",
        ])
        .arg(format!("--interface={ifname}"))
        .arg(format!("--dhcp-range={address},{address},255.255.255.0,1h"))
        .arg(format!("--dhcp-option=option:router,{gateway}"))
        .arg(format!("--dhcp-leasefile={}", p("leases").display()))
        .arg(format!("--pid-file={}", p("dnsmasq.pid").display()));
        self.dhcp = Some(Daemon::spawn("dnsmasq", cmd, p("dnsmasq.log")));
    }

    /// The DHCP server's log, for a failing test.
    pub fn dhcp_log(&self) -> String {
        self.dhcp.as_ref().map(Daemon::log_text).unwrap_or_default()
    }
}

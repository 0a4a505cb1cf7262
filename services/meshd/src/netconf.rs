//! The machine's network configuration around the WireGuard device: the TUN's address, MTU and
//! the mesh route, the egress MTU, and which local addresses are worth advertising.
//!
//! Changes go through `ip` (iproute2, part of every Uncloud image), whose JSON output
//! (`ip -j`) is parsed by pure functions tested without a network. The local addresses, read
//! every few seconds, come from getifaddrs(3) instead: a child process that often costs an
//! idle machine more than everything else meshd does between packets.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use serde::Deserialize;
use uncloud_common::address::MeshCidr;

/// The worst-case overhead per packet: IPv6 (40) + UDP (8) + WireGuard (32) + meshd's relay
/// header (8), so relayed packets over IPv6 fit the egress MTU too.
pub const WIREGUARD_OVERHEAD: u16 = 88;
/// The TUN MTU when the egress interface cannot be found (1500 - 88).
pub const FALLBACK_MTU: u16 = 1412;

#[derive(Debug, thiserror::Error)]
#[error("`ip {args}` failed: {reason}")]
pub struct IpError {
    pub args: String,
    pub reason: String,
}

/// Runs `ip ARGS` and returns its stdout.
pub fn ip(args: &[&str]) -> Result<String, IpError> {
    let err = |reason: String| IpError {
        args: args.join(" "),
        reason,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| err(format!("cannot run ip (is iproute2 installed?): {e}")))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Gives the TUN device `address/32` (replacing any other), sets its MTU, brings it up and
/// routes the whole mesh through it with `address` as the source.
pub fn configure_tun(
    ifname: &str,
    address: Ipv4Addr,
    mtu: u16,
    mesh: &MeshCidr,
) -> Result<(), IpError> {
    let addr = format!("{address}/32");
    ip(&["addr", "flush", "dev", ifname])?;
    ip(&["addr", "add", &addr, "dev", ifname])?;
    ip(&["link", "set", "dev", ifname, "mtu", &mtu.to_string(), "up"])?;
    ip(&[
        "route",
        "replace",
        &mesh.to_string(),
        "dev",
        ifname,
        "src",
        &address.to_string(),
    ])?;
    Ok(())
}

#[derive(Debug, Deserialize)]
struct RouteGet {
    dev: Option<String>,
}

/// The TUN MTU: the MTU of the interface the default route leaves through, minus WireGuard's
/// overhead; [`FALLBACK_MTU`] when there is no default route.
pub fn tun_mtu() -> u16 {
    let dev = ip(&["-j", "route", "get", "1.1.1.1"])
        .ok()
        .and_then(|out| serde_json::from_str::<Vec<RouteGet>>(&out).ok())
        .and_then(|routes| routes.into_iter().find_map(|r| r.dev));
    let Some(dev) = dev else {
        return FALLBACK_MTU;
    };
    std::fs::read_to_string(format!("/sys/class/net/{dev}/mtu"))
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .map(mtu_for_egress)
        .unwrap_or(FALLBACK_MTU)
}

/// The TUN MTU for an egress interface MTU, never below IPv6's minimum of 1280.
pub fn mtu_for_egress(egress: u16) -> u16 {
    egress.saturating_sub(WIREGUARD_OVERHEAD).max(1280)
}

/// One interface, as [`advertisable`] needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub ifname: String,
    pub up: bool,
    pub loopback: bool,
    pub addrs: Vec<IpAddr>,
}

/// What sysfs says about an interface (asked by [`advertisable`] through a closure so tests
/// need no devices).
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkKind {
    pub is_bridge: bool,
    pub is_tun: bool,
    /// A bridge port or bond member (it has a master): not the machine's own uplink.
    pub is_port: bool,
}

pub fn link_kind(ifname: &str) -> LinkKind {
    let has = |f: &str| std::path::Path::new(&format!("/sys/class/net/{ifname}/{f}")).exists();
    LinkKind {
        is_bridge: has("bridge"),
        is_tun: has("tun_flags"),
        is_port: has("master"),
    }
}

/// Whether `ip` is reachable beyond this link and host (what `ip addr` shows as scope global):
/// not loopback, not link-local, not unspecified.
pub fn is_global_scope(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
        IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unicast_link_local() || v6.is_unspecified()),
    }
}

/// The addresses worth advertising among `links`: global-scope addresses of interfaces that
/// are up and are not loopback, `own_tun`, bridges (container networks), bridge ports
/// (container veths) or TUN devices (VPNs), and not inside the mesh itself.
pub fn advertisable(
    links: &[Link],
    own_tun: &str,
    mesh: &MeshCidr,
    kind: impl Fn(&str) -> LinkKind,
) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for link in links {
        if link.ifname == "lo" || link.ifname == own_tun || !link.up || link.loopback {
            continue;
        }
        let k = kind(&link.ifname);
        if k.is_bridge || k.is_tun || k.is_port {
            continue;
        }
        for &a in &link.addrs {
            let in_mesh = matches!(a, IpAddr::V4(v4) if mesh.contains(v4));
            if is_global_scope(a) && !in_mesh && !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// This machine's interfaces and their addresses, from getifaddrs(3).
pub fn links() -> nix::Result<Vec<Link>> {
    use nix::net::if_::InterfaceFlags;
    let mut links: Vec<Link> = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let i = match links.iter().position(|l| l.ifname == ifa.interface_name) {
            Some(i) => i,
            None => {
                links.push(Link {
                    up: ifa.flags.contains(InterfaceFlags::IFF_UP),
                    loopback: ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK),
                    ifname: ifa.interface_name.clone(),
                    addrs: Vec::new(),
                });
                links.len() - 1
            }
        };
        let ip = ifa.address.as_ref().and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        });
        if let Some(ip) = ip {
            links[i].addrs.push(ip);
        }
    }
    Ok(links)
}

/// This machine's advertisable addresses ([`links`] through [`advertisable`]).
pub fn local_addresses(own_tun: &str, mesh: &MeshCidr) -> nix::Result<Vec<IpAddr>> {
    Ok(advertisable(&links()?, own_tun, mesh, link_kind))
}

/// Turns on IPv4 forwarding, so mesh traffic reaches the container bridge.
pub fn enable_forwarding() -> std::io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(ifname: &str, up: bool, addrs: &[&str]) -> Link {
        Link {
            ifname: ifname.into(),
            up,
            loopback: ifname == "lo",
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn only_uplink_addresses_are_advertised() {
        let links = [
            link("lo", true, &["127.0.0.1", "::1"]),
            link(
                "eth0",
                true,
                &["192.0.2.10", "2001:db8::10", "fe80::1", "169.254.3.4"],
            ),
            link("eth1", false, &["198.51.100.3"]),
            link("uncloud", true, &["10.210.1.1"]),
            link("uncloud0", true, &["10.210.1.1"]),
            link("docker0", true, &["172.17.0.1"]),
            link("veth12", true, &["192.0.2.77"]),
            link("tun9", true, &["100.64.0.1"]),
            link("wlan0", true, &["192.168.1.20", "192.0.2.10"]),
            link("wg9", true, &["10.210.7.1"]),
        ];
        let kind = |name: &str| LinkKind {
            is_bridge: name == "docker0" || name == "uncloud0",
            is_tun: name == "tun9",
            is_port: name == "veth12",
        };
        let got = advertisable(&links, "uncloud", &MeshCidr::default(), kind);
        let want: Vec<IpAddr> = ["192.0.2.10", "2001:db8::10", "192.168.1.20"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn this_hosts_loopback_is_never_advertised() {
        let got = local_addresses("uncloud", &MeshCidr::default()).unwrap();
        assert!(got.iter().all(|ip| !ip.is_loopback()), "{got:?}");
        let lo = links()
            .unwrap()
            .into_iter()
            .find(|l| l.ifname == "lo")
            .unwrap();
        assert!(lo.up && lo.loopback && lo.addrs.contains(&"127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn mtu_leaves_room_for_wireguard() {
        assert_eq!(mtu_for_egress(1500), 1412);
        assert_eq!(mtu_for_egress(9000), 8912);
        assert_eq!(mtu_for_egress(1300), 1280);
    }
}

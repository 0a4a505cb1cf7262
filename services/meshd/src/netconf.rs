//! The machine's network configuration around the WireGuard device: the TUN's address, MTU and
//! the mesh route, the egress MTU, and which local addresses are worth advertising.
//!
//! Changes go through `ip` (iproute2, part of every Uncloud image), whose JSON output
//! (`ip -j`) is parsed by pure functions tested without a network.

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

#[derive(Debug, Deserialize)]
pub struct Link {
    pub ifname: String,
    #[serde(default)]
    pub flags: Vec<String>,
    /// Set on bridge ports and bond members: such interfaces are not the machine's own uplink.
    #[serde(default)]
    pub master: Option<String>,
    #[serde(default)]
    pub addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Deserialize)]
pub struct AddrInfo {
    pub local: IpAddr,
    #[serde(default)]
    pub scope: String,
}

/// What sysfs says about an interface (asked by [`advertisable`] through a closure so tests
/// need no devices).
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkKind {
    pub is_bridge: bool,
    pub is_tun: bool,
}

pub fn link_kind(ifname: &str) -> LinkKind {
    let has = |f: &str| std::path::Path::new(&format!("/sys/class/net/{ifname}/{f}")).exists();
    LinkKind {
        is_bridge: has("bridge"),
        is_tun: has("tun_flags"),
    }
}

/// The addresses worth advertising from `ip -j addr show` output: global-scope addresses of
/// interfaces that are up and are not loopback, `own_tun`, bridges (container networks),
/// bridge ports (container veths) or TUN devices (VPNs), and not inside the mesh itself.
pub fn advertisable(
    ip_addr_json: &str,
    own_tun: &str,
    mesh: &MeshCidr,
    kind: impl Fn(&str) -> LinkKind,
) -> Result<Vec<IpAddr>, serde_json::Error> {
    let links: Vec<Link> = serde_json::from_str(ip_addr_json)?;
    let mut out = Vec::new();
    for link in links {
        if link.ifname == "lo"
            || link.ifname == own_tun
            || link.master.is_some()
            || !link.flags.iter().any(|f| f == "UP")
            || link.flags.iter().any(|f| f == "LOOPBACK")
        {
            continue;
        }
        let k = kind(&link.ifname);
        if k.is_bridge || k.is_tun {
            continue;
        }
        for a in link.addr_info {
            let in_mesh = matches!(a.local, IpAddr::V4(v4) if mesh.contains(v4));
            if a.scope == "global" && !in_mesh && !out.contains(&a.local) {
                out.push(a.local);
            }
        }
    }
    Ok(out)
}

/// This machine's advertisable addresses, read with `ip -j addr show`.
pub fn local_addresses(own_tun: &str, mesh: &MeshCidr) -> Result<Vec<IpAddr>, IpError> {
    let json = ip(&["-j", "addr", "show"])?;
    advertisable(&json, own_tun, mesh, link_kind).map_err(|e| IpError {
        args: "-j addr show".into(),
        reason: format!("unexpected output: {e}"),
    })
}

/// Turns on IPv4 forwarding, so mesh traffic reaches the container bridge.
pub fn enable_forwarding() -> std::io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"[
      {"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"127.0.0.1","scope":"host"}]},
      {"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"addr_info":[
         {"family":"inet","local":"192.0.2.10","scope":"global"},
         {"family":"inet6","local":"2001:db8::10","scope":"global"},
         {"family":"inet6","local":"fe80::1","scope":"link"}]},
      {"ifname":"eth1","flags":["BROADCAST","MULTICAST"],"addr_info":[{"family":"inet","local":"198.51.100.3","scope":"global"}]},
      {"ifname":"uncloud","flags":["POINTOPOINT","UP"],"addr_info":[{"family":"inet","local":"10.210.1.1","scope":"global"}]},
      {"ifname":"uncloud0","flags":["BROADCAST","UP"],"addr_info":[{"family":"inet","local":"10.210.1.1","scope":"global"}]},
      {"ifname":"docker0","flags":["BROADCAST","UP"],"addr_info":[{"family":"inet","local":"172.17.0.1","scope":"global"}]},
      {"ifname":"veth12","flags":["BROADCAST","UP"],"master":"docker0","addr_info":[]},
      {"ifname":"tun9","flags":["POINTOPOINT","UP"],"addr_info":[{"family":"inet","local":"100.64.0.1","scope":"global"}]},
      {"ifname":"wlan0","flags":["UP"],"addr_info":[{"family":"inet","local":"192.168.1.20","scope":"global"},{"family":"inet","local":"192.0.2.10","scope":"global"}]}
    ]"#;

    #[test]
    fn only_uplink_addresses_are_advertised() {
        let kind = |name: &str| LinkKind {
            is_bridge: name == "docker0" || name == "uncloud0",
            is_tun: name == "tun9",
        };
        let got = advertisable(SAMPLE, "uncloud", &MeshCidr::default(), kind).unwrap();
        let want: Vec<IpAddr> = ["192.0.2.10", "2001:db8::10", "192.168.1.20"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn garbage_output_is_an_error_not_a_panic() {
        let kind = |_: &str| LinkKind::default();
        assert!(advertisable("{", "uncloud", &MeshCidr::default(), kind).is_err());
    }

    #[test]
    fn mtu_leaves_room_for_wireguard() {
        assert_eq!(mtu_for_egress(1500), 1412);
        assert_eq!(mtu_for_egress(9000), 8912);
        assert_eq!(mtu_for_egress(1300), 1280);
    }
}

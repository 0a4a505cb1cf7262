//! The mesh address plan: one /24 per machine inside the mesh CIDR.
//!
//! | address | meaning |
//! |---|---|
//! | `10.210.0.0/16` | the whole mesh (the default [`MeshCidr`]) |
//! | `10.210.X.0/24` | subnet of machine X (its container bridge) |
//! | `10.210.X.1` | machine X: its bridge gateway and its only address on the WireGuard TUN |
//!
//! Subnet index 0 is the network address and never assigned, so a /16 holds 255 machines.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// The default mesh CIDR, used when the network's state does not set one.
pub const DEFAULT_MESH_CIDR: &str = "10.210.0.0/16";

/// An IPv4 network holding one /24 per machine: prefix between /8 and /23.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MeshCidr {
    network: Ipv4Addr,
    prefix: u8,
}

/// A mesh CIDR that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mesh CIDR {value:?}: {why}")]
pub struct MeshCidrError {
    pub value: String,
    pub why: &'static str,
}

impl FromStr for MeshCidr {
    type Err = MeshCidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| MeshCidrError {
            value: s.to_string(),
            why,
        };
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| err("expected a.b.c.d/prefix"))?;
        let network: Ipv4Addr = ip.parse().map_err(|_| err("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| err("prefix is not a number"))?;
        if !(8..=23).contains(&prefix) {
            return Err(err(
                "prefix must be between /8 and /23 (one /24 per machine)",
            ));
        }
        if u32::from(network) & !mask(prefix) != 0 {
            return Err(err("host bits are set; use the network address"));
        }
        Ok(MeshCidr { network, prefix })
    }
}

impl fmt::Display for MeshCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Default for MeshCidr {
    fn default() -> Self {
        DEFAULT_MESH_CIDR
            .parse()
            .expect("the default mesh CIDR is valid")
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX << (32 - u32::from(prefix))
}

impl MeshCidr {
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// How many machine subnets fit: indices `1..=capacity`.
    pub fn capacity(&self) -> u32 {
        (1u32 << (24 - self.prefix)) - 1
    }

    /// The network address of machine `index`'s /24, or `None` outside `1..=capacity`.
    pub fn subnet(&self, index: u32) -> Option<Ipv4Addr> {
        if index == 0 || index > self.capacity() {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.network) + (index << 8)))
    }

    /// `10.210.X.1`: the machine's own mesh address.
    pub fn machine_ip(&self, index: u32) -> Option<Ipv4Addr> {
        self.subnet(index).map(|n| Ipv4Addr::from(u32::from(n) + 1))
    }

    /// Whether `ip` lies inside the mesh.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    /// Whether a connection from `peer` comes from another machine's mesh address (not this
    /// machine's `own`, not a container's, not outside the mesh); returns that address.
    /// Machine-to-machine services (stated's sync, dockerd-shim's and apid's mesh ports) serve
    /// only such peers: WireGuard vouches for the source address.
    pub fn machine_peer(&self, peer: IpAddr, own: Ipv4Addr) -> Result<Ipv4Addr, String> {
        let ip = match peer {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip) => ip
                .to_ipv4_mapped()
                .ok_or_else(|| format!("{peer} is not a mesh address"))?,
        };
        if ip == own {
            return Err(format!("{ip} is this machine"));
        }
        match self.index_of(ip) {
            Some(index) if self.machine_ip(index) == Some(ip) => Ok(ip),
            Some(_) => Err(format!("{ip} is a container, not a machine")),
            None => Err(format!("{ip} is outside the mesh {self}")),
        }
    }

    /// The subnet index `ip` belongs to, if it is inside the mesh and not in index 0.
    pub fn index_of(&self, ip: Ipv4Addr) -> Option<u32> {
        if !self.contains(ip) {
            return None;
        }
        let index = (u32::from(ip) - u32::from(self.network)) >> 8;
        (index != 0).then_some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_matches_the_design() {
        let m = MeshCidr::default();
        assert_eq!(m.to_string(), "10.210.0.0/16");
        assert_eq!(m.capacity(), 255);
        assert_eq!(m.subnet(1), Some("10.210.1.0".parse().unwrap()));
        assert_eq!(m.machine_ip(7), Some("10.210.7.1".parse().unwrap()));
        assert_eq!(m.machine_ip(255), Some("10.210.255.1".parse().unwrap()));
        assert_eq!(m.subnet(0), None);
        assert_eq!(m.subnet(256), None);
        assert_eq!(m.index_of("10.210.7.33".parse().unwrap()), Some(7));
        assert_eq!(m.index_of("10.210.0.5".parse().unwrap()), None);
        assert_eq!(m.index_of("10.211.7.1".parse().unwrap()), None);
    }

    #[test]
    fn other_sizes() {
        let m: MeshCidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!(m.capacity(), 65535);
        assert_eq!(m.machine_ip(256), Some("10.1.0.1".parse().unwrap()));
        let m: MeshCidr = "192.168.0.0/23".parse().unwrap();
        assert_eq!(m.capacity(), 1);
        assert_eq!(m.machine_ip(1), Some("192.168.1.1".parse().unwrap()));
    }

    #[test]
    fn bad_cidrs_say_why() {
        for (bad, why) in [
            ("10.210.0.0", "expected"),
            ("10.210.0.0/24", "between"),
            ("10.210.0.0/7", "between"),
            ("10.210.1.0/16", "host bits"),
            ("fd00::/16", "IPv4"),
            ("10.210.0.0/x", "number"),
        ] {
            let e = bad.parse::<MeshCidr>().unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }
}

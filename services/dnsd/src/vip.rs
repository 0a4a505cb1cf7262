//! The services' virtual addresses in nftables: a connection to `lb.<service>.internal` goes to
//! one of the service's containers.
//!
//! Every machine programs the same balancing for its own traffic and its containers', so a
//! virtual address never crosses the mesh: the first packet of a connection (TCP or UDP, any
//! port) is rewritten at `dstnat` in `prerouting` (from containers) and `output` (from the
//! machine itself) to a container picked at random among those the service's name answers
//! right now ([`crate::names::Names::balanced`]); conntrack takes care of the rest of the
//! connection. The port is kept. The shape is Kubernetes' nftables proxy: a verdict map from
//! virtual address to a chain per service.
//!
//! - A virtual address without containers (or unknown) refuses at once: TCP gets a reset,
//!   anything else an ICMP error, rather than a packet sent into the mesh to time out.
//! - A container that reaches its own service through the address, and lands on a container
//!   of its own bridge, is masqueraded behind the bridge's address; otherwise the answer would
//!   go straight back over the bridge and never be un-rewritten.
//! - A container may land on itself. The answer then leaves the bridge through the port the
//!   question came in by, which a Linux bridge refuses unless the port is in hairpin mode:
//!   dnsd turns it on for every port of the container bridge (Docker does the same with its
//!   userland proxy off; Kubernetes' kubelet too).
//! - Nothing else is masqueraded: containers on other machines see the client's own address.
//!
//! The table is `ip uncloud_vips`, replaced whole in one `nft -f` transaction when what it
//! balances changes (and every few ticks, in case a host firewall reload flushed it). It stays
//! when dnsd stops: the connections keep working, balanced as last seen, until dnsd is back.
//! With `virtual_addresses = false` dnsd deletes it.
//!
//! Limitations: connections already open to a container that stops are not cut (conntrack
//! keeps them until they end); balancing is random per connection, not by load.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use uncloud_common::address::MeshCidr;
use uncloud_common::nft::{self, FirewallError};
use uncloud_common::vips;

pub const TABLE: &str = "uncloud_vips";

/// What the table says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The virtual address range (`10.210.0.0/24`).
    pub range: String,
    /// This machine's subnet and bridge address, when it has one: where hairpin connections
    /// are masqueraded.
    pub bridge: Option<(String, Ipv4Addr)>,
    /// Virtual address -> the containers it balances over.
    pub balanced: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
}

impl Rules {
    /// The rules for machine subnet `subnet` (0: none yet) of `mesh`.
    pub fn new(
        mesh: &MeshCidr,
        subnet: u32,
        balanced: &BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
    ) -> Rules {
        Rules {
            range: vips::range(mesh),
            bridge: mesh
                .subnet(subnet)
                .zip(mesh.machine_ip(subnet))
                .map(|(net, gw)| (format!("{net}/24"), gw)),
            balanced: balanced.clone(),
        }
    }
}

/// The chain of one virtual address: named by its last byte (the range is one /24).
fn chain(vip: Ipv4Addr) -> String {
    format!("vip_{}", vip.octets()[3])
}

/// The whole table as an `nft -f` script that atomically replaces any previous version. Pure.
pub fn ruleset(r: &Rules) -> String {
    let range = &r.range;
    let head = nft::replace_table("ip", TABLE);
    let live: Vec<(&Ipv4Addr, &Vec<Ipv4Addr>)> =
        r.balanced.iter().filter(|(_, to)| !to.is_empty()).collect();
    let elements = if live.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = live
            .iter()
            .map(|(vip, _)| format!("{vip} : goto {}", chain(**vip)))
            .collect();
        format!("    elements = {{ {} }}\n", list.join(", "))
    };
    let hairpin = match &r.bridge {
        Some((subnet, gw)) => format!(
            "    ct status dnat ct original ip daddr {range} ip saddr {subnet} ip daddr {subnet} ip saddr != {gw} masquerade comment \"a container reaching a container of its own bridge through a virtual address\"\n"
        ),
        None => String::new(),
    };
    let mut chains = String::new();
    for (vip, to) in &live {
        let target = match to.as_slice() {
            [one] => one.to_string(),
            many => {
                let map: Vec<String> = many
                    .iter()
                    .enumerate()
                    .map(|(i, ip)| format!("{i} : {ip}"))
                    .collect();
                format!(
                    "numgen random mod {} map {{ {} }}",
                    many.len(),
                    map.join(", ")
                )
            }
        };
        chains += &format!("  chain {} {{\n    dnat to {target}\n  }}\n", chain(**vip));
    }
    format!(
        r#"{head}table ip {TABLE} {{
  map services {{
    type ipv4_addr : verdict
{elements}  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {range} meta l4proto {{ tcp, udp }} ip daddr vmap @services
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    ip daddr {range} meta l4proto {{ tcp, udp }} ip daddr vmap @services
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
{hairpin}  }}
  chain refuse {{
    meta l4proto tcp reject with tcp reset
    reject
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ip daddr {range} jump refuse comment "a virtual address without containers"
  }}
  chain output_filter {{
    type filter hook output priority filter; policy accept;
    ip daddr {range} jump refuse comment "a virtual address without containers"
  }}
{chains}}}
"#
    )
}

/// Turns hairpin mode on for every port of `bridge` that has it off; how many it turned on.
/// No bridge (no container yet, no Docker): nothing to do.
pub fn hairpin_ports(bridge: &str) -> std::io::Result<usize> {
    let ports = match std::fs::read_dir(format!("/sys/class/net/{bridge}/brif")) {
        Ok(ports) => ports,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut turned = 0;
    for port in ports {
        let path = port?.path().join("hairpin_mode");
        // A port can go away between the listing and the write (a container stopped).
        let Ok(mode) = std::fs::read_to_string(&path) else {
            continue;
        };
        if mode.trim() != "1" && std::fs::write(&path, "1").is_ok() {
            turned += 1;
        }
    }
    Ok(turned)
}

/// Keeps the table in step with the names; logs a failure once until the next success.
#[derive(Debug)]
struct Programmer {
    /// The container bridge, whose ports get hairpin mode.
    bridge: String,
    loaded: Option<Rules>,
    failing: bool,
}

impl Programmer {
    fn new(bridge: &str) -> Programmer {
        Programmer {
            bridge: bridge.to_string(),
            loaded: None,
            failing: false,
        }
    }

    /// Loads `rules` if they differ from what is loaded, or always with `again`.
    fn apply(&mut self, rules: Rules, again: bool) {
        if !again && self.loaded.as_ref() == Some(&rules) {
            return;
        }
        // Before the rules: a container balanced to itself must find its port ready.
        if let Err(e) = hairpin_ports(&self.bridge) {
            tracing::warn!(bridge = %self.bridge, error = %e, "cannot set hairpin mode: a container reaching its own service through lb. may land on itself and time out");
        }
        match nft::load(&ruleset(&rules), "loading the virtual addresses") {
            Ok(()) => {
                if std::mem::replace(&mut self.failing, false) || self.loaded.is_none() {
                    tracing::info!(
                        addresses = rules.balanced.len(),
                        range = %rules.range,
                        "virtual addresses balanced in nftables"
                    );
                }
                self.loaded = Some(rules);
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(error = %e, "connections to lb.<service>.internal will fail");
                }
                self.failing = true;
                self.loaded = None;
            }
        }
    }
}

/// The programmer on a thread of its own: each load starts `nft` (about 20 ms for 254
/// services) and walks the bridge's ports in sysfs, which must not hold up the names on the
/// daemon's loop. Rules sent while it loads are coalesced; only the latest is loaded.
pub struct Background {
    tx: std::sync::mpsc::Sender<(Rules, bool)>,
}

impl Background {
    pub fn spawn(bridge: &str) -> std::io::Result<Background> {
        let (tx, rx) = std::sync::mpsc::channel::<(Rules, bool)>();
        let mut programmer = Programmer::new(bridge);
        std::thread::Builder::new()
            .name("vip".into())
            .spawn(move || {
                while let Ok(mut latest) = rx.recv() {
                    while let Ok((rules, again)) = rx.try_recv() {
                        latest = (rules, latest.1 || again);
                    }
                    programmer.apply(latest.0, latest.1);
                }
            })?;
        Ok(Background { tx })
    }

    /// Loads `rules` soon (see [`Programmer::apply`]).
    pub fn apply(&self, rules: Rules, again: bool) {
        let _ = self.tx.send((rules, again));
    }
}

/// Deletes the table (virtual addresses turned off).
pub fn remove() -> Result<(), FirewallError> {
    nft::delete_table("ip", TABLE, "deleting the virtual addresses")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn rules() -> Rules {
        let balanced = BTreeMap::from([
            (ip("10.210.0.1"), vec![ip("10.210.3.2")]),
            (
                ip("10.210.0.2"),
                vec![ip("10.210.3.3"), ip("10.210.4.2"), ip("10.210.4.3")],
            ),
            (ip("10.210.0.3"), vec![]),
        ]);
        Rules::new(&MeshCidr::default(), 3, &balanced)
    }

    #[test]
    fn each_address_with_containers_gets_a_chain_that_picks_one() {
        let text = ruleset(&rules());
        assert!(text.starts_with("table ip uncloud_vips {}\ndelete table ip uncloud_vips\n"));
        assert!(text.contains("elements = { 10.210.0.1 : goto vip_1, 10.210.0.2 : goto vip_2 }"));
        assert!(text.contains("chain vip_1 {\n    dnat to 10.210.3.2\n  }"));
        assert!(text.contains(
            "dnat to numgen random mod 3 map { 0 : 10.210.3.3, 1 : 10.210.4.2, 2 : 10.210.4.3 }"
        ));
        assert!(
            !text.contains("vip_3"),
            "no containers: refused, not balanced"
        );
        assert!(text.contains(
            "ct status dnat ct original ip daddr 10.210.0.0/24 ip saddr 10.210.3.0/24 ip daddr 10.210.3.0/24 ip saddr != 10.210.3.1 masquerade"
        ));
        // Both the machine's own traffic and its containers' are balanced.
        assert_eq!(text.matches("ip daddr vmap @services").count(), 2);
        assert_eq!(text.matches("jump refuse").count(), 2);
    }

    #[test]
    fn without_addresses_or_a_subnet_the_table_still_loads() {
        let r = Rules::new(&MeshCidr::default(), 0, &BTreeMap::new());
        let text = ruleset(&r);
        assert!(!text.contains("elements"));
        assert!(!text.contains("masquerade"));
        assert!(text.contains("type ipv4_addr : verdict\n  }"));
    }
}

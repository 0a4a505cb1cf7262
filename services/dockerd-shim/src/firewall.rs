//! The rules between the container bridge, the mesh and the outside world.
//!
//! Docker's masquerade is off on the `uncloud` network (containers must keep their mesh
//! addresses across the mesh), and Docker's `FORWARD` chain drops new connections into a
//! bridge from anywhere but its published ports, but only while its policy is `DROP`: Docker
//! sets that policy only when it turns `ip_forward` on itself, which on the image it usually
//! does (Docker starts early in the boot, meshd later, and either turns it on), and the shim's
//! rules must hold whichever came first. So the shim adds:
//!
//! - in Docker's own `DOCKER-USER` chain (which Docker keeps across restarts and jumps to
//!   first): accept from the mesh device into the bridge, so other machines and their
//!   containers reach this machine's containers directly;
//! - in a table of its own, `ip uncloud_containers`, replaced atomically on every apply:
//!   - masquerade for container traffic leaving the mesh (the internet sees the machine);
//!   - drop anything from the bridge whose source is not this machine's subnet, so a container
//!     cannot speak with another machine's or container's address;
//!   - drop new connections forwarded into the bridge from anywhere but the mesh, the bridge
//!     itself and Docker's published ports (DNAT), whatever Docker's `FORWARD` policy is: the
//!     internet (and the provider's private network) never reach a container directly;
//!   - drop anything forwarded to the cloud provider's metadata service (169.254.169.254), from
//!     containers on any bridge: its user-data can hold the machine's setup token or join
//!     ticket. The machine itself (cloud-init) still reaches it: its own traffic is not
//!     forwarded.
//!
//! Both are re-applied periodically, since a host firewall reload can flush them. They stay
//! when the shim stops: the containers keep running and keep needing them.
//!
//! Limitations: `DOCKER-USER` exists only when dockerd manages iptables (the default); with
//! `--iptables=false` nothing drops forwarded traffic in Docker's name and the rule is not
//! needed, so its absence is logged, not fatal. Docker makes the chain when it sets up a
//! network, at start for its default bridge `docker0`: with `"bridge": "none"` the networks it
//! restores after a reboot do not make it, the chain is missing (the same log line) while the
//! `FORWARD` policy is `DROP`, and other machines cannot reach the containers. The image keeps
//! `docker0` for that reason.

use uncloud_common::address::MeshCidr;
use uncloud_common::nft::{self, FirewallError};

pub const TABLE: &str = "uncloud_containers";

/// Where VPS providers serve metadata and user-data (EC2, GCE, Azure, Hetzner, …).
pub const METADATA_ADDRESS: &str = "169.254.169.254";

/// What the rules are about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The container bridge (`uncloud0`).
    pub bridge: String,
    /// meshd's TUN device (`uncloud`).
    pub mesh_interface: String,
    /// This machine's subnet, `10.210.X.0/24`.
    pub subnet: String,
    pub mesh: MeshCidr,
}

/// The table as an `nft -f` script that atomically replaces any previous version. Pure.
pub fn ruleset(r: &Rules) -> String {
    let Rules {
        bridge,
        mesh_interface,
        subnet,
        mesh,
    } = r;
    let head = nft::replace_table("ip", TABLE);
    format!(
        r#"{head}table ip {TABLE} {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{bridge}" ip saddr != {subnet} drop comment "containers speak only from their own addresses"
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{bridge}" ip saddr != {subnet} drop comment "containers speak only from their own addresses"
    ip daddr {METADATA_ADDRESS} drop comment "containers do not read the provider's metadata"
    oifname "{bridge}" ct state established,related accept
    oifname "{bridge}" iifname {{ "{mesh_interface}", "{bridge}" }} accept
    oifname "{bridge}" ct status dnat accept comment "published ports"
    oifname "{bridge}" drop comment "only the mesh and published ports reach containers"
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} ip daddr != {mesh} oifname != "{bridge}" masquerade comment "containers reach beyond the mesh as this machine"
  }}
}}
"#
    )
}

/// The `DOCKER-USER` rule, as iptables arguments after the chain name.
pub fn docker_user_rule(r: &Rules) -> Vec<String> {
    [
        "-i",
        &r.mesh_interface,
        "-o",
        &r.bridge,
        "-m",
        "comment",
        "--comment",
        "uncloud: the mesh reaches containers",
        "-j",
        "ACCEPT",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn iptables(op: &str, r: &Rules, what: &'static str) -> Result<(), FirewallError> {
    let rule = docker_user_rule(r);
    let mut args = vec!["-w", op, "DOCKER-USER"];
    args.extend(rule.iter().map(String::as_str));
    nft::run("iptables", &args, None, what)
}

/// Loads the table and makes sure the `DOCKER-USER` rule is there (once).
pub fn apply(r: &Rules) -> Result<(), FirewallError> {
    nft::load(&ruleset(r), "loading the container rules")?;
    if iptables("-C", r, "checking DOCKER-USER").is_ok() {
        return Ok(());
    }
    match nft::run("iptables", &["-w", "-n", "-L", "DOCKER-USER"], None, "") {
        Err(_) => {
            tracing::warn!("no DOCKER-USER chain: is dockerd running with --iptables=false?");
            Ok(())
        }
        Ok(()) => iptables("-I", r, "adding the mesh rule to DOCKER-USER"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_masquerades_only_beyond_the_mesh() {
        let r = Rules {
            bridge: "uncloud0".into(),
            mesh_interface: "uncloud".into(),
            subnet: "10.210.3.0/24".into(),
            mesh: MeshCidr::default(),
        };
        let text = ruleset(&r);
        assert!(text
            .starts_with("table ip uncloud_containers {}\ndelete table ip uncloud_containers\n"));
        assert!(text.contains(
            r#"ip saddr 10.210.3.0/24 ip daddr != 10.210.0.0/16 oifname != "uncloud0" masquerade"#
        ));
        assert!(text.contains(r#"iifname "uncloud0" ip saddr != 10.210.3.0/24 drop"#));
        let forward =
            &text[text.find("chain forward").unwrap()..text.find("chain postrouting").unwrap()];
        assert!(
            forward.contains("ip daddr 169.254.169.254 drop"),
            "{forward}"
        );
        // Into the bridge: the mesh, replies and published ports, then nothing else, and the
        // catch-all drop comes last.
        assert!(forward.contains(r#"oifname "uncloud0" iifname { "uncloud", "uncloud0" } accept"#));
        assert!(forward.contains(r#"oifname "uncloud0" ct status dnat accept"#));
        let drop_all = forward.find(r#"oifname "uncloud0" drop"#).expect(forward);
        assert!(forward.rfind("accept").unwrap() < drop_all, "{forward}");
        let rule = docker_user_rule(&r).join(" ");
        assert!(rule.starts_with("-i uncloud -o uncloud0 "), "{rule}");
        assert!(rule.ends_with("-j ACCEPT"));
    }
}

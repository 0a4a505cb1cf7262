//! `uncloud-firstboot banner`: what the machine's console shows once it has booted, so a
//! person at the console (or a VPS's web console, or a test reading the serial port) sees
//! whether the machine is ready and how to reach it.
//!
//! ```text
//! uncloud: vps-1 ready
//! mode: maintenance (not initialised)
//! addresses: enp0s2 10.0.2.15/24, enp0s2 fec0::5054:ff:fe12:3456/64
//! fingerprint: sha256:3fa2...
//! setup token: k3mqz-8xw2r-...
//! join ticket: received, not used yet      (only when one was given)
//! new network: uc machine init 10.0.2.15 --fingerprint sha256:3fa2... --token k3mqz-8xw2r-...
//! or join one: uc machine add 10.0.2.15 --fingerprint sha256:3fa2... --token k3mqz-8xw2r-...
//! stated.service: active
//! ...
//! ```
//!
//! The first line is `uncloud: <host> ready`, or `uncloud: <host> NOT ready: <why>` when a
//! unit did not come up in time. The setup token is a secret: it is written to the consoles
//! only, never to the journal.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use uncloud_common::identity::IdentityPaths;

/// The target every Uncloud unit is wanted by; its wants are the units the banner reports.
pub const TARGET: &str = "uncloud.target";
/// Units reported besides the target's: the engine the shim needs.
pub const EXTRA_UNITS: &[&str] = &["docker.service"];
/// This banner's own unit, not reported (it is running while it prints).
const SELF_UNIT: &str = "uncloud-banner.service";

/// Everything the banner shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub hostname: String,
    pub initialised: bool,
    /// `(interface, address/prefix)`.
    pub addresses: Vec<(String, String)>,
    /// The key fingerprint `uc` pins this machine by (`sha256:…`).
    pub fingerprint: Option<String>,
    pub setup_token: Option<String>,
    /// Whether a join ticket was given and not used yet (its text is never shown).
    pub join_ticket: bool,
    /// `(unit, ActiveState)`, in the order shown.
    pub units: Vec<(String, String)>,
    pub warnings: Vec<String>,
}

impl Facts {
    pub fn not_active(&self) -> Vec<&(String, String)> {
        self.units.iter().filter(|(_, s)| s != "active").collect()
    }

    pub fn ready(&self) -> bool {
        self.not_active().is_empty()
    }

    /// The first line, which is also what the journal gets.
    pub fn status_line(&self) -> String {
        let bad = self.not_active();
        if bad.is_empty() {
            format!("uncloud: {} ready", self.hostname)
        } else {
            let why: Vec<String> = bad.iter().map(|(u, s)| format!("{u} {s}")).collect();
            format!("uncloud: {} NOT ready: {}", self.hostname, why.join(", "))
        }
    }
}

/// The banner as text, one `\n`-terminated line each.
pub fn render(f: &Facts) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(f.status_line());
    line(if f.initialised {
        "mode: member of a network".into()
    } else {
        "mode: maintenance (not initialised)".into()
    });
    let addresses: Vec<String> = f
        .addresses
        .iter()
        .map(|(i, a)| format!("{i} {a}"))
        .collect();
    line(format!(
        "addresses: {}",
        if addresses.is_empty() {
            "none (no network yet)".into()
        } else {
            addresses.join(", ")
        }
    ));
    line(format!(
        "fingerprint: {}",
        f.fingerprint
            .as_deref()
            .unwrap_or("none (uncloud-firstboot did not run)")
    ));
    if !f.initialised {
        line(format!(
            "setup token: {}",
            f.setup_token
                .as_deref()
                .unwrap_or("none (uncloud-firstboot did not run)")
        ));
        if f.join_ticket {
            line("join ticket: received, not used yet".into());
        }
        // The exact commands, to copy: the address is the first one a laptop is likely to
        // reach (IPv4 first); behind a NAT or a cloud's public IP, use that address instead.
        if let (Some(fp), Some(token)) = (&f.fingerprint, &f.setup_token) {
            let host = first_address(&f.addresses).unwrap_or_else(|| "<address>".into());
            line(format!(
                "new network: uc machine init {host} --fingerprint {fp} --token {token}"
            ));
            line(format!(
                "or join one: uc machine add {host} --fingerprint {fp} --token {token}"
            ));
        }
    }
    for (unit, state) in &f.units {
        line(format!("{unit}: {state}"));
    }
    for w in &f.warnings {
        line(format!("warning: {w}"));
    }
    out
}

/// The address to put in the banner's commands: the first IPv4 address, else the first one.
fn first_address(addresses: &[(String, String)]) -> Option<String> {
    let ips: Vec<&str> = addresses
        .iter()
        .map(|(_, a)| a.split('/').next().unwrap_or(a))
        .collect();
    ips.iter()
        .find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .or_else(|| ips.first())
        .map(|ip| ip.to_string())
}

/// The units to report: what `uncloud.target` wants, and [`EXTRA_UNITS`], sorted.
pub fn units() -> Vec<String> {
    let wants = systemctl(&["show", "--property=Wants", "--value", TARGET]);
    let mut set: BTreeSet<String> = wants
        .split_whitespace()
        .filter(|u| *u != SELF_UNIT)
        .map(str::to_owned)
        .collect();
    set.extend(EXTRA_UNITS.iter().map(|u| u.to_string()));
    set.into_iter().collect()
}

/// `ActiveState` of each unit (`unknown` when systemctl cannot tell).
pub fn unit_states(units: &[String]) -> Vec<(String, String)> {
    let mut args = vec!["show", "--property=ActiveState", "--value"];
    args.extend(units.iter().map(String::as_str));
    let text = systemctl(&args);
    let states: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    units
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let state = if states.len() == units.len() {
                states[i]
            } else {
                "unknown"
            };
            (u.clone(), state.to_owned())
        })
        .collect()
}

fn systemctl(args: &[&str]) -> String {
    Command::new("systemctl")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Waits until every unit is active or has failed for good, at most `wait`; returns the last
/// states seen. A unit that restarts is `activating` between tries, not `failed`.
pub fn wait_for_units(units: &[String], wait: Duration) -> Vec<(String, String)> {
    let deadline = Instant::now() + wait;
    loop {
        let states = unit_states(units);
        let settled = states.iter().all(|(_, s)| s == "active" || s == "failed");
        if settled || Instant::now() >= deadline {
            return states;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The machine's addresses worth showing: not loopback, not link-local, not on Uncloud's own
/// or Docker's devices (the mesh TUN, container bridges and veths).
pub fn addresses() -> Vec<(String, String)> {
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ifa in ifaddrs {
        let name = ifa.interface_name;
        if name == "lo"
            || name.starts_with("uncloud")
            || name.starts_with("docker")
            || name.starts_with("veth")
            || name.starts_with("br-")
        {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        let (ip, prefix) = if let Some(v4) = addr.as_sockaddr_in() {
            let mask = ifa
                .netmask
                .and_then(|m| m.as_sockaddr_in().map(|m| u32::from(m.ip()).count_ones()));
            (IpAddr::V4(v4.ip()), mask)
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let mask = ifa
                .netmask
                .and_then(|m| m.as_sockaddr_in6().map(|m| u128::from(m.ip()).count_ones()));
            (IpAddr::V6(v6.ip()), mask)
        } else {
            continue;
        };
        if !shown(&ip) {
            continue;
        }
        let text = match prefix {
            Some(p) => format!("{ip}/{p}"),
            None => ip.to_string(),
        };
        out.push((name, text));
    }
    out
}

/// Whether an address is one a person could use to reach the machine.
pub fn shown(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// Gathers the facts of this machine (`root` is `/`, or a test's directory).
pub fn gather(root: &Path, units: Vec<(String, String)>) -> Facts {
    let id = IdentityPaths::under(root);
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok().map(|t| t.trim().to_owned());
    Facts {
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "uncloud".into()),
        initialised: id.initialised().exists(),
        addresses: addresses(),
        fingerprint: read(id.tls_cert()).and_then(|pem| crate::tls::fingerprint(&pem).ok()),
        setup_token: read(id.setup_token()),
        join_ticket: id.join_ticket().exists(),
        units,
        warnings: crate::init::last_warnings(root),
    }
}

/// The consoles the kernel writes to (`/sys/class/tty/console/active`, such as `tty0 ttyS0`),
/// as device paths.
pub fn consoles() -> Vec<String> {
    std::fs::read_to_string("/sys/class/tty/console/active")
        .map(|t| {
            t.split_whitespace()
                .map(|name| format!("/dev/{name}"))
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `text` to every console; returns the ones written to and, for the others, why not
/// (a Pi's PL011 owned by Bluetooth is busy, say). Serial consoles want CR LF.
pub fn show(text: &str, consoles: &[String]) -> (Vec<String>, Vec<String>) {
    let crlf = text.replace('\n', "\r\n");
    let mut written = Vec::new();
    let mut failed = Vec::new();
    for dev in consoles {
        // O_NOCTTY: the unit is a session leader and must not take the console as its
        // terminal; O_NONBLOCK: a serial line without carrier must not block the open.
        let result = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK)
            .open(dev)
            .and_then(|mut f| f.write_all(crlf.as_bytes()));
        match result {
            Ok(()) => written.push(dev.clone()),
            Err(e) => failed.push(format!("{dev}: {e}")),
        }
    }
    (written, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            hostname: "vps-1".into(),
            initialised: false,
            addresses: vec![("enp0s2".into(), "10.0.2.15/24".into())],
            fingerprint: Some("sha256:aabb".into()),
            setup_token: Some("abcde-fghjk".into()),
            join_ticket: false,
            units: vec![
                ("docker.service".into(), "active".into()),
                ("stated.service".into(), "active".into()),
            ],
            warnings: vec![],
        }
    }

    #[test]
    fn a_ready_maintenance_machine_shows_how_to_reach_and_set_it_up() {
        let text = render(&facts());
        assert_eq!(
            text,
            "uncloud: vps-1 ready\n\
             mode: maintenance (not initialised)\n\
             addresses: enp0s2 10.0.2.15/24\n\
             fingerprint: sha256:aabb\n\
             setup token: abcde-fghjk\n\
             new network: uc machine init 10.0.2.15 --fingerprint sha256:aabb --token abcde-fghjk\n\
             or join one: uc machine add 10.0.2.15 --fingerprint sha256:aabb --token abcde-fghjk\n\
             docker.service: active\n\
             stated.service: active\n"
        );
    }

    #[test]
    fn a_join_ticket_is_acknowledged_without_its_text_until_initialised() {
        let mut f = facts();
        f.join_ticket = true;
        let text = render(&f);
        assert!(
            text.contains("setup token: abcde-fghjk\njoin ticket: received, not used yet\n"),
            "{text}"
        );
        f.initialised = true;
        let text = render(&f);
        assert!(!text.contains("join ticket"), "{text}");
        assert!(!text.contains("setup token"), "{text}");
        assert!(!text.contains("uc machine"), "{text}");
    }

    #[test]
    fn the_commands_name_an_ipv4_address_when_there_is_one() {
        let mut f = facts();
        f.addresses = vec![
            ("eth0".into(), "2001:db8::5/64".into()),
            ("eth0".into(), "203.0.113.10/24".into()),
        ];
        assert!(render(&f).contains("uc machine init 203.0.113.10 --fingerprint"));
        f.addresses.remove(1);
        assert!(render(&f).contains("uc machine init 2001:db8::5 --fingerprint"));
        f.addresses.clear();
        assert!(render(&f).contains("uc machine init <address> --fingerprint"));
    }

    #[test]
    fn a_unit_that_is_not_active_makes_it_not_ready_and_is_named() {
        let mut f = facts();
        f.units[1].1 = "failed".into();
        f.warnings = vec!["/etc/uncloud/setup-token: too short".into()];
        assert!(!f.ready());
        let text = render(&f);
        assert!(
            text.starts_with("uncloud: vps-1 NOT ready: stated.service failed\n"),
            "{text}"
        );
        assert!(
            text.ends_with("warning: /etc/uncloud/setup-token: too short\n"),
            "{text}"
        );
        // The journal gets the status line, which never holds the token.
        assert!(!f.status_line().contains("abcde"));
    }

    #[test]
    fn a_member_shows_no_setup_token() {
        let mut f = facts();
        f.initialised = true;
        f.addresses.clear();
        let text = render(&f);
        assert!(!text.contains("setup token"), "{text}");
        assert!(text.contains("mode: member of a network"), "{text}");
        assert!(text.contains("addresses: none"), "{text}");
    }

    #[test]
    fn only_reachable_addresses_are_shown() {
        for (ip, want) in [
            ("10.0.2.15", true),
            ("127.0.0.1", false),
            ("169.254.1.1", false),
            ("2001:db8::1", true),
            ("fe80::1", false),
            ("::1", false),
        ] {
            assert_eq!(shown(&ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn this_machine_has_at_least_loopback_filtered_out() {
        assert!(addresses().iter().all(|(i, _)| i != "lo"));
    }
}

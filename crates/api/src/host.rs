//! What a machine reports about itself: `uc machine status`, `uc machine logs`, `uc mesh
//! peers`. Every field is optional on the wire (`#[serde(default)]`), so a newer machine's
//! report reads in an older `uc` and the other way round.

use serde::{Deserialize, Serialize};

/// The systemd units of an Uncloud machine, in the order `uc machine status` shows them.
pub const UNITS: &[&str] = &[
    "uncloud-firstboot.service",
    "stated.service",
    "meshd.service",
    "dnsd.service",
    "apid.service",
    "ingressd.service",
    "docker.service",
    "dockerd-shim.service",
];

/// Units whose journal `uc machine logs` shows when none is asked for.
pub const LOG_UNITS: &[&str] = &[
    "uncloud-firstboot.service",
    "stated.service",
    "meshd.service",
    "dnsd.service",
    "apid.service",
    "ingressd.service",
    "dockerd-shim.service",
];

/// Most journal entries one answer carries (`--tail` is capped to it).
pub const MAX_LOG_LINES: u32 = 5000;

/// `uc machine status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MachineStatus {
    pub machine: String,
    pub machine_id: String,
    /// Uncloud's version on the machine (apid's package version).
    pub version: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub uptime_secs: u64,
    /// The kernel's id of this boot: it changes when the machine reboots.
    pub boot_id: String,
    /// Load average over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// The file system that holds Uncloud's state (`/var/lib/uncloud`).
    pub disk_total_bytes: u64,
    pub disk_available_bytes: u64,
    pub units: Vec<UnitStatus>,
    /// Why the units could not be read (no systemd: a machine run by a test harness).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units_error: Option<String>,
}

/// One systemd unit as `systemctl show` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UnitStatus {
    pub name: String,
    /// `active`, `inactive`, `failed`, `activating`, …
    pub active: String,
    /// `running`, `exited`, `dead`, …
    pub sub: String,
    /// How many times systemd restarted it since boot.
    pub restarts: u64,
    /// When it last became active, in seconds since the Unix epoch; 0 if never.
    pub since_secs: u64,
}

/// `uc machine logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogRequest {
    /// Units to show; empty: Uncloud's own ([`LOG_UNITS`]).
    pub units: Vec<String>,
    /// What `journalctl --since` accepts: `2026-12-03 10:00`, `-1h`, `today`.
    pub since: Option<String>,
    /// The last this many entries (at most [`MAX_LOG_LINES`]).
    pub lines: u32,
    /// Only entries after this journal cursor (`-f` asks again with the last cursor).
    pub after_cursor: Option<String>,
}

/// One answer to a [`LogRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    /// Cursor of the last entry, to ask for what comes after it; the request's when nothing
    /// new came.
    pub cursor: Option<String>,
}

/// One journal entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogEntry {
    /// Microseconds since the Unix epoch.
    pub time_us: u64,
    pub unit: String,
    /// syslog priority: 0 emergency … 7 debug.
    pub priority: u8,
    pub message: String,
}

/// One name of the `internal` zone and the addresses it resolves to right now, as the
/// machine's dnsd answers it (`uc dns ls`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsName {
    pub name: String,
    pub addresses: Vec<String>,
}

/// One peer of the machine's mesh, as its meshd sees it (`uc mesh peers`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MeshPeer {
    pub machine_id: String,
    pub name: String,
    pub subnet: String,
    /// The endpoint WireGuard sends to; for a relayed peer, the relay's.
    pub endpoint: String,
    /// Name of the machine relaying the traffic; empty when direct.
    pub relay: String,
    /// `up`, `connecting` or `unreachable`.
    pub status: String,
    /// `direct` or `relayed`.
    pub path: String,
    /// Seconds since the last completed handshake; -1 if none yet.
    pub last_handshake_secs: i64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_across_versions() {
        let older: MachineStatus = serde_json::from_str(r#"{"machine":"a"}"#).unwrap();
        assert_eq!(older.machine, "a");
        assert!(older.units.is_empty() && older.units_error.is_none());
        let newer: MeshPeer =
            serde_json::from_str(r#"{"name":"b","status":"up","mtu_later":1420}"#).unwrap();
        assert_eq!((newer.name.as_str(), newer.status.as_str()), ("b", "up"));
        let req: LogRequest = serde_json::from_str("{}").unwrap();
        assert!(req.units.is_empty() && req.lines == 0 && req.after_cursor.is_none());
    }

    #[test]
    fn the_log_units_are_units_status_shows() {
        for u in LOG_UNITS {
            assert!(UNITS.contains(u), "{u}");
        }
    }
}

//! The machine itself, for people who cannot log into it (the appliance has no shell): its
//! status, its journal, a reboot. Parsing is pure and tested here; the I/O is a few reads of
//! `/proc`, `statvfs`, and the `systemctl` and `journalctl` the image ships.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use uncloud_api::host::{
    LogEntry, LogPage, LogRequest, MachineStatus, UnitStatus, LOG_UNITS, MAX_LOG_LINES, UNITS,
};
use uncloud_api::wire::{ApiError, ErrorKind};

/// Longest a `systemctl` or `journalctl` run may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The most message bytes one page of logs carries: well under the API's frame limit.
const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;
/// Longer messages are cut here.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// `uc machine logs` without `--tail`.
pub const DEFAULT_LOG_LINES: u32 = 200;

/// Everything but the machine's name and id (the caller knows those).
pub async fn status(data_dir: &Path) -> MachineStatus {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let (memory_total_bytes, memory_available_bytes) = meminfo(&read("/proc/meminfo"));
    let (disk_total_bytes, disk_available_bytes) = match nix::sys::statvfs::statvfs(data_dir) {
        Ok(s) => (
            s.blocks().saturating_mul(s.fragment_size()),
            s.blocks_available().saturating_mul(s.fragment_size()),
        ),
        Err(_) => (0, 0),
    };
    let (units, units_error) = match units().await {
        Ok(u) => (u, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    MachineStatus {
        version: env!("CARGO_PKG_VERSION").to_string(),
        os: os_name(&read("/etc/os-release")),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        arch: std::env::consts::ARCH.to_string(),
        uptime_secs: first_number(&read("/proc/uptime")) as u64,
        boot_id: read("/proc/sys/kernel/random/boot_id").trim().to_string(),
        load: loadavg(&read("/proc/loadavg")),
        memory_total_bytes,
        memory_available_bytes,
        disk_total_bytes,
        disk_available_bytes,
        units,
        units_error,
        ..MachineStatus::default()
    }
}

async fn units() -> Result<Vec<UnitStatus>, String> {
    let mut cmd = Command::new("systemctl");
    cmd.args([
        "show",
        "--timestamp=unix",
        "--property=Id,ActiveState,SubState,NRestarts,ActiveEnterTimestamp",
    ])
    .args(UNITS);
    let out = run(cmd, "systemctl").await?;
    Ok(parse_units(&out))
}

/// Runs a command, bounded by [`COMMAND_TIMEOUT`]; its stdout, or why it failed.
async fn run(mut cmd: Command, what: &str) -> Result<String, String> {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            format!(
                "{what} did not finish within {} s",
                COMMAND_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{what} failed: {}", err.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `systemctl show` output: one block of `Key=Value` lines per unit, blank lines between.
pub fn parse_units(text: &str) -> Vec<UnitStatus> {
    let mut units = Vec::new();
    let mut unit = UnitStatus::default();
    let mut any = false;
    for line in text.lines().chain(std::iter::once("")) {
        let Some((key, value)) = line.split_once('=') else {
            if any {
                units.push(std::mem::take(&mut unit));
                any = false;
            }
            continue;
        };
        any = true;
        match key {
            "Id" => unit.name = value.to_string(),
            "ActiveState" => unit.active = value.to_string(),
            "SubState" => unit.sub = value.to_string(),
            "NRestarts" => unit.restarts = value.parse().unwrap_or(0),
            "ActiveEnterTimestamp" => {
                unit.since_secs = value.trim_start_matches('@').parse().unwrap_or(0)
            }
            _ => {}
        }
    }
    units
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal"), field("MemAvailable"))
}

/// `PRETTY_NAME` of an os-release file, unquoted.
pub fn os_name(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_default()
}

fn first_number(text: &str) -> f64 {
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

/// The three load averages of `/proc/loadavg`.
pub fn loadavg(text: &str) -> [f64; 3] {
    let mut it = text.split_whitespace().map(|n| n.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorKind::Invalid, message)
}

/// Whether `value` is non-empty, at most `max` bytes, and only ASCII letters, digits and
/// `extra`: what a log request's values may be.
fn plain(value: &str, max: usize, extra: &str) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

/// Checks a request's values and turns it into `journalctl`'s arguments. Each value goes
/// in one `--option=value` argument (no shell, and a value cannot become an option).
pub fn journal_args(req: &LogRequest) -> Result<Vec<String>, ApiError> {
    let lines = match req.lines {
        0 => DEFAULT_LOG_LINES,
        n => n.min(MAX_LOG_LINES),
    };
    let mut args = vec![
        "--output=json".to_string(),
        "--no-pager".to_string(),
        "--quiet".to_string(),
        "--output-fields=MESSAGE,PRIORITY,UNIT,_SYSTEMD_UNIT,SYSLOG_IDENTIFIER".to_string(),
        format!("--lines={lines}"),
    ];
    let units: Vec<&str> = if req.units.is_empty() {
        LOG_UNITS.to_vec()
    } else {
        req.units.iter().map(|u| u.as_str()).collect()
    };
    for u in units {
        if !plain(u, 256, "@._:-*\\") {
            return Err(invalid(format!("{u:?} is not a unit name")));
        }
        args.push(format!("--unit={u}"));
    }
    if let Some(since) = &req.since {
        if !plain(since, 64, " :.+-") {
            return Err(invalid(format!(
                "{since:?} is not a time: use `2026-12-03 10:00`, `-1h`, `today`"
            )));
        }
        args.push(format!("--since={since}"));
    }
    if let Some(cursor) = &req.after_cursor {
        if !plain(cursor, 512, "=;-_") {
            return Err(invalid("the journal cursor is malformed".to_string()));
        }
        args.push(format!("--after-cursor={cursor}"));
    }
    Ok(args)
}

/// `journalctl --output=json` lines into a page: newest last, at most [`MAX_PAGE_BYTES`] of
/// messages (the oldest go first), the last entry's cursor (`after` when none).
pub fn parse_journal(text: &str, after: Option<&str>) -> LogPage {
    let mut entries = Vec::new();
    let mut cursor = after.map(str::to_string);
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let field = |k: &str| v.get(k).and_then(|f| f.as_str()).unwrap_or_default();
        let mut message = match v.get("MESSAGE") {
            Some(serde_json::Value::String(s)) => s.clone(),
            // Binary or invalid UTF-8: journalctl gives the bytes.
            Some(serde_json::Value::Array(bytes)) => String::from_utf8_lossy(
                &bytes
                    .iter()
                    .filter_map(|b| b.as_u64().map(|b| b as u8))
                    .collect::<Vec<u8>>(),
            )
            .into_owned(),
            _ => String::new(),
        };
        if message.len() > MAX_MESSAGE_BYTES {
            let mut cut = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        // The unit an entry is about: systemd's own lines about a unit ("Started …") come
        // from init.scope and name the unit in UNIT; a daemon's lines carry _SYSTEMD_UNIT;
        // the kernel's only an identifier.
        let unit = ["UNIT", "_SYSTEMD_UNIT", "SYSLOG_IDENTIFIER"]
            .into_iter()
            .map(field)
            .find(|u| !u.is_empty())
            .unwrap_or_default();
        if !field("__CURSOR").is_empty() {
            cursor = Some(field("__CURSOR").to_string());
        }
        entries.push(LogEntry {
            time_us: field("__REALTIME_TIMESTAMP").parse().unwrap_or(0),
            unit: unit.to_string(),
            priority: field("PRIORITY").parse().unwrap_or(6),
            message,
        });
    }
    let mut bytes: usize = entries.iter().map(|e| e.message.len()).sum();
    let mut drop = 0;
    while bytes > MAX_PAGE_BYTES && drop < entries.len() {
        bytes -= entries[drop].message.len();
        drop += 1;
    }
    entries.drain(..drop);
    LogPage { entries, cursor }
}

/// The journal, as `req` asks.
pub async fn logs(req: &LogRequest) -> Result<LogPage, ApiError> {
    let args = journal_args(req)?;
    let mut cmd = Command::new("journalctl");
    cmd.args(&args);
    let out = run(cmd, "journalctl")
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, e))?;
    Ok(parse_journal(&out, req.after_cursor.as_deref()))
}

/// Runs `command` (`systemctl reboot` on a machine) after `delay`, so that the answer
/// reaches `uc` first.
pub fn reboot_later(command: Vec<String>, delay: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let Some((program, args)) = command.split_first() else {
            return;
        };
        let mut cmd = Command::new(program);
        cmd.args(args);
        match run(cmd, program).await {
            Ok(_) => tracing::info!(?command, "reboot started"),
            Err(e) => tracing::error!(?command, error = %e, "reboot failed"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemctl_show_reads_unit_by_unit() {
        let text = "Id=stated.service\nActiveState=active\nSubState=running\nNRestarts=2\n\
                    ActiveEnterTimestamp=@1764758400\n\nId=docker.service\nActiveState=failed\n\
                    SubState=failed\nNRestarts=0\nActiveEnterTimestamp=\n";
        let units = parse_units(text);
        assert_eq!(units.len(), 2);
        assert_eq!(
            units[0],
            UnitStatus {
                name: "stated.service".into(),
                active: "active".into(),
                sub: "running".into(),
                restarts: 2,
                since_secs: 1764758400,
            }
        );
        assert_eq!(
            (units[1].active.as_str(), units[1].since_secs),
            ("failed", 0)
        );
    }

    #[test]
    fn proc_files_read_as_bytes_and_numbers() {
        let mem = "MemTotal:        2014232 kB\nMemFree:  100 kB\nMemAvailable:    1500000 kB\n";
        assert_eq!(meminfo(mem), (2014232 * 1024, 1500000 * 1024));
        assert_eq!(meminfo("garbage"), (0, 0));
        assert_eq!(loadavg("0.52 0.58 0.59 1/467 1234\n"), [0.52, 0.58, 0.59]);
        assert_eq!(
            os_name("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            "Debian GNU/Linux 12 (bookworm)"
        );
    }

    #[test]
    fn log_requests_become_one_argument_per_value() {
        let args = journal_args(&LogRequest::default()).unwrap();
        assert!(args.contains(&"--lines=200".to_string()));
        assert!(args.contains(&"--unit=stated.service".to_string()));
        let req = LogRequest {
            units: vec!["meshd".into()],
            since: Some("-1h".into()),
            lines: 1_000_000,
            after_cursor: Some("s=ab;i=1f;b=cd;m=1;t=2;x=3".into()),
        };
        let args = journal_args(&req).unwrap();
        assert!(args.contains(&"--lines=5000".to_string()), "capped");
        assert!(args.contains(&"--since=-1h".to_string()));
        assert!(args.contains(&"--after-cursor=s=ab;i=1f;b=cd;m=1;t=2;x=3".to_string()));
        assert_eq!(args.iter().filter(|a| a.starts_with("--unit")).count(), 1);
    }

    #[test]
    fn hostile_log_requests_are_refused() {
        for req in [
            LogRequest {
                units: vec!["x --file=/etc/shadow".into()],
                ..Default::default()
            },
            LogRequest {
                units: vec![String::new()],
                ..Default::default()
            },
            LogRequest {
                since: Some("$(reboot)".into()),
                ..Default::default()
            },
            LogRequest {
                after_cursor: Some("a b".into()),
                ..Default::default()
            },
        ] {
            let e = journal_args(&req).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Invalid, "{req:?}");
        }
    }

    #[test]
    fn journal_json_becomes_entries_and_a_cursor() {
        let text = concat!(
            r#"{"__CURSOR":"s=1;i=1","__REALTIME_TIMESTAMP":"1764758400000000","PRIORITY":"6","_SYSTEMD_UNIT":"stated.service","MESSAGE":"ready"}"#,
            "\n",
            r#"{"__CURSOR":"s=1;i=2","__REALTIME_TIMESTAMP":"1764758401000000","SYSLOG_IDENTIFIER":"kernel","MESSAGE":[104,105,255]}"#,
            "\nnot json\n",
            r#"{"__CURSOR":"s=1;i=3","_SYSTEMD_UNIT":"init.scope","UNIT":"stated.service","MESSAGE":"Started stated.service"}"#,
        );
        let page = parse_journal(text, None);
        assert_eq!(page.cursor.as_deref(), Some("s=1;i=3"));
        assert_eq!(page.entries.len(), 3);
        assert_eq!(
            page.entries[2].unit, "stated.service",
            "what systemd says about it"
        );
        assert_eq!(page.entries[0].unit, "stated.service");
        assert_eq!(page.entries[0].time_us, 1764758400000000);
        assert_eq!(page.entries[1].unit, "kernel");
        assert_eq!(page.entries[1].message, "hi\u{fffd}");
        assert_eq!(page.entries[1].priority, 6);
        // Nothing new: the cursor asked with comes back.
        assert_eq!(
            parse_journal("", Some("s=1;i=2")).cursor.as_deref(),
            Some("s=1;i=2")
        );
    }

    #[test]
    fn a_huge_journal_keeps_the_newest_within_the_page_limit() {
        let big = "x".repeat(MAX_MESSAGE_BYTES * 2);
        let line = format!(r#"{{"__CURSOR":"c","MESSAGE":"{big}"}}"#);
        let text = vec![line; 300].join("\n");
        let page = parse_journal(&text, None);
        let bytes: usize = page.entries.iter().map(|e| e.message.len()).sum();
        assert!(bytes <= MAX_PAGE_BYTES, "{bytes}");
        assert!(page.entries.len() > 100 && page.entries.len() < 300);
        assert!(page.entries[0].message.ends_with('…'));
    }
}

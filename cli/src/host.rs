//! `uc machine status|logs|reboot`: a machine's insides through the API (the appliance has
//! no shell), for the connected machine or each of `-m`.

use std::collections::BTreeMap;
use std::time::Duration;

use uncloud_api::host::{LogEntry, LogRequest, MachineStatus};
use uncloud_api::wire::{Answer, Call};

use crate::output::{self, Format};
use crate::targets::{self, unexpected};
use crate::Global;

/// The API version that has these calls.
const API: u32 = 3;
/// How often `logs -f` asks for what is new.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

pub async fn status(g: &Global) -> anyhow::Result<()> {
    let replies = targets::ask(g, Call::Status, API).await?;
    if g.output == Format::Json {
        print!("{}", output::json(&replies));
        return targets::each(&replies, |_, _, _| Ok(()));
    }
    targets::each(&replies, |machine, answer, _| {
        let Answer::Status(s) = answer else {
            return Err(unexpected(machine));
        };
        print!("{}", status_text(s));
        Ok(())
    })
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn duration(secs: u64) -> String {
    match secs {
        s if s >= 86400 => format!("{}d {}h", s / 86400, s % 86400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}m {}s", s / 60, s % 60),
    }
}

/// A machine's status as people read it.
pub fn status_text(s: &MachineStatus) -> String {
    let mut out = format!(
        "{} ({})\n  uncloud {}, {}, kernel {} {}\n  up {}, load {:.2} {:.2} {:.2}\n  \
         memory {} available of {}\n  disk {} available of {} (Uncloud's state)\n",
        s.machine,
        s.machine_id,
        s.version,
        s.os,
        s.kernel,
        s.arch,
        duration(s.uptime_secs),
        s.load[0],
        s.load[1],
        s.load[2],
        gib(s.memory_available_bytes),
        gib(s.memory_total_bytes),
        gib(s.disk_available_bytes),
        gib(s.disk_total_bytes),
    );
    if let Some(e) = &s.units_error {
        out.push_str(&format!("  units: unknown ({e})\n"));
    }
    if !s.units.is_empty() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let rows: Vec<Vec<String>> = s
            .units
            .iter()
            .map(|u| {
                vec![
                    format!("  {}", u.name),
                    format!("{}/{}", u.active, u.sub),
                    if u.since_secs == 0 {
                        "-".into()
                    } else {
                        duration(now.saturating_sub(u.since_secs))
                    },
                    u.restarts.to_string(),
                ]
            })
            .collect();
        out.push_str(&output::table(
            &["  UNIT", "STATE", "FOR", "RESTARTS"],
            &rows,
        ));
    }
    out
}

pub struct LogArgs {
    pub units: Vec<String>,
    pub since: Option<String>,
    pub lines: u32,
    pub follow: bool,
}

pub async fn logs(g: &Global, args: LogArgs) -> anyhow::Result<()> {
    let request = LogRequest {
        units: args.units,
        since: args.since,
        lines: args.lines,
        after_cursor: None,
    };
    let replies = targets::ask(g, Call::Logs(request.clone()), API).await?;
    // Each machine's journal has its own cursor: -f asks each machine on its own.
    let mut cursors: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    let several = replies.len() > 1;
    let shown = targets::each(&replies, |machine, answer, several| {
        let Answer::Logs(page) = answer else {
            return Err(unexpected(machine));
        };
        print_entries(g.output, machine, several, &page.entries);
        Ok(())
    });
    // Following goes on with the machines that answered.
    match shown {
        Err(e) if args.follow => eprintln!("{e:#}"),
        other => other?,
    }
    if !args.follow {
        return Ok(());
    }
    for r in &replies {
        if let Some(Answer::Logs(page)) = &r.answer {
            cursors.insert(
                r.machine.clone(),
                (r.machine_id.clone(), page.cursor.clone()),
            );
        }
    }
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        for (machine, (id, cursor)) in cursors.iter_mut() {
            let g = Global {
                targets: if id.is_empty() {
                    vec![]
                } else {
                    vec![id.clone()]
                },
                ..g.clone()
            };
            let call = Call::Logs(LogRequest {
                lines: uncloud_api::host::MAX_LOG_LINES,
                since: None,
                after_cursor: cursor.clone(),
                ..request.clone()
            });
            match targets::ask(&g, call, API).await {
                Ok(replies) => {
                    for r in replies {
                        match (r.answer, r.error) {
                            (Some(Answer::Logs(page)), _) => {
                                print_entries(g.output, machine, several, &page.entries);
                                *cursor = page.cursor;
                            }
                            (_, Some(e)) => eprintln!("error: {machine}: {e}"),
                            _ => {}
                        }
                    }
                }
                Err(e) => eprintln!("error: {machine}: {e:#}"),
            }
        }
    }
}

fn print_entries(format: Format, machine: &str, several: bool, entries: &[LogEntry]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for e in entries {
        let _ = match format {
            Format::Json => writeln!(
                out,
                "{}",
                serde_json::json!({
                    "machine": machine,
                    "time_us": e.time_us,
                    "unit": e.unit,
                    "priority": e.priority,
                    "message": e.message,
                })
            ),
            Format::Table => writeln!(out, "{}", log_line(machine, several, e)),
        };
    }
    let _ = out.flush();
}

/// `2026-12-03 11:17:39.123 [machine] unit: message` (the machine only when several answer).
pub fn log_line(machine: &str, several: bool, e: &LogEntry) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(e.time_us as i128 * 1000)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        })
        .unwrap_or_default();
    let unit = e.unit.strip_suffix(".service").unwrap_or(&e.unit);
    if several {
        format!("{time} [{machine}] {unit}: {}", e.message)
    } else {
        format!("{time} {unit}: {}", e.message)
    }
}

pub async fn reboot(g: &Global) -> anyhow::Result<()> {
    let replies = targets::ask(g, Call::Reboot, API).await?;
    if g.output == Format::Json {
        print!("{}", output::json(&replies));
    }
    targets::each(&replies, |machine, answer, _| {
        let Answer::Rebooting = answer else {
            return Err(unexpected(machine));
        };
        if g.output == Format::Table {
            eprintln!("{machine}: rebooting");
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use uncloud_api::host::UnitStatus;

    #[test]
    fn a_log_line_names_the_machine_only_among_several() {
        let e = LogEntry {
            time_us: 1_764_758_400_123_000,
            unit: "stated.service".into(),
            priority: 6,
            message: "ready".into(),
        };
        assert_eq!(
            log_line("alpha", false, &e),
            "2025-12-03 10:40:00.123 stated: ready"
        );
        assert_eq!(
            log_line("alpha", true, &e),
            "2025-12-03 10:40:00.123 [alpha] stated: ready"
        );
    }

    #[test]
    fn status_shows_units_and_why_they_are_missing() {
        let mut s = MachineStatus {
            machine: "alpha".into(),
            memory_total_bytes: 2 << 30,
            memory_available_bytes: 1 << 30,
            units: vec![UnitStatus {
                name: "stated.service".into(),
                active: "active".into(),
                sub: "running".into(),
                restarts: 1,
                since_secs: 0,
            }],
            ..Default::default()
        };
        let text = status_text(&s);
        assert!(
            text.contains("memory 1.0 GiB available of 2.0 GiB"),
            "{text}"
        );
        assert!(text.contains("stated.service") && text.contains("active/running"));
        s.units.clear();
        s.units_error = Some("systemctl failed: not booted with systemd".into());
        assert!(status_text(&s).contains("units: unknown (systemctl failed"));
    }
}

//! `uc logs`: the lines a service's containers wrote, from every machine that runs one, merged
//! by time with the container's name in front.
//!
//! Each container's machine is asked through the connected one (`fan_out`), a page at a time
//! (`Call::ContainerLogs`); `-f` asks again every second for what came after the last line
//! seen. A container whose machine cannot be reached is reported once and skipped.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context as _};
use uncloud_api::service::ServiceRow;
use uncloud_api::wire::{
    Answer, Call, ContainerLogRequest, FanOut, LogLine, LogLinesRequest, LOG_PAGE_LINES,
};
use uncloud_api::ApiClient;

use crate::context::Store;
use crate::remote::{self, answer};
use crate::update::UPDATE_API;
use crate::Global;

/// `uc logs SERVICE[/CONTAINER]…`.
#[derive(Debug, clap::Args)]
pub struct Logs {
    /// Services (`web`, `web.shop`), or one container of one as `SERVICE/CONTAINER` (a
    /// prefix of its name will do).
    #[arg(required = true, value_name = "SERVICE[/CONTAINER]")]
    pub services: Vec<String>,
    /// Keep printing new lines as they come (Ctrl-C to stop).
    #[arg(short, long)]
    pub follow: bool,
    /// Only lines of the last this long: `30s`, `10m`, `2h`.
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// The last this many lines of each container (`all` for every line).
    #[arg(short = 'n', long, default_value = "100", value_name = "N")]
    pub tail: String,
    /// Show when each line was written (UTC).
    #[arg(short, long)]
    pub timestamps: bool,
}

/// One container being read.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    service: String,
    pub name: String,
    pub id: String,
    pub machine_id: String,
    machine: String,
    /// The time of the last line printed.
    after_ns: i64,
    /// The last read filled a page: there may be more lines after it.
    full: bool,
}

/// The containers `targets` name in `rows`: `SERVICE` (by id, or by a name one service has)
/// or `SERVICE/CONTAINER` (by name, id, or a prefix naming one). Pure.
pub(crate) fn sources(rows: &[ServiceRow], targets: &[String]) -> anyhow::Result<Vec<Source>> {
    let mut out: Vec<Source> = Vec::new();
    for t in targets {
        let (service, container) = t.split_once('/').unwrap_or((t, ""));
        let row = match rows.iter().find(|r| r.display_name() == service) {
            Some(r) => r,
            None => {
                let named: Vec<&ServiceRow> = rows.iter().filter(|r| r.name == service).collect();
                match named.as_slice() {
                    [one] => *one,
                    [] => bail!("no service named {service:?} (see `uc ls`)"),
                    several => {
                        let mut names: Vec<String> =
                            several.iter().map(|r| r.display_name()).collect();
                        names.sort();
                        bail!(
                            "{service:?} is a service of several projects: say which, as one of {}",
                            names.join(", ")
                        )
                    }
                }
            }
        };
        let mut picked: Vec<_> = row
            .containers
            .iter()
            .filter(|c| {
                container.is_empty()
                    || c.name == container
                    || c.id == container
                    || c.name.starts_with(container)
                    || c.id.starts_with(container)
            })
            .collect();
        if let Some(exact) = picked
            .iter()
            .find(|c| !container.is_empty() && (c.name == container || c.id == container))
        {
            picked = vec![*exact];
        }
        if !container.is_empty() && picked.len() > 1 {
            bail!(
                "{container:?} names several containers of {}: {}",
                row.display_name(),
                picked
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if picked.is_empty() {
            bail!(
                "{} has no container{} (see `uc ps`)",
                row.display_name(),
                if container.is_empty() {
                    String::new()
                } else {
                    format!(" {container:?}")
                }
            );
        }
        for c in picked {
            if !out.iter().any(|s| s.id == c.id) {
                out.push(Source {
                    service: row.display_name(),
                    name: c.name.clone(),
                    id: c.id.clone(),
                    machine_id: c.machine_id.clone(),
                    machine: c.machine.clone(),
                    after_ns: 0,
                    full: false,
                });
            }
        }
    }
    Ok(out)
}

/// `10m` -> ns.
fn since_ns(since: &str, now_ns: i64) -> anyhow::Result<i64> {
    let ms = uncloud_compose::units::parse_duration_ms(since)
        .map_err(|e| anyhow::anyhow!("--since {since:?}: {e}"))?;
    Ok(now_ns - i64::try_from(ms).unwrap_or(i64::MAX / 2) * 1_000_000)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// `2026-12-05T03:40:00.123Z` of a time in ns since the epoch.
fn rfc3339(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        })
        .unwrap_or_default()
}

/// Lines of several containers in the order they were written; each with its container's
/// name (padded to the longest) in front. Pure.
fn render(lines: &mut [(String, LogLine)], width: usize, timestamps: bool) -> String {
    lines.sort_by(|a, b| (a.1.time_ns, &a.0).cmp(&(b.1.time_ns, &b.0)));
    let mut out = String::new();
    for (name, l) in lines.iter() {
        if timestamps {
            out.push_str(&rfc3339(l.time_ns));
            out.push(' ');
        }
        out.push_str(&format!("{name:<width$} | {}\n", l.text));
    }
    out
}

/// One page of each source's lines, all at once.
async fn read_all(
    member: &ApiClient,
    mut sources: Vec<&mut Source>,
    tail: Option<u32>,
    warned: &mut BTreeMap<String, String>,
) -> Vec<(String, LogLine)> {
    let asks = sources.iter().map(|s| {
        let call = Call::ContainerLogs(ContainerLogRequest {
            container: s.id.clone(),
            lines: LogLinesRequest {
                after_ns: s.after_ns,
                tail,
                limit: 0,
            },
        });
        member.fan_out(
            uncloud_api::context(Duration::from_secs(15)),
            FanOut {
                targets: vec![s.machine_id.clone()],
                call,
            },
        )
    });
    let replies = futures::future::join_all(asks).await;
    let mut out = Vec::new();
    for (s, reply) in sources.iter_mut().zip(replies) {
        let problem = match answer(reply) {
            Ok(mut r) if r.len() == 1 => {
                let r = r.remove(0);
                match (r.answer, r.error) {
                    (Some(Answer::ContainerLogs(lines)), _) => {
                        warned.remove(&s.id);
                        s.full = lines.len() >= LOG_PAGE_LINES as usize;
                        if let Some(last) = lines.last() {
                            s.after_ns = last.time_ns;
                        }
                        out.extend(lines.into_iter().map(|l| (s.name.clone(), l)));
                        continue;
                    }
                    (_, Some(e)) => e.to_string(),
                    _ => "an answer of another kind (a newer uc may read it)".into(),
                }
            }
            Ok(_) => "no answer".into(),
            Err(e) => e.to_string(),
        };
        if warned.get(&s.id) != Some(&problem) {
            eprintln!("warning: {} on {}: {problem}", s.name, s.machine);
            warned.insert(s.id.clone(), problem);
        }
    }
    out
}

pub async fn logs(cmd: Logs, g: &Global) -> anyhow::Result<()> {
    let tail = match cmd.tail.as_str() {
        "all" => None,
        n => Some(
            n.parse::<u32>()
                .with_context(|| format!("--tail {n:?}: a number, or all"))?,
        ),
    };
    let start_ns = match &cmd.since {
        Some(s) => since_ns(s, now_ns())?,
        None => 0,
    };
    let store = Store::default_location();
    let ctx = store.load(g.context.as_deref())?;
    let (member, via) = remote::member(&ctx, g).await?;
    remote::require_api(&member, &via, UPDATE_API).await?;
    let rows = remote::services(&member).await?;
    let mut sources = sources(&rows, &cmd.services)?;
    for s in &mut sources {
        s.after_ns = start_ns;
    }
    let several = sources
        .iter()
        .map(|s| &s.service)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        > 1;
    let label = |s: &Source| {
        if several {
            format!("{}/{}", s.service, s.name)
        } else {
            s.name.clone()
        }
    };
    for s in &mut sources {
        s.name = label(s);
    }
    let width = sources.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut warned = BTreeMap::new();
    let mut lines = read_all(&member, sources.iter_mut().collect(), tail, &mut warned).await;
    // Every line: a machine answers a page at a time, so read on after each full page (all
    // of them before printing, to merge them by time).
    while tail.is_none() && !cmd.follow && sources.iter().any(|s| s.full) {
        let full = sources.iter_mut().filter(|s| s.full).collect();
        lines.extend(read_all(&member, full, None, &mut warned).await);
    }
    print!("{}", render(&mut lines, width, cmd.timestamps));
    if !cmd.follow {
        if warned.len() == sources.len() {
            bail!("no container's machine answered");
        }
        return Ok(());
    }
    // Following: lines written from now on (a source without lines yet starts now).
    let now = now_ns();
    for s in &mut sources {
        if s.after_ns == 0 {
            s.after_ns = now;
        }
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut lines = read_all(&member, sources.iter_mut().collect(), None, &mut warned).await;
        print!("{}", render(&mut lines, width, cmd.timestamps));
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uncloud_api::service::ContainerRow;

    fn row(name: &str, project: &str, containers: &[&str]) -> ServiceRow {
        ServiceRow {
            name: name.into(),
            project: project.into(),
            containers: containers
                .iter()
                .map(|c| ContainerRow {
                    id: format!("id-{c}"),
                    name: c.to_string(),
                    machine_id: "m1".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn targets_name_services_or_one_of_their_containers() {
        let rows = [
            row("web", "", &["web-1a2b", "web-3c4d"]),
            row("db", "shop", &["shop-db-0001"]),
            row("db", "blog", &["blog-db-0002"]),
        ];
        let all = sources(&rows, &["web".into()]).unwrap();
        assert_eq!(all.len(), 2);
        let one = sources(&rows, &["web/web-3".into()]).unwrap();
        assert_eq!(one[0].id, "id-web-3c4d");
        let e = sources(&rows, &["web/web-".into()]).unwrap_err();
        assert!(e.to_string().contains("several containers"), "{e}");
        let e = sources(&rows, &["db".into()]).unwrap_err();
        assert!(e.to_string().contains("db.blog, db.shop"), "{e}");
        assert_eq!(
            sources(&rows, &["db.shop".into()]).unwrap()[0].name,
            "shop-db-0001"
        );
        assert!(sources(&rows, &["nope".into()]).is_err());
    }

    #[test]
    fn lines_of_several_containers_merge_by_time() {
        let l = |t: i64, text: &str| LogLine {
            time_ns: t,
            stream: "stdout".into(),
            text: text.into(),
        };
        let mut lines = vec![
            ("b".to_string(), l(2_000, "second")),
            ("long-name".to_string(), l(1_000, "first")),
            ("b".to_string(), l(3_000, "third")),
        ];
        let text = render(&mut lines, 9, false);
        assert_eq!(
            text,
            "long-name | first\nb         | second\nb         | third\n"
        );
        let stamped = render(&mut lines, 9, true);
        assert!(
            stamped.starts_with("1970-01-01T00:00:00.000Z long-name | first"),
            "{stamped}"
        );
        assert!(since_ns("10s", 20_000_000_000).unwrap() == 10_000_000_000);
    }
}

//! Rolling updates as `uc` shows them: `uc deploy` of a changed service, `uc rollback`, and
//! `uc service history`.

use anyhow::bail;
use uncloud_api::service::{HistoryReply, ServiceRef, UpdateReply, UpdateRequest};
use uncloud_api::ApiClient;

use crate::context::Store;
use crate::output::{self, Format, Spinner};
use crate::remote::{self, answer};
use crate::service::{containers_table, RUN_TIMEOUT};
use crate::Global;

/// The API version that knows `update` and `history`.
pub const UPDATE_API: u32 = 6;

/// `uc rollback SERVICE`.
#[derive(Debug, clap::Args)]
pub struct Rollback {
    /// The service: `web`, or `web.shop` for `web` of project `shop`.
    pub service: String,
    /// The revision to go back to (see `uc service history`); default: the newest one before
    /// the current with another spec.
    #[arg(long, value_name = "REVISION")]
    pub to: Option<u64>,
    /// `start-first` or `stop-first` (default: start-first unless host ports or a volume
    /// only one container may use force stop-first).
    #[arg(long, value_parser = ["start-first", "stop-first"])]
    pub order: Option<String>,
}

/// `uc service …`.
#[derive(Debug, clap::Subcommand)]
pub enum ServiceCmd {
    /// The revisions of a service, oldest first: what changed in each and how many
    /// containers run it. `uc rollback --to REVISION` goes back to one.
    #[command(
        after_help = "Examples:\n  uc service history web\n  uc service history db.shop -o json"
    )]
    History {
        /// The service: `web`, or `web.shop` for `web` of project `shop`.
        service: String,
    },
}

/// Asks for an update and reports it: each step, then the containers; an update that failed
/// is an error saying why, with the failed container's last log lines.
pub async fn update(
    member: &ApiClient,
    request: UpdateRequest,
    g: &Global,
) -> anyhow::Result<UpdateReply> {
    let what = match (&request.spec, request.to_revision) {
        (Some(_), _) => format!("updating {}", request.service),
        (None, Some(rev)) => format!("rolling {} back to revision {rev}", request.service),
        (None, None) => format!("rolling {} back", request.service),
    };
    let spinner = Spinner::start(what);
    let reply = match answer(
        member
            .update(uncloud_api::context(RUN_TIMEOUT), request)
            .await,
    ) {
        Ok(r) => r,
        Err(e) => {
            spinner.done("failed");
            return Err(e.into());
        }
    };
    let name = reply.service.display_name();
    spinner.done(&if reply.error.is_empty() {
        format!(
            "{} ({}, revision {})",
            if reply.steps.is_empty() {
                "nothing to do"
            } else {
                "done"
            },
            reply.order,
            reply.service.revision
        )
    } else {
        "failed".into()
    });
    if g.output == Format::Json {
        print!("{}", output::json(&reply));
    } else {
        for s in &reply.steps {
            eprintln!("  {s}");
        }
    }
    for s in &reply.skipped {
        eprintln!("warning: {}: {}", s.machine, s.error);
    }
    if !reply.error.is_empty() {
        eprintln!("error: {}", reply.error);
        if !reply.logs.is_empty() {
            eprintln!("its last log lines:");
            for l in &reply.logs {
                eprintln!("  | {l}");
            }
        }
        if reply.rolled_back {
            bail!(
                "{name} went back to its previous spec (revision {}); fix the change and deploy \
                 again",
                reply.service.revision
            );
        }
        bail!(
            "{name} was not fully updated: `uc rollback {name}` goes back, or fix what failed \
             and deploy again"
        );
    }
    Ok(reply)
}

pub async fn rollback(cmd: Rollback, g: &Global) -> anyhow::Result<()> {
    let store = Store::default_location();
    let ctx = store.load(g.context.as_deref())?;
    let (member, via) = remote::member(&ctx, g).await?;
    remote::require_api(&member, &via, UPDATE_API).await?;
    let request = UpdateRequest {
        service: cmd.service,
        to_revision: cmd.to,
        order: cmd.order.unwrap_or_default(),
        ..Default::default()
    };
    let reply = update(&member, request, g).await?;
    if g.output != Format::Json {
        print!("{}", containers_table(std::slice::from_ref(&reply.service)));
    }
    Ok(())
}

pub async fn service(cmd: ServiceCmd, g: &Global) -> anyhow::Result<()> {
    let ServiceCmd::History { service } = cmd;
    let store = Store::default_location();
    let ctx = store.load(g.context.as_deref())?;
    let (member, via) = remote::member(&ctx, g).await?;
    remote::require_api(&member, &via, UPDATE_API).await?;
    let reply = answer(member.history(remote::ctx(), ServiceRef { service }).await)?;
    if g.output == Format::Json {
        print!("{}", output::json(&reply));
    } else {
        print!("{}", history_table(&reply));
    }
    Ok(())
}

/// One line per revision: what changed from the one before.
fn history_table(h: &HistoryReply) -> String {
    let mut rows = Vec::new();
    let mut previous = None;
    for r in &h.revisions {
        let changed = match previous {
            None => "(oldest kept)".to_string(),
            Some(p) => {
                let d = crate::deploy::differences(&r.spec, p);
                if d.is_empty() {
                    "(same spec)".into()
                } else {
                    d.join(", ")
                }
            }
        };
        rows.push(vec![
            format!("{}{}", r.revision, if r.current { " *" } else { "" }),
            r.spec.image.clone(),
            r.containers.to_string(),
            changed,
        ]);
        previous = Some(&r.spec);
    }
    output::table(&["REVISION", "IMAGE", "CONTAINERS", "CHANGED"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uncloud_api::service::{RevisionRow, ServiceSpec};

    #[test]
    fn history_says_what_each_revision_changed_and_marks_the_current() {
        let spec = |image: &str, replicas: u32| ServiceSpec {
            image: image.into(),
            replicas,
            ..Default::default()
        };
        let h = HistoryReply {
            service: "web".into(),
            revisions: vec![
                RevisionRow {
                    revision: 1,
                    spec: spec("web:1", 3),
                    current: false,
                    containers: 0,
                },
                RevisionRow {
                    revision: 2,
                    spec: spec("web:2", 3),
                    current: false,
                    containers: 1,
                },
                RevisionRow {
                    revision: 3,
                    spec: spec("web:1", 3),
                    current: true,
                    containers: 2,
                },
            ],
        };
        let t = history_table(&h);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].contains("(oldest kept)"), "{t}");
        assert!(
            lines[2].starts_with("2 ") && lines[2].ends_with("image"),
            "{t}"
        );
        assert!(
            lines[3].starts_with("3 *") && lines[3].contains("web:1"),
            "{t}"
        );
    }
}

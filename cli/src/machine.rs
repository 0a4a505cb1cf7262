//! `uc machine …`: forming the network and looking at its machines.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use rcgen::{KeyPair, PublicKeyData};
use uncloud_api::wire::{
    Answer, Call, DrainRequest, InitRequest, JoinRequest, MachineChange, MachineRef, MachineRow,
    TicketRequest,
};
use uncloud_pki::Fingerprint;

use crate::context::{Context, Store};
use crate::output::{self, Format, Spinner};
use crate::remote::{self, answer};
use crate::targets;
use crate::Global;

#[derive(Debug, Subcommand)]
pub enum Machine {
    /// Create a network on a fresh machine and make a context for it.
    ///
    /// The machine's console (or serial log) shows its fingerprint and setup token after its
    /// first boot.
    #[command(
        after_help = "Example:\n  uc machine init 203.0.113.10 --fingerprint sha256:4f2a… --token 7KQ2-…"
    )]
    Init {
        #[command(flatten)]
        fresh: Fresh,
        /// The name of the new context (default: `default`, or the network id if taken).
        #[arg(long = "new-context")]
        new_context: Option<String>,
        /// The mesh range (default 10.210.0.0/16).
        #[arg(long)]
        mesh_cidr: Option<String>,
    },
    /// Add a fresh machine to the network.
    ///
    /// Asks a member for a join ticket and hands it to the fresh machine, which redeems it
    /// at that member and joins.
    #[command(
        after_help = "Example:\n  uc machine add 198.51.100.7 --fingerprint sha256:9c01… --token QX4M-… --name pi-kitchen"
    )]
    Add {
        #[command(flatten)]
        fresh: Fresh,
    },
    /// Print a join ticket to pre-seed on a machine before its first boot.
    ///
    /// Put it in cloud-init user-data (`write_files` to
    /// /var/lib/uncloud/identity/join-ticket) or in `uncloud-setup.toml` on a Raspberry Pi's
    /// SD card (`join_ticket = "…"`): the machine joins by itself when it boots.
    #[command(after_help = "Example:\n  uc machine token --ttl 7d --name pi-garage > ticket")]
    Token {
        /// How long it stays valid: seconds, or a number with s, m, h or d (default: the
        /// member's, 10 minutes).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<u64>,
        #[arg(long)]
        name: Option<String>,
    },
    /// List the network's machines as the connected machine sees them (with `-m`, as each
    /// of those machines sees them).
    #[command(
        after_help = "Examples:\n  uc machine ls\n  uc machine ls -m all -o json    # each machine's view, e.g. during a partition"
    )]
    Ls,
    /// Remove machines from the network for good.
    ///
    /// A removed machine leaves every machine's mesh, its containers' records go, the
    /// certificates its CA issued stop working everywhere, and it cannot come back under its
    /// id, also if it was offline and returns later: reinstall it to add it again. Remove a
    /// machine through another one (`--endpoint`).
    #[command(after_help = "Example:\n  uc machine rm pi-garage")]
    Rm {
        /// Names (or ids) of the machines.
        #[arg(required = true)]
        machines: Vec<String>,
    },
    /// Drain a machine: its services' containers move to other machines, and no new ones go
    /// to it until `uc machine enable`.
    ///
    /// Each service with a container on it is rolled out again with its own spec: a
    /// replicated container's successor starts on another machine and is ready (healthy, or
    /// running through 5 s) before the one on the drained machine is removed; a global
    /// service's container there is removed. Use it before maintenance or `uc machine rm`.
    #[command(
        after_help = "Examples:\n  uc machine drain pi-garage\n  uc machine enable pi-garage"
    )]
    Drain { machine: String },
    /// Let a drained machine take containers again. Nothing moves back by itself: global
    /// services return within a minute, replicated ones as they are scaled or updated.
    #[command(after_help = "Example:\n  uc machine enable pi-garage")]
    Enable { machine: String },
    /// Rename a machine: it is NEW.machine.internal from then on.
    #[command(after_help = "Example:\n  uc machine rename pi-kitchen pi-attic")]
    Rename { machine: String, new_name: String },
    /// Set or remove a machine's labels, which placement rules match.
    #[command(
        after_help = "Examples:\n  uc machine label alpha disk=ssd zone=eu\n  uc machine label alpha --rm zone"
    )]
    Label {
        machine: String,
        /// Labels to set.
        #[arg(value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Label keys to remove.
        #[arg(long = "rm", value_name = "KEY")]
        remove: Vec<String>,
    },
    /// Add or remove a machine's roles (`ingress` serves published services to the
    /// internet).
    #[command(subcommand)]
    Role(Role),
    /// Units, versions, uptime, memory and disk of the connected machine (with `-m`, of
    /// each).
    #[command(after_help = "Examples:\n  uc machine status\n  uc machine status -m all -o json")]
    Status,
    /// The journal of Uncloud's daemons (or of `-u` units) on the connected machine (with
    /// `-m`, of each, prefixed by the machine's name). The appliance has no shell: this is
    /// how to read its logs.
    #[command(
        after_help = "Examples:\n  uc machine logs\n  uc machine logs -u meshd -f\n  uc machine logs -m all --since -1h -n 50\n  uc machine logs -u docker --since '2026-12-03 10:00'"
    )]
    Logs {
        /// A unit to show (`stated`, `meshd`, `apid`, `dockerd-shim`, `docker`, …); repeat
        /// for several. Default: Uncloud's own.
        #[arg(short = 'u', long = "unit", value_name = "UNIT")]
        units: Vec<String>,
        /// Entries since then: `2026-12-03 10:00`, `-1h`, `today`.
        #[arg(long)]
        since: Option<String>,
        /// The last N entries (at most 5000).
        #[arg(short = 'n', long = "tail", value_name = "N", default_value_t = 200)]
        lines: u32,
        /// Keep printing new entries until interrupted.
        #[arg(short, long)]
        follow: bool,
    },
    /// Reboot the connected machine (with `-m`, each of those). Admin only.
    #[command(
        after_help = "Examples:\n  uc machine reboot --endpoint 198.51.100.7\n  uc machine reboot -m pi-kitchen"
    )]
    Reboot,
}

#[derive(Debug, Subcommand)]
pub enum Role {
    /// Give a machine roles.
    #[command(after_help = "Example:\n  uc machine role add alpha ingress")]
    Add {
        machine: String,
        #[arg(required = true)]
        roles: Vec<String>,
    },
    /// Take roles from a machine.
    #[command(after_help = "Example:\n  uc machine role rm alpha ingress")]
    Rm {
        machine: String,
        #[arg(required = true)]
        roles: Vec<String>,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE (remove a label with --rm KEY)"))
}

/// A fresh machine as its console shows it, and the name it is to have.
#[derive(Debug, clap::Args)]
pub struct Fresh {
    /// Address of the fresh machine (`HOST` or `HOST:PORT`; apid's port is 7443).
    host: String,
    /// The SHA-256 fingerprint its console shows.
    #[arg(long)]
    fingerprint: Fingerprint,
    /// The setup token its console shows.
    #[arg(long, env = "UNCLOUD_SETUP_TOKEN")]
    token: String,
    /// The machine's name in the network (default: its host name).
    #[arg(long)]
    name: Option<String>,
}

pub fn parse_duration(s: &str) -> Result<u64, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 10m, 24h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))
}

pub async fn run(cmd: Machine, g: &Global) -> anyhow::Result<()> {
    let store = Store::default_location();
    match cmd {
        Machine::Init {
            fresh:
                Fresh {
                    host,
                    fingerprint,
                    token,
                    name,
                },
            new_context,
            mesh_cidr,
        } => {
            let key = KeyPair::generate().context("cannot make a client key")?;
            let client = remote::fresh_machine(&host, fingerprint).await?;
            let spin = Spinner::start(format!("creating the network on {host}"));
            let reply = answer(
                client
                    .init(
                        remote::ctx(),
                        InitRequest {
                            token,
                            machine_name: name.unwrap_or_default(),
                            mesh_cidr: mesh_cidr.unwrap_or_default(),
                            client_public_key: key.subject_public_key_info(),
                            client_name: client_name(),
                        },
                    )
                    .await,
            )?;
            spin.done("done");
            let ctx_name = match new_context.or_else(|| g.context.clone()) {
                Some(n) => n,
                None if !store.exists("default") => "default".into(),
                None => reply.network_id.clone(),
            };
            if store.exists(&ctx_name) {
                bail!("a context named {ctx_name:?} exists already; choose another with --new-context (the network was created: its admin certificate is printed below)\n{}", reply.client_cert);
            }
            let endpoint = remote::resolve(&host)?.to_string();
            let ctx = Context {
                name: ctx_name.clone(),
                network_id: reply.network_id.clone(),
                endpoints: vec![endpoint],
                ca_pem: reply.ca_cert,
                cert_pem: reply.client_cert,
                key_pem: key.serialize_pem(),
                ..Default::default()
            };
            store.save(&ctx)?;
            store.set_current(&ctx_name)?;
            eprintln!(
                "network {} created; {} is its first machine. Context {:?} is now current.\n\
                 Next: `uc machine add HOST --fingerprint … --token …` for each other machine.",
                reply.network_id, reply.machine_name, ctx_name
            );
            Ok(())
        }
        Machine::Add {
            fresh:
                Fresh {
                    host,
                    fingerprint,
                    token,
                    name,
                },
        } => {
            let mut ctx = store.load(g.context.as_deref())?;
            let (member, via) = remote::member(&ctx, g).await?;
            let ticket = answer(
                member
                    .issue_ticket(
                        remote::ctx(),
                        TicketRequest {
                            ttl_secs: 0,
                            name: name.unwrap_or_default(),
                        },
                    )
                    .await,
            )?;
            let fresh = remote::fresh_machine(&host, fingerprint).await?;
            let spin = Spinner::start(format!("{host} is joining through {via}"));
            let joined = answer(
                fresh
                    .join(
                        remote::ctx(),
                        JoinRequest {
                            token,
                            ticket: ticket.ticket,
                        },
                    )
                    .await,
            )?;
            spin.done(&format!(
                "joined as {} ({})",
                joined.machine_name, joined.subnet
            ));
            ctx.add_cas([joined.ca_cert.as_str()]);
            ctx.add_endpoint(&remote::resolve(&host)?.to_string());
            store.save(&ctx)?;
            Ok(())
        }
        Machine::Token { ttl, name } => {
            let ctx = store.load(g.context.as_deref())?;
            let (member, via) = remote::member(&ctx, g).await?;
            let reply = answer(
                member
                    .issue_ticket(
                        remote::ctx(),
                        TicketRequest {
                            ttl_secs: ttl.unwrap_or(0),
                            name: name.unwrap_or_default(),
                        },
                    )
                    .await,
            )?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            eprintln!(
                "a join ticket from {via}, valid for {} s, redeemable once, at that machine",
                reply.expires_at.saturating_sub(now)
            );
            println!("{}", reply.ticket);
            Ok(())
        }
        Machine::Ls if !g.targets.is_empty() => {
            let replies = targets::ask(g, Call::Machines, 2).await?;
            if g.output == Format::Json {
                print!("{}", output::json(&replies));
            }
            targets::each(&replies, |machine, answer, _| {
                let Answer::Machines(rows) = answer else {
                    return Err(targets::unexpected(machine));
                };
                if g.output == Format::Table {
                    println!("seen from {machine}:");
                    print_rows(rows, Format::Table);
                }
                Ok(())
            })
        }
        Machine::Status => crate::host::status(g).await,
        Machine::Logs {
            units,
            since,
            lines,
            follow,
        } => {
            let args = crate::host::LogArgs {
                units,
                since,
                lines,
                follow,
            };
            crate::host::logs(g, args).await
        }
        Machine::Reboot => crate::host::reboot(g).await,
        Machine::Ls => {
            let mut ctx = store.load(g.context.as_deref())?;
            let (member, _) = remote::member(&ctx, g).await?;
            let rows = answer(member.machines(remote::ctx()).await)?;
            // Learn the CAs of machines that joined since: any of them can be reached next.
            if ctx.add_cas(rows.iter().map(|r| r.ca_cert.as_str())) {
                store.save(&ctx)?;
            }
            print_rows(&rows, g.output);
            Ok(())
        }
        Machine::Rm { machines } => {
            let mut ctx = store.load(g.context.as_deref())?;
            let (member, via) = remote::member(&ctx, g).await?;
            remote::require_api(&member, &via, 2).await?;
            let mut failed = 0;
            for name in machines {
                match answer(
                    member
                        .remove_machine(
                            remote::ctx(),
                            MachineRef {
                                machine: name.clone(),
                            },
                        )
                        .await,
                ) {
                    Ok(gone) => {
                        let ips: Vec<std::net::IpAddr> = gone
                            .endpoints
                            .iter()
                            .filter_map(|e| e.parse::<std::net::SocketAddr>().ok())
                            .map(|a| a.ip())
                            .collect();
                        if ctx.forget_machine(&gone.ca_cert, &ips) {
                            store.save(&ctx)?;
                        }
                        eprintln!(
                            "removed {} ({}): the network refuses it from now on; reinstall it \
                             to use it again",
                            gone.name, gone.subnet
                        );
                    }
                    Err(e) => {
                        eprintln!("error: {name}: {e}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} machine(s) not removed");
            }
            Ok(())
        }
        Machine::Drain { machine } => drain(&store, g, machine, true).await,
        Machine::Enable { machine } => drain(&store, g, machine, false).await,
        Machine::Rename { machine, new_name } => {
            change(
                &store,
                g,
                MachineChange {
                    machine,
                    rename: new_name,
                    ..Default::default()
                },
            )
            .await
        }
        Machine::Label {
            machine,
            labels,
            remove,
        } => {
            if labels.is_empty() && remove.is_empty() {
                bail!("give labels to set (KEY=VALUE) or to remove (--rm KEY)");
            }
            change(
                &store,
                g,
                MachineChange {
                    machine,
                    set_labels: labels.into_iter().collect(),
                    remove_labels: remove,
                    ..Default::default()
                },
            )
            .await
        }
        Machine::Role(Role::Add { machine, roles }) => {
            change(
                &store,
                g,
                MachineChange {
                    machine,
                    add_roles: roles,
                    ..Default::default()
                },
            )
            .await
        }
        Machine::Role(Role::Rm { machine, roles }) => {
            change(
                &store,
                g,
                MachineChange {
                    machine,
                    remove_roles: roles,
                    ..Default::default()
                },
            )
            .await
        }
    }
}

/// The API version that knows `drain_machine`.
const DRAIN_API: u32 = 8;

/// `uc machine drain|enable`: says what moved, fails if anything could not.
async fn drain(store: &Store, g: &Global, machine: String, drain: bool) -> anyhow::Result<()> {
    let ctx = store.load(g.context.as_deref())?;
    let (member, via) = remote::member(&ctx, g).await?;
    remote::require_api(&member, &via, DRAIN_API).await?;
    let spinner = drain.then(|| Spinner::start(format!("draining {machine}")));
    let reply = answer(
        member
            .drain_machine(
                uncloud_api::context(crate::service::RUN_TIMEOUT),
                DrainRequest { machine, drain },
            )
            .await,
    );
    drop(spinner);
    let reply = reply?;
    if g.output == Format::Json {
        print!("{}", output::json(&reply));
    } else {
        for s in &reply.services {
            for step in &s.steps {
                println!("{}: {step}", s.service);
            }
        }
        if drain {
            println!(
                "{} is drained: no container of a service goes to it (`uc machine enable {}`)",
                reply.machine, reply.machine
            );
        } else {
            println!("{} takes containers again", reply.machine);
        }
    }
    let failed: Vec<String> = reply
        .services
        .iter()
        .filter(|s| !s.error.is_empty())
        .map(|s| format!("{}: {}", s.service, s.error))
        .collect();
    if !failed.is_empty() {
        bail!(
            "some containers are still on {}: {}",
            reply.machine,
            failed.join("; ")
        );
    }
    Ok(())
}

/// Applies `change` through a member and shows the machine as it is now.
async fn change(store: &Store, g: &Global, change: MachineChange) -> anyhow::Result<()> {
    let ctx = store.load(g.context.as_deref())?;
    let (member, via) = remote::member(&ctx, g).await?;
    remote::require_api(&member, &via, 2).await?;
    let row = answer(member.change_machine(remote::ctx(), change).await)?;
    print_rows(&[row], g.output);
    Ok(())
}

fn print_rows(rows: &[MachineRow], format: Format) {
    match format {
        Format::Json => print!("{}", output::json(&rows)),
        Format::Table => {
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        if r.drained {
                            format!("{},drained", r.state)
                        } else {
                            r.state.clone()
                        },
                        r.arch.clone(),
                        r.subnet.clone(),
                        r.endpoints.join(","),
                        r.roles.join(","),
                        r.labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                        r.version.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(
                    &[
                        "NAME",
                        "STATE",
                        "ARCH",
                        "SUBNET",
                        "ENDPOINTS",
                        "ROLES",
                        "LABELS",
                        "VERSION"
                    ],
                    &table
                )
            );
        }
    }
}

/// Who this client is, for the certificate's subject: `user@host`.
fn client_name() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "admin".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, parse_label};

    #[test]
    fn labels_read_as_key_equals_value() {
        assert_eq!(parse_label("disk=ssd"), Ok(("disk".into(), "ssd".into())));
        assert_eq!(parse_label("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_label("disk").unwrap_err().contains("--rm"));
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("7d"), Ok(7 * 86400));
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("soon").is_err());
    }
}

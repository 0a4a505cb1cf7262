//! `uc cert …`: who may use the network. Client certificates carry a role (`admin` or
//! `reader`); every issued one is listed in the state and can be revoked network-wide.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use rcgen::{KeyPair, PublicKeyData};
use uncloud_api::wire::{CertRef, CertRequest, CertRow, RenewRequest};

use crate::context::{Bundle, Context, Store};
use crate::output::{self, Format};
use crate::remote::{self, answer};
use crate::Global;

#[derive(Debug, Subcommand)]
pub enum Cert {
    /// Issue a certificate for someone (or another laptop) and write it as a context file.
    ///
    /// The file holds a new private key: hand it over privately. Its holder runs
    /// `uc ctx import FILE`. A `reader` may list and look; only an `admin` may change things.
    #[command(
        after_help = "Examples:\n  uc cert issue alice@laptop --role admin\n  uc cert issue grafana --role reader --ttl 90d --out grafana.uccontext"
    )]
    Issue {
        /// Who it names.
        subject: String,
        /// `admin` or `reader`.
        #[arg(long, default_value = "reader")]
        role: String,
        /// How long it is valid: seconds, or a number with s, m, h or d (default and most:
        /// a year).
        #[arg(long, value_parser = crate::machine::parse_duration)]
        ttl: Option<u64>,
        /// Where to write the context file (default: SUBJECT.uccontext here).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the client certificates the network's machines issued.
    Ls,
    /// Revoke certificates network-wide, by serial (or 8+ leading digits) or subject.
    ///
    /// Machines refuse a revoked certificate as soon as the revocation reaches them, also
    /// those offline now, when they come back.
    #[command(
        after_help = "Examples:\n  uc cert revoke alice@old-laptop\n  uc cert revoke 4f2a9c01"
    )]
    Revoke {
        #[arg(required = true)]
        certs: Vec<String>,
    },
    /// Renew this context's certificate (same subject and role, a new key, a year).
    ///
    /// `uc` also does this by itself when the certificate has less than 30 days left.
    Renew,
}

pub async fn run(cmd: Cert, g: &Global) -> anyhow::Result<()> {
    let store = Store::default_location();
    let ctx = store.load(g.context.as_deref())?;
    let (member, via) = remote::member(&ctx, g).await?;
    remote::require_api(&member, &via, 2).await?;
    match cmd {
        Cert::Issue {
            subject,
            role,
            ttl,
            out,
        } => {
            let path = out.unwrap_or_else(|| PathBuf::from(format!("{subject}.uccontext")));
            if path.exists() {
                bail!(
                    "{} exists already: choose another with --out",
                    path.display()
                );
            }
            let key = KeyPair::generate().context("cannot make a key")?;
            let reply = answer(
                member
                    .issue_cert(
                        remote::ctx(),
                        CertRequest {
                            subject: subject.clone(),
                            role,
                            public_key: key.subject_public_key_info(),
                            ttl_secs: ttl.unwrap_or(0),
                        },
                    )
                    .await,
            )?;
            let mut endpoints = reply.endpoints.clone();
            if endpoints.is_empty() {
                endpoints = ctx.endpoints.clone();
            }
            let bundle = Bundle::of(&Context {
                name: ctx.name.clone(),
                network_id: reply.network_id,
                endpoints,
                ca_pem: reply.ca_bundle,
                cert_pem: reply.cert_pem,
                key_pem: key.serialize_pem(),
                ..Default::default()
            });
            bundle.write_new(&path)?;
            eprintln!(
                "wrote {} ({} certificate for {subject}, serial {}): hand it over privately; \
                 its holder runs `uc ctx import {}`",
                path.display(),
                reply.cert.role,
                reply.cert.serial,
                path.display()
            );
            Ok(())
        }
        Cert::Ls => {
            let rows = answer(member.certs(remote::ctx()).await)?;
            print_rows(&rows, g.output);
            Ok(())
        }
        Cert::Revoke { certs } => {
            let mut failed = 0;
            for c in certs {
                match answer(
                    member
                        .revoke_cert(remote::ctx(), CertRef { cert: c.clone() })
                        .await,
                ) {
                    Ok(rows) if rows.is_empty() => eprintln!("{c}: revoked already"),
                    Ok(rows) => {
                        for r in rows {
                            eprintln!("revoked {} ({}, serial {})", r.subject, r.role, r.serial);
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {c}: {e}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} revocation(s) failed");
            }
            Ok(())
        }
        Cert::Renew => {
            let serial = renew(&store, ctx, member).await?;
            eprintln!("renewed: serial {serial}, valid for a year");
            Ok(())
        }
    }
}

/// A certificate with less than this left is renewed by the next command that uses it.
const RENEW_BEFORE_SECS: i64 = 30 * 86400;

/// Renews the current context's certificate when it is due; a failure only warns (the
/// command itself goes on and says what is wrong, if anything).
pub async fn renew_if_due(g: &Global) {
    let store = Store::default_location();
    let Ok(ctx) = store.load(g.context.as_deref()) else {
        return;
    };
    let Some(info) = uncloud_pki::pem_to_der(&ctx.cert_pem)
        .ok()
        .and_then(|der| uncloud_pki::CertInfo::parse(&der).ok())
    else {
        return;
    };
    let left = (info.not_after - time::OffsetDateTime::now_utc()).whole_seconds();
    if left > RENEW_BEFORE_SECS {
        return;
    }
    if left <= 0 {
        eprintln!(
            "warning: this context's certificate expired; ask an admin for a new one \
             (`uc cert issue`)"
        );
        return;
    }
    let attempt = async {
        let (member, via) = remote::member(&ctx, g).await?;
        remote::require_api(&member, &via, 2).await?;
        renew(&store, ctx, member).await
    };
    match attempt.await {
        Ok(serial) => eprintln!(
            "renewed this context's certificate ({} days were left): serial {serial}",
            left / 86400
        ),
        Err(e) => eprintln!("warning: could not renew this context's certificate: {e:#}"),
    }
}

/// Renews the context's certificate with a new key and saves it; returns the new serial.
pub async fn renew(
    store: &Store,
    mut ctx: Context,
    member: uncloud_api::wire::ApiClient,
) -> anyhow::Result<String> {
    let key = KeyPair::generate().context("cannot make a key")?;
    let reply = answer(
        member
            .renew_cert(
                remote::ctx(),
                RenewRequest {
                    public_key: key.subject_public_key_info(),
                },
            )
            .await,
    )?;
    ctx.cert_pem = reply.cert_pem;
    ctx.key_pem = key.serialize_pem();
    ctx.add_cas(reply.ca_bundle.split_inclusive("-----END CERTIFICATE-----"));
    store.save(&ctx)?;
    Ok(reply.cert.serial)
}

fn print_rows(rows: &[CertRow], format: Format) {
    match format {
        Format::Json => print!("{}", output::json(&rows)),
        Format::Table => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let status = if r.revoked {
                        "revoked".to_string()
                    } else if r.not_after != 0 && r.not_after < now {
                        "expired".to_string()
                    } else {
                        format!("{} days left", r.not_after.saturating_sub(now) / 86400)
                    };
                    vec![
                        r.serial.chars().take(16).collect(),
                        r.subject.clone(),
                        r.role.clone(),
                        r.issued_by.clone(),
                        status,
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(
                    &["SERIAL", "SUBJECT", "ROLE", "ISSUED BY", "STATUS"],
                    &table
                )
            );
        }
    }
}

//! `uc ingress …`: what the ingress machines serve: routes with their upstreams' health, and
//! the HTTPS hostnames' certificates.

use clap::Subcommand;
use uncloud_api::wire::{Answer, Call, IngressCertificate, IngressRoute};

use crate::output::{self, Format};
use crate::targets::{self, unexpected};
use crate::Global;

#[derive(Debug, Subcommand)]
pub enum Ingress {
    /// Every published hostname and path prefix, the service behind it, and its upstream
    /// containers with their health as the connected machine's ingressd sees them (with `-m`,
    /// each machine's view: two sides of a partition route to different containers). Every
    /// machine computes the same routes; only machines with the `ingress` role listen.
    #[command(
        after_help = "Examples:\n  uc ingress ls\n  uc ingress ls -m all       # each machine's view of the upstreams\n  uc ingress ls -o json\nPublish a hostname with `uc run -p app.example.com:8000/https` or Compose `x-ports`;\ngive a machine the role with `uc machine role add NAME ingress`."
    )]
    Ls,
    /// Every HTTPS hostname's certificate: status (issued, ordering, failed, self-signed,
    /// none), expiry, when it renews, issuer, which machine ordered it, the last error. One
    /// certificate per hostname, shared by every ingress machine.
    #[command(
        after_help = "Examples:\n  uc ingress certs\n  uc ingress certs -o json\nA hostname gets a certificate once it resolves (DNS A record) to an ingress machine,\nwhich must be reachable on port 80 for the CA's HTTP-01 challenge."
    )]
    Certs,
}

pub async fn run(cmd: Ingress, g: &Global) -> anyhow::Result<()> {
    let call = match cmd {
        Ingress::Ls => Call::IngressRoutes,
        Ingress::Certs => Call::IngressCertificates,
    };
    let replies = targets::ask(g, call, 11).await?;
    if g.output == Format::Json {
        print!("{}", output::json(&replies));
        return targets::each(&replies, |_, _, _| Ok(()));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    targets::each(&replies, |machine, answer, several| {
        if several {
            println!("answered by {machine}:");
        }
        match answer {
            Answer::IngressRoutes(r) => print!("{}", routes_table(r)),
            Answer::IngressCertificates(c) => print!("{}", certs_table(c, now)),
            _ => return Err(unexpected(machine)),
        }
        Ok(())
    })
}

pub fn routes_table(routes: &[IngressRoute]) -> String {
    if routes.is_empty() {
        return "no service publishes a hostname (uc run -p HOST:PORT/https, or x-ports in Compose)\n".into();
    }
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let upstreams = if r.upstreams.is_empty() {
                "(none healthy)".to_string()
            } else {
                r.upstreams
                    .iter()
                    .map(|u| {
                        if u.down {
                            format!("{} (down, {} failures)", u.address, u.failures)
                        } else {
                            u.address.clone()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let url = format!(
                "{}://{}{}",
                r.protocol,
                r.hostname,
                if r.path == "/" { "" } else { &r.path }
            );
            vec![url, r.service.clone(), upstreams]
        })
        .collect();
    output::table(&["ROUTE", "SERVICE", "UPSTREAMS"], &rows)
}

/// "in 59 days", "3 hours ago".
fn relative(at_ms: u64, now_ms: u64) -> String {
    if at_ms == 0 {
        return "-".into();
    }
    let (d, future) = if at_ms >= now_ms {
        (at_ms - now_ms, true)
    } else {
        (now_ms - at_ms, false)
    };
    let s = d / 1000;
    let amount = match s {
        0..=119 => format!("{s} seconds"),
        120..=7199 => format!("{} minutes", s / 60),
        7200..=172_799 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86_400),
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

pub fn certs_table(certs: &[IngressCertificate], now_ms: u64) -> String {
    if certs.is_empty() {
        return "no HTTPS hostname is published\n".into();
    }
    let rows: Vec<Vec<String>> = certs
        .iter()
        .map(|c| {
            let note = if !c.claim_by.is_empty() {
                format!("ordered by {}", c.claim_by)
            } else if !c.last_error.is_empty() {
                format!("{} failures: {}", c.failures, c.last_error)
            } else {
                String::new()
            };
            vec![
                c.hostname.clone(),
                c.status.clone(),
                relative(c.not_after_ms, now_ms),
                relative(c.renew_at_ms, now_ms),
                c.issuer.clone(),
                note,
            ]
        })
        .collect();
    output::table(
        &["HOSTNAME", "STATUS", "EXPIRES", "RENEWS", "ISSUER", "NOTE"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use uncloud_api::wire::IngressUpstream;

    #[test]
    fn routes_show_down_upstreams_and_empty_ones() {
        let t = routes_table(&[
            IngressRoute {
                hostname: "app.example.com".into(),
                path: "/api".into(),
                protocol: "https".into(),
                service: "api.shop".into(),
                upstreams: vec![
                    IngressUpstream {
                        address: "10.210.1.2:80".into(),
                        down: false,
                        active: 0,
                        failures: 0,
                    },
                    IngressUpstream {
                        address: "10.210.2.2:80".into(),
                        down: true,
                        active: 0,
                        failures: 3,
                    },
                ],
            },
            IngressRoute {
                hostname: "b.example.com".into(),
                path: "/".into(),
                protocol: "http".into(),
                service: "b".into(),
                upstreams: vec![],
            },
        ]);
        assert!(t.contains("https://app.example.com/api"), "{t}");
        assert!(t.contains("10.210.2.2:80 (down, 3 failures)"), "{t}");
        assert!(t.contains("http://b.example.com "), "{t}");
        assert!(t.contains("(none healthy)"), "{t}");
    }

    #[test]
    fn certificates_say_when_they_expire_and_why_they_failed() {
        let day = 86_400_000;
        let t = certs_table(
            &[IngressCertificate {
                hostname: "app.example.com".into(),
                status: "failed".into(),
                not_after_ms: 90 * day,
                renew_at_ms: 60 * day,
                failures: 2,
                last_error: "the CA refused the challenge: connection refused".into(),
                ..Default::default()
            }],
            day,
        );
        assert!(t.contains("in 89 days") && t.contains("in 59 days"), "{t}");
        assert!(t.contains("2 failures: the CA refused"), "{t}");
        assert_eq!(relative(0, 5), "-");
        assert_eq!(relative(1000, 61_000), "60 seconds ago");
    }
}

//! `uc dns …`: the names of the `internal` zone as each machine's dnsd serves them.

use clap::Subcommand;
use uncloud_api::wire::{Answer, Call, DnsName};

use crate::output::{self, Format};
use crate::targets::{self, unexpected};
use crate::Global;

#[derive(Debug, Subcommand)]
pub enum Dns {
    /// Every name the connected machine (with `-m`, each machine) answers right now, and the
    /// addresses it gives: machines (`<name>.machine.internal`), containers
    /// (`<container>.<machine>.machine.internal`) and services (`<service>.<project>.internal`:
    /// only running, healthy containers on machines that machine sees reachable, so two sides
    /// of a partition answer differently).
    #[command(
        after_help = "Examples:\n  uc dns ls\n  uc dns ls -m all          # compare what each machine answers, e.g. during a partition\n  uc dns ls -o json"
    )]
    Ls,
}

pub async fn run(cmd: Dns, g: &Global) -> anyhow::Result<()> {
    match cmd {
        Dns::Ls => {
            let replies = targets::ask(g, Call::DnsNames, 4).await?;
            if g.output == Format::Json {
                print!("{}", output::json(&replies));
                return targets::each(&replies, |_, _, _| Ok(()));
            }
            targets::each(&replies, |machine, answer, several| {
                let Answer::DnsNames(names) = answer else {
                    return Err(unexpected(machine));
                };
                if several {
                    println!("answered by {machine}:");
                }
                print!("{}", names_table(names));
                Ok(())
            })
        }
    }
}

pub fn names_table(names: &[DnsName]) -> String {
    let rows: Vec<Vec<String>> = names
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                if n.addresses.is_empty() {
                    "(none healthy)".into()
                } else {
                    n.addresses.join(", ")
                },
            ]
        })
        .collect();
    output::table(&["NAME", "ADDRESSES"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_without_addresses_says_so() {
        let t = names_table(&[
            DnsName {
                name: "db.shop.internal".into(),
                addresses: vec!["10.210.1.2".into(), "10.210.2.2".into()],
            },
            DnsName {
                name: "web.shop.internal".into(),
                addresses: Vec::new(),
            },
        ]);
        assert!(t.contains("10.210.1.2, 10.210.2.2"), "{t}");
        assert!(t.contains("(none healthy)"), "{t}");
    }
}

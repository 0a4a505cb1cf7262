//! `uc ctx …`: the networks this client knows.

use clap::Subcommand;

use crate::context::Store;
use crate::output::{self, Format};
use crate::Global;

#[derive(Debug, Subcommand)]
pub enum Ctx {
    /// List contexts; `*` marks the current one.
    Ls,
    /// Make a context the current one.
    Use { name: String },
}

pub fn run(cmd: Ctx, g: &Global) -> anyhow::Result<()> {
    let store = Store::default_location();
    match cmd {
        Ctx::Ls => {
            let current = store.current();
            let mut rows = Vec::new();
            for name in store.names()? {
                let ctx = store.load(Some(&name))?;
                rows.push(serde_json::json!({
                    "name": name,
                    "current": current.as_deref() == Some(name.as_str()),
                    "network_id": ctx.network_id,
                    "endpoints": ctx.endpoints,
                }));
            }
            match g.output {
                Format::Json => print!("{}", output::json(&rows)),
                Format::Table => {
                    let table: Vec<Vec<String>> = rows
                        .iter()
                        .map(|r| {
                            let mark = if r["current"] == true { "*" } else { "" };
                            vec![
                                format!("{}{mark}", r["name"].as_str().unwrap_or_default()),
                                r["network_id"].as_str().unwrap_or_default().to_string(),
                                r["endpoints"]
                                    .as_array()
                                    .map(|a| {
                                        a.iter()
                                            .filter_map(|e| e.as_str())
                                            .collect::<Vec<_>>()
                                            .join(",")
                                    })
                                    .unwrap_or_default(),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        output::table(&["NAME", "NETWORK", "ENDPOINTS"], &table)
                    );
                }
            }
            Ok(())
        }
        Ctx::Use { name } => {
            store.set_current(&name)?;
            eprintln!("context {name:?} is now current");
            Ok(())
        }
    }
}

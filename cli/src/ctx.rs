//! `uc ctx …`: the networks this client knows.

use clap::Subcommand;

use crate::context::{Bundle, Store};
use crate::output::{self, Format};
use crate::Global;

#[derive(Debug, Subcommand)]
pub enum Ctx {
    /// List contexts; `*` marks the current one.
    Ls,
    /// Make a context the current one.
    Use { name: String },
    /// Forget a context: its CA bundle, certificate and key (the network is untouched).
    Rm { name: String },
    /// Add a context from a file `uc cert issue` wrote; it becomes current if none is.
    #[command(after_help = "Example:\n  uc ctx import alice@laptop.uccontext --name work")]
    Import {
        file: std::path::PathBuf,
        /// The context's name here (default: the name in the file).
        #[arg(long)]
        name: Option<String>,
    },
}

/// One context, as `uc ctx ls` shows it.
#[derive(serde::Serialize)]
struct Row {
    name: String,
    current: bool,
    network_id: String,
    endpoints: Vec<String>,
}

pub fn run(cmd: Ctx, g: &Global) -> anyhow::Result<()> {
    let store = Store::default_location();
    match cmd {
        Ctx::Ls => {
            let current = store.current();
            let mut rows = Vec::new();
            for name in store.names()? {
                let ctx = store.load(Some(&name))?;
                rows.push(Row {
                    current: current.as_deref() == Some(name.as_str()),
                    name,
                    network_id: ctx.network_id,
                    endpoints: ctx.endpoints,
                });
            }
            match g.output {
                Format::Json => print!("{}", output::json(&rows)),
                Format::Table => {
                    let table: Vec<Vec<String>> = rows
                        .iter()
                        .map(|r| {
                            let mark = if r.current { "*" } else { "" };
                            vec![
                                format!("{}{mark}", r.name),
                                r.network_id.clone(),
                                r.endpoints.join(","),
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
        Ctx::Import { file, name } => {
            let bundle = Bundle::read(&file)?;
            let name = name.unwrap_or_else(|| bundle.name.clone());
            if store.exists(&name) {
                anyhow::bail!(
                    "a context named {name:?} exists already: choose another with --name"
                );
            }
            store.save(&bundle.into_context(name.clone()))?;
            if store.current().is_none() {
                store.set_current(&name)?;
                eprintln!("context {name:?} imported and current");
            } else {
                eprintln!("context {name:?} imported; use it with --context {name} or `uc ctx use {name}`");
            }
            Ok(())
        }
        Ctx::Rm { name } => {
            store.remove(&name)?;
            eprintln!("context {name:?} removed");
            Ok(())
        }
    }
}

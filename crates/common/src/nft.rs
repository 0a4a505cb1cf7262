//! Loading nftables rules: every daemon that owns rules keeps them in a table of its own and
//! loads it with one `nft -f -` transaction that replaces the table, so re-applying never
//! duplicates rules and a failure changes nothing.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
#[error("{what} failed: {reason}")]
pub struct FirewallError {
    pub what: &'static str,
    pub reason: String,
}

/// Runs `program args`, feeding `stdin`; an error carries the tool's own message.
pub fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    what: &'static str,
) -> Result<(), FirewallError> {
    let err = |reason: String| FirewallError { what, reason };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run {program}: {e}")))?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(())
}

/// The head of a script that atomically replaces table `family name`: declaring it first
/// makes the delete succeed when the table does not exist yet.
pub fn replace_table(family: &str, name: &str) -> String {
    format!("table {family} {name} {{}}\ndelete table {family} {name}\n")
}

/// Loads an `nft -f` script in one transaction.
pub fn load(script: &str, what: &'static str) -> Result<(), FirewallError> {
    run("nft", &["-f", "-"], Some(script), what)
}

/// Deletes table `family name`; no error if it is already gone.
pub fn delete_table(family: &str, name: &str, what: &'static str) -> Result<(), FirewallError> {
    load(&replace_table(family, name), what)
}

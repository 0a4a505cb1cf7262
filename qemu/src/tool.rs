//! Running the command-line tools the harness uses (mtools, dosfstools) with errors that say
//! which command failed and what it printed.

use std::process::Command;

/// A tool that could not be run or that failed.
#[derive(Debug, thiserror::Error)]
#[error("{command} failed: {reason} (are dosfstools and mtools installed?)")]
pub struct ToolError {
    pub command: String,
    pub reason: String,
}

/// Runs `command` (mtools with `MTOOLS_SKIP_CHECK` set) and returns its stdout.
pub fn run(command: &mut Command) -> Result<String, ToolError> {
    let shown = format!("{command:?}");
    let fail = |reason: String| ToolError {
        command: shown.clone(),
        reason,
    };
    match command.env("MTOOLS_SKIP_CHECK", "1").output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned())),
        Err(e) => Err(fail(e.to_string())),
    }
}

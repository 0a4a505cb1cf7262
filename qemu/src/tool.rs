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

/// Writes the raw disk of `image` to `to`: decompressed from `.xz` (a release build), a
/// sparse copy of a `.img`/`.raw` (`image/build --no-compress`), or converted from qcow2.
pub fn write_raw_disk(image: &std::path::Path, to: &std::path::Path) -> Result<(), ToolError> {
    let name = image.to_string_lossy();
    if name.ends_with(".xz") {
        let out = std::fs::File::create(to).map_err(|e| ToolError {
            command: format!("creating {}", to.display()),
            reason: e.to_string(),
        })?;
        run(Command::new("xz").arg("-dc").arg(image).stdout(out)).map(drop)
    } else if name.ends_with(".qcow2") {
        run(Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(image)
            .arg(to))
        .map(drop)
    } else {
        run(Command::new("cp").arg("--sparse=always").arg(image).arg(to)).map(drop)
    }
}

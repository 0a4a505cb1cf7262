//! `uncloud-daemons`: every Uncloud daemon in one executable, which runs the daemon it is
//! started as.
//!
//! # Background
//! The image ships seven programs: stated, meshd, dnsd, apid, ingressd, dockerd-shim and
//! uncloud-firstboot. Built one by one with whole-program LTO (the `image` profile), each
//! carried its own copy of what they all use (tokio, zbus, serde, tracing, rustls, ...):
//! 56.5 MB of executables for amd64, and seven LTO links that took 577 s of CPU per
//! architecture, half of building the packages. As one executable: 30.2 MB and one link of
//! 330 s; and the daemons, running from the same file, share its code pages in memory.
//!
//! # Design
//! The image installs it once, as `/usr/lib/uncloud/uncloud-daemons`; each daemon's package
//! links `/usr/bin/<name>` to it (`image/build-debs`). Started through a link, it runs the
//! daemon whose name the link has (the file name of `argv[0]`), which parses the rest of the
//! command line as its own: `/usr/bin/stated --config ...` is stated. Each daemon's crate
//! keeps its own binary for development and the tests; both run the same `cli::main`.
//!
//! # Limitations
//! - Started by any other name (its own included) it lists the names it answers to and exits
//!   with status 2: there is no `uncloud-daemons stated ...` form, since a daemon takes every
//!   argument after `argv[0]` as its own.

use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;

/// A daemon's entry point (`<crate>::cli::main`).
type Main = fn() -> ExitCode;

/// Each daemon, by the name it is started as (its binary's name).
const DAEMONS: [(&str, Main); 7] = [
    ("apid", apid::cli::main),
    ("dnsd", dnsd::cli::main),
    ("dockerd-shim", dockerd_shim::cli::main),
    ("ingressd", ingressd::cli::main),
    ("meshd", meshd::cli::main),
    ("stated", stated::cli::main),
    ("uncloud-firstboot", uncloud_firstboot::cli::main),
];

/// The daemon started as `argv0` (a path; its file name counts).
fn daemon(argv0: &OsStr) -> Option<Main> {
    let name = Path::new(argv0).file_name()?.to_str()?;
    DAEMONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, main)| *main)
}

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    match daemon(&argv0) {
        Some(main) => main(),
        None => {
            let names: Vec<&str> = DAEMONS.iter().map(|(n, _)| *n).collect();
            eprintln!(
                "{}: every Uncloud daemon in one executable: start it through a link named as \
                 the daemon (/usr/bin/stated -> {}, ...). Names: {}",
                argv0.to_string_lossy(),
                argv0.to_string_lossy(),
                names.join(", ")
            );
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_name_of_argv0_picks_the_daemon() {
        let is = |argv0: &str, main: Main| {
            daemon(OsStr::new(argv0)).is_some_and(|m| std::ptr::fn_addr_eq(m, main))
        };
        assert!(is("/usr/bin/stated", stated::cli::main));
        assert!(is("stated", stated::cli::main));
        assert!(is("./dockerd-shim", dockerd_shim::cli::main));
        assert!(is(
            "/usr/bin/uncloud-firstboot",
            uncloud_firstboot::cli::main
        ));
        for other in [
            "/usr/lib/uncloud/uncloud-daemons",
            "statedx",
            "/usr/bin/",
            "",
        ] {
            assert!(daemon(OsStr::new(other)).is_none(), "{other:?}");
        }
    }

    /// Every program a packaged unit starts from /usr/bin is one of the daemons here: the
    /// packages link exactly those names to this executable.
    #[test]
    fn every_unit_starts_a_daemon_of_this_executable() {
        let services =
            uncloud_testkit::manifest_dir(env!("CARGO_MANIFEST_DIR")).join("../services");
        let mut started = Vec::new();
        for crate_dir in std::fs::read_dir(&services).unwrap().flatten() {
            let Ok(dist) = std::fs::read_dir(crate_dir.path().join("dist")) else {
                continue;
            };
            for unit in dist.flatten() {
                let text = std::fs::read_to_string(unit.path()).unwrap_or_default();
                for line in text.lines() {
                    if let Some(program) = line
                        .strip_prefix("ExecStart=/usr/bin/")
                        .and_then(|rest| rest.split_whitespace().next())
                    {
                        started.push(program.to_string());
                    }
                }
            }
        }
        assert!(started.len() >= 7, "units found: {started:?}");
        for program in &started {
            assert!(
                daemon(OsStr::new(program)).is_some(),
                "a unit starts /usr/bin/{program}, which uncloud-daemons does not run"
            );
        }
    }
}

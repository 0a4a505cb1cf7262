//! Every Uncloud daemon in one binary, for the image and its packages.
//!
//! # Background
//! The image ships its daemons built with whole-program LTO and one codegen unit (the `image`
//! profile), which makes them small, but each binary's link optimises everything it uses,
//! alone and on one core: seven binaries that all link tokio, zbus, rustls and serde made
//! seven optimisations of largely the same code, most of the image's build time.
//!
//! # Design
//! One binary, installed as `/usr/lib/uncloud/uncloud-daemons`; each daemon's package links
//! its program name to it (`/usr/bin/stated` → `../lib/uncloud/uncloud-daemons`), so units,
//! `busctl` examples, `ps` and `pgrep stated` see the names they always did. Started under a
//! daemon's name ([`DAEMONS`]) it runs that daemon's `command::main`, exactly what the daemon's
//! own binary runs; `uncloud-daemons stated --help` works too. Only one daemon runs per
//! process, so each keeps its own runtime, logging, panic hook and allocator settings.
//!
//! The daemons' crates keep their own binaries: the tests and `scripts/up` run those.
//!
//! # Limitations
//! - Every daemon's process maps the code of all of them; only the pages it runs are read
//!   in, and those are shared between the daemons through the page cache.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::ExitCode;

/// A daemon's entry point: its arguments, its own program name first.
type Entry = fn(Vec<OsString>) -> ExitCode;

/// Every daemon in the binary: the program name it is started under, and what runs.
const DAEMONS: &[(&str, Entry)] = &[
    ("apid", |args| apid::command::main(args)),
    ("dnsd", |args| dnsd::command::main(args)),
    ("dockerd-shim", |args| dockerd_shim::command::main(args)),
    ("ingressd", |args| ingressd::command::main(args)),
    ("meshd", |args| meshd::command::main(args)),
    ("stated", |args| stated::command::main(args)),
    ("uncloud-firstboot", |args| {
        uncloud_firstboot::command::main(args)
    }),
];

/// What a command line asks for.
#[derive(Debug, PartialEq)]
enum Call {
    /// Run the daemon at this index of [`DAEMONS`] with these arguments.
    Daemon(usize, Vec<OsString>),
    /// Print the daemons' names.
    List,
    /// Print how to use the binary: after `error` to stderr, and fail, when there is one.
    Usage { error: Option<String> },
}

/// The daemon a command line starts: by the program's name (a daemon's link), or by its first
/// argument (`uncloud-daemons stated --config x.toml`).
fn call(mut args: Vec<OsString>) -> Call {
    let index = |name: &OsStr| DAEMONS.iter().position(|(n, _)| OsStr::new(n) == name);
    let program = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(OsStr::to_os_string)
        .unwrap_or_default();
    if let Some(i) = index(&program) {
        return Call::Daemon(i, args);
    }
    match args.get(1).and_then(|a| a.to_str()) {
        None => Call::Usage {
            error: Some("name the daemon to run".into()),
        },
        Some("-h" | "--help" | "help") => Call::Usage { error: None },
        Some("--list") => Call::List,
        Some(name) => match index(OsStr::new(name)) {
            // The daemon sees its own name as its program, as through its link.
            Some(i) => Call::Daemon(i, args.split_off(1)),
            None => Call::Usage {
                error: Some(format!("no daemon named {name:?}")),
            },
        },
    }
}

fn usage() -> String {
    let names: Vec<&str> = DAEMONS.iter().map(|(n, _)| *n).collect();
    format!(
        "Every Uncloud daemon in one binary: started through a daemon's link it runs that \
         daemon.\n\nUsage: uncloud-daemons DAEMON [ARGS]...   (or: DAEMON [ARGS]... through \
         /usr/bin/DAEMON)\n       uncloud-daemons --list\n\nDaemons: {}\n\nExamples:\n  \
         stated --help                       # a daemon's own options\n  \
         uncloud-daemons meshd --check-config\n",
        names.join(", ")
    )
}

fn main() -> ExitCode {
    match call(std::env::args_os().collect()) {
        Call::Daemon(i, args) => (DAEMONS[i].1)(args),
        Call::List => {
            for (name, _) in DAEMONS {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        Call::Usage { error: None } => {
            print!("{}", usage());
            ExitCode::SUCCESS
        }
        Call::Usage { error: Some(e) } => {
            eprint!("uncloud-daemons: {e}\n\n{}", usage());
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    fn name(call: &Call) -> Option<&str> {
        match call {
            Call::Daemon(i, _) => Some(DAEMONS[*i].0),
            _ => None,
        }
    }

    #[test]
    fn a_daemons_link_runs_that_daemon_with_every_argument() {
        let c = call(args(&["/usr/bin/meshd", "--config", "m.toml"]));
        assert_eq!(name(&c), Some("meshd"));
        assert_eq!(
            c,
            Call::Daemon(4, args(&["/usr/bin/meshd", "--config", "m.toml"]))
        );
        assert_eq!(
            name(&call(args(&["uncloud-firstboot", "banner"]))),
            Some("uncloud-firstboot")
        );
        // A daemon's link wins over a first argument that names another daemon.
        assert_eq!(name(&call(args(&["stated", "meshd"]))), Some("stated"));
    }

    #[test]
    fn the_first_argument_names_the_daemon_when_run_as_itself() {
        let c = call(args(&[
            "/usr/lib/uncloud/uncloud-daemons",
            "stated",
            "--help",
        ]));
        assert_eq!(c, Call::Daemon(5, args(&["stated", "--help"])));
    }

    #[test]
    fn anything_else_is_usage_or_the_list() {
        let which = Call::Usage {
            error: Some("name the daemon to run".into()),
        };
        assert_eq!(call(args(&["uncloud-daemons"])), which);
        assert_eq!(call(args(&[])), which);
        assert_eq!(
            call(args(&["uncloud-daemons", "sshd"])),
            Call::Usage {
                error: Some("no daemon named \"sshd\"".into())
            }
        );
        assert_eq!(
            call(args(&["uncloud-daemons", "--help"])),
            Call::Usage { error: None }
        );
        assert_eq!(call(args(&["uncloud-daemons", "--list"])), Call::List);
        // Only the name counts, not a path that ends in one.
        assert!(matches!(
            call(args(&["/tmp/x", "/usr/bin/stated"])),
            Call::Usage { error: Some(_) }
        ));
    }

    /// image/build-debs links every binary of every crate under services/ to this one; a
    /// daemon missing here would be a link that prints usage instead of starting.
    #[test]
    fn every_services_binary_is_a_daemon_here() {
        let services =
            uncloud_testkit::manifest_dir(env!("CARGO_MANIFEST_DIR")).join("../../services");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&services).unwrap() {
            let manifest = entry.unwrap().path().join("Cargo.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else {
                continue;
            };
            let toml: toml::Table = toml::from_str(&text).unwrap();
            // Binaries named in [[bin]] sections, else the package's own (src/main.rs).
            let bins: Vec<String> = match toml.get("bin").and_then(|b| b.as_array()) {
                Some(bins) => bins
                    .iter()
                    .map(|b| b["name"].as_str().unwrap().to_string())
                    .collect(),
                None => vec![toml["package"]["name"].as_str().unwrap().to_string()],
            };
            for bin in bins {
                assert!(
                    DAEMONS.iter().any(|(n, _)| *n == bin),
                    "{}: binary {bin} is not in DAEMONS",
                    manifest.display()
                );
                found.push(bin);
            }
        }
        found.sort();
        let mut ours: Vec<String> = DAEMONS.iter().map(|(n, _)| n.to_string()).collect();
        ours.sort();
        assert_eq!(found, ours, "DAEMONS lists a daemon no crate has");
    }
}

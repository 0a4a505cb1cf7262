//! The command line of `dnsd`: its arguments and [`main`], its entry point, which both the `dnsd`
//! binary and the image's multi-call executable (`uncloud-daemons`, in `daemons/`) run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::config::{Config, DEFAULT_PATH};

/// DNS of an Uncloud network: answers `<machine>.machine.internal`,
/// `<container>.<machine>.machine.internal`, `<service>[.<project>].internal` from the
/// replicated state on the machine's mesh address, and forwards every other name upstream.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "\
Every setting lives in the config file and has a default; see the crate README for the list.
dnsd needs a running stated, and binds port 53 (CAP_NET_BIND_SERVICE).
Examples:
  dnsd                                    # /etc/uncloud/dnsd.toml, system bus
  dnsd --config ./d1.toml                 # another config
  dnsd --check-config --config x.toml     # validate and print the effective config
Try it:
  dig @10.210.1.1 one.machine.internal    # a machine's mesh address
  dig @10.210.1.1 db.shop.internal        # the healthy containers of service db, project shop"
)]
struct Args {
    /// Config file (TOML). A missing file means all defaults.
    #[arg(long, short, default_value = DEFAULT_PATH, env = "DNSD_CONFIG")]
    config: PathBuf,
    /// Validate the config, print the effective settings and exit.
    #[arg(long)]
    check_config: bool,
}

/// The `dnsd` executable's entry point: parses its arguments and runs it.
pub fn main() -> ExitCode {
    let args = Args::parse();
    one_malloc_arena();
    uncloud_common::daemon::main(
        "dnsd",
        &args.config,
        args.check_config,
        |config: Config| async move { Ok(crate::daemon::run(config).await?) },
    )
}

/// One heap for every thread: glibc gives each thread that allocates an arena of its own
/// (a megabyte each, mostly empty in a daemon this small), and the few allocations dnsd's
/// threads make do not contend. Blocks of 64 KiB and more (the tables of the names, rebuilt
/// on every change) get pages of their own, given back whole when freed, rather than holes
/// in the heap that interleave with live data (measured at 1000 names: a 4.4 MB heap became
/// 3.7 MB plus 0.3 MB in such blocks).
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: called before any other thread exists; mallopt only sets an allocator limit.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

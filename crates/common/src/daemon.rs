//! The `main` every daemon shares (after Bottlerocket: `main` -> `run`).

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use crate::config::{self, DaemonConfig};

/// Sets up logging, loads and checks the config at `config_path` (a missing file means all
/// defaults), prints it and exits with `check_config`, else runs `serve` on a tokio runtime.
/// Any error is printed to stderr (the journal, under systemd) as `<name>: <error chain>` and
/// the exit status is 1. A panic anywhere aborts the process ([`crate::fail_fast`]).
pub fn main<C, F, Fut>(name: &str, config_path: &Path, check_config: bool, serve: F) -> ExitCode
where
    C: DaemonConfig,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    main_on(Scheduler::PerCpu, name, config_path, check_config, serve)
}

/// The tokio scheduler a daemon's tasks run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    /// The multi-thread scheduler, one worker per CPU this process may use; the daemon's
    /// main future runs on the main thread beside them.
    PerCpu,
    /// The current-thread scheduler (every task on the main thread) when this process may use
    /// one CPU (a one-vCPU VPS, or pinned with `taskset`), else [`Scheduler::PerCpu`]. On one
    /// CPU a worker thread only adds cross-thread wake-ups and queue atomics: ingressd spent
    /// about 7 % less user CPU per proxied request on it. Only for a daemon whose main future
    /// never blocks its thread, since it then also runs every spawned task.
    OneThreadOnOneCpu,
}

impl Scheduler {
    fn runtime(self) -> std::io::Result<tokio::runtime::Runtime> {
        let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
        if self == Scheduler::OneThreadOnOneCpu && one_cpu {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Runtime::new()
        }
    }
}

/// [`main`] on the given [`Scheduler`].
pub fn main_on<C, F, Fut>(
    scheduler: Scheduler,
    name: &str,
    config_path: &Path,
    check_config: bool,
    serve: F,
) -> ExitCode
where
    C: DaemonConfig,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    crate::logging::init();
    crate::fail_fast::install();
    let run = || -> anyhow::Result<()> {
        let config: C = config::load(config_path)?;
        config.validate()?;
        if check_config {
            println!("{config:#?}");
            return Ok(());
        }
        scheduler.runtime()?.block_on(serve(config))
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Tells systemd the daemon is up while it waits for this machine to belong to a network.
///
/// On a fresh machine (maintenance mode) meshd and dockerd-shim have nothing to do until
/// `uc machine init` or a join; they count as started (so the boot completes and the banner
/// shows the machine ready for setup) and say what they wait for in `systemctl status`.
pub fn notify_waiting_for_membership() {
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("waiting: this machine belongs to no network yet"),
    ]);
}

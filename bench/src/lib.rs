//! Uncloud's benchmarks.
//!
//! Every benchmark runs a reference side by side in the same command and reports the ratio
//! `value / reference`. Each writes `bench/results/<name>.json`
//! (`{"<metric>": {"value": …, "reference": …, "ratio": …, "unit": "…"}, …}`) and a short
//! `<name>.md` saying how it was run and on what. Only loopback addresses and network
//! namespaces the benchmark creates are used; every loop is bounded and everything a
//! benchmark starts is stopped (and every namespace removed) before it returns.
//!
//! - [`report`], [`stats`], [`sys`], [`logs`]: shared by every benchmark (result files,
//!   percentiles, machine description and resident memory, logging).
//! - [`stated`]: the replicated-state benchmark (binary `stated-bench`).
//! - [`meshd`]: the mesh benchmark against wireguard-go and plain veth (binary `meshd-bench`).
//! - [`shim`]: containers through dockerd-shim against the docker CLI (binary
//!   `dockerd-shim-bench`).
//! - [`image`]: the images' boot to ready under QEMU against plain Debian boots of the same
//!   images, and their size (binary `image-bench`).
//! - [`dnsd`]: DNS against dnsmasq and unbound with dnsperf (binary `dnsd-bench`).
//! - [`e2e`]: the network on the real image in QEMU: joining with a ticket, the daemons'
//!   memory beside Docker's, convergence after a partition heals (binary `e2e-bench`).
//! - `apid-bench` (a binary only): joins with `uc machine add` in a local network of
//!   namespaces, `uc machine ls` beside `busctl`, apid's memory.
//! - `services-bench` (a binary only): `uc deploy`, `uc run`, `uc image push` and a rolling
//!   update under a client in a local network of namespaces with their own dockerds, beside
//!   docker-compose and the docker CLI.

pub mod dnsd;
pub mod e2e;
pub mod image;
pub mod ingressd;
pub mod logs;
pub mod meshd;
pub mod report;
pub mod shim;
pub mod stated;
pub mod stats;
pub mod sys;

use std::sync::OnceLock;
use std::time::Instant;

fn started() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

static LABEL: OnceLock<String> = OnceLock::new();

/// Names this process in progress lines (default `bench`), e.g. for a child process.
pub fn set_progress_label(label: &str) {
    let _ = LABEL.set(label.to_string());
}

/// Prints a progress line to stderr, with the time since the first call.
pub fn progress(msg: impl std::fmt::Display) {
    let t = started().elapsed().as_secs_f64();
    let label = LABEL.get().map_or("bench", String::as_str);
    eprintln!("[{label} +{t:6.1}s] {msg}");
}

/// This package's folder (`bench/`), found at run time ([`uncloud_testkit::manifest_dir`]).
pub fn manifest_dir() -> std::path::PathBuf {
    uncloud_testkit::manifest_dir(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace (the parent of [`manifest_dir`]).
pub fn workspace() -> std::path::PathBuf {
    manifest_dir().join("..")
}

/// Where a benchmark writes its results: `--out` if given, else `bench/results` (or a temp
/// dir for a `--quick` smoke run, whose figures must not overwrite the real ones).
pub fn out_dir(out: Option<std::path::PathBuf>, quick: bool) -> std::path::PathBuf {
    out.unwrap_or_else(|| {
        if quick {
            std::env::temp_dir().join("uncloud-bench-quick")
        } else {
            manifest_dir().join("results")
        }
    })
}

/// The command that reproduces this run, for the result file.
pub fn command_line(bin: &str) -> String {
    let extra: Vec<String> = std::env::args().skip(1).collect();
    let profile = match sys::profile().as_str() {
        "release" => "--release".to_string(),
        p => format!("--profile {p}"),
    };
    format!(
        "cargo run {profile} -p uncloud-bench --bin {bin}{}{}",
        if extra.is_empty() { "" } else { " -- " },
        extra.join(" ")
    )
}

/// `uc ARGS` on the local network's laptop; its stdout, or an error with its stderr.
pub fn uc<S: AsRef<str>>(
    net: &uncloud_testkit::network::LocalNetwork,
    args: &[S],
) -> anyhow::Result<String> {
    uncloud_testkit::network::stdout_or_error("uc", args, &net.uc(args)).map_err(anyhow::Error::msg)
}

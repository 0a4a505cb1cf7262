//! What the benchmark ran on, and how much memory this process holds.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Resident set size of this process in bytes (`VmRSS` in `/proc/self/status`).
pub fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS line in /proc/self/status"))?;
    Ok(kb * 1024)
}

/// The machine and build a benchmark ran on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory: String,
    pub date_utc: String,
    pub rustc: String,
    pub commit: String,
}

impl Machine {
    /// Best effort: fields that cannot be read say "unknown".
    pub fn describe(workspace: &Path) -> Machine {
        let unknown = || "unknown".to_string();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map_or_else(unknown, |(_, v)| v.trim().to_string()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| unknown(), |s| s.trim().to_string()),
            memory: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or_else(unknown, |kb| format!("{:.1} GiB", kb as f64 / 1048576.0)),
            date_utc: utc_now(),
            rustc: output(Command::new("rustc").arg("-V")).unwrap_or_else(unknown),
            commit: commit(workspace).unwrap_or_else(unknown),
        }
    }
}

impl Machine {
    /// The machine as a markdown list (one `- key: value` line each), for `<name>.md`.
    pub fn markdown_list(&self) -> String {
        format!(
            "- date: {}\n- CPUs (`nproc`): {}\n- CPU model: {}\n- kernel: {}\n- memory: {}\n\
             - compiler: {} (profile `{}`)\n- commit: {}\n",
            self.date_utc,
            self.cpus,
            self.cpu_model,
            self.kernel,
            self.memory,
            self.rustc,
            profile(),
            self.commit
        )
    }
}

/// Trimmed stdout of a command that succeeded.
fn output(cmd: &mut Command) -> Option<String> {
    run(cmd).ok().map(|s| s.trim().to_string())
}

fn commit(workspace: &Path) -> Option<String> {
    let git = || {
        let mut c = Command::new("git");
        c.arg("-C").arg(workspace);
        c
    };
    let head = output(git().args(["rev-parse", "--short", "HEAD"]))?;
    let status = output(git().args(["status", "--porcelain", "--untracked-files=normal"]))
        .unwrap_or_default();
    Some(describe_commit(&head, &status))
}

/// `abc1234`, or `abc1234 + uncommitted changes in a, b/` from `git status --porcelain`.
fn describe_commit(head: &str, porcelain: &str) -> String {
    let paths: Vec<&str> = porcelain
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    match paths.len() {
        0 => head.to_string(),
        n if n <= 8 => format!("{head} + uncommitted changes in {}", paths.join(", ")),
        n => format!(
            "{head} + uncommitted changes in {}, and {} more",
            paths[..8].join(", "),
            n - 8
        ),
    }
}

/// The current time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The cargo profile this benchmark was built with, from its directory (`release`,
/// `image`; `dev` for `debug`).
pub fn profile() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    match exe
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
    {
        Some("debug") | None => "dev".to_string(),
        Some(name) => name.to_string(),
    }
}

/// The packages `image/build-debs` builds, in one cargo invocation: built together, their
/// dependencies get the same features as in the images.
const IMAGE_PACKAGES: [&str; 7] = [
    "stated",
    "apid",
    "dnsd",
    "ingressd",
    "dockerd-shim",
    "uncloud-firstboot",
    "meshd",
];

/// What `cargo build` is given to build `package` with `profile` the way the rest of the
/// project builds it, so that the build is a no-op when that already ran: `dev` as
/// `scripts/test` builds (`--workspace --bins`), the images' packages as `image/build-debs`
/// builds them, anything else alone.
fn build_args(package: &str, profile: &str) -> Vec<String> {
    let mut args = vec![
        "build".to_string(),
        "-q".into(),
        format!("--profile={profile}"),
    ];
    if profile == "dev" {
        args.extend(["--workspace".into(), "--bins".into()]);
    } else if IMAGE_PACKAGES.contains(&package) {
        for p in IMAGE_PACKAGES {
            args.extend(["-p".into(), p.into()]);
        }
    } else {
        args.extend(["-p".into(), package.into()]);
    }
    args
}

/// Finds (building it first when run through cargo) a workspace binary of the same profile
/// next to this benchmark's: the daemon is measured as it ships, as its own process.
pub fn workspace_binary(package: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no directory for this executable")?;
    if let Ok(cargo) = std::env::var("CARGO") {
        crate::progress(format!("building {package}"));
        let status = Command::new(cargo)
            .args(build_args(package, &profile()))
            .status()?;
        if !status.success() {
            anyhow::bail!("building {package} failed");
        }
    }
    let bin = dir.join(package);
    if !bin.exists() {
        anyhow::bail!(
            "{} is missing: run `cargo build --profile image -p {package}` or start the \
             benchmark with `cargo run --profile image -p uncloud-bench --bin …`",
            bin.display()
        );
    }
    Ok(bin)
}

/// Fails with the package to install when `tool` is not on the PATH.
pub fn need(tool: &str, package: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
        .unwrap_or(false);
    if !found {
        anyhow::bail!("{tool} is required: apt-get install {package}");
    }
    Ok(())
}

/// Runs a command to success and returns its stdout.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    use anyhow::Context;
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Resident set size of process `pid` in bytes; 0 if it is gone.
pub fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_rss() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400 + 3661), "2000-02-29 01:01:01 UTC");
        assert_eq!(format_utc(1_767_225_599), "2025-12-31 23:59:59 UTC");
        assert!(rss_bytes().unwrap() > 0);
        assert_eq!(describe_commit("abc", ""), "abc");
        assert_eq!(
            describe_commit("abc", "M Cargo.toml\n M x/y.rs\n?? bench/"),
            "abc + uncommitted changes in Cargo.toml, x/y.rs, bench/"
        );
    }

    /// `image/build-debs` packages every crate under `services/` with a `dist/` folder: the
    /// benchmarks must build that same set, or their daemons differ from what ships.
    #[test]
    fn image_packages_are_the_services_with_a_dist_folder() {
        let services = crate::workspace().join("services");
        let mut shipped = Vec::new();
        for entry in std::fs::read_dir(&services).unwrap() {
            let dir = entry.unwrap().path();
            if !dir.join("dist").is_dir() {
                continue;
            }
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            let name = manifest
                .lines()
                .find_map(|l| l.strip_prefix("name = \""))
                .and_then(|l| l.strip_suffix('"'))
                .unwrap()
                .to_string();
            shipped.push(name);
        }
        shipped.sort();
        let mut ours: Vec<String> = IMAGE_PACKAGES.iter().map(|p| p.to_string()).collect();
        ours.sort();
        assert_eq!(ours, shipped);
        assert!(build_args("dnsd", "image").contains(&"uncloud-firstboot".to_string()));
        assert_eq!(build_args("uc", "release")[3..], ["-p", "uc"]);
        assert!(build_args("uc", "dev").contains(&"--workspace".to_string()));
    }
}

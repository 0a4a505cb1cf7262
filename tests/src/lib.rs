//! Helpers of Uncloud's end-to-end tests: finding the built images, reading the console
//! banner the image prints.
//!
//! The tests boot real images (`image/build`) in QEMU under TCG. They are `#[ignore]`d in a
//! plain `cargo test` because they need the images and take minutes; `scripts/test` builds
//! the images and runs them with `--ignored`. A missing image fails the test, never skips it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub mod network;
pub mod services;
pub mod uc;

/// The workspace this test runs from. Read at run time (cargo sets it for tests): a test
/// binary reused from another checkout sharing the target directory would otherwise read
/// the folder it was compiled in.
pub fn workspace() -> PathBuf {
    uncloud_testkit::manifest_dir(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where `image/build` wrote the images: `$UNCLOUD_IMAGE_DIR`, else `image/out`.
pub fn images_dir() -> PathBuf {
    std::env::var_os("UNCLOUD_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("image/out"))
}

/// Set by `scripts/test`, which builds the images in the background while tests run: the
/// directory where each build leaves its exit status, `<arch>.rc`, when it ends.
pub const IMAGE_BUILDS_ENV: &str = "UNCLOUD_IMAGE_BUILDS";

/// How long [`image`] waits for a build: a first run's arm64 build (its base under
/// emulation) ended 54 min after the start on Dec 7; this bounds a hung one.
const BUILD_TIMEOUT: Duration = Duration::from_secs(90 * 60);

/// The one image in [`images_dir`] whose name ends with `suffix` (such as `-amd64.qcow2`; a
/// raw disk such as `-arm64-rpi.img` also as its `.xz`). Under `scripts/test`
/// ([`IMAGE_BUILDS_ENV`]) it first waits for the build of the architecture `suffix` names.
pub fn image(suffix: &str) -> PathBuf {
    if let Some(builds) = std::env::var_os(IMAGE_BUILDS_ENV) {
        wait_for_build(Path::new(&builds), build_arch(suffix), BUILD_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    uncloud_qemu::image::find(&images_dir(), suffix).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether [`image`] would return at once: no build under way for the architecture `suffix`
/// names (not under `scripts/test`, or its build ended). It may still end in a panic there
/// (a failed build, no such image): this only says there is nothing to wait for.
pub fn image_ready(suffix: &str) -> bool {
    std::env::var_os(IMAGE_BUILDS_ENV).is_none_or(|builds| {
        Path::new(&builds)
            .join(format!("{}.rc", build_arch(suffix)))
            .exists()
    })
}

/// The architecture whose build makes the image `*{suffix}`.
fn build_arch(suffix: &str) -> &'static str {
    if suffix.contains("arm64") {
        "arm64"
    } else {
        "amd64"
    }
}

/// Waits until `builds/<arch>.rc` says how `image/build --arch <arch>` ended: `Ok` if it
/// succeeded, else why not.
pub fn wait_for_build(builds: &Path, arch: &str, timeout: Duration) -> Result<(), String> {
    let rc = builds.join(format!("{arch}.rc"));
    let started = Instant::now();
    let mut told = false;
    loop {
        // scripts/test renames the file into place, so a file read is whole.
        if let Ok(status) = std::fs::read_to_string(&rc) {
            if told {
                eprintln!(
                    "-- image/build --arch {arch} ended after {:.0?} of waiting",
                    started.elapsed()
                );
            }
            return match status.trim() {
                "0" => Ok(()),
                other => Err(format!(
                    "image/build --arch {arch} failed (exit status {other}): its log is in \
                     scripts/test's output"
                )),
            };
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "image/build --arch {arch} did not end within {timeout:.0?} ({} never appeared)",
                rc.display()
            ));
        }
        if !told {
            eprintln!("-- waiting for image/build --arch {arch} (running in the background)");
            told = true;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Debian's busybox-static for arm64, an executable for containers on an arm64 VM; unpacked
/// once into `~/.cache/uncloud/busybox-arm64` (`$XDG_CACHE_HOME` honoured) from the package
/// `apt-get download` fetches, which needs apt to know the arm64 architecture
/// (`image/install-deps arm64` adds it, as `scripts/test` runs it). Not installed: it would
/// replace the amd64 one the other tests use.
pub fn busybox_arm64() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME is set")
        .join("uncloud/busybox-arm64");
    let busybox = cache.join("bin/busybox");
    if busybox.exists() {
        return busybox;
    }
    let download = tempfile::tempdir().expect("a temporary directory");
    let run = |what: &str, cmd: &mut std::process::Command| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{what}: {e} (arm64 busybox for the arm64 VM)"));
        assert!(
            out.status.success(),
            "{what} failed: {}{}(apt must know the arm64 architecture: image/install-deps arm64)",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        "apt-get download busybox-static:arm64",
        std::process::Command::new("apt-get")
            .args(["download", "-q", "busybox-static:arm64"])
            .current_dir(download.path()),
    );
    let deb = std::fs::read_dir(download.path())
        .expect("the download directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("apt-get download left a .deb");
    // Unpacked beside the cache (the same file system), then renamed into place: a cache that
    // exists is whole.
    std::fs::create_dir_all(cache.parent().expect("a parent")).expect("the cache directory");
    let staged = cache.with_extension(format!("new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staged);
    run(
        "dpkg-deb -x",
        std::process::Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&staged),
    );
    std::fs::rename(&staged, &cache).expect("the unpacked busybox moved into the cache");
    assert!(
        busybox.exists(),
        "{} is not in the package",
        busybox.display()
    );
    busybox
}

/// Writes the raw disk of the image `*{suffix}` (such as `-arm64-rpi.img`) to `to`.
pub fn write_raw_image(suffix: &str, to: &std::path::Path) {
    uncloud_qemu::image::write_raw_disk(&image(suffix), to).unwrap_or_else(|e| panic!("{e}"));
}

/// The lines in which cloud-init warned (schema errors, ignored keys) or failed, from a
/// console.
pub fn cloud_init_warnings(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter(|l| l.contains("cloud-init[") && (l.contains("WARNING") || l.contains("ERROR")))
        .collect()
}

/// What the console banner (`uncloud-firstboot banner`) says, parsed from console text.
#[derive(Debug, Default, PartialEq)]
pub struct Banner {
    /// From the first line `uncloud: <hostname> ready` (or `NOT ready: ...`).
    pub hostname: String,
    pub ready: bool,
    /// The first line, as printed.
    pub status: String,
    /// `<unit>: <state>` lines.
    pub units: Vec<(String, String)>,
    pub setup_token: Option<String>,
    /// A `join ticket:` line was shown (a ticket was given and not used yet).
    pub join_ticket: bool,
    /// The key fingerprint `uc` pins the machine by (`sha256:…`).
    pub fingerprint: Option<String>,
    /// The `new network:` line: the `uc machine init` command to copy.
    pub init_command: Option<String>,
    pub mode: Option<String>,
    /// The `addresses:` line, as printed.
    pub addresses: Option<String>,
}

impl Banner {
    /// The command the banner shows for `verb` (`init`, or `add`: the same with `add`), as
    /// words to hand to `uc` (without `uc`); `None` when it shows none (a member).
    pub fn command(&self, verb: &str) -> Option<Vec<String>> {
        let line = self.init_command.as_ref()?;
        let line = line.replacen("uc machine init", &format!("uc machine {verb}"), 1);
        Some(line.split_whitespace().skip(1).map(String::from).collect())
    }

    /// The last banner printed in `console`, if any.
    pub fn parse_last(console: &str) -> Option<Banner> {
        let lines: Vec<&str> = console.lines().collect();
        let start = lines.iter().rposition(|l| is_status_line(l))?;
        let status = lines[start].trim();
        let rest = status.strip_prefix("uncloud: ")?;
        let (hostname, ready) = match rest.split_once(' ') {
            Some((host, "ready")) => (host, true),
            Some((host, _)) => (host, false),
            None => return None,
        };
        let mut banner = Banner {
            hostname: hostname.to_owned(),
            ready,
            status: status.to_owned(),
            ..Banner::default()
        };
        for line in &lines[start + 1..] {
            let line = line.trim();
            if let Some(token) = line.strip_prefix("setup token: ") {
                banner.setup_token = Some(token.to_owned());
            } else if line.starts_with("join ticket: ") {
                banner.join_ticket = true;
            } else if let Some(fp) = line.strip_prefix("fingerprint: ") {
                banner.fingerprint = Some(fp.to_owned());
            } else if let Some(cmd) = line.strip_prefix("new network: ") {
                banner.init_command = Some(cmd.to_owned());
            } else if let Some(mode) = line.strip_prefix("mode: ") {
                banner.mode = Some(mode.to_owned());
            } else if let Some(addresses) = line.strip_prefix("addresses: ") {
                banner.addresses = Some(addresses.to_owned());
            } else if let Some((unit, state)) = line.split_once(": ") {
                if unit.ends_with(".service") || unit.ends_with(".target") {
                    banner.units.push((unit.to_owned(), state.to_owned()));
                }
            }
        }
        Some(banner)
    }

    pub fn unit(&self, name: &str) -> Option<&str> {
        self.units
            .iter()
            .find(|(u, _)| u == name)
            .map(|(_, s)| s.as_str())
    }
}

/// The banner's first line: `uncloud: <host> ready` or `uncloud: <host> NOT ready: ...`.
pub fn is_status_line(line: &str) -> bool {
    let line = line.trim();
    line.starts_with("uncloud: ") && (line.ends_with(" ready") || line.contains(" NOT ready"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_is_waited_for_until_its_status_appears_and_a_failed_one_is_an_error() {
        let builds = tempfile::tempdir().unwrap();
        let dir = builds.path().to_owned();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2500));
            std::fs::write(dir.join("arm64.rc"), "0\n").unwrap();
        });
        let started = Instant::now();
        assert_eq!(
            wait_for_build(builds.path(), "arm64", Duration::from_secs(60)),
            Ok(())
        );
        assert!(started.elapsed() >= Duration::from_millis(2500));
        writer.join().unwrap();

        std::fs::write(builds.path().join("amd64.rc"), "2\n").unwrap();
        let err = wait_for_build(builds.path(), "amd64", Duration::from_secs(60)).unwrap_err();
        assert!(err.contains("--arch amd64 failed (exit status 2)"), "{err}");

        let err = wait_for_build(builds.path(), "riscv64", Duration::ZERO).unwrap_err();
        assert!(err.contains("did not end"), "{err}");
    }

    #[test]
    fn the_last_banner_is_parsed_between_other_console_output() {
        let console = "uncloud: old NOT ready: docker.service activating\n\
            [  OK  ] Started x.\n\
            uncloud: vm1 ready\n\
            mode: maintenance (not initialised)\n\
            addresses: enp0s2 10.0.2.15\n\
            [   40.1] random kernel line\n\
            fingerprint: sha256:aabb\n\
            setup token: abcde-fghjk\n\
            join ticket: received, not used yet\n\
            new network: uc machine init 10.0.2.15 --fingerprint sha256:aabb --token abcde-fghjk\n\
            stated.service: active\n\
            docker.service: active\n";
        let b = Banner::parse_last(console).unwrap();
        assert_eq!(b.hostname, "vm1");
        assert!(b.ready);
        assert_eq!(b.setup_token.as_deref(), Some("abcde-fghjk"));
        assert!(b.join_ticket);
        assert_eq!(b.fingerprint.as_deref(), Some("sha256:aabb"));
        assert_eq!(
            b.init_command.as_deref(),
            Some("uc machine init 10.0.2.15 --fingerprint sha256:aabb --token abcde-fghjk")
        );
        assert_eq!(b.addresses.as_deref(), Some("enp0s2 10.0.2.15"));
        assert_eq!(b.unit("stated.service"), Some("active"));
        assert_eq!(b.unit("docker.service"), Some("active"));
        assert_eq!(b.unit("meshd.service"), None);
        assert!(b.mode.unwrap().starts_with("maintenance"));
    }

    #[test]
    fn not_ready_and_no_banner() {
        let b = Banner::parse_last("uncloud: vm NOT ready: meshd.service failed\n").unwrap();
        assert!(!b.ready);
        assert_eq!(b.hostname, "vm");
        assert!(!b.join_ticket);
        assert_eq!(Banner::parse_last("nothing here\n"), None);
    }
}

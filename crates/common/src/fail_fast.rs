//! A panic ends the process, so systemd restarts a clean one.
//!
//! Every lock in the daemons is a std `Mutex`. A panic while one is held poisons it, and every
//! later `lock().unwrap()` panics too, but only in the task that tried: the process would stay
//! up, half dead, and systemd would never restart it. The hook installed here logs the panic
//! and aborts the process instead, on any thread or task.
//!
//! The one exception is code that expects panics and catches them: `uncloud-docstore` loads
//! damaged files through redb and automerge, which may panic on them, and turns those panics
//! into errors. [`exempt`] registers a check for such a region; a panic inside one unwinds as
//! usual. This is also why no profile sets `panic = "abort"`: it would make those catches
//! impossible, and a damaged store would kill stated on every restart.

use std::sync::OnceLock;

static EXEMPT: OnceLock<fn() -> bool> = OnceLock::new();

/// Installs the hook (keeping the default message on stderr). Called by
/// [`crate::daemon::main`].
pub fn install() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if EXEMPT.get().is_some_and(|exempt| exempt()) {
            return;
        }
        tracing::error!("{info}; aborting so that the service manager restarts this daemon");
        std::process::abort();
    }));
}

/// Lets panics unwind while `in_region()` is true on the panicking thread (it is checked from
/// the hook). Only one check can be registered; a second call is ignored.
pub fn exempt(in_region: fn() -> bool) {
    let _ = EXEMPT.set(in_region);
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// The test binary re-runs itself with this variable set to run one scenario as a child.
    const SCENARIO: &str = "UNCLOUD_FAIL_FAST_SCENARIO";

    fn run_child(name: &str) -> std::process::Output {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "fail_fast::tests::child",
                "--ignored",
                "--nocapture",
            ])
            .env(SCENARIO, name)
            .output()
            .unwrap()
    }

    /// Not a test on its own: the body of the child processes below, which run it by name.
    #[test]
    #[ignore = "the child process of the fail_fast tests"]
    fn child() {
        let scenario = std::env::var(SCENARIO).expect("run by the fail_fast tests, not alone");
        super::install();
        super::exempt(|| REGION.with(|r| r.get()));
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let lock = Arc::new(Mutex::new(0u32));
            match scenario.as_str() {
                "panic-under-lock" => {
                    let l = lock.clone();
                    let task = tokio::spawn(async move {
                        let _held = l.lock().unwrap();
                        panic!("injected while holding the lock");
                    });
                    let _ = task.await;
                    // Without the hook the process carries on here with a poisoned lock.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    println!("still running, lock poisoned: {}", lock.is_poisoned());
                }
                "caught-in-region" => {
                    REGION.with(|r| r.set(true));
                    let caught = std::panic::catch_unwind(|| panic!("expected, caught"));
                    REGION.with(|r| r.set(false));
                    println!("caught: {}", caught.is_err());
                }
                other => panic!("unknown scenario {other}"),
            }
        });
    }

    thread_local! {
        static REGION: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn a_panic_in_a_task_holding_a_lock_ends_the_process() {
        let out = run_child("panic-under-lock");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stdout}");
        assert!(
            !stdout.contains("still running"),
            "the process survived: {stdout}"
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(6), "SIGABRT expected: {stderr}");
        assert!(
            stderr.contains("injected while holding the lock"),
            "{stderr}"
        );
    }

    #[test]
    fn a_panic_in_an_exempt_region_unwinds_and_is_caught() {
        let out = run_child("caught-in-region");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("caught: true"), "{stdout}");
    }
}

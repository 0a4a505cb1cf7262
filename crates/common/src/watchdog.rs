//! systemd's watchdog, fed only while the daemon's work still gets done.
//!
//! Each unit sets `WatchdogSec=`; systemd kills and restarts a daemon that stops saying
//! `WATCHDOG=1` in time. A timer that always says it would prove only that one task runs, so
//! [`run`] says it only after `probe` succeeds: a check that goes through what the daemon
//! actually needs (stated takes its document lock and checks its store writer; meshd checks
//! that its mesh loop ticked recently; apid and dockerd-shim answer requests and have no loop of
//! their own, so theirs proves only that the runtime still runs tasks). A deadlock, a stuck loop or a dead writer thread then
//! ends in a restart instead of a daemon that looks up and does nothing.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs until the process ends when systemd asked for a watchdog (`WATCHDOG_USEC`); returns at
/// once otherwise. `probe` runs every half period and must finish within it.
pub async fn run<F, Fut>(mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = period / 2;
    tracing::info!(period_ms = period.as_millis() as u64, "systemd watchdog on");
    let mut told = false;
    loop {
        match tokio::time::timeout(every, probe()).await {
            Ok(Ok(())) => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                told = false;
            }
            Ok(Err(why)) if !told => {
                tracing::error!(%why, "not feeding the watchdog: systemd restarts this daemon");
                told = true;
            }
            Err(_) if !told => {
                tracing::error!("the watchdog probe hangs; systemd restarts this daemon");
                told = true;
            }
            _ => {}
        }
        tokio::time::sleep(every).await;
    }
}

/// When a loop last did its work, for a probe to check.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Heartbeat {
    /// The loop finished one round of work.
    pub fn beat(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Ok if the last beat is at most `within` old.
    pub fn check(&self, within: Duration) -> Result<(), String> {
        let age = self
            .start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)));
        if age <= within {
            Ok(())
        } else {
            Err(format!(
                "the loop last did its work {} s ago",
                age.as_secs()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_goes_stale() {
        let h = Heartbeat::default();
        h.beat();
        assert!(h.check(Duration::from_secs(5)).is_ok());
        std::thread::sleep(Duration::from_millis(30));
        let err = h.check(Duration::from_millis(10)).unwrap_err();
        assert!(err.contains("last did its work"), "{err}");
    }
}

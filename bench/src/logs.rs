//! Logging for benchmark binaries: stated's and its libraries' error lines on stderr (or what
//! `RUST_LOG` asks for), except tarpc's, which are counted instead of printed.
//!
//! tarpc logs every RPC that passed its deadline at ERROR level. When many in-process nodes
//! start at once, sync RPCs time out by the thousand (gossip brings the next session), which would bury
//! the progress lines; the count is reported instead.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static TARPC_ERRORS: AtomicU64 = AtomicU64::new(0);

struct CountTarpcErrors;

impl<S: Subscriber> Layer<S> for CountTarpcErrors {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() == Level::ERROR && meta.target().starts_with("tarpc") {
            TARPC_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Installs the subscriber. Default filter `error,tarpc=off`; `RUST_LOG` replaces it.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error,tarpc=off"));
    let printed = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let counted = CountTarpcErrors.with_filter(tracing_subscriber::filter::LevelFilter::ERROR);
    tracing_subscriber::registry()
        .with(printed)
        .with(counted)
        .init();
}

/// tarpc error events so far (mostly sync RPCs past their deadline).
pub fn tarpc_errors() -> u64 {
    TARPC_ERRORS.load(Ordering::Relaxed)
}

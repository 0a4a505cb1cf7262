//! Logging setup every daemon shares: journald under systemd, stderr otherwise.

/// journald when started by systemd (`JOURNAL_STREAM` set), stderr otherwise; `RUST_LOG`
/// filters (default `info`). tarpc's server logs every connection a client closed without a
/// TLS close_notify (every `uc` call) as a warning: only its errors are kept, unless
/// `RUST_LOG` names tarpc itself.
pub fn init() {
    use tracing_subscriber::prelude::*;
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let spec = if spec.contains("tarpc") {
        spec
    } else {
        format!("{spec},tarpc::server=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tarpc::server=error"));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            registry.with(journald).init();
            return;
        }
    }
    registry
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
}

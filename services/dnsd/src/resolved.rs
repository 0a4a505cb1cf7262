//! Makes the machine itself resolve `*.internal`: tells systemd-resolved that the mesh link
//! has dnsd as its DNS server for the routing-only domain `~internal`, and for nothing else.
//!
//! Done through resolved's D-Bus API (`org.freedesktop.resolve1.Manager`) on the system bus,
//! and again every so often: resolved forgets a link's settings when the link goes away (meshd
//! restarted and made its device again). Without resolved (a plain Debian install, the test
//! harness) it is skipped with one warning.

use std::net::Ipv4Addr;

/// `AF_INET`, as resolved's `SetLinkDNS` wants the family.
const AF_INET: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ResolvedError {
    #[error("no interface {0} (is meshd running?)")]
    NoLink(String),
    #[error("systemd-resolved: {0}")]
    Bus(#[from] zbus::Error),
}

/// The kernel's index of `interface`.
fn ifindex(interface: &str) -> Result<i32, ResolvedError> {
    std::fs::read_to_string(format!("/sys/class/net/{interface}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| ResolvedError::NoLink(interface.to_string()))
}

/// Points `~internal` on `interface` at `ip` (dnsd's port must be 53: resolved has no port
/// in this call).
pub async fn register(
    system: &zbus::Connection,
    interface: &str,
    ip: Ipv4Addr,
) -> Result<(), ResolvedError> {
    let index = ifindex(interface)?;
    let call = |method: &'static str| {
        (
            Some("org.freedesktop.resolve1"),
            "/org/freedesktop/resolve1",
            Some("org.freedesktop.resolve1.Manager"),
            method,
        )
    };
    let (dest, path, iface, method) = call("SetLinkDNS");
    system
        .call_method(
            dest,
            path,
            iface,
            method,
            &(index, vec![(AF_INET, ip.octets().to_vec())]),
        )
        .await?;
    let (dest, path, iface, method) = call("SetLinkDomains");
    system
        .call_method(
            dest,
            path,
            iface,
            method,
            &(index, vec![("internal", true)]),
        )
        .await?;
    // Only `internal` goes there: every other name keeps the machine's own resolvers.
    let (dest, path, iface, method) = call("SetLinkDefaultRoute");
    system
        .call_method(dest, path, iface, method, &(index, false))
        .await?;
    Ok(())
}

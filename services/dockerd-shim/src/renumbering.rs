//! Following a renumbering of this machine.
//!
//! When two members admitted machines on both sides of a partition and this machine lost the
//! subnet conflict, it moves to another subnet (stated writes the new one). Its bridge, gateway,
//! container addresses, container-ops listener and firewall all derive from the subnet, so the
//! shim does not patch them one by one: [`until_renumbered`] returns when the state gives this
//! machine another subnet, the daemon exits, and systemd starts it again (`Restart=always`),
//! which recreates the `uncloud` network on the new subnet and reconnects every container
//! ([`crate::network::ensure`]); the mirror then records their new addresses.

use std::time::Duration;

use futures::StreamExt;
use uncloud_common::dbus::StateProxy;
use uncloud_common::model::NetworkState;

/// How often the subnet is re-read even without a `Changed` signal (a lagging signal stream).
const RECHECK: Duration = Duration::from_secs(30);

/// This machine's subnet in a state, if it has an entry.
pub fn subnet_of(state: &NetworkState, machine_id: &str) -> Option<u32> {
    state.machines.get(machine_id).map(|m| m.subnet)
}

/// Returns the new subnet once the state gives this machine one other than `subnet`.
pub async fn until_renumbered(state: &StateProxy<'_>, machine_id: &str, subnet: u32) -> u32 {
    let mut changes = match state.receive_changed().await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow state changes; re-reading every {RECHECK:?}");
            None
        }
    };
    loop {
        let current = state
            .get_state()
            .await
            .ok()
            .and_then(|json| serde_json::from_str::<NetworkState>(&json).ok())
            .and_then(|s| subnet_of(&s, machine_id));
        if let Some(new) = current.filter(|s| *s != subnet) {
            return new;
        }
        // Wait for a change of this machine's entry, or the periodic re-read.
        let wait = async {
            match changes.as_mut() {
                Some(stream) => loop {
                    let Some(signal) = stream.next().await else {
                        return;
                    };
                    if let Ok(args) = signal.args() {
                        if args.kind() == &"machines" && args.ids().iter().any(|i| i == machine_id)
                        {
                            return;
                        }
                    }
                },
                None => std::future::pending().await,
            }
        };
        let _ = tokio::time::timeout(RECHECK, wait).await;
    }
}

//! Following stated's state by change, for the daemons that mirror part of it (dnsd,
//! ingressd, apid).
//!
//! The protocol (see `services/stated/src/dbus.rs`): read what you need once, then for each
//! `Changed(kind, ids)` fetch only those ids with `GetMany` (an absent id was removed); on
//! `Resync`, and whenever stated's bus name gets a new owner (stated restarted and its signals
//! in between are lost), read everything again. [`follow`] turns the three sources into one
//! stream of [`Update`]s, so a consumer has two cases to handle.

use std::collections::BTreeMap;

use futures::stream::{BoxStream, StreamExt};
use serde::de::DeserializeOwned;

use crate::dbus::{StateProxy, STATE_NAME};
use crate::model::Kind;

/// What a follower must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// These entities of `kind` changed (or were removed): fetch them with [`fetch`].
    Changed { kind: Kind, ids: Vec<String> },
    /// Signals may have been missed: read everything again.
    Resync,
}

/// Subscribes to stated's changes. Subscribe first, then read the initial state: a change in
/// between then shows up in the stream, so nothing falls between the two.
pub async fn follow(conn: &zbus::Connection) -> zbus::Result<BoxStream<'static, Update>> {
    let proxy = StateProxy::new(conn).await?;
    let changed = proxy
        .receive_changed()
        .await?
        .map(|signal| match signal.args() {
            Ok(args) => match Kind::parse(args.kind()) {
                Some(kind) => Update::Changed {
                    kind,
                    ids: args.ids().clone(),
                },
                // A kind this consumer does not know (a newer stated): be safe.
                None => Update::Resync,
            },
            Err(_) => Update::Resync,
        });
    let resync = proxy.receive_resync().await?.map(|_| Update::Resync);
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let owner = dbus
        .receive_name_owner_changed_with_args(&[(0, STATE_NAME)])
        .await?
        .filter_map(|signal| async move {
            let args = signal.args().ok()?;
            // A new owner: stated (re)started. Losing the owner needs nothing: the new one
            // comes with its own change.
            args.new_owner().as_ref().map(|_| Update::Resync)
        });
    Ok(futures::stream::select_all([changed.boxed(), resync.boxed(), owner.boxed()]).boxed())
}

/// Waits until this machine belongs to a network (stated's mode is no longer `fresh`) and
/// returns its machine id, beating `heartbeat` meanwhile; says once, to the log and to
/// systemd, that it waits.
pub async fn wait_for_member(
    state: &StateProxy<'_>,
    heartbeat: &crate::watchdog::Heartbeat,
) -> String {
    let mut told = false;
    loop {
        heartbeat.beat();
        if let Ok(id) = state.machine_id().await {
            match state.mode().await {
                Ok(m) if m != "fresh" => return id,
                Ok(_) if !told => {
                    tracing::info!(
                        "this machine belongs to no network yet; waiting until it joins one"
                    );
                    crate::daemon::notify_waiting_for_membership();
                    told = true;
                }
                _ => {}
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Puts what [`fetch`] returned for `ids` into `map`: an id it did not return was removed.
pub fn replace<T, E: From<T>>(
    map: &mut BTreeMap<String, E>,
    ids: &[String],
    mut fresh: BTreeMap<String, T>,
) {
    for id in ids {
        match fresh.remove(id) {
            Some(v) => {
                map.insert(id.clone(), E::from(v));
            }
            None => {
                map.remove(id);
            }
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("asking stated for {kind}: {source}")]
    Call { kind: Kind, source: zbus::Error },
    #[error("stated's answer for {kind} does not parse: {source}")]
    Parse {
        kind: Kind,
        source: serde_json::Error,
    },
}

/// The entities of `kind` among `ids` that still exist; an id missing from the result was
/// removed.
pub async fn fetch<T: DeserializeOwned>(
    proxy: &StateProxy<'_>,
    kind: Kind,
    ids: &[String],
) -> Result<BTreeMap<String, T>, FetchError> {
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let json = proxy
        .get_many(kind.as_str(), &ids)
        .await
        .map_err(|source| FetchError::Call { kind, source })?;
    serde_json::from_str(&json).map_err(|source| FetchError::Parse { kind, source })
}

/// Every entity of `kind` (after a `Resync`, or to start).
pub async fn fetch_all<T: DeserializeOwned>(
    proxy: &StateProxy<'_>,
    kind: Kind,
) -> Result<BTreeMap<String, T>, FetchError> {
    let json = proxy
        .get(kind.as_str(), "")
        .await
        .map_err(|source| FetchError::Call { kind, source })?;
    serde_json::from_str(&json).map_err(|source| FetchError::Parse { kind, source })
}

//! The part of the state ingressd serves from, kept up to date by change (the protocol of
//! `uncloud_common::state_follow`: read once, then fetch only the ids each `Changed` names,
//! everything again on `Resync`). Signals that arrive together are applied as one batch.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uncloud_common::dbus::StateProxy;
use uncloud_common::liveness::Liveness;
use uncloud_common::model::{Certificate, Container, Kind, Machine, Service};
use uncloud_common::state_follow::{fetch, fetch_all, replace, FetchError, Update};

use crate::view::View;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("asking stated for liveness: {0}")]
    Liveness(zbus::Error),
}

/// Reads everything ingressd serves from.
pub async fn load(proxy: &StateProxy<'_>, me: &str) -> Result<View, MirrorError> {
    let liveness: HashMap<String, Liveness> = proxy
        .liveness()
        .await
        .map_err(MirrorError::Liveness)?
        .into_iter()
        .map(|(k, v)| (k, Liveness::from_state(&v)))
        .collect();
    Ok(View {
        me: me.to_string(),
        machines: fetch_all(proxy, Kind::Machines).await?,
        services: fetch_all(proxy, Kind::Services).await?,
        containers: fetch_all(proxy, Kind::Containers).await?,
        certificates: fetch_all(proxy, Kind::Certificates).await?,
        liveness,
    })
}

/// stated's `GetMany` takes at most this many ids per call.
const MAX_IDS_PER_CALL: usize = 10_000;

/// Applies a batch of updates; returns whether anything ingressd uses may have changed.
pub async fn apply(
    proxy: &StateProxy<'_>,
    view: &mut View,
    updates: Vec<Update>,
) -> Result<bool, MirrorError> {
    if updates.iter().any(|u| matches!(u, Update::Resync)) {
        let me = view.me.clone();
        *view = load(proxy, &me).await?;
        return Ok(true);
    }
    let mut by_kind: BTreeMap<Kind, BTreeSet<String>> = BTreeMap::new();
    for u in updates {
        if let Update::Changed { kind, ids } = u {
            by_kind.entry(kind).or_default().extend(ids);
        }
    }
    let mut changed = false;
    for (kind, ids) in by_kind {
        let ids: Vec<String> = ids.into_iter().collect();
        for ids in ids.chunks(MAX_IDS_PER_CALL) {
            changed |= match kind {
                Kind::Machines => {
                    let fresh: BTreeMap<String, Machine> = fetch(proxy, kind, ids).await?;
                    replace(&mut view.machines, ids, fresh);
                    true
                }
                Kind::Services => {
                    let fresh: BTreeMap<String, Service> = fetch(proxy, kind, ids).await?;
                    replace(&mut view.services, ids, fresh);
                    true
                }
                Kind::Containers => {
                    let fresh: BTreeMap<String, Container> = fetch(proxy, kind, ids).await?;
                    replace(&mut view.containers, ids, fresh);
                    true
                }
                Kind::Certificates => {
                    let fresh: BTreeMap<String, Certificate> = fetch(proxy, kind, ids).await?;
                    replace(&mut view.certificates, ids, fresh);
                    true
                }
                Kind::Network | Kind::Removed | Kind::Clients | Kind::Files => false,
            };
        }
    }
    Ok(changed)
}

//! The part of the state dnsd serves, kept up to date by change.
//!
//! Read once, then each `Changed(kind, ids)` fetches only those ids (an absent id was
//! removed), a `Resync` reads everything again, and `LivenessChanged` updates one machine's
//! liveness (see `uncloud_common::state_follow`). Signals that arrive together (a deploy of
//! many containers) are applied as one batch: one read per kind, one rebuild of the names.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uncloud_common::dbus::StateProxy;
use uncloud_common::liveness::Liveness;
use uncloud_common::model::{Container, Kind, Machine, NetworkInfo, Service};
use uncloud_common::state_follow::{fetch, fetch_all, replace, FetchError, Update};

use crate::names::View;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("asking stated for liveness: {0}")]
    Liveness(zbus::Error),
    #[error("asking stated for the network: {0}")]
    Network(zbus::Error),
    #[error("stated's network does not parse: {0}")]
    NetworkParse(serde_json::Error),
}

async fn network(proxy: &StateProxy<'_>) -> Result<NetworkInfo, MirrorError> {
    let json = proxy
        .get(Kind::Network.as_str(), "")
        .await
        .map_err(MirrorError::Network)?;
    serde_json::from_str(&json).map_err(MirrorError::NetworkParse)
}

/// Reads everything dnsd serves.
pub async fn load(proxy: &StateProxy<'_>, me: &str) -> Result<View, MirrorError> {
    let info = network(proxy).await?;
    let liveness: HashMap<String, Liveness> = proxy
        .liveness()
        .await
        .map_err(MirrorError::Liveness)?
        .into_iter()
        .map(|(k, v)| (k, Liveness::from_state(&v)))
        .collect();
    Ok(View {
        me: me.to_string(),
        cidr: cidr_of(&info),
        machines: entries::<Machine, _>(fetch_all(proxy, Kind::Machines).await?),
        services: entries::<Service, _>(fetch_all(proxy, Kind::Services).await?),
        containers: entries::<Container, _>(fetch_all(proxy, Kind::Containers).await?),
        liveness,
    })
}

fn cidr_of(info: &NetworkInfo) -> Option<uncloud_common::address::MeshCidr> {
    if info.mesh_cidr.is_empty() {
        return Some(Default::default());
    }
    match info.mesh_cidr.parse() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "unusable mesh CIDR in the state");
            None
        }
    }
}

/// Converts what stated holds into what names need.
fn entries<T, E: From<T>>(map: BTreeMap<String, T>) -> BTreeMap<String, E> {
    map.into_iter().map(|(k, v)| (k, E::from(v))).collect()
}

/// stated's `GetMany` takes at most this many ids per call.
const MAX_IDS_PER_CALL: usize = 10_000;

/// Applies a batch of updates to `view`: everything again if one of them is a `Resync`, else
/// one read per kind of all the ids the batch names. Returns whether anything dnsd serves may
/// have changed.
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
                Kind::Network => {
                    view.cidr = cidr_of(&network(proxy).await?);
                    true
                }
                Kind::Removed | Kind::Clients | Kind::Files | Kind::Certificates => false,
            };
        }
    }
    Ok(changed)
}

//! The target side of `uc -m`: other machines' forwarded calls, served on this machine's mesh
//! address with the caller's role (the asking side is [`crate::fanout`]).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Json;
use tokio::net::{TcpListener, TcpStream};
use uncloud_api::peer::{Forwarded, Peer, PEER_PORT};
use uncloud_api::wire::{Answer, ApiError, Call};

use uncloud_common::model::Kind;
use uncloud_common::state_follow::{follow, Update};

use crate::api::Apid;
use crate::fanout::framed;

/// How often the peer listener checks that the machine's mesh address is still its own when
/// no change of the machines or the network said so: a safety net. Reading every machine's
/// record every 2 s was a fifth of an idle machine's D-Bus traffic.
const ADDRESS_CHECK: Duration = Duration::from_secs(60);
/// How often a machine that has no mesh address yet (it is joining) looks again: short, so
/// that a machine is asked through `-m` as soon as it is reachable.
const ADDRESS_WAIT: Duration = Duration::from_millis(200);

/// Serves other machines' forwarded calls on this machine's mesh address, binding once the
/// address exists and moving when the machine is renumbered. Runs until dropped.
pub async fn serve(apid: Arc<Apid>) {
    loop {
        let Some(ip) = apid.own_mesh_ip().await else {
            tokio::time::sleep(ADDRESS_WAIT).await;
            continue;
        };
        let listener = match TcpListener::bind((ip, PEER_PORT)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(%ip, error = %e, "mesh address not usable yet");
                tokio::time::sleep(ADDRESS_WAIT).await;
                continue;
            }
        };
        tracing::info!(%ip, port = PEER_PORT, "taking forwarded calls on the mesh address");
        // A renumbering changes this machine's record (or the network's range): look then. The
        // check's first tick, at once, covers a change before the subscription.
        let mut check = tokio::time::interval(ADDRESS_CHECK);
        let mut changes = match follow(apid.state().inner().connection()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the state's changes; checking the mesh address every {ADDRESS_CHECK:?}");
                futures::stream::pending().boxed()
            }
        };
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let look = tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, peer)) = accepted else { continue };
                    if let Err(why) = apid.peer_machine(peer.ip()).await {
                        tracing::warn!(%peer, %why, "refused a forwarding connection");
                        continue;
                    }
                    if connections.len() >= 64 {
                        tracing::warn!(%peer, "too many forwarding connections; closing");
                        continue;
                    }
                    let apid = apid.clone();
                    connections.spawn(serve_peer(apid, tcp));
                    false
                }
                update = changes.next() => match update {
                    Some(update) => apid
                        .member()
                        .is_none_or(|m| may_move_address(&update, &m.machine_id)),
                    // stated's signals are gone (the bus connection closed): the check remains.
                    None => {
                        changes = futures::stream::pending().boxed();
                        false
                    }
                },
                _ = check.tick() => true,
            };
            if look && apid.own_mesh_ip().await != Some(ip) {
                tracing::info!(from = %ip, "mesh address changed; moving the forwarding port");
                break;
            }
        }
    }
}

/// Whether `update` may have moved the mesh address of machine `me`: a change of its own
/// record or of the network's range, or signals missed.
fn may_move_address(update: &Update, me: &str) -> bool {
    match update {
        Update::Changed {
            kind: Kind::Network,
            ..
        }
        | Update::Resync => true,
        Update::Changed {
            kind: Kind::Machines,
            ids,
        } => ids.iter().any(|id| id == me),
        Update::Changed { .. } => false,
    }
}

async fn serve_peer(apid: Arc<Apid>, tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let transport = tarpc::serde_transport::new(framed(tcp), Json::default());
    BaseChannel::with_defaults(transport)
        .max_concurrent_requests(16)
        .execute(PeerConnection { apid }.serve())
        .for_each(|response| async {
            tokio::spawn(response);
        })
        .await;
}

#[derive(Clone)]
struct PeerConnection {
    apid: Arc<Apid>,
}

impl Peer for PeerConnection {
    async fn call(
        self,
        _: tarpc::context::Context,
        caller: Forwarded,
        call: Call,
    ) -> Result<Answer, ApiError> {
        let caller = self.apid.forwarded_caller(caller).await?;
        self.apid.dispatch(&caller, call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_that_can_renumber_this_machine_make_it_look() {
        let changed = |kind, ids: &[&str]| Update::Changed {
            kind,
            ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        assert!(may_move_address(
            &changed(Kind::Machines, &["b", "me"]),
            "me"
        ));
        assert!(!may_move_address(&changed(Kind::Machines, &["b"]), "me"));
        assert!(may_move_address(&changed(Kind::Network, &[]), "me"));
        assert!(may_move_address(&Update::Resync, "me"));
        assert!(!may_move_address(&changed(Kind::Containers, &["me"]), "me"));
        assert!(!may_move_address(&changed(Kind::Services, &[]), "me"));
    }
}

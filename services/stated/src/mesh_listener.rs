//! Gossip and sync on the machine's mesh address (`listen_address = "mesh"`).
//!
//! The address exists only once meshd has configured the mesh device, which it does after
//! stated has made the machine a member, so binding cannot be a start-up step: this task
//! waits for the machine's entry to name a subnet, then binds 10.210.X.1 as soon as the
//! kernel has it (retrying while meshd catches up), and starts over on the new address when
//! the machine is renumbered. No start order between stated and meshd is needed, and a
//! missing address is waited for, never a reason to exit.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::gossip::Gossip;
use crate::replica::Shared;
use crate::sync as statesync;

const RETRY: Duration = Duration::from_millis(250);

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut me = shared.mesh_me.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let ip = loop {
            if *shutdown.borrow() {
                return;
            }
            if let Some(ip) = *me.borrow_and_update() {
                break ip;
            }
            tokio::select! {
                _ = me.changed() => {}
                _ = shutdown.changed() => {}
            }
        };
        let Some(running) = bind(&shared, ip, &mut me, &mut shutdown).await else {
            if *shutdown.borrow() {
                return;
            }
            continue; // renumbered while waiting
        };
        tracing::info!(%ip, "gossip and sync listen on the mesh address");
        loop {
            tokio::select! {
                _ = me.changed() => if *me.borrow() != Some(ip) { break },
                _ = shutdown.changed() => break,
            }
        }
        running.stop(&shared).await;
        if *shutdown.borrow() {
            return;
        }
        tracing::info!(from = %ip, "this machine was renumbered; moving gossip and sync");
    }
}

struct Running {
    gossip: Gossip,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn stop(self, shared: &Shared) {
        for t in &self.tasks {
            t.abort();
        }
        self.gossip.shutdown().await;
        shared.peers.clear();
    }
}

/// Binds sync and gossip on `ip`, retrying until the address exists; `None` if the machine's
/// address changed or stated is stopping meanwhile.
async fn bind(
    shared: &Arc<Shared>,
    ip: IpAddr,
    me: &mut tokio::sync::watch::Receiver<Option<IpAddr>>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Running> {
    let mut waited = 0u32;
    loop {
        if *shutdown.borrow() || *me.borrow() != Some(ip) {
            return None;
        }
        let sync = SocketAddr::new(ip, shared.config.sync_port);
        let attempt = async {
            let (sync_addr, sync_task) = statesync::serve(shared.clone(), sync).await?;
            let seeds = shared.mesh_peers().all_on(shared.config.gossip_port);
            let gossip_addr = SocketAddr::new(ip, shared.config.gossip_port);
            match Gossip::start(shared.clone(), gossip_addr, sync_addr, seeds).await {
                Ok(g) => Ok((g, sync_task)),
                Err(e) => {
                    sync_task.abort();
                    Err(e)
                }
            }
        };
        match attempt.await {
            Ok((gossip, sync_task)) => {
                let mut tasks = vec![sync_task];
                tasks.extend(gossip.spawn_watchers(shared.clone()));
                return Some(Running { gossip, tasks });
            }
            Err(e) => {
                if waited.is_multiple_of(40) {
                    tracing::info!(%ip, error = %e,
                        "waiting for meshd to put the mesh address on the mesh device");
                }
                waited += 1;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = me.changed() => {}
            _ = shutdown.changed() => {}
        }
    }
}

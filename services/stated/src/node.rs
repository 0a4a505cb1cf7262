//! One machine's stated, running: [`Node::start`] opens the store, starts the store writer,
//! the sync server, gossip and the background tasks, and returns a handle that derefs to the
//! typed API ([`Shared`]) that D-Bus, tests and the benchmark call.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use uncloud_common::config::DaemonConfig;
use uncloud_docstore::rows::RowStore;
use uncloud_docstore::Store;

use crate::config::Config;
use crate::document::{genesis, StateDoc};
use crate::errors::StartError;
use crate::links::Links;
use crate::persist::{CompactionPolicy, Sources, Writer};
use crate::replica::{DocCell, Shared};
use crate::{gossip, identity, sync as statesync};

/// A running stated node.
pub struct Node {
    shared: Arc<Shared>,
    gossip: Option<gossip::Gossip>,
    sync_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    /// Binds gossip and sync on the mesh address once it exists (`listen_address = "mesh"`).
    mesh_listener: Option<JoinHandle<()>>,
}

impl Node {
    /// Starts a member of `config.network_id` with real network links (tests, hand-made
    /// setups); the daemon goes through [`crate::membership`].
    pub async fn start(config: Config) -> Result<Node, StartError> {
        Self::start_with_links(config, Links::real()).await
    }

    /// Like [`Node::start`], with gossip and sync traffic through `links` (tests, benchmark).
    pub async fn start_with_links(config: Config, links: Links) -> Result<Node, StartError> {
        let network = config.network_id.clone().ok_or(StartError::NoNetwork)?;
        Self::open(config, links, &network, || genesis(&network)).await
    }

    /// Starts a member of `network`: opens its store (built by `fresh` when there is none, or
    /// nothing in it could be read) and starts syncing.
    pub async fn open(
        config: Config,
        links: Links,
        network: &str,
        fresh: impl FnOnce() -> automerge::Automerge,
    ) -> Result<Node, StartError> {
        config.validate()?;
        let machine_id = identity::load_or_create(&config.data_dir)?;
        let store_path = config.store_path();
        let (store, loaded) = Store::open(&store_path, fresh)?;
        for problem in &loaded.report.problems {
            tracing::error!(store = %store_path.display(), "{problem}");
        }
        if let Some(q) = &loaded.report.quarantined {
            tracing::error!(
                "the damaged store was kept at {}; everything readable in it was recovered",
                q.display()
            );
        }
        let doc = StateDoc::new(loaded.doc);
        let stored_network = doc.network_id();
        if stored_network != network {
            return Err(StartError::WrongNetwork {
                path: store_path.display().to_string(),
                stored: stored_network,
                configured: network.to_string(),
            });
        }
        let rows_path = config.containers_path();
        let (rows, stored) = RowStore::open(&rows_path)?;
        if let Some(problem) = &stored.problem {
            tracing::error!("{problem}; peers and Docker supply the containers again");
        }
        let (tables, problems) = crate::tables::from_stored(stored.groups);
        for problem in problems {
            tracing::error!(store = %rows_path.display(), "{problem}");
        }
        let heads = doc.heads();
        let doc = Arc::new(Mutex::new(DocCell {
            doc,
            saved_heads: heads.clone(),
            tables,
        }));
        let (snapshot_doc, all_rows) = (doc.clone(), doc.clone());
        let writer = Writer::start(
            store,
            rows,
            CompactionPolicy {
                after_entries: config.compact_after_entries,
                after_bytes: config.compact_after_bytes,
            },
            Sources {
                doc: Arc::new(move || snapshot_doc.lock().unwrap().doc.save()),
                rows: Arc::new(move || {
                    crate::tables::row_writes(&all_rows.lock().unwrap().tables.all_ops())
                }),
            },
        );
        let shared = Shared::new(
            machine_id.clone(),
            network,
            config,
            doc,
            writer,
            heads,
            links,
        );
        shared.refresh_mesh_peers();

        let mut tasks = Vec::new();
        let (sync_addr, gossip, mesh_listener) = if shared.config.on_mesh() {
            let listener = tokio::spawn(crate::mesh_listener::run(shared.clone()));
            (shared.config.sync_addr(), None, Some(listener))
        } else {
            let (sync_addr, sync_task) =
                statesync::serve(shared.clone(), shared.config.sync_addr()).await?;
            let seeds = shared.config.seeds.clone();
            let gossip = gossip::Gossip::start(
                shared.clone(),
                shared.config.gossip_addr(),
                sync_addr,
                seeds,
            )
            .await?;
            tasks.push(sync_task);
            tasks.extend(gossip.spawn_watchers(shared.clone()));
            (sync_addr, Some(gossip), None)
        };
        tasks.push(tokio::spawn(crate::replica::conflict_loop(shared.clone())));
        tasks.push(tokio::spawn(statesync::anti_entropy_loop(shared.clone())));
        // A conflict merged before a restart is fixed now, not at the next merge.
        shared.check_conflicts();
        let node = Node {
            shared,
            gossip,
            sync_addr,
            tasks,
            mesh_listener,
        };
        let (gossip, sync) = if node.shared.config.on_mesh() {
            // The mesh listener says where, once the address exists.
            ("mesh".to_string(), "mesh".to_string())
        } else {
            (
                node.shared.config.gossip_addr().to_string(),
                sync_addr.to_string(),
            )
        };
        tracing::info!(machine = %machine_id, network = %node.shared.network_id, %gossip, %sync,
            "stated started");
        Ok(node)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn sync_addr(&self) -> SocketAddr {
        self.sync_addr
    }

    pub fn gossip_addr(&self) -> SocketAddr {
        self.shared.config.gossip_addr()
    }

    /// Stops every task, flushes the store and closes sockets.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    async fn stop(&mut self) {
        let _ = self.shared.shutdown.send(true);
        if let Some(listener) = self.mesh_listener.take() {
            // It closes its sockets itself on shutdown; abort only if it hangs.
            let abort = listener.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), listener)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        self.shared.peers.clear();
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        if let Some(g) = self.gossip.take() {
            g.shutdown().await;
        }
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.finish_writes()).await;
    }
}

impl std::ops::Deref for Node {
    type Target = Arc<Shared>;

    fn deref(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.shared.shutdown.send(true);
        self.shared.peers.clear();
        for t in &self.tasks {
            t.abort();
        }
        if let Some(t) = &self.mesh_listener {
            t.abort();
        }
    }
}

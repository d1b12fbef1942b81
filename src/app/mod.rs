//! The application: the one place that knows both halves of the node.
//!
//! [`Node::start`] wires a [`Chain`] (or none, for a network-only node) to
//! the [`Network`]:
//! 1. the network's version parameters and gossip budgets from the chain
//!    (genesis hash, capabilities, masternode count, mempool size), and the
//!    best height through a `watch` channel the network reads;
//! 2. the network, with the router over the chain's handlers as its inbound
//!    service and an observer that learns each new peer's height and
//!    announces the pool to it;
//! 3. ban persistence: the ban list's changes go to the store's ban writer,
//!    a background task that commits them debounced (never an fsync inside
//!    a layer);
//! 4. block sync and block production, as tracked tasks.
//!
//! [`Node::shutdown`] stops them; [`Node::stopped`] waits for every tracked
//! task of the node (network included) to end.

mod run;

pub use run::{run, RunError, RunOptions, SHUTDOWN_DEADLINE};

use std::sync::Arc;
use std::time::Duration;

use governor::Quota;
use std::num::NonZeroU32;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::constants::{MAX_MEMPOOL_RESPONSE_BYTES, MAX_MEMPOOL_RESPONSE_TXS};
use crate::crypto::{NodeId, NodeIdentity};
use crate::handlers::{Handlers, Router};
use crate::layers::blacklist::{Blacklist, PersistedBan};
use crate::layers::rate_limit::GossipScale;
use crate::network::{Application, Network, NetworkConfig, NetworkError, PeerObserver};
use crate::peer::connection;
use crate::peer::set::{PeerHandle, PeerSet};
use crate::peer::Offence;
use crate::protocol::message::capabilities;
use crate::protocol::{Envelope, GossipKind, Message};
use crate::state::{Chain, ChainService};
use crate::storage::StoredBan;
use crate::sync::{Penalizer, SyncHandle, Syncer};

/// A running node: its network and the chain it follows. Clones share it.
///
/// The network's methods are reachable directly (`node.peers()`,
/// `node.blacklist()`, ...): a node *is* its network plus a chain.
#[derive(Clone, Debug)]
pub struct Node {
    network: Network,
    chain: Option<ChainService>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl std::ops::Deref for Node {
    type Target = Network;

    fn deref(&self) -> &Network {
        &self.network
    }
}

impl From<&Node> for crate::rpc::NodeHandle {
    fn from(node: &Node) -> Self {
        crate::rpc::NodeHandle::new(node.network.clone(), node.chain.clone())
    }
}

impl From<Node> for crate::rpc::NodeHandle {
    fn from(node: Node) -> Self {
        crate::rpc::NodeHandle::new(node.network, node.chain)
    }
}

impl Node {
    /// Starts the network for `chain` (or a network-only node without one)
    /// and the chain's sync, production and ban persistence.
    ///
    /// # Errors
    /// [`NetworkError`] if the network cannot start (listen address taken).
    pub async fn start(
        identity: &NodeIdentity,
        mut config: NetworkConfig,
        chain: Option<Chain>,
    ) -> Result<Node, NetworkError> {
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let sync = SyncHandle::default();
        let (height_tx, height_rx) = watch::channel(chain.as_ref().map_or(0, |c| c.tip().height));
        if let Some(chain) = &chain {
            let version = &mut config.handshake.version;
            // Peers must follow the same genesis: the chain's, whatever the
            // version parameters said.
            version.genesis_hash = chain.genesis_hash();
            // This node serves blocks and its mempool, and votes if it is a
            // masternode; peers ask only what is announced here.
            version.capabilities |= capabilities::FULL_NODE;
            if chain.is_masternode() {
                version.capabilities |= capabilities::MASTERNODE;
            }
            config.gossip = GossipScale {
                masternodes: chain.genesis().masternodes().len().max(1),
                mempool_max_txs: chain.mempool_max_txs(),
            };
        }
        config.best_height = height_rx;
        let service = match &chain {
            Some(chain) => Some(ChainService::start(chain.clone()).map_err(NetworkError::Worker)?),
            None => None,
        };
        let router_chain = service.clone();
        let router_sync = sync.clone();
        let observer_tasks = tasks.clone();
        let network = Network::start(identity, config, move |network: &Network| {
            let weak = network.downgrade();
            let handlers = match router_chain.clone() {
                Some(chain) => {
                    let weak = weak.clone();
                    Handlers::chain(
                        chain,
                        tower::util::BoxCloneSyncService::new(network.pex_handler()),
                        router_sync.clone(),
                        Some(Arc::new(move |voter: [u8; 32]| {
                            if let Some(network) = weak.upgrade() {
                                penalize_masternode(&network, voter);
                            }
                        })),
                    )
                }
                None => {
                    Handlers::minimal(tower::util::BoxCloneSyncService::new(network.pex_handler()))
                }
            };
            let router = Router::new(
                handlers,
                network.config().handshake.version.network.magic(),
                Some(network.peers().clone()),
                Some(Arc::new(move |request: &crate::peer::Inbound| {
                    if let Some(network) = weak.upgrade() {
                        network.delivered(request);
                    }
                })),
            );
            let observer = router_chain.map(|service| {
                Arc::new(ChainObserver {
                    chain: service.chain().clone(),
                    sync: router_sync,
                    tasks: observer_tasks,
                    announce_limiter: Arc::new(governor::DefaultDirectRateLimiter::direct(
                        Quota::per_minute(
                            NonZeroU32::new(crate::constants::POOL_ANNOUNCEMENTS_PER_MINUTE)
                                .unwrap_or(NonZeroU32::MIN),
                        ),
                    )),
                }) as Arc<dyn PeerObserver>
            });
            Application {
                inbound: tower::util::BoxCloneSyncService::new(router),
                observer,
            }
        })
        .await?;
        let node = Node {
            network,
            chain: service,
            tasks,
            shutdown,
        };
        if let Some(service) = node.chain.clone() {
            node.start_chain(service, sync, height_tx);
        }
        Ok(node)
    }

    /// The network half.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The chain, if this node follows one.
    pub fn chain(&self) -> Option<&Chain> {
        self.chain.as_ref().map(ChainService::chain)
    }

    /// The chain service (changes to the chain run on its worker thread).
    pub fn chain_service(&self) -> Option<&ChainService> {
        self.chain.as_ref()
    }

    /// Stops the chain's tasks and the network: no new connections, every
    /// connection closed with a `Disconnect`, no more redialling.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        self.network.shutdown();
    }

    /// Waits until every tracked task of the node has ended (after
    /// [`Node::shutdown`]).
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.network.stopped().await;
    }

    /// Wires `chain` to the network: votes and blocks are published as this
    /// node, bans persist in its store, the best height reaches `Version`
    /// messages, and the producer and sync tasks run until shutdown.
    fn start_chain(&self, service: ChainService, sync: SyncHandle, height: watch::Sender<u64>) {
        let chain = service.chain().clone();
        let weak = self.network.downgrade();
        chain.set_publisher(Arc::new(move |kind, payload| {
            if let Some(network) = weak.upgrade() {
                network.publish(gossip_kind(kind), payload);
            }
        }));
        persist_bans(self.network.blacklist(), &chain);
        let weak = self.network.downgrade();
        let penalize: Penalizer = Arc::new(move |peer, offence: Offence| {
            if let Some(network) = weak.upgrade() {
                network.penalize_peer(&peer.context, offence);
            }
        });
        let syncer = Syncer::new(
            service.clone(),
            self.network.peers().clone(),
            penalize,
            sync,
        );
        crate::tasks::spawn(&self.tasks, "sync", syncer.run(self.shutdown.clone()));
        crate::tasks::spawn(
            &self.tasks,
            "produce",
            produce_loop(
                service.clone(),
                self.network.peers().clone(),
                self.shutdown.clone(),
            ),
        );
        crate::tasks::spawn(
            &self.tasks,
            "best_height",
            publish_height(chain, height, self.shutdown.clone()),
        );
    }
}

/// Keeps the best height the network announces in `Version` messages
/// equal to the chain's tip height, as the tip moves.
async fn publish_height(chain: Chain, height: watch::Sender<u64>, shutdown: CancellationToken) {
    let mut tip = chain.watch_tip();
    loop {
        let now = tip.borrow_and_update().height;
        height.send_if_modified(|h| std::mem::replace(h, now) != now);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = tip.changed() => if changed.is_err() {
                return;
            },
        }
    }
}

/// What the chain does with a newly admitted peer.
struct ChainObserver {
    chain: Chain,
    sync: SyncHandle,
    tasks: TaskTracker,
    /// Node-wide budget of pool announcements to new peers.
    announce_limiter: Arc<governor::DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for ChainObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainObserver").finish_non_exhaustive()
    }
}

impl PeerObserver for ChainObserver {
    fn admitted(&self, network: &Network, handle: &Arc<PeerHandle>) {
        let best = handle.info.version.best_height;
        if best > self.chain.tip().height {
            self.chain.saw_height(best);
            self.sync.wake();
        }
        // What we hold that the peer may have missed (our pool after a
        // restart, payments made while we had no peers).
        self.announce_pool(network, handle);
    }
}

impl ChainObserver {
    /// Sends `peer` (only) what the chain wants re-announced: the pooled
    /// transactions, parents first, and this masternode's own votes on
    /// them, each in a fresh envelope signed by this node. Signing runs off
    /// the async workers.
    ///
    /// # Security
    /// An announcement costs signing and up to 3 MiB of sending, and
    /// identities are free: a node-wide budget
    /// ([`crate::constants::POOL_ANNOUNCEMENTS_PER_MINUTE`]) bounds what a
    /// stream of new connections can make the node do. Beyond it a new
    /// peer gets no announcement (it still gets new gossip, and fetches the
    /// pool itself after its sync).
    fn announce_pool(&self, network: &Network, handle: &Arc<PeerHandle>) {
        let chain = self.chain.clone();
        let limiter = self.announce_limiter.clone();
        let network = network.clone();
        let queue = handle.queue.clone();
        let peer = handle.context.clone();
        // The pool is read under the chain's state lock, and signing costs:
        // both on the blocking pool, never on the async worker running the
        // connection's setup.
        crate::tasks::spawn(&self.tasks, "announce_pool", async move {
            let announce_to = peer.clone();
            let signed = tokio::task::spawn_blocking(move || {
                if chain.mempool_size().0 == 0 {
                    return Vec::new();
                }
                if limiter.check().is_err() {
                    metrics::counter!("timed_pool_announcements_total", "result" => "skipped")
                        .increment(1);
                    if crate::logging::allow("announce_skipped") {
                        tracing::info!(peer = %announce_to.node_id, "pool announcement budget spent: not announcing to this peer");
                    }
                    return Vec::new();
                }
                metrics::counter!("timed_pool_announcements_total", "result" => "sent")
                    .increment(1);
                chain
                    .announcements(MAX_MEMPOOL_RESPONSE_TXS, MAX_MEMPOOL_RESPONSE_BYTES)
                    .into_iter()
                    .map(|(kind, payload)| network.sign(gossip_kind(kind), payload))
                    .collect::<Vec<Envelope>>()
            })
            .await
            .unwrap_or_default();
            let count = signed.len();
            for envelope in signed {
                if !connection::enqueue(&queue, &peer, &Message::Gossip(envelope)) {
                    break;
                }
            }
            if count > 0 {
                tracing::debug!(peer = %peer.node_id, count, "pool announced to a new peer");
            }
        });
    }
}

/// Restores the bans stored in the chain's database, makes the stored
/// list match the bans in force (expired ones and those the list had no
/// room for are dropped), and hands every later change to the store's
/// ban writer, which commits them in batches off the caller's path. An
/// operator's change (`setban`, `clearbanned`) is waited for, so it is
/// on disk when the RPC call returns; a ban the middleware makes is on
/// disk within the writer's debounce (50 ms) and one commit.
fn persist_bans(blacklist: &Arc<Blacklist>, chain: &Chain) {
    use crate::layers::blacklist::{BanChange, BanSink};
    use crate::storage::{BanWrite, BanWriter};

    /// Longest wait for an operator's change to reach the disk.
    const OPERATOR_SYNC: Duration = Duration::from_secs(5);

    fn stored(ban: PersistedBan) -> StoredBan {
        StoredBan {
            subnet: ban.subnet.to_string(),
            expires_unix: ban.expires_unix,
            reason: ban.reason,
        }
    }

    struct StoreSink(BanWriter);

    impl BanSink for StoreSink {
        fn changed(&self, change: BanChange) {
            self.0.send(match change {
                BanChange::Set(ban) => BanWrite::Put(stored(ban)),
                BanChange::Removed(subnet) => BanWrite::Delete(subnet.to_string()),
                BanChange::Cleared => BanWrite::Clear,
            });
        }

        fn operator_changed(&self) {
            let wait = || self.0.sync(OPERATOR_SYNC);
            // The RPC handler runs on an async worker: hand the worker's
            // other tasks to another thread while waiting for the disk.
            let durable = match tokio::runtime::Handle::try_current() {
                Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                    tokio::task::block_in_place(wait)
                }
                _ => wait(),
            };
            if !durable {
                tracing::warn!(
                    timeout_s = OPERATOR_SYNC.as_secs(),
                    "ban change not yet stored"
                );
            }
        }
    }

    let store = chain.store();
    // The sink before the restore, and the stored list rewritten through
    // the writer after it: a ban made meanwhile (connections are already
    // accepted) is neither lost nor overwritten.
    let list = Arc::downgrade(blacklist);
    let snapshot = move || {
        list.upgrade()
            .map(|b| b.persisted().into_iter().map(stored).collect())
    };
    let writer = match store.ban_writer(snapshot) {
        Ok(writer) => writer,
        Err(error) => {
            tracing::error!(%error, "bans will not be stored");
            return;
        }
    };
    blacklist.set_sink(Arc::new(StoreSink(writer.clone())));
    match store.load_bans() {
        Ok(rows) => {
            let bans: Vec<PersistedBan> = rows
                .into_iter()
                .filter_map(|b| {
                    Some(PersistedBan {
                        subnet: b.subnet.parse().ok()?,
                        expires_unix: b.expires_unix,
                        reason: b.reason,
                    })
                })
                .collect();
            let restored = blacklist.restore(&bans);
            if restored > 0 {
                tracing::info!(restored, "bans restored from the store");
            }
        }
        Err(error) => tracing::error!(%error, "cannot read the stored bans"),
    }
    // Expired bans, and those the list had no room for, leave the store.
    writer.resync();
}

/// Penalises the masternode with key `voter` if it is connected: it signed
/// accept votes for two transactions spending one output.
fn penalize_masternode(network: &Network, voter: [u8; 32]) {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&voter) else {
        return;
    };
    let node_id = NodeId::from_public_key(&key);
    if network.peers().contains(&node_id) {
        if crate::logging::allow("equivocation_penalty") {
            tracing::warn!(peer = %node_id, "penalising an equivocating masternode");
        }
        network.penalize(&node_id, Offence::InvalidData);
    }
}

/// Produces this node's blocks in its slots until `shutdown`.
///
/// Checks the clock ten times per slot (at most every second, at least
/// every 50 ms), so a block comes within a tenth of a slot of its start.
///
/// # Correctness
/// A masternode of a multi-masternode chain does not produce while it has
/// no peer (alone, it would only build a branch the others abandon) or
/// while it is behind the best height it heard of (it would fork off a
/// stale tip).
async fn produce_loop(service: ChainService, peers: Arc<PeerSet>, shutdown: CancellationToken) {
    let chain = service.chain().clone();
    if !chain.is_masternode() {
        return;
    }
    let interval = chain.genesis().block_interval_secs;
    let tick = Duration::from_millis((interval * 100).clamp(50, 1000));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let alone = peers.is_empty() && chain.genesis().masternodes().len() > 1;
        // A block still being checked may be the one this slot builds on.
        let behind = chain.tip().height < chain.best_seen() || service.blocks_in_flight() > 0;
        if alone || behind {
            continue;
        }
        let now = crate::protocol::version::unix_now().as_secs();
        let produced = service
            .run(move |chain| chain.produce_if_scheduled(now))
            .await
            .and_then(|r| r);
        if let Err(error) = produced {
            tracing::error!(%error, "cannot produce a block");
        }
    }
}

/// The gossip kind that carries a chain item.
fn gossip_kind(kind: crate::state::ItemKind) -> GossipKind {
    match kind {
        crate::state::ItemKind::Transaction => GossipKind::Transaction,
        crate::state::ItemKind::Vote => GossipKind::Vote,
        crate::state::ItemKind::Block => GossipKind::Block,
    }
}

//! The chain wired to the node: publishing, re-announcing, ban
//! persistence, penalties for chain offences and block production.

use super::*;

impl Node {
    /// Wires `chain` to the node: votes and blocks are published as this
    /// node, bans persist in its store, and the producer and sync tasks
    /// run until shutdown.
    pub(super) fn start_chain(&self, chain: Chain) {
        let weak = Arc::downgrade(&self.inner);
        let local_addr = self.local_addr;
        chain.set_publisher(Arc::new(move |kind, payload| {
            if let Some(inner) = weak.upgrade() {
                Node { inner, local_addr }.publish(gossip_kind(kind), payload);
            }
        }));
        self.persist_bans(&chain);
        let weak = Arc::downgrade(&self.inner);
        let penalize: Penalizer = Arc::new(move |peer, offence: Offence| {
            if let Some(inner) = weak.upgrade() {
                penalize_peer(&inner, &peer.context, offence);
            }
        });
        let syncer = Syncer::new(
            chain.clone(),
            self.inner.peers.clone(),
            penalize,
            self.inner.sync.clone(),
        );
        tokio::spawn(syncer.run(self.inner.shutdown.clone()));
        tokio::spawn(produce_loop(
            chain,
            self.inner.peers.clone(),
            self.inner.shutdown.clone(),
        ));
    }

    /// Restores the bans stored in the chain's database, makes the stored
    /// list match the bans in force (expired ones and those the list had no
    /// room for are dropped), and hands every later change to the store's
    /// ban writer, which commits them in batches off the caller's path. An
    /// operator's change (`setban`, `clearbanned`) is waited for, so it is
    /// on disk when the RPC call returns; a ban the middleware makes is on
    /// disk within the writer's debounce (50 ms) and one commit.
    pub(super) fn persist_bans(&self, chain: &Chain) {
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

        let blacklist = &self.inner.blacklist;
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
    pub(super) fn announce_pool(
        &self,
        chain: &Chain,
        queue: &Arc<SendQueue>,
        peer: &Arc<PeerContext>,
    ) {
        if chain.mempool_size().0 == 0 {
            return;
        }
        if self.inner.announce_limiter.check().is_err() {
            metrics::counter!("timed_pool_announcements_total", "result" => "skipped").increment(1);
            if crate::logging::allow("announce_skipped") {
                tracing::info!(peer = %peer.node_id, "pool announcement budget spent: not announcing to this peer");
            }
            return;
        }
        metrics::counter!("timed_pool_announcements_total", "result" => "sent").increment(1);
        let chain = chain.clone();
        let node = self.clone();
        let queue = queue.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            let signed = tokio::task::spawn_blocking(move || {
                chain
                    .announcements(MAX_MEMPOOL_RESPONSE_TXS, MAX_MEMPOOL_RESPONSE_BYTES)
                    .into_iter()
                    .map(|(kind, payload)| node.sign(gossip_kind(kind), payload))
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

    /// Signs `payload` as this node in a fresh envelope and marks its id as
    /// seen, so the echo from the network is dropped.
    pub(super) fn sign(&self, kind: GossipKind, payload: Vec<u8>) -> Envelope {
        let timestamp_ms = crate::protocol::version::unix_now().as_millis() as u64;
        let magic = self.inner.config.handshake.version.network.magic();
        let envelope = Envelope::sign(&self.inner.identity, magic, kind, timestamp_ms, payload);
        let id = envelope.id();
        for layer in self.middleware().layers() {
            if let BuiltLayer::Dedup(dedup) = layer {
                if dedup.cache().reserve(id) {
                    dedup.cache().commit(id);
                }
            }
        }
        envelope
    }
}

/// Charges `offence` to a connected peer through the scoring layer of the
/// current stack (which disconnects or bans at its thresholds).
pub(super) fn penalize_peer(inner: &Inner, peer: &PeerContext, offence: Offence) {
    let stack = crate::locks::read(&inner.stack).clone();
    stack.judge().penalize(peer, offence);
}

/// Penalises the masternode with key `voter` if it is connected: it signed
/// accept votes for two transactions spending one output.
pub(super) fn penalize_masternode(inner: &Inner, voter: [u8; 32]) {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&voter) else {
        return;
    };
    if let Some(handle) = inner.peers.get(&NodeId::from_public_key(&key)) {
        if crate::logging::allow("equivocation_penalty") {
            tracing::warn!(peer = %handle.info.node_id, "penalising an equivocating masternode");
        }
        penalize_peer(inner, &handle.context, Offence::InvalidData);
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
pub(super) async fn produce_loop(chain: Chain, peers: Arc<PeerSet>, shutdown: CancellationToken) {
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
        if alone || chain.tip().height < chain.best_seen() {
            continue;
        }
        let now = crate::protocol::version::unix_now().as_secs();
        if let Err(error) = chain.produce_if_scheduled(now) {
            tracing::error!(%error, "cannot produce a block");
        }
    }
}

/// The gossip kind that carries a chain item.
pub(super) fn gossip_kind(kind: crate::state::ItemKind) -> GossipKind {
    match kind {
        crate::state::ItemKind::Transaction => GossipKind::Transaction,
        crate::state::ItemKind::Vote => GossipKind::Vote,
        crate::state::ItemKind::Block => GossipKind::Block,
    }
}

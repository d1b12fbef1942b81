//! Chain sync: fetch the blocks peers have and we do not.
//!
//! # How
//! A round runs every [`SYNC_INTERVAL`], and at once when a peer connects
//! with a higher best height or a gossiped block lies ahead of the tip. It
//! sends `GetBlocks { start: tip + 1, count: 500 }` through the peer set's
//! balancer over the peers that announced `FULL_NODE`
//! ([`PeerSet::service`]: tower's power of two choices on peak-EWMA load),
//! and applies the answer in order through [`Chain::handle_block`], which
//! validates every block fully. The answer names the peer that gave it.
//! The answer's `tip_height` is the sync target; the round goes on while
//! the tip is below it.
//!
//! A request that fails or times out is retried on another peer by the
//! balancer's retry policy; an answer whose blocks are invalid is asked
//! again of another peer by sync, with the peers tried so far excluded, up
//! to [`SYNC_MAX_ATTEMPTS`] answers per batch. A peer that sent an invalid
//! block is penalised with the block's offence (`invalid_data`,
//! `malformed`).
//!
//! # Correctness
//! A slow answer costs the peer one `Timeout` at most: the connection's
//! request timeout is the only timeout that charges (neither sync nor the
//! balancer's attempt timeout charges), and an answer that arrives after it
//! is dropped quietly by the connection. [`SYNC_REQUEST_DEADLINE`] only
//! bounds how long sync waits in all, for a serving peer to connect and for
//! the balancer's attempts.
//!
//! # Forks
//! When a peer's first block does not link to our tip, the peer is on
//! another branch. We ask that same peer (straight through its connection,
//! not the balancer) for blocks from 1, 2, 4, ... below our tip
//! (at most [`MAX_REORG_DEPTH`] back) until its answer links to our chain,
//! skip the blocks we share, and offer the rest to [`Chain::reorg`], which
//! switches if that branch wins by the fork-choice rule (see
//! [`crate::state`]).
//!
//! Progress is logged with the height, the target, the percentage and the
//! blocks per second, and exported as `timed_sync_progress` and
//! `timed_sync_target_height`. Sync resumes after a restart from the stored
//! tip: there is no other sync state.
//!
//! # Security
//! A peer can claim any height. A claim only makes us ask: a peer whose
//! answer claims a tip past the requested height but carries no block is
//! charged a protocol violation, and when no peer can give us more the
//! target falls back to our own tip (so a false claim cannot keep a
//! masternode from producing: it does not produce while behind the
//! target). Gossiped blocks raise the target only once their header (slot,
//! producer, signature) checks out.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::timeout::Timeout;
use tower::ServiceExt;

use crate::chain::verified::VerifiedBlock;
use crate::constants::{
    MAX_BLOCKS_PER_RESPONSE, MAX_MEMPOOL_RESPONSE_TXS, MAX_REORG_DEPTH, PEER_ATTEMPT_TIMEOUT,
    SYNC_INTERVAL, SYNC_MAX_ATTEMPTS, SYNC_REQUEST_DEADLINE,
};
use crate::crypto::NodeId;
use crate::peer::client::{ClientError, Request, Response};
use crate::peer::set::{PeerHandle, PeerSet};
use crate::peer::{Offence, PeerAnswer, PeerRequest, PeerSetError, PeerSetService};
use crate::protocol::message::{capabilities, GetBlocks};
use crate::state::{BlockOutcome, Chain, ChainError, ChainService};

/// Charges a peer for bad data.
pub type Penalizer = Arc<dyn Fn(&PeerHandle, Offence) + Send + Sync>;

/// Damaged blocks re-fetched per sync round, at most: a badly damaged file
/// is repaired over several rounds without starving sync itself.
const REPAIRS_PER_ROUND: usize = 16;

/// How often progress is logged during a long sync.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(2);

/// The sync task's handle: wake it when there may be blocks to fetch.
#[derive(Clone, Debug, Default)]
pub struct SyncHandle {
    wake: Arc<Notify>,
}

impl SyncHandle {
    /// Starts a round now (or right after the current one).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// The sync task.
pub struct Syncer {
    chain: Chain,
    chain_service: ChainService,
    peers: Arc<PeerSet>,
    /// Requests for chain data, balanced over the `FULL_NODE` peers.
    service: PeerSetService,
    penalize: Penalizer,
    handle: SyncHandle,
    mempool_fetched: bool,
}

/// What one batch did.
enum Batch {
    /// Blocks were applied (or the tip replaced).
    Progress,
    /// Peers answered but had nothing new.
    UpToDate,
    /// No peer could serve the batch.
    Failed,
}

impl Syncer {
    /// A syncer for `chain` over `peers`.
    pub fn new(
        chain_service: ChainService,
        peers: Arc<PeerSet>,
        penalize: Penalizer,
        handle: SyncHandle,
    ) -> Self {
        let service = peers.service(capabilities::FULL_NODE);
        Syncer {
            chain: chain_service.chain().clone(),
            chain_service,
            peers,
            service,
            penalize,
            handle,
            mempool_fetched: false,
        }
    }

    /// Runs rounds until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SYNC_INTERVAL) => {}
                _ = self.handle.wake.notified() => {}
            }
            if self.peers.is_empty() {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.round() => {}
            }
        }
    }

    /// Fetches batches until the tip reaches what peers have.
    pub async fn round(&mut self) {
        self.repair_damaged().await;
        let started = Instant::now();
        let first = self.chain.tip().height;
        let mut last_log = Instant::now();
        let mut logged = false;
        loop {
            match self.batch().await {
                Batch::Progress => {}
                Batch::UpToDate | Batch::Failed => break,
            }
            let height = self.chain.tip().height;
            let target = self.chain.best_seen();
            self.export(target);
            if last_log.elapsed() >= PROGRESS_LOG_INTERVAL {
                last_log = Instant::now();
                logged = true;
                log_progress(height, target, first, started);
            }
            if height >= target {
                break;
            }
        }
        let height = self.chain.tip().height;
        let target = self.chain.best_seen();
        self.export(target);
        if height > first {
            if logged || height - first >= MAX_BLOCKS_PER_RESPONSE as u64 {
                log_progress(height, target, first, started);
            }
            tracing::info!(height, applied = height - first, "sync round done");
        }
        if !self.mempool_fetched && height >= target {
            self.mempool_fetched = self.fetch_mempool().await;
        }
    }

    fn export(&self, target: u64) {
        metrics::gauge!("timed_sync_target_height").set(target as f64);
        metrics::gauge!("timed_sync_progress").set(self.chain.progress());
    }

    /// One batch, retried on up to [`SYNC_MAX_ATTEMPTS`] peers.
    async fn batch(&mut self) -> Batch {
        let mut tried: HashSet<NodeId> = HashSet::new();
        let mut answered = false;
        for _ in 0..SYNC_MAX_ATTEMPTS {
            let start = self.chain.tip().height + 1;
            let Some(answer) = self.ask(get_blocks(start), &tried).await else {
                break;
            };
            // Peers that failed on the way are not asked again this batch.
            tried.extend(answer.excluded.iter().copied());
            let peer = answer.peer;
            let Response::Blocks(blocks) = answer.response else {
                tried.insert(peer.info.node_id);
                continue;
            };
            answered = true;
            if blocks.blocks.is_empty() && blocks.tip_height >= start {
                // A peer whose tip is past `start` has the block at `start`:
                // an empty answer means the claim is false.
                if crate::logging::allow("sync_false_claim") {
                    tracing::info!(peer = %peer.info.node_id, claimed = blocks.tip_height, start, "peer claims blocks it does not serve");
                }
                (self.penalize)(&peer, Offence::ProtocolViolation);
                tried.insert(peer.info.node_id);
                continue;
            }
            if !blocks.blocks.is_empty() {
                self.chain.saw_height(blocks.tip_height);
            }
            // Signatures are checked on the blocking pool, then the blocks
            // are applied (validation, fsync) on the chain's worker: neither
            // runs on the async workers.
            let applied_batch = apply_batch(&self.chain_service, blocks.blocks.clone()).await;
            let Ok(BatchResult {
                applied,
                unlinked,
                error,
            }) = applied_batch
            else {
                return Batch::Failed;
            };
            let mut bad = false;
            match error {
                Some(ChainError::Store(e)) => {
                    tracing::error!(error = %e, "storage failed during sync");
                    return Batch::Failed;
                }
                Some(e) => {
                    self.bad_data(&peer, &e);
                    bad = true;
                }
                None => {}
            }
            if applied > 0 {
                return Batch::Progress;
            }
            if bad {
                tried.insert(peer.info.node_id);
                continue;
            }
            if unlinked {
                // The peer is on another branch: find where it forks off
                // ours and switch if its branch wins.
                if self.resolve_fork(&peer).await {
                    return Batch::Progress;
                }
                tried.insert(peer.info.node_id);
                continue;
            }
            if blocks.tip_height <= self.chain.tip().height {
                // This peer has nothing more; lower a stale claim.
                self.chain.settle_best_seen(blocks.tip_height);
                return Batch::UpToDate;
            }
            tried.insert(peer.info.node_id);
        }
        // Nobody gave us more: whatever heights were claimed (in versions,
        // gossip or answers), none is backed by blocks we can get now.
        self.chain.settle_best_seen(self.chain.tip().height);
        if answered {
            Batch::UpToDate
        } else {
            Batch::Failed
        }
    }

    /// Asks `peer` for blocks further and further back (1, 2, 4, ... up to
    /// [`MAX_REORG_DEPTH`] below our tip) until its answer links to our
    /// chain, then offers the branch after the fork point to
    /// [`Chain::reorg`]; true if we switched.
    async fn resolve_fork(&self, peer: &PeerHandle) -> bool {
        let tip = self.chain.tip();
        let mut back = 1u64;
        while back <= MAX_REORG_DEPTH.saturating_mul(2) {
            let start = tip.height.saturating_sub(back).max(1);
            let Some(blocks) = self.request(peer, start).await else {
                return false;
            };
            let mut decoded = Vec::with_capacity(blocks.len());
            for raw in &blocks {
                match Chain::decode_block(raw) {
                    Ok(b) => decoded.push(b),
                    Err(e) => {
                        self.bad_data(peer, &ChainError::Block(e));
                        return false;
                    }
                }
            }
            // Skip the blocks we share; the first different one is the fork.
            let mut fork_at = None;
            for (i, block) in decoded.iter().enumerate() {
                let h = block.header.height;
                match self.chain.hash_at(h) {
                    Ok(Some(ours)) if ours == block.hash() => continue,
                    Ok(_) => {
                        fork_at = Some(i);
                        break;
                    }
                    Err(_) => return false,
                }
            }
            let Some(i) = fork_at else {
                // All shared: nothing to resolve here.
                return false;
            };
            let linked = match decoded[i].header.height.checked_sub(1) {
                Some(parent) => {
                    matches!(self.chain.hash_at(parent), Ok(Some(p)) if p == decoded[i].header.prev_hash)
                }
                None => false,
            };
            if !linked {
                if start == 1 {
                    return false;
                }
                back = back.saturating_mul(2);
                continue;
            }
            let branch = decoded.split_off(i);
            let fork = branch[0].header.height;
            let reorged = self
                .chain_service
                .run(move |chain| chain.reorg(branch, "sync"))
                .await
                .and_then(|r| r);
            return match reorged {
                Ok(_) => {
                    tracing::info!(peer = %peer.info.node_id, fork_height = fork, height = self.chain.tip().height, "switched to the peer's branch");
                    true
                }
                Err(e) => {
                    if e.fault().is_some() {
                        self.bad_data(peer, &e);
                    } else {
                        tracing::debug!(peer = %peer.info.node_id, fork_height = fork, error = %e, "kept our branch");
                    }
                    false
                }
            };
        }
        false
    }

    /// One `GetBlocks` from `start` to `peer`; its blocks, or `None`.
    async fn request(&self, peer: &PeerHandle, start: u64) -> Option<Vec<serde_bytes::ByteBuf>> {
        match ask_peer(peer, get_blocks(start)).await {
            Some(Response::Blocks(b)) => {
                if !b.blocks.is_empty() {
                    self.chain.saw_height(b.tip_height);
                }
                Some(b.blocks)
            }
            _ => None,
        }
    }

    /// Sends `request` through the balancer to a `FULL_NODE` peer not in
    /// `exclude` (another one after each failure) and waits for the answer,
    /// at most [`SYNC_REQUEST_DEADLINE`] in all; `None` when no peer
    /// answered.
    async fn ask(&self, request: Request, exclude: &HashSet<NodeId>) -> Option<PeerAnswer> {
        let request = PeerRequest::new(request).excluding(exclude.iter().copied());
        let kind = request.request.kind();
        let answer =
            tokio::time::timeout(SYNC_REQUEST_DEADLINE, self.service.clone().oneshot(request))
                .await;
        match answer {
            Ok(Ok(answer)) => Some(answer),
            Ok(Err(error)) => {
                let timed_out = error
                    .downcast_ref::<PeerSetError>()
                    .is_some_and(PeerSetError::is_timeout);
                // The connection charged a timeout (once); sync charges
                // nothing more.
                if timed_out && crate::logging::allow("sync_timeout") {
                    tracing::info!(kind, %error, "sync request timed out on every peer tried");
                } else {
                    tracing::debug!(kind, %error, "sync request failed");
                }
                None
            }
            Err(_) => {
                tracing::debug!(kind, "no serving peer answered in time");
                None
            }
        }
    }

    fn bad_data(&self, peer: &PeerHandle, error: &ChainError) {
        let offence = error
            .fault()
            .map(Offence::from)
            .unwrap_or(Offence::InvalidData);
        if crate::logging::allow_for("sync_bad_block", error.kind()) {
            tracing::warn!(
                peer = %peer.info.node_id,
                peer.addr = %peer.info.addr,
                error = %error,
                error.kind = error.kind(),
                "peer sent an invalid block during sync; retrying elsewhere"
            );
        }
        (self.penalize)(peer, offence);
    }

    /// Re-fetches stored blocks found damaged (they are never served) from
    /// peers, at most [`REPAIRS_PER_ROUND`] per round; each copy is checked
    /// against the recorded hash and its signatures before it replaces the
    /// damaged one (see [`Chain::repair_block`]).
    async fn repair_damaged(&self) {
        let damaged = self.chain.store().damaged_heights();
        for height in damaged.into_iter().take(REPAIRS_PER_ROUND) {
            let mut tried = HashSet::new();
            for _ in 0..SYNC_MAX_ATTEMPTS {
                let request = Request::GetBlocks(GetBlocks {
                    start: height,
                    count: 1,
                });
                let Some(answer) = self.ask(request, &tried).await else {
                    break;
                };
                tried.extend(answer.excluded.iter().copied());
                let peer = answer.peer;
                tried.insert(peer.info.node_id);
                let Response::Blocks(blocks) = answer.response else {
                    continue;
                };
                let Some(block) = blocks
                    .blocks
                    .first()
                    .and_then(|raw| Chain::decode_block(raw).ok())
                    .filter(|b| b.header.height == height)
                else {
                    // Not there (a shorter chain) or not a block: no fault
                    // of a peer that may simply be behind or on a fork.
                    continue;
                };
                let chain = self.chain.clone();
                let repaired =
                    tokio::task::spawn_blocking(move || chain.repair_block(&block)).await;
                match repaired {
                    Ok(Ok(true)) => {
                        tracing::info!(height, peer = %peer.info.node_id, "damaged block re-fetched from a peer");
                        break;
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(error)) => self.bad_data(&peer, &error),
                    Err(_) => break,
                }
            }
        }
    }

    /// Asks one peer for its mempool and submits what is valid; true once
    /// a peer answered.
    async fn fetch_mempool(&self) -> bool {
        let Some(PeerAnswer {
            peer,
            response: Response::Mempool(txs),
            ..
        }) = self.ask(Request::GetMempool, &HashSet::new()).await
        else {
            return false;
        };
        let mut added = 0usize;
        for raw in txs.iter().take(MAX_MEMPOOL_RESPONSE_TXS) {
            let Ok(tx) = Chain::decode_tx(raw) else {
                (self.penalize)(&peer, Offence::Malformed);
                break;
            };
            if self.chain_service.transaction(tx).await.is_ok() {
                added += 1;
            }
        }
        if added > 0 {
            tracing::info!(peer = %peer.info.node_id, added, "mempool fetched from a peer");
        }
        true
    }
}

/// The `GetBlocks` request for blocks from `start`.
fn get_blocks(start: u64) -> Request {
    Request::GetBlocks(GetBlocks {
        start,
        count: MAX_BLOCKS_PER_RESPONSE as u32,
    })
}

/// Sends `request` to `peer` itself, not through the balancer (the fork
/// search must follow the branch of the peer that showed it), under one
/// attempt timeout ([`PEER_ATTEMPT_TIMEOUT`], never charged; the
/// connection's request timeout charges a slow answer once).
async fn ask_peer(peer: &PeerHandle, request: Request) -> Option<Response> {
    let client = Timeout::new(peer.client.clone(), PEER_ATTEMPT_TIMEOUT);
    match client.oneshot(request).await {
        Ok(response) => Some(response),
        Err(error) => {
            let timed_out = matches!(
                error.downcast_ref::<ClientError>(),
                Some(ClientError::Timeout(_))
            ) || error.is::<tower::timeout::error::Elapsed>();
            if timed_out && crate::logging::allow("sync_timeout") {
                tracing::info!(peer = %peer.info.node_id, "sync request timed out");
            } else {
                tracing::debug!(peer = %peer.info.node_id, %error, "sync request failed");
            }
            None
        }
    }
}

/// What applying one answer did.
struct BatchResult {
    applied: u64,
    unlinked: bool,
    /// Invalid data (or a storage failure) that ended the batch.
    error: Option<ChainError>,
}

impl BatchResult {
    /// Ends the batch on a block the chain refused: the sender is at
    /// fault for invalid data; a race an honest peer can lose (a stale or
    /// competing block) only means the batch does not link.
    fn refused(&mut self, error: ChainError) {
        if error.fault().is_some() {
            self.error = Some(error);
        } else {
            self.unlinked = true;
        }
    }
}

/// Decodes and verifies `raws` (off the async workers), then applies them
/// in order on the chain's worker until one fails or does not link.
async fn apply_batch(
    service: &ChainService,
    raws: Vec<serde_bytes::ByteBuf>,
) -> Result<BatchResult, ChainError> {
    let _in_flight = service.track_blocks();
    let chain = service.chain().clone();
    let (verified, mut first_error): (Vec<VerifiedBlock>, Option<ChainError>) =
        tokio::task::spawn_blocking(move || {
            let mut verified = Vec::with_capacity(raws.len());
            for raw in &raws {
                match Chain::decode_block(raw)
                    .map_err(ChainError::Block)
                    .and_then(|block| chain.verify_block(block))
                {
                    Ok(block) => verified.push(block),
                    Err(e) => return (verified, Some(e)),
                }
            }
            (verified, None)
        })
        .await
        .map_err(|_| ChainError::Stopped)?;
    let mut result = service
        .run(move |chain| {
            let mut result = BatchResult {
                applied: 0,
                unlinked: false,
                error: None,
            };
            for block in verified {
                match chain.handle_verified_block(block, "sync") {
                    Ok(BlockOutcome::Applied | BlockOutcome::ReplacedTip) => result.applied += 1,
                    Ok(BlockOutcome::Known) => {}
                    Ok(BlockOutcome::Ahead) => {
                        result.unlinked = true;
                        return result;
                    }
                    Err(e @ ChainError::Store(_)) => {
                        result.error = Some(e);
                        return result;
                    }
                    Err(e) => {
                        result.refused(e);
                        return result;
                    }
                }
            }
            result
        })
        .await?;
    // A block that failed its signature check ends the batch after the
    // ones before it were applied, as if it had been applied in order.
    if result.error.is_none() && !result.unlinked {
        if let Some(e) = first_error.take() {
            result.refused(e);
        }
    }
    Ok(result)
}

fn log_progress(height: u64, target: u64, first: u64, started: Instant) {
    let elapsed = started.elapsed().as_secs_f64().max(1e-3);
    let percent = if target == 0 {
        100.0
    } else {
        (height as f64 * 100.0 / target as f64).min(100.0)
    };
    tracing::info!(
        height,
        target,
        percent = format!("{percent:.1}"),
        blocks_per_sec = format!("{:.0}", (height - first) as f64 / elapsed),
        "syncing"
    );
}

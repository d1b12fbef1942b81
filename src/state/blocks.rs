//! Blocks: the checks every block passes, fork choice and reorgs, applying
//! blocks to the store and the pool, and producing this node's blocks (see
//! the parent module's docs for the rules).

use super::*;
use crate::chain::verified::VerifiedBlock;

impl Chain {
    /// Decodes a block payload.
    ///
    /// # Errors
    /// [`BlockError::TooLarge`] or [`BlockError::Encoding`].
    pub fn decode_block(bytes: &[u8]) -> Result<Block, BlockError> {
        if bytes.len() > MAX_BLOCK_BYTES {
            return Err(BlockError::TooLarge(bytes.len()));
        }
        encoding::decode_value(bytes).map_err(|e| BlockError::Encoding(e.to_string()))
    }

    /// Checks `block` as a child of `parent` (its hash, height and
    /// timestamp) against the current UTXO set.
    /// The checks that need no parent: version, a timestamp not before the
    /// genesis nor in the future, a height its slot allows (every block is
    /// in a later slot than its parent), the slot's scheduled producer and
    /// its signature. Run on every block first, so that a block ahead of the
    /// tip costs its sender as much as any other forgery and never moves the
    /// sync target.
    fn check_header(&self, block: &Block) -> Result<(), BlockError> {
        let header = &block.header;
        if header.version != 1 {
            return Err(BlockError::Version(header.version));
        }
        let genesis = &self.inner.genesis;
        if header.timestamp < genesis.timestamp {
            return Err(BlockError::Timestamp("before the genesis"));
        }
        if header.timestamp > now_secs() + MAX_BLOCK_FUTURE_DRIFT_SECS {
            return Err(BlockError::Timestamp("in the future"));
        }
        let slot = genesis.slot(header.timestamp);
        if header.height > slot {
            return Err(BlockError::Timestamp("height beyond what its slot allows"));
        }
        if genesis.producer(slot) != Some(&header.producer) {
            return Err(BlockError::WrongProducer { slot });
        }
        let key = PublicKey::from_bytes(SignatureScheme::Ed25519, &header.producer)
            .map_err(|_| BlockError::Signature)?;
        let signature = Signature::from_bytes(SignatureScheme::Ed25519, &header.signature)
            .map_err(|_| BlockError::Signature)?;
        key.verify(&header.signing_digest(self.inner.magic), &signature)
            .map_err(|_| BlockError::Signature)
    }

    /// [`Chain::check_header`], then [`Chain::validate_body`].
    fn validate_block(&self, block: &Block, parent: &Tip) -> Result<(), BlockError> {
        self.check_header(block)?;
        self.validate_body(block, parent, true)
    }

    /// The checks that need the parent and the UTXO set, for a block whose
    /// header passed [`Chain::check_header`].
    fn validate_body(
        &self,
        block: &Block,
        parent: &Tip,
        check_signatures: bool,
    ) -> Result<(), BlockError> {
        let header = &block.header;
        let size = encoding::encode_value(block).map_or(usize::MAX, |b| b.len());
        if size > MAX_BLOCK_BYTES {
            return Err(BlockError::TooLarge(size));
        }
        if header.height != parent.height + 1 || header.prev_hash != parent.hash {
            return Err(BlockError::Linkage {
                height: header.height,
            });
        }
        let genesis = &self.inner.genesis;
        if genesis.slot(header.timestamp) <= genesis.slot(parent.timestamp) {
            return Err(BlockError::Timestamp("slot not after the parent's"));
        }
        if !block.merkle_matches() {
            return Err(BlockError::MerkleRoot);
        }
        let mut overlay = Overlay::new(&self.inner.store);
        let mut txids = HashSet::with_capacity(block.transactions.len());
        for (index, tx) in block.transactions.iter().enumerate() {
            let txid = tx.txid();
            let repeated =
                !txids.insert(txid) || matches!(self.inner.store.tx_height(&txid), Ok(Some(_)));
            if repeated || tx.inputs.iter().any(|i| overlay.spent.contains(&i.prevout)) {
                return Err(BlockError::DoubleSpend { index });
            }
            tx.validate_with(self.inner.magic, &overlay, check_signatures)
                .map_err(|error| BlockError::Transaction { index, error })?;
            overlay.apply(tx);
        }
        Ok(())
    }

    /// Handles a block from a peer (gossip or sync).
    ///
    /// # Errors
    /// An invalid or stale block; nothing is stored then.
    pub fn handle_block(
        &self,
        block: Block,
        source: &'static str,
    ) -> Result<BlockOutcome, ChainError> {
        let block = self.verify_block(block)?;
        self.handle_verified_block(block, source)
    }

    /// Checks what a block can be checked for without the chain state: its
    /// header (slot, producer, the producer's signature; cheap, so first)
    /// and then every input signature of its transactions, in parallel.
    /// Needs no lock: run it before handing the block to the state.
    ///
    /// # Errors
    /// The header's flaw, or the first transaction with a bad signature.
    pub fn verify_block(&self, block: Block) -> Result<VerifiedBlock, ChainError> {
        self.verify_header(&block)?;
        self.verify_transactions(block)
    }

    /// The header part of [`Chain::verify_block`]: slot, producer and the
    /// producer's signature (one check). Needs no lock.
    ///
    /// # Errors
    /// The header's flaw.
    pub fn verify_header(&self, block: &Block) -> Result<(), ChainError> {
        self.check_header(block)
            .inspect_err(Self::count_rejected)
            .map_err(ChainError::from)
    }

    /// The transaction part of [`Chain::verify_block`], for a block whose
    /// header passed [`Chain::verify_header`].
    ///
    /// # Errors
    /// The first transaction with a bad signature.
    pub fn verify_transactions(&self, block: Block) -> Result<VerifiedBlock, ChainError> {
        VerifiedBlock::verify(block, self.inner.magic).map_err(|(index, error)| {
            let e = BlockError::Transaction { index, error };
            Self::count_rejected(&e);
            e.into()
        })
    }

    /// [`Chain::handle_block`] for a block whose transaction signatures
    /// were verified before the state was locked.
    ///
    /// # Errors
    /// As [`Chain::handle_block`].
    pub fn handle_verified_block(
        &self,
        verified: VerifiedBlock,
        source: &'static str,
    ) -> Result<BlockOutcome, ChainError> {
        let signatures_checked = verified.magic() == self.inner.magic;
        let block = verified.into_inner();
        self.check_header(&block)
            .inspect_err(Self::count_rejected)?;
        let mut state = self.state();
        let tip = state.tip;
        let height = block.header.height;
        if height > tip.height + 1 {
            self.saw_height(height);
            return Ok(BlockOutcome::Ahead);
        }
        let hash = block.hash();
        if height == tip.height + 1 {
            if block.header.prev_hash != tip.hash {
                // Maybe it extends a competitor of our tip we have not seen.
                if height >= 2 {
                    self.saw_height(height);
                    return Ok(BlockOutcome::Ahead);
                }
                return Err(BlockError::Linkage { height }.into());
            }
            // The header was checked above.
            self.validate_body(&block, &tip, !signatures_checked)
                .inspect_err(Self::count_rejected)?;
            self.apply_locked(&mut state, &block, source)?;
            return Ok(BlockOutcome::Applied);
        }
        if self.inner.store.height_of(&hash)?.is_some() {
            return Ok(BlockOutcome::Known);
        }
        if height == tip.height && height > 0 {
            return self.compete_locked(&mut state, block, source);
        }
        Err(BlockError::Stale {
            height,
            tip: tip.height,
        }
        .into())
    }

    fn count_rejected(e: &BlockError) {
        metrics::counter!("timed_blocks_rejected_total", "reason" => e.kind()).increment(1);
    }

    /// A block at the tip's height: it replaces the tip if it wins.
    fn compete_locked(
        &self,
        state: &mut State,
        block: Block,
        source: &'static str,
    ) -> Result<BlockOutcome, ChainError> {
        self.reorg_locked(state, vec![block], source)
    }

    /// Replaces a damaged stored block (see
    /// [`crate::storage::Store::damaged_heights`]) with `block` from a peer,
    /// if it is the block our chain holds at its height: the store checks
    /// the recorded hash and the merkle root; the signatures, which neither
    /// covers, are checked here first. Returns whether it was written.
    ///
    /// # Errors
    /// The block's own flaw (a bad producer or input signature) or a
    /// storage error.
    pub fn repair_block(&self, block: &Block) -> Result<bool, ChainError> {
        if block.header.height == 0 {
            // Our genesis is built from the config, not taken from a peer.
            let genesis = self.inner.genesis.block();
            return Ok(self.inner.store.repair_block(&genesis)?);
        }
        self.check_header(block)?;
        for (index, tx) in block.transactions.iter().enumerate() {
            tx.verify_signatures(self.inner.magic)
                .map_err(|error| BlockError::Transaction { index, error })?;
        }
        Ok(self.inner.store.repair_block(block)?)
    }

    /// The hash of our block at `height`.
    ///
    /// # Errors
    /// A storage error.
    pub fn hash_at(&self, height: u64) -> Result<Option<BlockHash>, ChainError> {
        Ok(self.inner.store.block(height)?.map(|b| b.hash()))
    }

    /// Switches to `branch` (consecutive blocks whose first one forks off our
    /// chain) when it wins by the fork-choice rule; see the module docs.
    ///
    /// # Errors
    /// [`BlockError::Stale`] when our chain wins or the fork is deeper than
    /// [`MAX_REORG_DEPTH`]; the error of an invalid branch block (our
    /// chain is restored then); a storage error.
    pub fn reorg(
        &self,
        branch: Vec<Block>,
        source: &'static str,
    ) -> Result<BlockOutcome, ChainError> {
        let mut state = self.state();
        self.reorg_locked(&mut state, branch, source)
    }

    fn reorg_locked(
        &self,
        state: &mut State,
        branch: Vec<Block>,
        source: &'static str,
    ) -> Result<BlockOutcome, ChainError> {
        let tip = state.tip;
        let store = &self.inner.store;
        let Some(first) = branch.first() else {
            return Ok(BlockOutcome::Known);
        };
        let fork = first.header.height;
        let stale = || -> ChainError {
            let e = BlockError::Stale {
                height: fork,
                tip: tip.height,
            };
            Self::count_rejected(&e);
            e.into()
        };
        if fork == 0 || fork > tip.height || tip.height - fork + 1 > MAX_REORG_DEPTH {
            return Err(stale());
        }
        let Some(parent_block) = store.block(fork - 1)? else {
            return Err(stale());
        };
        if first.header.prev_hash != parent_block.hash() {
            return Err(stale());
        }
        let Some(ours) = store.block(fork)? else {
            return Err(stale());
        };
        if ours.hash() == first.hash() {
            return Ok(BlockOutcome::Known);
        }
        // Longer wins; at equal length the first differing block decides:
        // earlier slot, then lower hash.
        let new_height = fork + branch.len() as u64 - 1;
        let genesis = &self.inner.genesis;
        let rank = |b: &Block| (genesis.slot(b.header.timestamp), b.hash());
        let wins =
            new_height > tip.height || (new_height == tip.height && rank(first) < rank(&ours));
        if !wins {
            return Err(stale());
        }
        // Roll back to the fork's parent, keeping what we remove.
        let mut removed = Vec::new();
        while state.tip.height >= fork {
            let block = store.rollback_tip()?;
            let height = block.header.height;
            let prev = store
                .block(height - 1)?
                .map_or(genesis.timestamp, |b| b.header.timestamp);
            self.set_tip(
                state,
                Tip {
                    height: height - 1,
                    hash: block.header.prev_hash,
                    timestamp: prev,
                },
            );
            removed.push(block);
        }
        removed.reverse();
        let mut applied = 0usize;
        let mut failure = None;
        for block in &branch {
            if let Err(e) = self.validate_block(block, &state.tip) {
                Self::count_rejected(&e);
                failure = Some(ChainError::Block(e));
                break;
            }
            if let Err(e) = self.apply_locked(state, block, source) {
                failure = Some(e);
                break;
            }
            applied += 1;
        }
        if let Some(error) = failure {
            // Put our chain back: it was valid.
            for _ in 0..applied {
                store.rollback_tip()?;
            }
            for block in &removed {
                store.apply_block(block)?;
            }
            self.set_tip(state, tip);
            metrics::gauge!("timed_chain_height").set(tip.height as f64);
            return Err(error);
        }
        tracing::warn!(
            fork_height = fork,
            old_tip = %hex::encode(tip.hash),
            new_tip = %hex::encode(state.tip.hash),
            rolled_back = removed.len(),
            applied,
            "switched to a better chain"
        );
        metrics::counter!("timed_tip_replacements_total").increment(1);
        // Transactions of the abandoned blocks go back to the pool when
        // still valid.
        for tx in removed.into_iter().flat_map(|b| b.transactions) {
            let _ = self.resubmit_locked(state, tx);
        }
        // Pooled transactions that spent outputs of the abandoned blocks
        // that did not come back are invalid now.
        let invalid = self.revalidate_pool(state);
        if invalid > 0 {
            tracing::info!(invalid, "pooled transactions invalidated by the reorg");
        }
        self.update_mempool_gauges(state);
        Ok(BlockOutcome::ReplacedTip)
    }

    fn apply_locked(
        &self,
        state: &mut State,
        block: &Block,
        source: &'static str,
    ) -> Result<(), ChainError> {
        self.inner.store.apply_block(block)?;
        let hash = block.hash();
        self.set_tip(
            state,
            Tip {
                height: block.header.height,
                hash,
                timestamp: block.header.timestamp,
            },
        );
        let mut confirmed = Vec::new();
        let mut orphans_of_confirmed = Vec::new();
        for tx in &block.transactions {
            let txid = tx.txid();
            if state.mempool.get(&txid).is_some() {
                confirmed.push(txid);
                orphans_of_confirmed.extend(state.mempool.children_of(&txid));
            } else {
                // Never pooled here: forget its votes all the same.
                state.first_seen.remove(&txid);
                state.votes.forget(&txid);
            }
            if let Some(v) = state.pending_votes.remove(&txid) {
                state.pending_count = state.pending_count.saturating_sub(v.len());
            }
        }
        let conflicts = state.mempool.remove_block(&block.transactions);
        self.dropped_from_pool(state, &confirmed);
        self.dropped_from_pool(state, &conflicts);
        // A child waiting for this parent's finality may be final now.
        for child in orphans_of_confirmed {
            self.try_finalize(state, child);
        }
        self.update_mempool_gauges(state);
        metrics::gauge!("timed_chain_height").set(block.header.height as f64);
        metrics::counter!("timed_blocks_applied_total", "source" => source).increment(1);
        tracing::debug!(
            height = block.header.height,
            hash = %hex::encode(hash),
            txs = block.transactions.len(),
            source,
            "block applied"
        );
        Ok(())
    }

    /// Produces, applies and publishes this slot's block when this node is
    /// its producer and has not produced it yet; returns it.
    ///
    /// # Errors
    /// A storage error.
    pub fn produce_if_scheduled(&self, now: u64) -> Result<Option<Block>, ChainError> {
        if !self.inner.masternode {
            return Ok(None);
        }
        let genesis = &self.inner.genesis;
        let slot = genesis.slot(now);
        if genesis.producer(slot) != Some(&self.own_key()) {
            return Ok(None);
        }
        let mut state = self.state();
        let tip = state.tip;
        if now < genesis.timestamp
            || slot <= genesis.slot(tip.timestamp)
            || state.last_produced_slot == Some(slot)
        {
            return Ok(None);
        }
        // Final transactions, parents before children, then highest fee
        // rate first, each valid after the ones before it (a child whose
        // parent did not fit is skipped by that check).
        let candidates: Vec<Transaction> = state
            .mempool
            .txids_parents_first()
            .into_iter()
            .filter(|id| state.final_txs.contains(id))
            .filter_map(|id| state.mempool.get(&id).map(|e| e.tx.clone()))
            .collect();
        let mut overlay = Overlay::new(&self.inner.store);
        let mut transactions = Vec::new();
        let mut bytes = 512usize;
        for tx in candidates {
            let size = tx.size();
            if bytes + size > MAX_BLOCK_BYTES {
                continue;
            }
            if tx.validate(self.inner.magic, &overlay).is_ok() {
                overlay.apply(&tx);
                bytes += size;
                transactions.push(tx);
            }
        }
        let block = Block::produce(
            &self.inner.identity,
            self.inner.magic,
            (tip.hash, tip.height),
            now,
            transactions,
        );
        state.last_produced_slot = Some(slot);
        self.apply_locked(&mut state, &block, "produced")?;
        drop(state);
        tracing::info!(
            height = block.header.height,
            slot,
            txs = block.transactions.len(),
            hash = %hex::encode(block.hash()),
            "block produced"
        );
        if let Ok(bytes) = encoding::encode_value(&block) {
            self.publish(ItemKind::Block, bytes);
        }
        Ok(Some(block))
    }
}

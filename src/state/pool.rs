//! Transactions, votes and finality: the pool side of [`Chain`].
//!
//! # Finality of chained transactions
//! A pooled transaction may spend outputs of other pooled transactions (see
//! [`crate::chain::mempool`]). It is final when masternodes holding 2/3 of
//! the weight accepted it **and** every pooled parent is final: a child of a
//! payment that may still lose to a double spend can never be final before
//! that payment is. Reaching 2/3 first only marks it final by votes; it
//! becomes final when its last parent does (or is confirmed by a block).
//!
//! # Durability
//! Every change of the pool goes to the journal ([`super::journal`]). A
//! transaction is reported final ([`Chain::tally`]) only once the votes
//! that made it final are on disk, and the RPC returns a payment's id only
//! once the payment is; see README "What final means".

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use super::ItemKind;
use super::{Chain, ChainError, FinalityRecord, State, Tally, VoteHandled};
use crate::chain::address::Address;
use crate::chain::mempool::MempoolError;
use crate::chain::transaction::{OutPoint, Transaction, TxOut, Txid, UtxoView};
use crate::chain::verified::VerifiedTx;
use crate::chain::votes::{Verdict, Vote, VoteError, VoteOutcome};
use crate::constants::MAX_PENDING_VOTES;
use crate::encoding;
use crate::storage::{PoolOp, Store};

/// Most finality records kept for `gettransaction` after a transaction left
/// the vote book.
const MAX_FINALITY_RECORDS: usize = 10_000;

/// The UTXO set as the mempool sees it: confirmed outputs and the outputs
/// of pooled transactions (whether another pooled transaction spends one is
/// the mempool's conflict check).
pub(crate) struct PoolView<'a> {
    pub(crate) store: &'a Store,
    pub(crate) state: &'a State,
}

impl UtxoView for PoolView<'_> {
    fn utxo(&self, outpoint: &OutPoint) -> Option<TxOut> {
        self.store
            .utxo(outpoint)
            .or_else(|| self.state.mempool.output(outpoint))
    }
}

/// How far a wallet may trust an output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CoinStatus {
    /// In a block.
    Confirmed,
    /// Created by a pooled transaction that is final.
    Final,
    /// Change of the owner's own pooled transaction (every input of it was
    /// the owner's): nobody else can double-spend it.
    OwnChange,
    /// Created by someone else's pooled transaction that is not final yet.
    Pending,
}

impl CoinStatus {
    /// A short stable name, for the RPC.
    pub fn as_str(self) -> &'static str {
        match self {
            CoinStatus::Confirmed => "confirmed",
            CoinStatus::Final => "final",
            CoinStatus::OwnChange => "own_change",
            CoinStatus::Pending => "pending",
        }
    }

    /// True when the owner may spend it now.
    pub fn spendable(self) -> bool {
        self != CoinStatus::Pending
    }
}

/// An unspent output of an address (not spent by a pooled transaction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coin {
    /// Where it is.
    pub outpoint: OutPoint,
    /// What it holds.
    pub output: TxOut,
    /// How far it can be trusted.
    pub status: CoinStatus,
}

/// `txs` ordered so that every transaction comes after those of `txs` it
/// spends from (depth-first over the parents, iteratively).
fn parents_first(mut txs: HashMap<Txid, Transaction>) -> Vec<Transaction> {
    let mut ids: Vec<Txid> = txs.keys().copied().collect();
    ids.sort_unstable();
    let mut out = Vec::with_capacity(txs.len());
    for root in ids {
        // (txid, parents already pushed on the stack)
        let mut stack = vec![(root, false)];
        while let Some((id, expanded)) = stack.pop() {
            if !txs.contains_key(&id) {
                continue;
            }
            if expanded {
                if let Some(tx) = txs.remove(&id) {
                    out.push(tx);
                }
                continue;
            }
            stack.push((id, true));
            if let Some(tx) = txs.get(&id) {
                for input in &tx.inputs {
                    if txs.contains_key(&input.prevout.txid) {
                        stack.push((input.prevout.txid, false));
                    }
                }
            }
        }
    }
    out
}

impl Chain {
    /// Decodes a transaction payload.
    ///
    /// # Errors
    /// [`ChainError::Encoding`].
    pub fn decode_tx(bytes: &[u8]) -> Result<Transaction, ChainError> {
        encoding::decode_value(bytes).map_err(|e| ChainError::Encoding {
            what: "transaction",
            message: e.to_string(),
        })
    }

    /// Decodes a vote payload.
    ///
    /// # Errors
    /// [`ChainError::Encoding`].
    pub fn decode_vote(bytes: &[u8]) -> Result<Vote, ChainError> {
        encoding::decode_value(bytes).map_err(|e| ChainError::Encoding {
            what: "vote",
            message: e.to_string(),
        })
    }

    /// Validates `tx` (against the confirmed outputs and those of pooled
    /// transactions) and adds it to the mempool; a masternode votes on it.
    /// Returns its id and fee.
    ///
    /// # Errors
    /// Why it was refused; nothing changed then (except that a masternode
    /// votes `Reject` on a valid transaction conflicting with one pooled).
    pub fn submit_tx(&self, tx: Transaction) -> Result<(Txid, u64), ChainError> {
        match VerifiedTx::verify(tx, self.inner.magic) {
            Ok(tx) => self.submit_verified(tx),
            Err(e) => {
                metrics::counter!("timed_transactions_total", "result" => e.kind()).increment(1);
                Err(e.into())
            }
        }
    }

    /// [`Chain::submit_tx`] for a transaction whose signatures were
    /// verified before the state was locked.
    ///
    /// # Errors
    /// As [`Chain::submit_tx`].
    pub fn submit_verified(&self, verified: VerifiedTx) -> Result<(Txid, u64), ChainError> {
        let tx = verified.tx();
        let txid = tx.txid();
        let mut state = self.state();
        if state.mempool.get(&txid).is_some() {
            return Err(MempoolError::Duplicate.into());
        }
        if self.inner.store.tx_height(&txid)?.is_some() {
            return Err(ChainError::AlreadyInChain);
        }
        let view = PoolView {
            store: &self.inner.store,
            state: &state,
        };
        let fee = match verified.validate(self.inner.magic, &view) {
            Ok(fee) => fee,
            Err(e) => {
                metrics::counter!("timed_transactions_total", "result" => e.kind()).increment(1);
                return Err(e.into());
            }
        };
        let tx = verified.into_inner();
        let own_vote = match self.pool_locked(&mut state, tx.clone(), fee) {
            Ok(vote) => vote,
            Err(e) => {
                metrics::counter!("timed_transactions_total", "result" => e.kind()).increment(1);
                if matches!(e, MempoolError::Conflict(_)) {
                    // Remember its inputs: a masternode accepting it after
                    // accepting the pooled one equivocates.
                    Self::remember_conflict(&mut state, txid, &tx);
                    if self.inner.masternode {
                        let vote = Vote {
                            txid,
                            verdict: Verdict::Reject,
                        };
                        let _ = self.record_vote_locked(&mut state, self.own_key(), vote);
                        drop(state);
                        self.publish_vote(vote);
                    }
                }
                return Err(e.into());
            }
        };
        metrics::counter!("timed_transactions_total", "result" => "accepted").increment(1);
        self.update_mempool_gauges(&state);
        drop(state);
        if let Some(vote) = own_vote {
            self.publish_vote(vote);
        }
        tracing::debug!(txid = %hex::encode(txid), fee, "transaction accepted");
        Ok((txid, fee))
    }

    pub(super) fn own_key(&self) -> [u8; 32] {
        *self.inner.identity.public_key().as_bytes()
    }

    pub(super) fn publish_vote(&self, vote: Vote) {
        if let Ok(bytes) = encoding::encode_value(&vote) {
            self.publish(ItemKind::Vote, bytes);
        }
    }

    pub(super) fn update_mempool_gauges(&self, state: &State) {
        metrics::gauge!("timed_mempool_transactions").set(state.mempool.len() as f64);
        metrics::gauge!("timed_mempool_bytes").set(state.mempool.bytes() as f64);
    }

    /// Handles `vote` signed by `voter` (the envelope's verified originator).
    ///
    /// # Errors
    /// Not a masternode, or a duplicate vote.
    pub fn handle_vote(&self, voter: [u8; 32], vote: Vote) -> Result<VoteHandled, ChainError> {
        let mut state = self.state();
        if state.votes.masternodes().tier(&voter).is_none() {
            metrics::counter!("timed_votes_total", "result" => "not_masternode").increment(1);
            return Err(VoteError::NotMasternode.into());
        }
        self.record_vote_locked(&mut state, voter, vote)
    }

    pub(super) fn record_vote_locked(
        &self,
        state: &mut State,
        voter: [u8; 32],
        vote: Vote,
    ) -> Result<VoteHandled, ChainError> {
        let pooled = state.mempool.get(&vote.txid).map(|e| {
            e.tx.inputs
                .iter()
                .map(|i| i.prevout)
                .collect::<Vec<OutPoint>>()
        });
        let is_pooled = pooled.is_some();
        let Some(inputs) = pooled.or_else(|| state.conflicts.get(&vote.txid).cloned()) else {
            if self.inner.store.tx_height(&vote.txid)?.is_some() {
                metrics::counter!("timed_votes_total", "result" => "late").increment(1);
                return Ok(VoteHandled::Late);
            }
            return self.hold_vote(state, voter, vote);
        };
        match state.votes.record(voter, vote, &inputs) {
            Ok(outcome) => {
                let label = match outcome {
                    VoteOutcome::Counted => "counted",
                    VoteOutcome::Finalized => "finalized",
                    VoteOutcome::Conflicted => "conflicted",
                };
                metrics::counter!("timed_votes_total", "result" => label).increment(1);
                if is_pooled {
                    self.inner.journal.append(PoolOp::Vote {
                        txid: vote.txid,
                        voter,
                        verdict: vote.verdict,
                    });
                }
                if outcome == VoteOutcome::Finalized {
                    self.try_finalize(state, vote.txid);
                }
                Ok(VoteHandled::Counted(outcome))
            }
            Err(VoteError::Equivocation { first }) => {
                metrics::counter!("timed_votes_total", "result" => "equivocation").increment(1);
                tracing::warn!(
                    voter = %hex::encode(voter),
                    first = %hex::encode(first),
                    second = %hex::encode(vote.txid),
                    "masternode equivocation: accepted two transactions spending one output"
                );
                Ok(VoteHandled::Equivocation)
            }
            Err(VoteError::Duplicate) => {
                // Seen before (e.g. re-announced after a restart): nothing
                // new, no fault.
                metrics::counter!("timed_votes_total", "result" => "duplicate").increment(1);
                Ok(VoteHandled::Duplicate)
            }
            Err(e) => {
                metrics::counter!("timed_votes_total", "result" => e.kind()).increment(1);
                Err(e.into())
            }
        }
    }

    fn hold_vote(
        &self,
        state: &mut State,
        voter: [u8; 32],
        vote: Vote,
    ) -> Result<VoteHandled, ChainError> {
        let held = state.pending_votes.entry(vote.txid).or_default();
        if held.iter().any(|(v, _)| *v == voter) {
            metrics::counter!("timed_votes_total", "result" => "duplicate").increment(1);
            return Ok(VoteHandled::Duplicate);
        }
        if held.is_empty() {
            state.pending_order.push_back(vote.txid);
        }
        held.push((voter, vote));
        state.pending_count += 1;
        while state.pending_count > MAX_PENDING_VOTES {
            let Some(old) = state.pending_order.pop_front() else {
                break;
            };
            if let Some(v) = state.pending_votes.remove(&old) {
                state.pending_count = state.pending_count.saturating_sub(v.len());
            }
        }
        metrics::counter!("timed_votes_total", "result" => "pending").increment(1);
        Ok(VoteHandled::Pending)
    }

    /// Makes `txid` final if it is final by votes and every pooled parent
    /// is final, then tries its children (their last parent may just have
    /// become final).
    pub(super) fn try_finalize(&self, state: &mut State, txid: Txid) {
        let mut queue = VecDeque::from([txid]);
        while let Some(id) = queue.pop_front() {
            if state.final_txs.contains(&id) || !state.votes.is_final(&id) {
                continue;
            }
            let Some(entry) = state.mempool.get(&id) else {
                continue;
            };
            let parents = state.mempool.parents_of(&entry.tx);
            if parents.iter().any(|p| !state.final_txs.contains(p)) {
                continue;
            }
            self.finalized(state, id);
            queue.extend(state.mempool.children_of(&id));
        }
    }

    fn finalized(&self, state: &mut State, txid: Txid) {
        let secs = state
            .first_seen
            .get(&txid)
            .map(|t| t.elapsed().as_secs_f64());
        if let Some(s) = secs {
            metrics::histogram!("timed_finality_seconds").record(s);
        }
        metrics::counter!("timed_txs_finalized_total").increment(1);
        state.final_txs.insert(txid);
        let (accept, reject, voters) = state.votes.tally(&txid);
        if state.finality_order.len() >= MAX_FINALITY_RECORDS {
            if let Some(old) = state.finality_order.pop_front() {
                state.finality.remove(&old);
            }
        }
        state.finality_order.push_back(txid);
        state.finality.insert(
            txid,
            FinalityRecord {
                tally: Tally {
                    accept,
                    reject,
                    voters,
                    finalized: true,
                    finality_secs: secs,
                },
                // The votes that made it final are in the journal up to here.
                seq: self.inner.journal.last(),
            },
        );
        if crate::logging::allow("tx_final") {
            tracing::info!(
                txid = %hex::encode(txid),
                accept,
                voters,
                finality_ms = secs.map(|s| (s * 1000.0) as u64),
                "transaction final"
            );
        }
    }

    /// The votes on `txid`. `finalized` is true only once the votes that
    /// made it final are durable (see the module docs).
    pub fn tally(&self, txid: &Txid) -> Tally {
        let state = self.state();
        let durable = self.inner.journal.durable();
        let (accept, reject, voters) = state.votes.tally(txid);
        let recorded = state
            .finality
            .get(txid)
            .filter(|r| r.seq <= durable)
            .map(|r| r.tally);
        match recorded {
            Some(mut t) if voters <= t.voters => {
                t.finalized = true;
                t
            }
            _ => Tally {
                accept,
                reject,
                voters,
                finalized: recorded.is_some(),
                finality_secs: recorded.and_then(|r| r.finality_secs),
            },
        }
    }

    /// The total vote weight.
    pub fn total_weight(&self) -> u64 {
        self.state().votes.masternodes().total_weight()
    }

    /// Equivocations seen so far.
    pub fn equivocations(&self) -> usize {
        self.state().votes.equivocations().len()
    }

    /// Remembers (bounded) the inputs of a transaction refused as a
    /// conflict, so that votes on it are still checked for equivocation.
    fn remember_conflict(state: &mut State, txid: Txid, tx: &Transaction) {
        if state.conflicts.contains_key(&txid) {
            return;
        }
        if state.conflict_order.len() >= MAX_FINALITY_RECORDS {
            if let Some(old) = state.conflict_order.pop_front() {
                state.conflicts.remove(&old);
            }
        }
        state.conflict_order.push_back(txid);
        state
            .conflicts
            .insert(txid, tx.inputs.iter().map(|i| i.prevout).collect());
    }

    /// Puts a transaction of an abandoned block back in the pool; a
    /// masternode votes on it again (every node forgot its votes when the
    /// block was applied), so it can be final and in a block again.
    pub(super) fn resubmit_locked(
        &self,
        state: &mut State,
        tx: Transaction,
    ) -> Result<(), ChainError> {
        let txid = tx.txid();
        if self.inner.store.tx_height(&txid)?.is_some() {
            return Ok(());
        }
        let view = PoolView {
            store: &self.inner.store,
            state,
        };
        let fee = tx.validate(self.inner.magic, &view)?;
        if let Some(vote) = self.pool_locked(state, tx, fee)? {
            self.publish_vote(vote);
        }
        Ok(())
    }

    /// Adds a validated `tx` to the pool (never evicting a final one),
    /// journals it, counts the votes held for it and, on a masternode,
    /// records its own Accept; returns that vote for the caller to publish.
    pub(super) fn pool_locked(
        &self,
        state: &mut State,
        tx: Transaction,
        fee: u64,
    ) -> Result<Option<Vote>, MempoolError> {
        let txid = tx.txid();
        let bytes = encoding::encode_value(&tx).unwrap_or_default();
        let st = &mut *state;
        let evicted = st
            .mempool
            .insert_protecting(tx, fee, |id| st.final_txs.contains(id))?;
        self.dropped_from_pool(state, &evicted);
        self.inner.journal.append(PoolOp::AddTx { txid, bytes });
        state.first_seen.insert(txid, Instant::now());
        let held = state.pending_votes.remove(&txid).unwrap_or_default();
        state.pending_count = state.pending_count.saturating_sub(held.len());
        let own = self.inner.masternode.then_some(Vote {
            txid,
            verdict: Verdict::Accept,
        });
        for (voter, vote) in own.map(|v| (self.own_key(), v)).into_iter().chain(held) {
            let _ = self.record_vote_locked(state, voter, vote);
        }
        // A transaction can be final by votes held before it arrived, with
        // its parents final already.
        self.try_finalize(state, txid);
        Ok(own)
    }

    /// Forgets everything about transactions that left the pool (they are
    /// no longer in `state.mempool`) and journals their removal.
    pub(super) fn dropped_from_pool(&self, state: &mut State, ids: &[Txid]) {
        for id in ids {
            state.first_seen.remove(id);
            state.votes.forget(id);
            state.final_txs.remove(id);
            self.inner.journal.append(PoolOp::RemoveTx { txid: *id });
        }
    }

    /// Removes pooled transactions (with their descendants) that spend an
    /// output that is neither confirmed nor created by another pooled
    /// transaction any more (after a reorg); returns how many.
    pub(super) fn revalidate_pool(&self, state: &mut State) -> usize {
        let mut removed = Vec::new();
        for txid in state.mempool.txids_parents_first() {
            let Some(entry) = state.mempool.get(&txid) else {
                continue;
            };
            let view = PoolView {
                store: &self.inner.store,
                state,
            };
            let missing = entry
                .tx
                .inputs
                .iter()
                .any(|i| view.utxo(&i.prevout).is_none());
            if missing {
                removed.extend(state.mempool.remove_with_descendants(&txid));
            }
        }
        self.dropped_from_pool(state, &removed);
        removed.len()
    }

    /// Loads the pool the store kept (after a restart): every transaction
    /// is validated again, parents first; those confirmed meanwhile or no
    /// longer valid are dropped (and deleted from the store), then the
    /// stored votes are counted again. Returns `(restored, dropped)`.
    pub(super) fn restore_pool(&self) -> Result<(usize, usize), ChainError> {
        let stored = self.inner.store.load_pool()?;
        let mut state = self.state();
        let mut stored_txs: HashMap<Txid, Transaction> = HashMap::new();
        for bytes in &stored.transactions {
            match Self::decode_tx(bytes) {
                Ok(tx) => {
                    stored_txs.insert(tx.txid(), tx);
                }
                Err(error) => {
                    tracing::warn!(%error, "dropping an undecodable stored mempool transaction");
                }
            }
        }
        // One pass, parents first: a child whose parent was dropped then
        // fails with a missing input and is dropped too.
        let mut dropped: Vec<Txid> = Vec::new();
        let mut restored = 0usize;
        for tx in parents_first(stored_txs) {
            let txid = tx.txid();
            if self.inner.store.tx_height(&txid)?.is_some() {
                dropped.push(txid);
                continue;
            }
            let view = PoolView {
                store: &self.inner.store,
                state: &state,
            };
            let Ok(fee) = tx.validate(self.inner.magic, &view) else {
                dropped.push(txid);
                continue;
            };
            let st = &mut *state;
            match st
                .mempool
                .insert_protecting(tx, fee, |id| st.final_txs.contains(id))
            {
                Ok(evicted) => {
                    dropped.extend(evicted);
                    state.first_seen.insert(txid, Instant::now());
                    restored += 1;
                }
                Err(_) => dropped.push(txid),
            }
        }
        // Votes: counted again, silently (their journal rows exist).
        let mut finalized = HashSet::new();
        for (txid, voter, verdict) in stored.votes {
            let Some(entry) = state.mempool.get(&txid) else {
                continue;
            };
            let inputs: Vec<OutPoint> = entry.tx.inputs.iter().map(|i| i.prevout).collect();
            if let Ok(VoteOutcome::Finalized) =
                state.votes.record(voter, Vote { txid, verdict }, &inputs)
            {
                finalized.insert(txid);
            }
        }
        for txid in state.mempool.txids_parents_first() {
            if finalized.contains(&txid) {
                self.try_finalize(&mut state, txid);
            }
        }
        let dropped_count = dropped.len();
        for id in dropped {
            self.inner.journal.append(PoolOp::RemoveTx { txid: id });
        }
        self.update_mempool_gauges(&state);
        Ok((restored, dropped_count))
    }

    /// What to announce to a peer that just connected: the pooled
    /// transactions, parents first, and (on a masternode) this node's own
    /// votes on them, within `max_txs` transactions and `max_bytes`.
    pub fn announcements(&self, max_txs: usize, max_bytes: usize) -> Vec<(ItemKind, Vec<u8>)> {
        let state = self.state();
        let own = self.own_key();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for txid in state
            .mempool
            .txids_parents_first()
            .into_iter()
            .take(max_txs)
        {
            let Some(entry) = state.mempool.get(&txid) else {
                continue;
            };
            let Ok(tx_bytes) = encoding::encode_value(&entry.tx) else {
                continue;
            };
            if bytes + tx_bytes.len() > max_bytes {
                break;
            }
            bytes += tx_bytes.len();
            out.push((ItemKind::Transaction, tx_bytes));
            // A masternode's vote on a pooled transaction is an Accept (it
            // refuses a conflict instead of pooling it).
            if self.inner.masternode && state.votes.has_voted(&txid, &own) {
                let vote = Vote {
                    txid,
                    verdict: Verdict::Accept,
                };
                if let Ok(vote) = encoding::encode_value(&vote) {
                    out.push((ItemKind::Vote, vote));
                }
            }
        }
        out
    }

    /// The unspent outputs of `address` that no pooled transaction spends:
    /// confirmed ones and those of pooled transactions, each with how far
    /// it can be trusted (see [`CoinStatus`]).
    ///
    /// # Errors
    /// A storage error.
    pub fn coins(&self, address: &Address) -> Result<Vec<Coin>, ChainError> {
        // Under the state lock: a block applied in between would otherwise
        // leave outputs it spent in the list while its transactions left
        // the pool.
        let state = self.state();
        let confirmed = self.inner.store.utxos_for(address)?;
        let mut coins: Vec<Coin> = confirmed
            .into_iter()
            .filter(|(o, _)| state.mempool.spender(o).is_none())
            .map(|(outpoint, output)| Coin {
                outpoint,
                output,
                status: CoinStatus::Confirmed,
            })
            .collect();
        let view = PoolView {
            store: &self.inner.store,
            state: &state,
        };
        for (txid, entry) in state.mempool.entries() {
            let pays_us = entry.tx.outputs.iter().any(|o| o.address == *address);
            if !pays_us {
                continue;
            }
            let status = if state.final_txs.contains(txid) {
                CoinStatus::Final
            } else if entry
                .tx
                .inputs
                .iter()
                .all(|i| view.utxo(&i.prevout).is_some_and(|o| o.address == *address))
            {
                CoinStatus::OwnChange
            } else {
                CoinStatus::Pending
            };
            for (index, output) in entry.tx.outputs.iter().enumerate() {
                let outpoint = OutPoint {
                    txid: *txid,
                    index: index as u32,
                };
                if output.address == *address && state.mempool.spender(&outpoint).is_none() {
                    coins.push(Coin {
                        outpoint,
                        output: *output,
                        status,
                    });
                }
            }
        }
        coins.sort_by(|a, b| {
            a.status
                .cmp(&b.status)
                .then(b.output.value.cmp(&a.output.value))
                .then(a.outpoint.cmp(&b.outpoint))
        });
        Ok(coins)
    }

    /// Outputs of `address` its owner may spend now: see [`Chain::coins`]
    /// (everything but [`CoinStatus::Pending`]).
    ///
    /// # Errors
    /// A storage error.
    pub fn spendable(&self, address: &Address) -> Result<Vec<(OutPoint, TxOut)>, ChainError> {
        Ok(self
            .coins(address)?
            .into_iter()
            .filter(|c| c.status.spendable())
            .map(|c| (c.outpoint, c.output))
            .collect())
    }

    /// The sequence number of the last pool change (see
    /// [`Chain::wait_durable`]).
    pub fn journal_seq(&self) -> u64 {
        self.inner.journal.last()
    }

    /// Waits until every pool change up to `seq` is on disk; false if the
    /// chain closed first.
    pub async fn wait_durable(&self, seq: u64) -> bool {
        self.inner.journal.wait_durable(seq).await
    }

    /// Blocks until every pool change so far is on disk (at most
    /// `timeout`); false on timeout.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        self.inner.journal.flush(timeout)
    }

    /// The most transactions the mempool holds.
    pub fn mempool_max_txs(&self) -> usize {
        self.state().mempool.max_txs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::address::Address;
    use crate::chain::transaction::TxIn;
    use crate::crypto::SignatureScheme;

    fn spending(prevouts: &[Txid], nonce: u64) -> Transaction {
        Transaction {
            version: 1,
            inputs: prevouts
                .iter()
                .map(|txid| TxIn {
                    prevout: OutPoint {
                        txid: *txid,
                        index: 0,
                    },
                    scheme: SignatureScheme::Ed25519,
                    public_key: vec![0; 32],
                    signature: [0; 64],
                })
                .collect(),
            outputs: vec![TxOut {
                value: 1,
                address: Address([1; 20]),
            }],
            nonce,
        }
    }

    #[test]
    fn stored_transactions_are_ordered_parents_first() {
        // A chain a -> b -> c, and d spending both b and an outside output.
        let a = spending(&[[9; 32]], 1);
        let b = spending(&[a.txid()], 2);
        let c = spending(&[b.txid()], 3);
        let d = spending(&[b.txid(), [8; 32]], 4);
        let txs: HashMap<Txid, Transaction> = [&a, &b, &c, &d]
            .into_iter()
            .map(|t| (t.txid(), t.clone()))
            .collect();
        let order: Vec<Txid> = parents_first(txs).iter().map(Transaction::txid).collect();
        let at = |t: &Transaction| order.iter().position(|id| *id == t.txid()).unwrap();
        assert_eq!(order.len(), 4);
        assert!(at(&a) < at(&b) && at(&b) < at(&c) && at(&b) < at(&d));
    }
}

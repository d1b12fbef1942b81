//! The mempool: validated transactions waiting for finality and a block.
//!
//! # Rules
//! * Bounded by count and by bytes. When full, the transactions with the
//!   lowest fee rate (fee per 1,000 bytes) are evicted to make room, but
//!   only for a transaction that pays a strictly higher rate; otherwise the
//!   newcomer is refused. Only transactions no pooled transaction spends
//!   from (leaves) are evicted, and never the newcomer's parents.
//! * No two transactions in the pool spend the same output: a conflicting
//!   transaction is refused (no replace-by-fee: masternode votes decide
//!   between conflicts, and the first seen is what this node votes for).
//! * A transaction may spend outputs of pooled transactions (its *parents*)
//!   as well as confirmed outputs; the caller validates it against both
//!   (see [`Mempool::output`]). Chains of pooled transactions are at most
//!   [`MAX_CHAIN_DEPTH`] deep. Removing a transaction for a conflict or an
//!   eviction removes its descendants with it; a transaction that enters a
//!   block leaves its children pooled (their parent is confirmed now).

use std::collections::{HashMap, HashSet};

use super::transaction::{OutPoint, Transaction, TxOut, Txid};

/// Default most transactions in the pool.
pub const DEFAULT_MAX_TXS: usize = crate::constants::DEFAULT_MEMPOOL_MAX_TXS;

/// Default most bytes in the pool (encoded transactions).
pub const DEFAULT_MAX_BYTES: usize = 20 * 1024 * 1024;

/// Deepest chain of pooled transactions: a transaction whose pooled
/// ancestors are this many generations deep is refused.
///
/// A wallet that pays faster than blocks confirm spends the change of its
/// own pooled payments: with the devnet's 10 coins and the largest-first
/// coin selection, 300 payments within one slot make chains 30 deep. Every
/// operation on a chain (finality, removal, block ordering) walks it
/// iteratively, so depth costs nothing quadratic; the bound only keeps one
/// wallet from tying the whole pool into one chain. Bitcoin Core allows 25
/// ancestors, for fee-bumping bookkeeping this pool does not have.
pub const MAX_CHAIN_DEPTH: u32 = 1_000;

/// Why a transaction was not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MempoolError {
    /// Already in the pool.
    #[error("transaction already in the mempool")]
    Duplicate,
    /// Spends an output another pooled transaction spends.
    #[error("conflicts with pooled transaction {}", hex::encode(.0))]
    Conflict(Txid),
    /// The pool is full of transactions paying at least as much.
    #[error("mempool full: fee rate {fee_rate} is not above the lowest pooled rate {lowest}")]
    Full {
        /// The newcomer's fee rate.
        fee_rate: u64,
        /// The lowest rate in the pool.
        lowest: u64,
    },
    /// Larger than the whole pool.
    #[error("transaction larger than the mempool")]
    TooLarge,
    /// Its chain of pooled ancestors is too deep.
    #[error("chain of unconfirmed transactions {depth} deep (at most {MAX_CHAIN_DEPTH})")]
    TooDeep {
        /// The depth it would have.
        depth: u32,
    },
}

impl MempoolError {
    /// A short stable name, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            MempoolError::Duplicate => "duplicate",
            MempoolError::Conflict(_) => "conflict",
            MempoolError::Full { .. } => "full",
            MempoolError::TooLarge => "too_large",
            MempoolError::TooDeep { .. } => "too_deep",
        }
    }
}

/// A pooled transaction.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The transaction.
    pub tx: Transaction,
    /// Its fee in units.
    pub fee: u64,
    /// Its encoded size.
    pub size: usize,
    /// 0 when it spends confirmed outputs only, else one more than its
    /// deepest pooled parent.
    pub depth: u32,
}

impl Entry {
    /// Fee per 1,000 bytes.
    pub fn fee_rate(&self) -> u64 {
        fee_rate(self.fee, self.size)
    }
}

fn fee_rate(fee: u64, size: usize) -> u64 {
    fee.saturating_mul(1000) / (size.max(1) as u64)
}

/// The pool.
#[derive(Debug)]
pub struct Mempool {
    entries: HashMap<Txid, Entry>,
    spends: HashMap<OutPoint, Txid>,
    /// Pooled transactions spending outputs of the key (its children).
    children: HashMap<Txid, HashSet<Txid>>,
    bytes: usize,
    max_txs: usize,
    max_bytes: usize,
}

impl Default for Mempool {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_TXS, DEFAULT_MAX_BYTES)
    }
}

impl Mempool {
    /// An empty pool with the given bounds.
    pub fn new(max_txs: usize, max_bytes: usize) -> Self {
        Mempool {
            entries: HashMap::new(),
            spends: HashMap::new(),
            children: HashMap::new(),
            bytes: 0,
            max_txs: max_txs.max(1),
            max_bytes,
        }
    }

    /// The most transactions the pool holds.
    pub fn max_txs(&self) -> usize {
        self.max_txs
    }

    /// Adds a validated transaction paying `fee`; returns the ids evicted
    /// to make room.
    ///
    /// # Errors
    /// A [`MempoolError`]; the pool is unchanged then.
    pub fn insert(&mut self, tx: Transaction, fee: u64) -> Result<Vec<Txid>, MempoolError> {
        self.insert_protecting(tx, fee, |_| false)
    }

    /// As [`Mempool::insert`], but never evicts a transaction for which
    /// `protected` is true (e.g. one already final by votes: evicting it
    /// would let a conflicting payment in).
    ///
    /// # Errors
    /// A [`MempoolError`]; the pool is unchanged then.
    pub fn insert_protecting(
        &mut self,
        tx: Transaction,
        fee: u64,
        protected: impl Fn(&Txid) -> bool,
    ) -> Result<Vec<Txid>, MempoolError> {
        let txid = tx.txid();
        if self.entries.contains_key(&txid) {
            return Err(MempoolError::Duplicate);
        }
        if let Some(other) = tx.inputs.iter().find_map(|i| self.spends.get(&i.prevout)) {
            return Err(MempoolError::Conflict(*other));
        }
        let size = tx.size();
        if size > self.max_bytes {
            return Err(MempoolError::TooLarge);
        }
        let parents = self.parents_of(&tx);
        let depth = self.depth_under(&parents);
        if depth > MAX_CHAIN_DEPTH {
            return Err(MempoolError::TooDeep { depth });
        }
        let rate = fee_rate(fee, size);
        // Choose victims, cheapest leaves first, until the newcomer fits.
        let mut victims = Vec::new();
        let (mut count, mut bytes) = (self.entries.len(), self.bytes);
        if count + 1 > self.max_txs || bytes + size > self.max_bytes {
            let mut by_rate: Vec<(&Txid, &Entry)> = self
                .entries
                .iter()
                .filter(|(id, _)| {
                    !parents.contains(id) && self.children.get(*id).is_none_or(HashSet::is_empty)
                })
                .collect();
            by_rate.sort_by_key(|(_, e)| e.fee_rate());
            let mut lowest = None;
            for (id, entry) in by_rate {
                if count < self.max_txs && bytes + size <= self.max_bytes {
                    break;
                }
                if protected(id) {
                    continue;
                }
                lowest.get_or_insert(entry.fee_rate());
                if entry.fee_rate() >= rate {
                    break;
                }
                victims.push(*id);
                count -= 1;
                bytes -= entry.size;
            }
            if count + 1 > self.max_txs || bytes + size > self.max_bytes {
                return Err(MempoolError::Full {
                    fee_rate: rate,
                    lowest: lowest.unwrap_or(u64::MAX),
                });
            }
        }
        for id in &victims {
            self.remove(id);
        }
        for input in &tx.inputs {
            self.spends.insert(input.prevout, txid);
        }
        for parent in &parents {
            self.children.entry(*parent).or_default().insert(txid);
        }
        self.bytes += size;
        self.entries.insert(
            txid,
            Entry {
                tx,
                fee,
                size,
                depth,
            },
        );
        Ok(victims)
    }

    /// The pooled transactions whose outputs `tx` spends.
    pub fn parents_of(&self, tx: &Transaction) -> Vec<Txid> {
        let mut parents: Vec<Txid> = tx
            .inputs
            .iter()
            .map(|i| i.prevout.txid)
            .filter(|id| self.entries.contains_key(id))
            .collect();
        parents.sort_unstable();
        parents.dedup();
        parents
    }

    /// The pooled transactions spending outputs of `txid`.
    pub fn children_of(&self, txid: &Txid) -> Vec<Txid> {
        self.children
            .get(txid)
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default()
    }

    fn depth_under(&self, parents: &[Txid]) -> u32 {
        parents
            .iter()
            .filter_map(|p| self.entries.get(p))
            .map(|e| e.depth + 1)
            .max()
            .unwrap_or(0)
    }

    /// The output at `outpoint` if a pooled transaction created it
    /// (whether or not another pooled transaction spends it).
    pub fn output(&self, outpoint: &OutPoint) -> Option<TxOut> {
        let entry = self.entries.get(&outpoint.txid)?;
        entry.tx.outputs.get(outpoint.index as usize).copied()
    }

    /// Removes one transaction (its descendants stay: use
    /// [`Mempool::remove_with_descendants`] unless its outputs are now
    /// confirmed).
    pub fn remove(&mut self, txid: &Txid) -> Option<Entry> {
        let entry = self.entries.remove(txid)?;
        for input in &entry.tx.inputs {
            if self.spends.get(&input.prevout) == Some(txid) {
                self.spends.remove(&input.prevout);
            }
            if let Some(siblings) = self.children.get_mut(&input.prevout.txid) {
                siblings.remove(txid);
                if siblings.is_empty() {
                    self.children.remove(&input.prevout.txid);
                }
            }
        }
        self.children.remove(txid);
        self.bytes -= entry.size;
        Some(entry)
    }

    /// Removes `txid` and every pooled transaction that spends from it,
    /// directly or not; returns the ids removed (`txid` first, if pooled).
    pub fn remove_with_descendants(&mut self, txid: &Txid) -> Vec<Txid> {
        let mut removed = Vec::new();
        let mut stack = vec![*txid];
        while let Some(id) = stack.pop() {
            stack.extend(self.children_of(&id));
            if self.remove(&id).is_some() {
                removed.push(id);
            }
        }
        removed
    }

    /// Removes the transactions of a block (their pooled children stay),
    /// and every pooled transaction that conflicts with them, with its
    /// descendants; returns the ids removed for conflicts.
    pub fn remove_block(&mut self, transactions: &[Transaction]) -> Vec<Txid> {
        let mut conflicts = Vec::new();
        for tx in transactions {
            let txid = tx.txid();
            self.remove(&txid);
            for input in &tx.inputs {
                if let Some(other) = self.spends.get(&input.prevout).copied() {
                    conflicts.extend(self.remove_with_descendants(&other));
                }
            }
        }
        self.recompute_depths();
        conflicts
    }

    /// Sets every entry's depth from its pooled parents again (after
    /// parents left for a block), parents before children.
    pub fn recompute_depths(&mut self) {
        for txid in self.txids_parents_first() {
            let parents = match self.entries.get(&txid) {
                Some(entry) => self.parents_of(&entry.tx),
                None => continue,
            };
            let depth = self.depth_under(&parents);
            if let Some(entry) = self.entries.get_mut(&txid) {
                entry.depth = depth;
            }
        }
    }

    /// The pooled transaction with `txid`.
    pub fn get(&self, txid: &Txid) -> Option<&Entry> {
        self.entries.get(txid)
    }

    /// The pooled transaction spending `outpoint`, if any.
    pub fn spender(&self, outpoint: &OutPoint) -> Option<Txid> {
        self.spends.get(outpoint).copied()
    }

    /// Transactions pooled.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes pooled.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Every pooled txid, highest fee rate first.
    pub fn txids(&self) -> Vec<Txid> {
        let mut ids: Vec<(&Txid, &Entry)> = self.entries.iter().collect();
        ids.sort_by(|a, b| b.1.fee_rate().cmp(&a.1.fee_rate()).then(a.0.cmp(b.0)));
        ids.into_iter().map(|(id, _)| *id).collect()
    }

    /// Every pooled txid, parents before children (by depth), then highest
    /// fee rate first: the order a block or an announcement must follow.
    pub fn txids_parents_first(&self) -> Vec<Txid> {
        let mut ids: Vec<(&Txid, &Entry)> = self.entries.iter().collect();
        ids.sort_by(|a, b| {
            a.1.depth
                .cmp(&b.1.depth)
                .then(b.1.fee_rate().cmp(&a.1.fee_rate()))
                .then(a.0.cmp(b.0))
        });
        ids.into_iter().map(|(id, _)| *id).collect()
    }

    /// Every entry (no particular order).
    pub fn entries(&self) -> impl Iterator<Item = (&Txid, &Entry)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::address::Address;
    use crate::chain::transaction::{TxIn, TxOut};
    use crate::crypto::SignatureScheme;

    fn tx(prevout: u8, nonce: u64) -> Transaction {
        Transaction {
            version: 1,
            inputs: vec![TxIn {
                prevout: OutPoint {
                    txid: [prevout; 32],
                    index: 0,
                },
                scheme: SignatureScheme::Ed25519,
                public_key: vec![0; 32],
                signature: [0; 64],
            }],
            outputs: vec![TxOut {
                value: 1,
                address: Address([1; 20]),
            }],
            nonce,
        }
    }

    #[test]
    fn conflicts_and_duplicates_are_refused() {
        let mut pool = Mempool::default();
        pool.insert(tx(1, 0), 1000).unwrap();
        assert_eq!(pool.insert(tx(1, 0), 1000), Err(MempoolError::Duplicate));
        let err = pool.insert(tx(1, 1), 5000).unwrap_err();
        assert_eq!(err, MempoolError::Conflict(tx(1, 0).txid()));
        assert_eq!(pool.len(), 1);
        assert_eq!(
            pool.spender(&tx(1, 0).inputs[0].prevout),
            Some(tx(1, 0).txid())
        );
    }

    #[test]
    fn a_full_pool_evicts_the_lowest_fee_rate_for_a_better_payer() {
        let mut pool = Mempool::new(3, usize::MAX);
        for (n, fee) in [(1u8, 3000u64), (2, 1000), (3, 2000)] {
            pool.insert(tx(n, 0), fee).unwrap();
        }
        // Not better than the cheapest: refused.
        assert!(matches!(
            pool.insert(tx(4, 0), 1000),
            Err(MempoolError::Full { .. })
        ));
        // Better: the cheapest goes.
        let evicted = pool.insert(tx(5, 0), 1500).unwrap();
        assert_eq!(evicted, vec![tx(2, 0).txid()]);
        assert_eq!(pool.len(), 3);
        assert!(pool.spender(&tx(2, 0).inputs[0].prevout).is_none());
        // Byte bound too.
        let size = tx(1, 0).size();
        let mut small = Mempool::new(100, size * 2);
        small.insert(tx(1, 0), 1000).unwrap();
        small.insert(tx(2, 0), 2000).unwrap();
        assert_eq!(small.insert(tx(3, 0), 3000).unwrap(), vec![tx(1, 0).txid()]);
        assert_eq!(small.bytes(), size * 2);
    }

    /// A transaction spending output 0 of `parent`.
    fn child(parent: &Transaction, nonce: u64) -> Transaction {
        let mut t = tx(0, nonce);
        t.inputs[0].prevout = OutPoint {
            txid: parent.txid(),
            index: 0,
        };
        t
    }

    #[test]
    fn chains_are_indexed_removed_with_descendants_and_bounded() {
        let mut pool = Mempool::default();
        let a = tx(1, 0);
        let b = child(&a, 1);
        let c = child(&b, 2);
        for t in [&a, &b, &c] {
            pool.insert(t.clone(), 1000).unwrap();
        }
        assert_eq!(pool.get(&c.txid()).unwrap().depth, 2);
        assert_eq!(pool.output(&c.inputs[0].prevout), Some(b.outputs[0]));
        assert_eq!(pool.children_of(&a.txid()), vec![b.txid()]);
        assert_eq!(
            pool.txids_parents_first(),
            vec![a.txid(), b.txid(), c.txid()]
        );
        // A conflict removes the whole chain below it.
        let removed = pool.remove_with_descendants(&b.txid());
        assert_eq!(removed.len(), 2);
        assert_eq!(pool.len(), 1);
        // A block confirming `a` keeps its children, one generation up.
        pool.insert(b.clone(), 1000).unwrap();
        pool.insert(c.clone(), 1000).unwrap();
        assert!(pool.remove_block(std::slice::from_ref(&a)).is_empty());
        assert_eq!(pool.get(&b.txid()).unwrap().depth, 0);
        assert_eq!(pool.get(&c.txid()).unwrap().depth, 1);
        // Depth is bounded.
        let mut deep = Mempool::new(10_000, usize::MAX);
        let mut last = tx(9, 0);
        deep.insert(last.clone(), 1000).unwrap();
        for n in 1..=MAX_CHAIN_DEPTH as u64 {
            let next = child(&last, n);
            deep.insert(next.clone(), 1000).unwrap();
            last = next;
        }
        assert_eq!(
            deep.insert(child(&last, 0), 1000),
            Err(MempoolError::TooDeep {
                depth: MAX_CHAIN_DEPTH + 1
            })
        );
    }

    #[test]
    fn eviction_takes_leaves_only_and_never_the_newcomers_parent() {
        let mut pool = Mempool::new(3, usize::MAX);
        let a = tx(1, 0);
        let b = child(&a, 1);
        pool.insert(a.clone(), 1000).unwrap();
        pool.insert(b.clone(), 1000).unwrap();
        pool.insert(tx(2, 0), 5000).unwrap();
        // `a` pays least but has a child: `b` (a leaf) goes first.
        assert_eq!(pool.insert(tx(3, 0), 3000).unwrap(), vec![b.txid()]);
        // A child of `a` may not evict `a`.
        assert_eq!(
            pool.insert(child(&a, 7), 9000).unwrap(),
            vec![tx(3, 0).txid()]
        );
        assert!(pool.get(&a.txid()).is_some());
    }

    #[test]
    fn a_block_removes_its_transactions_and_their_conflicts() {
        let mut pool = Mempool::default();
        pool.insert(tx(1, 0), 1000).unwrap();
        pool.insert(tx(2, 0), 1000).unwrap();
        let conflicting = tx(2, 9);
        let conflicts = pool.remove_block(&[tx(1, 0), conflicting]);
        assert_eq!(conflicts, vec![tx(2, 0).txid()]);
        assert!(pool.is_empty());
        assert_eq!(pool.bytes(), 0);
    }
}

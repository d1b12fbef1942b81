//! The mempool: validated transactions waiting for finality and a block.
//!
//! # Rules
//! * Bounded by count and by bytes. When full, the transactions with the
//!   lowest fee rate (fee per 1,000 bytes) are evicted to make room, but
//!   only for a transaction that pays a strictly higher rate; otherwise the
//!   newcomer is refused.
//! * No two transactions in the pool spend the same output: a conflicting
//!   transaction is refused (no replace-by-fee: masternode votes decide
//!   between conflicts, and the first seen is what this node votes for).
//! * Transactions spend confirmed outputs only (no chains of unconfirmed
//!   transactions yet); the caller validates against the UTXO set before
//!   inserting.

use std::collections::HashMap;

use super::transaction::{OutPoint, Transaction, Txid};

/// Default most transactions in the pool.
pub const DEFAULT_MAX_TXS: usize = 5_000;

/// Default most bytes in the pool (encoded transactions).
pub const DEFAULT_MAX_BYTES: usize = 20 * 1024 * 1024;

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
}

impl MempoolError {
    /// A short stable name, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            MempoolError::Duplicate => "duplicate",
            MempoolError::Conflict(_) => "conflict",
            MempoolError::Full { .. } => "full",
            MempoolError::TooLarge => "too_large",
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
            bytes: 0,
            max_txs: max_txs.max(1),
            max_bytes,
        }
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
        let rate = fee_rate(fee, size);
        // Choose victims, cheapest first, until the newcomer fits.
        let mut victims = Vec::new();
        let (mut count, mut bytes) = (self.entries.len(), self.bytes);
        if count + 1 > self.max_txs || bytes + size > self.max_bytes {
            let mut by_rate: Vec<(&Txid, &Entry)> = self.entries.iter().collect();
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
        self.bytes += size;
        self.entries.insert(txid, Entry { tx, fee, size });
        Ok(victims)
    }

    /// Removes a transaction (confirmed, finalized elsewhere or evicted).
    pub fn remove(&mut self, txid: &Txid) -> Option<Entry> {
        let entry = self.entries.remove(txid)?;
        for input in &entry.tx.inputs {
            if self.spends.get(&input.prevout) == Some(txid) {
                self.spends.remove(&input.prevout);
            }
        }
        self.bytes -= entry.size;
        Some(entry)
    }

    /// Removes the transactions of a block, and every pooled transaction
    /// that conflicts with them; returns the conflicting ones removed.
    pub fn remove_block(&mut self, transactions: &[Transaction]) -> Vec<Txid> {
        let mut conflicts = Vec::new();
        for tx in transactions {
            let txid = tx.txid();
            self.remove(&txid);
            for input in &tx.inputs {
                if let Some(other) = self.spends.get(&input.prevout).copied() {
                    self.remove(&other);
                    conflicts.push(other);
                }
            }
        }
        conflicts
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

    /// Every pooled txid.
    pub fn txids(&self) -> Vec<Txid> {
        self.entries.keys().copied().collect()
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

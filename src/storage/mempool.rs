//! The persisted mempool and the votes counted for it (tables
//! `mempool_txs` and `mempool_votes`, see the parent module's table).
//!
//! # Correctness
//! The chain journals every change of its pool (a transaction added or
//! removed, a vote counted) as a [`PoolOp`] and a writer thread commits
//! them in groups, one write transaction per group
//! ([`Store::apply_pool_ops`]): a group is durable when that commit
//! returns, and the node reports a payment accepted or final only once the
//! group holding it is. Removing a transaction removes its votes in the
//! same transaction. What is loaded at start ([`Store::load_pool`]) is
//! validated again before it enters the pool: rows that a block confirmed
//! meanwhile, or that no longer fit the chain, are dropped then.

use redb::{ReadableTable, TableDefinition};

use super::{db_err, Store, StoreError};
use crate::chain::transaction::Txid;
use crate::chain::votes::Verdict;

/// txid → the encoded transaction.
const MEMPOOL_TXS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("mempool_txs");

/// txid ‖ voter key (64 bytes) → verdict (0 accept, 1 reject).
const MEMPOOL_VOTES: TableDefinition<&[u8; 64], u8> = TableDefinition::new("mempool_votes");

/// One change of the pool, as journaled by the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolOp {
    /// A transaction entered the pool.
    AddTx {
        /// Its id.
        txid: Txid,
        /// Its encoding.
        bytes: Vec<u8>,
    },
    /// A transaction left the pool (confirmed, conflicting, evicted): it
    /// and its votes are deleted.
    RemoveTx {
        /// Its id.
        txid: Txid,
    },
    /// A masternode's vote on a pooled transaction was counted.
    Vote {
        /// The transaction.
        txid: Txid,
        /// The masternode's key.
        voter: [u8; 32],
        /// Its verdict.
        verdict: Verdict,
    },
}

/// The pool as stored: encoded transactions and the votes on them.
#[derive(Debug, Default)]
pub struct StoredPool {
    /// Encoded transactions, in no particular order.
    pub transactions: Vec<Vec<u8>>,
    /// `(txid, voter, verdict)` of every stored vote.
    pub votes: Vec<(Txid, [u8; 32], Verdict)>,
}

fn vote_key(txid: &Txid, voter: &[u8; 32]) -> [u8; 64] {
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(txid);
    key[32..].copy_from_slice(voter);
    key
}

fn verdict_byte(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Accept => 0,
        Verdict::Reject => 1,
    }
}

impl Store {
    /// Applies `ops` in order, in one write transaction (one fsync for the
    /// whole group).
    ///
    /// # Errors
    /// [`StoreError`] on database failure; nothing is written then.
    pub fn apply_pool_ops(&self, ops: &[PoolOp]) -> Result<(), StoreError> {
        self.watch(|| self.write_pool_ops(ops))
    }

    fn write_pool_ops(&self, ops: &[PoolOp]) -> Result<(), StoreError> {
        let tx = self.db().begin_write().map_err(db_err("begin"))?;
        {
            let mut txs = tx
                .open_table(MEMPOOL_TXS)
                .map_err(db_err("open mempool_txs"))?;
            let mut votes = tx
                .open_table(MEMPOOL_VOTES)
                .map_err(db_err("open mempool_votes"))?;
            for op in ops {
                match op {
                    PoolOp::AddTx { txid, bytes } => {
                        txs.insert(txid, bytes.as_slice())
                            .map_err(db_err("write mempool tx"))?;
                    }
                    PoolOp::RemoveTx { txid } => {
                        txs.remove(txid).map_err(db_err("remove mempool tx"))?;
                        let low = vote_key(txid, &[0u8; 32]);
                        let high = vote_key(txid, &[0xffu8; 32]);
                        votes
                            .retain_in::<&[u8; 64], _>(&low..=&high, |_, _| false)
                            .map_err(db_err("remove mempool votes"))?;
                    }
                    PoolOp::Vote {
                        txid,
                        voter,
                        verdict,
                    } => {
                        votes
                            .insert(&vote_key(txid, voter), verdict_byte(*verdict))
                            .map_err(db_err("write mempool vote"))?;
                    }
                }
            }
        }
        tx.commit().map_err(db_err("commit"))?;
        Ok(())
    }

    /// The stored pool (empty if none was ever stored).
    ///
    /// # Errors
    /// [`StoreError`] on database failure or a corrupt vote row.
    pub fn load_pool(&self) -> Result<StoredPool, StoreError> {
        self.watch(|| self.read_pool())
    }

    fn read_pool(&self) -> Result<StoredPool, StoreError> {
        let tx = self.db().begin_read().map_err(db_err("begin"))?;
        let mut pool = StoredPool::default();
        match tx.open_table(MEMPOOL_TXS) {
            Ok(table) => {
                for entry in table.iter().map_err(db_err("read mempool"))? {
                    let (_, bytes) = entry.map_err(db_err("read mempool"))?;
                    pool.transactions.push(bytes.value().to_vec());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(pool),
            Err(e) => return Err(db_err("open mempool_txs")(e)),
        }
        match tx.open_table(MEMPOOL_VOTES) {
            Ok(table) => {
                for entry in table.iter().map_err(db_err("read mempool votes"))? {
                    let (key, verdict) = entry.map_err(db_err("read mempool votes"))?;
                    let key = key.value();
                    let mut txid = [0u8; 32];
                    txid.copy_from_slice(&key[..32]);
                    let mut voter = [0u8; 32];
                    voter.copy_from_slice(&key[32..]);
                    let verdict = match verdict.value() {
                        0 => Verdict::Accept,
                        1 => Verdict::Reject,
                        other => {
                            return Err(StoreError::Corrupt {
                                table: "mempool_votes",
                                message: format!("unknown verdict {other}"),
                            })
                        }
                    };
                    pool.votes.push((txid, voter, verdict));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(db_err("open mempool_votes")(e)),
        }
        Ok(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DB_FILE;

    #[test]
    fn ops_round_trip_and_a_removal_takes_the_votes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        {
            let store = Store::open(&path).unwrap();
            assert!(store.load_pool().unwrap().transactions.is_empty());
            store
                .apply_pool_ops(&[
                    PoolOp::AddTx {
                        txid: a,
                        bytes: vec![1, 2, 3],
                    },
                    PoolOp::AddTx {
                        txid: b,
                        bytes: vec![4],
                    },
                    PoolOp::Vote {
                        txid: a,
                        voter: [7; 32],
                        verdict: Verdict::Accept,
                    },
                    PoolOp::Vote {
                        txid: b,
                        voter: [7; 32],
                        verdict: Verdict::Reject,
                    },
                    PoolOp::Vote {
                        txid: b,
                        voter: [8; 32],
                        verdict: Verdict::Accept,
                    },
                ])
                .unwrap();
            store
                .apply_pool_ops(&[PoolOp::RemoveTx { txid: b }])
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let pool = store.load_pool().unwrap();
        assert_eq!(pool.transactions, vec![vec![1, 2, 3]]);
        assert_eq!(pool.votes, vec![(a, [7; 32], Verdict::Accept)]);
    }
}

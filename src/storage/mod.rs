//! Embedded storage: one redb file (`chain.redb`) in the data dir.
//!
//! # Tables
//! | table | key | value |
//! |---|---|---|
//! | `blocks` | height `u64` | encoded [`Block`] |
//! | `block_heights` | block hash | height |
//! | `utxos` | encoded [`OutPoint`] | encoded [`TxOut`] |
//! | `tx_index` | txid | height of the block holding it |
//! | `meta` | `"tip"` | encoded `(height, hash)` |
//!
//! # Correctness
//! [`Store::apply_block`] is one redb write transaction: the block, its
//! index entries, the spent and created outputs and the new tip commit
//! together or not at all, so a node killed at any moment reopens with a
//! consistent chain. redb commits are durable when `commit` returns.

use std::path::Path;

use redb::{Database, ReadableTableMetadata, TableDefinition};

use crate::chain::block::{Block, BlockHash};
use crate::chain::transaction::{OutPoint, TxOut, Txid, UtxoView};
use crate::protocol::codec;

const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
const BLOCK_HEIGHTS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("block_heights");
const UTXOS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("utxos");
const TX_INDEX: TableDefinition<&[u8; 32], u64> = TableDefinition::new("tx_index");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "chain.redb";

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, corruption, ...).
    #[error("database {context}: {message}")]
    Db {
        /// What was being done.
        context: &'static str,
        /// redb's message.
        message: String,
    },
    /// A stored record does not decode.
    #[error("corrupt record in {table}: {message}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The block does not extend the tip.
    #[error("block at height {height} does not extend the tip (height {tip_height})")]
    NotNext {
        /// The block's height.
        height: u64,
        /// The tip's height (or -1 as u64::MAX when empty).
        tip_height: u64,
    },
    /// A transaction spends an output that is not unspent.
    #[error("block spends a missing output {0:?}")]
    MissingOutput(OutPoint),
}

fn db_err<E: std::fmt::Display>(context: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Db {
        context,
        message: e.to_string(),
    }
}

fn outpoint_key(outpoint: &OutPoint) -> Vec<u8> {
    let mut key = Vec::with_capacity(36);
    key.extend_from_slice(&outpoint.txid);
    key.extend_from_slice(&outpoint.index.to_be_bytes());
    key
}

/// The chain database.
pub struct Store {
    db: Database,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the database at `path` and its tables.
    ///
    /// # Errors
    /// [`StoreError::Db`] if the file cannot be opened or is corrupt.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(db_err("open"))?;
        let tx = db.begin_write().map_err(db_err("begin"))?;
        {
            tx.open_table(BLOCKS).map_err(db_err("create tables"))?;
            tx.open_table(BLOCK_HEIGHTS)
                .map_err(db_err("create tables"))?;
            tx.open_table(UTXOS).map_err(db_err("create tables"))?;
            tx.open_table(TX_INDEX).map_err(db_err("create tables"))?;
            tx.open_table(META).map_err(db_err("create tables"))?;
        }
        tx.commit().map_err(db_err("commit"))?;
        Ok(Store { db })
    }

    /// The tip: `(height, hash)`, or `None` before genesis.
    ///
    /// # Errors
    /// [`StoreError`] on database failure or corruption.
    pub fn tip(&self) -> Result<Option<(u64, BlockHash)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin"))?;
        let meta = tx.open_table(META).map_err(db_err("open meta"))?;
        match meta.get("tip").map_err(db_err("read tip"))? {
            None => Ok(None),
            Some(v) => codec::decode_value(v.value())
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    table: "meta",
                    message: e.to_string(),
                }),
        }
    }

    /// The block at `height`.
    ///
    /// # Errors
    /// [`StoreError`] on database failure or corruption.
    pub fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin"))?;
        let blocks = tx.open_table(BLOCKS).map_err(db_err("open blocks"))?;
        match blocks.get(height).map_err(db_err("read block"))? {
            None => Ok(None),
            Some(v) => codec::decode_value(v.value())
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    table: "blocks",
                    message: e.to_string(),
                }),
        }
    }

    /// The height of the block with `hash`.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub fn height_of(&self, hash: &BlockHash) -> Result<Option<u64>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin"))?;
        let t = tx
            .open_table(BLOCK_HEIGHTS)
            .map_err(db_err("open block_heights"))?;
        Ok(t.get(hash)
            .map_err(db_err("read block height"))?
            .map(|v| v.value()))
    }

    /// The height of the block holding `txid`.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub fn tx_height(&self, txid: &Txid) -> Result<Option<u64>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin"))?;
        let t = tx.open_table(TX_INDEX).map_err(db_err("open tx_index"))?;
        Ok(t.get(txid)
            .map_err(db_err("read tx index"))?
            .map(|v| v.value()))
    }

    /// Unspent outputs stored.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub fn utxo_count(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin"))?;
        let t = tx.open_table(UTXOS).map_err(db_err("open utxos"))?;
        t.len().map_err(db_err("count utxos"))
    }

    /// The unspent output at `outpoint`.
    ///
    /// # Errors
    /// [`StoreError`] on database failure or corruption.
    pub fn get_utxo(&self, outpoint: &OutPoint) -> Result<Option<TxOut>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin"))?;
        let t = tx.open_table(UTXOS).map_err(db_err("open utxos"))?;
        match t
            .get(outpoint_key(outpoint).as_slice())
            .map_err(db_err("read utxo"))?
        {
            None => Ok(None),
            Some(v) => codec::decode_value(v.value())
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    table: "utxos",
                    message: e.to_string(),
                }),
        }
    }

    /// Applies a block that extends the tip, in one atomic write: the block
    /// and its indexes, every spent output removed, every new output added,
    /// the new tip. The caller has validated the block; a spend of a missing
    /// output aborts the whole write.
    ///
    /// # Errors
    /// [`StoreError::NotNext`], [`StoreError::MissingOutput`] or a database
    /// error; nothing is written then.
    pub fn apply_block(&self, block: &Block) -> Result<(), StoreError> {
        let height = block.header.height;
        let expected = match self.tip()? {
            None => 0,
            Some((h, hash)) => {
                if block.header.prev_hash != hash {
                    return Err(StoreError::NotNext {
                        height,
                        tip_height: h,
                    });
                }
                h + 1
            }
        };
        if height != expected {
            return Err(StoreError::NotNext {
                height,
                tip_height: expected.wrapping_sub(1),
            });
        }
        let hash = block.hash();
        let encoded = codec::encode_value(block).map_err(|e| StoreError::Corrupt {
            table: "blocks",
            message: e.to_string(),
        })?;
        let tx = self.db.begin_write().map_err(db_err("begin"))?;
        {
            let mut utxos = tx.open_table(UTXOS).map_err(db_err("open utxos"))?;
            let mut index = tx.open_table(TX_INDEX).map_err(db_err("open tx_index"))?;
            for transaction in &block.transactions {
                let txid = transaction.txid();
                for input in &transaction.inputs {
                    let removed = utxos
                        .remove(outpoint_key(&input.prevout).as_slice())
                        .map_err(db_err("spend utxo"))?;
                    if removed.is_none() {
                        // Dropping `tx` without commit discards every change.
                        return Err(StoreError::MissingOutput(input.prevout));
                    }
                }
                for (i, output) in transaction.outputs.iter().enumerate() {
                    let key = outpoint_key(&OutPoint {
                        txid,
                        index: i as u32,
                    });
                    let value = codec::encode_value(output).map_err(|e| StoreError::Corrupt {
                        table: "utxos",
                        message: e.to_string(),
                    })?;
                    utxos
                        .insert(key.as_slice(), value.as_slice())
                        .map_err(db_err("add utxo"))?;
                }
                index.insert(&txid, height).map_err(db_err("index tx"))?;
            }
            let mut blocks = tx.open_table(BLOCKS).map_err(db_err("open blocks"))?;
            blocks
                .insert(height, encoded.as_slice())
                .map_err(db_err("store block"))?;
            let mut heights = tx
                .open_table(BLOCK_HEIGHTS)
                .map_err(db_err("open block_heights"))?;
            heights
                .insert(&hash, height)
                .map_err(db_err("index block"))?;
            let tip = codec::encode_value(&(height, hash)).map_err(|e| StoreError::Corrupt {
                table: "meta",
                message: e.to_string(),
            })?;
            let mut meta = tx.open_table(META).map_err(db_err("open meta"))?;
            meta.insert("tip", tip.as_slice())
                .map_err(db_err("write tip"))?;
        }
        tx.commit().map_err(db_err("commit"))?;
        Ok(())
    }
}

impl UtxoView for Store {
    fn utxo(&self, outpoint: &OutPoint) -> Option<TxOut> {
        match self.get_utxo(outpoint) {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(%error, "utxo lookup failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::address::Address;
    use crate::chain::transaction::{Transaction, TxIn, COIN};
    use crate::crypto::{NodeIdentity, SecretKey, SignatureScheme};

    const MAGIC: [u8; 4] = *b"TDEV";

    fn genesis(owner: &SecretKey) -> Block {
        let alloc = Transaction {
            version: 1,
            inputs: Vec::new(),
            outputs: vec![TxOut {
                value: 1_000 * COIN,
                address: Address::from_public_key(&owner.public_key()),
            }],
            nonce: 0,
        };
        let txids = [alloc.txid()];
        Block {
            header: crate::chain::block::BlockHeader {
                version: 1,
                height: 0,
                prev_hash: [0; 32],
                merkle_root: crate::chain::block::merkle_root(&txids),
                timestamp: 0,
                producer: [0; 32],
                signature: [0; 64],
            },
            transactions: vec![alloc],
        }
    }

    #[test]
    fn blocks_apply_atomically_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let owner = SecretKey::generate(SignatureScheme::Ed25519);
        let producer = NodeIdentity::generate();
        let g = genesis(&owner);
        let funding = OutPoint {
            txid: g.transactions[0].txid(),
            index: 0,
        };
        let mut pay = Transaction {
            version: 1,
            inputs: vec![TxIn {
                prevout: funding,
                scheme: SignatureScheme::Ed25519,
                public_key: Vec::new(),
                signature: [0; 64],
            }],
            outputs: vec![TxOut {
                value: 10 * COIN,
                address: Address([3; 20]),
            }],
            nonce: 1,
        };
        pay.sign(MAGIC, &[&owner]);
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.tip().unwrap(), None);
            store.apply_block(&g).unwrap();
            assert_eq!(pay.validate(MAGIC, &store).unwrap(), 990 * COIN);
            let b1 = Block::produce(&producer, MAGIC, (g.hash(), 0), 1, vec![pay.clone()]);
            store.apply_block(&b1).unwrap();
            // The same spend again: refused, nothing written.
            let b2 = Block::produce(&producer, MAGIC, (b1.hash(), 1), 2, vec![pay.clone()]);
            assert!(matches!(
                store.apply_block(&b2),
                Err(StoreError::MissingOutput(_))
            ));
            assert_eq!(store.tip().unwrap().unwrap().0, 1);
            // Not extending the tip: refused.
            assert!(matches!(
                store.apply_block(&b1),
                Err(StoreError::NotNext { .. })
            ));
        }
        let store = Store::open(&path).unwrap();
        let (height, hash) = store.tip().unwrap().unwrap();
        assert_eq!(height, 1);
        assert_eq!(store.height_of(&hash).unwrap(), Some(1));
        assert_eq!(store.block(1).unwrap().unwrap().transactions[0], pay);
        assert_eq!(store.get_utxo(&funding).unwrap(), None, "spent");
        assert_eq!(store.utxo_count().unwrap(), 1);
        assert_eq!(store.tx_height(&pay.txid()).unwrap(), Some(1));
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        std::fs::write(&path, vec![0x5a; 4096]).unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::Db { .. })));
    }
}

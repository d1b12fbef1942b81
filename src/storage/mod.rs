//! Embedded storage: one redb file (`chain.redb`) in the data dir.
//!
//! # Tables
//! | table | key | value |
//! |---|---|---|
//! | `blocks` | height `u64` | encoded [`Block`] |
//! | `block_heights` | block hash | height |
//! | `utxos` | encoded [`OutPoint`] (txid ‖ index `u32` big-endian, 36 bytes) | encoded [`TxOut`] |
//! | `tx_index` | txid | height of the block holding it |
//! | `undo` | height `u64` | encoded `Vec<(OutPoint, TxOut)>`: the outputs the block at that height spent, in the order its inputs spend them |
//! | `address_utxos` | [`Address`] (20 bytes) ‖ outpoint key (36 bytes) | the output's value `u64` |
//! | `bans` | position `u64` | encoded [`StoredBan`] |
//! | `mempool_txs` | txid | encoded pooled transaction |
//! | `mempool_votes` | txid ‖ voter key | verdict `u8` (0 accept, 1 reject) |
//! | `meta` | `"tip"` | encoded `(height, hash)` |
//! | `meta` | `"schema"` | encoded `u64`: [`SCHEMA_VERSION`] |
//!
//! # Correctness
//! [`Store::apply_block`] and [`Store::rollback_tip`] are each one redb
//! write transaction: the block, its index entries, its undo record, the
//! spent and created outputs, the address index and the new tip commit
//! together or not at all, so a node killed at any moment reopens with a
//! consistent chain. redb commits are durable when `commit` returns.
//!
//! Both read the tip *inside* their write transaction, and redb runs one
//! write transaction at a time, so two concurrent applies (or an apply and
//! a rollback) can never both act on the same tip.
//!
//! Invariants every commit keeps (and every write checks, aborting with
//! [`StoreError::Corrupt`] when one is found broken):
//! * `blocks` holds exactly the heights `0..=tip`, `block_heights` their
//!   hashes, `undo` one record per height (empty for genesis).
//! * `address_utxos` holds exactly one entry per `utxos` entry, keyed by the
//!   output's address and carrying its value, so an address's outputs are a
//!   range scan over its 20-byte prefix.
//! * `tx_index` holds every txid of the chain once: a block repeating a
//!   txid is refused ([`StoreError::DuplicateTxid`]), so no output is ever
//!   overwritten and a rollback restores the previous state exactly.

mod bans;
mod mempool;

pub use bans::StoredBan;
pub use mempool::{PoolOp, StoredPool};

use std::path::Path;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::chain::address::Address;
use crate::chain::block::{Block, BlockHash};
use crate::chain::transaction::{OutPoint, Transaction, TxOut, Txid, UtxoView};
use crate::protocol::codec;

const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
const BLOCK_HEIGHTS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("block_heights");
const UTXOS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("utxos");
const TX_INDEX: TableDefinition<&[u8; 32], u64> = TableDefinition::new("tx_index");
const UNDO: TableDefinition<u64, &[u8]> = TableDefinition::new("undo");
const ADDRESS_UTXOS: TableDefinition<&[u8; ADDRESS_KEY_LEN], u64> =
    TableDefinition::new("address_utxos");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Length of an outpoint key: txid ‖ index (`u32` big-endian).
const OUTPOINT_KEY_LEN: usize = 36;
/// Length of an `address_utxos` key: address ‖ outpoint key.
const ADDRESS_KEY_LEN: usize = 20 + OUTPOINT_KEY_LEN;

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "chain.redb";

/// Version of the table layout, stored under `meta["schema"]`. Version 1
/// added the `undo` and `address_utxos` tables; a store holding blocks but
/// no version predates them and is refused ([`StoreError::Schema`]) rather
/// than served with incomplete indexes.
pub const SCHEMA_VERSION: u64 = 1;

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
    /// A stored record does not decode, or the tables disagree.
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
    /// A transaction's id is already in the chain (or twice in the block).
    #[error("block repeats transaction {}", hex::encode(.0))]
    DuplicateTxid(Txid),
    /// [`Store::rollback_tip`] on an empty store or at genesis.
    #[error("cannot roll back {}", match .tip_height {
        None => "an empty chain".to_string(),
        Some(h) => format!("the block at height {h}: genesis is final"),
    })]
    CannotRollBack {
        /// The tip's height, `None` when the store is empty.
        tip_height: Option<u64>,
    },
    /// The file was written with another table layout.
    #[error("unsupported store schema {found:?} (this build uses {expected})")]
    Schema {
        /// The stored version (`None`: written before versions existed).
        found: Option<u64>,
        /// [`SCHEMA_VERSION`].
        expected: u64,
    },
}

fn db_err<E: std::fmt::Display>(context: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Db {
        context,
        message: e.to_string(),
    }
}

fn corrupt(table: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        message: message.into(),
    }
}

fn encode<T: Serialize>(table: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    codec::encode_value(value).map_err(|e| corrupt(table, e.to_string()))
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    codec::decode_value(bytes).map_err(|e| corrupt(table, e.to_string()))
}

fn outpoint_key(outpoint: &OutPoint) -> [u8; OUTPOINT_KEY_LEN] {
    let mut key = [0u8; OUTPOINT_KEY_LEN];
    key[..32].copy_from_slice(&outpoint.txid);
    key[32..].copy_from_slice(&outpoint.index.to_be_bytes());
    key
}

fn address_key(address: &Address, outpoint: &OutPoint) -> [u8; ADDRESS_KEY_LEN] {
    let mut key = [0u8; ADDRESS_KEY_LEN];
    key[..20].copy_from_slice(&address.0);
    key[20..].copy_from_slice(&outpoint_key(outpoint));
    key
}

/// The outpoint in an `address_utxos` key.
fn outpoint_of_address_key(key: &[u8; ADDRESS_KEY_LEN]) -> OutPoint {
    let mut txid = [0u8; 32];
    txid.copy_from_slice(&key[20..52]);
    let mut index = [0u8; 4];
    index.copy_from_slice(&key[52..]);
    OutPoint {
        txid,
        index: u32::from_be_bytes(index),
    }
}

/// The first and last possible `address_utxos` keys of `address`.
fn address_range(address: &Address) -> ([u8; ADDRESS_KEY_LEN], [u8; ADDRESS_KEY_LEN]) {
    let mut low = [0u8; ADDRESS_KEY_LEN];
    low[..20].copy_from_slice(&address.0);
    let mut high = [0xffu8; ADDRESS_KEY_LEN];
    high[..20].copy_from_slice(&address.0);
    (low, high)
}

/// The tip recorded in `meta`.
fn read_tip(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<(u64, BlockHash)>, StoreError> {
    match meta.get("tip").map_err(db_err("read tip"))? {
        None => Ok(None),
        Some(v) => decode("meta", v.value()).map(Some),
    }
}

/// The outpoint of output `index` of the transaction `txid`.
fn output_point(txid: Txid, index: usize) -> OutPoint {
    OutPoint {
        txid,
        // A block encodes in at most 4 MiB, far fewer than 2^32 outputs.
        index: index as u32,
    }
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
    /// [`StoreError::Db`] if the file cannot be opened or is corrupt;
    /// [`StoreError::Schema`] if it was written with another table layout.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(db_err("open"))?;
        let tx = db.begin_write().map_err(db_err("begin"))?;
        {
            tx.open_table(BLOCKS).map_err(db_err("create tables"))?;
            tx.open_table(BLOCK_HEIGHTS)
                .map_err(db_err("create tables"))?;
            tx.open_table(UTXOS).map_err(db_err("create tables"))?;
            tx.open_table(TX_INDEX).map_err(db_err("create tables"))?;
            tx.open_table(UNDO).map_err(db_err("create tables"))?;
            tx.open_table(ADDRESS_UTXOS)
                .map_err(db_err("create tables"))?;
            tx.open_table(bans::BANS).map_err(db_err("create tables"))?;
            let mut meta = tx.open_table(META).map_err(db_err("create tables"))?;
            let found: Option<u64> = match meta.get("schema").map_err(db_err("read schema"))? {
                None => None,
                Some(v) => Some(decode("meta", v.value())?),
            };
            match found {
                Some(SCHEMA_VERSION) => {}
                None if read_tip(&meta)?.is_none() => {
                    let version = encode("meta", &SCHEMA_VERSION)?;
                    meta.insert("schema", version.as_slice())
                        .map_err(db_err("write schema"))?;
                }
                found => {
                    return Err(StoreError::Schema {
                        found,
                        expected: SCHEMA_VERSION,
                    })
                }
            }
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
        read_tip(&meta)
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
            Some(v) => decode("blocks", v.value()).map(Some),
        }
    }

    /// The block with `hash`, if it is in the chain.
    ///
    /// # Correctness
    /// The hash index and the block are read in one read transaction, so a
    /// concurrent rollback cannot make a found hash point at a missing or
    /// different block.
    ///
    /// # Errors
    /// [`StoreError`] on database failure or corruption (an indexed hash
    /// whose block is missing or has another hash).
    pub fn block_by_hash(&self, hash: &BlockHash) -> Result<Option<Block>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin"))?;
        let heights = tx
            .open_table(BLOCK_HEIGHTS)
            .map_err(db_err("open block_heights"))?;
        let Some(height) = heights
            .get(hash)
            .map_err(db_err("read block height"))?
            .map(|v| v.value())
        else {
            return Ok(None);
        };
        let blocks = tx.open_table(BLOCKS).map_err(db_err("open blocks"))?;
        let block: Block = match blocks.get(height).map_err(db_err("read block"))? {
            None => {
                return Err(corrupt(
                    "block_heights",
                    format!("hash indexed at height {height} with no block there"),
                ))
            }
            Some(v) => decode("blocks", v.value())?,
        };
        if block.hash() != *hash {
            return Err(corrupt(
                "block_heights",
                format!("hash indexed at height {height} names another block"),
            ));
        }
        Ok(Some(block))
    }

    /// The stored (encoded) blocks from height `start` upward, for serving
    /// a syncing peer without decoding and re-encoding them.
    ///
    /// Stops at the tip, after `max_count` blocks, or before the total
    /// length would exceed `max_bytes`; the block at `start` is always
    /// returned when it exists (and `max_count > 0`), even if it alone is
    /// larger than `max_bytes`, so a peer can always make progress.
    ///
    /// # Correctness
    /// One read transaction: the blocks are consecutive heights of one
    /// chain, even while blocks are applied or rolled back concurrently.
    ///
    /// # Errors
    /// [`StoreError`] on database failure, or a gap in the stored heights.
    pub fn raw_blocks(
        &self,
        start: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        if max_count == 0 {
            return Ok(out);
        }
        let tx = self.db.begin_read().map_err(db_err("begin"))?;
        let blocks = tx.open_table(BLOCKS).map_err(db_err("open blocks"))?;
        let mut total: usize = 0;
        for entry in blocks.range(start..).map_err(db_err("read blocks"))? {
            let (height, bytes) = entry.map_err(db_err("read blocks"))?;
            let expected = start.saturating_add(out.len() as u64);
            if height.value() != expected {
                return Err(corrupt(
                    "blocks",
                    format!(
                        "height {} stored where {expected} was expected",
                        height.value()
                    ),
                ));
            }
            let bytes = bytes.value();
            let grown = total.saturating_add(bytes.len());
            if !out.is_empty() && grown > max_bytes {
                break;
            }
            total = grown;
            out.push(bytes.to_vec());
            if out.len() >= max_count {
                break;
            }
        }
        Ok(out)
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

    /// The transaction `txid` and the height of the block holding it, read
    /// from that block (for the `gettransaction` RPC).
    ///
    /// # Correctness
    /// The index and the block are read in one read transaction, so a
    /// concurrent rollback cannot split them.
    ///
    /// # Errors
    /// [`StoreError`] on database failure or corruption (an indexed txid
    /// missing from its block).
    pub fn tx_location(&self, txid: &Txid) -> Result<Option<(u64, Transaction)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin"))?;
        let index = tx.open_table(TX_INDEX).map_err(db_err("open tx_index"))?;
        let Some(height) = index
            .get(txid)
            .map_err(db_err("read tx index"))?
            .map(|v| v.value())
        else {
            return Ok(None);
        };
        let blocks = tx.open_table(BLOCKS).map_err(db_err("open blocks"))?;
        let block: Block = match blocks.get(height).map_err(db_err("read block"))? {
            None => return Err(corrupt("tx_index", format!("no block at height {height}"))),
            Some(v) => decode("blocks", v.value())?,
        };
        block
            .transactions
            .into_iter()
            .find(|t| t.txid() == *txid)
            .map(|t| Some((height, t)))
            .ok_or_else(|| corrupt("tx_index", format!("txid not in the block at {height}")))
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
            Some(v) => decode("utxos", v.value()).map(Some),
        }
    }

    /// The unspent outputs locked to `address`, ordered by outpoint (txid,
    /// then index).
    ///
    /// # Correctness
    /// A range scan of the address index, which every write keeps equal to
    /// the `utxos` entries of that address (see the module docs).
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub fn utxos_for(&self, address: &Address) -> Result<Vec<(OutPoint, TxOut)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin"))?;
        let t = tx
            .open_table(ADDRESS_UTXOS)
            .map_err(db_err("open address_utxos"))?;
        let (low, high) = address_range(address);
        let mut out = Vec::new();
        for entry in t
            .range::<&[u8; ADDRESS_KEY_LEN]>(&low..=&high)
            .map_err(db_err("read address index"))?
        {
            let (key, value) = entry.map_err(db_err("read address index"))?;
            out.push((
                outpoint_of_address_key(key.value()),
                TxOut {
                    value: value.value(),
                    address: *address,
                },
            ));
        }
        Ok(out)
    }

    /// The sum of the unspent outputs locked to `address`, in units.
    ///
    /// # Errors
    /// [`StoreError`] on database failure; [`StoreError::Corrupt`] if the
    /// sum overflows (no valid chain holds more than the money supply).
    pub fn balance(&self, address: &Address) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin"))?;
        let t = tx
            .open_table(ADDRESS_UTXOS)
            .map_err(db_err("open address_utxos"))?;
        let (low, high) = address_range(address);
        let mut total: u64 = 0;
        for entry in t
            .range::<&[u8; ADDRESS_KEY_LEN]>(&low..=&high)
            .map_err(db_err("read address index"))?
        {
            let (_, value) = entry.map_err(db_err("read address index"))?;
            total = total
                .checked_add(value.value())
                .ok_or_else(|| corrupt("address_utxos", "balance overflows u64"))?;
        }
        Ok(total)
    }

    /// Applies a block that extends the tip, in one atomic write: the block
    /// and its indexes, every spent output removed (and recorded in the
    /// block's undo record), every new output added, the address index, the
    /// new tip. The caller has validated the block; a spend of a missing
    /// output or a repeated txid aborts the whole write.
    ///
    /// # Correctness
    /// The tip is read inside the write transaction (see the module docs),
    /// and every change is made in it: on any error the transaction is
    /// dropped uncommitted and nothing, not even a partial undo record or
    /// address index entry, is written. Transactions are applied in order,
    /// so a transaction may spend an output of an earlier one in the same
    /// block; the undo record lists the spent outputs in that same order,
    /// which is what lets [`Store::rollback_tip`] undo them in reverse.
    ///
    /// # Errors
    /// [`StoreError::NotNext`], [`StoreError::MissingOutput`],
    /// [`StoreError::DuplicateTxid`] or a database error; nothing is
    /// written then.
    pub fn apply_block(&self, block: &Block) -> Result<(), StoreError> {
        let height = block.header.height;
        let hash = block.hash();
        let encoded = encode("blocks", block)?;
        let tx = self.db.begin_write().map_err(db_err("begin"))?;
        {
            let mut meta = tx.open_table(META).map_err(db_err("open meta"))?;
            let expected = match read_tip(&meta)? {
                None => 0,
                Some((h, tip_hash)) => {
                    if block.header.prev_hash != tip_hash {
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
            let mut utxos = tx.open_table(UTXOS).map_err(db_err("open utxos"))?;
            let mut index = tx.open_table(TX_INDEX).map_err(db_err("open tx_index"))?;
            let mut addresses = tx
                .open_table(ADDRESS_UTXOS)
                .map_err(db_err("open address_utxos"))?;
            let mut undo: Vec<(OutPoint, TxOut)> = Vec::new();
            for transaction in &block.transactions {
                let txid = transaction.txid();
                for input in &transaction.inputs {
                    let spent: TxOut = match utxos
                        .remove(outpoint_key(&input.prevout).as_slice())
                        .map_err(db_err("spend utxo"))?
                    {
                        // Dropping `tx` without commit discards every change.
                        None => return Err(StoreError::MissingOutput(input.prevout)),
                        Some(v) => decode("utxos", v.value())?,
                    };
                    if addresses
                        .remove(&address_key(&spent.address, &input.prevout))
                        .map_err(db_err("unindex utxo"))?
                        .is_none()
                    {
                        return Err(corrupt(
                            "address_utxos",
                            format!("unspent output {:?} not indexed", input.prevout),
                        ));
                    }
                    undo.push((input.prevout, spent));
                }
                if index
                    .insert(&txid, height)
                    .map_err(db_err("index tx"))?
                    .is_some()
                {
                    return Err(StoreError::DuplicateTxid(txid));
                }
                for (i, output) in transaction.outputs.iter().enumerate() {
                    let outpoint = output_point(txid, i);
                    let value = encode("utxos", output)?;
                    utxos
                        .insert(outpoint_key(&outpoint).as_slice(), value.as_slice())
                        .map_err(db_err("add utxo"))?;
                    addresses
                        .insert(&address_key(&output.address, &outpoint), output.value)
                        .map_err(db_err("index utxo"))?;
                }
            }
            let undo = encode("undo", &undo)?;
            let mut undo_table = tx.open_table(UNDO).map_err(db_err("open undo"))?;
            undo_table
                .insert(height, undo.as_slice())
                .map_err(db_err("store undo"))?;
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
            let tip = encode("meta", &(height, hash))?;
            meta.insert("tip", tip.as_slice())
                .map_err(db_err("write tip"))?;
        }
        tx.commit().map_err(db_err("commit"))?;
        Ok(())
    }

    /// Undoes the tip block in one atomic write and returns it: its created
    /// outputs removed, the outputs it spent restored from its undo record,
    /// its `tx_index`, `blocks`, `block_heights`, `undo` and address index
    /// entries removed, and the tip set to the previous block.
    ///
    /// # Correctness
    /// Transactions are undone last to first, and each one's inputs last to
    /// first, consuming the undo record from its end: an output created and
    /// spent within the block is restored by the later transaction's undo
    /// and then removed by the earlier one's, so the UTXO set, the indexes
    /// and the tip end exactly as they were before the block was applied.
    /// Every step checks the invariant it relies on (the created output is
    /// there, the undo entry names the input's outpoint, the restored
    /// outpoint is free, the whole record is used, the previous block is
    /// indexed at `height - 1`); a violation aborts the write with
    /// [`StoreError::Corrupt`] and changes nothing.
    ///
    /// # Errors
    /// [`StoreError::CannotRollBack`] on an empty store or at genesis;
    /// [`StoreError::Corrupt`] or a database error, with nothing written.
    pub fn rollback_tip(&self) -> Result<Block, StoreError> {
        let tx = self.db.begin_write().map_err(db_err("begin"))?;
        let block: Block;
        {
            let mut meta = tx.open_table(META).map_err(db_err("open meta"))?;
            let (height, tip_hash) = match read_tip(&meta)? {
                None => return Err(StoreError::CannotRollBack { tip_height: None }),
                Some((0, _)) => {
                    return Err(StoreError::CannotRollBack {
                        tip_height: Some(0),
                    })
                }
                Some(tip) => tip,
            };
            let mut blocks = tx.open_table(BLOCKS).map_err(db_err("open blocks"))?;
            block = match blocks.remove(height).map_err(db_err("remove block"))? {
                None => return Err(corrupt("blocks", format!("no block at tip {height}"))),
                Some(v) => decode("blocks", v.value())?,
            };
            if block.header.height != height || block.hash() != tip_hash {
                return Err(corrupt(
                    "blocks",
                    format!("block at {height} is not the tip"),
                ));
            }
            let mut heights = tx
                .open_table(BLOCK_HEIGHTS)
                .map_err(db_err("open block_heights"))?;
            heights.remove(&tip_hash).map_err(db_err("unindex block"))?;
            let prev = block.header.prev_hash;
            let prev_height = heights
                .get(&prev)
                .map_err(db_err("read block height"))?
                .map(|v| v.value());
            if prev_height != Some(height - 1) {
                return Err(corrupt(
                    "block_heights",
                    format!("previous block of {height} indexed at {prev_height:?}"),
                ));
            }
            let mut undo_table = tx.open_table(UNDO).map_err(db_err("open undo"))?;
            let mut undo: Vec<(OutPoint, TxOut)> =
                match undo_table.remove(height).map_err(db_err("remove undo"))? {
                    None => return Err(corrupt("undo", format!("no undo record at {height}"))),
                    Some(v) => decode("undo", v.value())?,
                };
            let mut utxos = tx.open_table(UTXOS).map_err(db_err("open utxos"))?;
            let mut index = tx.open_table(TX_INDEX).map_err(db_err("open tx_index"))?;
            let mut addresses = tx
                .open_table(ADDRESS_UTXOS)
                .map_err(db_err("open address_utxos"))?;
            for transaction in block.transactions.iter().rev() {
                let txid = transaction.txid();
                for (i, output) in transaction.outputs.iter().enumerate() {
                    let outpoint = output_point(txid, i);
                    let removed = utxos
                        .remove(outpoint_key(&outpoint).as_slice())
                        .map_err(db_err("remove utxo"))?
                        .is_some();
                    let unindexed = addresses
                        .remove(&address_key(&output.address, &outpoint))
                        .map_err(db_err("unindex utxo"))?
                        .is_some();
                    if !removed || !unindexed {
                        return Err(corrupt(
                            "utxos",
                            format!("created output {outpoint:?} missing at rollback"),
                        ));
                    }
                }
                let indexed = index
                    .remove(&txid)
                    .map_err(db_err("unindex tx"))?
                    .map(|v| v.value());
                if indexed != Some(height) {
                    return Err(corrupt(
                        "tx_index",
                        format!("txid of block {height} indexed at {indexed:?}"),
                    ));
                }
                for input in transaction.inputs.iter().rev() {
                    let Some((outpoint, output)) = undo.pop() else {
                        return Err(corrupt("undo", format!("record at {height} too short")));
                    };
                    if outpoint != input.prevout {
                        return Err(corrupt(
                            "undo",
                            format!("record at {height} does not match the block's inputs"),
                        ));
                    }
                    let value = encode("utxos", &output)?;
                    let occupied = utxos
                        .insert(outpoint_key(&outpoint).as_slice(), value.as_slice())
                        .map_err(db_err("restore utxo"))?
                        .is_some();
                    let reindexed = addresses
                        .insert(&address_key(&output.address, &outpoint), output.value)
                        .map_err(db_err("index utxo"))?
                        .is_some();
                    if occupied || reindexed {
                        return Err(corrupt(
                            "utxos",
                            format!("restored output {outpoint:?} was not spent"),
                        ));
                    }
                }
            }
            if !undo.is_empty() {
                return Err(corrupt("undo", format!("record at {height} too long")));
            }
            let tip = encode("meta", &(height - 1, prev))?;
            meta.insert("tip", tip.as_slice())
                .map_err(db_err("write tip"))?;
        }
        tx.commit().map_err(db_err("commit"))?;
        Ok(block)
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
    use std::collections::BTreeMap;

    use super::*;
    use crate::chain::transaction::{Transaction, TxIn, COIN};
    use crate::crypto::{NodeIdentity, SecretKey, SignatureScheme};

    const MAGIC: [u8; 4] = *b"TDEV";

    fn genesis(owner: &SecretKey) -> Block {
        genesis_paying(vec![TxOut {
            value: 1_000 * COIN,
            address: Address::from_public_key(&owner.public_key()),
        }])
    }

    fn genesis_paying(outputs: Vec<TxOut>) -> Block {
        let alloc = Transaction {
            version: 1,
            inputs: Vec::new(),
            outputs,
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

    fn address(key: &SecretKey) -> Address {
        Address::from_public_key(&key.public_key())
    }

    fn out(value: u64, address: Address) -> TxOut {
        TxOut { value, address }
    }

    fn op(tx: &Transaction, index: u32) -> OutPoint {
        OutPoint {
            txid: tx.txid(),
            index,
        }
    }

    /// A signed transaction spending `spends` (each with its owner's key).
    fn pay(spends: &[(OutPoint, &SecretKey)], outputs: Vec<TxOut>, nonce: u64) -> Transaction {
        let mut tx = Transaction {
            version: 1,
            inputs: spends
                .iter()
                .map(|(prevout, _)| TxIn {
                    prevout: *prevout,
                    scheme: SignatureScheme::Ed25519,
                    public_key: Vec::new(),
                    signature: [0; 64],
                })
                .collect(),
            outputs,
            nonce,
        };
        let keys: Vec<&SecretKey> = spends.iter().map(|(_, key)| *key).collect();
        tx.sign(MAGIC, &keys);
        tx
    }

    /// Genesis and two blocks: block 1 spends a genesis output and, in a
    /// second transaction, an output created earlier in the same block;
    /// block 2 spends outputs of genesis and block 1 with several inputs.
    struct Chain {
        producer: NodeIdentity,
        addresses: Vec<Address>,
        blocks: Vec<Block>,
    }

    fn chain() -> Chain {
        let a = SecretKey::generate(SignatureScheme::Ed25519);
        let b = SecretKey::generate(SignatureScheme::Ed25519);
        let c = Address([0xcc; 20]);
        let producer = NodeIdentity::generate();
        let g = genesis_paying(vec![
            out(1_000 * COIN, address(&a)),
            out(500 * COIN, address(&b)),
        ]);
        let alloc = &g.transactions[0];
        let t1 = pay(
            &[(op(alloc, 0), &a)],
            vec![out(100 * COIN, address(&b)), out(899 * COIN, address(&a))],
            1,
        );
        let t2 = pay(
            &[(op(&t1, 0), &b)],
            vec![out(50 * COIN, c), out(49 * COIN, address(&b))],
            2,
        );
        let b1 = Block::produce(
            &producer,
            MAGIC,
            (g.hash(), 0),
            1,
            vec![t1.clone(), t2.clone()],
        );
        let t3 = pay(
            &[(op(&t2, 1), &b), (op(alloc, 1), &b)],
            vec![out(300 * COIN, address(&a)), out(248 * COIN, c)],
            3,
        );
        let t4 = pay(
            &[(op(&t1, 1), &a)],
            vec![out(10 * COIN, c), out(888 * COIN, address(&a))],
            4,
        );
        let b2 = Block::produce(&producer, MAGIC, (b1.hash(), 1), 2, vec![t3, t4]);
        Chain {
            producer,
            addresses: vec![address(&a), address(&b), c, Address([0xdd; 20])],
            blocks: vec![g, b1, b2],
        }
    }

    type Rows = Vec<(Vec<u8>, Vec<u8>)>;

    fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(
        tx: &redb::ReadTransaction,
        table: TableDefinition<K, V>,
    ) -> Rows {
        let table = tx.open_table(table).unwrap();
        table
            .iter()
            .unwrap()
            .map(|entry| {
                let (k, v) = entry.unwrap();
                let key = K::as_bytes(&k.value()).as_ref().to_vec();
                let value = V::as_bytes(&v.value()).as_ref().to_vec();
                (key, value)
            })
            .collect()
    }

    /// Every chain table, raw.
    fn snapshot(store: &Store) -> Vec<(&'static str, Rows)> {
        let tx = store.db.begin_read().unwrap();
        vec![
            ("blocks", rows(&tx, BLOCKS)),
            ("block_heights", rows(&tx, BLOCK_HEIGHTS)),
            ("utxos", rows(&tx, UTXOS)),
            ("tx_index", rows(&tx, TX_INDEX)),
            ("undo", rows(&tx, UNDO)),
            ("address_utxos", rows(&tx, ADDRESS_UTXOS)),
            ("meta", rows(&tx, META)),
        ]
    }

    /// The UTXO set by a full scan of `utxos`.
    fn scan(store: &Store) -> BTreeMap<OutPoint, TxOut> {
        let tx = store.db.begin_read().unwrap();
        rows(&tx, UTXOS)
            .into_iter()
            .map(|(key, value)| {
                let outpoint = OutPoint {
                    txid: key[..32].try_into().unwrap(),
                    index: u32::from_be_bytes(key[32..].try_into().unwrap()),
                };
                (outpoint, codec::decode_value(&value).unwrap())
            })
            .collect()
    }

    fn undo_at(store: &Store, height: u64) -> Option<Vec<(OutPoint, TxOut)>> {
        let tx = store.db.begin_read().unwrap();
        let undo = tx.open_table(UNDO).unwrap();
        let record = undo.get(height).unwrap();
        record.map(|v| codec::decode_value(v.value()).unwrap())
    }

    /// The address index answers exactly what a full scan of `utxos` does.
    fn assert_index_matches_scan(store: &Store, addresses: &[Address]) {
        let all = scan(store);
        for address in addresses {
            let expected: Vec<(OutPoint, TxOut)> = all
                .iter()
                .filter(|(_, o)| o.address == *address)
                .map(|(p, o)| (*p, *o))
                .collect();
            assert_eq!(store.utxos_for(address).unwrap(), expected, "{address:?}");
            let sum: u64 = expected.iter().map(|(_, o)| o.value).sum();
            assert_eq!(store.balance(address).unwrap(), sum, "{address:?}");
        }
        let tx = store.db.begin_read().unwrap();
        let indexed = tx.open_table(ADDRESS_UTXOS).unwrap().len().unwrap();
        assert_eq!(indexed, all.len() as u64, "one index entry per output");
    }

    fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join(DB_FILE)).unwrap()
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

    #[test]
    fn undo_records_list_the_spent_outputs_in_spend_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let c = chain();
        for block in &c.blocks {
            assert_eq!(undo_at(&store, block.header.height), None);
            let before = scan(&store);
            store.apply_block(block).unwrap();
            // Every input, in block order, with the output it spent: an
            // output created earlier in the same block included.
            let mut created = before.clone();
            let mut expected = Vec::new();
            for tx in &block.transactions {
                for input in &tx.inputs {
                    let spent = created.remove(&input.prevout).unwrap();
                    expected.push((input.prevout, spent));
                }
                for (i, o) in tx.outputs.iter().enumerate() {
                    created.insert(op(tx, i as u32), *o);
                }
            }
            assert_eq!(created, scan(&store));
            assert_eq!(undo_at(&store, block.header.height), Some(expected));
        }
        assert_eq!(
            undo_at(&store, 0),
            Some(Vec::new()),
            "genesis spends nothing"
        );
        assert_eq!(undo_at(&store, 1).unwrap().len(), 2);
        assert_eq!(undo_at(&store, 2).unwrap().len(), 3);
    }

    #[test]
    fn rollback_restores_exactly_the_state_before_the_block_and_reapply_works() {
        let dir = tempfile::tempdir().unwrap();
        let c = chain();
        let mut states = Vec::new();
        {
            let store = open(&dir);
            for block in &c.blocks {
                store.apply_block(block).unwrap();
                states.push(snapshot(&store));
            }
            let tip_utxos = scan(&store);
            assert_eq!(store.rollback_tip().unwrap(), c.blocks[2]);
            assert_eq!(snapshot(&store), states[1], "every table as after block 1");
            assert_eq!(store.tip().unwrap(), Some((1, c.blocks[1].hash())));
            for tx in &c.blocks[2].transactions {
                assert_eq!(store.tx_height(&tx.txid()).unwrap(), None);
                for input in &tx.inputs {
                    assert!(store.get_utxo(&input.prevout).unwrap().is_some());
                }
            }
            assert_eq!(store.block(2).unwrap(), None);
            assert_eq!(store.height_of(&c.blocks[2].hash()).unwrap(), None);
            assert_eq!(undo_at(&store, 2), None);
            // Re-applying the same block gives the same state again.
            store.apply_block(&c.blocks[2]).unwrap();
            assert_eq!(snapshot(&store), states[2]);
            assert_eq!(scan(&store), tip_utxos);
            // Block 1 spends an output it creates; undoing it restores the
            // genesis state exactly.
            store.rollback_tip().unwrap();
            assert_eq!(store.rollback_tip().unwrap(), c.blocks[1]);
            assert_eq!(snapshot(&store), states[0]);
        }
        // The rollback is durable, and the chain grows again after a reopen.
        let store = open(&dir);
        assert_eq!(snapshot(&store), states[0]);
        store.apply_block(&c.blocks[1]).unwrap();
        assert_eq!(snapshot(&store), states[1]);
        store.apply_block(&c.blocks[2]).unwrap();
        assert_eq!(snapshot(&store), states[2]);
    }

    #[test]
    fn rollback_refuses_genesis_and_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert!(matches!(
            store.rollback_tip(),
            Err(StoreError::CannotRollBack { tip_height: None })
        ));
        let c = chain();
        store.apply_block(&c.blocks[0]).unwrap();
        let state = snapshot(&store);
        let refused = store.rollback_tip().unwrap_err();
        assert!(matches!(
            refused,
            StoreError::CannotRollBack {
                tip_height: Some(0)
            }
        ));
        assert!(refused.to_string().contains("genesis"), "{refused}");
        assert_eq!(snapshot(&store), state);
    }

    #[test]
    fn the_address_index_agrees_with_a_full_scan_through_applies_and_rollbacks() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let c = chain();
        assert_index_matches_scan(&store, &c.addresses);
        for block in &c.blocks {
            store.apply_block(block).unwrap();
            assert_index_matches_scan(&store, &c.addresses);
        }
        let unknown = c.addresses[3];
        assert_eq!(store.utxos_for(&unknown).unwrap(), Vec::new());
        assert_eq!(store.balance(&unknown).unwrap(), 0);
        // Money is conserved up to the fees: 1500 TIME minted, 4 paid.
        let total: u64 = c.addresses.iter().map(|a| store.balance(a).unwrap()).sum();
        assert_eq!(total, 1_496 * COIN);
        assert_eq!(store.balance(&Address([0xcc; 20])).unwrap(), 308 * COIN);
        for _ in 0..2 {
            store.rollback_tip().unwrap();
            assert_index_matches_scan(&store, &c.addresses);
        }
        assert_eq!(store.balance(&c.addresses[0]).unwrap(), 1_000 * COIN);
        assert_eq!(store.balance(&c.addresses[1]).unwrap(), 500 * COIN);
        for block in &c.blocks[1..] {
            store.apply_block(block).unwrap();
            assert_index_matches_scan(&store, &c.addresses);
        }
    }

    #[test]
    fn raw_blocks_stop_at_the_tip_the_count_and_the_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert_eq!(
            store.raw_blocks(0, 10, usize::MAX).unwrap(),
            Vec::<Vec<u8>>::new()
        );
        let c = chain();
        for block in &c.blocks {
            store.apply_block(block).unwrap();
        }
        let raw: Vec<Vec<u8>> = c
            .blocks
            .iter()
            .map(|b| codec::encode_value(b).unwrap())
            .collect();
        let (l0, l1) = (raw[0].len(), raw[1].len());
        assert_eq!(store.raw_blocks(0, 10, usize::MAX).unwrap(), raw);
        assert_eq!(store.raw_blocks(0, 2, usize::MAX).unwrap(), raw[..2]);
        assert_eq!(store.raw_blocks(1, 10, usize::MAX).unwrap(), raw[1..]);
        assert_eq!(store.raw_blocks(2, 10, usize::MAX).unwrap(), raw[2..]);
        assert!(store.raw_blocks(3, 10, usize::MAX).unwrap().is_empty());
        assert!(store
            .raw_blocks(u64::MAX, 10, usize::MAX)
            .unwrap()
            .is_empty());
        assert!(store.raw_blocks(0, 0, usize::MAX).unwrap().is_empty());
        // The byte budget: exactly two fit, one byte less fits one, and the
        // first block comes even when it alone is over budget.
        assert_eq!(store.raw_blocks(0, 10, l0 + l1).unwrap(), raw[..2]);
        assert_eq!(store.raw_blocks(0, 10, l0 + l1 - 1).unwrap(), raw[..1]);
        assert_eq!(store.raw_blocks(1, 10, 0).unwrap(), raw[1..2]);
        // The bytes are the blocks.
        let decoded: Block = codec::decode_value(&store.raw_blocks(2, 1, 0).unwrap()[0]).unwrap();
        assert_eq!(decoded, c.blocks[2]);
        store.rollback_tip().unwrap();
        assert_eq!(store.raw_blocks(0, 10, usize::MAX).unwrap(), raw[..2]);
        assert!(store.raw_blocks(2, 10, usize::MAX).unwrap().is_empty());
    }

    #[test]
    fn block_by_hash_and_tx_location_follow_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let c = chain();
        for block in &c.blocks {
            assert_eq!(store.block_by_hash(&block.hash()).unwrap(), None);
            store.apply_block(block).unwrap();
        }
        for block in &c.blocks {
            assert_eq!(
                store.block_by_hash(&block.hash()).unwrap().as_ref(),
                Some(block)
            );
            for tx in &block.transactions {
                assert_eq!(
                    store.tx_location(&tx.txid()).unwrap(),
                    Some((block.header.height, tx.clone()))
                );
            }
        }
        assert_eq!(store.block_by_hash(&[7; 32]).unwrap(), None);
        assert_eq!(store.tx_location(&[7; 32]).unwrap(), None);
        let removed = store.rollback_tip().unwrap();
        assert_eq!(store.block_by_hash(&removed.hash()).unwrap(), None);
        for tx in &removed.transactions {
            assert_eq!(store.tx_location(&tx.txid()).unwrap(), None);
        }
        let t1 = &c.blocks[1].transactions[0];
        assert_eq!(
            store.tx_location(&t1.txid()).unwrap(),
            Some((1, t1.clone()))
        );
    }

    #[test]
    fn a_block_failing_midway_leaves_tip_utxos_undo_and_index_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let c = chain();
        store.apply_block(&c.blocks[0]).unwrap();
        store.apply_block(&c.blocks[1]).unwrap();
        let state = snapshot(&store);
        let prev = (c.blocks[1].hash(), 1);
        let valid = c.blocks[2].transactions.clone();

        // The first transactions spend and create outputs, then one spends
        // an output that does not exist.
        let owner = SecretKey::generate(SignatureScheme::Ed25519);
        let missing = OutPoint {
            txid: [9; 32],
            index: 0,
        };
        let bad = pay(&[(missing, &owner)], vec![out(COIN, address(&owner))], 9);
        let mut txs = valid.clone();
        txs.push(bad);
        let block = Block::produce(&c.producer, MAGIC, prev, 2, txs);
        assert!(matches!(
            store.apply_block(&block),
            Err(StoreError::MissingOutput(o)) if o == missing
        ));
        assert_eq!(
            snapshot(&store),
            state,
            "nothing of the failed block written"
        );
        assert_eq!(store.tip().unwrap(), Some((1, c.blocks[1].hash())));
        assert_eq!(undo_at(&store, 2), None);
        assert_index_matches_scan(&store, &c.addresses);

        // A transaction already in the chain (here the genesis allocation,
        // which has no inputs) would overwrite outputs: refused as well.
        let mut txs = valid.clone();
        txs.push(c.blocks[0].transactions[0].clone());
        let block = Block::produce(&c.producer, MAGIC, prev, 2, txs);
        assert!(matches!(
            store.apply_block(&block),
            Err(StoreError::DuplicateTxid(id)) if id == c.blocks[0].transactions[0].txid()
        ));
        assert_eq!(snapshot(&store), state);

        // A block on another parent: refused before anything is written.
        let block = Block::produce(&c.producer, MAGIC, ([1; 32], 1), 2, valid);
        assert!(matches!(
            store.apply_block(&block),
            Err(StoreError::NotNext {
                height: 2,
                tip_height: 1
            })
        ));
        assert_eq!(snapshot(&store), state);

        // The store is still usable: the real block applies.
        store.apply_block(&c.blocks[2]).unwrap();
        assert_index_matches_scan(&store, &c.addresses);
    }

    #[test]
    fn concurrent_applies_of_one_height_cannot_both_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let c = chain();
        store.apply_block(&c.blocks[0]).unwrap();
        // Two different blocks at height 1 on the same parent.
        let other = Block::produce(&c.producer, MAGIC, (c.blocks[0].hash(), 0), 99, Vec::new());
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<Result<(), StoreError>> = std::thread::scope(|s| {
            let handles: Vec<_> = [&c.blocks[1], &other]
                .into_iter()
                .map(|block| {
                    let (store, barrier) = (&store, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        store.apply_block(block)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "{results:?}");
        assert!(results
            .iter()
            .any(|r| matches!(r, Err(StoreError::NotNext { height: 1, .. }))));
        let (height, hash) = store.tip().unwrap().unwrap();
        assert_eq!(height, 1);
        assert_eq!(store.block(1).unwrap().unwrap().hash(), hash);
        assert_index_matches_scan(&store, &c.addresses);
    }

    #[test]
    fn a_store_written_before_schema_versions_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            // What the previous layout left: a tip, no schema version.
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut meta = tx.open_table(META).unwrap();
                let tip = codec::encode_value(&(0u64, [0u8; 32])).unwrap();
                meta.insert("tip", tip.as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::Schema {
                found: None,
                expected: SCHEMA_VERSION
            })
        ));
        // A fresh store records the version and reopens.
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.apply_block(&chain().blocks[0]).unwrap();
        drop(store);
        let store = open(&dir);
        assert_eq!(store.tip().unwrap().unwrap().0, 0);
    }
}

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
mod write;

pub use bans::StoredBan;

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
mod tests;

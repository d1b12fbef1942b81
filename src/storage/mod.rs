//! Embedded storage: one redb file (`chain.redb`) in the data dir, and a
//! tip marker (`chain.tip`, see [`marker`]) next to it.
//!
//! # Tables
//! | table | key | value |
//! |---|---|---|
//! | `blocks` | height `u64` | encoded [`Block`](crate::chain::Block) |
//! | `block_hashes` | height `u64` | the block's hash ‖ blake3 of its stored bytes (64 bytes): what every read of the block is checked against |
//! | `block_heights` | block hash | height |
//! | `utxos` | encoded [`OutPoint`] (txid ‖ index `u32` big-endian, 36 bytes) | encoded [`TxOut`] |
//! | `tx_index` | txid | height of the block holding it |
//! | `undo` | height `u64` | encoded `Vec<(OutPoint, TxOut)>`: the outputs the block at that height spent, in the order its inputs spend them |
//! | `address_utxos` | [`Address`] (20 bytes) ‖ outpoint key (36 bytes) | the output's value `u64` |
//! | `bans_v2` | banned subnet as text (`203.0.113.7/32`) | encoded [`StoredBan`]: one row per ban, written by the [`BanWriter`] |
//! | `mempool_txs` | txid | encoded pooled transaction (see [`mempool`]) |
//! | `mempool_votes` | txid ‖ voter key | verdict `u8` (0 accept, 1 reject) |
//! | `meta` | `"tip"` | encoded `(height, hash)` |
//! | `meta` | `"schema"` | encoded `u64`: [`SCHEMA_VERSION`] |
//!
//! # Correctness
//! [`Store::apply_block`] and [`Store::rollback_tip`] are each one redb
//! write transaction: the block, its index entries, its recorded hash, its
//! undo record, the spent and created outputs, the address index and the
//! new tip commit together or not at all, so a node killed at any moment
//! reopens with a consistent chain. redb commits are durable when `commit`
//! returns.
//!
//! Both read the tip *inside* their write transaction, and redb runs one
//! write transaction at a time, so two concurrent applies (or an apply and
//! a rollback) can never both act on the same tip.
//!
//! Invariants every commit keeps (and every write checks, aborting with
//! [`StoreError::Corrupt`] when one is found broken):
//! * `blocks` holds exactly the heights `0..=tip`, `block_hashes` and
//!   `block_heights` their hashes, `undo` one record per height (empty for
//!   genesis).
//! * `address_utxos` holds exactly one entry per `utxos` entry, keyed by the
//!   output's address and carrying its value, so an address's outputs are a
//!   range scan over its 20-byte prefix.
//! * `tx_index` holds every txid of the chain once: a block repeating a
//!   txid is refused ([`StoreError::DuplicateTxid`]), so no output is ever
//!   overwritten and a rollback restores the previous state exactly.
//!
//! # Integrity
//! * At open ([`Store::open`]): an existing file is opened, never silently
//!   re-created (an empty file is [`StoreError::Damaged`]); redb's own
//!   integrity check runs (and repairs what it can); a panic inside redb is
//!   caught and reported as [`StoreError::Damaged`]; a store that ends more
//!   than `MAX_REORG_DEPTH` blocks below the tip marker is
//!   [`StoreError::LostData`]. Both messages say what to do.
//! * On every block read (see [`blocks`]): the bytes, the hash, the height
//!   and the merkle root are checked against `block_hashes`; a block that
//!   fails is [`StoreError::BadBlock`], never returned, and its height is
//!   kept in [`Store::damaged_heights`] until [`Store::repair_block`]
//!   rewrites it from a copy with the recorded hash.
//! * At run time: an I/O error (or redb's "previous I/O error") marks the
//!   store failed ([`Store::failure`]); the node stops rather than serve
//!   errors.
//! * On request ([`Store::reindex`], [`Store::reindex_txs`]; RPC `reindex`
//!   and `reindextransactions`): the tables derived from the blocks are
//!   rebuilt by replaying every block from genesis in one write
//!   transaction, and the answer names those that differed (see
//!   the `reindex` module).

mod ban_writer;
mod bans;
pub mod blocks;
pub mod marker;
pub mod mempool;
mod migrate;
mod open;
mod peers;
mod reindex;
mod write;

pub use ban_writer::{BanWriter, BanWriterStats};
pub use bans::{BanWrite, StoredBan};
pub use marker::marker_path;
pub use mempool::{PoolOp, StoredPool};
pub use reindex::Reindexed;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::chain::address::Address;
use crate::chain::block::BlockHash;
use crate::chain::transaction::{OutPoint, TxOut, Txid, UtxoView};
use crate::encoding;

const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
const BLOCK_HASHES: TableDefinition<u64, &[u8; blocks::RECORD_LEN]> =
    TableDefinition::new("block_hashes");
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

/// Version of the table layout, stored under `meta["schema"]`.
///
/// Version 1 added the `undo` and `address_utxos` tables; a store holding
/// blocks but no version predates them and is refused
/// ([`StoreError::Schema`]) rather than served with incomplete indexes.
/// Version 2 added `block_hashes` and replaced the position-keyed `bans`
/// table by `bans_v2`; a version 1 store is migrated at open (see
/// `migrate`).
pub const SCHEMA_VERSION: u64 = 2;

/// What the node should do about a damaged or lost database, for messages.
const WHAT_TO_DO: &str = "Restore it from a backup, or start over with `timed run --resync` \
     (moves the damaged file aside and syncs the chain again from peers)";

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused an operation (a lock held by another process,
    /// a type mismatch, ...).
    #[error("database {context}: {message}")]
    Db {
        /// What was being done.
        context: &'static str,
        /// redb's message.
        message: String,
    },
    /// The database file failed while running: an I/O error, redb's
    /// "previous I/O error", or structural damage found by redb. The store
    /// is marked failed ([`Store::failure`]).
    #[error("database failed ({context}): {message}")]
    Failed {
        /// What was being done.
        context: &'static str,
        /// redb's message.
        message: String,
    },
    /// The file cannot be used as it is: empty, unreadable by redb, failing
    /// redb's integrity check, or making redb panic.
    #[error("{} is damaged: {problem}. {WHAT_TO_DO}", .path.display())]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The store ends well below the height its tip marker recorded.
    #[error(
        "{} has lost data: {}, but the node had reached height {marker_height} (recorded in {}). \
         {WHAT_TO_DO}; if you restored an older copy on purpose, delete {} and start again",
        .path.display(),
        ends_at(*.height),
        .marker.display(),
        .marker.display()
    )]
    LostData {
        /// The database file.
        path: PathBuf,
        /// The store's tip height (`None`: no block at all).
        height: Option<u64>,
        /// The height the marker recorded.
        marker_height: u64,
        /// The marker file.
        marker: PathBuf,
    },
    /// A stored block failed verification: it is not returned, and its
    /// height is in [`Store::damaged_heights`] until repaired.
    #[error(
        "stored block at height {height} is damaged ({problem}); \
         it is not served and can be fetched again from peers"
    )]
    BadBlock {
        /// The block's height.
        height: u64,
        /// What failed.
        problem: &'static str,
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

/// "it ends at height X" / "it holds no block", for [`StoreError::LostData`].
fn ends_at(height: Option<u64>) -> String {
    match height {
        Some(h) => format!("it ends at height {h}"),
        None => "it holds no block".to_string(),
    }
}

impl StoreError {
    /// True for errors after which the database cannot be trusted to work:
    /// the node should stop ([`StoreError::Failed`]).
    pub fn is_fatal(&self) -> bool {
        matches!(self, StoreError::Failed { .. })
    }
}

/// Maps a redb error: I/O failures, redb's "previous I/O error", damage
/// redb found and a poisoned lock inside redb are [`StoreError::Failed`],
/// the rest [`StoreError::Db`].
fn db_err<E: Into<redb::Error>>(context: &'static str) -> impl Fn(E) -> StoreError {
    move |e| {
        let e: redb::Error = e.into();
        let message = e.to_string();
        match e {
            redb::Error::Io(_)
            | redb::Error::PreviousIo
            | redb::Error::Corrupted(_)
            | redb::Error::LockPoisoned(_) => StoreError::Failed { context, message },
            _ => StoreError::Db { context, message },
        }
    }
}

fn corrupt(table: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        message: message.into(),
    }
}

fn encode<T: Serialize>(table: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    encoding::encode_value(value).map_err(|e| corrupt(table, e.to_string()))
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    encoding::decode_value(bytes).map_err(|e| corrupt(table, e.to_string()))
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

/// The chain database. Clones share it.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    db: Database,
    path: PathBuf,
    marker: marker::TipMarker,
    /// Heights whose stored block failed verification (at most
    /// [`blocks::MAX_DAMAGED_TRACKED`]).
    damaged: Mutex<BTreeSet<u64>>,
    /// Set once, by the first fatal error.
    failure: OnceLock<String>,
    /// The ban writers started on this store, flushed by [`Store::close`].
    ban_writers: Mutex<Vec<Weak<ban_writer::Handle>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.marker.flush();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.shared.path)
            .field("failure", &self.shared.failure.get())
            .finish_non_exhaustive()
    }
}

impl Store {
    fn from_db(db: Database, path: &Path, marker: marker::TipMarker) -> Self {
        Store {
            shared: Arc::new(Shared {
                db,
                path: path.to_path_buf(),
                marker,
                damaged: Mutex::new(BTreeSet::new()),
                failure: OnceLock::new(),
                ban_writers: Mutex::new(Vec::new()),
            }),
        }
    }

    fn db(&self) -> &Database {
        &self.shared.db
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Runs `f` and, when it fails fatally, marks the store failed.
    fn watch<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let result = f();
        if let Err(error) = &result {
            if error.is_fatal() {
                self.fail(error);
            }
        }
        result
    }

    /// Records the first fatal error (logged once).
    fn fail(&self, error: &StoreError) {
        if self.shared.failure.set(error.to_string()).is_ok() {
            tracing::error!(
                path = %self.shared.path.display(),
                %error,
                "the database failed: the node must stop"
            );
        }
    }

    /// Why the database failed, once a fatal error (an I/O error, redb's
    /// "previous I/O error", damage found by redb) has occurred; `None`
    /// while it works. A failed store stays failed: redb must be reopened,
    /// so the node stops.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.get().cloned()
    }

    /// Flushes what is buffered for a clean stop: the ban writers started
    /// on this store (waiting at most `timeout` for each) and the pending
    /// tip marker. The store stays usable.
    pub fn close(&self, timeout: std::time::Duration) {
        let writers: Vec<Weak<ban_writer::Handle>> =
            std::mem::take(&mut *crate::locks::lock(&self.shared.ban_writers));
        for writer in writers.iter().filter_map(Weak::upgrade) {
            writer.close(timeout);
        }
        self.shared.marker.flush();
    }

    /// Notes a committed tip for the marker (see [`marker`]).
    fn mark_tip(&self, height: u64, hash: BlockHash) {
        self.shared
            .marker
            .committed(marker::MarkedTip { height, hash });
    }

    /// The tip: `(height, hash)`, or `None` before genesis.
    ///
    /// # Errors
    /// [`StoreError`] on database failure or corruption.
    pub fn tip(&self) -> Result<Option<(u64, BlockHash)>, StoreError> {
        self.watch(|| {
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
            let meta = tx.open_table(META).map_err(db_err("open meta"))?;
            read_tip(&meta)
        })
    }

    /// The height of the block with `hash`.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub fn height_of(&self, hash: &BlockHash) -> Result<Option<u64>, StoreError> {
        self.watch(|| {
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
            let t = tx
                .open_table(BLOCK_HEIGHTS)
                .map_err(db_err("open block_heights"))?;
            Ok(t.get(hash)
                .map_err(db_err("read block height"))?
                .map(|v| v.value()))
        })
    }

    /// The height of the block holding `txid`.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub fn tx_height(&self, txid: &Txid) -> Result<Option<u64>, StoreError> {
        self.watch(|| {
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
            let t = tx.open_table(TX_INDEX).map_err(db_err("open tx_index"))?;
            Ok(t.get(txid)
                .map_err(db_err("read tx index"))?
                .map(|v| v.value()))
        })
    }

    /// Unspent outputs stored.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub fn utxo_count(&self) -> Result<u64, StoreError> {
        self.watch(|| {
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
            let t = tx.open_table(UTXOS).map_err(db_err("open utxos"))?;
            t.len().map_err(db_err("count utxos"))
        })
    }

    /// How many unspent outputs there are and their total value, in units
    /// (a scan of the address index: for `gettxoutsetinfo`).
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub fn utxo_totals(&self) -> Result<(u64, u64), StoreError> {
        self.watch(|| {
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
            let t = tx
                .open_table(ADDRESS_UTXOS)
                .map_err(db_err("open address_utxos"))?;
            let mut count = 0u64;
            let mut total = 0u64;
            for entry in t.iter().map_err(db_err("read address index"))? {
                let (_, value) = entry.map_err(db_err("read address index"))?;
                count += 1;
                total = total.saturating_add(value.value());
            }
            Ok((count, total))
        })
    }

    /// The unspent output at `outpoint`.
    ///
    /// # Errors
    /// [`StoreError`] on database failure or corruption.
    pub fn get_utxo(&self, outpoint: &OutPoint) -> Result<Option<TxOut>, StoreError> {
        self.watch(|| {
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
            let t = tx.open_table(UTXOS).map_err(db_err("open utxos"))?;
            match t
                .get(outpoint_key(outpoint).as_slice())
                .map_err(db_err("read utxo"))?
            {
                None => Ok(None),
                Some(v) => decode("utxos", v.value()).map(Some),
            }
        })
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
        self.watch(|| {
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
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
        })
    }

    /// The sum of the unspent outputs locked to `address`, in units.
    ///
    /// # Errors
    /// [`StoreError`] on database failure; [`StoreError::Corrupt`] if the
    /// sum overflows (no valid chain holds more than the money supply).
    pub fn balance(&self, address: &Address) -> Result<u64, StoreError> {
        self.watch(|| {
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
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
        })
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

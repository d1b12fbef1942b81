//! Table creation and schema migrations, run once at open in one write
//! transaction (a crash mid-way leaves the old layout, migrated again at
//! the next open).
//!
//! From version 1 to 2:
//! * `block_hashes` is built from the stored blocks: a block that decodes
//!   with its key's height and a matching merkle root, and whose hash the
//!   `block_heights` index places at that height, is recorded with the
//!   digest of its bytes; a block that does not is recorded with the hash
//!   the index gives for its height and no valid digest, so reading it fails
//!   verification and it is repaired from peers like any damaged block;
//! * the position-keyed `bans` table is copied into `bans_v2` (one row per
//!   subnet) and dropped (see [`super::bans`]).

use redb::{Database, ReadableTable, WriteTransaction};

use super::blocks::{record, RECORD_LEN};
use super::{
    bans, corrupt, db_err, decode, encode, read_tip, StoreError, ADDRESS_UTXOS, BLOCKS,
    BLOCK_HASHES, BLOCK_HEIGHTS, META, SCHEMA_VERSION, TX_INDEX, UNDO, UTXOS,
};
use crate::chain::block::{Block, BlockHash};
use crate::encoding;

/// What preparing the tables found.
#[derive(Debug, Default)]
pub(super) struct Prepared {
    /// The schema version migrated from, if a migration ran.
    pub(super) migrated_from: Option<u64>,
    /// Heights whose block failed the checks while migrating.
    pub(super) damaged: Vec<(u64, &'static str)>,
}

/// Creates missing tables, checks the schema version and migrates an older
/// layout.
///
/// # Errors
/// [`StoreError::Schema`] for a layout this build cannot use;
/// [`StoreError::Corrupt`] when a migration meets records it cannot make
/// sense of; a database error.
pub(super) fn prepare(db: &Database) -> Result<Prepared, StoreError> {
    let mut prepared = Prepared::default();
    let tx = db.begin_write().map_err(db_err("begin"))?;
    {
        tx.open_table(BLOCKS).map_err(db_err("create tables"))?;
        tx.open_table(BLOCK_HASHES)
            .map_err(db_err("create tables"))?;
        tx.open_table(BLOCK_HEIGHTS)
            .map_err(db_err("create tables"))?;
        tx.open_table(UTXOS).map_err(db_err("create tables"))?;
        tx.open_table(TX_INDEX).map_err(db_err("create tables"))?;
        tx.open_table(UNDO).map_err(db_err("create tables"))?;
        tx.open_table(ADDRESS_UTXOS)
            .map_err(db_err("create tables"))?;
        tx.open_table(bans::BANS).map_err(db_err("create tables"))?;
        tx.open_table(super::peers::ADDRESS_BOOK)
            .map_err(db_err("create tables"))?;
        let mut meta = tx.open_table(META).map_err(db_err("create tables"))?;
        let found: Option<u64> = match meta.get("schema").map_err(db_err("read schema"))? {
            None => None,
            Some(v) => Some(decode("meta", v.value())?),
        };
        let write = match found {
            Some(SCHEMA_VERSION) => false,
            Some(1) => {
                prepared.damaged = block_hashes_from_blocks(&tx)?;
                let bans = bans::migrate_v1(&tx)?;
                tracing::info!(
                    from = 1,
                    to = SCHEMA_VERSION,
                    bans,
                    damaged = prepared.damaged.len(),
                    "store migrated"
                );
                prepared.migrated_from = Some(1);
                true
            }
            None if read_tip(&meta)?.is_none() => true,
            found => {
                return Err(StoreError::Schema {
                    found,
                    expected: SCHEMA_VERSION,
                })
            }
        };
        if write {
            let version = encode("meta", &SCHEMA_VERSION)?;
            meta.insert("schema", version.as_slice())
                .map_err(db_err("write schema"))?;
        }
    }
    tx.commit().map_err(db_err("commit"))?;
    Ok(prepared)
}

/// Fills `block_hashes` from `blocks` and `block_heights`; returns the
/// heights whose block failed the checks.
fn block_hashes_from_blocks(tx: &WriteTransaction) -> Result<Vec<(u64, &'static str)>, StoreError> {
    let blocks = tx.open_table(BLOCKS).map_err(db_err("open blocks"))?;
    let heights = tx
        .open_table(BLOCK_HEIGHTS)
        .map_err(db_err("open block_heights"))?;
    let mut hashes = tx
        .open_table(BLOCK_HASHES)
        .map_err(db_err("open block_hashes"))?;
    let mut damaged = Vec::new();
    for entry in blocks.iter().map_err(db_err("read blocks"))? {
        let (height, bytes) = entry.map_err(db_err("read blocks"))?;
        let (height, bytes) = (height.value(), bytes.value());
        let checked: Result<BlockHash, &'static str> = match encoding::decode_value::<Block>(bytes)
        {
            Err(_) => Err("does not decode"),
            Ok(b) if b.header.height != height => Err("header names another height"),
            Ok(b) if !b.merkle_matches() => Err("merkle root does not match the transactions"),
            Ok(b) => {
                let hash = b.hash();
                let indexed = heights
                    .get(&hash)
                    .map_err(db_err("read block height"))?
                    .map(|v| v.value());
                if indexed == Some(height) {
                    Ok(hash)
                } else {
                    Err("hash not indexed at its height")
                }
            }
        };
        let value: [u8; RECORD_LEN] = match checked {
            Ok(hash) => record(&hash, bytes),
            Err(problem) => {
                let hash = indexed_hash_at(&heights, height)?.ok_or_else(|| {
                    corrupt(
                        "blocks",
                        format!("block at height {height} {problem} and no hash is indexed there"),
                    )
                })?;
                damaged.push((height, problem));
                // A digest no bytes have: reads fail until repaired.
                let mut value = record(&hash, bytes);
                value[32..].iter_mut().for_each(|b| *b = !*b);
                value
            }
        };
        hashes
            .insert(height, &value)
            .map_err(db_err("record block hash"))?;
    }
    Ok(damaged)
}

/// The hash `block_heights` places at `height` (a full scan: only for the
/// rare block that fails the checks while migrating).
fn indexed_hash_at(
    heights: &impl ReadableTable<&'static [u8; 32], u64>,
    height: u64,
) -> Result<Option<BlockHash>, StoreError> {
    for entry in heights.iter().map_err(db_err("read block_heights"))? {
        let (hash, h) = entry.map_err(db_err("read block_heights"))?;
        if h.value() == height {
            return Ok(Some(*hash.value()));
        }
    }
    Ok(None)
}

//! Verified block reads, the set of damaged heights, and their repair.
//!
//! Every block read ([`Store::block`], [`Store::block_by_hash`],
//! [`Store::raw_blocks`], [`Store::tx_location`], and the block a rollback
//! undoes) is checked against the block's `block_hashes` record, written in
//! the same transaction as the block:
//! * the blake3 digest of the stored bytes equals the recorded one (this
//!   catches a change anywhere, signatures included, which the block hash
//!   does not cover);
//! * the bytes decode, the header's height is the key's;
//! * the block's hash equals the recorded hash;
//! * the header's merkle root matches the transactions.
//!
//! A block that fails is [`StoreError::BadBlock`]: its bytes are never
//! returned, the failure is logged once per height with structured fields,
//! and the height joins [`Store::damaged_heights`] (bounded by
//! [`MAX_DAMAGED_TRACKED`]) until [`Store::repair_block`] rewrites it from a
//! copy whose hash is the recorded one (fetched from peers by sync).
//!
//! redb verifies its page checksums only in its integrity check (at open),
//! not on reads: these checks are what keeps bytes damaged while the node
//! runs, or written wrong by a bug, from being served.

use std::sync::atomic::{AtomicBool, Ordering};

use redb::ReadableTable;

use super::{
    corrupt, db_err, encode, Store, StoreError, BLOCKS, BLOCK_HASHES, BLOCK_HEIGHTS, TX_INDEX,
};
use crate::chain::block::{Block, BlockHash};
use crate::chain::transaction::{Transaction, Txid};
use crate::encoding;

/// Length of a `block_hashes` record: block hash ‖ digest of the bytes.
pub(super) const RECORD_LEN: usize = 64;

/// Most damaged heights remembered; further ones are still refused and
/// logged, but not listed.
pub const MAX_DAMAGED_TRACKED: usize = 4096;

/// Set once the damaged set was found full (logged once).
static DAMAGED_OVERFLOW_LOGGED: AtomicBool = AtomicBool::new(false);

/// The `block_hashes` record of the block `hash` stored as `bytes`.
pub(super) fn record(hash: &BlockHash, bytes: &[u8]) -> [u8; RECORD_LEN] {
    let mut out = [0u8; RECORD_LEN];
    out[..32].copy_from_slice(hash);
    out[32..].copy_from_slice(blake3::hash(bytes).as_bytes());
    out
}

/// The block hash in a record.
pub(super) fn recorded_hash(record: &[u8; RECORD_LEN]) -> BlockHash {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&record[..32]);
    hash
}

/// Checks the bytes stored at `height` against its record; the decoded
/// block, or what failed.
pub(super) fn verify(
    height: u64,
    bytes: &[u8],
    record: Option<&[u8; RECORD_LEN]>,
) -> Result<Block, &'static str> {
    let Some(record) = record else {
        return Err("no recorded hash");
    };
    if blake3::hash(bytes).as_bytes()[..] != record[32..] {
        return Err("stored bytes differ from those written");
    }
    let block: Block = encoding::decode_value(bytes).map_err(|_| "does not decode")?;
    if block.header.height != height {
        return Err("header names another height");
    }
    if block.hash() != recorded_hash(record) {
        return Err("hash differs from the recorded hash");
    }
    if !block.merkle_matches() {
        return Err("merkle root does not match the transactions");
    }
    Ok(block)
}

impl Store {
    /// Records `height` as damaged (logged once per height) and returns the
    /// error to report.
    pub(super) fn damaged_block(&self, height: u64, problem: &'static str) -> StoreError {
        let mut damaged = crate::locks::lock(&self.shared.damaged);
        if !damaged.contains(&height) {
            if damaged.len() < MAX_DAMAGED_TRACKED {
                damaged.insert(height);
                tracing::error!(
                    path = %self.path().display(),
                    height,
                    problem,
                    "stored block is damaged: it is not served and must be fetched again"
                );
            } else if !DAMAGED_OVERFLOW_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    path = %self.path().display(),
                    height,
                    problem,
                    tracked = MAX_DAMAGED_TRACKED,
                    "more damaged blocks than can be tracked: restore a backup or resync"
                );
            }
        }
        StoreError::BadBlock { height, problem }
    }

    /// Checks the stored `bytes` of `height` (see the module docs).
    fn checked(
        &self,
        height: u64,
        bytes: &[u8],
        record: Option<&[u8; RECORD_LEN]>,
    ) -> Result<Block, StoreError> {
        verify(height, bytes, record).map_err(|problem| self.damaged_block(height, problem))
    }

    /// The block at `height` read in `tx` and verified; `None` when the
    /// chain has no block there. A recorded block whose bytes are missing is
    /// damaged.
    fn read_verified(
        &self,
        tx: &redb::ReadTransaction,
        height: u64,
    ) -> Result<Option<Block>, StoreError> {
        let hashes = tx
            .open_table(BLOCK_HASHES)
            .map_err(db_err("open block_hashes"))?;
        let record = hashes
            .get(height)
            .map_err(db_err("read block hash"))?
            .map(|v| *v.value());
        let blocks = tx.open_table(BLOCKS).map_err(db_err("open blocks"))?;
        match blocks.get(height).map_err(db_err("read block"))? {
            Some(bytes) => self
                .checked(height, bytes.value(), record.as_ref())
                .map(Some),
            None if record.is_some() => Err(self.damaged_block(height, "block missing")),
            None => Ok(None),
        }
    }

    /// The heights whose stored block failed verification and has not been
    /// repaired yet, in increasing order (at most [`MAX_DAMAGED_TRACKED`]).
    pub fn damaged_heights(&self) -> Vec<u64> {
        crate::locks::lock(&self.shared.damaged)
            .iter()
            .copied()
            .collect()
    }

    /// The block at `height`, verified.
    ///
    /// # Errors
    /// [`StoreError::BadBlock`] when the stored block fails verification;
    /// [`StoreError`] on database failure.
    pub fn block(&self, height: u64) -> Result<Option<Block>, StoreError> {
        self.watch(|| {
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
            self.read_verified(&tx, height)
        })
    }

    /// The block with `hash`, if it is in the chain, verified.
    ///
    /// # Correctness
    /// The hash index and the block are read in one read transaction, so a
    /// concurrent rollback cannot make a found hash point at a missing or
    /// different block.
    ///
    /// # Errors
    /// [`StoreError::BadBlock`] when the stored block fails verification;
    /// [`StoreError::Corrupt`] when the hash index names a height whose
    /// recorded hash is another; [`StoreError`] on database failure.
    pub fn block_by_hash(&self, hash: &BlockHash) -> Result<Option<Block>, StoreError> {
        self.watch(|| {
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
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
            match self.read_verified(&tx, height)? {
                // Verified against its record: a hash that differs means the
                // index points at another block.
                Some(block) if block.hash() != *hash => Err(corrupt(
                    "block_heights",
                    format!("hash indexed at height {height} names another block"),
                )),
                Some(block) => Ok(Some(block)),
                None => Err(self.damaged_block(height, "block missing")),
            }
        })
    }

    /// The stored (encoded) blocks from height `start` upward, for serving
    /// a syncing peer, each verified before it is returned.
    ///
    /// Stops at the tip, after `max_count` blocks, or before the total
    /// length would exceed `max_bytes`; the block at `start` is always
    /// returned when it exists (and `max_count > 0`), even if it alone is
    /// larger than `max_bytes`, so a peer can always make progress. A block
    /// that fails verification ends the answer: only the verified blocks
    /// before it are returned (possibly none), and its height joins
    /// [`Store::damaged_heights`].
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
        self.watch(|| {
            let mut out: Vec<Vec<u8>> = Vec::new();
            if max_count == 0 {
                return Ok(out);
            }
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
            let blocks = tx.open_table(BLOCKS).map_err(db_err("open blocks"))?;
            let hashes = tx
                .open_table(BLOCK_HASHES)
                .map_err(db_err("open block_hashes"))?;
            let mut total: usize = 0;
            for entry in blocks.range(start..).map_err(db_err("read blocks"))? {
                let (height, bytes) = entry.map_err(db_err("read blocks"))?;
                let height = height.value();
                let expected = start.saturating_add(out.len() as u64);
                if height != expected {
                    return Err(corrupt(
                        "blocks",
                        format!("height {height} stored where {expected} was expected"),
                    ));
                }
                let bytes = bytes.value();
                let grown = total.saturating_add(bytes.len());
                if !out.is_empty() && grown > max_bytes {
                    break;
                }
                let record = hashes
                    .get(height)
                    .map_err(db_err("read block hash"))?
                    .map(|v| *v.value());
                if self.checked(height, bytes, record.as_ref()).is_err() {
                    break;
                }
                total = grown;
                out.push(bytes.to_vec());
                if out.len() >= max_count {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// The transaction `txid` and the height of the block holding it, read
    /// from that block, verified (for the `gettransaction` RPC).
    ///
    /// # Correctness
    /// The index and the block are read in one read transaction, so a
    /// concurrent rollback cannot split them.
    ///
    /// # Errors
    /// [`StoreError::BadBlock`] when the block fails verification;
    /// [`StoreError`] on database failure or corruption (an indexed txid
    /// missing from its block).
    pub fn tx_location(&self, txid: &Txid) -> Result<Option<(u64, Transaction)>, StoreError> {
        self.watch(|| {
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
            let index = tx.open_table(TX_INDEX).map_err(db_err("open tx_index"))?;
            let Some(height) = index
                .get(txid)
                .map_err(db_err("read tx index"))?
                .map(|v| v.value())
            else {
                return Ok(None);
            };
            let Some(block) = self.read_verified(&tx, height)? else {
                return Err(self.damaged_block(height, "block missing"));
            };
            block
                .transactions
                .into_iter()
                .find(|t| t.txid() == *txid)
                .map(|t| Some((height, t)))
                .ok_or_else(|| corrupt("tx_index", format!("txid not in the block at {height}")))
        })
    }

    /// Rewrites the stored block at `block.header.height` with `block`, if
    /// it is the block the chain holds there: its hash is the recorded one
    /// (or, should the record itself be damaged, the one the hash index
    /// places at that height) and its merkle root matches its transactions.
    /// Returns whether it was written; the height then leaves
    /// [`Store::damaged_heights`].
    ///
    /// # Security
    /// The hash covers the header without its signature, and the merkle
    /// root the txids, which exclude input signatures: the caller checks
    /// the block's signatures (as for any block from a peer) before handing
    /// it here.
    ///
    /// # Errors
    /// [`StoreError`] on database failure; nothing is written then.
    pub fn repair_block(&self, block: &Block) -> Result<bool, StoreError> {
        self.watch(|| {
            let height = block.header.height;
            let hash = block.hash();
            if !block.merkle_matches() {
                return Ok(false);
            }
            let bytes = encode("blocks", block)?;
            let tx = self.db().begin_write().map_err(db_err("begin"))?;
            {
                let mut hashes = tx
                    .open_table(BLOCK_HASHES)
                    .map_err(db_err("open block_hashes"))?;
                let recorded = hashes
                    .get(height)
                    .map_err(db_err("read block hash"))?
                    .map(|v| recorded_hash(v.value()));
                let heights = tx
                    .open_table(BLOCK_HEIGHTS)
                    .map_err(db_err("open block_heights"))?;
                let indexed = heights
                    .get(&hash)
                    .map_err(db_err("read block height"))?
                    .map(|v| v.value());
                if recorded != Some(hash) && indexed != Some(height) {
                    // Dropping `tx` uncommitted writes nothing.
                    return Ok(false);
                }
                let mut blocks = tx.open_table(BLOCKS).map_err(db_err("open blocks"))?;
                blocks
                    .insert(height, bytes.as_slice())
                    .map_err(db_err("store block"))?;
                hashes
                    .insert(height, &record(&hash, &bytes))
                    .map_err(db_err("record block hash"))?;
            }
            tx.commit().map_err(db_err("commit"))?;
            let was_damaged = crate::locks::lock(&self.shared.damaged).remove(&height);
            tracing::info!(
                path = %self.path().display(),
                height,
                was_damaged,
                "stored block repaired"
            );
            Ok(true)
        })
    }

    /// Overwrites the stored bytes of `height` without touching its record,
    /// as damage would.
    #[cfg(test)]
    pub(crate) fn overwrite_block_bytes_for_test(
        &self,
        height: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let tx = self.db().begin_write().map_err(db_err("begin"))?;
        {
            let mut blocks = tx.open_table(BLOCKS).map_err(db_err("open blocks"))?;
            blocks
                .insert(height, bytes)
                .map_err(db_err("store block"))?;
        }
        tx.commit().map_err(db_err("commit"))
    }
}

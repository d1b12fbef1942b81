//! Rebuilding the derived tables from the stored blocks: the UTXO set, the
//! address index, the tx index, the undo records and the hash index
//! ([`Store::reindex`]), or the tx index alone ([`Store::reindex_txs`]).
//!
//! Every one of these tables is written with each block in the same
//! commit as the block itself, so on a healthy store a rebuild finds
//! nothing to change; it exists for an operator who doubts them (after
//! restoring a file, after a disk fault, or to check), and it says which
//! tables differed.
//!
//! # Correctness
//! A rebuild is one redb write transaction: the old tables are compared
//! (by a digest over every entry, in key order), deleted and rebuilt by
//! replaying every block from genesis, and the result commits together or
//! not at all. A node killed during a rebuild reopens with the tables as
//! they were. Every block read is checked against its recorded hash (as on
//! every read, see [`super::blocks`]); a damaged block, a block that does
//! not follow the one before, a spend of an output no earlier block left
//! unspent, or a repeated txid aborts the rebuild with nothing changed.
//!
//! The caller stops block application meanwhile: the chain runs a rebuild
//! on its worker under its state lock, and redb's single writer keeps any
//! other write out.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle, WriteTransaction};

use super::blocks::verify;
use super::write::Ledger;
use super::{
    corrupt, db_err, encode, read_tip, Store, StoreError, ADDRESS_UTXOS, BLOCKS, BLOCK_HASHES,
    BLOCK_HEIGHTS, META, TX_INDEX, UNDO, UTXOS,
};
use crate::chain::block::BlockHash;

/// What a rebuild replayed and what it changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reindexed {
    /// Blocks replayed (the tip's height + 1; 0 for an empty store).
    pub blocks: u64,
    /// Transactions indexed.
    pub transactions: u64,
    /// Unspent outputs after the rebuild (a tx-index rebuild leaves them
    /// as they were and counts them).
    pub utxos: u64,
    /// The tables whose content differed from the rebuild, by name
    /// (`utxos`, `address_utxos`, `tx_index`, `undo`, `block_heights`);
    /// empty when everything matched.
    pub changed: Vec<&'static str>,
}

/// Which derived tables a rebuild covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// Every table derived from the blocks.
    All,
    /// The tx index only.
    TxIndex,
}

/// A table's entry count and a digest of every entry, in key order.
type Digest = (u64, [u8; 32]);

/// Digest of the table `definition` in `tx`.
fn digest<K, V>(
    tx: &WriteTransaction,
    definition: TableDefinition<K, V>,
) -> Result<Digest, StoreError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let table = tx.open_table(definition).map_err(db_err("open table"))?;
    let mut hasher = blake3::Hasher::new();
    let mut count = 0u64;
    for entry in table.iter().map_err(db_err("scan table"))? {
        let (key, value) = entry.map_err(db_err("scan table"))?;
        let key = key.value();
        let value = value.value();
        let (key, value) = (K::as_bytes(&key), V::as_bytes(&value));
        // Length prefixes keep (ab, c) and (a, bc) apart.
        hasher.update(&(key.as_ref().len() as u64).to_le_bytes());
        hasher.update(key.as_ref());
        hasher.update(&(value.as_ref().len() as u64).to_le_bytes());
        hasher.update(value.as_ref());
        count += 1;
    }
    Ok((count, *hasher.finalize().as_bytes()))
}

/// Digests of the tables `scope` rebuilds, by name.
fn digests(tx: &WriteTransaction, scope: Scope) -> Result<Vec<(&'static str, Digest)>, StoreError> {
    let mut out = vec![(TX_INDEX.name(), digest(tx, TX_INDEX)?)];
    if scope == Scope::All {
        out.push((UTXOS.name(), digest(tx, UTXOS)?));
        out.push((ADDRESS_UTXOS.name(), digest(tx, ADDRESS_UTXOS)?));
        out.push((UNDO.name(), digest(tx, UNDO)?));
        out.push((BLOCK_HEIGHTS.name(), digest(tx, BLOCK_HEIGHTS)?));
    }
    Ok(out)
}

impl Store {
    /// Rebuilds the UTXO set, the address index, the tx index, the undo
    /// records and the block-hash index from the stored blocks, in one
    /// atomic write (see the module docs).
    ///
    /// # Errors
    /// [`StoreError::BadBlock`] for a block that fails its check,
    /// [`StoreError::Corrupt`] for a chain that does not replay, or a
    /// database error; nothing is changed then.
    pub fn reindex(&self) -> Result<Reindexed, StoreError> {
        self.rebuild(Scope::All)
    }

    /// Rebuilds the tx index alone from the stored blocks, in one atomic
    /// write; the UTXO set is left as it is.
    ///
    /// # Errors
    /// As [`Store::reindex`].
    pub fn reindex_txs(&self) -> Result<Reindexed, StoreError> {
        self.rebuild(Scope::TxIndex)
    }

    fn rebuild(&self, scope: Scope) -> Result<Reindexed, StoreError> {
        self.watch(|| {
            let tx = self.db().begin_write().map_err(db_err("begin"))?;
            let tip = {
                let meta = tx.open_table(META).map_err(db_err("open meta"))?;
                read_tip(&meta)?
            };
            let before = digests(&tx, scope)?;
            for (name, _) in &before {
                tx.delete_table(TableDefinition::<(), ()>::new(name))
                    .map_err(db_err("clear table"))?;
            }
            let mut report = Reindexed::default();
            if let Some((tip_height, tip_hash)) = tip {
                let last = self.replay(&tx, scope, tip_height, &mut report)?;
                if last != tip_hash {
                    return Err(corrupt(
                        "meta",
                        format!("the tip's hash is not that of the block at height {tip_height}"),
                    ));
                }
            }
            let after = digests(&tx, scope)?;
            report.changed = before
                .iter()
                .zip(&after)
                .filter(|((_, old), (_, new))| old != new)
                .map(|((name, _), _)| *name)
                .collect();
            report.utxos = tx
                .open_table(UTXOS)
                .map_err(db_err("open utxos"))?
                .len()
                .map_err(db_err("count utxos"))?;
            tx.commit().map_err(db_err("commit"))?;
            Ok(report)
        })
    }

    /// Replays blocks `0..=tip_height` into the emptied tables of `scope`;
    /// returns the last block's hash.
    fn replay(
        &self,
        tx: &WriteTransaction,
        scope: Scope,
        tip_height: u64,
        report: &mut Reindexed,
    ) -> Result<BlockHash, StoreError> {
        let blocks = tx.open_table(BLOCKS).map_err(db_err("open blocks"))?;
        let hashes = tx
            .open_table(BLOCK_HASHES)
            .map_err(db_err("open block_hashes"))?;
        let mut heights = tx
            .open_table(BLOCK_HEIGHTS)
            .map_err(db_err("open block_heights"))?;
        let mut undo_table = tx.open_table(UNDO).map_err(db_err("open undo"))?;
        let mut ledger = Ledger::open(tx)?;
        let mut prev: Option<BlockHash> = None;
        for height in 0..=tip_height {
            let record = hashes
                .get(height)
                .map_err(db_err("read block hash"))?
                .map(|v| *v.value());
            let block = match blocks.get(height).map_err(db_err("read block"))? {
                None => return Err(self.damaged_block(height, "block missing")),
                Some(bytes) => verify(height, bytes.value(), record.as_ref())
                    .map_err(|problem| self.damaged_block(height, problem))?,
            };
            if let Some(prev) = prev {
                if block.header.prev_hash != prev {
                    return Err(corrupt(
                        "blocks",
                        format!("block at {height} does not follow the block before it"),
                    ));
                }
            }
            let replayed = match scope {
                Scope::All => ledger.connect(&block, height).and_then(|undo| {
                    let undo = encode("undo", &undo)?;
                    undo_table
                        .insert(height, undo.as_slice())
                        .map_err(db_err("store undo"))?;
                    Ok(())
                }),
                Scope::TxIndex => block
                    .transactions
                    .iter()
                    .try_for_each(|t| ledger.index_tx(&t.txid(), height)),
            };
            replayed.map_err(|e| match e {
                StoreError::MissingOutput(outpoint) => corrupt(
                    "blocks",
                    format!(
                        "block at {height} spends {outpoint:?}, which no earlier block left unspent"
                    ),
                ),
                StoreError::DuplicateTxid(txid) => corrupt(
                    "blocks",
                    format!(
                        "block at {height} repeats transaction {}",
                        hex::encode(txid)
                    ),
                ),
                other => other,
            })?;
            let hash = block.hash();
            if scope == Scope::All {
                heights
                    .insert(&hash, height)
                    .map_err(db_err("index block"))?;
            }
            report.blocks += 1;
            report.transactions += block.transactions.len() as u64;
            prev = Some(hash);
        }
        // `prev` is set: the loop ran at least once (height 0).
        prev.ok_or_else(|| corrupt("blocks", "no block replayed"))
    }
}

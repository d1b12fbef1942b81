//! The write path: applying a block and rolling back the tip, each one
//! redb write transaction (see the parent module's correctness notes).

use redb::{ReadableTable, Table, WriteTransaction};

use super::blocks::{record, verify};
use super::{
    address_key, corrupt, db_err, decode, encode, outpoint_key, output_point, read_tip, Store,
    StoreError, ADDRESS_KEY_LEN, ADDRESS_UTXOS, BLOCKS, BLOCK_HASHES, BLOCK_HEIGHTS, META,
    TX_INDEX, UNDO, UTXOS,
};
use crate::chain::block::Block;
use crate::chain::transaction::{OutPoint, TxOut};

impl Store {
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
        self.watch(|| {
            let height = block.header.height;
            let hash = block.hash();
            let encoded = encode("blocks", block)?;
            let tx = self.db().begin_write().map_err(db_err("begin"))?;
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
                let undo = Ledger::open(&tx)?.connect(block, height)?;
                let undo = encode("undo", &undo)?;
                let mut undo_table = tx.open_table(UNDO).map_err(db_err("open undo"))?;
                undo_table
                    .insert(height, undo.as_slice())
                    .map_err(db_err("store undo"))?;
                let mut blocks = tx.open_table(BLOCKS).map_err(db_err("open blocks"))?;
                blocks
                    .insert(height, encoded.as_slice())
                    .map_err(db_err("store block"))?;
                let mut hashes = tx
                    .open_table(BLOCK_HASHES)
                    .map_err(db_err("open block_hashes"))?;
                hashes
                    .insert(height, &record(&hash, &encoded))
                    .map_err(db_err("record block hash"))?;
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
            self.mark_tip(height, hash);
            Ok(())
        })
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
        self.watch(|| {
            let tx = self.db().begin_write().map_err(db_err("begin"))?;
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
                let mut hashes = tx
                    .open_table(BLOCK_HASHES)
                    .map_err(db_err("open block_hashes"))?;
                let record = hashes
                    .remove(height)
                    .map_err(db_err("unrecord block hash"))?
                    .map(|v| *v.value());
                block = match blocks.remove(height).map_err(db_err("remove block"))? {
                    None => return Err(self.damaged_block(height, "block missing")),
                    // The undo below trusts the block's transactions: verify them.
                    Some(v) => verify(height, v.value(), record.as_ref())
                        .map_err(|problem| self.damaged_block(height, problem))?,
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
            self.mark_tip(block.header.height - 1, block.header.prev_hash);
            Ok(block)
        })
    }
}

/// The tables a block's transactions change: the UTXO set, the tx index
/// and the address index.
pub(super) struct Ledger<'t> {
    utxos: Table<'t, &'static [u8], &'static [u8]>,
    index: Table<'t, &'static [u8; 32], u64>,
    addresses: Table<'t, &'static [u8; ADDRESS_KEY_LEN], u64>,
}

impl<'t> Ledger<'t> {
    /// Opens the three tables in `tx`.
    pub(super) fn open(tx: &'t WriteTransaction) -> Result<Ledger<'t>, StoreError> {
        Ok(Ledger {
            utxos: tx.open_table(UTXOS).map_err(db_err("open utxos"))?,
            index: tx.open_table(TX_INDEX).map_err(db_err("open tx_index"))?,
            addresses: tx
                .open_table(ADDRESS_UTXOS)
                .map_err(db_err("open address_utxos"))?,
        })
    }

    /// Applies `block`'s transactions (at `height`) in order: each input's
    /// output removed from the UTXO set and the address index, each txid
    /// indexed, each output added. Returns the undo record: the spent
    /// outputs in the order the inputs spend them.
    ///
    /// # Errors
    /// [`StoreError::MissingOutput`], [`StoreError::DuplicateTxid`], an
    /// unindexed output ([`StoreError::Corrupt`]) or a database error; the
    /// caller drops the write transaction uncommitted then.
    pub(super) fn connect(
        &mut self,
        block: &Block,
        height: u64,
    ) -> Result<Vec<(OutPoint, TxOut)>, StoreError> {
        let mut undo: Vec<(OutPoint, TxOut)> = Vec::new();
        for transaction in &block.transactions {
            let txid = transaction.txid();
            for input in &transaction.inputs {
                let spent: TxOut = match self
                    .utxos
                    .remove(outpoint_key(&input.prevout).as_slice())
                    .map_err(db_err("spend utxo"))?
                {
                    None => return Err(StoreError::MissingOutput(input.prevout)),
                    Some(v) => decode("utxos", v.value())?,
                };
                if self
                    .addresses
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
            self.index_tx(&txid, height)?;
            for (i, output) in transaction.outputs.iter().enumerate() {
                let outpoint = output_point(txid, i);
                let value = encode("utxos", output)?;
                self.utxos
                    .insert(outpoint_key(&outpoint).as_slice(), value.as_slice())
                    .map_err(db_err("add utxo"))?;
                self.addresses
                    .insert(&address_key(&output.address, &outpoint), output.value)
                    .map_err(db_err("index utxo"))?;
            }
        }
        Ok(undo)
    }

    /// Records `txid` at `height` in the tx index.
    ///
    /// # Errors
    /// [`StoreError::DuplicateTxid`] if it is there already.
    pub(super) fn index_tx(&mut self, txid: &[u8; 32], height: u64) -> Result<(), StoreError> {
        if self
            .index
            .insert(txid, height)
            .map_err(db_err("index tx"))?
            .is_some()
        {
            return Err(StoreError::DuplicateTxid(*txid));
        }
        Ok(())
    }
}

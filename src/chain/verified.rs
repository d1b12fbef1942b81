//! Transactions and blocks whose signatures were verified before the chain
//! state is touched.
//!
//! Signature checks are the expensive part of validation (tens of
//! microseconds per input) and need nothing but the data itself, so they
//! run first, off the chain's worker and in parallel over the cores; the
//! state then checks only what needs the UTXO set. The types can only be
//! made by verifying, so a value that skipped the check cannot be mistaken
//! for one that passed it.

use std::num::NonZeroUsize;

use super::block::Block;
use super::transaction::{Transaction, TxError, UtxoView};

/// Below this many transactions a block's signatures are checked on the
/// calling thread: starting threads would cost more than it saves.
const PARALLEL_MIN_TXS: usize = 64;

/// A transaction whose input signatures verified for `magic`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedTx {
    tx: Transaction,
    magic: [u8; 4],
}

impl VerifiedTx {
    /// Verifies every input signature of `tx` for the network `magic`.
    ///
    /// # Errors
    /// The first bad structure or signature.
    pub fn verify(tx: Transaction, magic: [u8; 4]) -> Result<VerifiedTx, TxError> {
        tx.verify_signatures(magic)?;
        Ok(VerifiedTx { tx, magic })
    }

    /// The transaction.
    pub fn tx(&self) -> &Transaction {
        &self.tx
    }

    /// The transaction, giving up the proof.
    pub fn into_inner(self) -> Transaction {
        self.tx
    }

    /// Validates against `utxos` on the network `magic`: ownership, double
    /// spends and fee; the signatures are checked again only if they were
    /// verified for another network.
    ///
    /// # Errors
    /// The first [`TxError`] found.
    pub fn validate(&self, magic: [u8; 4], utxos: &impl UtxoView) -> Result<u64, TxError> {
        self.tx.validate_with(magic, utxos, self.magic != magic)
    }
}

/// A block whose transactions' input signatures all verified for `magic`
/// (the header's signature, one check, is left to the state with the rest
/// of the header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedBlock {
    block: Block,
    magic: [u8; 4],
}

impl VerifiedBlock {
    /// Verifies the input signatures of every transaction of `block` (the
    /// genesis-style transaction without inputs has none), in parallel over
    /// the available cores for a large block.
    ///
    /// # Errors
    /// The index of the first bad transaction found and its error.
    pub fn verify(block: Block, magic: [u8; 4]) -> Result<VerifiedBlock, (usize, TxError)> {
        let txs = &block.transactions;
        let threads = std::thread::available_parallelism()
            .map_or(1, NonZeroUsize::get)
            .min(txs.len().div_ceil(PARALLEL_MIN_TXS).max(1));
        let check = |offset: usize, chunk: &[Transaction]| {
            chunk.iter().enumerate().try_for_each(|(i, tx)| {
                if tx.inputs.is_empty() {
                    return Ok(());
                }
                tx.verify_signatures(magic).map_err(|e| (offset + i, e))
            })
        };
        if threads <= 1 {
            check(0, txs)?;
        } else {
            let size = txs.len().div_ceil(threads);
            let results: Vec<Result<(), (usize, TxError)>> = std::thread::scope(|scope| {
                let handles: Vec<_> = txs
                    .chunks(size)
                    .enumerate()
                    .map(|(n, chunk)| {
                        (n * size, chunk, scope.spawn(move || check(n * size, chunk)))
                    })
                    .collect();
                handles
                    .into_iter()
                    // A thread that could not finish: check its part here.
                    .map(|(offset, chunk, h)| h.join().unwrap_or_else(|_| check(offset, chunk)))
                    .collect()
            });
            // The lowest failing index, as a sequential check would report.
            if let Some(error) = results
                .into_iter()
                .filter_map(Result::err)
                .min_by_key(|e| e.0)
            {
                return Err(error);
            }
        }
        Ok(VerifiedBlock { block, magic })
    }

    /// The block.
    pub fn block(&self) -> &Block {
        &self.block
    }

    /// The network magic the signatures were verified for.
    pub fn magic(&self) -> [u8; 4] {
        self.magic
    }

    /// The block, giving up the proof.
    pub fn into_inner(self) -> Block {
        self.block
    }
}

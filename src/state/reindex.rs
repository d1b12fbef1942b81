//! Rebuilding the chain's derived tables from its stored blocks, on
//! request of an operator (RPC `reindex` and `reindextransactions`).

use super::*;
use crate::storage::Reindexed;

/// What [`Chain::reindex`] or [`Chain::reindex_txs`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebuilt {
    /// What the store replayed and which tables differed.
    pub tables: Reindexed,
    /// Pooled transactions dropped because the rebuilt UTXO set no longer
    /// holds an output they spend (0 when nothing changed).
    pub pool_dropped: usize,
    /// The tip's height.
    pub height: u64,
}

impl Chain {
    /// Rebuilds the UTXO set and every index from the stored blocks
    /// ([`Store::reindex`]), then drops pooled transactions whose inputs
    /// the rebuilt set does not hold.
    ///
    /// # Correctness
    /// Runs under the state lock, so no block is applied or rolled back
    /// meanwhile; the caller runs it on the chain worker, so blocks that
    /// arrive wait in the worker's queue and are applied afterwards.
    ///
    /// # Errors
    /// The store's error; nothing is changed then.
    pub fn reindex(&self) -> Result<Rebuilt, ChainError> {
        let mut state = self.state();
        let tables = self.inner.store.reindex()?;
        let pool_dropped = if tables.changed.is_empty() {
            0
        } else {
            let dropped = self.revalidate_pool(&mut state);
            self.update_mempool_gauges(&state);
            dropped
        };
        let rebuilt = self.rebuilt("reindex", tables, pool_dropped);
        drop(state);
        Ok(rebuilt)
    }

    /// Rebuilds the tx index alone from the stored blocks
    /// ([`Store::reindex_txs`]), under the state lock.
    ///
    /// # Errors
    /// The store's error; nothing is changed then.
    pub fn reindex_txs(&self) -> Result<Rebuilt, ChainError> {
        let state = self.state();
        let tables = self.inner.store.reindex_txs()?;
        let rebuilt = self.rebuilt("reindextransactions", tables, 0);
        drop(state);
        Ok(rebuilt)
    }

    /// Logs a finished rebuild and describes it; called under the state
    /// lock, so the tip is the one the rebuild replayed to.
    fn rebuilt(&self, what: &'static str, tables: Reindexed, pool_dropped: usize) -> Rebuilt {
        let height = self.tip().height;
        if tables.changed.is_empty() {
            tracing::info!(
                what,
                blocks = tables.blocks,
                transactions = tables.transactions,
                utxos = tables.utxos,
                "rebuilt the chain's indexes from the stored blocks: they matched"
            );
        } else {
            tracing::warn!(
                what,
                blocks = tables.blocks,
                transactions = tables.transactions,
                utxos = tables.utxos,
                changed = ?tables.changed,
                pool_dropped,
                "rebuilt the chain's indexes from the stored blocks: some differed and were replaced"
            );
        }
        Rebuilt {
            tables,
            pool_dropped,
            height,
        }
    }
}

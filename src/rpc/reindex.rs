//! `reindex` and `reindextransactions`: the chain's derived tables rebuilt
//! from its stored blocks, on the chain's worker (see
//! [`crate::state::Chain::reindex`]).
//!
//! TIME Coin's node started `reindextransactions` in the background and
//! answered `"status": "running"`; here both calls answer when the rebuild
//! is done (`"status": "complete"`), with what it found: every table is
//! written with each block, so on a healthy store `tables_changed` is
//! empty.

use std::time::Instant;

use serde_json::{json, Value};

use super::{codes, RpcContext, RpcError};
use crate::state::{ChainError, Rebuilt};

/// A rebuild's failure: the store's reason; nothing was changed.
fn failed(e: ChainError) -> RpcError {
    match e {
        ChainError::Stopped => RpcError::new(codes::UNAVAILABLE, "the chain has stopped"),
        e => RpcError::new(
            codes::STORE,
            format!("reindex failed, nothing was changed: {e}"),
        ),
    }
}

/// The fields both answers share.
fn answer(rebuilt: &Rebuilt, started: Instant, message: &str) -> serde_json::Map<String, Value> {
    let tables = &rebuilt.tables;
    let mut out = serde_json::Map::new();
    out.insert("message".into(), json!(message));
    out.insert("status".into(), json!("complete"));
    out.insert("chain_height".into(), json!(rebuilt.height));
    out.insert("blocks_processed".into(), json!(tables.blocks));
    out.insert("transactions_indexed".into(), json!(tables.transactions));
    out.insert("tables_changed".into(), json!(tables.changed));
    out.insert(
        "elapsed_ms".into(),
        json!(started.elapsed().as_millis() as u64),
    );
    out
}

/// `reindex`: rebuilds the UTXO set, the address index, the tx index, the
/// undo records and the block-hash index from block 0.
pub(super) async fn reindex(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    super::methods::no_params(params)?;
    let started = Instant::now();
    let rebuilt = super::chain::service(ctx)?
        .run(|chain| chain.reindex())
        .await
        .and_then(|r| r)
        .map_err(failed)?;
    let message = if rebuilt.tables.changed.is_empty() {
        "Full reindex complete: every table matched the stored blocks"
    } else {
        "Full reindex complete: tables that differed from the stored blocks were replaced"
    };
    let mut out = answer(&rebuilt, started, message);
    out.insert("utxo_count".into(), json!(rebuilt.tables.utxos));
    out.insert("tx_index_rebuilt".into(), json!(true));
    out.insert("pool_dropped".into(), json!(rebuilt.pool_dropped));
    Ok(Value::Object(out))
}

/// `reindextransactions`: rebuilds the tx index alone.
pub(super) async fn reindextransactions(
    ctx: &RpcContext,
    params: &Value,
) -> Result<Value, RpcError> {
    super::methods::no_params(params)?;
    let started = Instant::now();
    let rebuilt = super::chain::service(ctx)?
        .run(|chain| chain.reindex_txs())
        .await
        .and_then(|r| r)
        .map_err(failed)?;
    let message = if rebuilt.tables.changed.is_empty() {
        "Transaction reindex complete: the index, written with every block, matched the stored blocks"
    } else {
        "Transaction reindex complete: the index differed from the stored blocks and was replaced"
    };
    Ok(Value::Object(answer(&rebuilt, started, message)))
}

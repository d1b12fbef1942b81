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

use serde_json::{json, Map, Value};

use super::{codes, RpcContext, RpcError};
use crate::state::{Chain, ChainError, Rebuilt};

/// Runs the rebuild `job` on the chain's worker and answers the fields
/// both methods share; `message` is `matched` when every table matched
/// the stored blocks, `replaced` otherwise. A failure changed nothing.
async fn rebuild(
    ctx: &RpcContext,
    params: &Value,
    job: fn(&Chain) -> Result<Rebuilt, ChainError>,
    matched: &str,
    replaced: &str,
) -> Result<(Rebuilt, Map<String, Value>), RpcError> {
    super::methods::no_params(params)?;
    let started = Instant::now();
    let rebuilt = super::chain::service(ctx)?
        .run(job)
        .await
        .and_then(|r| r)
        .map_err(|e| match e {
            ChainError::Stopped => RpcError::new(codes::UNAVAILABLE, "the chain has stopped"),
            e => RpcError::new(
                codes::STORE,
                format!("reindex failed, nothing was changed: {e}"),
            ),
        })?;
    let tables = &rebuilt.tables;
    let message = if tables.changed.is_empty() {
        matched
    } else {
        replaced
    };
    let answer = json!({
        "message": message,
        "status": "complete",
        "chain_height": rebuilt.height,
        "blocks_processed": tables.blocks,
        "transactions_indexed": tables.transactions,
        "tables_changed": tables.changed,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    let Value::Object(answer) = answer else {
        return Err(RpcError::new(
            codes::INTERNAL_ERROR,
            "answer is not an object",
        ));
    };
    Ok((rebuilt, answer))
}

/// `reindex`: rebuilds the UTXO set, the address index, the tx index, the
/// undo records and the block-hash index from block 0.
pub(super) async fn reindex(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let (rebuilt, mut out) = rebuild(
        ctx,
        params,
        Chain::reindex,
        "Full reindex complete: every table matched the stored blocks",
        "Full reindex complete: tables that differed from the stored blocks were replaced",
    )
    .await?;
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
    let (_, out) = rebuild(
        ctx,
        params,
        Chain::reindex_txs,
        "Transaction reindex complete: the index, written with every block, matched the stored blocks",
        "Transaction reindex complete: the index differed from the stored blocks and was replaced",
    )
    .await?;
    Ok(Value::Object(out))
}

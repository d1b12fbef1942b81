//! `mergeutxos [min_count] [max_count] [address]`: consolidates the
//! wallet's smallest outputs into one, as TIME Coin's node did.

use serde_json::{json, Value};

use super::chain::{amount, chain, durable, refused, submit, wallet};
use super::{codes, RpcContext, RpcError};
use crate::chain::transaction::{Transaction, TxOut};
use crate::chain::{Address, MIN_FEE};
use crate::state::CoinStatus;

fn count_param(params: &Value, index: usize, name: &str, default: u64) -> Result<usize, RpcError> {
    match super::methods::param(params, index, name) {
        None | Some(Value::Null) => Ok(default as usize),
        Some(v) => v
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| RpcError::params(format!("{name} must be a non-negative integer"))),
    }
}

/// Spends the wallet's smallest confirmed outputs (at least `min_count`,
/// default 2; at most `max_count`, default 100, and what fits in one
/// transaction) into one output to the wallet, paying the minimum fee.
/// `address` may only name the wallet's own address: it holds one key.
pub(super) async fn mergeutxos(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let chain = chain(ctx)?;
    let wallet = wallet(ctx)?;
    let min_count = count_param(params, 0, "min_count", 2)?.max(2);
    let max_count = count_param(params, 1, "max_count", 100)?;
    let own = wallet.address();
    if max_count < min_count {
        return Err(RpcError::params(format!(
            "max_count ({max_count}) must be at least min_count ({min_count})"
        )));
    }
    if let Some(text) = super::params::optional_string_param(params, 2, "address")? {
        let address = Address::parse(text, chain.genesis().network)
            .map_err(|e| RpcError::params(format!("address: {e}")))?;
        if address != own {
            return Err(RpcError::new(
                codes::WALLET,
                "this wallet holds one key: only its own address can be merged",
            ));
        }
    }
    let max_count = max_count.min(wallet.input_limit(own));
    let guard = wallet.lock_payments().await;
    let mut coins: Vec<_> = chain
        .coins(&own)
        .map_err(|e| refused(&e))?
        .into_iter()
        .filter(|c| c.status == CoinStatus::Confirmed)
        .collect();
    if coins.len() < min_count {
        return Err(RpcError::new(
            codes::WALLET,
            format!(
                "{} confirmed outputs, fewer than min_count {min_count}: nothing merged",
                coins.len()
            ),
        ));
    }
    coins.sort_by_key(|c| (c.output.value, c.outpoint));
    coins.truncate(max_count);
    let total = coins
        .iter()
        .fold(0u64, |a, c| a.saturating_add(c.output.value));
    let value = total
        .checked_sub(MIN_FEE)
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            RpcError::new(
                codes::WALLET,
                format!("the outputs hold {total} units, not more than the fee {MIN_FEE}"),
            )
        })?;
    let mut tx = Transaction {
        version: 1,
        inputs: coins.iter().map(|c| wallet.input(c.outpoint)).collect(),
        outputs: vec![TxOut {
            value,
            address: own,
        }],
        nonce: rand::random(),
    };
    wallet.sign_all(chain.magic(), &mut tx);
    let merged = tx.inputs.len();
    let (answer, seq) = submit(ctx, tx).await?;
    drop(guard);
    let txid = durable(chain, seq, answer).await?;
    Ok(json!({
        "txid": txid,
        "merged": merged,
        "total": amount(total),
        "amount": amount(value),
        "fee": amount(MIN_FEE),
    }))
}

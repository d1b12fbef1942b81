//! Wallet methods of TIME Coin's `time-cli`: wallet summary, receiving
//! address, received amounts and the transaction history.
//!
//! timed's wallet holds one key (`wallet_key` in the data dir), so it has
//! one address: `getnewaddress` answers that address each time, and
//! `keypoolsize` is 0 (no pool of further keys). The history is read from
//! the stored blocks, newest first, at most [`MAX_SCAN_BLOCKS`] of them per
//! call (older payments are not listed), plus the pooled payments.

use serde_json::{json, Value};

use super::chain::{amount, chain, refused};
use super::{codes, RpcContext, RpcError};
use crate::chain::transaction::Transaction;
use crate::chain::{Address, MIN_FEE};
use crate::state::{Chain, CoinStatus, TxStatus};

/// Most blocks one history call reads, newest first: bounds what one RPC
/// call costs on a long chain (a few milliseconds per thousand blocks).
pub const MAX_SCAN_BLOCKS: u64 = 10_000;

/// One transaction of the wallet's history.
struct Entry {
    txid: [u8; 32],
    height: Option<u64>,
    time: Option<u64>,
    /// Units paid to the wallet's address.
    received: u64,
    /// Units of the wallet's outputs it spent.
    spent: u64,
    /// Units it paid to other addresses.
    paid_out: u64,
    /// Inputs minus outputs (known when every input is the wallet's).
    fee: Option<u64>,
}

fn wallet_address(ctx: &RpcContext) -> Result<Address, RpcError> {
    super::chain::wallet(ctx).map(|w| w.address())
}

/// What `tx` did to `address`, or `None` if it did not touch it.
fn entry(
    chain: &Chain,
    address: &Address,
    tx: &Transaction,
    height: Option<u64>,
    time: Option<u64>,
) -> Option<Entry> {
    let received: u64 = tx
        .outputs
        .iter()
        .filter(|o| o.address == *address)
        .fold(0u64, |a, o| a.saturating_add(o.value));
    let paid_out: u64 = tx
        .outputs
        .iter()
        .filter(|o| o.address != *address)
        .fold(0u64, |a, o| a.saturating_add(o.value));
    let mut spent = 0u64;
    let mut all_ours = !tx.inputs.is_empty();
    for input in &tx.inputs {
        let prev = match chain.transaction(&input.prevout.txid) {
            Ok(Some(TxStatus::InBlock(_, prev))) | Ok(Some(TxStatus::Pooled(prev))) => prev,
            _ => {
                all_ours = false;
                continue;
            }
        };
        match prev.outputs.get(input.prevout.index as usize) {
            Some(out) if out.address == *address => spent = spent.saturating_add(out.value),
            _ => all_ours = false,
        }
    }
    if received == 0 && spent == 0 {
        return None;
    }
    let total_out = received.saturating_add(paid_out);
    Some(Entry {
        txid: tx.txid(),
        height,
        time,
        received,
        spent,
        paid_out,
        fee: all_ours.then(|| spent.saturating_sub(total_out)),
    })
}

/// The wallet's history, newest first: pooled payments, then the stored
/// blocks down from the tip (at most [`MAX_SCAN_BLOCKS`]), until `limit`
/// entries are found.
fn history(chain: &Chain, address: &Address, limit: usize) -> Result<Vec<Entry>, RpcError> {
    let mut out = Vec::new();
    for txid in chain.mempool_txids() {
        if let Ok(Some(TxStatus::Pooled(tx))) = chain.transaction(&txid) {
            out.extend(entry(chain, address, &tx, None, None));
        }
    }
    let tip = chain.tip().height;
    for height in (0..=tip).rev().take(MAX_SCAN_BLOCKS as usize) {
        if out.len() >= limit {
            break;
        }
        let Some(block) = chain
            .store()
            .block(height)
            .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))?
        else {
            continue;
        };
        for tx in block.transactions.iter().rev() {
            out.extend(entry(
                chain,
                address,
                tx,
                Some(height),
                Some(block.header.timestamp),
            ));
        }
    }
    out.truncate(limit);
    Ok(out)
}

fn confirmations(chain: &Chain, height: Option<u64>) -> u64 {
    height.map_or(0, |h| chain.tip().height.saturating_sub(h) + 1)
}

/// `listtransactions [count]`: the wallet's latest transactions (default
/// 10), newest first, each `send` (amount negative: what went to others,
/// with the fee) or `receive`.
pub(super) fn listtransactions(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let chain = chain(ctx)?;
    let address = wallet_address(ctx)?;
    let count = match super::methods::param(params, 0, "count") {
        None | Some(Value::Null) => 10,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| RpcError::params("count must be a non-negative integer"))?
            as usize,
    };
    let network = chain.genesis().network;
    let list: Vec<Value> = history(chain, &address, count)?
        .iter()
        .map(|e| {
            let send = e.spent > 0;
            let (category, units) = if send {
                ("send", e.paid_out)
            } else {
                ("receive", e.received)
            };
            // A payment to the wallet itself (a merge) pays out nothing:
            // 0, not -0.
            let signed = if send && units > 0 {
                -(amount(units).as_f64().unwrap_or(0.0))
            } else {
                amount(units).as_f64().unwrap_or(0.0)
            };
            json!({
                "address": address.to_text(network),
                "category": category,
                "amount": signed,
                "units": units,
                "fee": e.fee.map(|f| -(amount(f).as_f64().unwrap_or(0.0))),
                "confirmations": confirmations(chain, e.height),
                "blockheight": e.height,
                "time": e.time,
                "txid": hex::encode(e.txid),
            })
        })
        .collect();
    Ok(Value::Array(list))
}

/// `listreceivedbyaddress [minconf] [include_empty]`: what the wallet's
/// address received in payments with at least `minconf` confirmations
/// (default 1) among the scanned history.
pub(super) fn listreceivedbyaddress(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let chain = chain(ctx)?;
    let address = wallet_address(ctx)?;
    let minconf = match super::methods::param(params, 0, "minconf") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| RpcError::params("minconf must be a non-negative integer"))?,
    };
    let include_empty = super::chain::flag_param(params, 1, "include_empty", "")?;
    let received: Vec<Entry> = history(chain, &address, usize::MAX)?
        .into_iter()
        .filter(|e| e.received > 0 && confirmations(chain, e.height) >= minconf)
        .collect();
    if received.is_empty() && !include_empty {
        return Ok(json!([]));
    }
    let units = received
        .iter()
        .fold(0u64, |a, e| a.saturating_add(e.received));
    let least_confirmations = received
        .iter()
        .map(|e| confirmations(chain, e.height))
        .min()
        .unwrap_or(0);
    Ok(json!([{
        "address": address.to_text(chain.genesis().network),
        "amount": amount(units),
        "units": units,
        "txcount": received.len(),
        "confirmations": least_confirmations,
        "txids": received.iter().map(|e| hex::encode(e.txid)).collect::<Vec<_>>(),
    }]))
}

/// `getnewaddress`: the wallet's address (it holds one key).
pub(super) fn getnewaddress(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    super::methods::no_params(params)?;
    let chain = chain(ctx)?;
    Ok(json!(wallet_address(ctx)?.to_text(chain.genesis().network)))
}

/// `getwalletinfo`: the wallet's balances, history size and fee.
pub(super) fn getwalletinfo(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    super::methods::no_params(params)?;
    let chain = chain(ctx)?;
    let address = wallet_address(ctx)?;
    let coins = chain.coins(&address).map_err(|e| refused(&e))?;
    let available = super::chain::sum(&coins, CoinStatus::spendable);
    let pending = super::chain::sum(&coins, |s| s == CoinStatus::Pending);
    let txcount = history(chain, &address, usize::MAX)?.len();
    Ok(json!({
        "walletname": "wallet_key",
        "address": address.to_text(chain.genesis().network),
        "balance": amount(available.saturating_add(pending)),
        "locked": amount(0),
        "available": amount(available),
        "unconfirmed_balance": amount(pending),
        "immature_balance": amount(0),
        "txcount": txcount,
        "keypoolsize": 0,
        "paytxfee": amount(MIN_FEE),
        "history_blocks_scanned": chain.tip().height.saturating_add(1).min(MAX_SCAN_BLOCKS),
    }))
}

//! The chain and wallet RPC methods.
//!
//! Amounts are returned twice: `amount` in TIME as a JSON number (for
//! people) and `units` as an integer (exact; 1 TIME = 10^8 units). Amounts
//! given to `sendtoaddress` may be a JSON number or decimal text.

use serde_json::{json, Value};

use super::{codes, RpcContext, RpcError};
use crate::chain::block::Block;
use crate::chain::transaction::Transaction;
use crate::chain::{Address, MIN_FEE};
use crate::crypto::NodeId;
use crate::encoding;
use crate::protocol::GossipKind;
use crate::state::CoinStatus;
use crate::state::{Chain, ChainError, ChainService, TxStatus};
use crate::wallet::{amount_from_json, format_amount, WalletError};

/// The chain and wallet methods, for `help` and metrics labels.
pub const NAMES: &[&str] = &[
    "getbalance",
    "getbalances",
    "listunspent",
    "sendtoaddress",
    "sendrawtransaction",
    "gettransaction",
    "getrawmempool",
    "getmempoolinfo",
    "getblockcount",
    "getbestblockhash",
    "getblock",
    "getblockchaininfo",
    "masternodelist",
    "getblockhash",
    "gettxoutsetinfo",
    "getrawtransaction",
    "decoderawtransaction",
    "validateaddress",
    "getinfo",
    "getconsensusinfo",
    "gettreasurybalance",
    "masternodestatus",
    "masternodegenkey",
    "listlockedcollaterals",
    "listlockedutxos",
    "unlockutxo",
    "cleanuplockedutxos",
    "unlockorphanedutxos",
    "forceunlockall",
    "createrawtransaction",
    "signrawtransaction",
    "listtransactions",
    "listreceivedbyaddress",
    "getnewaddress",
    "getwalletinfo",
    "mergeutxos",
    "reindex",
    "reindextransactions",
];

pub(super) fn amount(units: u64) -> Value {
    // Through the decimal text, so 0.1 prints as 0.1.
    format_amount(units)
        .parse::<f64>()
        .map_or(Value::Null, |f| json!(f))
}

pub(super) fn chain(ctx: &RpcContext) -> Result<&Chain, RpcError> {
    ctx.node
        .chain()
        .ok_or_else(|| RpcError::new(codes::UNAVAILABLE, "this node follows no chain"))
}

pub(super) fn service(ctx: &RpcContext) -> Result<&ChainService, RpcError> {
    ctx.node
        .chain_service()
        .ok_or_else(|| RpcError::new(codes::UNAVAILABLE, "this node follows no chain"))
}

pub(super) fn hash_param(params: &Value, index: usize, name: &str) -> Result<[u8; 32], RpcError> {
    let text = super::methods::string_param(params, index, name)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| RpcError::params(format!("{name} must be 64 hex digits")))?;
    Ok(out)
}

pub(super) fn refused(e: &ChainError) -> RpcError {
    match e {
        ChainError::Store(_) => RpcError::new(codes::INTERNAL_ERROR, e.to_string()),
        _ => RpcError::new(
            codes::TX_REJECTED,
            format!("transaction rejected ({}): {e}", e.kind()),
        ),
    }
}

/// How long a call waits for its payment to reach the disk before it
/// answers with an error (the payment stays pooled and is retried).
const DURABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Validates `tx` into the mempool (signatures on the blocking pool, the
/// rest on the chain's worker) and gossips it; returns its id and the
/// journal position the caller must wait for ([`durable`]) before
/// answering.
pub(super) async fn submit(ctx: &RpcContext, tx: Transaction) -> Result<(Value, u64), RpcError> {
    let encoded = encoding::encode_value(&tx)
        .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))?;
    let (txid, fee, seq) = service(ctx)?
        .transaction(tx)
        .await
        .map_err(|e| refused(&e))?;
    ctx.node.publish(GossipKind::Transaction, encoded);
    if crate::logging::allow("rpc_tx_submitted") {
        tracing::info!(txid = %hex::encode(txid), fee, "transaction submitted by RPC");
    }
    Ok((json!(hex::encode(txid)), seq))
}

/// Waits until the pool change `seq` is on disk: a payment is acknowledged
/// only once it survives a crash.
pub(super) async fn durable(chain: &Chain, seq: u64, answer: Value) -> Result<Value, RpcError> {
    match tokio::time::timeout(DURABLE_WAIT, chain.wait_durable(seq)).await {
        Ok(true) => Ok(answer),
        _ => Err(RpcError::new(
            codes::INTERNAL_ERROR,
            format!(
                "transaction {} accepted but not yet written to disk (storage is failing)",
                answer.as_str().unwrap_or("?")
            ),
        )),
    }
}

pub(super) fn tx_json(chain: &Chain, tx: &Transaction) -> Value {
    let network = chain.genesis().network;
    json!({
        "txid": hex::encode(tx.txid()),
        "version": tx.version,
        "size": tx.size(),
        "inputs": tx.inputs.iter().map(|i| json!({
            "txid": hex::encode(i.prevout.txid),
            "vout": i.prevout.index,
            "scheme": format!("{:?}", i.scheme).to_lowercase(),
        })).collect::<Vec<_>>(),
        "outputs": tx.outputs.iter().enumerate().map(|(n, o)| json!({
            "n": n,
            "address": o.address.to_text(network),
            "amount": amount(o.value),
            "units": o.value,
        })).collect::<Vec<_>>(),
    })
}

fn block_json(chain: &Chain, block: &Block) -> Value {
    let tip = chain.tip().height;
    let h = &block.header;
    json!({
        "hash": hex::encode(block.hash()),
        "height": h.height,
        "confirmations": tip.saturating_sub(h.height) + 1,
        "version": h.version,
        "prev_hash": hex::encode(h.prev_hash),
        "previousblockhash": hex::encode(h.prev_hash),
        "merkle_root": hex::encode(h.merkle_root),
        "merkleroot": hex::encode(h.merkle_root),
        "timestamp": h.timestamp,
        "time": h.timestamp,
        "slot": chain.genesis().slot(h.timestamp),
        "producer": hex::encode(h.producer),
        "size": encoding::encode_value(block).map_or(0, |b| b.len()),
        "tx": block.transactions.iter().map(|t| hex::encode(t.txid())).collect::<Vec<_>>(),
    })
}

/// Runs a chain or wallet method; `None` if `method` is not one.
pub(super) async fn dispatch(
    ctx: &RpcContext,
    method: &str,
    params: &Value,
) -> Option<Result<Value, RpcError>> {
    if !NAMES.contains(&method) {
        return None;
    }
    let result = match method {
        "sendtoaddress" => sendtoaddress(ctx, params).await,
        "sendrawtransaction" => sendrawtransaction(ctx, params).await,
        "mergeutxos" => super::merge::mergeutxos(ctx, params).await,
        "reindex" => super::reindex::reindex(ctx, params).await,
        "reindextransactions" => super::reindex::reindextransactions(ctx, params).await,
        // The reads take the chain's state lock, which its worker may hold
        // for a long validation: they wait on the blocking pool, not on an
        // async worker.
        _ => {
            let (ctx, method, params) = (ctx.clone(), method.to_owned(), params.clone());
            tokio::task::spawn_blocking(move || read(&ctx, &method, &params))
                .await
                .unwrap_or_else(|e| Err(RpcError::new(codes::INTERNAL_ERROR, e.to_string())))
        }
    };
    Some(result)
}

/// The methods that only read the chain.
fn read(ctx: &RpcContext, method: &str, params: &Value) -> Result<Value, RpcError> {
    match method {
        "getbalance" => getbalance(ctx, params),
        "getbalances" => getbalances(ctx, params),
        "listunspent" => listunspent(ctx, params),
        "gettransaction" => gettransaction(ctx, params),
        "getrawmempool" => getrawmempool(ctx, params),
        "getmempoolinfo" => super::methods::no_params(params).and_then(|_| {
            let (size, bytes) = chain(ctx)?.mempool_size();
            Ok(json!({ "size": size, "bytes": bytes, "min_fee_units": MIN_FEE }))
        }),
        "getblockcount" => {
            super::methods::no_params(params).and_then(|_| Ok(json!(chain(ctx)?.tip().height)))
        }
        "getbestblockhash" => super::methods::no_params(params)
            .and_then(|_| Ok(json!(hex::encode(chain(ctx)?.tip().hash)))),
        "getblock" => getblock(ctx, params),
        "getblockchaininfo" => getblockchaininfo(ctx, params),
        "masternodelist" => masternodelist(ctx, params),
        "getblockhash" => super::lookups::getblockhash(ctx, params),
        "gettxoutsetinfo" => super::lookups::gettxoutsetinfo(ctx, params),
        "getrawtransaction" => super::lookups::getrawtransaction(ctx, params),
        "decoderawtransaction" => super::lookups::decoderawtransaction(ctx, params),
        "validateaddress" => super::lookups::validateaddress(ctx, params),
        "getinfo" => super::lookups::getinfo(ctx, params),
        "createrawtransaction" => super::lookups::createrawtransaction(ctx, params),
        "signrawtransaction" => super::lookups::signrawtransaction(ctx, params),
        "listtransactions" => super::wallet_info::listtransactions(ctx, params),
        "listreceivedbyaddress" => super::wallet_info::listreceivedbyaddress(ctx, params),
        "getnewaddress" => super::wallet_info::getnewaddress(ctx, params),
        "getwalletinfo" => super::wallet_info::getwalletinfo(ctx, params),
        "getconsensusinfo" => super::masternodes::getconsensusinfo(ctx, params),
        "gettreasurybalance" => super::masternodes::gettreasurybalance(ctx, params),
        "masternodestatus" => super::masternodes::masternodestatus(ctx, params),
        "masternodegenkey" => super::masternodes::masternodegenkey(ctx, params),
        "listlockedcollaterals" => super::masternodes::listlockedcollaterals(ctx, params),
        "listlockedutxos" => super::masternodes::listlockedutxos(ctx, params),
        "unlockutxo" | "cleanuplockedutxos" | "unlockorphanedutxos" | "forceunlockall" => {
            super::masternodes::unlock(ctx, method, params)
        }
        other => Err(RpcError::new(
            codes::METHOD_NOT_FOUND,
            format!("unknown method {other:?}"),
        )),
    }
}

/// `getrawmempool [verbose]`: the pooled transaction ids, or with
/// `verbose` an object of each id's size, fee, vote tally and finality.
fn getrawmempool(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let verbose = flag_param(params, 0, "verbose", "")?;
    let chain = chain(ctx)?;
    let txids = chain.mempool_txids();
    if !verbose {
        return Ok(json!(txids.iter().map(hex::encode).collect::<Vec<_>>()));
    }
    let total = chain.total_weight();
    let mut out = serde_json::Map::new();
    for txid in txids {
        let Ok(Some(TxStatus::Pooled(tx))) = chain.transaction(&txid) else {
            continue;
        };
        let tally = chain.tally(&txid);
        out.insert(
            hex::encode(txid),
            json!({
                "size": tx.size(),
                "accept_weight": tally.accept,
                "total_weight": total,
                "final": tally.finalized,
            }),
        );
    }
    Ok(Value::Object(out))
}

fn wallet_address(ctx: &RpcContext, params: &Value, index: usize) -> Result<Address, RpcError> {
    let chain = chain(ctx)?;
    match super::methods::param(params, index, "address") {
        Some(Value::String(text)) => Address::parse(text, chain.genesis().network)
            .map_err(|e| RpcError::params(format!("address: {e}"))),
        Some(_) => Err(RpcError::params("address must be a string")),
        None => wallet(ctx).map(|w| w.address()),
    }
}

/// The coins of the address in parameter `index` (default: the wallet's).
fn address_coins(
    ctx: &RpcContext,
    params: &Value,
    index: usize,
) -> Result<Vec<crate::state::Coin>, RpcError> {
    let address = wallet_address(ctx, params, index)?;
    chain(ctx)?.coins(&address).map_err(|e| refused(&e))
}

/// This node's wallet.
pub(super) fn wallet(ctx: &RpcContext) -> Result<&std::sync::Arc<crate::wallet::Wallet>, RpcError> {
    ctx.wallet
        .as_ref()
        .ok_or_else(|| RpcError::new(codes::UNAVAILABLE, "this node has no wallet"))
}

/// The node id of the masternode whose ed25519 key is `public_key`.
pub(super) fn masternode_id(public_key: &[u8; 32]) -> Option<NodeId> {
    ed25519_dalek::VerifyingKey::from_bytes(public_key)
        .ok()
        .map(|k| NodeId::from_public_key(&k))
}

/// Sum of the values of `coins` matching `pred`.
pub(super) fn sum(coins: &[crate::state::Coin], pred: impl Fn(CoinStatus) -> bool) -> u64 {
    coins
        .iter()
        .filter(|c| pred(c.status))
        .fold(0u64, |acc, c| acc.saturating_add(c.output.value))
}

/// `getbalance [ADDRESS]`: TIME Coin's `{balance, locked, available}`.
/// `available` is what can be spent now (confirmed outputs, outputs of
/// final pooled payments and the wallet's own pooled change), `balance`
/// adds what waits for finality (`pending`), and `locked` (masternode
/// collateral in TIME Coin) is always 0: timed locks no collateral.
fn getbalance(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let coins = address_coins(ctx, params, 0)?;
    let available = sum(&coins, CoinStatus::spendable);
    let pending = sum(&coins, |s| s == CoinStatus::Pending);
    let balance = available.saturating_add(pending);
    Ok(json!({
        "balance": amount(balance),
        "locked": amount(0),
        "available": amount(available),
        "pending": amount(pending),
        "units": {
            "balance": balance,
            "locked": 0,
            "available": available,
            "pending": pending,
        },
    }))
}

fn getbalances(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let coins = address_coins(ctx, params, 0)?;
    let available = sum(&coins, CoinStatus::spendable);
    let pending = sum(&coins, |s| s == CoinStatus::Pending);
    let confirmed = sum(&coins, |s| s == CoinStatus::Confirmed);
    let total = available.saturating_add(pending);
    Ok(json!({
        "available": amount(available),
        "pending": amount(pending),
        "confirmed": amount(confirmed),
        "total": amount(total),
        "units": {
            "available": available,
            "pending": pending,
            "confirmed": confirmed,
            "total": total,
        },
    }))
}

/// `listunspent [minconf] [maxconf] [addresses] [limit]` (TIME Coin's and
/// Bitcoin's order; `addresses` is null, one address or a list, default
/// the wallet's; with a `limit`, the largest outputs first and 0 meaning
/// all), or timed's `listunspent ADDRESS`. Confirmations count from the
/// block holding the output; pooled outputs have 0.
fn listunspent(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let chain = chain(ctx)?;
    let network = chain.genesis().network;
    let parse = |text: &str| {
        Address::parse(text, network).map_err(|e| RpcError::params(format!("address: {e}")))
    };
    let number =
        |index: usize, name: &str, default: u64| match super::methods::param(params, index, name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| RpcError::params(format!("{name} must be a non-negative integer"))),
        };
    let (minconf, maxconf, addresses, limit) = match super::methods::param(params, 0, "minconf") {
        // timed's own form: the address first.
        Some(Value::String(text)) => {
            if params.as_array().is_some_and(|a| a.len() > 1) {
                return Err(RpcError::params(
                    "listunspent ADDRESS takes no other parameters \
                     (or give minconf, maxconf, addresses, limit)",
                ));
            }
            (0, u64::MAX, vec![parse(text)?], None)
        }
        _ => {
            let addresses = match super::methods::param(params, 2, "addresses") {
                None | Some(Value::Null) => vec![wallet_address(ctx, &Value::Null, 0)?],
                Some(Value::String(text)) => vec![parse(text)?],
                Some(Value::Array(list)) => list
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .ok_or_else(|| RpcError::params("addresses must be strings"))
                            .and_then(parse)
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                Some(_) => {
                    return Err(RpcError::params(
                        "addresses: null, an address or a list of addresses",
                    ))
                }
            };
            let limit = match super::methods::param(params, 3, "limit") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_u64()
                        .ok_or_else(|| RpcError::params("limit must be a non-negative integer"))?
                        as usize,
                ),
            };
            (
                number(0, "minconf", 0)?,
                number(1, "maxconf", 9_999_999)?,
                addresses,
                limit,
            )
        }
    };
    let tip = chain.tip().height;
    let mut list: Vec<Value> = Vec::new();
    for address in &addresses {
        let confirmed = chain
            .store()
            .utxos_for(address)
            .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))?;
        let coins = chain.coins(address).map_err(|e| refused(&e))?;
        // Each unspent output's status; an output a pooled payment spends
        // is not in it.
        let unspent: std::collections::HashMap<_, _> =
            coins.iter().map(|c| (c.outpoint, c.status)).collect();
        let entry = |o: &crate::chain::OutPoint,
                     out: &crate::chain::TxOut,
                     status: &str,
                     confirmations: u64| {
            json!({
                "txid": hex::encode(o.txid),
                "vout": o.index,
                "address": out.address.to_text(network),
                "amount": amount(out.value),
                "units": out.value,
                "confirmations": confirmations,
                "status": status,
                "spent_in_mempool": !unspent.contains_key(o),
                "spendable": unspent.get(o).is_some_and(|s| s.spendable()),
            })
        };
        // Confirmed outputs (also those a pooled payment spends), then the
        // outputs of pooled transactions.
        for (o, out) in &confirmed {
            let height = chain
                .store()
                .tx_height(&o.txid)
                .ok()
                .flatten()
                .unwrap_or(tip);
            let confirmations = tip.saturating_sub(height) + 1;
            if (minconf..=maxconf).contains(&confirmations) {
                list.push(entry(o, out, CoinStatus::Confirmed.as_str(), confirmations));
            }
        }
        if minconf == 0 {
            list.extend(
                coins
                    .iter()
                    .filter(|c| c.status != CoinStatus::Confirmed)
                    .map(|c| entry(&c.outpoint, &c.output, c.status.as_str(), 0)),
            );
        }
    }
    if let Some(limit) = limit {
        // TIME Coin's order: the largest first; a limit of 0 is no limit.
        list.sort_by_key(|v| std::cmp::Reverse(v["units"].as_u64().unwrap_or(0)));
        if limit > 0 {
            list.truncate(limit);
        }
    }
    Ok(Value::Array(list))
}

/// How long `sendtoaddress` without `nowait` waits for its payment to be
/// final, as TIME Coin's own node did; after that the call fails with
/// [`codes::TX_REJECTED`] and the payment may still become final.
const FINALITY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// An optional boolean parameter (`false` when absent or null).
pub(super) fn flag_param(
    params: &Value,
    index: usize,
    name: &str,
    hint: &str,
) -> Result<bool, RpcError> {
    match super::methods::param(params, index, name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(RpcError::params(format!(
            "{name} must be true or false, not {other}{hint}"
        ))),
    }
}

/// `sendtoaddress ADDRESS AMOUNT [subtract_fee] [nowait] [fee]`, TIME
/// Coin's parameters: with `subtract_fee` the recipient gets `AMOUNT`
/// minus the fee; without `nowait` the call returns once the payment is
/// final (2/3 of the masternode weight), or fails after
/// [`FINALITY_WAIT`]. `fee` (timed's extra, default [`MIN_FEE`]) is the
/// fifth parameter or named.
async fn sendtoaddress(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let chain = chain(ctx)?;
    let wallet = wallet(ctx)?;
    let to_text = super::methods::string_param(params, 0, "address")?;
    let to = Address::parse(to_text, chain.genesis().network)
        .map_err(|e| RpcError::params(format!("address: {e}")))?;
    let units = super::methods::param(params, 1, "amount")
        .ok_or_else(|| RpcError::params("missing parameter 1 (amount)"))
        .and_then(|v| amount_from_json(v).map_err(|e| RpcError::params(format!("amount: {e}"))))?;
    let hint = " (a fee is the fifth parameter, or named `fee`)";
    let subtract_fee = flag_param(params, 2, "subtract_fee", hint)?;
    let nowait = flag_param(params, 3, "nowait", hint)?;
    let fee = match super::methods::param(params, 4, "fee") {
        Some(v) if !v.is_null() => {
            amount_from_json(v).map_err(|e| RpcError::params(format!("fee: {e}")))?
        }
        _ => MIN_FEE,
    };
    let units = if subtract_fee {
        units.checked_sub(fee).filter(|u| *u > 0).ok_or_else(|| {
            RpcError::params(format!(
                "amount {} does not cover the fee {}",
                format_amount(units),
                format_amount(fee)
            ))
        })?
    } else {
        units
    };
    // One payment at a time picks coins: the pool marks them spent before
    // the next one looks.
    let guard = wallet.lock_payments().await;
    let (build_chain, build_wallet) = (chain.clone(), wallet.clone());
    let tx = tokio::task::spawn_blocking(move || {
        let coins = build_chain
            .coins(&build_wallet.address())
            .map_err(|e| refused(&e))?;
        pick_and_build(&build_chain, &build_wallet, &coins, to, units, fee)
    })
    .await
    .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))??;
    let txid = tx.txid();
    let (answer, seq) = submit(ctx, tx).await?;
    drop(guard);
    let answer = durable(chain, seq, answer).await?;
    if nowait {
        return Ok(answer);
    }
    wait_final(chain, &txid).await?;
    Ok(answer)
}

/// Waits until `txid` is final (by votes, or in a block); fails when it
/// left the chain's view (refused in favour of a conflicting payment) or
/// after [`FINALITY_WAIT`].
async fn wait_final(chain: &Chain, txid: &crate::chain::transaction::Txid) -> Result<(), RpcError> {
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    loop {
        tick.tick().await;
        let status = chain.transaction(txid).map_err(|e| refused(&e))?;
        match status {
            Some(TxStatus::InBlock(..)) => return Ok(()),
            Some(_) if chain.tally(txid).finalized => return Ok(()),
            Some(_) => {}
            None => {
                return Err(RpcError::new(
                    codes::TX_REJECTED,
                    format!(
                    "transaction {} was dropped before it became final (a conflicting payment won)",
                    hex::encode(txid)
                ),
                ))
            }
        }
        if started.elapsed() >= FINALITY_WAIT {
            return Err(RpcError::new(
                codes::TX_REJECTED,
                format!(
                    "transaction {} not final after {} s: it may still become final (see gettransaction; nowait = true returns at once)",
                    hex::encode(txid),
                    FINALITY_WAIT.as_secs()
                ),
            ));
        }
    }
}

/// Builds the payment from the most trusted coins that cover it: confirmed
/// ones first, then outputs of final payments, then the wallet's own pooled
/// change (which keeps unconfirmed chains short).
fn pick_and_build(
    chain: &Chain,
    wallet: &crate::wallet::Wallet,
    coins: &[crate::state::Coin],
    to: Address,
    units: u64,
    fee: u64,
) -> Result<Transaction, RpcError> {
    let wallet_error =
        |e: WalletError| RpcError::new(codes::WALLET, format!("{} ({})", e, e.kind()));
    for level in [
        CoinStatus::Confirmed,
        CoinStatus::Final,
        CoinStatus::OwnChange,
    ] {
        let candidates: Vec<_> = coins
            .iter()
            .filter(|c| c.status <= level)
            .map(|c| (c.outpoint, c.output))
            .collect();
        match wallet.build_payment(chain.magic(), &candidates, to, units, fee) {
            Ok(tx) => return Ok(tx),
            Err(WalletError::InsufficientFunds { .. }) => continue,
            Err(e) => return Err(wallet_error(e)),
        }
    }
    let available = sum(coins, CoinStatus::spendable);
    let pending = sum(coins, |s| s == CoinStatus::Pending);
    let needed = units.saturating_add(fee);
    if available.saturating_add(pending) >= needed {
        return Err(RpcError::new(
            codes::WALLET,
            format!(
                "funds pending: {available} units available now and {pending} waiting for finality, {needed} needed (funds_pending)"
            ),
        ));
    }
    Err(wallet_error(WalletError::InsufficientFunds {
        available: available.saturating_add(pending),
        needed,
    }))
}

async fn sendrawtransaction(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let chain = chain(ctx)?;
    let text = super::methods::string_param(params, 0, "hex")?;
    let bytes = hex::decode(text).map_err(|_| RpcError::params("hex: not hexadecimal"))?;
    let tx = Chain::decode_tx(&bytes).map_err(|e| RpcError::params(e.to_string()))?;
    let (answer, seq) = submit(ctx, tx).await?;
    durable(chain, seq, answer).await
}

fn gettransaction(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let chain = chain(ctx)?;
    let txid = hash_param(params, 0, "txid")?;
    let status = chain.transaction(&txid).map_err(|e| refused(&e))?;
    let Some(status) = status else {
        return Err(RpcError::new(
            codes::NOT_FOUND,
            "no such transaction in the chain or the mempool",
        ));
    };
    let tally = chain.tally(&txid);
    let total = chain.total_weight();
    let (tx, location) = match &status {
        TxStatus::Pooled(tx) => (tx, json!({ "status": "mempool", "confirmations": 0 })),
        TxStatus::InBlock(height, tx) => {
            let hash = chain
                .store()
                .block(*height)
                .ok()
                .flatten()
                .map(|b| hex::encode(b.hash()));
            (
                tx,
                json!({
                    "status": "block",
                    "height": height,
                    "blockhash": hash,
                    "confirmations": chain.tip().height.saturating_sub(*height) + 1,
                }),
            )
        }
    };
    let in_block = matches!(status, TxStatus::InBlock(..));
    let mut out = tx_json(chain, tx);
    if let (Value::Object(o), Value::Object(l)) = (&mut out, location) {
        o.extend(l);
        o.insert("final".into(), json!(tally.finalized || in_block));
        o.insert(
            "votes".into(),
            json!({
                "accept_weight": tally.accept,
                "reject_weight": tally.reject,
                "voters": tally.voters,
                "total_weight": total,
                "threshold_weight": (total * 2).div_ceil(3),
                "finalized_by_votes": tally.finalized,
                "finality_ms": tally.finality_secs.map(|s| (s * 1000.0).round() as u64),
            }),
        );
        o.insert(
            "hex".into(),
            json!(encoding::encode_value(tx)
                .map(hex::encode)
                .unwrap_or_default()),
        );
    }
    Ok(out)
}

fn getblock(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let chain = chain(ctx)?;
    let which = super::methods::param(params, 0, "block")
        .ok_or_else(|| RpcError::params("missing parameter 0 (block hash or height)"))?;
    let store = chain.store();
    let found = match which {
        Value::Number(n) => {
            let h = n
                .as_u64()
                .ok_or_else(|| RpcError::params("height must be a non-negative integer"))?;
            store.block(h)
        }
        Value::String(s) if s.len() == 64 => {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(s, &mut hash)
                .map_err(|_| RpcError::params("block hash must be 64 hex digits"))?;
            store.block_by_hash(&hash)
        }
        Value::String(s) => match s.parse::<u64>() {
            Ok(h) => store.block(h),
            Err(_) => return Err(RpcError::params("block: a 64-hex-digit hash or a height")),
        },
        _ => return Err(RpcError::params("block: a 64-hex-digit hash or a height")),
    }
    .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))?;
    let block = found.ok_or_else(|| RpcError::new(codes::NOT_FOUND, "no such block"))?;
    Ok(block_json(chain, &block))
}

fn getblockchaininfo(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    super::methods::no_params(params)?;
    let chain = chain(ctx)?;
    let tip = chain.tip();
    let genesis = chain.genesis();
    let best = chain.best_seen();
    Ok(json!({
        "chain": genesis.network.name(),
        "blocks": tip.height,
        "consensus": "masternode votes (2/3 of the weight), one producer per slot",
        "instant_finality": true,
        "bestblockhash": hex::encode(tip.hash),
        "best_timestamp": tip.timestamp,
        "genesis_hash": hex::encode(chain.genesis_hash()),
        "best_seen_height": best,
        "sync_progress": chain.progress(),
        "syncing": tip.height < best,
        "block_interval_secs": genesis.block_interval_secs,
        "masternodes": genesis.masternodes().len(),
        "total_weight": chain.total_weight(),
        "masternode": chain.is_masternode(),
        "utxos": chain.store().utxo_count().unwrap_or(0),
        "equivocations": chain.equivocations(),
    }))
}

/// `masternodelist [show_all]`: the genesis masternodes, in TIME Coin's
/// shape (`{masternodes, show_all, total, total_in_registry}`); without
/// `show_all` only those connected now (and this node). timed has no
/// collateral: every masternode is active by the genesis, and
/// `collateral_locked` is always false.
fn masternodelist(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let show_all = flag_param(params, 0, "show_all", "")?;
    let chain = chain(ctx)?;
    let own = ctx.node.node_id();
    let genesis = chain.genesis();
    let next_slot = genesis.slot(crate::protocol::version::unix_now().as_secs()) + 1;
    let next = genesis.producer(next_slot).copied();
    let now = crate::protocol::version::unix_now().as_secs();
    let all: Vec<Value> = genesis
        .masternodes()
        .iter()
        .filter_map(|m| {
            let node_id = masternode_id(&m.public_key);
            let is_self = node_id == Some(own);
            let peer = node_id.and_then(|n| ctx.node.peers().get(&n));
            let connected = is_self || peer.is_some();
            if !show_all && !connected {
                return None;
            }
            let (address, uptime) = match &peer {
                Some(p) => (
                    Some(
                        p.info
                            .version
                            .listen_addr
                            .map_or(p.info.addr.to_string(), |a| a.to_string()),
                    ),
                    now.saturating_sub(p.context.connected_unix),
                ),
                None if is_self => (
                    ctx.node
                        .config()
                        .handshake
                        .version
                        .listen_addr
                        .map(|a| a.to_string()),
                    ctx.node.uptime().as_secs(),
                ),
                None => (None, 0),
            };
            Some(json!({
                "address": address,
                "public_key": hex::encode(m.public_key),
                "node_id": node_id.map(|n| n.to_string()),
                "tier": format!("{:?}", m.tier).to_lowercase(),
                "weight": m.tier.weight(),
                "is_active": true,
                "is_connected": connected,
                "total_uptime": uptime,
                "collateral_locked": false,
                "self": is_self,
                "connected": peer.is_some(),
                "produces_next_slot": next == Some(m.public_key),
            }))
        })
        .collect();
    Ok(json!({
        "masternodes": all,
        "show_all": show_all,
        "total": all.len(),
        "total_in_registry": genesis.masternodes().len(),
    }))
}

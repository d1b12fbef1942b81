//! Look-ups TIME Coin's `time-cli` asks for, over the stored chain and the
//! mempool: a block's hash by height, the UTXO set summary, raw and decoded
//! transactions, address validation and the node summary (`getinfo`).
//!
//! Field names follow TIME Coin's node (and Bitcoin's) where `time-cli`
//! reads them; amounts come as TIME (`amount`-style JSON numbers) and as
//! exact units.

use serde_json::{json, Value};

use super::chain::{amount, chain, hash_param, refused, sum, tx_json, wallet};
use super::{codes, RpcContext, RpcError};
use crate::chain::Address;
use crate::encoding;
use crate::state::{Chain, TxStatus};

/// `getblockhash HEIGHT`: the hash of the block at `HEIGHT`.
pub(super) fn getblockhash(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let chain = chain(ctx)?;
    let height = super::methods::param(params, 0, "height")
        .and_then(Value::as_u64)
        .ok_or_else(|| RpcError::params("height must be a non-negative integer"))?;
    let block = chain
        .store()
        .block(height)
        .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))?
        .ok_or_else(|| {
            RpcError::new(
                codes::NOT_FOUND,
                format!("no block at height {height} (tip {})", chain.tip().height),
            )
        })?;
    Ok(json!(hex::encode(block.hash())))
}

/// `gettxoutsetinfo`: the confirmed UTXO set at the tip (a scan of the
/// address index).
pub(super) fn gettxoutsetinfo(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    super::methods::no_params(params)?;
    let chain = chain(ctx)?;
    let tip = chain.tip();
    let (txouts, total) = chain
        .store()
        .utxo_totals()
        .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))?;
    Ok(json!({
        "height": tip.height,
        "bestblock": hex::encode(tip.hash),
        "txouts": txouts,
        "total_amount": amount(total),
        "total_units": total,
    }))
}

/// The transaction `txid` from the mempool or the chain, with its block
/// height when it is in one.
fn find(
    chain: &Chain,
    txid: &[u8; 32],
) -> Result<(crate::chain::transaction::Transaction, Option<u64>), RpcError> {
    match chain.transaction(txid).map_err(|e| refused(&e))? {
        Some(TxStatus::Pooled(tx)) => Ok((tx, None)),
        Some(TxStatus::InBlock(height, tx)) => Ok((tx, Some(height))),
        None => Err(RpcError::new(
            codes::NOT_FOUND,
            "no such transaction in the chain or the mempool",
        )),
    }
}

/// The decoded form of `tx`: [`tx_json`] plus its hex and, for a stored
/// one, where it is.
fn decoded(
    chain: &Chain,
    tx: &crate::chain::transaction::Transaction,
    height: Option<u64>,
) -> Value {
    let mut out = tx_json(chain, tx);
    if let Value::Object(o) = &mut out {
        o.insert(
            "hex".into(),
            json!(encoding::encode_value(tx)
                .map(hex::encode)
                .unwrap_or_default()),
        );
        o.insert("vsize".into(), json!(tx.size()));
        if let Some(height) = height {
            o.insert("blockheight".into(), json!(height));
            o.insert(
                "confirmations".into(),
                json!(chain.tip().height.saturating_sub(height) + 1),
            );
            if let Ok(Some(block)) = chain.store().block(height) {
                o.insert("blockhash".into(), json!(hex::encode(block.hash())));
                o.insert("time".into(), json!(block.header.timestamp));
            }
        } else {
            o.insert("confirmations".into(), json!(0));
        }
    }
    out
}

/// `getrawtransaction TXID [verbose]`: the transaction's hex, or with
/// `verbose` its decoded form (as `decoderawtransaction`, plus where it
/// is).
pub(super) fn getrawtransaction(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let chain = chain(ctx)?;
    let txid = hash_param(params, 0, "txid")?;
    let verbose = match super::methods::param(params, 1, "verbose") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        // Bitcoin also takes 0 and 1.
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 1) => n.as_u64() == Some(1),
        Some(_) => return Err(RpcError::params("verbose must be true or false")),
    };
    let (tx, height) = find(chain, &txid)?;
    if verbose {
        Ok(decoded(chain, &tx, height))
    } else {
        encoding::encode_value(&tx)
            .map(|b| json!(hex::encode(b)))
            .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))
    }
}

/// `decoderawtransaction HEX`: the transaction the hex encodes, decoded
/// without checking it against the chain.
pub(super) fn decoderawtransaction(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let chain = chain(ctx)?;
    let text = super::methods::string_param(params, 0, "hex")?;
    let bytes = hex::decode(text).map_err(|_| RpcError::params("hex: not hexadecimal"))?;
    let tx = Chain::decode_tx(&bytes).map_err(|e| RpcError::params(e.to_string()))?;
    Ok(decoded(chain, &tx, None))
}

/// `validateaddress ADDRESS`: whether it is an address of this network,
/// and whether it is this node's wallet's.
pub(super) fn validateaddress(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let chain = chain(ctx)?;
    let text = super::methods::string_param(params, 0, "address")?;
    let network = chain.genesis().network;
    Ok(match Address::parse(text, network) {
        Ok(address) => json!({
            "isvalid": true,
            "address": address.to_text(network),
            "ismine": ctx.wallet.as_ref().is_some_and(|w| w.address() == address),
            "network": network.name(),
        }),
        // At most 64 characters of what the caller sent are echoed.
        Err(e) => json!({
            "isvalid": false,
            "address": super::params::excerpt_n(text, super::params::ECHO_CHARS),
            "error": e.to_string(),
        }),
    })
}

/// `getinfo`: a summary of the node (version, chain height, connections,
/// masternodes, the wallet's spendable balance, uptime).
pub(super) fn getinfo(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    super::methods::no_params(params)?;
    let chain = chain(ctx)?;
    let balance = match &ctx.wallet {
        Some(wallet) => {
            let coins = chain.coins(&wallet.address()).map_err(|e| refused(&e))?;
            Some(sum(&coins, crate::state::CoinStatus::spendable))
        }
        None => None,
    };
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "protocolversion": crate::constants::PROTOCOL_VERSION,
        "network": chain.genesis().network.name(),
        "blocks": chain.tip().height,
        "connections": ctx.node.peers().len(),
        "masternodes": chain.genesis().masternodes().len(),
        "masternode": chain.is_masternode(),
        "balance": balance.map(amount),
        "balance_units": balance,
        "uptime": ctx.node.uptime().as_secs(),
    }))
}

/// `createrawtransaction [{"txid", "vout"}, ...] {"ADDRESS": AMOUNT, ...}`:
/// an unsigned transaction (hex) spending those outputs with this wallet's
/// key, paying those amounts; what the inputs hold beyond the outputs is
/// the fee. Sign it with `signrawtransaction`, then `sendrawtransaction`.
pub(super) fn createrawtransaction(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    use crate::chain::transaction::{Transaction, TxOut};
    use crate::chain::OutPoint;
    let chain = chain(ctx)?;
    let wallet = wallet(ctx)?;
    let inputs = super::methods::param(params, 0, "inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| RpcError::params("inputs must be a list of {\"txid\", \"vout\"}"))?;
    let outputs = super::methods::param(params, 1, "outputs")
        .and_then(Value::as_object)
        .ok_or_else(|| RpcError::params("outputs must be an object {\"ADDRESS\": AMOUNT}"))?;
    let network = chain.genesis().network;
    let mut tx_inputs = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let txid = hash_param(input, usize::MAX, "txid")
            .map_err(|e| RpcError::params(format!("inputs[{i}]: {}", e.message)))?;
        let vout = input["vout"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| RpcError::params(format!("inputs[{i}].vout must be an integer")))?;
        tx_inputs.push(wallet.input(OutPoint { txid, index: vout }));
    }
    let mut tx_outputs = Vec::with_capacity(outputs.len());
    for (address, value) in outputs {
        let address = Address::parse(address, network)
            .map_err(|e| RpcError::params(format!("outputs: {address}: {e}")))?;
        let units = crate::wallet::amount_from_json(value)
            .map_err(|e| RpcError::params(format!("outputs: amount: {e}")))?;
        tx_outputs.push(TxOut {
            value: units,
            address,
        });
    }
    let tx = Transaction {
        version: 1,
        inputs: tx_inputs,
        outputs: tx_outputs,
        nonce: rand::random(),
    };
    tx.check_structure(false)
        .map_err(|e| RpcError::params(format!("transaction: {e}")))?;
    encoding::encode_value(&tx)
        .map(|b| json!(hex::encode(b)))
        .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))
}

/// `signrawtransaction HEX`: signs every input with this wallet's key,
/// after checking that each spends an unspent output of the wallet (in the
/// chain or in a pooled payment); answers `{hex, complete}`.
pub(super) fn signrawtransaction(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    let chain = chain(ctx)?;
    let wallet = wallet(ctx)?;
    let text = super::methods::string_param(params, 0, "hex")?;
    let bytes = hex::decode(text).map_err(|_| RpcError::params("hex: not hexadecimal"))?;
    let mut tx = Chain::decode_tx(&bytes).map_err(|e| RpcError::params(e.to_string()))?;
    let ours: std::collections::HashSet<_> = chain
        .coins(&wallet.address())
        .map_err(|e| refused(&e))?
        .into_iter()
        .map(|c| c.outpoint)
        .collect();
    if let Some(foreign) = tx.inputs.iter().find(|i| !ours.contains(&i.prevout)) {
        return Err(RpcError::new(
            codes::WALLET,
            format!(
                "input {}:{} is not an unspent output of this wallet",
                hex::encode(foreign.prevout.txid),
                foreign.prevout.index
            ),
        ));
    }
    wallet.sign_all(chain.magic(), &mut tx);
    let hex = encoding::encode_value(&tx)
        .map(hex::encode)
        .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))?;
    Ok(json!({ "hex": hex, "complete": true }))
}

//! Masternode, consensus and UTXO-lock methods of TIME Coin's `time-cli`,
//! answered with what timed has.
//!
//! Where TIME Coin's node had a concept timed does not, the answer says so
//! with real values, never a made-up one, and an operation that cannot do
//! anything here says that it did nothing:
//!
//! * **Collateral**: timed's masternodes are listed in the genesis with a
//!   tier; no output is locked as collateral, so `listlockedcollaterals`
//!   is empty.
//! * **Treasury**: timed's chain has none; `gettreasurybalance` is 0.
//! * **UTXO locks**: TIME Coin's node locked the outputs its unfinished
//!   transactions spent, and could be told to unlock them. In timed an
//!   output a pooled payment spends is simply spent in the mempool until
//!   the payment is final (then in a block) or refused (then free again);
//!   `listlockedutxos` lists those outputs of the wallet with the payment
//!   that spends them, and the unlock methods unlock nothing and say why.

use serde_json::{json, Value};

use super::chain::{amount, chain, masternode_id, wallet};
use super::{codes, RpcContext, RpcError};
use crate::crypto::NodeIdentity;
use crate::state::TxStatus;

/// `getconsensusinfo`: the masternode set, their weights, the finality
/// rule and the block interval.
pub(super) fn getconsensusinfo(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    super::methods::no_params(params)?;
    let chain = chain(ctx)?;
    let genesis = chain.genesis();
    let total = chain.total_weight();
    let masternodes: Vec<Value> = genesis
        .masternodes()
        .iter()
        .map(|m| {
            let node_id = masternode_id(&m.public_key);
            json!({
                "public_key": hex::encode(m.public_key),
                "node_id": node_id.map(|n| n.to_string()),
                "tier": format!("{:?}", m.tier).to_lowercase(),
                "weight": m.tier.weight(),
            })
        })
        .collect();
    Ok(json!({
        "type": "masternode votes with instant finality",
        "masternodes": masternodes,
        "active_masternodes": masternodes.len(),
        "total_weight": total,
        "finality_rule": "a transaction is final when masternodes holding at least 2/3 of the total weight accept it",
        "finality_weight": total.saturating_mul(2).div_ceil(3),
        "block_interval_secs": genesis.block_interval_secs,
        "block_producer": "one masternode per slot, in genesis order",
        "instant_finality": true,
    }))
}

/// `gettreasurybalance`: timed's chain has no treasury.
pub(super) fn gettreasurybalance(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    super::methods::no_params(params)?;
    chain(ctx)?;
    Ok(json!({
        "balance": amount(0),
        "units": 0,
        "note": "timed's chain has no treasury",
    }))
}

/// `masternodestatus`: whether this node is a masternode of the genesis,
/// with its tier and uptime.
pub(super) fn masternodestatus(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    super::methods::no_params(params)?;
    let chain = chain(ctx)?;
    let own = ctx.node.node_id();
    let entry = chain
        .genesis()
        .masternodes()
        .iter()
        .find(|m| masternode_id(&m.public_key) == Some(own));
    let address = ctx
        .node
        .config()
        .handshake
        .version
        .listen_addr
        .map(|a| a.to_string());
    Ok(match entry {
        Some(m) => json!({
            "status": if chain.is_masternode() { "active" } else { "listed, not voting ([chain] masternode = false)" },
            "address": address,
            "reward_address": ctx.wallet.as_ref().map(|w| w.address().to_text(chain.genesis().network)),
            "public_key": hex::encode(m.public_key),
            "tier": format!("{:?}", m.tier).to_lowercase(),
            "weight": m.tier.weight(),
            "total_uptime": ctx.node.uptime().as_secs(),
            "is_active": chain.is_masternode(),
        }),
        // TIME Coin's shape, without `address`: its client takes an
        // `address` to mean "this node is a masternode".
        None => json!({
            "status": "Not a masternode",
            "is_active": false,
            "message": "this node's key is not among the genesis masternodes",
        }),
    })
}

/// `masternodegenkey`: a fresh masternode key: the secret for a node key
/// file and the public key for a genesis `[[chain.masternodes]]` entry.
pub(super) fn masternodegenkey(_ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    super::methods::no_params(params)?;
    let seed: [u8; 32] = rand::random();
    let identity = NodeIdentity::from_secret_bytes(&seed);
    Ok(json!({
        "secret_key": hex::encode(seed),
        "public_key": hex::encode(identity.public_key().as_bytes()),
        "node_id": identity.node_id().to_string(),
        "usage": "put secret_key in a data dir's node_key file (mode 0600) and public_key in the genesis [[chain.masternodes]]",
    }))
}

/// `listlockedcollaterals`: timed locks no collateral.
pub(super) fn listlockedcollaterals(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    super::methods::no_params(params)?;
    chain(ctx)?;
    Ok(json!({
        "collaterals": [],
        "count": 0,
        "note": "timed's masternodes are listed in the genesis; no output is locked as collateral",
    }))
}

/// `listlockedutxos`: the wallet's confirmed outputs that pooled payments
/// spend, each with the payment.
pub(super) fn listlockedutxos(ctx: &RpcContext, params: &Value) -> Result<Value, RpcError> {
    super::methods::no_params(params)?;
    let chain = chain(ctx)?;
    let wallet = wallet(ctx)?;
    let mut spender = std::collections::HashMap::new();
    for txid in chain.mempool_txids() {
        if let Ok(Some(TxStatus::Pooled(tx))) = chain.transaction(&txid) {
            for input in &tx.inputs {
                spender.insert(input.prevout, txid);
            }
        }
    }
    let confirmed = chain
        .store()
        .utxos_for(&wallet.address())
        .map_err(|e| RpcError::new(codes::INTERNAL_ERROR, e.to_string()))?;
    let locked: Vec<Value> = confirmed
        .iter()
        .filter_map(|(o, out)| {
            let by = spender.get(o)?;
            Some(json!({
                "txid": hex::encode(o.txid),
                "vout": o.index,
                "amount": amount(out.value),
                "units": out.value,
                "locked_by_tx": hex::encode(by),
                "final": chain.tally(by).finalized,
                "age_seconds": Value::Null,
                "expired": false,
            }))
        })
        .collect();
    Ok(json!({
        "locked_count": locked.len(),
        "locked_utxos": locked,
    }))
}

/// The unlock methods (`unlockutxo`, `cleanuplockedutxos`,
/// `unlockorphanedutxos`, `forceunlockall`): nothing to unlock in timed.
pub(super) fn unlock(ctx: &RpcContext, method: &str, params: &Value) -> Result<Value, RpcError> {
    if method == "unlockutxo" {
        super::chain::hash_param(params, 0, "txid")?;
        super::methods::param(params, 1, "vout")
            .and_then(Value::as_u64)
            .ok_or_else(|| RpcError::params("vout must be a non-negative integer"))?;
    } else {
        super::methods::no_params(params)?;
    }
    chain(ctx)?;
    Ok(json!({
        "unlocked": 0,
        "cleaned": 0,
        "orphaned_utxos": [],
        "message": "nothing unlocked: timed holds no UTXO locks. An output a pooled payment spends is released when that payment is refused, and spent when it is final (listlockedutxos shows them)",
    }))
}

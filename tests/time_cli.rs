#![allow(clippy::unwrap_used, clippy::expect_used)]
//! TIME Coin's own client against a timed devnet: every request `time-cli`
//! (time-coin/time-masternode at commit abf7583, `src/bin/time-cli.rs`)
//! sends, written down here as data (method, params exactly as it builds
//! them, with its argument defaults), checked for the fields its output
//! code reads.
//!
//! Every method it sends is sent here, `stop` last; [`TIME_CLI_METHODS`]
//! lists them and the second test checks each is one timed knows.
//!
//! Addresses are on 127.18.1.x. Every child is killed by a guard.

mod common;

use std::time::Duration;

use common::procs::{call, poll, wait_meshed, write_devnet};
use serde_json::{json, Value};

/// Every method `time-cli` at abf7583 sends: its 42 commands count
/// `masternode genkey|list|status` besides `masternodegenkey`,
/// `masternodelist` and `masternodestatus`, which send the same methods.
const TIME_CLI_METHODS: &[&str] = &[
    "cleanuplockedutxos",
    "createrawtransaction",
    "decoderawtransaction",
    "forceunlockall",
    "getbalance",
    "getbestblockhash",
    "getblock",
    "getblockchaininfo",
    "getblockcount",
    "getblockhash",
    "getconsensusinfo",
    "getinfo",
    "getmempoolinfo",
    "getnetworkinfo",
    "getnewaddress",
    "getpeerinfo",
    "getrawmempool",
    "getrawtransaction",
    "gettransaction",
    "gettreasurybalance",
    "gettxoutsetinfo",
    "getwalletinfo",
    "listlockedcollaterals",
    "listlockedutxos",
    "listreceivedbyaddress",
    "listtransactions",
    "listunspent",
    "masternodegenkey",
    "masternodelist",
    "masternodestatus",
    "mergeutxos",
    "reindex",
    "reindextransactions",
    "sendrawtransaction",
    "sendtoaddress",
    "stop",
    "unlockorphanedutxos",
    "unlockutxo",
    "uptime",
    "validateaddress",
];

/// One request exactly as time-cli builds it (`jsonrpc` 2.0, the string id
/// `time-cli`, positional params, HTTP POST of JSON): it fails on any
/// status but 2xx, and reads `result` or `error {code, message}` from a
/// reply that echoes its id.
fn time_cli(rpc: std::net::SocketAddr, method: &str, params: Value) -> Result<Value, String> {
    use std::io::{Read, Write};
    let body =
        json!({"jsonrpc": "2.0", "id": "time-cli", "method": method, "params": params}).to_string();
    let mut stream = std::net::TcpStream::connect_timeout(&rpc, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: {rpc}\r\nContent-Type: application/json\r\nAccept: */*\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap_or("");
    assert!(
        status.starts_with('2'),
        "{method}: HTTP {status}: {response}"
    );
    let start = response.find("\r\n\r\n").unwrap() + 4;
    let reply: Value = serde_json::from_str(&response[start..]).unwrap();
    assert_eq!(reply["id"], "time-cli", "{method}: {reply}");
    match reply.get("error") {
        Some(e) if !e.is_null() => {
            assert!(e["code"].is_i64() && e["message"].is_string(), "{e}");
            Err(e.to_string())
        }
        _ => Ok(reply["result"].clone()),
    }
}

fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    let f = &v[name];
    assert!(!f.is_null(), "{name} missing in {v}");
    f
}

#[test]
fn time_cli_requests_get_the_fields_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write_devnet(dir.path(), [127, 18, 1], 3, 1);
    let mut guards: Vec<_> = nodes.iter().map(|n| n.start()).collect();
    wait_meshed(&nodes, Duration::from_secs(60));
    let rpc = nodes[0].rpc;
    poll("a block", Duration::from_secs(60), || {
        (call(rpc, "getblockcount", json!([])).ok()?.as_u64()? >= 1).then_some(())
    });

    // Blockchain.
    let info = time_cli(rpc, "getblockchaininfo", json!([])).unwrap();
    assert_eq!(field(&info, "chain"), "devnet");
    assert!(field(&info, "blocks").is_u64());
    assert!(field(&info, "consensus").is_string());
    assert_eq!(field(&info, "instant_finality"), true);
    let count = time_cli(rpc, "getblockcount", json!([])).unwrap();
    assert!(count.as_u64().unwrap() >= 1);
    let best = time_cli(rpc, "getbestblockhash", json!([])).unwrap();
    assert_eq!(best.as_str().unwrap().len(), 64);
    let hash1 = time_cli(rpc, "getblockhash", json!([1])).unwrap();
    assert_eq!(hash1.as_str().unwrap().len(), 64);
    let block = time_cli(rpc, "getblock", json!([1])).unwrap();
    assert_eq!(field(&block, "hash"), &hash1);
    for name in ["height", "previousblockhash", "time", "merkleroot", "tx"] {
        field(&block, name);
    }
    let utxos = time_cli(rpc, "gettxoutsetinfo", json!([])).unwrap();
    assert!(field(&utxos, "txouts").as_u64().unwrap() > 0);
    field(&utxos, "total_amount");
    // A height past the tip is a typed error, not a crash.
    let e = time_cli(rpc, "getblockhash", json!([1_000_000])).unwrap_err();
    assert!(e.contains("-32002") || e.contains("no block"), "{e}");

    // Network.
    let net = time_cli(rpc, "getnetworkinfo", json!([])).unwrap();
    field(&net, "version");
    let peers = time_cli(rpc, "getpeerinfo", json!([])).unwrap();
    for peer in peers.as_array().unwrap() {
        field(peer, "addr");
        assert!(field(peer, "version").is_u64());
        assert!(field(peer, "subver").is_string());
    }

    // Wallet: getbalance answers TIME Coin's object.
    let balance = time_cli(rpc, "getbalance", json!([])).unwrap();
    let units = &balance["units"];
    assert!(
        field(&balance, "balance").as_f64().unwrap() > 0.0,
        "{balance}"
    );
    assert_eq!(field(&balance, "locked"), 0.0);
    field(&balance, "available");
    assert_eq!(
        units["balance"].as_u64().unwrap(),
        units["available"].as_u64().unwrap() + units["pending"].as_u64().unwrap()
    );

    // Wallet: listunspent [minconf, maxconf, null, limit] with time-cli's
    // defaults (-n 10, minconf 1, maxconf 9999999).
    let list = time_cli(rpc, "listunspent", json!([1, 9_999_999, null, 10])).unwrap();
    let list = list.as_array().unwrap();
    assert!(!list.is_empty() && list.len() <= 10);
    for u in list {
        for name in ["txid", "vout", "address", "amount"] {
            field(u, name);
        }
    }
    let amounts: Vec<f64> = list.iter().map(|u| u["amount"].as_f64().unwrap()).collect();
    assert!(
        amounts.windows(2).all(|w| w[0] >= w[1]),
        "largest first: {amounts:?}"
    );
    let all = time_cli(rpc, "listunspent", json!([1, 9_999_999, null, 0])).unwrap();
    assert!(all.as_array().unwrap().len() >= list.len());

    // A payment the way time-cli sends it: [address, amount, subtract_fee,
    // nowait]; without nowait it answers once the payment is final.
    let to = &nodes[1].address;
    let txid = time_cli(rpc, "sendtoaddress", json!([to, 2.5, false, false])).unwrap();
    let txid = txid.as_str().unwrap().to_owned();
    let tx = call(rpc, "gettransaction", json!([txid])).unwrap();
    assert_eq!(tx["final"], true, "{tx}");
    // subtract_fee: the recipient gets the amount less the fee.
    let txid2 = time_cli(rpc, "sendtoaddress", json!([to, 1.0, true, true])).unwrap();
    let raw = time_cli(rpc, "getrawtransaction", json!([txid2, true])).unwrap();
    let paid: u64 = raw["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["address"] == json!(to))
        .map(|o| o["units"].as_u64().unwrap())
        .sum();
    assert_eq!(paid, 100_000_000 - 1_000, "{raw}");
    // timed's own extra, the fee, as the fifth parameter or named.
    let e = time_cli(rpc, "sendtoaddress", json!([to, 1.0, "0.001"])).unwrap_err();
    assert!(e.contains("subtract_fee must be true or false"), "{e}");

    // Transactions.
    let hex = time_cli(rpc, "getrawtransaction", json!([txid, false])).unwrap();
    let decoded = time_cli(rpc, "decoderawtransaction", json!([hex])).unwrap();
    assert_eq!(field(&decoded, "txid"), &json!(txid));
    let e = time_cli(rpc, "decoderawtransaction", json!(["zz"])).unwrap_err();
    assert!(e.contains("-32602"), "{e}");

    // The raw round trip: createrawtransaction, signrawtransaction (timed's
    // wallet holds the key), sendrawtransaction, getrawtransaction.
    let coins = time_cli(rpc, "listunspent", json!([1, 9_999_999, null, 0])).unwrap();
    let coin = coins
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["spendable"] == true)
        .unwrap()
        .clone();
    let units = coin["units"].as_u64().unwrap();
    let pay = (units - 1_000) as f64 / 1e8;
    let unsigned = time_cli(
        rpc,
        "createrawtransaction",
        json!([[{"txid": coin["txid"], "vout": coin["vout"]}], {nodes[2].address.clone(): format!("{pay:.8}")}]),
    )
    .unwrap();
    // Unsigned, it is refused.
    let e = time_cli(rpc, "sendrawtransaction", json!([unsigned])).unwrap_err();
    assert!(e.contains("-32004"), "{e}");
    let signed = time_cli(rpc, "signrawtransaction", json!([unsigned])).unwrap();
    assert_eq!(field(&signed, "complete"), true);
    let raw_txid = time_cli(rpc, "sendrawtransaction", json!([signed["hex"]])).unwrap();
    let back = time_cli(rpc, "getrawtransaction", json!([raw_txid, true])).unwrap();
    assert_eq!(back["outputs"][0]["units"], units - 1_000, "{back}");
    // Someone else's output is not signed.
    let other = call(nodes[1].rpc, "listunspent", json!([])).unwrap()[0].clone();
    let foreign = time_cli(
        rpc,
        "createrawtransaction",
        json!([[{"txid": other["txid"], "vout": other["vout"]}], {nodes[2].address.clone(): 1}]),
    )
    .unwrap();
    let e = time_cli(rpc, "signrawtransaction", json!([foreign])).unwrap_err();
    assert!(e.contains("not an unspent output of this wallet"), "{e}");

    // Wallet summary and history (after the payments above).
    let address = time_cli(rpc, "getnewaddress", json!([])).unwrap();
    assert_eq!(address, json!(nodes[0].address));
    let winfo = time_cli(rpc, "getwalletinfo", json!([])).unwrap();
    for name in [
        "walletname",
        "balance",
        "locked",
        "available",
        "unconfirmed_balance",
        "immature_balance",
        "txcount",
        "keypoolsize",
        "paytxfee",
    ] {
        field(&winfo, name);
    }
    assert!(winfo["txcount"].as_u64().unwrap() >= 4, "{winfo}");
    let history = time_cli(rpc, "listtransactions", json!([10])).unwrap();
    let history = history.as_array().unwrap();
    assert!(!history.is_empty() && history.len() <= 10);
    for tx in history {
        for name in ["category", "amount", "confirmations", "txid"] {
            field(tx, name);
        }
    }
    let sent = history
        .iter()
        .find(|t| t["txid"] == json!(txid))
        .expect("the payment is listed");
    assert_eq!(sent["category"], "send");
    assert_eq!(sent["amount"], -2.5);
    assert_eq!(sent["fee"], -0.00001);
    let received = time_cli(nodes[1].rpc, "listreceivedbyaddress", json!([0, false])).unwrap();
    let row = &received[0];
    assert_eq!(field(row, "address"), &json!(nodes[1].address));
    assert!(field(row, "amount").as_f64().unwrap() > 10_000.0, "{row}");
    assert!(field(row, "txcount").as_u64().unwrap() >= 2);

    // mergeutxos [min_count, max_count, address]: node 3's 5 smallest
    // confirmed outputs become one.
    let rpc3 = nodes[2].rpc;
    let outpoints = |list: &Value| -> Vec<(Value, Value)> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|u| (u["txid"].clone(), u["vout"].clone()))
            .collect()
    };
    let before = outpoints(&call(rpc3, "listunspent", json!([1, 9_999_999, null, 0])).unwrap());
    let merged = time_cli(rpc3, "mergeutxos", json!([2, 5, null])).unwrap();
    assert_eq!(field(&merged, "merged"), 5, "{merged}");
    let merge_txid = field(&merged, "txid").clone();
    poll("the merge in a block", Duration::from_secs(60), || {
        let tx = call(rpc3, "gettransaction", json!([merge_txid])).ok()?;
        (tx["status"] == "block").then_some(())
    });
    let after = outpoints(&call(rpc3, "listunspent", json!([1, 9_999_999, null, 0])).unwrap());
    let gone = before.iter().filter(|o| !after.contains(o)).count();
    assert_eq!(gone, 5, "{before:?} -> {after:?}");
    assert!(after.contains(&(merge_txid.clone(), json!(0))), "{after:?}");
    let e = time_cli(rpc3, "mergeutxos", json!([2, 5, nodes[0].address])).unwrap_err();
    assert!(e.contains("only its own address"), "{e}");
    let e = time_cli(rpc3, "mergeutxos", json!([1_000, 2_000, null])).unwrap_err();
    assert!(e.contains("nothing merged"), "{e}");
    // Parameters that make no sense are refused, not guessed at.
    for (params, expected) in [
        (
            json!([5, 2, null]),
            "max_count (2) must be at least min_count (5)",
        ),
        (json!([2, 5, 7]), "(address) must be a string"),
    ] {
        let e = time_cli(rpc3, "mergeutxos", params).unwrap_err();
        assert!(e.contains("-32602") && e.contains(expected), "{e}");
    }
    // The merge pays no one: listed as a send of 0 (not -0) and its fee.
    let history = time_cli(rpc3, "listtransactions", json!([100])).unwrap();
    let merge = history
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["txid"] == merge_txid)
        .unwrap_or_else(|| panic!("the merge in {history}"));
    assert_eq!(merge["amount"].to_string(), "0.0", "{merge}");
    assert_eq!(merge["fee"], -0.00001, "{merge}");

    // Mempool.
    let pool = time_cli(rpc, "getmempoolinfo", json!([])).unwrap();
    field(&pool, "size");
    let raw_pool = time_cli(rpc, "getrawmempool", json!([false])).unwrap();
    assert!(raw_pool.is_array());
    let verbose_pool = time_cli(rpc, "getrawmempool", json!([true])).unwrap();
    assert!(verbose_pool.is_object());

    // Masternodes: {masternodes: [...], show_all, total_in_registry}.
    let mns = time_cli(rpc, "masternodelist", json!([false])).unwrap();
    assert_eq!(field(&mns, "show_all"), false);
    assert_eq!(field(&mns, "total_in_registry"), 3);
    for m in field(&mns, "masternodes").as_array().unwrap() {
        for name in [
            "address",
            "tier",
            "is_active",
            "is_connected",
            "total_uptime",
            "collateral_locked",
        ] {
            field(m, name);
        }
    }
    let all = time_cli(rpc, "masternodelist", json!([true])).unwrap();
    assert_eq!(all["masternodes"].as_array().unwrap().len(), 3);

    // Utility.
    let valid = time_cli(rpc, "validateaddress", json!([nodes[0].address])).unwrap();
    assert_eq!(field(&valid, "isvalid"), true);
    assert_eq!(field(&valid, "ismine"), true);
    let invalid = time_cli(rpc, "validateaddress", json!(["TIME1nope"])).unwrap();
    assert_eq!(field(&invalid, "isvalid"), false);
    // A long invalid input is echoed cut to 64 characters (and an ellipsis).
    let long = "x".repeat(10_000);
    let invalid = time_cli(rpc, "validateaddress", json!([long])).unwrap();
    assert!(field(&invalid, "address").as_str().unwrap().chars().count() <= 65);
    let e = time_cli(rpc, "listreceivedbyaddress", json!([0, "yes"])).unwrap_err();
    assert!(e.contains("include_empty must be true or false"), "{e}");
    let e = time_cli(rpc, "listunspent", json!([nodes[0].address, 5])).unwrap_err();
    assert!(e.contains("takes no other parameters"), "{e}");
    let info = time_cli(rpc, "getinfo", json!([])).unwrap();
    for name in [
        "version",
        "blocks",
        "connections",
        "masternodes",
        "balance",
        "uptime",
    ] {
        field(&info, name);
    }
    assert!(time_cli(rpc, "uptime", json!([])).unwrap().is_u64());

    // Masternodes and consensus.
    let status = time_cli(rpc, "masternodestatus", json!([])).unwrap();
    assert_eq!(field(&status, "status"), "active");
    for name in [
        "address",
        "reward_address",
        "tier",
        "total_uptime",
        "is_active",
    ] {
        field(&status, name);
    }
    let key = time_cli(rpc, "masternodegenkey", json!([])).unwrap();
    assert_eq!(field(&key, "secret_key").as_str().unwrap().len(), 64);
    assert_ne!(key, time_cli(rpc, "masternodegenkey", json!([])).unwrap());
    let consensus = time_cli(rpc, "getconsensusinfo", json!([])).unwrap();
    assert_eq!(
        field(&consensus, "masternodes").as_array().unwrap().len(),
        3
    );
    assert_eq!(field(&consensus, "instant_finality"), true);
    let treasury = time_cli(rpc, "gettreasurybalance", json!([])).unwrap();
    assert_eq!(field(&treasury, "balance"), 0.0);
    let collaterals = time_cli(rpc, "listlockedcollaterals", json!([])).unwrap();
    assert_eq!(field(&collaterals, "collaterals"), &json!([]));

    // UTXO locks: what pooled payments spend; unlocking does nothing and
    // says so.
    let locked = time_cli(rpc, "listlockedutxos", json!([])).unwrap();
    assert!(field(&locked, "locked_count").is_u64());
    field(&locked, "locked_utxos");
    for (method, params) in [
        ("cleanuplockedutxos", json!([])),
        ("unlockutxo", json!([txid, 0])),
        ("unlockorphanedutxos", json!([])),
        ("forceunlockall", json!([])),
    ] {
        let r = time_cli(rpc, method, params).unwrap();
        assert_eq!(field(&r, "unlocked"), 0, "{method}");
        assert!(field(&r, "message")
            .as_str()
            .unwrap()
            .contains("nothing unlocked"));
    }
    let e = time_cli(rpc, "unlockutxo", json!(["xyz", 0])).unwrap_err();
    assert!(e.contains("-32602"), "{e}");

    // Named params, Bitcoin-style: the same answers as positional ones.
    for (method, positional, named) in [
        ("getblockhash", json!([1]), json!({"height": 1})),
        ("getblock", json!([1]), json!({"block": 1})),
        (
            "getrawtransaction",
            json!([txid, true]),
            json!({"txid": txid, "verbose": true}),
        ),
        ("validateaddress", json!([to]), json!({"address": to})),
        (
            "listunspent",
            json!([1, 9_999_999, null, 3]),
            json!({"minconf": 1, "limit": 3}),
        ),
        ("masternodelist", json!([true]), json!({"show_all": true})),
    ] {
        let a = call(rpc, method, positional).unwrap();
        let b = call(rpc, method, named).unwrap();
        if method == "masternodelist" {
            assert_eq!(a["total"], b["total"], "{method}");
        } else {
            assert_eq!(a, b, "{method}");
        }
    }
    // timed's fee, named, next to TIME Coin's flags.
    let fee_txid = call(
        rpc,
        "sendtoaddress",
        json!({"address": to, "amount": "0.5", "nowait": true, "fee": "0.001"}),
    )
    .unwrap();
    let history = call(rpc, "listtransactions", json!({"count": 100})).unwrap();
    let entry = history
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["txid"] == fee_txid)
        .unwrap_or_else(|| panic!("{fee_txid} not in {history}"));
    assert_eq!(entry["fee"], -0.001, "{entry}");
    let e = call(rpc, "getblockhash", json!({"hight": 1})).unwrap_err();
    assert!(
        e.contains("-32602") && e.contains("no parameter named \\\"hight\\\""),
        "{e}"
    );

    // Reindexing from the stored blocks: on a healthy store every table
    // matches, and balances are as before.
    let balance = call(rpc, "getbalances", json!([])).unwrap();
    let txs = time_cli(rpc, "reindextransactions", json!([])).unwrap();
    assert_eq!(field(&txs, "status"), "complete");
    assert_eq!(field(&txs, "tables_changed"), &json!([]), "{txs}");
    let height = field(&txs, "chain_height").as_u64().unwrap();
    assert_eq!(
        field(&txs, "blocks_processed").as_u64().unwrap(),
        height + 1
    );
    // The genesis allocation and at least the payments above.
    assert!(
        field(&txs, "transactions_indexed").as_u64().unwrap() >= 5,
        "{txs}"
    );
    let full = time_cli(rpc, "reindex", json!([])).unwrap();
    assert_eq!(field(&full, "status"), "complete");
    assert_eq!(field(&full, "tables_changed"), &json!([]), "{full}");
    assert_eq!(field(&full, "tx_index_rebuilt"), true);
    assert!(field(&full, "utxo_count").as_u64().unwrap() > 0);
    field(&full, "blocks_processed");
    assert_eq!(call(rpc, "getbalances", json!([])).unwrap(), balance);
    let e = time_cli(rpc, "reindex", json!([true])).unwrap_err();
    assert!(e.contains("-32602"), "{e}");

    // stop: answered, then the node exits cleanly.
    time_cli(rpc, "stop", json!([])).unwrap();
    let status = common::procs::wait_exit(&mut guards[0].0, Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// Every method time-cli sends is one timed knows (the list in `help`).
#[test]
fn every_time_cli_method_is_a_timed_method() {
    assert_eq!(TIME_CLI_METHODS.len(), 40);
    let dir = tempfile::tempdir().unwrap();
    let nodes = write_devnet(dir.path(), [127, 18, 2], 1, 1);
    let _guard = nodes[0].start();
    let help = poll("the RPC", Duration::from_secs(60), || {
        call(nodes[0].rpc, "help", json!([])).ok()
    });
    let known: Vec<&str> = help
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for command in TIME_CLI_METHODS {
        assert!(known.contains(command), "{command} missing from help");
    }
}

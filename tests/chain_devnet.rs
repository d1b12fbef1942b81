#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The chain end to end with real `timed` processes:
//!
//! * a 4-node `timed devnet`: `sendtoaddress` on node 1 becomes final on all
//!   four (by at least 3 of the 4 votes), lands in a block, and every node
//!   shows the new balances; a fifth node started later syncs the whole
//!   chain from them;
//! * a node killed with SIGKILL in the middle of a sync restarts with a
//!   consistent chain and completes the sync.
//!
//! Addresses are on 127.0.60.x and 127.0.61.x, away from other tests and from
//! a developer's devnet on 127.0.0.x. Every child is killed by a guard.
//!
//! The assertions are about outcomes (finality, heights, balances, block
//! hashes), never about how fast they came: each wait is a generous
//! deadline for something that does happen, so a busy machine only makes
//! the tests slower. How fast finality is belongs to the benches and
//! `scripts/`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::chains::seed_chain;
use common::procs::{
    call, height, poll, poll_every, run_node, timed, wait_peers, write_config, Guard,
};
use serde_json::{json, Value};
use timed::chain::COIN;
use timed::params::Network;

fn block_hash(rpc: SocketAddr, h: u64) -> Option<String> {
    Some(
        call(rpc, "getblock", json!([h])).ok()?["hash"]
            .as_str()?
            .to_owned(),
    )
}

fn balance_units(rpc: SocketAddr, address: &str) -> u64 {
    let utxos = call(rpc, "listunspent", json!([address])).unwrap();
    utxos
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["units"].as_u64().unwrap())
        .sum()
}

/// `[chain]` and everything after it in a devnet node's config.
fn chain_section(config: &Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let at = text
        .find("[chain]")
        .expect("devnet configs have a [chain] section");
    text[at..].to_owned()
}

/// `timed run` on `config` (see [`run_node`]), its output in a new `log`.
fn run_logged(config: &Path, log: &Path) -> Guard {
    run_node(config, std::fs::File::create(log).unwrap())
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_payment_is_final_on_four_nodes_and_a_fifth_node_syncs_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let devnet_dir = dir.path().join("devnet");
    let _devnet = Guard(
        timed()
            .args([
                "devnet",
                "--nodes",
                "4",
                "--block-interval",
                "1",
                "--first-ip",
                "127.0.60.1",
                "--dir",
            ])
            .arg(&devnet_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rpc: Vec<SocketAddr> = (1..=4)
        .map(|i| SocketAddr::from(([127, 0, 60, i], 24_201)))
        .collect();
    // Every node up, connected to the three others, and producing.
    wait_peers(&rpc, Duration::from_secs(60));
    poll("blocks", Duration::from_secs(60), || {
        (height(rpc[0])? >= 2).then_some(())
    });
    let address = |i: usize| -> String {
        let utxos = call(rpc[i], "listunspent", json!([])).unwrap();
        utxos[0]["address"].as_str().unwrap().to_owned()
    };
    let (a1, a2) = (address(0), address(1));
    let before: Vec<(u64, u64)> = rpc
        .iter()
        .map(|r| (balance_units(*r, &a1), balance_units(*r, &a2)))
        .collect();
    assert!(before.iter().all(|b| *b == before[0]), "{before:?}");
    assert_eq!(before[0], (10_000 * COIN, 10_000 * COIN));

    // Pay 12.5 TIME from node 1 to node 2: final on every node, by 2/3 of
    // the vote weight (3 of 4 equal masternodes).
    let sent = Instant::now();
    let txid = call(rpc[0], "sendtoaddress", json!([a2, "12.5"])).unwrap();
    let txid = txid.as_str().unwrap().to_owned();
    for (i, addr) in rpc.iter().enumerate() {
        let tx = poll(
            &format!("finality on node {}", i + 1),
            Duration::from_secs(60),
            || {
                let tx = call(*addr, "gettransaction", json!([txid])).ok()?;
                (tx["final"] == json!(true)).then_some(tx)
            },
        );
        assert!(tx["votes"]["accept_weight"].as_u64().unwrap() >= 3, "{tx}");
    }
    // For information only: the speed is measured by benches and scripts.
    eprintln!(
        "final on all four nodes {:?} after sendtoaddress",
        sent.elapsed()
    );

    // In a block everywhere, and the balances follow.
    let fee = 1_000;
    for (i, addr) in rpc.iter().enumerate() {
        let tx = poll(
            &format!("tx in a block on node {}", i + 1),
            Duration::from_secs(60),
            || {
                let tx = call(*addr, "gettransaction", json!([txid])).ok()?;
                (tx["status"] == "block").then_some(tx)
            },
        );
        assert!(tx["height"].as_u64().unwrap() >= 1);
        assert_eq!(
            (balance_units(*addr, &a1), balance_units(*addr, &a2)),
            (
                10_000 * COIN - 12 * COIN - COIN / 2 - fee,
                10_000 * COIN + 12 * COIN + COIN / 2
            ),
            "balances on node {}",
            i + 1
        );
    }
    let pool = call(rpc[0], "getrawmempool", json!([])).unwrap();
    assert_eq!(pool, json!([]));

    // Bad RPC input gets typed errors.
    let code = |r: Result<Value, String>| -> i64 {
        let e: Value = serde_json::from_str(&r.unwrap_err()).unwrap();
        e["code"].as_i64().unwrap()
    };
    assert_eq!(
        code(call(rpc[0], "sendtoaddress", json!(["TIME1nope", "1"]))),
        -32602
    );
    assert_eq!(
        code(call(rpc[0], "sendtoaddress", json!([a2, "-1"]))),
        -32602
    );
    assert_eq!(
        code(call(rpc[0], "sendtoaddress", json!([a2, "1000000"]))),
        -32005
    );
    assert_eq!(
        code(call(rpc[0], "gettransaction", json!(["00".repeat(32)]))),
        -32002
    );
    assert_eq!(code(call(rpc[0], "gettransaction", json!(["xyz"]))), -32602);
    assert_eq!(code(call(rpc[0], "getblock", json!([1_000_000]))), -32002);
    assert_eq!(
        code(call(rpc[0], "sendrawtransaction", json!(["zz"]))),
        -32602
    );
    assert_eq!(
        code(call(rpc[0], "sendrawtransaction", json!(["00ff"]))),
        -32602
    );
    // Replaying the confirmed payment is refused as already in the chain.
    let raw = call(rpc[0], "gettransaction", json!([txid])).unwrap()["hex"].clone();
    assert_eq!(
        code(call(rpc[0], "sendrawtransaction", json!([raw]))),
        -32004
    );
    let info = call(rpc[0], "getmempoolinfo", json!([])).unwrap();
    assert_eq!(info["size"], 0);
    let best = call(rpc[0], "getbestblockhash", json!([])).unwrap();
    let block = call(rpc[0], "getblock", json!([best])).unwrap();
    assert!(block["height"].as_u64().unwrap() >= 1, "{block}");
    let nodes = call(rpc[0], "masternodelist", json!([true])).unwrap();
    assert_eq!(nodes["masternodes"].as_array().unwrap().len(), 4, "{nodes}");
    assert_eq!(nodes["total_in_registry"], 4);

    // A fifth node, started now, syncs everything from the four.
    let chain = chain_section(&devnet_dir.join("node1").join("config.toml"));
    let peers: Vec<String> = (1..=4).map(|i| format!("127.0.60.{i}:24200")).collect();
    let node5 = dir.path().join("node5");
    let (config5, rpc5) = write_config(&node5, [127, 0, 60, 5], &peers, &chain);
    let target = height(rpc[0]).unwrap();
    let started = Instant::now();
    let _n5 = run_logged(&config5, &dir.path().join("node5.log"));
    poll("node 5 synced", Duration::from_secs(120), || {
        (height(rpc5)? >= target).then_some(())
    });
    eprintln!("node 5 synced {target} blocks in {:?}", started.elapsed());
    // Same blocks as node 1. A fork between two producers of neighbouring
    // slots on a loaded machine resolves by the fork-choice rule; node 5
    // may have synced a branch that is being replaced, so wait until both
    // agree (they must, well within the deadline).
    for h in [0, 1, target / 2, target] {
        poll(
            &format!("node 5 and node 1 agree on block {h}"),
            Duration::from_secs(120),
            || {
                let ours = block_hash(rpc5, h)?;
                (Some(&ours) == block_hash(rpc[0], h).as_ref()).then_some(())
            },
        );
    }
    assert_eq!(
        balance_units(rpc5, &a2),
        10_000 * COIN + 12 * COIN + COIN / 2
    );
    let tx = call(rpc5, "gettransaction", json!([txid])).unwrap();
    assert_eq!(tx["status"], "block");
    let info = call(rpc5, "getblockchaininfo", json!([])).unwrap();
    assert_eq!(info["masternode"], false);
    let log5 = log_of(&dir.path().join("node5.log"));
    assert!(log5.contains("sync round done"), "{log5}");
}

#[test]
fn a_node_killed_during_sync_restarts_consistent_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    const BLOCKS: u64 = 1_500;
    let seed = seed_chain(&seed_dir, 1, BLOCKS);
    let chain = seed.chain_section();
    let (seed_config, seed_rpc) = write_config(&seed_dir, [127, 0, 61, 1], &[], &chain);
    let _seed = run_logged(&seed_config, &dir.path().join("seed.log"));
    poll("seed up", Duration::from_secs(60), || {
        (height(seed_rpc)? >= BLOCKS).then_some(())
    });

    let node_dir = dir.path().join("fresh");
    let (config, rpc) = write_config(
        &node_dir,
        [127, 0, 61, 2],
        &["127.0.61.1:24200".to_owned()],
        &chain,
    );
    let log = dir.path().join("fresh.log");
    let mut node = run_logged(&config, &log);
    // Kill it (SIGKILL) as soon as it has stored blocks: polled often, so
    // usually part-way through the sync. On a machine fast enough to have
    // finished by then, the kill still lands on a node that was syncing a
    // moment before, and every outcome below must hold all the same.
    let at = poll_every(
        "sync under way",
        Duration::from_secs(60),
        Duration::from_millis(10),
        || {
            let h = height(rpc)?;
            (h >= 1).then_some(h)
        },
    );
    // A ban made just before the kill must survive it.
    call(rpc, "setban", json!(["203.0.113.9", "add", 3600])).unwrap();
    node.0.kill().unwrap();
    node.0.wait().unwrap();
    eprintln!("killed at height {at} or later, of {BLOCKS}");

    // Restart: the chain reopens consistent and the sync completes.
    let log2 = dir.path().join("fresh2.log");
    let _node = run_logged(&config, &log2);
    let reopened = poll("restart", Duration::from_secs(60), || height(rpc));
    assert!(
        reopened >= at,
        "reopened at {reopened} after the kill at {at}"
    );
    let bans = call(rpc, "listbanned", json!([])).unwrap();
    assert!(
        bans.to_string().contains("203.0.113.9"),
        "bans after SIGKILL: {bans}"
    );
    let target = height(seed_rpc).unwrap();
    poll("sync complete", Duration::from_secs(180), || {
        (height(rpc)? >= target).then_some(())
    });
    for h in [1, at, at + 1, target / 2, target] {
        assert_eq!(block_hash(rpc, h), block_hash(seed_rpc, h), "block {h}");
    }
    // Same UTXO set at the same tip: compare the seed wallet's outputs.
    let seed_address = seed.wallet.address().to_text(Network::Devnet);
    poll("same tip", Duration::from_secs(60), || {
        let (a, b) = (height(rpc)?, height(seed_rpc)?);
        (a == b && balance_units(rpc, &seed_address) == balance_units(seed_rpc, &seed_address))
            .then_some(())
    });
    let text = log_of(&log2);
    assert!(text.contains("chain opened"), "{text}");
    assert!(text.contains("sync round done"), "{text}");
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The chain end to end with real `timed` processes:
//!
//! * a 4-node `timed devnet`: `sendtoaddress` on node 1 is final on all four
//!   within seconds, lands in a block, and every node shows the new
//!   balances; a fifth node started later syncs the whole chain from them;
//! * a node killed with SIGKILL in the middle of a sync restarts with a
//!   consistent chain and completes the sync.
//!
//! Addresses are on 127.0.60.x and 127.0.61.x, away from other tests and from
//! a developer's devnet on 127.0.0.x. Every child is killed by a guard.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use timed::chain::genesis::{Genesis, GenesisMasternode, DEVNET_GENESIS_TIMESTAMP};
use timed::chain::state::{Chain, ChainOptions};
use timed::chain::votes::Tier;
use timed::chain::{TxOut, COIN};
use timed::crypto::NodeIdentity;
use timed::network::Network;
use timed::wallet::Wallet;

/// Kills (and reaps) a child when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn timed() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_timed"));
    cmd.env("NO_COLOR", "1")
        .env_remove("TIMED_RPC_TOKEN")
        .stdin(Stdio::piped());
    cmd
}

/// One JSON-RPC call over a fresh HTTP/1.1 connection; `Err` carries the
/// error object or the transport failure.
fn call(rpc: SocketAddr, method: &str, params: Value) -> Result<Value, String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut stream =
        TcpStream::connect_timeout(&rpc, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: {rpc}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let json_start = response.find("\r\n\r\n").ok_or("no body")? + 4;
    let reply: Value = serde_json::from_str(&response[json_start..]).map_err(|e| e.to_string())?;
    match reply.get("error") {
        Some(e) if !e.is_null() => Err(e.to_string()),
        _ => Ok(reply["result"].clone()),
    }
}

/// Polls `f` every 100 ms until it returns `Some`, failing after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn height(rpc: SocketAddr) -> Option<u64> {
    call(rpc, "getblockcount", json!([])).ok()?.as_u64()
}

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

fn write_config(dir: &Path, ip: [u8; 4], peers: &[String], chain: &str) -> (PathBuf, SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    let rpc = SocketAddr::from((ip, 24_201));
    let config = format!(
        "[node]\nnetwork = \"devnet\"\ndata_dir = \"{}\"\n\n[p2p]\nlisten = \"{}\"\npeers = [{}]\n\n[rpc]\nlisten = \"{rpc}\"\n\n[metrics]\nenabled = false\n\n{chain}",
        dir.display(),
        SocketAddr::from((ip, 24_200)),
        peers
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    (path, rpc)
}

fn run_node(config: &Path, log: &Path) -> Guard {
    let log = std::fs::File::create(log).unwrap();
    Guard(
        timed()
            .args(["run", "--config"])
            .arg(config)
            .arg("--stop-on-stdin-eof")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
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
    for (i, addr) in rpc.iter().enumerate() {
        wait_for(
            &format!("node {} connected to 3 peers", i + 1),
            Duration::from_secs(30),
            || {
                (call(*addr, "getconnectioncount", json!([]))
                    .ok()?
                    .as_u64()?
                    == 3)
                    .then_some(())
            },
        );
    }
    wait_for("blocks", Duration::from_secs(20), || {
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

    // Pay 12.5 TIME from node 1 to node 2.
    let sent = Instant::now();
    let txid = call(rpc[0], "sendtoaddress", json!([a2, "12.5"])).unwrap();
    let txid = txid.as_str().unwrap().to_owned();
    for (i, addr) in rpc.iter().enumerate() {
        let tx = wait_for(
            &format!("finality on node {}", i + 1),
            Duration::from_secs(10),
            || {
                let tx = call(*addr, "gettransaction", json!([txid])).ok()?;
                (tx["final"] == json!(true)).then_some(tx)
            },
        );
        assert!(tx["votes"]["accept_weight"].as_u64().unwrap() >= 3, "{tx}");
    }
    let final_everywhere = sent.elapsed();
    assert!(
        final_everywhere < Duration::from_secs(5),
        "final on all four after {final_everywhere:?}"
    );
    eprintln!("final on all four nodes {final_everywhere:?} after sendtoaddress");

    // In a block everywhere, and the balances follow.
    let fee = 1_000;
    for (i, addr) in rpc.iter().enumerate() {
        let tx = wait_for(
            &format!("tx in a block on node {}", i + 1),
            Duration::from_secs(15),
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
    let nodes = call(rpc[0], "masternodelist", json!([])).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 4);

    // A fifth node, started now, syncs everything from the four.
    let chain = chain_section(&devnet_dir.join("node1").join("config.toml"));
    let peers: Vec<String> = (1..=4).map(|i| format!("127.0.60.{i}:24200")).collect();
    let node5 = dir.path().join("node5");
    let (config5, rpc5) = write_config(&node5, [127, 0, 60, 5], &peers, &chain);
    let target = height(rpc[0]).unwrap();
    let started = Instant::now();
    let _n5 = run_node(&config5, &dir.path().join("node5.log"));
    wait_for("node 5 synced", Duration::from_secs(30), || {
        (height(rpc5)? >= target).then_some(())
    });
    eprintln!("node 5 synced {target} blocks in {:?}", started.elapsed());
    for h in [0, 1, target / 2, target] {
        assert_eq!(block_hash(rpc5, h), block_hash(rpc[0], h), "block {h}");
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

/// A seed chain of `blocks` blocks, each paying one small transaction, in
/// `dir`, produced by `identity` as the only masternode; returns the genesis.
fn build_seed_chain(dir: &Path, identity: &NodeIdentity, wallet: &Wallet, blocks: u64) -> Genesis {
    let genesis = Genesis::new(
        Network::Devnet,
        DEVNET_GENESIS_TIMESTAMP,
        1,
        vec![GenesisMasternode {
            public_key: *identity.public_key().as_bytes(),
            tier: Tier::Free,
        }],
        vec![
            TxOut {
                value: 1_000 * COIN,
                address: wallet.address(),
            };
            10
        ],
    )
    .unwrap();
    let chain = Chain::open(dir, genesis.clone(), identity, ChainOptions::default()).unwrap();
    let other = Wallet::generate().address();
    for slot in 1..=blocks {
        let spendable = chain.spendable(&wallet.address()).unwrap();
        let tx = wallet
            .build_payment(chain.magic(), &spendable, other, COIN, 1_000)
            .unwrap();
        chain.submit_tx(tx).unwrap();
        let block = chain
            .produce_if_scheduled(genesis.slot_start(slot))
            .unwrap();
        assert!(
            block.is_some_and(|b| b.transactions.len() == 1),
            "slot {slot}"
        );
    }
    genesis
}

#[test]
fn a_node_killed_during_sync_restarts_consistent_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let identity = NodeIdentity::load_or_generate(&seed_dir.join("node_key")).unwrap();
    let wallet = Wallet::load_or_create(&seed_dir).unwrap();
    const BLOCKS: u64 = 1_500;
    let genesis = build_seed_chain(&seed_dir, &identity, &wallet, BLOCKS);
    let chain = format!(
        "[chain]\nblock_interval_secs = 1\ngenesis_timestamp = {}\ngenesis_hash = \"{}\"\n\n[[chain.masternodes]]\npublic_key = \"{}\"\ntier = \"free\"\n\n[[chain.allocations]]\naddress = \"{}\"\namount = \"1000\"\noutputs = 10\n",
        genesis.timestamp,
        hex::encode(genesis.hash()),
        hex::encode(identity.public_key().as_bytes()),
        wallet.address().to_text(Network::Devnet),
    );
    let (seed_config, seed_rpc) = write_config(&seed_dir, [127, 0, 61, 1], &[], &chain);
    let _seed = run_node(&seed_config, &dir.path().join("seed.log"));
    wait_for("seed up", Duration::from_secs(20), || {
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
    let mut node = run_node(&config, &log);
    // Kill it (SIGKILL) once it is part-way through.
    let at = wait_for("sync under way", Duration::from_secs(30), || {
        let h = height(rpc)?;
        (h >= 50).then_some(h)
    });
    // A ban made just before the kill must survive it.
    call(rpc, "setban", json!(["203.0.113.9", "add", 3600])).unwrap();
    node.0.kill().unwrap();
    node.0.wait().unwrap();
    assert!(
        at < BLOCKS,
        "the sync finished before the kill ({at} blocks): make the chain longer"
    );
    eprintln!("killed at height {at} of {BLOCKS}");

    // Restart: the chain reopens consistent and the sync completes.
    let log2 = dir.path().join("fresh2.log");
    let _node = run_node(&config, &log2);
    let reopened = wait_for("restart", Duration::from_secs(20), || height(rpc));
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
    wait_for("sync complete", Duration::from_secs(60), || {
        (height(rpc)? >= target).then_some(())
    });
    for h in [1, at, at + 1, target / 2, target] {
        assert_eq!(block_hash(rpc, h), block_hash(seed_rpc, h), "block {h}");
    }
    // Same UTXO set at the same tip: compare the seed wallet's outputs.
    let seed_address = wallet.address().to_text(Network::Devnet);
    wait_for("same tip", Duration::from_secs(20), || {
        let (a, b) = (height(rpc)?, height(seed_rpc)?);
        (a == b && balance_units(rpc, &seed_address) == balance_units(seed_rpc, &seed_address))
            .then_some(())
    });
    let text = log_of(&log2);
    assert!(text.contains("chain opened"), "{text}");
    assert!(text.contains("sync round done"), "{text}");
}

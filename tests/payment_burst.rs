#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Honest load is never an offence: a wallet paying as fast as its RPC
//! accepts, sequentially and from 10 concurrent clients, on 2- and 3-node
//! devnets of real `timed` processes. Every call is accepted, every payment
//! becomes final on every node and lands in a block, and no node drops or
//! bans another meanwhile.
//!
//! Addresses: 127.5.2.x (2 nodes), 127.5.3.x (3 nodes).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::procs::*;
use serde_json::{json, Value};

/// Generous bounds: outcomes are asserted, not speed.
const SETTLE: Duration = Duration::from_secs(180);

/// Pays `amount` TIME from the node at `rpc` to `to` without waiting for
/// finality (`nowait`, so the burst stays a burst); every call must be
/// accepted.
fn pay(rpc: SocketAddr, to: &str, amount: &str) -> String {
    match call(rpc, "sendtoaddress", json!([to, amount, false, true])) {
        Ok(Value::String(txid)) => txid,
        other => panic!("payment refused: {other:?}"),
    }
}

/// Waits until every payment is in a block and final on every node, the
/// mempools are empty and the nodes agree on the chain.
fn settled(nodes: &[DevnetNode], txids: &BTreeSet<String>) {
    for (i, node) in nodes.iter().enumerate() {
        let mut waiting: BTreeSet<String> = txids.clone();
        poll(
            &format!("{} payments in blocks on node {}", txids.len(), i + 1),
            SETTLE,
            || {
                waiting.retain(|txid| {
                    let tx = call(node.rpc, "gettransaction", json!([txid]));
                    !matches!(&tx, Ok(t) if t["status"] == "block" && t["final"] == json!(true))
                });
                waiting.is_empty().then_some(())
            },
        );
        poll("an empty mempool", SETTLE, || {
            (call(node.rpc, "getrawmempool", json!([])).ok()? == json!([])).then_some(())
        });
    }
    let tip = height(nodes[0].rpc).unwrap();
    for node in nodes {
        poll("the same block at a common height", SETTLE, || {
            let h = height(node.rpc)?;
            (h >= tip).then_some(())
        });
        let a = call(node.rpc, "getblock", json!([tip])).unwrap();
        let b = call(nodes[0].rpc, "getblock", json!([tip])).unwrap();
        assert_eq!(a["hash"], b["hash"], "same chain");
    }
}

/// Nobody banned, every original connection still up, scores not negative.
fn no_offence(nodes: &[DevnetNode], before: &[Vec<(String, u64)>]) {
    for (i, node) in nodes.iter().enumerate() {
        let drops: Vec<String> = node
            .log()
            .lines()
            .filter(|l| l.contains("disconnect") || l.contains("refused") || l.contains("ban"))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            connections(node.rpc),
            before[i],
            "node {} kept every connection; its log says:\n{}",
            i + 1,
            drops.join("\n")
        );
        let bans = call(node.rpc, "listbanned", json!([])).unwrap();
        assert_eq!(bans, json!([]), "node {} banned nobody", i + 1);
        for peer in call(node.rpc, "getpeerinfo", json!([]))
            .unwrap()
            .as_array()
            .unwrap()
        {
            let score = peer["score"].as_f64().unwrap();
            assert!(score >= 0.0, "node {} scores a peer {score}", i + 1);
        }
    }
}

fn burst(ip_base: [u8; 3], n: u8) {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write_devnet(dir.path(), ip_base, n, 2);
    let _guards: Vec<Guard> = nodes.iter().map(DevnetNode::start).collect();
    wait_meshed(&nodes, Duration::from_secs(60));
    let before: Vec<_> = nodes.iter().map(|n| connections(n.rpc)).collect();
    let payer = nodes[0].rpc;
    let to = nodes[1].address.clone();
    let mut txids = BTreeSet::new();

    // 80 payments, one after the other, as fast as the RPC answers.
    let started = Instant::now();
    for _ in 0..80 {
        assert!(txids.insert(pay(payer, &to, "1")));
    }
    let sequential = started.elapsed();

    // 300 more from 10 concurrent clients.
    let started = Instant::now();
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let to = to.clone();
            std::thread::spawn(move || (0..30).map(|_| pay(payer, &to, "0.5")).collect::<Vec<_>>())
        })
        .collect();
    for client in clients {
        for txid in client.join().unwrap() {
            assert!(txids.insert(txid), "distinct payments");
        }
    }
    let concurrent = started.elapsed();
    assert_eq!(txids.len(), 380);

    let started = Instant::now();
    settled(&nodes, &txids);
    eprintln!(
        "{n} nodes: 80 sequential payments accepted in {sequential:?}, 300 from 10 clients in {concurrent:?}; all final and in blocks on every node {:?} later",
        started.elapsed()
    );
    no_offence(&nodes, &before);
    // The payee got every payment: 80 × 1 + 300 × 0.5 TIME.
    let received: u64 = call(nodes[1].rpc, "getbalances", json!([])).unwrap()["units"]["available"]
        .as_u64()
        .unwrap();
    assert_eq!(received, 10_000 * 100_000_000 + 230 * 100_000_000);
}

#[test]
fn a_payment_burst_on_two_nodes_is_final_everywhere_and_offends_nobody() {
    burst([127, 5, 2], 2);
}

#[test]
fn a_payment_burst_on_three_nodes_is_final_everywhere_and_offends_nobody() {
    burst([127, 5, 3], 3);
}

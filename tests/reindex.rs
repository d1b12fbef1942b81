#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `reindex` and `reindextransactions` on real nodes:
//!
//! * a node whose UTXO set, address index and tx index were damaged on
//!   disk (outputs of its own wallet deleted while it was stopped) shows
//!   the wrong balance until `reindex` rebuilds them from its blocks; the
//!   answer names the tables that differed, and a second `reindex` finds
//!   nothing;
//! * a node killed (`kill -9`) at random moments during a `reindex`
//!   restarts with tables that a fresh `reindex` finds all matching, and
//!   with its wallet's balance unchanged.
//!
//! Addresses: 127.19.1.x, 127.19.2.x.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::procs::*;
use redb::{ReadableTable, TableDefinition};
use serde_json::{json, Value};
use timed::chain::Address;
use timed::params::Network;

const LIMIT: Duration = Duration::from_secs(120);

const UTXOS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("utxos");
const ADDRESS_UTXOS: TableDefinition<&[u8; 56], u64> = TableDefinition::new("address_utxos");
const TX_INDEX: TableDefinition<&[u8; 32], u64> = TableDefinition::new("tx_index");

fn balance(rpc: SocketAddr) -> Value {
    call(rpc, "getbalance", json!([])).unwrap()
}

/// Deletes every output of `address` from the UTXO set and the address
/// index, and one entry of the tx index, in the stopped node's file: a
/// store that opens and runs, with the wrong balance.
fn damage(dir: &Path, address: &str) -> usize {
    let address = Address::parse(address, Network::Devnet).unwrap();
    let db = redb::Database::open(dir.join("chain.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    let removed;
    {
        let mut index = tx.open_table(ADDRESS_UTXOS).unwrap();
        let mut low = [0u8; 56];
        low[..20].copy_from_slice(&address.0);
        let mut high = [0xffu8; 56];
        high[..20].copy_from_slice(&address.0);
        let keys: Vec<[u8; 56]> = index
            .range::<&[u8; 56]>(&low..=&high)
            .unwrap()
            .map(|e| *e.unwrap().0.value())
            .collect();
        let mut utxos = tx.open_table(UTXOS).unwrap();
        for key in &keys {
            index.remove(key).unwrap();
            utxos.remove(&key[20..]).unwrap();
        }
        removed = keys.len();
        let mut txs = tx.open_table(TX_INDEX).unwrap();
        let first = *txs.first().unwrap().unwrap().0.value();
        txs.remove(&first).unwrap();
    }
    tx.commit().unwrap();
    removed
}

#[test]
fn reindex_rebuilds_a_damaged_utxo_set_from_the_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write_devnet(dir.path(), [127, 19, 1], 2, 1);
    let mut guards: Vec<Guard> = nodes.iter().map(|n| n.start()).collect();
    wait_meshed(&nodes, LIMIT);
    // A payment from node 1, in a block, so the chain holds more than the
    // genesis.
    let txid = call(nodes[0].rpc, "sendtoaddress", json!([nodes[1].address, 3])).unwrap();
    poll("the payment in a block", LIMIT, || {
        let tx = call(nodes[0].rpc, "gettransaction", json!([txid])).ok()?;
        (tx["status"] == "block").then_some(())
    });
    let before = balance(nodes[0].rpc);
    call(nodes[0].rpc, "stop", json!([])).unwrap();
    assert!(wait_exit(&mut guards[0].0, LIMIT).is_some_and(|s| s.success()));

    let removed = damage(&nodes[0].dir, &nodes[0].address);
    assert!(removed >= 10, "the wallet's outputs: {removed}");
    guards[0] = nodes[0].start();
    let wrong = poll("node 1 back", LIMIT, || {
        call(nodes[0].rpc, "getbalance", json!([])).ok()
    });
    assert_eq!(
        wrong["balance"], 0.0,
        "the damaged store serves no outputs: {wrong}"
    );

    let report = call(nodes[0].rpc, "reindex", json!([])).unwrap();
    let mut changed: Vec<&str> = report["tables_changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    changed.sort_unstable();
    assert_eq!(changed, ["address_utxos", "tx_index", "utxos"], "{report}");
    assert_eq!(balance(nodes[0].rpc), before);
    // The rebuilt set is the one node 2 holds (compared at one height).
    let (a, b) = poll("the same UTXO set on both nodes", LIMIT, || {
        let a = call(nodes[0].rpc, "gettxoutsetinfo", json!([])).ok()?;
        let b = call(nodes[1].rpc, "gettxoutsetinfo", json!([])).ok()?;
        (a["bestblock"] == b["bestblock"]).then_some((a, b))
    });
    assert_eq!(a, b);
    let again = call(nodes[0].rpc, "reindex", json!([])).unwrap();
    assert_eq!(again["tables_changed"], json!([]), "{again}");
    // The chain goes on: node 1 still follows and pays.
    let paid = call(nodes[0].rpc, "sendtoaddress", json!([nodes[1].address, 1])).unwrap();
    poll("a payment after the reindex in a block", LIMIT, || {
        let tx = call(nodes[1].rpc, "gettransaction", json!([paid])).ok()?;
        (tx["status"] == "block").then_some(())
    });
}

#[test]
fn a_node_killed_during_reindex_restarts_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write_devnet(dir.path(), [127, 19, 2], 1, 1);
    let node = &nodes[0];
    let mut guard = node.start();
    let rpc = node.rpc;
    poll("the RPC", LIMIT, || {
        call(rpc, "getblockcount", json!([])).ok()
    });
    // Many small payments to itself make the chain worth replaying.
    for _ in 0..200 {
        call(
            rpc,
            "sendtoaddress",
            json!([node.address, 0.5, false, true]),
        )
        .unwrap();
    }
    poll("the pool emptied into blocks", LIMIT, || {
        let pool = call(rpc, "getmempoolinfo", json!([])).ok()?;
        (pool["size"] == 0).then_some(())
    });
    let expected = balance(rpc);
    let took = call(rpc, "reindex", json!([])).unwrap()["elapsed_ms"]
        .as_u64()
        .unwrap();
    // Kill it at moments spread over the rebuild's duration (and a little
    // past it), then check what it restarts with.
    let rounds = 6u64;
    let mut interrupted = 0;
    for round in 0..rounds {
        let caller = std::thread::spawn(move || call(rpc, "reindex", json!([])));
        let delay = (took + 5) * round / (rounds - 1);
        std::thread::sleep(Duration::from_millis(delay));
        guard.signal_and_wait("KILL");
        if caller.join().unwrap().is_err() {
            interrupted += 1;
        }
        guard = node.start();
        poll("the node back", LIMIT, || {
            call(rpc, "getblockcount", json!([])).ok()
        });
        let check = call(rpc, "reindex", json!([])).unwrap();
        assert_eq!(check["tables_changed"], json!([]), "round {round}: {check}");
        assert_eq!(balance(rpc), expected, "round {round}");
    }
    eprintln!("reindex took {took} ms; {interrupted} of {rounds} kills interrupted a call");
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What the node calls final is durable, with real `timed` processes:
//!
//! * payments shown final (and not yet in a block) survive a SIGTERM, and
//!   separately a SIGKILL, of every node at once: after the restart each is
//!   still final and lands in a block; every payment acknowledged by
//!   `sendtoaddress` before a SIGKILL is still known after it;
//! * a payment accepted while its node has no peers is announced when the
//!   peers arrive, becomes final everywhere and lands in a block;
//! * a node that restarts with pooled payments its peers meanwhile put in
//!   blocks drops them cleanly.
//!
//! Addresses: 127.5.10.x, 127.5.11.x, 127.5.12.x.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::procs::*;
use serde_json::{json, Value};

/// Generous bounds: outcomes are asserted, not speed.
const LIMIT: Duration = Duration::from_secs(120);

/// Slots long enough that payments are still pooled when the nodes stop.
const SLOW_SLOTS: u64 = 20;

/// Pays 1 TIME without waiting for finality (`nowait`): the tests check
/// finality themselves, and some pay while finality is impossible.
fn pay(rpc: SocketAddr, to: &str) -> Result<String, String> {
    match call(rpc, "sendtoaddress", json!([to, "1", false, true]))? {
        Value::String(txid) => Ok(txid),
        other => Err(format!("unexpected answer {other}")),
    }
}

fn tx(rpc: SocketAddr, txid: &str) -> Option<Value> {
    call(rpc, "gettransaction", json!([txid])).ok()
}

fn is_final(rpc: SocketAddr, txid: &str) -> bool {
    tx(rpc, txid).is_some_and(|t| t["final"] == json!(true))
}

/// Waits until every txid is in a block on every node.
fn all_in_blocks(nodes: &[DevnetNode], txids: &BTreeSet<String>) {
    for (i, node) in nodes.iter().enumerate() {
        let mut waiting = txids.clone();
        poll(
            &format!("{} payments in blocks on node {}", txids.len(), i + 1),
            LIMIT,
            || {
                waiting.retain(|t| !tx(node.rpc, t).is_some_and(|t| t["status"] == "block"));
                waiting.is_empty().then_some(())
            },
        );
    }
}

/// Makes `n` payments from node 1 and waits until each is final there;
/// returns them, asserting they are still pooled (not in a block yet).
fn final_payments(nodes: &[DevnetNode], n: usize) -> BTreeSet<String> {
    let txids: BTreeSet<String> = (0..n)
        .map(|_| pay(nodes[0].rpc, &nodes[1].address).unwrap())
        .collect();
    for txid in &txids {
        poll("finality on node 1", LIMIT, || {
            is_final(nodes[0].rpc, txid).then_some(())
        });
    }
    let pooled = txids
        .iter()
        .filter(|t| tx(nodes[0].rpc, t).is_some_and(|t| t["status"] == "mempool"))
        .count();
    assert!(
        pooled > 0,
        "the payments went into a block before the nodes stopped: make the slots longer"
    );
    txids
}

fn stop_all(guards: &mut [Guard], signal: &str) {
    // Every node at once: signal all, then reap.
    for g in guards.iter() {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(g.0.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
    for g in guards.iter_mut() {
        g.0.wait().unwrap();
    }
}

fn restart(nodes: &[DevnetNode]) -> Vec<Guard> {
    let guards: Vec<Guard> = nodes.iter().map(DevnetNode::start).collect();
    for node in nodes {
        poll("the node answers", LIMIT, || height(node.rpc));
    }
    guards
}

#[test]
fn final_payments_survive_sigterm_and_sigkill_of_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write_devnet(dir.path(), [127, 5, 10], 3, SLOW_SLOTS);
    let mut guards: Vec<Guard> = nodes.iter().map(DevnetNode::start).collect();
    wait_meshed(&nodes, LIMIT);

    // SIGTERM: a graceful stop writes what is pending.
    let first = final_payments(&nodes, 20);
    stop_all(&mut guards, "TERM");
    guards = restart(&nodes);
    for txid in &first {
        assert!(
            is_final(nodes[0].rpc, txid),
            "{txid} was final before SIGTERM"
        );
    }
    let log = nodes[0].log();
    assert!(log.contains("mempool restored from the store"), "{log}");

    // SIGKILL of every node right after the payments were shown final,
    // while a client keeps paying: whatever was acknowledged survives.
    wait_meshed(&nodes, LIMIT);
    let second = final_payments(&nodes, 20);
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let paying = Arc::new(AtomicBool::new(true));
    let client = {
        let (acknowledged, paying) = (acknowledged.clone(), paying.clone());
        let (rpc, to) = (nodes[0].rpc, nodes[1].address.clone());
        std::thread::spawn(move || {
            while paying.load(Ordering::Relaxed) {
                match pay(rpc, &to) {
                    Ok(txid) => {
                        acknowledged.lock().unwrap().insert(txid);
                    }
                    // The node died under the call: not acknowledged.
                    Err(_) => break,
                }
            }
        })
    };
    poll("some payments acknowledged", LIMIT, || {
        (acknowledged.lock().unwrap().len() >= 10).then_some(())
    });
    stop_all(&mut guards, "KILL");
    paying.store(false, Ordering::Relaxed);
    client.join().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    eprintln!(
        "{} payments final before SIGTERM, {} final and {} more acknowledged before SIGKILL",
        first.len(),
        second.len(),
        acknowledged.len()
    );
    guards = restart(&nodes);
    for txid in &second {
        assert!(
            is_final(nodes[0].rpc, txid),
            "{txid} was final before SIGKILL"
        );
    }
    for txid in &acknowledged {
        assert!(
            tx(nodes[0].rpc, txid).is_some(),
            "{txid} was acknowledged before SIGKILL"
        );
    }
    wait_meshed(&nodes, LIMIT);
    let every: BTreeSet<String> = first
        .iter()
        .chain(&second)
        .chain(&acknowledged)
        .cloned()
        .collect();
    all_in_blocks(&nodes, &every);
    drop(guards);
}

#[test]
fn a_payment_made_while_cut_off_is_announced_when_peers_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write_devnet(dir.path(), [127, 5, 11], 3, 2);
    // Node 1 alone: the payment is accepted and pooled, but one of three
    // masternodes cannot make it final.
    let first = nodes[0].start();
    poll("node 1 answers", LIMIT, || height(nodes[0].rpc));
    let txid = pay(nodes[0].rpc, &nodes[1].address).unwrap();
    let alone = tx(nodes[0].rpc, &txid).unwrap();
    assert_eq!(alone["status"], "mempool");
    assert_eq!(alone["final"], json!(false));

    // The others arrive (and dial node 1): it announces what it holds.
    let _rest: Vec<Guard> = nodes[1..].iter().map(DevnetNode::start).collect();
    wait_meshed(&nodes, LIMIT);
    for node in &nodes {
        poll("final everywhere", LIMIT, || {
            is_final(node.rpc, &txid).then_some(())
        });
    }
    all_in_blocks(&nodes, &BTreeSet::from([txid]));
    drop(first);
}

#[test]
fn a_node_restarting_with_payments_already_in_blocks_drops_them() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write_devnet(dir.path(), [127, 5, 12], 3, SLOW_SLOTS);
    let mut guards: Vec<Guard> = nodes.iter().map(DevnetNode::start).collect();
    wait_meshed(&nodes, LIMIT);
    let txids = final_payments(&nodes, 5);
    for txid in &txids {
        poll("final on node 3", LIMIT, || {
            is_final(nodes[2].rpc, txid).then_some(())
        });
    }
    // Node 3 goes down holding them; the others put them in a block.
    guards[2].signal_and_wait("KILL");
    all_in_blocks(&nodes[..2], &txids);
    // Node 3 comes back with them pooled, syncs the block, and drops them.
    guards[2] = nodes[2].start();
    all_in_blocks(&nodes[2..], &txids);
    poll("node 3's mempool empties", LIMIT, || {
        (call(nodes[2].rpc, "getrawmempool", json!([])).ok()? == json!([])).then_some(())
    });
    let log = nodes[2].log();
    assert!(log.contains("mempool restored from the store"), "{log}");
}

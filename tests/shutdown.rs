//! `stop` over JSON-RPC ends a busy devnet node's process: two `timed run`
//! processes (each a masternode of a shared genesis, one block per second,
//! connected to each other, a payment in flight) are stopped one after the
//! other. Each must exit by itself, successfully, and log no panic. The
//! product promises an exit within 5 s; on a machine shared with other
//! builds the test only bounds the wait (generously) and prints the time
//! each exit took.
//!
//! Addresses: 127.10.4.x.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::procs::*;
use serde_json::{json, Value};

/// Generous bound on anything the nodes must get to.
const LIMIT: Duration = Duration::from_secs(60);

/// How long a stopped node may take to exit before the test fails.
const EXIT_LIMIT: Duration = Duration::from_secs(30);

/// Calls `stop` on `node` and waits for its process to exit; returns how
/// long that took.
fn stop_and_wait(node: &DevnetNode, guard: &mut Guard, which: &str) -> Duration {
    let asked = Instant::now();
    assert_eq!(
        call(node.rpc, "stop", json!([])),
        Ok(Value::from("timed stopping")),
        "{which}:\n{}",
        node.log()
    );
    let status = wait_exit(&mut guard.0, EXIT_LIMIT).unwrap_or_else(|| {
        panic!(
            "{which} still running {EXIT_LIMIT:?} after `stop`:\n{}",
            node.log()
        )
    });
    let took = asked.elapsed();
    println!("{which}: exited {took:?} after `stop` ({status})");
    assert!(
        status.success(),
        "{which} exited with {status}:\n{}",
        node.log()
    );
    let log = node.log();
    let panics: Vec<&str> = log
        .lines()
        .filter(|l| l.to_lowercase().contains("panic"))
        .collect();
    assert!(
        panics.is_empty(),
        "{which} logged panics:\n{}",
        panics.join("\n")
    );
    took
}

#[test]
fn stop_over_rpc_ends_a_busy_devnet_node() {
    let root = tempfile::tempdir().unwrap();
    let nodes = write_devnet(root.path(), [127, 10, 4], 2, 1);
    let mut guards: Vec<Guard> = nodes.iter().map(DevnetNode::start).collect();
    wait_meshed(&nodes, LIMIT);
    // Blocks are being made and exchanged.
    for node in &nodes {
        poll("two blocks", LIMIT, || {
            (height(node.rpc)? >= 2).then_some(())
        });
    }
    // A payment in flight when the first node is told to stop.
    let txid = call(
        nodes[0].rpc,
        "sendtoaddress",
        json!([nodes[1].address, "1"]),
    )
    .unwrap_or_else(|e| panic!("sendtoaddress: {e}\n{}", nodes[0].log()));
    assert!(txid.is_string(), "{txid}");

    let mut second = guards.pop().unwrap();
    let mut first = guards.pop().unwrap();
    // The first node leaves a running peer behind; the second then stops
    // with no peer left.
    stop_and_wait(&nodes[0], &mut first, "node 1");
    assert!(
        height(nodes[1].rpc).is_some(),
        "node 2 stopped answering when node 1 left:\n{}",
        nodes[1].log()
    );
    stop_and_wait(&nodes[1], &mut second, "node 2");
}

//! The address book is kept across restarts and a damaged stored book never
//! stops a node: two `timed run` processes connect, the dialling node holds
//! its peer in the tried table (and the dialled one holds the dialler's
//! announced address in the new table); after a restart the book is still
//! there; after the stored book is overwritten with garbage the node starts
//! with an empty book and says so.
//!
//! Addresses: 127.11.1.x.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::procs::*;
use serde_json::{json, Value};
use timed::storage::{Store, DB_FILE};

const LIMIT: Duration = Duration::from_secs(60);

fn sizes(node: &DevnetNode) -> (u64, u64) {
    let info = call(node.rpc, "getaddrmaninfo", json!([]))
        .unwrap_or_else(|e| panic!("getaddrmaninfo: {e}\n{}", node.log()));
    let all = &info["all_networks"];
    let n = |k: &str| all[k].as_u64().unwrap_or_else(|| panic!("{info}"));
    assert_eq!(n("total"), n("new") + n("tried"), "{info}");
    (n("new"), n("tried"))
}

fn stop(node: &DevnetNode, guard: &mut Guard) {
    assert_eq!(
        call(node.rpc, "stop", json!([])),
        Ok(Value::from("timed stopping"))
    );
    let status = wait_exit(&mut guard.0, LIMIT).expect("the node exits after `stop`");
    assert!(status.success(), "{status}:\n{}", node.log());
}

#[test]
fn the_address_book_survives_a_restart_and_a_damaged_one_is_replaced() {
    let root = tempfile::tempdir().unwrap();
    let nodes = write_devnet(root.path(), [127, 11, 1], 2, 1);
    let mut guards: Vec<Guard> = nodes.iter().map(DevnetNode::start).collect();
    wait_meshed(&nodes, LIMIT);
    // Each side dialled or was dialled: the dialler's peer is tried, and
    // every node holds at least one address.
    let tried_somewhere = poll("a tried address", LIMIT, || {
        let all: Vec<(u64, u64)> = nodes.iter().map(sizes).collect();
        all.iter().any(|&(_, tried)| tried >= 1).then_some(all)
    });
    println!("address books (new, tried): {tried_somewhere:?}");
    let (i, before) = tried_somewhere
        .iter()
        .enumerate()
        .find(|(_, s)| s.1 >= 1)
        .map(|(i, s)| (i, *s))
        .unwrap();

    // A restart finds the book in the store.
    stop(&nodes[i], &mut guards[i]);
    guards[i] = nodes[i].start();
    let after = poll("the restarted node answers", LIMIT, || {
        call(nodes[i].rpc, "getaddrmaninfo", json!([])).ok()?;
        Some(sizes(&nodes[i]))
    });
    assert!(after.1 >= before.1, "before {before:?}, after {after:?}");
    assert!(
        nodes[i].log().contains("address book loaded"),
        "{}",
        nodes[i].log()
    );

    // A damaged stored book: the node starts anyway, with an empty book,
    // and says why.
    stop(&nodes[i], &mut guards[i]);
    Store::open(&nodes[i].dir.join(DB_FILE))
        .unwrap()
        .save_address_book(b"\xff\x00 not an address book")
        .unwrap();
    guards[i] = nodes[i].start();
    poll("the node with a damaged book answers", LIMIT, || {
        call(nodes[i].rpc, "getaddrmaninfo", json!([])).ok()
    });
    assert!(
        nodes[i]
            .log()
            .contains("stored address book unreadable: starting with an empty one"),
        "{}",
        nodes[i].log()
    );
    // It reconnects to its configured peer and learns it again.
    poll("the configured peer is tried again", LIMIT, || {
        (sizes(&nodes[i]).1 >= 1 || sizes(&nodes[i]).0 >= 1).then_some(())
    });
    let log = nodes[i].log();
    assert!(
        !log.lines().any(|l| l.to_lowercase().contains("panic")),
        "{log}"
    );
}

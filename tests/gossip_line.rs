//! Gossip over real loopback TCP: five nodes in a line, each on its own
//! 127.0.20.x address, node i+1 dialing node i.
//!
//! A transaction published by node 1 must reach nodes 2..5 exactly once
//! each, relayed hop by hop (every hop verifies the envelope before relaying
//! it), and never come back to node 1 as a delivery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use timed::app::Node;
use timed::network::{NetworkEvent, PeerTarget};
use timed::protocol::{GossipKind, MessageId};
use tokio::sync::broadcast;

/// How long to keep listening after the expected deliveries, to prove there
/// is no second one.
const QUIET: Duration = Duration::from_secs(1);

/// Starts `n` nodes on 127.0.`subnet`.1..=n; node i+1 dials node i.
async fn line(subnet: u8, n: u8) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 1..=n {
        let mut cfg = config([127, 0, subnet, i]);
        if let Some(prev) = nodes.last() {
            cfg.peers = vec![PeerTarget {
                addr: prev.local_addr(),
                node_id: Some(prev.node_id()),
            }];
        }
        let (node, _) = start(cfg).await;
        nodes.push(node);
    }
    nodes
}

/// Waits until every link of the line is up on both ends.
async fn wait_line_up(nodes: &[Node]) {
    wait_until("all links of the line are up", || {
        nodes.iter().enumerate().all(|(i, node)| {
            let left = i == 0 || node.peers().contains(&nodes[i - 1].node_id());
            let right = i + 1 == nodes.len() || node.peers().contains(&nodes[i + 1].node_id());
            let expected = if i == 0 || i + 1 == nodes.len() { 1 } else { 2 };
            left && right && node.peers().len() == expected
        })
    })
    .await;
}

/// Deliveries of `id` still queued in `rx` (non-blocking).
fn drain_deliveries(rx: &mut broadcast::Receiver<NetworkEvent>, id: MessageId) -> usize {
    let mut count = 0;
    loop {
        match rx.try_recv() {
            Ok(NetworkEvent::Delivered { id: got, .. }) if got == id => count += 1,
            Ok(_) => {}
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                panic!("missed {n} events: cannot prove there was no second delivery")
            }
            Err(_) => return count,
        }
    }
}

#[tokio::test]
async fn a_published_transaction_crosses_a_line_of_five_exactly_once() {
    let nodes = line(20, 5).await;
    wait_line_up(&nodes).await;
    let mut events: Vec<_> = nodes.iter().map(|n| n.subscribe()).collect();

    let payload = b"line transaction".to_vec();
    let id = nodes[0].publish(GossipKind::Transaction, payload);

    // Nodes 2..5 each deliver it once, from their left neighbour.
    for (i, rx) in events.iter_mut().enumerate().skip(1) {
        let (kind, from) = wait_for(rx, |e| match e {
            NetworkEvent::Delivered {
                id: got,
                kind,
                from,
            } if *got == id => Some((*kind, *from)),
            _ => None,
        })
        .await;
        assert_eq!(kind, GossipKind::Transaction, "node {}", i + 1);
        assert_eq!(
            from,
            nodes[i - 1].node_id(),
            "node {} got it from its left neighbour",
            i + 1
        );
    }

    // Keep listening: no second delivery anywhere, none at all on node 1.
    tokio::time::sleep(QUIET).await;
    for (i, rx) in events.iter_mut().enumerate() {
        let extra = drain_deliveries(rx, id);
        assert_eq!(extra, 0, "node {} delivered the transaction again", i + 1);
    }

    // Dedup: the relay skips the sender, so in a line no copy ever travels
    // back: each of nodes 2..5 let exactly one copy through its dedup layer
    // and saw no duplicate; node 1 (the originator) received nothing at all.
    for (i, node) in nodes.iter().enumerate() {
        let dedup = layer_counters(node, "dedup");
        let auth = layer_counters(node, "auth");
        let expected = u64::from(i > 0);
        assert_eq!(dedup.accepted(), expected, "node {}: dedup accepted", i + 1);
        assert_eq!(dedup.rejected("duplicate"), 0, "node {}: duplicates", i + 1);
        assert_eq!(
            auth.accepted(),
            expected,
            "node {}: envelopes verified",
            i + 1
        );
        assert!(
            auth.rejections().is_empty(),
            "node {}: {:?}",
            i + 1,
            auth.rejections()
        );
    }

    // Every link survived.
    wait_line_up(&nodes).await;
    for node in &nodes {
        node.shutdown();
    }
}

#[tokio::test]
async fn in_a_ring_the_second_copy_is_dropped_by_dedup() {
    // The same five nodes with node 1 also dialing node 5: the envelope
    // goes round both ways, and wherever two copies meet the second one is
    // dropped by dedup, never delivered twice.
    let nodes = line(27, 5).await;
    nodes[0]
        .connect(&PeerTarget {
            addr: nodes[4].local_addr(),
            node_id: Some(nodes[4].node_id()),
        })
        .await
        .expect("closing the ring");
    wait_until("all links of the ring are up", || {
        nodes.iter().all(|n| n.peers().len() == 2)
    })
    .await;
    let mut events: Vec<_> = nodes.iter().map(|n| n.subscribe()).collect();

    let id = nodes[0].publish(GossipKind::Transaction, b"ring transaction".to_vec());
    for rx in events.iter_mut().skip(1) {
        wait_for(rx, |e| match e {
            NetworkEvent::Delivered { id: got, .. } if *got == id => Some(()),
            _ => None,
        })
        .await;
    }
    // Node 1 sends 2 copies, each of nodes 2..5 relays 1 to its other
    // neighbour: 6 copies for 4 deliveries, so 2 duplicates in total.
    let duplicates = || -> u64 {
        nodes
            .iter()
            .map(|n| layer_counters(n, "dedup").rejected("duplicate"))
            .sum()
    };
    wait_until("both surplus copies were dropped", || duplicates() >= 2).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(duplicates(), 2);
    for (i, rx) in events.iter_mut().enumerate() {
        assert_eq!(
            drain_deliveries(rx, id),
            0,
            "node {} delivered it again",
            i + 1
        );
    }
    // Neither neighbour relays the envelope back to the originator.
    assert_eq!(layer_counters(&nodes[0], "dedup").accepted(), 0);
    assert_eq!(layer_counters(&nodes[0], "dedup").rejected("duplicate"), 0);
    for node in &nodes {
        node.shutdown();
    }
}

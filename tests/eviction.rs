#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Inbound eviction over real loopback connections: a node whose inbound
//! slots are full makes room for a new peer by evicting one, chosen by the
//! rules of `network::eviction` (each rule has its unit test there).
//!
//! The victim has 24 inbound slots: 10 peers from 10 netgroups of their
//! own connect first, then 14 from one crowded netgroup (127.14.1.0/24).
//! The youngest crowded peer delivers a new transaction (protected by the
//! transaction rule); a new peer from yet another netgroup then connects.
//! Pinned outcome: the new peer is admitted, exactly one peer is evicted,
//! it comes from the crowded netgroup, and it is not the one that
//! delivered the transaction.
//!
//! Addresses are on 127.14.x.y, with netgroups of /24.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use timed::app::Node;
use timed::network::address_book::{AddressBook, GroupBits};
use timed::network::{NetworkEvent, PeerTarget};
use timed::protocol::GossipKind;

fn member(ip: [u8; 4]) -> timed::network::NetworkConfig {
    let mut cfg = config(ip);
    cfg.limits.target_outbound = 0;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_evicts_the_youngest_of_the_most_crowded_netgroup() {
    let mut cfg = member([127, 14, 0, 1]);
    cfg.limits.max_inbound = 24;
    cfg.address_book = Arc::new(std::sync::Mutex::new(AddressBook::new(
        rand::random(),
        GroupBits { v4: 24, v6: 32 },
    )));
    let (victim, _) = start(cfg).await;
    let target = PeerTarget {
        addr: victim.local_addr(),
        node_id: Some(victim.node_id()),
    };
    let mut peers: Vec<Node> = Vec::new();
    let ips: Vec<[u8; 4]> = (10..20u8)
        .map(|g| [127, 14, g, 1])
        .chain((1..=14u8).map(|h| [127, 14, 1, h]))
        .collect();
    for ip in &ips {
        let (node, _) = start(member(*ip)).await;
        node.connect(&target).await.unwrap();
        peers.push(node);
    }
    wait_until("24 inbound peers", || victim.peers().len() == 24).await;
    // Every peer answered a keepalive ping (so latency is measured).
    wait_until("every peer pinged", || {
        victim.peers().snapshot().iter().all(|h| {
            h.context
                .stats
                .min_rtt_us
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        })
    })
    .await;
    // The youngest crowded peer delivers a new transaction.
    let deliverer = peers.last().unwrap();
    let mut events = victim.subscribe();
    let id = deliverer.publish(GossipKind::Transaction, b"a new transaction".to_vec());
    wait_for(&mut events, |e| match e {
        NetworkEvent::Delivered { id: got, .. } if *got == id => Some(()),
        _ => None,
    })
    .await;

    let before: Vec<SocketAddr> = victim
        .peers()
        .snapshot()
        .iter()
        .map(|h| h.info.addr)
        .collect();
    let (newcomer, _) = start(member([127, 14, 99, 1])).await;
    newcomer.connect(&target).await.unwrap();
    wait_until("the newcomer is in and one peer is out", || {
        let now: Vec<SocketAddr> = victim
            .peers()
            .snapshot()
            .iter()
            .map(|h| h.info.addr)
            .collect();
        now.iter().any(|a| a.ip() == newcomer.local_addr().ip()) && now.len() == 24
    })
    .await;
    let after: Vec<SocketAddr> = victim
        .peers()
        .snapshot()
        .iter()
        .map(|h| h.info.addr)
        .collect();
    let evicted: Vec<&SocketAddr> = before.iter().filter(|a| !after.contains(a)).collect();
    assert_eq!(evicted.len(), 1, "{evicted:?}");
    let evicted = evicted[0];
    match evicted.ip() {
        std::net::IpAddr::V4(v4) => assert_eq!(v4.octets()[..3], [127, 14, 1], "{evicted}"),
        other => panic!("{other}"),
    }
    assert_ne!(
        evicted.ip(),
        deliverer.local_addr().ip(),
        "the deliverer was evicted"
    );
    victim.shutdown();
}

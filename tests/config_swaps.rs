//! The middleware stack is configuration: removing or reordering layers
//! changes behaviour as documented in `src/layers/stack.rs`, and a bad
//! entry stops start-up with a message naming it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use timed::app::Node;
use timed::layers::stack::MiddlewareConfig;
use timed::network::NetworkEvent;
use timed::params::Network;
use timed::protocol::codec::encode_message;
use timed::protocol::version::unix_now;
use timed::protocol::{Envelope, GossipKind, Message, Ping, VersionParams};
use tokio::sync::broadcast;

const DEVNET: [u8; 4] = *b"TDEV";

/// An attacker session that completed the version exchange with `server`.
async fn attacker(
    server: &Node,
    src: [u8; 4],
    events: &mut broadcast::Receiver<NetworkEvent>,
) -> RawSession {
    let mut raw = RawSession::open(src, server.local_addr(), DEVNET).await;
    let version = VersionParams::new(Network::Devnet).build(raw.identity.node_id(), 0);
    raw.send_frame(&encode_message(&Message::Version(version)).unwrap())
        .await;
    wait_for(events, |e| {
        matches!(e, NetworkEvent::Connected(_)).then_some(())
    })
    .await;
    raw
}

fn without(name: &str) -> Vec<MiddlewareConfig> {
    MiddlewareConfig::default_stack()
        .into_iter()
        .filter(|c| c.name() != name)
        .collect()
}

/// Pings the server and waits for the pong. A connection's messages go
/// through the stack one at a time, in order, and a delivery is reported
/// while its message is in the stack: once the pong is back, every message
/// sent before the ping has been handled and its delivery reported.
async fn barrier(raw: &mut RawSession, nonce: u64) {
    raw.send(&Message::Ping(Ping {
        nonce,
        timestamp_ms: unix_now().as_millis() as u64,
    }))
    .await;
    loop {
        match raw.recv().await {
            Some(Message::Pong(p)) if p.nonce == nonce => return,
            Some(_) => continue,
            None => panic!("the server closed the connection"),
        }
    }
}

/// Counts the `Delivered` events already reported (non-blocking).
fn deliveries(events: &mut broadcast::Receiver<NetworkEvent>) -> usize {
    let mut n = 0;
    loop {
        match events.try_recv() {
            Ok(NetworkEvent::Delivered { .. }) => n += 1,
            Ok(_) => {}
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                panic!("missed {missed} events: cannot count the deliveries")
            }
            Err(_) => return n,
        }
    }
}

#[tokio::test]
async fn without_dedup_duplicates_reach_the_handler() {
    for (stack, expected) in [
        (MiddlewareConfig::default_stack(), 1),
        (without("dedup"), 2),
    ] {
        let mut cfg = config([127, 0, 40, 1]);
        cfg.middleware = stack;
        let (server, _) = start(cfg).await;
        let mut events = server.subscribe();
        let mut raw = attacker(&server, [127, 0, 40, 101], &mut events).await;
        let envelope = Envelope::sign(
            &raw.identity,
            DEVNET,
            GossipKind::Transaction,
            unix_now().as_millis() as u64,
            b"pay 1 TIME".to_vec(),
        );
        let frame = encode_message(&Message::Gossip(envelope)).unwrap();
        raw.send_frame(&frame).await;
        raw.send_frame(&frame).await;
        barrier(&mut raw, 1).await;
        assert_eq!(
            deliveries(&mut events),
            expected,
            "stack {}",
            server.middleware().describe()
        );
        server.shutdown();
    }
}

/// Floods `count` pings; the per-peer limit is 6 per 10 s.
async fn flood(raw: &mut RawSession, count: u64) {
    for nonce in 0..count {
        let ping = Message::Ping(Ping {
            nonce,
            timestamp_ms: 0,
        });
        raw.send_frame(&encode_message(&ping).unwrap()).await;
    }
}

#[tokio::test]
async fn rate_limit_outside_scoring_refuses_without_penalty() {
    // Default order: blacklist -> scoring -> rate_limit -> ...: of 100
    // pings, 6 pass, 54 are dropped for free, and each of the rest (beyond
    // 10 times the budget) costs -2: at -20 the peer is disconnected.
    let (server, _) = start(config([127, 0, 41, 1])).await;
    let mut events = server.subscribe();
    let mut raw = attacker(&server, [127, 0, 41, 101], &mut events).await;
    flood(&mut raw, 100).await;
    let (kind, text) = disconnection(&mut events).await;
    assert_eq!(kind, "policy", "{text}");
    assert_closed(&mut raw.stream).await;
    server.shutdown();

    // Reordered: blacklist -> rate_limit -> scoring -> ...: the same flood
    // is refused by rate_limit, but scoring never sees it.
    let mut stack = without("rate_limit");
    let rate_limit = MiddlewareConfig::default_stack()
        .into_iter()
        .find(|c| c.name() == "rate_limit")
        .unwrap();
    stack.insert(1, rate_limit);
    let mut cfg = config([127, 0, 41, 2]);
    cfg.middleware = stack;
    let (server, _) = start(cfg).await;
    assert_eq!(
        server.middleware().describe(),
        "blacklist -> rate_limit -> scoring -> dedup -> auth"
    );
    let mut events = server.subscribe();
    let mut raw = attacker(&server, [127, 0, 41, 102], &mut events).await;
    flood(&mut raw, 100).await;
    let peer = server
        .peers()
        .get(&raw.identity.node_id())
        .expect("still connected");
    // Wait until the server has handled the whole flood.
    wait_until("the flood was handled", || {
        peer.context
            .stats
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 90
    })
    .await;
    assert_eq!(peer.context.score.value(Duration::from_secs(600)), 0.0);
    assert!(server.peers().contains(&raw.identity.node_id()));
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, NetworkEvent::Disconnected { .. }),
            "{event:?}"
        );
    }
    server.shutdown();
}

#[test]
fn an_unknown_layer_fails_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("timed.toml");
    std::fs::write(
        &config,
        "[[middleware]]\nname = \"blacklist\"\n\n[[middleware]]\nname = \"firewall\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_timed"))
        .args(["run", "--listen", "127.0.42.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("middleware[1]") && stderr.contains("\"firewall\""),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created on a bad config"
    );
}

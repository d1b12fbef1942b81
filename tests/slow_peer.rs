//! A peer that does not drain its send queue is disconnected instead of
//! being buffered without bound, while a peer that reads keeps receiving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use timed::network::{NetworkEvent, PeerTarget};
use timed::params::Network;
use timed::protocol::codec::encode_message;
use timed::protocol::{DisconnectReason, GossipKind, Message, VersionParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_is_disconnected() {
    let mut cfg = config([127, 0, 50, 1]);
    cfg.send_queue_bytes = 1024 * 1024;
    let (server, _) = start(cfg).await;
    let mut events = server.subscribe();

    // The slow peer: completes the handshake, then never reads again.
    let mut raw = RawSession::open([127, 0, 50, 101], server.local_addr(), *b"TDEV").await;
    let version = VersionParams::new(Network::Devnet).build(raw.identity.node_id(), 0);
    raw.send_frame(&encode_message(&Message::Version(version)).unwrap())
        .await;
    let slow_id = raw.identity.node_id();
    wait_for(&mut events, |e| match e {
        NetworkEvent::Connected(info) if info.node_id == slow_id => Some(()),
        _ => None,
    })
    .await;

    // An honest peer that reads everything.
    let (honest, _) = start(config([127, 0, 50, 102])).await;
    let mut honest_events = honest.subscribe();
    honest
        .connect(&PeerTarget {
            addr: server.local_addr(),
            node_id: Some(server.node_id()),
        })
        .await
        .unwrap();

    // 30 MiB of gossip: far more than the slow peer's socket buffers and
    // its 1 MiB queue can hold. Each envelope is published once the honest
    // peer has taken the previous one, so the honest peer is never behind
    // by more than one message however loaded the machine is, while the
    // slow peer's queue only grows.
    for n in 0..30u8 {
        server.publish(GossipKind::Transaction, vec![n; 1024 * 1024]);
        wait_for(&mut honest_events, |e| {
            matches!(e, NetworkEvent::Delivered { .. }).then_some(())
        })
        .await;
    }
    let error = wait_for(&mut events, |e| match e {
        NetworkEvent::Disconnected { peer, error } if peer.node_id == slow_id => {
            Some(error.to_string())
        }
        _ => None,
    })
    .await;
    assert!(
        error.contains(&format!("{:?}", DisconnectReason::SendQueueFull)),
        "{error}"
    );
    assert!(server.peers().contains(&honest.node_id()));
    assert!(!server.peers().contains(&slow_id));
}

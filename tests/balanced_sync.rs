//! Sync through the peer set's balancer over real loopback connections: a
//! node with two serving peers, one of which never answers, syncs the
//! whole chain through the other, and the silent peer is charged one
//! `Timeout` at most per request it was sent (the connection's request
//! timeout charges; the balancer's attempt timeout and sync do not).
//!
//! Every address is on 127.9.0.0/24.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::chains::seed_chain;
use common::*;
use timed::app::Node;
use timed::crypto::{NodeId, NodeIdentity};
use timed::network::{NetworkEvent, PeerTarget};
use timed::params::Network;
use timed::protocol::message::capabilities;
use timed::protocol::version::unix_now;
use timed::protocol::{Message, Pong, VersionParams};
use timed::state::{Chain, ChainOptions};
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

/// Penalty of a request timeout (src/layers/scoring.rs).
const TIMEOUT_PENALTY: f64 = -5.0;
/// Score half-life (src/layers/scoring.rs).
const HALF_LIFE_SECS: f64 = 600.0;
/// Blocks the honest node holds.
const HONEST_BLOCKS: u64 = 30;
/// The victim's connection request timeout: short, so the test is quick.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

async fn connected(events: &mut broadcast::Receiver<NetworkEvent>, id: NodeId) {
    wait_for(events, |e| match e {
        NetworkEvent::Connected(info) if info.node_id == id => Some(()),
        _ => None,
    })
    .await;
}

/// A peer that completes the handshake announcing `FULL_NODE` and a tip far
/// ahead, answers pings (so it stays connected) and never answers a chain
/// request; counts the requests in `asked` and reports each on `report`.
async fn silent_peer(
    node: &Node,
    events: &mut broadcast::Receiver<NetworkEvent>,
    genesis_hash: [u8; 32],
    asked: Arc<AtomicUsize>,
    report: mpsc::UnboundedSender<()>,
) -> (NodeId, tokio::task::JoinHandle<()>) {
    let mut raw =
        RawSession::open([127, 9, 0, 101], node.local_addr(), Network::Devnet.magic()).await;
    let mut params = VersionParams::new(Network::Devnet);
    params.genesis_hash = genesis_hash;
    params.capabilities = capabilities::FULL_NODE | capabilities::RELAY;
    let id = raw.identity.node_id();
    raw.send(&Message::Version(params.build(id, 1_000))).await;
    match raw.recv().await {
        Some(Message::Version(v)) => assert_eq!(v.genesis_hash, genesis_hash),
        other => panic!("expected the node's Version, got {other:?}"),
    }
    connected(events, id).await;
    let task = tokio::spawn(async move {
        use tokio_util::codec::Decoder;
        loop {
            let message = match raw.codec.decode(&mut raw.read_buf) {
                Ok(Some(message)) => message,
                Ok(None) => match raw.stream.read_buf(&mut raw.read_buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                },
                Err(_) => return,
            };
            match message {
                Message::GetBlocks(_) | Message::GetMempool => {
                    asked.fetch_add(1, Ordering::SeqCst);
                    let _ = report.send(());
                }
                Message::Ping(ping) => {
                    raw.send(&Message::Pong(Pong {
                        nonce: ping.nonce,
                        timestamp_ms: unix_now().as_millis() as u64,
                    }))
                    .await;
                }
                _ => {}
            }
        }
    });
    (id, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_completes_through_the_other_peer_and_a_silent_peer_pays_one_timeout_per_request() {
    // The honest node: the only masternode, with HONEST_BLOCKS blocks.
    let honest_dir = tempfile::tempdir().unwrap();
    let seed = seed_chain(honest_dir.path(), 60, HONEST_BLOCKS);
    let (genesis, masternode) = (seed.genesis, seed.identity);
    let honest_chain = Chain::open(
        honest_dir.path(),
        genesis.clone(),
        &masternode,
        ChainOptions::default(),
    )
    .unwrap();
    let honest = Node::start(
        &masternode,
        config([127, 9, 0, 2]),
        Some(honest_chain.clone()),
    )
    .await
    .unwrap();
    let honest_height = honest_chain.tip().height;
    assert!(honest_height >= HONEST_BLOCKS);

    // The node that syncs, not a masternode.
    let victim_dir = tempfile::tempdir().unwrap();
    let identity = NodeIdentity::generate();
    let victim_chain = Chain::open(
        victim_dir.path(),
        genesis.clone(),
        &identity,
        ChainOptions::default(),
    )
    .unwrap();
    assert!(!victim_chain.is_masternode());
    let mut cfg = config([127, 9, 0, 1]);
    cfg.connection.request_timeout = REQUEST_TIMEOUT;
    let victim = Node::start(&identity, cfg, Some(victim_chain.clone()))
        .await
        .unwrap();
    let mut events = victim.subscribe();

    // The silent peer connects first: the victim's first request goes to
    // it, the only serving peer.
    let asked = Arc::new(AtomicUsize::new(0));
    let (report_tx, mut report) = mpsc::unbounded_channel();
    let (silent_id, silent) = silent_peer(
        &victim,
        &mut events,
        genesis.hash(),
        asked.clone(),
        report_tx,
    )
    .await;
    tokio::time::timeout(WAIT, report.recv())
        .await
        .expect("the silent peer was never asked")
        .unwrap();
    let first_asked = Instant::now();

    // The honest node joins; sync completes through it.
    victim
        .connect(&PeerTarget {
            addr: honest.local_addr(),
            node_id: Some(honest.node_id()),
        })
        .await
        .unwrap();
    wait_until("the victim syncs the honest chain", || {
        victim_chain.tip().height >= honest_height
    })
    .await;

    // The silent peer was charged its Timeout for the first request, and
    // at most one per request it was sent.
    let requests = asked.load(Ordering::SeqCst);
    let score = score_of(&victim, silent_id);
    let decay = 0.5f64.powf(first_asked.elapsed().as_secs_f64() / HALF_LIFE_SECS);
    eprintln!("silent peer: {requests} requests, score {score:.3}");
    assert!(requests >= 1);
    assert!(
        score >= TIMEOUT_PENALTY * requests as f64 - 1e-9,
        "more than one Timeout per request: score {score} for {requests} requests"
    );
    assert!(
        score <= TIMEOUT_PENALTY * decay + 1e-6,
        "the silent peer was not charged for its first request: score {score}"
    );
    silent.abort();
    victim.shutdown();
    honest.shutdown();
}

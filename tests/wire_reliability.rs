//! Reliability promises of issue 9 over real loopback sockets:
//!
//! * unauthenticated sockets cannot hold the slots honest peers need: a
//!   flood of 64 idle sockets, and one of 64 sockets stalled after Noise
//!   message 1, each from its own IP and reopened 100-300 ms after the node
//!   closes it, while an honest node connects within a few tries; the node
//!   evicts the oldest pending handshakes (counted in
//!   `timed_handshakes_total{result="evicted"}`, read through a debugging
//!   metrics recorder installed for this binary) and closes them without
//!   blaming their IPs;
//! * dedup cannot leak: an envelope held in the stack when its sender's
//!   connection closes is delivered and relayed when an honest peer sends
//!   it;
//! * one slow reply costs one `Timeout` at most: a peer answering
//!   `GetBlocks` at 1.5 times the request timeout stays connected, loses
//!   one `Timeout` and no more, while sync completes from another peer;
//! * no requests a peer never offered: a peer announcing capabilities 0 is
//!   never sent `GetBlocks` or `GetMempool` and never charged;
//! * a node listening on port 0 announces the port it got.
//!
//! Every address is on 127.6.0.0/16, one /24 (or two) per test, so the
//! per-IP state of one test never touches another: 127.6.0/1 (idle flood),
//! 127.6.2/3 (stalled flood), 127.6.4 (dedup), 127.6.5 (port 0), 127.6.6
//! (slow reply), 127.6.7 (capabilities).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::chains::seed_chain;
use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use rand::Rng;
use timed::app::Node;
use timed::chain::genesis::Genesis;
use timed::constants::{DEFAULT_MAX_PENDING_HANDSHAKES, SYNC_INTERVAL};
use timed::crypto::{NodeId, NodeIdentity};
use timed::layers::auth::AuthConfig;
use timed::layers::blacklist::BlacklistConfig;
use timed::layers::dedup::DedupConfig;
use timed::layers::rate_limit::{KindLimit, RateLimitConfig};
use timed::layers::scoring::ScoringConfig;
use timed::layers::stack::MiddlewareConfig;
use timed::network::{NetworkEvent, PeerTarget};
use timed::params::Network;
use timed::peer::ConnectionEvent;
use timed::protocol::message::{capabilities, Blocks, GetBlocks};
use timed::protocol::version::unix_now;
use timed::protocol::{Envelope, GossipKind, Message, PeerAddress, Ping, Pong, VersionParams};
use timed::state::{Chain, ChainOptions};
use timed::wallet::Wallet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn now_ms() -> u64 {
    unix_now().as_millis() as u64
}

fn magic() -> [u8; 4] {
    Network::Devnet.magic()
}

fn target(node: &Node) -> PeerTarget {
    PeerTarget {
        addr: node.local_addr(),
        node_id: Some(node.node_id()),
    }
}

/// Polls `cond` every 10 ms until it holds; panics after `limit`.
async fn wait_until_within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `node` reports `peer` connected.
async fn connected(events: &mut broadcast::Receiver<NetworkEvent>, peer: NodeId) {
    wait_for(events, |e| match e {
        NetworkEvent::Connected(info) if info.node_id == peer => Some(()),
        _ => None,
    })
    .await;
}

// ---------------------------------------------------------------------------
// Metrics: a debugging recorder for the whole test binary.

/// The recorder's snapshotter and the counter totals read so far (a
/// snapshot resets the recorder's counters, so totals are accumulated here).
struct Counters {
    snapshotter: Snapshotter,
    totals: HashMap<(String, Vec<(String, String)>), u64>,
}

fn counters() -> &'static Mutex<Counters> {
    static COUNTERS: OnceLock<Mutex<Counters>> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other metrics recorder in this test binary");
        Mutex::new(Counters {
            snapshotter,
            totals: HashMap::new(),
        })
    })
}

/// The total of counter `name` with `label` since the recorder was
/// installed (the first call installs it).
fn counter_total(name: &str, label: (&str, &str)) -> u64 {
    let mut counters = counters().lock().unwrap();
    let snapshot = counters.snapshotter.snapshot();
    for (key, _, _, value) in snapshot.into_vec() {
        if let DebugValue::Counter(n) = value {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            *counters
                .totals
                .entry((key.name().to_owned(), labels))
                .or_default() += n;
        }
    }
    counters
        .totals
        .iter()
        .filter(|((n, labels), _)| {
            n == name && labels.iter().any(|(k, v)| k == label.0 && v == label.1)
        })
        .map(|(_, v)| *v)
        .sum()
}

// ---------------------------------------------------------------------------
// 1. Slots cannot be held by unauthenticated sockets.

/// Flood sockets, one per source IP.
const FLOOD_SOCKETS: u8 = 64;

/// Floods run one at a time: they share the eviction counter, and two at
/// once would only load the machine.
static FLOOD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A well-formed-looking Noise message 1: length 32, an ephemeral key.
fn noise_msg1() -> Vec<u8> {
    let mut msg1 = vec![0u8, 32];
    msg1.extend_from_slice(&[7u8; 32]);
    msg1
}

async fn dial(src: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((src, 0)))?;
    socket.connect(to).await
}

/// What the flood saw.
#[derive(Default)]
struct FloodStats {
    /// Sockets the node accepted.
    opened: AtomicUsize,
    /// Sockets the node closed.
    closed: AtomicUsize,
}

/// One flood socket from `src`: dials, optionally sends Noise message 1,
/// waits until the node closes it, and dials again after a short random
/// pause (the attacker's pacing, 100-300 ms), until `stop`.
async fn flood_socket(
    src: [u8; 4],
    to: SocketAddr,
    stalled: bool,
    stats: Arc<FloodStats>,
    stop: CancellationToken,
) {
    let msg1 = noise_msg1();
    loop {
        let dialed = tokio::select! {
            _ = stop.cancelled() => return,
            dialed = dial(src, to) => dialed,
        };
        if let Ok(mut stream) = dialed {
            stats.opened.fetch_add(1, Ordering::Relaxed);
            if stalled {
                let _ = stream.write_all(&msg1).await;
            }
            let mut buf = [0u8; 1024];
            tokio::select! {
                // Dropping the socket here is the flood's own close, after
                // the test stopped looking.
                _ = stop.cancelled() => return,
                _ = async {
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                } => {}
            }
            stats.closed.fetch_add(1, Ordering::Relaxed);
        }
        let pause = Duration::from_millis(rand::thread_rng().gen_range(100..300));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Counts the server's refusals and handshake failures for flood IPs
/// (`127.6.<flood_net>.x`) until aborted.
fn watch_flood_events(
    mut events: broadcast::Receiver<NetworkEvent>,
    flood_net: u8,
    refused: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let from_flood = move |addr: &SocketAddr| match addr.ip() {
        IpAddr::V4(ip) => ip.octets()[..3] == [127, 6, flood_net],
        IpAddr::V6(_) => false,
    };
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(NetworkEvent::Refused { addr, .. }) if from_flood(&addr) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                Ok(NetworkEvent::HandshakeFailed { addr, .. }) if from_flood(&addr) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// Runs a flood of [`FLOOD_SOCKETS`] sockets from `127.6.<flood_net>.10..`
/// against a node on `127.6.<net>.1` (default pending bound and
/// `max_inbound`, an accept rate the flood never reaches), and checks that
/// an honest node from `127.6.<net>.2` connects within 10 tries while it
/// runs, and that the flood's sockets were evicted and closed.
async fn honest_peer_gets_in_during_flood(net: u8, flood_net: u8, stalled: bool) {
    let _one_flood = FLOOD_LOCK.lock().await;
    let evicted_before = counter_total("timed_handshakes_total", ("result", "evicted"));

    let mut cfg = config([127, 6, net, 1]);
    cfg.limits.accepts_per_ip_per_minute = 100_000;
    assert_eq!(
        cfg.limits.max_pending_handshakes,
        DEFAULT_MAX_PENDING_HANDSHAKES
    );
    let (server, _) = start(cfg).await;
    let refused = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let watcher = watch_flood_events(
        server.subscribe(),
        flood_net,
        refused.clone(),
        failed.clone(),
    );

    let stats = Arc::new(FloodStats::default());
    let stop = CancellationToken::new();
    let flood: Vec<_> = (0..FLOOD_SOCKETS)
        .map(|i| {
            tokio::spawn(flood_socket(
                [127, 6, flood_net, 10 + i],
                server.local_addr(),
                stalled,
                stats.clone(),
                stop.clone(),
            ))
        })
        .collect();

    // The flood is under way once the node has closed as many of its
    // sockets as it has pending slots, twice over.
    let pending = DEFAULT_MAX_PENDING_HANDSHAKES;
    wait_until("the flood fills the pending slots and is evicted", || {
        stats.closed.load(Ordering::Relaxed) >= 2 * pending
    })
    .await;

    // An honest node connects within a few tries, and gets a pong.
    let (client, _) = start(config([127, 6, net, 2])).await;
    let mut client_events = client.subscribe();
    let mut tries = 0;
    let info = loop {
        tries += 1;
        match tokio::time::timeout(WAIT, client.connect(&target(&server))).await {
            Ok(Ok(info)) => break info,
            Ok(Err(error)) => eprintln!("honest try {tries} failed: {error}"),
            Err(_) => eprintln!("honest try {tries} timed out"),
        }
        assert!(
            tries < 10,
            "the honest peer did not get in within {tries} tries"
        );
    };
    assert_eq!(info.node_id, server.node_id());
    wait_for(&mut client_events, |e| match e {
        NetworkEvent::Connection(ConnectionEvent::Pong { peer, .. })
            if peer.node_id == server.node_id() =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    assert!(server.peers().contains(&client.node_id()));

    // The flood kept going after the honest peer got in.
    let closed_at_entry = stats.closed.load(Ordering::Relaxed);
    wait_until("the flood keeps being evicted", || {
        stats.closed.load(Ordering::Relaxed) > closed_at_entry + pending
    })
    .await;

    // Every socket the node closed was evicted from the pending handshakes:
    // no refusal by the gate, no failed handshake, no blame on the IPs.
    watcher.abort();
    let closed = stats.closed.load(Ordering::Relaxed);
    let evicted = counter_total("timed_handshakes_total", ("result", "evicted")) - evicted_before;
    stop.cancel();
    for task in flood {
        task.await.unwrap();
    }
    let opened = stats.opened.load(Ordering::Relaxed);
    eprintln!(
        "{} flood: honest peer in on try {tries}; {opened} sockets opened, {closed} closed by the node, {evicted} evictions",
        if stalled { "stalled" } else { "idle" }
    );
    assert_eq!(refused.load(Ordering::Relaxed), 0, "refusals by the gate");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed handshakes from the flood while it ran"
    );
    assert!(
        evicted >= closed as u64,
        "{evicted} evictions counted for {closed} flood sockets closed"
    );
    for i in 0..FLOOD_SOCKETS {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 6, flood_net, 10 + i));
        assert!(!server.blacklist().is_banned(ip), "{ip} was banned");
    }
    // The honest connection outlived the flood.
    assert!(server.peers().contains(&client.node_id()));
    client.shutdown();
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_cannot_hold_the_slots_honest_peers_need() {
    honest_peer_gets_in_during_flood(0, 1, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_stalled_after_noise_message_1_cannot_hold_the_slots() {
    honest_peer_gets_in_during_flood(2, 3, true).await;
}

// ---------------------------------------------------------------------------
// 2. Dedup cannot leak.

/// Ids the node's dedup cache holds as pending.
fn dedup_pending(node: &Node) -> usize {
    node.middleware().shared().dedup.pending()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_held_when_its_sender_leaves_is_delivered_from_an_honest_peer() {
    // dedup before a rate_limit whose transaction budget is one per 10 s:
    // a second transaction envelope is reserved by dedup and then waits in
    // rate_limit for its token (up to 10 s), deterministically.
    let mut cfg = config([127, 6, 4, 1]);
    cfg.middleware = vec![
        MiddlewareConfig::new(BlacklistConfig::default()),
        MiddlewareConfig::new(ScoringConfig::default()),
        MiddlewareConfig::new(DedupConfig::default()),
        MiddlewareConfig::new(RateLimitConfig {
            tx: Some(KindLimit {
                count: 1,
                per_secs: 10,
                burst: None,
            }),
            max_delay_ms: 10_000,
            ..RateLimitConfig::default()
        }),
        MiddlewareConfig::new(AuthConfig::default()),
    ];
    let (server, _) = start(cfg).await;
    let mut events = server.subscribe();
    let to = server.local_addr();

    // The third peer, which must see the envelope relayed.
    let mut third =
        RawSession::established_with(NodeIdentity::generate(), [127, 6, 4, 103], to).await;
    connected(&mut events, third.identity.node_id()).await;
    let mut attacker =
        RawSession::established_with(NodeIdentity::generate(), [127, 6, 4, 101], to).await;
    let attacker_id = attacker.identity.node_id();
    connected(&mut events, attacker_id).await;

    // Two transactions signed by their originator.
    let originator = NodeIdentity::generate();
    let envelope = |n: u8| {
        Envelope::sign(
            &originator,
            magic(),
            GossipKind::Transaction,
            now_ms(),
            vec![n; 64],
        )
    };
    let (a, b) = (envelope(1), envelope(2));
    let b_id = b.id();

    // A takes the attacker's only token; B is reserved and waits.
    attacker.send(&Message::Gossip(a.clone())).await;
    let a_id = a.id();
    wait_for(&mut events, |e| match e {
        NetworkEvent::Delivered { id, from, .. } if *id == a_id && *from == attacker_id => Some(()),
        _ => None,
    })
    .await;
    attacker.send(&Message::Gossip(b.clone())).await;
    wait_until("dedup holds B as pending", || dedup_pending(&server) == 1).await;

    // The attacker's connection is closed while B waits in the stack.
    assert_eq!(server.disconnect(|p| p.node_id == attacker_id), 1);
    wait_for(&mut events, |e| match e {
        NetworkEvent::Disconnected { peer, .. } if peer.node_id == attacker_id => Some(()),
        NetworkEvent::Delivered { id, .. } if *id == b_id => {
            panic!("B was delivered from the closing connection")
        }
        _ => None,
    })
    .await;
    assert_eq!(dedup_pending(&server), 0, "the reservation was released");

    // An honest peer sends B: delivered from it, and relayed to the third.
    let mut honest =
        RawSession::established_with(NodeIdentity::generate(), [127, 6, 4, 102], to).await;
    let honest_id = honest.identity.node_id();
    connected(&mut events, honest_id).await;
    honest.send(&Message::Gossip(b)).await;
    let from = wait_for(&mut events, |e| match e {
        NetworkEvent::Delivered { id, from, .. } if *id == b_id => Some(*from),
        _ => None,
    })
    .await;
    assert_eq!(from, honest_id);
    loop {
        match third.recv().await {
            Some(Message::Gossip(e)) if e.id() == b_id => break,
            Some(_) => {}
            None => panic!("the third peer's connection ended before B was relayed"),
        }
    }
    server.shutdown();
}

// ---------------------------------------------------------------------------
// Raw chain peers.

/// What a raw session read before a deadline.
enum Next {
    Message(Message),
    Closed,
    Quiet,
}

/// The next message from the node, or `Quiet` at `deadline`.
async fn next_before(raw: &mut RawSession, deadline: Instant) -> Next {
    use tokio_util::codec::Decoder;
    loop {
        match raw.codec.decode(&mut raw.read_buf) {
            Ok(Some(message)) => return Next::Message(message),
            Ok(None) => {}
            Err(_) => return Next::Closed,
        }
        match tokio::time::timeout_at(deadline, raw.stream.read_buf(&mut raw.read_buf)).await {
            Err(_) => return Next::Quiet,
            Ok(Ok(0) | Err(_)) => return Next::Closed,
            Ok(Ok(_)) => {}
        }
    }
}

/// Connects a raw peer from `src` to `node` (which follows `genesis_hash`),
/// announcing `caps` and `best_height`.
async fn raw_chain_peer(
    node: &Node,
    events: &mut broadcast::Receiver<NetworkEvent>,
    src: [u8; 4],
    genesis_hash: [u8; 32],
    caps: u64,
    best_height: u64,
) -> RawSession {
    let mut raw = RawSession::open(src, node.local_addr(), magic()).await;
    let mut params = VersionParams::new(Network::Devnet);
    params.genesis_hash = genesis_hash;
    params.capabilities = caps;
    let version = params.build(raw.identity.node_id(), best_height);
    raw.send(&Message::Version(version)).await;
    match raw.recv().await {
        Some(Message::Version(v)) => assert_eq!(v.genesis_hash, genesis_hash),
        other => panic!("expected the node's Version, got {other:?}"),
    }
    connected(events, raw.identity.node_id()).await;
    raw
}

/// Answers a ping.
async fn pong(raw: &mut RawSession, ping: Ping) {
    raw.send(&Message::Pong(Pong {
        nonce: ping.nonce,
        timestamp_ms: now_ms(),
    }))
    .await;
}

/// A chain-following victim on `ip` that is not a masternode (it never
/// produces), with its chain in `dir`.
async fn victim(
    ip: [u8; 4],
    genesis: Genesis,
    dir: &std::path::Path,
    tune: impl FnOnce(&mut timed::network::NetworkConfig),
) -> (Node, Chain) {
    let identity = NodeIdentity::generate();
    let chain = Chain::open(dir, genesis, &identity, ChainOptions::default()).unwrap();
    assert!(!chain.is_masternode());
    let mut cfg = config(ip);
    let start_chain = Some(chain.clone());
    tune(&mut cfg);
    let node = Node::start(&identity, cfg, start_chain).await.unwrap();
    (node, chain)
}

// ---------------------------------------------------------------------------
// 3. One slow reply costs one Timeout at most.

/// Penalty of a request timeout (src/layers/scoring.rs).
const TIMEOUT_PENALTY: f64 = -5.0;
/// Bonus for an answer within 500 ms.
const FAST_RESPONSE_BONUS: f64 = 0.5;
/// Score half-life (src/layers/scoring.rs).
const HALF_LIFE_SECS: f64 = 600.0;

/// Blocks the honest node holds before it starts.
const HONEST_BLOCKS: u64 = 30;
/// Blocks the slow peer claims and serves (a prefix of the honest chain).
const SLOW_BLOCKS: u64 = 5;

/// What the slow peer reports.
#[derive(Debug)]
enum Slow {
    /// Its first `GetBlocks` arrived (answered 3 s later).
    FirstRequest,
    /// The node answered the ping sent right after the late `Blocks`, so it
    /// has handled them.
    LateHandled,
}

/// The slow peer: holds the first `SLOW_BLOCKS` blocks of `chain`, answers
/// its first `GetBlocks` after `delay` and every other request at once;
/// counts its prompt answers in `prompt`.
async fn slow_peer(
    mut raw: RawSession,
    chain: Chain,
    delay: Duration,
    report: mpsc::UnboundedSender<Slow>,
    prompt: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    const SYNC_PING: u64 = 0x5107;
    let blocks = |g: GetBlocks| {
        let count = (SLOW_BLOCKS + 1)
            .saturating_sub(g.start)
            .min(u64::from(g.count)) as usize;
        let raws = chain
            .store()
            .raw_blocks(g.start, count, usize::MAX)
            .unwrap();
        Message::Blocks(Blocks {
            tip_height: SLOW_BLOCKS,
            blocks: raws.into_iter().map(serde_bytes::ByteBuf::from).collect(),
        })
    };
    let mut first = true;
    let mut late: Option<(Instant, GetBlocks)> = None;
    loop {
        let late_at = late.map(|(at, _)| at);
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            _ = async { tokio::time::sleep_until(late_at.unwrap()).await }, if late_at.is_some() => {
                let (_, g) = late.take().unwrap();
                raw.send(&blocks(g)).await;
                raw.send(&Message::Ping(Ping { nonce: SYNC_PING, timestamp_ms: now_ms() })).await;
                continue;
            }
            next = next_before(&mut raw, Instant::now() + Duration::from_secs(3600)) => next,
        };
        match next {
            Next::Message(Message::GetBlocks(g)) if first => {
                first = false;
                late = Some((Instant::now() + delay, g));
                let _ = report.send(Slow::FirstRequest);
            }
            Next::Message(Message::GetBlocks(g)) => {
                raw.send(&blocks(g)).await;
                prompt.fetch_add(1, Ordering::Relaxed);
            }
            Next::Message(Message::GetMempool) => {
                raw.send(&Message::Mempool(Vec::new())).await;
                prompt.fetch_add(1, Ordering::Relaxed);
            }
            Next::Message(Message::Ping(ping)) => pong(&mut raw, ping).await,
            Next::Message(Message::Pong(p)) if p.nonce == SYNC_PING => {
                let _ = report.send(Slow::LateHandled);
            }
            Next::Message(_) | Next::Quiet => {}
            Next::Closed => return,
        }
    }
}

/// The slow peer's next report.
async fn next_report(report: &mut mpsc::UnboundedReceiver<Slow>) -> Slow {
    tokio::time::timeout(WAIT, report.recv())
        .await
        .expect("timed out waiting for the slow peer")
        .expect("the slow peer ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reply_costs_one_timeout_and_sync_completes_from_another_peer() {
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
    let slow_delay = REQUEST_TIMEOUT.mul_f64(1.5);

    // The honest node: the only masternode, holding HONEST_BLOCKS blocks of
    // one payment each, in past 60 s slots.
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
    let cfg = config([127, 6, 6, 2]);
    let start_chain = Some(honest_chain.clone());
    let honest = Node::start(&masternode, cfg, start_chain).await.unwrap();
    let honest_height = honest_chain.tip().height;
    assert!(honest_height >= HONEST_BLOCKS);

    let victim_dir = tempfile::tempdir().unwrap();
    let (victim, victim_chain) = victim([127, 6, 6, 1], genesis.clone(), victim_dir.path(), |c| {
        c.connection.request_timeout = REQUEST_TIMEOUT;
    })
    .await;
    let mut events = victim.subscribe();

    // The slow peer connects first, so the victim's first sync request
    // goes to it.
    let raw = raw_chain_peer(
        &victim,
        &mut events,
        [127, 6, 6, 101],
        genesis.hash(),
        capabilities::FULL_NODE | capabilities::RELAY,
        SLOW_BLOCKS,
    )
    .await;
    let slow_id = raw.identity.node_id();
    let (report_tx, mut report) = mpsc::unbounded_channel();
    let prompt = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let slow_task = tokio::spawn(slow_peer(
        raw,
        honest_chain.clone(),
        slow_delay,
        report_tx,
        prompt.clone(),
        stop.clone(),
    ));
    assert!(matches!(next_report(&mut report).await, Slow::FirstRequest));
    let asked = Instant::now();

    // The honest node joins while the slow request is outstanding; sync
    // completes from it.
    victim.connect(&target(&honest)).await.unwrap();
    wait_until_within(
        "the victim syncs the honest chain",
        Duration::from_secs(30),
        || victim_chain.tip().height >= honest_height,
    )
    .await;
    assert!(matches!(next_report(&mut report).await, Slow::LateHandled));

    // The slow peer is still connected, and lost one Timeout: no more (a
    // second Timeout or a ProtocolViolation for the late answer), and no
    // less (the decay since, and the bonus of its prompt answers, are all
    // that may lift it).
    assert!(
        victim.peers().contains(&slow_id),
        "the slow peer was dropped"
    );
    let score = score_of(&victim, slow_id);
    let elapsed = asked.elapsed().as_secs_f64();
    let prompt = prompt.load(Ordering::Relaxed);
    let highest = TIMEOUT_PENALTY * 0.5f64.powf(elapsed / HALF_LIFE_SECS)
        + FAST_RESPONSE_BONUS * prompt as f64
        + 0.01;
    eprintln!("slow peer: score {score:.3} after {elapsed:.1} s and {prompt} prompt answers");
    assert!(
        score >= TIMEOUT_PENALTY - 1e-9,
        "the slow peer lost more than one Timeout: score {score}"
    );
    assert!(
        score <= highest,
        "the slow peer was not charged its Timeout: score {score} > {highest}"
    );
    while let Ok(event) = events.try_recv() {
        if let NetworkEvent::Disconnected { peer, error } = event {
            assert_ne!(
                peer.node_id, slow_id,
                "the slow peer was disconnected: {error}"
            );
        }
    }
    stop.cancel();
    slow_task.await.unwrap();
    victim.shutdown();
    honest.shutdown();
}

// ---------------------------------------------------------------------------
// 4. No requests a peer never offered.

/// What a raw peer read until its deadline: the kinds of every message,
/// and whether the node closed the connection; the session is handed back
/// open (unless the node closed it).
async fn serve_until(
    mut raw: RawSession,
    deadline: Instant,
    answer_requests: bool,
) -> (RawSession, Vec<&'static str>, bool) {
    let mut kinds = Vec::new();
    loop {
        match next_before(&mut raw, deadline).await {
            Next::Message(message) => {
                kinds.push(message.kind());
                match message {
                    Message::Ping(ping) => pong(&mut raw, ping).await,
                    Message::GetBlocks(_) if answer_requests => {
                        raw.send(&Message::Blocks(Blocks {
                            tip_height: 0,
                            blocks: Vec::new(),
                        }))
                        .await;
                    }
                    Message::GetMempool if answer_requests => {
                        raw.send(&Message::Mempool(Vec::new())).await;
                    }
                    _ => {}
                }
            }
            Next::Quiet => return (raw, kinds, false),
            Next::Closed => return (raw, kinds, true),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_serves_nothing_is_never_asked_and_never_charged() {
    let dir = tempfile::tempdir().unwrap();
    let masternode = NodeIdentity::generate();
    let genesis = Genesis::devnet(
        60,
        &[*masternode.public_key().as_bytes()],
        &[Wallet::generate().address()],
    )
    .unwrap();
    let (victim, _chain) = victim([127, 6, 7, 1], genesis.clone(), dir.path(), |_| {}).await;
    let mut events = victim.subscribe();

    // A light client: capabilities 0, best height 0. It is alone with the
    // victim for a whole sync interval, then shares it with a serving peer
    // for another.
    let light = raw_chain_peer(&victim, &mut events, [127, 6, 7, 101], genesis.hash(), 0, 0).await;
    let light_id = light.identity.node_id();
    let alone_until = Instant::now() + SYNC_INTERVAL + Duration::from_secs(1);
    let (light, mut light_kinds, alone_closed) = serve_until(light, alone_until, false).await;
    assert!(!alone_closed, "the light client was disconnected");

    // A serving peer with a higher height is asked at once: sync runs, and
    // picks among the peers that serve.
    let shared_until = Instant::now() + SYNC_INTERVAL;
    let light_task = tokio::spawn(serve_until(light, shared_until, false));
    let serving = raw_chain_peer(
        &victim,
        &mut events,
        [127, 6, 7, 102],
        genesis.hash(),
        capabilities::FULL_NODE | capabilities::RELAY,
        1,
    )
    .await;
    let serving_task = tokio::spawn(serve_until(serving, shared_until, true));

    let (_light, shared_kinds, light_closed) = light_task.await.unwrap();
    let (_serving, serving_kinds, _) = serving_task.await.unwrap();
    light_kinds.extend(shared_kinds);
    eprintln!("light client received {light_kinds:?}; serving peer {serving_kinds:?}");
    assert!(!light_closed, "the light client was disconnected");
    assert!(
        !light_kinds
            .iter()
            .any(|k| *k == "get_blocks" || *k == "get_mempool"),
        "the light client was asked for what it does not serve: {light_kinds:?}"
    );
    assert!(victim.peers().contains(&light_id));
    assert_eq!(score_of(&victim, light_id), 0.0);
    assert!(
        serving_kinds.contains(&"get_blocks"),
        "the serving peer was never asked: {serving_kinds:?}"
    );
    victim.shutdown();
}

// ---------------------------------------------------------------------------
// 5. Port 0 announces the real port.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listening_on_port_0_announces_the_port_it_got() {
    let mut cfg = config([127, 6, 5, 1]);
    assert_eq!(cfg.listen.port(), 0);
    cfg.handshake.version.listen_addr = Some(cfg.listen.into());
    let (server, _) = start(cfg).await;
    let bound = server.local_addr();
    assert_ne!(bound.port(), 0);

    let mut raw = RawSession::open([127, 6, 5, 101], bound, magic()).await;
    let version = VersionParams::new(Network::Devnet).build(raw.identity.node_id(), 0);
    raw.send(&Message::Version(version)).await;
    match raw.recv().await {
        Some(Message::Version(v)) => {
            assert_eq!(v.listen_addr, Some(PeerAddress::from(bound)));
        }
        other => panic!("expected the node's Version, got {other:?}"),
    }
    server.shutdown();
}

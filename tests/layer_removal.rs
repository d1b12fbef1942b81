//! Removing a layer from the `[[middleware]]` stack changes policy, never
//! bookkeeping or safety, over real loopback connections:
//!
//! * without `scoring`, request timeouts (an offence found outside the
//!   stack, by the connection task) are still recorded in the score book by
//!   the stack's judge, visible on the peer's context, and never disconnect
//!   or ban; with `scoring`, the same timeouts disconnect the peer;
//! * without `auth`, vote envelopes whose originator claims a masternode
//!   but whose signature is not that masternode's cannot make a pooled
//!   payment final: the vote handler verifies the envelope itself and the
//!   forger is charged `invalid_signature`, while genuine votes still
//!   finalize it.
//!
//! Addresses: 127.10.2.x (timeouts), 127.10.3.x (forged votes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use timed::app::Node;
use timed::chain::genesis::Genesis;
use timed::chain::votes::{Verdict, Vote};
use timed::chain::{Transaction, Txid, COIN, MIN_FEE};
use timed::crypto::{NodeId, NodeIdentity};
use timed::encoding::encode_value;
use timed::layers::stack::MiddlewareConfig;
use timed::network::{NetworkConfig, NetworkEvent};
use timed::params::Network;
use timed::peer::set::PeerHandle;
use timed::peer::{ClientError, ConnectionError, Request};
use timed::protocol::version::unix_now;
use timed::protocol::{DisconnectReason, Envelope, GossipKind, Message, Ping, Pong, VersionParams};
use timed::state::{Chain, ChainOptions, TxStatus};
use timed::wallet::Wallet;
use tokio::sync::broadcast;
use tower::ServiceExt;

/// Scoring defaults (src/layers/scoring.rs).
const TIMEOUT: f64 = -5.0;
const INVALID_SIGNATURE: f64 = -25.0;
const DISCONNECT_THRESHOLD: f64 = -20.0;

/// Request timeouts each test provokes: enough to pass the disconnect
/// threshold (5 × −5 = −25 ≤ −20).
const TIMEOUTS: usize = 5;

/// Short, so that the timeouts come quickly.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(200);

fn magic() -> [u8; 4] {
    Network::Devnet.magic()
}

fn now_ms() -> u64 {
    unix_now().as_millis() as u64
}

/// The default stack without the layer called `name`.
fn without(name: &str) -> Vec<MiddlewareConfig> {
    let stack: Vec<MiddlewareConfig> = MiddlewareConfig::default_stack()
        .into_iter()
        .filter(|c| c.name() != name)
        .collect();
    assert_eq!(
        stack.len() + 1,
        MiddlewareConfig::default_stack().len(),
        "{name} is not in the default stack"
    );
    stack
}

/// Waits until `peer` is connected.
async fn connected(events: &mut broadcast::Receiver<NetworkEvent>, peer: NodeId) {
    wait_for(events, |e| match e {
        NetworkEvent::Connected(info) if info.node_id == peer => Some(()),
        _ => None,
    })
    .await;
}

/// Waits until `peer` is disconnected; returns why.
async fn disconnected(
    events: &mut broadcast::Receiver<NetworkEvent>,
    peer: NodeId,
) -> Arc<ConnectionError> {
    wait_for(events, |e| match e {
        NetworkEvent::Disconnected { peer: info, error } if info.node_id == peer => {
            Some(error.clone())
        }
        _ => None,
    })
    .await
}

/// Pings and waits for the pong, answering the node's keepalive pings and
/// skipping whatever else arrives (the requests the session ignores).
async fn barrier(raw: &mut RawSession, nonce: u64) {
    raw.send(&Message::Ping(Ping {
        nonce,
        timestamp_ms: now_ms(),
    }))
    .await;
    loop {
        match raw.recv().await {
            Some(Message::Pong(p)) if p.nonce == nonce => return,
            Some(Message::Ping(p)) => {
                raw.send(&Message::Pong(Pong {
                    nonce: p.nonce,
                    timestamp_ms: now_ms(),
                }))
                .await
            }
            Some(Message::Disconnect(d)) => panic!("disconnected: {d:?}"),
            Some(_) => continue,
            None => panic!("the node closed the connection"),
        }
    }
}

// ----- request timeouts without `scoring` ----------------------------------

/// A network-only node on `ip` with `middleware` and a short request
/// timeout, and a raw peer from `peer_ip` that never answers a request.
async fn node_and_silent_peer(
    ip: [u8; 4],
    peer_ip: [u8; 4],
    middleware: Vec<MiddlewareConfig>,
) -> (
    Node,
    broadcast::Receiver<NetworkEvent>,
    RawSession,
    Arc<PeerHandle>,
) {
    let mut cfg: NetworkConfig = config(ip);
    cfg.middleware = middleware;
    cfg.connection.request_timeout = REQUEST_TIMEOUT;
    let (node, _) = start(cfg).await;
    let mut events = node.subscribe();
    let mut raw =
        RawSession::established_with(NodeIdentity::generate(), peer_ip, node.local_addr()).await;
    let id = raw.identity.node_id();
    connected(&mut events, id).await;
    // Answers the node's first keepalive ping, so that the connection's
    // liveness never depends on how long the test takes.
    barrier(&mut raw, 1).await;
    let handle = node
        .peers()
        .get(&id)
        .expect("the raw peer is in the peer set");
    (node, events, raw, handle)
}

/// Sends `TIMEOUTS` requests the silent peer never answers, one after the
/// other, through the peer's request client; each must time out.
async fn time_out_requests(handle: &PeerHandle) {
    for _ in 0..TIMEOUTS {
        let error = handle
            .client
            .clone()
            .oneshot(Request::GetPeers)
            .await
            .expect_err("the silent peer answered");
        assert_eq!(
            error.downcast_ref::<ClientError>(),
            Some(&ClientError::Timeout(REQUEST_TIMEOUT)),
            "{error}"
        );
    }
}

#[tokio::test]
async fn without_scoring_request_timeouts_are_recorded_and_never_disconnect() {
    let (node, mut events, mut raw, handle) =
        node_and_silent_peer([127, 10, 2, 1], [127, 10, 2, 101], without("scoring")).await;
    let judge = node.middleware().judge().clone();
    assert!(
        !judge.enforces(),
        "no scoring layer: the judge only records"
    );
    let id = raw.identity.node_id();
    let before = tokio::time::Instant::now();

    time_out_requests(&handle).await;

    // Every timeout was charged: the peer's score, on its context and in
    // the node-wide book, is TIMEOUTS × −5 (decayed a little since), which
    // is past the disconnect threshold.
    let half_life = node.score_half_life();
    let on_context = handle.context.score.value(half_life);
    let in_book = judge
        .book()
        .score(&id)
        .expect("the score book knows the peer");
    let elapsed = before.elapsed();
    let charged = TIMEOUTS as f64 * TIMEOUT;
    let least = charged * 0.5f64.powf(elapsed.as_secs_f64() / half_life.as_secs_f64());
    for score in [on_context, in_book] {
        assert!(
            (charged - 1e-9..=least + 1e-9).contains(&score),
            "score {score}: expected {charged} decayed over at most {elapsed:?}"
        );
    }
    assert!(on_context <= DISCONNECT_THRESHOLD);
    println!("score after {TIMEOUTS} request timeouts without scoring: {on_context:.3}");

    // ... and none of it was enforced: still connected and served, its IP
    // neither banned nor given a violation, no disconnect counted.
    barrier(&mut raw, 2).await;
    assert!(node.peers().contains(&id));
    assert!(!handle.context.disconnect.is_cancelled());
    let ip = IpAddr::V4(Ipv4Addr::new(127, 10, 2, 101));
    assert!(!node.blacklist().is_banned(ip));
    assert!(
        node.blacklist().record_violation(ip, "test").is_none(),
        "the timeouts gave the IP a violation"
    );
    assert_eq!(judge.counters().rejected("disconnected"), 0);
    assert_eq!(judge.counters().rejected("banned"), 0);
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, NetworkEvent::Disconnected { .. }),
            "{event:?}"
        );
    }
    node.shutdown();
}

/// The control: the same timeouts with `scoring` in the stack disconnect
/// the peer once its score reaches the threshold (at the fifth: four make
/// −20, which has decayed to just above the threshold by then).
#[tokio::test]
async fn with_scoring_the_same_request_timeouts_disconnect() {
    let (node, mut events, mut raw, handle) = node_and_silent_peer(
        [127, 10, 2, 2],
        [127, 10, 2, 102],
        MiddlewareConfig::default_stack(),
    )
    .await;
    assert!(node.middleware().judge().enforces());
    let id = raw.identity.node_id();
    time_out_requests(&handle).await;
    let error = disconnected(&mut events, id).await;
    assert!(
        matches!(
            *error,
            ConnectionError::Policy(DisconnectReason::ProtocolViolation)
        ),
        "{error:?}"
    );
    let received = raw.drain_until_closed().await;
    assert!(
        received.iter().any(|m| matches!(
            m,
            Message::Disconnect(d) if d.reason == DisconnectReason::ProtocolViolation
        )),
        "no Disconnect(ProtocolViolation) among {received:?}"
    );
    assert!(score_of(&node, id) <= DISCONNECT_THRESHOLD);
    assert!(!node.peers().contains(&id));
    node.shutdown();
}

// ----- forged votes without `auth` -----------------------------------------

/// A node without `auth` following a chain with two masternodes (keys held
/// by the test; the node is neither) and a funded wallet.
struct Victim {
    node: Node,
    chain: Chain,
    events: broadcast::Receiver<NetworkEvent>,
    masternodes: Vec<NodeIdentity>,
    wallet: Wallet,
    started: tokio::time::Instant,
    _dir: tempfile::TempDir,
}

impl Victim {
    async fn start() -> Self {
        let identity = NodeIdentity::generate();
        let mut masternodes = vec![NodeIdentity::generate(), NodeIdentity::generate()];
        masternodes.sort_by_key(|m| *m.public_key().as_bytes());
        let keys: Vec<[u8; 32]> = masternodes
            .iter()
            .map(|m| *m.public_key().as_bytes())
            .collect();
        let wallet = Wallet::generate();
        let genesis = Genesis::devnet(60, &keys, &[wallet.address()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let options = ChainOptions {
            masternode: false,
            ..ChainOptions::default()
        };
        let chain = Chain::open(dir.path(), genesis, &identity, options).unwrap();
        let mut cfg = config([127, 10, 3, 1]);
        cfg.middleware = without("auth");
        let started = tokio::time::Instant::now();
        let node = Node::start(&identity, cfg, Some(chain.clone()))
            .await
            .unwrap();
        assert!(
            node.middleware()
                .layers()
                .iter()
                .all(|l| l.name() != "auth"),
            "{}",
            node.middleware().describe()
        );
        let events = node.subscribe();
        Victim {
            node,
            chain,
            events,
            masternodes,
            wallet,
            started,
            _dir: dir,
        }
    }

    /// A raw session as a fresh identity from 127.10.3.`host`, through the
    /// version exchange with the victim's genesis.
    async fn peer(&mut self, host: u8) -> RawSession {
        let src = [127, 10, 3, host];
        let mut raw = RawSession::open(src, self.node.local_addr(), magic()).await;
        let mut params = VersionParams::new(Network::Devnet);
        params.genesis_hash = self.chain.genesis_hash();
        raw.send(&Message::Version(params.build(raw.identity.node_id(), 0)))
            .await;
        match raw.recv().await {
            Some(Message::Version(v)) => assert_eq!(v.genesis_hash, self.chain.genesis_hash()),
            other => panic!("expected the victim's Version, got {other:?}"),
        }
        connected(&mut self.events, raw.identity.node_id()).await;
        raw
    }

    /// A valid payment of the wallet's genesis output `index`.
    fn payment(&self, index: usize) -> Transaction {
        let spendable = self.chain.spendable(&self.wallet.address()).unwrap();
        self.wallet
            .build_payment(
                magic(),
                &spendable[index..=index],
                Wallet::generate().address(),
                COIN,
                MIN_FEE,
            )
            .unwrap()
    }

    /// Waits until the envelope with `id` was accepted by a handler.
    async fn delivered(&mut self, id: timed::protocol::MessageId) {
        wait_for(&mut self.events, |e| match e {
            NetworkEvent::Delivered { id: got, .. } if *got == id => Some(()),
            _ => None,
        })
        .await;
    }
}

fn vote(txid: Txid) -> Vec<u8> {
    encode_value(&Vote {
        txid,
        verdict: Verdict::Accept,
    })
    .unwrap()
}

/// Sends `envelope` from a fresh attacker on 127.10.3.`host` and expects
/// the vote handler to refuse it as a forgery: the attacker is charged
/// `invalid_signature` (−25) and disconnected.
async fn forged_vote_is_charged(v: &mut Victim, host: u8, envelope: Envelope) {
    let mut attacker = v.peer(host).await;
    let id = attacker.identity.node_id();
    attacker.send(&Message::Gossip(envelope)).await;
    let error = disconnected(&mut v.events, id).await;
    assert!(
        matches!(
            *error,
            ConnectionError::Policy(DisconnectReason::ProtocolViolation)
        ),
        "{error:?}"
    );
    assert_score_decayed(&v.node, id, INVALID_SIGNATURE, v.started);
    let received = attacker.drain_until_closed().await;
    assert!(
        received.iter().any(|m| matches!(
            m,
            Message::Disconnect(d) if d.reason == DisconnectReason::ProtocolViolation
        )),
        "no Disconnect(ProtocolViolation) among {received:?}"
    );
}

#[tokio::test]
async fn without_auth_forged_votes_cannot_finalize_a_payment() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let mut v = Victim::start().await;

    // A payment in the victim's pool, from an honest peer.
    let mut honest = v.peer(102).await;
    let tx = v.payment(0);
    let txid = tx.txid();
    let envelope = Envelope::sign(
        &honest.identity,
        magic(),
        GossipKind::Transaction,
        now_ms(),
        encode_value(&tx).unwrap(),
    );
    let id = envelope.id();
    honest.send(&Message::Gossip(envelope)).await;
    v.delivered(id).await;
    assert!(v.chain.mempool_txids().contains(&txid));

    // Accept votes claiming each masternode (together, 2 of 2: enough to
    // finalize), one signed by the attacker's own key, the other carrying
    // a signature of the right length that verifies for nobody.
    let (first, second) = (v.masternodes[0].clone(), v.masternodes[1].clone());
    let forger = NodeIdentity::generate();
    let mut by_other_key = Envelope::sign(&forger, magic(), GossipKind::Vote, now_ms(), vote(txid));
    by_other_key.originator = *first.public_key().as_bytes();
    forged_vote_is_charged(&mut v, 101, by_other_key).await;
    let mut garbage = Envelope::sign(&second, magic(), GossipKind::Vote, now_ms(), vote(txid));
    garbage.signature = [0x5a; 64];
    forged_vote_is_charged(&mut v, 103, garbage).await;

    // Neither vote counted: the payment is not final.
    let tally = v.chain.tally(&txid);
    assert_eq!((tally.accept, tally.voters), (0, 0), "{tally:?}");
    assert!(!tally.finalized);
    assert!(matches!(
        v.chain.transaction(&txid).unwrap(),
        Some(TxStatus::Pooled(_))
    ));
    println!("after the forged votes: {tally:?}");
    assert!(
        logs.text()
            .lines()
            .filter(|l| l.contains("forged envelope refused by the router"))
            .count()
            >= 2,
        "no `forged envelope refused by the router` lines in:\n{}",
        logs.text()
    );

    // The control: the same votes genuinely signed by the masternodes, from
    // the honest peer, make it final.
    for masternode in [&first, &second] {
        let envelope = Envelope::sign(masternode, magic(), GossipKind::Vote, now_ms(), vote(txid));
        let id = envelope.id();
        honest.send(&Message::Gossip(envelope)).await;
        v.delivered(id).await;
    }
    wait_until("the genuinely voted payment is final", || {
        v.chain.tally(&txid).finalized
    })
    .await;
    barrier(&mut honest, 9).await;
    assert!(v.node.peers().contains(&honest.identity.node_id()));
    v.node.shutdown();
}

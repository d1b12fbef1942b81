//! The middleware layers over real loopback TCP, one test per behaviour,
//! with the default stack (`blacklist -> scoring -> rate_limit -> dedup ->
//! auth`) and its default parameters unless a test says otherwise.
//!
//! Attackers are raw sessions ([`RawSession`]) that complete Noise and the
//! version exchange and then send crafted messages; honest peers are real
//! nodes. Each test uses its own 127.0.x.0/24, so the per-IP state (ban
//! list, accept rate, per-IP limits) of one test never touches another.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;
use timed::app::Node;
use timed::crypto::{NodeId, NodeIdentity};
use timed::layers::blacklist::BlacklistConfig;
use timed::layers::rate_limit::RateLimitConfig;
use timed::layers::stack::MiddlewareConfig;
use timed::network::{NetworkEvent, PeerTarget};
use timed::peer::{ConnectionError, ConnectionEvent};
use timed::protocol::codec::encode_message;
use timed::protocol::version::unix_now;
use timed::protocol::{DisconnectReason, Envelope, GossipKind, Message, MessageId, Ping};
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

const DEVNET: [u8; 4] = *b"TDEV";

/// How long to keep listening to prove something did not happen.
const QUIET: Duration = Duration::from_millis(500);

fn now_ms() -> u64 {
    unix_now().as_millis() as u64
}

fn ip(addr: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(addr))
}

/// Waits until `server` reports `peer` connected.
async fn connected(events: &mut broadcast::Receiver<NetworkEvent>, peer: NodeId) {
    wait_for(events, |e| match e {
        NetworkEvent::Connected(info) if info.node_id == peer => Some(()),
        _ => None,
    })
    .await;
}

/// Waits until `server` reports `peer` disconnected; returns the error.
/// Fails if a gossip delivery from `peer` is seen first.
async fn disconnected(
    events: &mut broadcast::Receiver<NetworkEvent>,
    peer: NodeId,
) -> std::sync::Arc<ConnectionError> {
    wait_for(events, |e| match e {
        NetworkEvent::Disconnected { peer: info, error } if info.node_id == peer => {
            Some(error.clone())
        }
        NetworkEvent::Delivered { id, from, .. } if *from == peer => {
            panic!("unexpected delivery of {id:?} from the attacker")
        }
        _ => None,
    })
    .await
}

/// Deliveries (of any id) still queued in `rx`, after `QUIET`.
async fn deliveries_after_quiet(rx: &mut broadcast::Receiver<NetworkEvent>) -> Vec<MessageId> {
    tokio::time::sleep(QUIET).await;
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(NetworkEvent::Delivered { id, .. }) => out.push(id),
            Ok(_) => {}
            Err(broadcast::error::TryRecvError::Lagged(n)) => panic!("missed {n} events"),
            Err(_) => return out,
        }
    }
}

/// Proves the ban list holds exactly one violation for `addr` and no ban:
/// with the default escalation (3rd violation bans), one more violation
/// bans nothing and the one after that bans. Mutates the ban list.
fn assert_one_violation(server: &Node, addr: IpAddr) {
    let list = server.blacklist();
    assert!(!list.is_banned(addr), "one violation must not ban");
    assert!(
        list.record_violation(addr, "test").is_none(),
        "more than one violation was already recorded"
    );
    assert!(
        list.record_violation(addr, "test").is_some(),
        "no violation was recorded for {addr}"
    );
}

#[tokio::test]
async fn an_envelope_altered_after_signing_is_refused_and_its_sender_disconnected() {
    let (server, _) = start(config([127, 0, 21, 1])).await;
    let mut events = server.subscribe();
    let attacker_ip = [127, 0, 21, 101];
    let blacklist = server.blacklist().clone();
    assert_eq!(blacklist.tracked(), 0);

    let mut raw =
        RawSession::established_with(NodeIdentity::generate(), attacker_ip, server.local_addr())
            .await;
    let attacker = raw.identity.node_id();
    connected(&mut events, attacker).await;
    // Before the penalty: bounds how long its score can have decayed.
    let before_penalty = tokio::time::Instant::now();

    // Signed over one payload, sent with another of the same length.
    let mut envelope = Envelope::sign(
        &raw.identity,
        DEVNET,
        GossipKind::Transaction,
        now_ms(),
        b"pay 1 TIME to alice".to_vec(),
    );
    envelope.payload = b"pay 9 TIME to mallo".to_vec();
    raw.send(&Message::Gossip(envelope)).await;

    // -25 for the invalid signature is below the -20 threshold: the server
    // closes the connection by policy ...
    let error = disconnected(&mut events, attacker).await;
    assert_eq!(error.kind(), "policy", "{error}");
    assert!(
        matches!(
            *error,
            ConnectionError::Policy(DisconnectReason::ProtocolViolation)
        ),
        "{error:?}"
    );
    // ... saying why, then closing the socket.
    let received = raw.drain_until_closed().await;
    assert!(
        received.iter().any(|m| matches!(
            m,
            Message::Disconnect(d) if d.reason == DisconnectReason::ProtocolViolation
        )),
        "no Disconnect(ProtocolViolation) among {received:?}"
    );

    // Refused by auth, never by dedup, never delivered.
    let auth = layer_counters(&server, "auth");
    assert_eq!(auth.rejected("bad_signature"), 1);
    assert_eq!(auth.accepted(), 0);
    assert_eq!(layer_counters(&server, "dedup").rejected("duplicate"), 0);
    assert!(deliveries_after_quiet(&mut events).await.is_empty());

    // The score fell by the invalid-signature penalty (decayed since) and
    // scoring acted.
    assert_score_decayed(&server, attacker, -25.0, before_penalty);
    assert_eq!(
        layer_counters(&server, "scoring").rejected("disconnected"),
        1
    );
    assert!(!server.peers().contains(&attacker));

    // One violation against the attacker's IP, and no ban yet.
    assert_eq!(blacklist.tracked(), 1);
    assert_one_violation(&server, ip(attacker_ip));

    assert_serves(&server, [127, 0, 21, 102]).await;
    server.shutdown();
}

#[tokio::test]
async fn a_replayed_envelope_is_delivered_once_and_a_stale_one_never() {
    let (server, _) = start(config([127, 0, 22, 1])).await;
    let mut events = server.subscribe();
    let mut raw = RawSession::established_with(
        NodeIdentity::generate(),
        [127, 0, 22, 101],
        server.local_addr(),
    )
    .await;
    let sender = raw.identity.node_id();
    connected(&mut events, sender).await;
    let before_reward = tokio::time::Instant::now();

    // The same valid envelope twice.
    let envelope = Envelope::sign(
        &raw.identity,
        DEVNET,
        GossipKind::Transaction,
        now_ms(),
        b"replayed transaction".to_vec(),
    );
    let id = envelope.id();
    raw.send(&Message::Gossip(envelope.clone())).await;
    raw.send(&Message::Gossip(envelope)).await;
    let from = wait_for(&mut events, |e| match e {
        NetworkEvent::Delivered { id: got, from, .. } if *got == id => Some(*from),
        _ => None,
    })
    .await;
    assert_eq!(from, sender);
    let dedup = layer_counters(&server, "dedup");
    let auth = layer_counters(&server, "auth");
    wait_until("dedup dropped the replay", || {
        dedup.rejected("duplicate") >= 1
    })
    .await;

    // A valid signature over a 20-minute-old timestamp: stale.
    let stale = Envelope::sign(
        &raw.identity,
        DEVNET,
        GossipKind::Transaction,
        now_ms() - 20 * 60 * 1000,
        b"old transaction".to_vec(),
    );
    let stale_id = stale.id();
    raw.send(&Message::Gossip(stale)).await;
    wait_until("auth refused the stale envelope", || {
        auth.rejected("stale") >= 1
    })
    .await;

    let later = deliveries_after_quiet(&mut events).await;
    assert!(!later.contains(&id), "the replay was delivered");
    assert!(
        !later.contains(&stale_id),
        "the stale envelope was delivered"
    );
    assert!(later.is_empty(), "{later:?}");
    assert_eq!(dedup.rejected("duplicate"), 1);
    assert_eq!(auth.rejected("stale"), 1);
    assert_eq!(auth.accepted(), 1, "only the first copy was verified");
    assert_eq!(auth.rejected("bad_signature"), 0);

    // Neither a duplicate nor a stale envelope is an offence: the sender
    // keeps its +1 for the first delivery and stays connected.
    assert_score_decayed(&server, sender, 1.0, before_reward);
    assert!(server.peers().contains(&sender));
    raw.send(&Message::Ping(Ping {
        nonce: 7,
        timestamp_ms: now_ms(),
    }))
    .await;
    loop {
        match raw.recv().await {
            Some(Message::Pong(p)) if p.nonce == 7 => break,
            Some(Message::Disconnect(d)) => panic!("disconnected: {d:?}"),
            Some(_) => continue,
            None => panic!("the server closed the connection"),
        }
    }
    server.shutdown();
}

/// Writes `count` pings as fast as the socket takes them; stops early when
/// the server has closed the connection.
async fn flood_pings(raw: &mut RawSession, count: usize) {
    let frame = encode_message(&Message::Ping(Ping {
        nonce: 1,
        timestamp_ms: now_ms(),
    }))
    .unwrap();
    for _ in 0..count {
        let bytes = raw.encode_frame(&frame);
        if raw.stream.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

/// Waits for the next keepalive pong on `honest`'s connection.
async fn next_pong(events: &mut broadcast::Receiver<NetworkEvent>) {
    wait_for(events, |e| match e {
        NetworkEvent::Connection(ConnectionEvent::Pong { .. }) => Some(()),
        NetworkEvent::Disconnected { error, .. } => {
            panic!("the honest peer was disconnected: {error}")
        }
        _ => None,
    })
    .await;
}

/// One flood session as `identity`: connect, flood, get disconnected by
/// policy. Returns the attacker's score after it.
async fn flood_session(
    server: &Node,
    events: &mut broadcast::Receiver<NetworkEvent>,
    identity: &NodeIdentity,
    src: [u8; 4],
) -> f64 {
    let mut raw = RawSession::established_with(identity.clone(), src, server.local_addr()).await;
    connected(events, identity.node_id()).await;
    flood_pings(&mut raw, 200).await;
    let error = disconnected(events, identity.node_id()).await;
    assert_eq!(error.kind(), "policy", "{error}");
    raw.drain_until_closed().await;
    score_of(server, identity.node_id())
}

#[tokio::test]
async fn a_ping_flood_is_rate_limited_then_disconnected_then_banned_while_honest_peers_carry_on() {
    let (server, _) = start(config([127, 0, 23, 1])).await;
    let mut events = server.subscribe();
    let rate_limit = layer_counters(&server, "rate_limit");
    let scoring = layer_counters(&server, "scoring");
    let blacklist = server.blacklist().clone();

    // An honest node on another IP pinging as often as the server's ping
    // budget lets it for as long as the test runs: one ping per 1.5 refill
    // periods of the budget (6 per 10 s: a ping every 2.5 s), so its bucket
    // never drains and none of its pings is throttled, however long the
    // floods below take on a busy machine.
    let ping_budget = RateLimitConfig::default().ping;
    let refill = Duration::from_secs(ping_budget.per_secs) / ping_budget.count;
    let mut honest_cfg = config([127, 0, 23, 2]);
    honest_cfg.connection.ping_interval = refill * 3 / 2;
    let (honest, _) = start(honest_cfg).await;
    let mut honest_events = honest.subscribe();
    honest
        .connect(&PeerTarget {
            addr: server.local_addr(),
            node_id: Some(server.node_id()),
        })
        .await
        .expect("the honest peer connects");
    next_pong(&mut honest_events).await;

    // Session 1: the per-peer ping bucket lets 6 through, the next 54 (up
    // to 10 times the budget) are dropped for free, every ping beyond that
    // costs -2, and at -20 the server closes the connection.
    let attacker_ip = [127, 0, 23, 101];
    let identity = NodeIdentity::generate();
    let attacker = identity.node_id();
    let mut raw =
        RawSession::established_with(identity.clone(), attacker_ip, server.local_addr()).await;
    connected(&mut events, attacker).await;
    let flood = tokio::spawn(async move {
        flood_pings(&mut raw, 200).await;
        raw
    });
    // Meanwhile the server gossips; the honest peer gets it.
    let gossip = server.publish(GossipKind::Transaction, b"during the flood".to_vec());
    let error = disconnected(&mut events, attacker).await;
    assert_eq!(error.kind(), "policy", "{error}");
    assert!(
        matches!(
            *error,
            ConnectionError::Policy(DisconnectReason::ProtocolViolation)
        ),
        "{error:?}"
    );
    let mut raw = flood.await.unwrap();
    raw.drain_until_closed().await;
    let dropped = rate_limit.rejected("peer_limit");
    let charged = rate_limit.rejected("abuse");
    // 54 dropped free (a token or two may refill during the flood); 10
    // charged pings reach -20 (11 when decay keeps the 10th a hair above).
    assert!((54..=58).contains(&dropped), "{dropped} pings dropped");
    assert!((10..=13).contains(&charged), "{charged} pings charged");
    assert_eq!(rate_limit.rejected("ip_limit"), 0);
    assert_eq!(scoring.rejected("disconnected"), 1);
    let after_first = score_of(&server, attacker);
    assert!(after_first <= -20.0, "score {after_first}");
    assert!(
        !blacklist.is_banned(ip(attacker_ip)),
        "one disconnect does not ban"
    );
    wait_for(&mut honest_events, |e| match e {
        NetworkEvent::Delivered { id, from, .. } if *id == gossip => Some(*from),
        _ => None,
    })
    .await;
    next_pong(&mut honest_events).await;

    // The flooder now rotates identities, so each session starts at score
    // 0 (the same-identity path is `a_flooder_reconnecting_with_the_same_
    // identity_is_banned_by_its_score`). Every disconnect is a violation of
    // its IP, and the ban list's escalation bans the IP at the third.
    let mut sessions = 1;
    while !blacklist.is_banned(ip(attacker_ip)) {
        assert!(
            sessions < 3,
            "still not banned after {sessions} flood sessions"
        );
        let fresh = NodeIdentity::generate();
        let score = flood_session(&server, &mut events, &fresh, attacker_ip).await;
        assert!(score <= -20.0, "score {score}");
        sessions += 1;
        next_pong(&mut honest_events).await;
    }
    assert_eq!(sessions, 3);
    let ban = blacklist.banned(ip(attacker_ip)).unwrap();
    assert_eq!(ban.reason, "escalation", "{ban:?}");
    assert_eq!(ban.until.remaining_secs().map(|s| s <= 300), Some(true));

    // A further connection from the banned IP is closed at accept, before
    // a single handshake byte: no Noise message 2.
    let mut stream = dial_from(attacker_ip, server.local_addr()).await;
    let (addr, reason) = wait_for(&mut events, |e| match e {
        NetworkEvent::Refused { addr, reason } => Some((*addr, *reason)),
        NetworkEvent::Connected(info) if info.node_id == attacker => {
            panic!("the banned attacker got through")
        }
        _ => None,
    })
    .await;
    assert_eq!(addr.ip(), ip(attacker_ip));
    assert_eq!(reason, "banned");
    assert_refused_silently(&mut stream).await;

    // The honest peer never noticed: still connected on both ends, still
    // getting pongs, never penalised.
    next_pong(&mut honest_events).await;
    assert!(server.peers().contains(&honest.node_id()));
    assert!(honest.peers().contains(&server.node_id()));
    assert!(score_of(&server, honest.node_id()) >= 0.0);
    assert!(!blacklist.is_banned(ip([127, 0, 23, 2])));
    // Within its budget, not one of its messages was throttled or refused.
    let honest_side = server.peers().get(&honest.node_id()).unwrap();
    assert_eq!(
        honest_side
            .context
            .stats
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    honest.shutdown();
    server.shutdown();
}

#[tokio::test]
async fn a_peer_reconnecting_below_the_threshold_is_refused_free_until_forgiven() {
    // The scoring contract (src/layers/scoring.rs, "# Security"): scores are
    // kept per node id, and a peer that comes back while its score is still
    // at or below the disconnect threshold is refused right after the
    // handshake, with a Disconnect whose detail says when to come back. The
    // refusal costs nothing: reconnecting is not misbehaviour, and the IP
    // it reconnects from is not banned for it.
    let (server, _) = start(config([127, 0, 26, 1])).await;
    let mut events = server.subscribe();
    let blacklist = server.blacklist().clone();
    let attacker_ip = [127, 0, 26, 101];
    let identity = NodeIdentity::generate();

    let first = flood_session(&server, &mut events, &identity, attacker_ip).await;
    assert!(first <= -20.0, "score {first}");
    assert!(!blacklist.is_banned(ip(attacker_ip)));

    for _ in 0..4 {
        let mut raw =
            RawSession::established_with(identity.clone(), attacker_ip, server.local_addr()).await;
        let error = disconnected(&mut events, identity.node_id()).await;
        assert_eq!(error.kind(), "policy", "{error}");
        let said = raw.drain_until_closed().await;
        let detail = said
            .iter()
            .find_map(|m| match m {
                Message::Disconnect(d) if d.reason == DisconnectReason::ProtocolViolation => {
                    Some(d.detail.clone())
                }
                _ => None,
            })
            .expect("refused with a Disconnect");
        assert!(detail.contains("retry in"), "{detail}");
        let score = score_of(&server, identity.node_id());
        assert!(
            (score - first).abs() < 0.1,
            "a refusal costs nothing: {score} after {first}"
        );
    }
    assert!(
        !blacklist.is_banned(ip(attacker_ip)),
        "reconnecting is no offence"
    );
    assert_eq!(layer_counters(&server, "scoring").rejected("refused"), 4);

    // The operator forgives (clearbanned does this): welcome back.
    assert_eq!(server.forgive_scores(|_| true), 1);
    let mut raw =
        RawSession::established_with(identity.clone(), attacker_ip, server.local_addr()).await;
    connected(&mut events, identity.node_id()).await;
    raw.send(&Message::Ping(Ping {
        nonce: 9,
        timestamp_ms: now_ms(),
    }))
    .await;
    // The server's own keepalive ping may come first.
    loop {
        match raw.recv().await {
            Some(Message::Pong(pong)) => {
                assert_eq!(pong.nonce, 9);
                break;
            }
            Some(Message::Ping(_)) => continue,
            other => panic!("expected our pong, got {other:?}"),
        }
    }
    server.shutdown();
}

#[tokio::test]
async fn a_configured_banned_subnet_is_refused_at_accept() {
    let mut cfg = config([127, 0, 25, 2]);
    cfg.middleware = MiddlewareConfig::default_stack()
        .into_iter()
        .map(|entry| match entry.get::<BlacklistConfig>() {
            Some(_) => MiddlewareConfig::new(BlacklistConfig {
                banned_subnets: vec!["127.0.24.0/24".parse().unwrap()],
                ..BlacklistConfig::default()
            }),
            None => entry,
        })
        .collect();
    let (server, _) = start(cfg).await;
    let mut events = server.subscribe();
    let banned = server
        .middleware()
        .blacklist()
        .banned(ip([127, 0, 24, 9]))
        .expect("the configured subnet is banned");
    assert_eq!(banned.reason, "config");
    assert_eq!(
        banned.until.remaining_secs(),
        None,
        "config bans are permanent"
    );

    // From inside the subnet: closed at accept, not a byte sent.
    let mut stream = dial_from([127, 0, 24, 9], server.local_addr()).await;
    let (addr, reason) = wait_for(&mut events, |e| match e {
        NetworkEvent::Refused { addr, reason } => Some((*addr, *reason)),
        NetworkEvent::Connected(_) | NetworkEvent::HandshakeFailed { .. } => {
            panic!("the banned address reached the handshake: {e:?}")
        }
        _ => None,
    })
    .await;
    assert_eq!(addr.ip(), ip([127, 0, 24, 9]));
    assert_eq!(reason, "banned");
    assert_refused_silently(&mut stream).await;

    // A real node inside the subnet cannot connect either.
    let (inside, _) = start(config([127, 0, 24, 10])).await;
    let target = PeerTarget {
        addr: server.local_addr(),
        node_id: Some(server.node_id()),
    };
    assert!(inside.connect(&target).await.is_err());
    inside.shutdown();

    // From outside it: a normal peer that gets pongs.
    assert_serves(&server, [127, 0, 25, 1]).await;
    assert!(!server
        .middleware()
        .blacklist()
        .is_banned(ip([127, 0, 25, 1])));
    server.shutdown();
}

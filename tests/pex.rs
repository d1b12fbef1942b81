#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Peer exchange under attack, over real loopback connections, each input
//! with its pinned outcome:
//!
//! * signed records announced with a bad signature, a timestamp from the
//!   far future or port 0 are refused and charged; unroutable addresses
//!   and our own address are dropped without a charge; a good record lands
//!   in the book under its node id;
//! * `GetPeers` 20 times on one connection gets exactly one answer, and
//!   the connection stays open;
//! * a `Peers` message nobody asked for is charged as a protocol violation;
//!   one of 10,000 records closes the connection at the codec;
//! * a `Peers` answer holding one forged record is dropped whole and its
//!   sender charged;
//! * the eclipse attempt: a peer answers `GetPeers` with 1,000 signed
//!   records from one netgroup; they stay within their bound of new
//!   buckets, and the victim never holds more than one outbound peer in
//!   that netgroup while it finds the honest ones.
//!
//! Addresses are on 127.13.x.y (netgroups of /24 where a test needs them).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use timed::app::Node;
use timed::constants::NEW_BUCKETS_PER_SOURCE_GROUP;
use timed::crypto::NodeIdentity;
use timed::network::address_book::{AddressBook, GroupBits};
use timed::network::{Application, Network, NetworkConfig, PeerTarget};
use timed::peer::{Inbound, Outcome};
use timed::protocol::message::PeerAddress;
use timed::protocol::record;
use timed::protocol::{Envelope, Message, Ping};
use tower::BoxError;

const MAGIC: [u8; 4] = *b"TDEV";

fn now_ms() -> u64 {
    timed::protocol::version::unix_now().as_millis() as u64
}

/// A node config on `ip` that announces its listen address, with
/// netgroups of /24 so 127.13.x.y addresses fall in distinct groups.
fn announcing(ip: [u8; 4]) -> NetworkConfig {
    let mut cfg = config(ip);
    cfg.handshake.version.listen_addr = Some(PeerAddress::from(SocketAddr::from((ip, 0))));
    cfg.address_book = Arc::new(std::sync::Mutex::new(AddressBook::new(
        rand::random(),
        GroupBits { v4: 24, v6: 32 },
    )));
    cfg
}

fn signed(identity: &NodeIdentity, addr: &str, timestamp_ms: u64) -> Envelope {
    record::sign(identity, MAGIC, &[addr.parse().unwrap()], 3, timestamp_ms)
}

fn in_book(node: &Node, addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().unwrap();
    node.address_book().lock().unwrap().get(&addr).is_some()
}

/// Sends a ping and reads until its pong, returning what came before it:
/// the node handles a connection's messages in order, so everything sent
/// before the ping has been handled.
async fn sync_point(session: &mut RawSession) -> Vec<Message> {
    session
        .send(&Message::Ping(Ping {
            nonce: 4242,
            timestamp_ms: 0,
        }))
        .await;
    let mut before = Vec::new();
    loop {
        match session.recv().await {
            Some(Message::Pong(p)) if p.nonce == 4242 => return before,
            Some(other) => before.push(other),
            None => panic!("the connection closed before the pong; got {before:?}"),
        }
    }
}

#[tokio::test]
async fn bad_records_are_refused_and_charged_and_useless_ones_dropped() {
    let (victim, _) = start(announcing([127, 13, 1, 1])).await;
    let to = victim.local_addr();
    let penalty = |offence: &str| -> f64 {
        match offence {
            "invalid_signature" => -25.0,
            _ => -10.0,
        }
    };
    // (what, record, charged offence)
    let other = NodeIdentity::generate();
    let mut forged = signed(&other, "127.13.1.60:24100", now_ms());
    forged.payload[10] ^= 1;
    let cases: Vec<(&str, Envelope, Option<&str>)> = vec![
        ("bad signature", forged, Some("invalid_signature")),
        (
            "future timestamp",
            signed(&other, "127.13.1.61:24100", now_ms() + 3 * 3600 * 1000),
            Some("malformed"),
        ),
        (
            "port 0",
            signed(&other, "127.13.1.62:0", now_ms()),
            Some("malformed"),
        ),
        (
            "unroutable",
            signed(&other, "240.0.0.1:24100", now_ms()),
            None,
        ),
        (
            "our own address",
            signed(&other, &to.to_string(), now_ms()),
            None,
        ),
    ];
    for (i, (what, envelope, offence)) in cases.into_iter().enumerate() {
        let identity = NodeIdentity::generate();
        let id = identity.node_id();
        let mut session =
            RawSession::established_with(identity, [127, 13, 1, 10 + i as u8], to).await;
        let before = tokio::time::Instant::now();
        session.send(&Message::Gossip(envelope.clone())).await;
        match offence {
            Some(offence) => {
                wait_until(&format!("{what} charged"), || score_of(&victim, id) < 0.0).await;
                assert_score_decayed(&victim, id, penalty(offence), before);
            }
            None => {
                sync_point(&mut session).await;
                assert_eq!(score_of(&victim, id), 0.0, "{what} was charged");
            }
        }
        let opened = record::open_verified(&envelope, now_ms() + 4 * 3600 * 1000);
        if let Ok(opened) = opened {
            for addr in opened.socket_addrs() {
                assert!(
                    !in_book(&victim, &addr.to_string()) || addr == to,
                    "{what}: {addr} in the book"
                );
            }
        }
        let book = victim.address_book().lock().unwrap();
        assert!(
            book.get(&to)
                .is_none_or(|a| a.node_id != Some(other.node_id())),
            "{what}: our address filed under another node"
        );
    }
    // A good record lands in the book under its node id, uncharged.
    let identity = NodeIdentity::generate();
    let id = identity.node_id();
    let mut session = RawSession::established_with(identity, [127, 13, 1, 30], to).await;
    session
        .send(&Message::Gossip(signed(
            &other,
            "127.13.1.63:24100",
            now_ms(),
        )))
        .await;
    sync_point(&mut session).await;
    let addr: SocketAddr = "127.13.1.63:24100".parse().unwrap();
    let entry = victim
        .address_book()
        .lock()
        .unwrap()
        .get(&addr)
        .cloned()
        .unwrap();
    assert_eq!(entry.node_id, Some(other.node_id()));
    assert!(entry.record.is_some());
    assert_eq!(score_of(&victim, id), 0.0);
    victim.shutdown();
}

#[tokio::test]
async fn get_peers_is_answered_once_per_connection() {
    let (victim, _) = start(announcing([127, 13, 2, 1])).await;
    let mut session = RawSession::established_with(
        NodeIdentity::generate(),
        [127, 13, 2, 2],
        victim.local_addr(),
    )
    .await;
    let id = session.identity.node_id();
    for _ in 0..20 {
        session.send(&Message::GetPeers).await;
    }
    let got = sync_point(&mut session).await;
    let answers: Vec<&Vec<Envelope>> = got
        .iter()
        .filter_map(|m| match m {
            Message::Peers(records) => Some(records),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 1, "{got:?}");
    // The answer holds the victim's own record.
    let own = record::open(answers[0].last().unwrap(), MAGIC, now_ms()).unwrap();
    assert_eq!(own.node_id, victim.node_id());
    assert!(score_of(&victim, id) >= 0.0);
    assert!(victim.peers().contains(&id), "the connection stays open");
    victim.shutdown();
}

#[tokio::test]
async fn unsolicited_and_oversized_peers_messages() {
    let (victim, _) = start(announcing([127, 13, 3, 1])).await;
    let to = victim.local_addr();
    // Unsolicited: a protocol violation.
    let mut session =
        RawSession::established_with(NodeIdentity::generate(), [127, 13, 3, 2], to).await;
    let id = session.identity.node_id();
    let before = tokio::time::Instant::now();
    let one = signed(&NodeIdentity::generate(), "127.13.3.50:24100", now_ms());
    session.send(&Message::Peers(vec![one.clone()])).await;
    wait_until("unsolicited Peers charged", || score_of(&victim, id) < 0.0).await;
    assert_score_decayed(&victim, id, -10.0, before);
    assert!(!in_book(&victim, "127.13.3.50:24100"));

    // 10,000 records: refused by the codec, the connection closes.
    let mut session =
        RawSession::established_with(NodeIdentity::generate(), [127, 13, 3, 3], to).await;
    let record = timed::protocol::codec::encode_envelope(&one);
    let mut frame = Vec::with_capacity(12 + record.len() * 10_000);
    frame.extend_from_slice(&6u32.to_le_bytes());
    frame.extend_from_slice(&10_000u64.to_le_bytes());
    for _ in 0..10_000 {
        frame.extend_from_slice(&record);
    }
    session.send_frame(&frame).await;
    session.drain_until_closed().await;
    assert!(!in_book(&victim, "127.13.3.50:24100"));
    // The node still serves others.
    assert_serves(&victim, [127, 13, 3, 4]).await;
    victim.shutdown();
}

/// A network whose only service answers `GetPeers` with `records`.
async fn responder(ip: [u8; 4], records: Vec<Envelope>) -> (Network, NodeIdentity) {
    let identity = NodeIdentity::generate();
    let mut cfg = config(ip);
    cfg.limits.target_outbound = 0;
    let records = Arc::new(records);
    let network = Network::start(&identity, cfg, move |_| Application {
        inbound: tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Inbound| {
            let records = records.clone();
            async move {
                Ok::<_, BoxError>(match &*req.message {
                    Message::GetPeers => Outcome::Reply(Message::Peers((*records).clone())),
                    _ => Outcome::Handled,
                })
            }
        })),
        observer: None,
    })
    .await
    .unwrap();
    (network, identity)
}

#[tokio::test]
async fn a_peers_answer_with_one_forged_record_is_dropped_whole() {
    let mut records: Vec<Envelope> = (0..20)
        .map(|i| {
            signed(
                &NodeIdentity::generate(),
                &format!("127.13.4.{}:24100", 50 + i),
                now_ms(),
            )
        })
        .collect();
    records[7].signature[3] ^= 1;
    let (liar, liar_id) = responder([127, 13, 4, 2], records).await;
    let mut cfg = announcing([127, 13, 4, 1]);
    cfg.limits.target_outbound = 0;
    cfg.peers = vec![PeerTarget {
        addr: liar.local_addr(),
        node_id: Some(liar_id.node_id()),
    }];
    let (victim, _) = start(cfg).await;
    wait_until("the liar is charged", || {
        score_of(&victim, liar_id.node_id()) < 0.0
    })
    .await;
    for i in 0..20 {
        assert!(!in_book(&victim, &format!("127.13.4.{}:24100", 50 + i)));
    }
    victim.shutdown();
    liar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eclipse_attempt_from_one_netgroup_stays_bounded() {
    // The attacker's 1,000 records all name addresses in 127.13.50.0/24;
    // eight of those addresses really run attacker nodes.
    let mut attackers = Vec::new();
    for last in 2..=9u8 {
        attackers.push(start(announcing([127, 13, 50, last])).await);
    }
    let mut records: Vec<Envelope> = attackers
        .iter()
        .map(|(node, id)| record::sign(id, MAGIC, &[node.local_addr()], 3, now_ms()))
        .collect();
    for i in 0..(1_000 - records.len()) {
        let addr = format!("127.13.50.{}:{}", 10 + i % 240, 20_000 + i);
        records.push(signed(&NodeIdentity::generate(), &addr, now_ms()));
    }
    let (source, source_id) = responder([127, 13, 51, 1], records).await;
    let mut cfg = announcing([127, 13, 52, 1]);
    cfg.peers = vec![PeerTarget {
        addr: source.local_addr(),
        node_id: Some(source_id.node_id()),
    }];
    let (victim, _) = start(cfg).await;
    let in_attacker_group = |addr: &SocketAddr| match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.octets()[..3] == [127, 13, 50],
        _ => false,
    };
    let outbound = || -> Vec<SocketAddr> {
        victim
            .peers()
            .snapshot()
            .iter()
            .filter(|h| h.info.direction == timed::peer::Direction::Outbound)
            .map(|h| h.info.addr)
            .collect()
    };
    let attempts_in_group = || -> usize {
        let book = victim.address_book().lock().unwrap();
        book.sample_addresses(book.len(), &mut rand::thread_rng())
            .iter()
            .filter(|a| in_attacker_group(&a.addr) && a.last_try > 0)
            .count()
    };
    let mut most_from_attacker = 0;
    let mut check = |out: &[SocketAddr]| {
        let n = out.iter().filter(|a| in_attacker_group(a)).count();
        most_from_attacker = most_from_attacker.max(n);
        assert!(
            n <= 1,
            "two outbound peers in the attacker's netgroup: {out:?}"
        );
    };
    // While the book holds nothing but the flood, the victim dials into
    // the attacker's netgroup, one dial at a time; once a dial connects,
    // that netgroup is closed to further outbound connections.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let out = outbound();
        check(&out);
        let connected = out.iter().any(in_attacker_group);
        if connected || attempts_in_group() >= 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the victim did not dial the flood: {out:?}, {} attempts",
            attempts_in_group()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Then it learns three honest nodes in other netgroups and reaches all.
    let mut honest = Vec::new();
    for group in 60..63u8 {
        honest.push(start(announcing([127, 13, group, 1])).await);
    }
    {
        let mut book = victim.address_book().lock().unwrap();
        for (node, identity) in &honest {
            let envelope = record::sign(identity, MAGIC, &[node.local_addr()], 3, now_ms());
            let opened = record::open(&envelope, MAGIC, now_ms()).unwrap();
            book.add_record(
                &opened,
                &envelope,
                "127.13.70.1".parse().unwrap(),
                now_ms() / 1000,
                |_| true,
            );
        }
    }
    let honest_addrs: Vec<SocketAddr> = honest.iter().map(|(n, _)| n.local_addr()).collect();
    loop {
        let out = outbound();
        check(&out);
        if honest_addrs.iter().all(|h| out.contains(h)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the victim did not reach every honest node: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let book = victim.address_book().lock().unwrap();
    let source_group = book.netgroup(source.local_addr().ip());
    let buckets = book.new_buckets_of_source(&source_group).len();
    let flood = book
        .sample_addresses(book.len(), &mut rand::thread_rng())
        .iter()
        .filter(|a| in_attacker_group(&a.addr))
        .count();
    eprintln!(
        "eclipse: of 1,000 records the book kept {flood}, in {buckets} new bucket(s) (bound {NEW_BUCKETS_PER_SOURCE_GROUP}); {} dials into the attacker's netgroup, at most {most_from_attacker} outbound peer there at once",
        attempts_in_group_count(&book, &in_attacker_group)
    );
    assert!(buckets <= NEW_BUCKETS_PER_SOURCE_GROUP as usize);
    drop(book);
    victim.shutdown();
    source.shutdown();
}

fn attempts_in_group_count(book: &AddressBook, group: &impl Fn(&SocketAddr) -> bool) -> usize {
    book.sample_addresses(book.len(), &mut rand::thread_rng())
        .iter()
        .filter(|a| group(&a.addr) && a.last_try > 0)
        .count()
}

#[tokio::test]
async fn a_feeler_moves_an_address_to_tried_and_closes() {
    let (other, other_id) = start(announcing([127, 13, 80, 2])).await;
    let mut cfg = announcing([127, 13, 80, 1]);
    cfg.limits.target_outbound = 0;
    let (node, _) = start(cfg).await;
    let addr = other.local_addr();
    let mut events = node.subscribe();
    node.address_book().lock().unwrap().add(
        addr,
        Some(other_id.node_id()),
        0,
        addr.ip(),
        now_ms() / 1000,
    );
    assert!(
        !node
            .address_book()
            .lock()
            .unwrap()
            .get(&addr)
            .unwrap()
            .tried
    );
    node.feel(PeerTarget {
        addr,
        node_id: Some(other_id.node_id()),
    });
    wait_for(&mut events, |e| match e {
        timed::network::NetworkEvent::Disconnected { peer, .. } if peer.addr == addr => Some(()),
        _ => None,
    })
    .await;
    let entry = node
        .address_book()
        .lock()
        .unwrap()
        .get(&addr)
        .cloned()
        .unwrap();
    assert!(entry.tried, "{entry:?}");
    assert_eq!(entry.quality.successes, 1);
    assert!(node.peers().is_empty());
    node.shutdown();
    other.shutdown();
}

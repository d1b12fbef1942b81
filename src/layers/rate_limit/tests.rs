//! Unit tests of [`super`].

use super::*;
use crate::layers::test_support::{inbound, peer, CountingHandler};
use crate::protocol::Ping;
use std::sync::atomic::Ordering;
use tower::ServiceExt;

fn ping() -> Message {
    Message::Ping(Ping {
        nonce: 1,
        timestamp_ms: 0,
    })
}

fn layer(config: &RateLimitConfig) -> RateLimitLayer {
    RateLimitLayer::new(config, GossipScale::default())
}

#[tokio::test(start_paused = true)]
async fn excess_pings_are_dropped_free_then_charged_far_beyond_the_budget() {
    let layer = layer(&RateLimitConfig::default());
    let handler = CountingHandler::default();
    let mut svc = layer.layer(handler.clone());
    let p = peer([127, 0, 0, 1]);
    let (mut dropped, mut charged) = (0, 0);
    for _ in 0..70 {
        if let Err(e) = svc.ready().await.unwrap().call(inbound(&p, ping())).await {
            match Rejection::find(&e).unwrap() {
                Rejection {
                    reason: "peer_limit",
                    offence: None,
                    ..
                } => dropped += 1,
                Rejection {
                    reason: "abuse",
                    offence: Some(Offence::RateLimitExceeded),
                    ..
                } => charged += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    // 6 per 10 s pass; up to 10 times that is dropped without a charge;
    // the rest is charged.
    assert_eq!(handler.0.load(Ordering::Relaxed), 6);
    assert_eq!(dropped, 54);
    assert_eq!(charged, 10);
    // Other kinds have their own buckets.
    svc.ready()
        .await
        .unwrap()
        .call(inbound(&p, Message::GetPeers))
        .await
        .unwrap();
    // A second connection from another IP has fresh buckets.
    let mut other = layer.layer(handler.clone());
    other
        .call(inbound(&peer([127, 0, 0, 2]), ping()))
        .await
        .unwrap();
    assert_eq!(layer.counters().rejected("peer_limit"), 54);
    assert_eq!(layer.counters().rejected("abuse"), 10);
}

#[tokio::test(start_paused = true)]
async fn a_burst_beyond_a_fast_budget_is_delayed_not_dropped() {
    let config = RateLimitConfig {
        block: KindLimit::new(10, 1),
        ..RateLimitConfig::default()
    };
    let layer = layer(&config);
    let handler = CountingHandler::default();
    let mut svc = layer.layer(handler.clone());
    let p = peer([127, 0, 0, 3]);
    let block = || {
        let id = crate::crypto::NodeIdentity::from_secret_bytes(&[3; 32]);
        Message::Gossip(crate::protocol::Envelope::sign(
            &id,
            *b"TDEV",
            GossipKind::Block,
            1,
            vec![1],
        ))
    };
    let started = tokio::time::Instant::now();
    for _ in 0..40 {
        svc.ready()
            .await
            .unwrap()
            .call(inbound(&p, block()))
            .await
            .expect("delayed, never refused");
    }
    assert_eq!(handler.0.load(Ordering::Relaxed), 40);
    // 10 at once, then one per 100 ms: the burst was spread, not lost.
    let spread = started.elapsed();
    assert!(
        spread >= Duration::from_millis(2_900),
        "{spread:?}: the excess waited for its tokens"
    );
    assert_eq!(layer.counters().rejected("peer_limit"), 0);
}

#[tokio::test(start_paused = true)]
async fn connections_from_one_ip_share_the_per_ip_budget() {
    let config = RateLimitConfig {
        per_ip: Some(KindLimit::new(10, 60)),
        ..RateLimitConfig::default()
    };
    let layer = layer(&config);
    let handler = CountingHandler::default();
    // Five connections from one IPv4 address, 3 messages each.
    let mut ok = 0;
    for _ in 0..5 {
        let mut svc = layer.layer(handler.clone());
        let p = peer([127, 0, 0, 4]);
        for _ in 0..3 {
            if svc.call(inbound(&p, Message::GetPeers)).await.is_ok() {
                ok += 1;
            }
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(layer.counters().rejected("ip_limit"), 5);
    assert_eq!(layer.tracked_ips(), 1);
}

#[test]
fn gossip_budgets_scale_with_the_network() {
    let config = RateLimitConfig::default();
    let small = GossipScale {
        masternodes: 3,
        mempool_max_txs: 5_000,
    };
    let tx = config.tx_limit(&small);
    assert_eq!((tx.count, tx.burst()), (GOSSIP_TX_RATE, 5_000));
    let vote = config.vote_limit(&small);
    assert_eq!((vote.count, vote.burst()), (3 * GOSSIP_TX_RATE, 15_000));
    let big = GossipScale {
        masternodes: 200,
        mempool_max_txs: 5_000,
    };
    assert_eq!(config.vote_limit(&big).count, 200 * GOSSIP_TX_RATE);
    // The per-IP default covers one peer using every budget at once.
    let per_ip = config.per_ip_limit(&big);
    assert!(per_ip.count > 201 * GOSSIP_TX_RATE);
    // An explicit budget wins.
    let fixed = RateLimitConfig {
        vote: Some(KindLimit::new(7, 1)),
        ..RateLimitConfig::default()
    };
    assert_eq!(fixed.vote_limit(&big).count, 7);
}

#[test]
fn zero_limits_are_config_errors() {
    let config = RateLimitConfig {
        vote: Some(KindLimit::new(0, 1)),
        ..RateLimitConfig::default()
    };
    assert!(config.validate().unwrap_err().contains("vote"));
    let config = RateLimitConfig {
        abuse_factor: 0,
        ..RateLimitConfig::default()
    };
    assert!(config.validate().unwrap_err().contains("abuse_factor"));
    assert!(RateLimitConfig::default().validate().is_ok());
}

#[test]
fn a_huge_budget_stays_huge_after_the_abuse_factor() {
    // 10^9 per second times the abuse factor saturates at u32::MAX per
    // second: a 0 ns period, which once fell back to one message per
    // second.
    let huge = KindLimit {
        count: 1_000_000_000,
        per_secs: 1,
        burst: None,
    };
    for limit in [huge, huge.scaled(GOSSIP_ABUSE_FACTOR)] {
        let quota = limit.quota().expect("a quota");
        assert!(quota.burst_size().get() >= 1_000_000_000, "{limit:?}");
        assert!(
            quota.replenish_interval() <= Duration::from_nanos(1),
            "{limit:?}"
        );
    }
}

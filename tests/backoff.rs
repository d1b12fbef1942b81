//! Redial backoff, observed on a real node with paused tokio time: a
//! configured peer that is down is redialled after 5 s, 10 s, 20 s, ...
//! up to 300 s, each delay within the documented jitter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::config;
use timed::app::Node;
use timed::network::{NetworkEvent, PeerTarget, REDIAL_JITTER};
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn a_down_peer_is_redialled_on_the_documented_schedule() {
    // A port with nothing listening (bound, then released).
    let dead = TcpListener::bind("127.0.30.2:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = config([127, 0, 30, 1]);
    cfg.peers = vec![PeerTarget {
        addr: dead,
        node_id: None,
    }];
    let identity = timed::crypto::NodeIdentity::generate();
    let node = Node::start(&identity, cfg, None).await.unwrap();
    let mut events = node.subscribe();

    let mut expected_base = 5.0f64;
    let mut last_retry: Option<(Instant, Duration)> = None;
    let mut attempts = 0;
    // Nine rounds reach the 300 s cap (5, 10, ..., 160, 300, 300).
    while attempts < 9 {
        let event = tokio::time::timeout(Duration::from_secs(3600), events.recv())
            .await
            .expect("no dial event within an hour of virtual time")
            .unwrap();
        match event {
            NetworkEvent::DialAttempt { target } => {
                assert_eq!(target.addr, dead);
                if let Some((at, delay)) = last_retry.take() {
                    let waited = at.elapsed();
                    assert!(
                        waited >= delay && waited < delay + Duration::from_millis(50),
                        "redialled after {waited:?}, announced {delay:?}"
                    );
                }
                attempts += 1;
            }
            NetworkEvent::DialRetry { retry_in, .. } => {
                let secs = retry_in.as_secs_f64();
                assert!(
                    secs >= expected_base * REDIAL_JITTER.0 - 1e-6
                        && secs < expected_base * REDIAL_JITTER.1,
                    "delay {secs} s outside the jitter band around {expected_base} s"
                );
                expected_base = (expected_base * 2.0).min(300.0);
                last_retry = Some((Instant::now(), retry_in));
            }
            _ => {}
        }
    }
    node.shutdown();
}

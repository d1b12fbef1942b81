//! Unit tests of [`super`].

use super::*;
use crate::crypto::NodeIdentity;
use crate::peer::client::ClientRequest;
use crate::peer::set::tests::{handle, ids};
use crate::peer::Direction;
use futures::task::ArcWake;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;

/// A peer in `set`, its node id and the connection's end of its
/// request channel.
fn admit(set: &PeerSet, conn_id: u64) -> (NodeId, Arc<PeerHandle>, mpsc::Receiver<ClientRequest>) {
    let (local, _) = ids();
    let id = NodeIdentity::generate().node_id();
    let (peer, rx) = handle(local, id, Direction::Outbound, conn_id);
    set.admit(peer.clone());
    (id, peer, rx)
}

fn new_set() -> Arc<PeerSet> {
    Arc::new(PeerSet::new(NodeIdentity::generate().node_id()))
}

/// Answers every request at once, reporting each on `seen`.
fn answering(
    id: NodeId,
    mut rx: mpsc::Receiver<ClientRequest>,
    seen: mpsc::UnboundedSender<NodeId>,
) {
    tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            let _ = seen.send(id);
            let _ = r.reply.send(Ok(Response::Pong(Duration::ZERO)));
        }
    });
}

/// Keeps every request open (never answers), reporting each on `seen`.
fn silent(id: NodeId, mut rx: mpsc::Receiver<ClientRequest>, seen: mpsc::UnboundedSender<NodeId>) {
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(r) = rx.recv().await {
            let _ = seen.send(id);
            held.push(r);
        }
    });
}

#[derive(Default)]
struct Woken(AtomicBool);

impl ArcWake for Woken {
    fn wake_by_ref(me: &Arc<Self>) {
        me.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn poll_ready_is_pending_on_an_empty_set_until_a_peer_is_admitted() {
    let set = new_set();
    let mut svc = set.service(0);
    let woken = Arc::new(Woken::default());
    let waker = futures::task::waker(woken.clone());
    let mut cx = Context::from_waker(&waker);
    assert!(svc.poll_ready(&mut cx).is_pending());
    assert!(svc.poll_ready(&mut cx).is_pending());
    assert!(!woken.0.load(Ordering::SeqCst));

    let (id, _peer, rx) = admit(&set, 1);
    assert!(
        woken.0.load(Ordering::SeqCst),
        "the admission wakes the waiting caller"
    );
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    answering(id, rx, seen_tx);
    let answer = svc.call(PeerRequest::new(Request::Ping)).await.unwrap();
    assert_eq!(answer.peer.info.node_id, id);
    assert_eq!(answer.response, Response::Pong(Duration::ZERO));
    assert_eq!(seen.recv().await, Some(id));
}

#[tokio::test]
async fn load_steers_requests_away_from_a_peer_with_requests_in_flight() {
    let set = new_set();
    let (fast, _f, fast_rx) = admit(&set, 1);
    let (slow, _s, slow_rx) = admit(&set, 2);
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    answering(fast, fast_rx, seen_tx.clone());
    silent(slow, slow_rx, seen_tx);
    let mut svc = set.service(0);
    let mut in_flight = Vec::new();
    let (mut to_fast, mut to_slow) = (0, 0);
    for _ in 0..100 {
        let answer = tokio::spawn(
            svc.ready()
                .await
                .unwrap()
                .call(PeerRequest::new(Request::Ping)),
        );
        // Wait until the request reached a peer; a fast answer is
        // awaited, so its peer has nothing in flight at the next pick.
        if seen.recv().await == Some(fast) {
            to_fast += 1;
            assert_eq!(answer.await.unwrap().unwrap().peer.info.node_id, fast);
        } else {
            to_slow += 1;
            in_flight.push(answer);
        }
    }
    assert!(
        to_fast >= 95,
        "fast peer got {to_fast}, slow peer {to_slow} of 100"
    );
}

#[tokio::test]
async fn a_failed_request_is_retried_on_another_peer_and_never_sent_to_the_failed_one_again() {
    let set = new_set();
    let (failing, _a, mut failing_rx) = admit(&set, 1);
    let svc = set.service(0);
    let request = tokio::spawn(svc.oneshot(PeerRequest::new(Request::GetMempool)));
    // The only peer gets the request; another joins before it fails.
    let first = failing_rx.recv().await.unwrap();
    assert_eq!(first.request, Request::GetMempool);
    let (good, _b, good_rx) = admit(&set, 2);
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    answering(good, good_rx, seen_tx);
    first
        .reply
        .send(Err(ClientError::Timeout(Duration::from_secs(20))))
        .unwrap();

    let answer = request.await.unwrap().unwrap();
    assert_eq!(answer.peer.info.node_id, good);
    assert!(answer.excluded.contains(&failing));
    assert_eq!(seen.recv().await, Some(good));
    assert!(
        failing_rx.try_recv().is_err(),
        "the failed peer was asked again"
    );
    assert!(seen.try_recv().is_err(), "the good peer was asked twice");

    // With every peer excluded, the request fails at once.
    let error = set
        .service(0)
        .oneshot(PeerRequest::new(Request::Ping).excluding([failing, good]))
        .await
        .unwrap_err();
    assert_eq!(
        error.downcast_ref::<PeerSetError>(),
        Some(&PeerSetError::NoPeers)
    );
    assert!(failing_rx.try_recv().is_err());
}

#[tokio::test]
async fn a_removed_peer_is_never_picked_again() {
    let set = new_set();
    let (gone, gone_peer, gone_rx) = admit(&set, 1);
    let (stays, _s, stays_rx) = admit(&set, 2);
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    answering(gone, gone_rx, seen_tx.clone());
    answering(stays, stays_rx, seen_tx);
    let mut svc = set.service(0);
    // The balancer holds both, and sends to either.
    let mut asked = HashSet::new();
    while asked.len() < 2 {
        let answer = svc
            .ready()
            .await
            .unwrap()
            .call(PeerRequest::new(Request::Ping))
            .await
            .unwrap();
        asked.insert(answer.peer.info.node_id);
        assert_eq!(seen.recv().await, Some(answer.peer.info.node_id));
    }
    set.remove(gone, gone_peer.context.conn_id);
    for _ in 0..100 {
        let answer = svc
            .ready()
            .await
            .unwrap()
            .call(PeerRequest::new(Request::Ping))
            .await
            .unwrap();
        assert_eq!(answer.peer.info.node_id, stays);
        assert_eq!(seen.recv().await, Some(stays), "the removed peer was asked");
    }
}

#[test]
fn a_flapping_peer_leaves_one_change_in_the_discovery_stream() {
    let set = new_set();
    let discover = set.discover(0);
    let (local, _) = ids();
    let id = NodeIdentity::generate().node_id();
    let mut receivers = Vec::new();
    for conn_id in 0..1_000 {
        let (peer, rx) = handle(local, id, Direction::Outbound, conn_id);
        set.admit(peer);
        receivers.push(rx);
        if conn_id % 2 == 1 {
            set.remove(id, conn_id);
        }
    }
    assert_eq!(crate::locks::lock(&discover.feed.state).pending.len(), 0);
    let (peer, _rx) = handle(local, id, Direction::Outbound, 5_000);
    set.admit(peer);
    set.remove(id, 5_000);
    set.admit(handle(local, id, Direction::Outbound, 5_001).0);
    assert_eq!(crate::locks::lock(&discover.feed.state).pending.len(), 1);
}

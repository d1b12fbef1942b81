//! Unit tests of [`super`].

use super::*;
use crate::layers::blacklist::BlacklistConfig;
use crate::layers::test_support::{inbound, peer};
use crate::protocol::Message;

#[derive(Clone)]
struct Fixed(Result<Outcome, Rejection>);
impl Service<Inbound> for Fixed {
    type Response = Outcome;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Outcome, BoxError>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Inbound) -> Self::Future {
        std::future::ready(self.0.clone().map_err(Into::into))
    }
}

fn layer() -> (ScoringLayer, Arc<Blacklist>) {
    let list = Arc::new(Blacklist::new(&BlacklistConfig::default()));
    (
        ScoringLayer::new(&ScoringConfig::default(), list.clone()),
        list,
    )
}

#[tokio::test(start_paused = true)]
async fn offences_disconnect_then_ban() {
    let (layer, list) = layer();
    let p = peer([127, 0, 0, 7]);
    let mut svc = layer.layer(Fixed(Err(Rejection::offence(
        "rate_limit",
        "exceeded",
        Offence::RateLimitExceeded,
    ))));
    for _ in 0..9 {
        let _ = svc.call(inbound(&p, Message::GetPeers)).await;
    }
    assert!(!p.disconnect.is_cancelled(), "-18 is above -20");
    let _ = svc.call(inbound(&p, Message::GetPeers)).await;
    assert!(p.disconnect.is_cancelled(), "-20 disconnects");
    assert!(!list.is_banned(p.ip()));
    // Still flooding (messages already in flight): down to -50 and banned.
    for _ in 0..15 {
        let _ = svc.call(inbound(&p, Message::GetPeers)).await;
    }
    assert!(list.is_banned(p.ip()));
    assert_eq!(layer.counters().rejected("disconnected"), 1);
    assert_eq!(layer.counters().rejected("banned"), 1);
}

#[tokio::test(start_paused = true)]
async fn benign_rejections_cost_nothing_and_rewards_are_capped() {
    let (layer, _) = layer();
    let p = peer([127, 0, 0, 8]);
    let mut dup = layer.layer(Fixed(Err(Rejection::benign("dedup", "duplicate"))));
    for _ in 0..100 {
        let _ = dup.call(inbound(&p, Message::GetPeers)).await;
    }
    assert_eq!(p.score.value(Duration::from_secs(600)), 0.0);
    let mut good = layer.layer(Fixed(Ok(Outcome::Accepted)));
    for _ in 0..100 {
        good.call(inbound(&p, Message::GetPeers)).await.unwrap();
    }
    assert_eq!(p.score.value(Duration::from_secs(600)), 20.0);
    tokio::time::advance(Duration::from_secs(600)).await;
    assert!((p.score.value(Duration::from_secs(600)) - 10.0).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn a_peer_reconnecting_below_the_threshold_is_refused_free_until_it_recovers() {
    let (layer, list) = layer();
    let id = peer([127, 0, 0, 10]).node_id;
    let ip: IpAddr = [127, 0, 0, 10].into();
    let reconnect = || {
        Arc::new(PeerContext::new(
            id,
            std::net::SocketAddr::from((ip, 1)),
            crate::peer::Direction::Inbound,
            1,
            layer.book().handle(id, ip),
        ))
    };
    let first = reconnect();
    assert!(layer.readmit(&first));
    first.score.add(-20.0, Duration::from_secs(600));
    for _ in 0..10 {
        let p = reconnect();
        assert!(!layer.readmit(&p), "refused while at or below -20");
        assert!(p.disconnect.is_cancelled());
        let detail = p.close_detail.get().unwrap();
        assert!(detail.contains("retry in"), "{detail}");
    }
    let score = layer.book().score(&id).unwrap();
    assert!(
        (score + 20.0).abs() < 1e-6,
        "refusals cost nothing: {score}"
    );
    assert!(!list.is_banned(ip), "reconnecting is not misbehaviour");
    // A little decay lifts it above the threshold: welcome again.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(layer.readmit(&reconnect()));
}

#[test]
fn forgiving_resets_negative_scores_by_ip() {
    let (layer, _) = layer();
    let a = peer([127, 0, 0, 11]);
    let b = peer([10, 0, 0, 1]);
    let ha = layer.book().handle(a.node_id, a.ip());
    let hb = layer.book().handle(b.node_id, b.ip());
    ha.add(-30.0, Duration::from_secs(600));
    hb.add(-30.0, Duration::from_secs(600));
    let forgiven = layer.book().forgive(|ip| ip.is_loopback());
    assert_eq!(forgiven, 1);
    assert_eq!(ha.value(Duration::from_secs(600)), 0.0);
    assert!(hb.value(Duration::from_secs(600)) < -29.0);
    assert_eq!(layer.book().forgive(|_| true), 1);
}

#[test]
fn the_book_remembers_scores_per_node_id() {
    let (layer, _) = layer();
    let p = peer([127, 0, 0, 9]);
    let h = layer.book().handle(p.node_id, p.ip());
    h.add(-7.0, Duration::from_secs(600));
    let again = layer.book().handle(p.node_id, p.ip());
    assert!(again.value(Duration::from_secs(600)) < -6.9);
}

const HALF_LIFE: Duration = Duration::from_secs(600);

fn id(n: u32) -> NodeId {
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&n.to_le_bytes());
    NodeId(bytes)
}

fn from() -> IpAddr {
    [192, 0, 2, 1].into()
}

#[tokio::test(start_paused = true)]
async fn minting_identities_cannot_wash_a_bad_score() {
    let book = ScoreBook::with_capacity(HALF_LIFE, 16);
    let bad = id(u32::MAX);
    book.handle(bad, from()).add(-40.0, HALF_LIFE);
    // Fresh identities: neutral, rewarded, and mildly charged (one rate
    // limit offence each), all more recent than the bad one.
    for n in 0..3_000 {
        let h = book.handle(id(n), from());
        match n % 3 {
            0 => {}
            1 => {
                h.add(5.0, HALF_LIFE);
            }
            _ => {
                h.add(-2.0, HALF_LIFE);
                book.remember(id(n), from(), &h);
            }
        }
        assert!(book.len() <= 32, "bounded: {}", book.len());
    }
    assert_eq!(book.score(&bad), Some(-40.0), "the bad score survives");
    // Its next connection starts from it.
    let again = book.handle(bad, from());
    assert_eq!(again.value(HALF_LIFE), -40.0);
}

#[tokio::test(start_paused = true)]
async fn the_least_recently_seen_neutral_or_good_id_goes_first() {
    let book = ScoreBook::with_capacity(HALF_LIFE, 3);
    book.handle(id(1), from());
    book.handle(id(2), from()).add(10.0, HALF_LIFE);
    book.handle(id(3), from());
    book.handle(id(1), from());
    book.handle(id(4), from());
    assert_eq!(book.score(&id(2)), None, "a good score goes by recency");
    book.handle(id(5), from());
    assert_eq!(book.score(&id(3)), None);
    assert!(book.score(&id(1)).is_some() && book.score(&id(4)).is_some());
    assert_eq!(book.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_full_penalty_tier_forgets_the_mildest_first() {
    let book = ScoreBook::with_capacity(HALF_LIFE, 2);
    let charged = |n: u32, score: f64| {
        let h = ScoreHandle::default();
        h.add(score, HALF_LIFE);
        book.remember(id(n), from(), &h);
    };
    charged(1, -10.0);
    charged(2, -3.0);
    charged(3, -5.0);
    assert_eq!(book.score(&id(2)), None, "milder than the newcomer");
    assert_eq!(book.score(&id(1)), Some(-10.0));
    assert_eq!(book.score(&id(3)), Some(-5.0));
    charged(4, -1.5);
    assert_eq!(
        book.score(&id(4)),
        None,
        "milder than all it was compared with"
    );
    charged(5, -50.0);
    assert_eq!(book.score(&id(5)), Some(-50.0));
    assert_eq!(book.score(&id(3)), None);
    assert_eq!(book.score(&id(1)), Some(-10.0));
    // A score that decayed to milder than a newcomer's makes room.
    tokio::time::advance(HALF_LIFE * 4).await;
    charged(6, -4.0);
    assert_eq!(book.score(&id(6)), Some(-4.0));
    assert_eq!(book.score(&id(1)), None);
    assert!(book.score(&id(5)).is_some());
    assert_eq!(book.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_id_forgotten_while_connected_is_remembered_when_charged() {
    let book = ScoreBook::with_capacity(HALF_LIFE, 4);
    let attacker = id(u32::MAX);
    let live = book.handle(attacker, from());
    // Fresh identities push the (still neutral) connected id out.
    for n in 0..100 {
        book.handle(id(n), from());
    }
    assert_eq!(book.score(&attacker), None);
    live.add(-30.0, HALF_LIFE);
    book.remember(attacker, from(), &live);
    assert_eq!(book.score(&attacker), Some(-30.0));
    assert_eq!(book.handle(attacker, from()).value(HALF_LIFE), -30.0);

    // The layer does it on every offence.
    let (layer, _) = layer();
    let p = peer([127, 0, 0, 12]);
    assert_eq!(layer.book().score(&p.node_id), None);
    layer.penalize(&p, Offence::InvalidSignature);
    assert_eq!(layer.book().score(&p.node_id), Some(-25.0));
}

#[test]
fn bad_thresholds_are_config_errors() {
    let c = ScoringConfig {
        ban_threshold: -10.0,
        ..ScoringConfig::default()
    };
    assert!(c.validate().is_err());
    let c = ScoringConfig {
        malformed: 5.0,
        ..ScoringConfig::default()
    };
    assert!(c.validate().unwrap_err().contains("malformed"));
}

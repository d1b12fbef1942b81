//! `scoring`: a per-peer score that turns the outcomes of the layers inside
//! it into penalties, rewards, disconnects and bans.
//!
//! # Model
//! The score lives in `[-100, 100]` (positive part capped at `max_score`)
//! and decays exponentially towards 0 with a half-life of 10 minutes
//! (Lighthouse's 600 s). Scores are kept per node id in a bounded book, so a
//! peer that reconnects keeps its score.
//!
//! | event | default |
//! |---|---|
//! | invalid signature (or unsigned gossip) | −25 |
//! | malformed message | −10 |
//! | protocol violation | −10 |
//! | invalid chain data (bad block or transaction) | −20 |
//! | request timeout (once per request) | −5 |
//! | traffic beyond 10× a rate budget | −2 per message |
//! | first delivery of a valid new envelope | +1 |
//! | fast response (< 500 ms) | +0.5 |
//!
//! At or below −20 the peer is disconnected and its IP gets a violation in
//! the ban list (whose escalation bans repeat offenders); at or below −50 its
//! IP is banned for an hour. What honest peers do under load costs nothing:
//! excess within a rate budget's abuse factor is throttled (see
//! [`super::rate_limit`]) and race outcomes (a conflict, a stale block, a
//! duplicate vote, a child before its parent) are refused for free.
//!
//! # Security
//! Non-fatal offences reach the ban threshold too: every offence costs
//! score, and a peer whose messages keep failing falls from −20
//! (disconnect) to −50 (ban) within the messages it already sent.
//!
//! A peer that comes back while its score is still at or below the
//! disconnect threshold is refused right after the handshake with
//! `Disconnect(ProtocolViolation)` whose detail says its score and in how
//! many seconds the decay lifts it above the threshold (about 40 s after a
//! −20 disconnect with the 10-minute half-life). The refusal costs nothing
//! more: reconnecting is not misbehaviour, and the accept rate per IP
//! already bounds how often it can be tried. An identity's offences never
//! fall on an IP it has not misbehaved from (the IP of an offending
//! connection gets a violation in the ban list, whose escalation bans
//! repeat offenders, e.g. a flooder rotating identities).
//!
//! Scores are forgiven by the operator: `clearbanned` resets every negative
//! score, and `setban <subnet> remove` those last seen from that subnet.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tower::{BoxError, Layer, Service};

use super::blacklist::Blacklist;
use super::{Inbound, LayerCounters, Offence, Outcome, PeerContext, Rejection, ScoreHandle};
use crate::crypto::NodeId;
use crate::protocol::DisconnectReason;

/// The layer's name in the config and in metrics.
pub const NAME: &str = "scoring";

/// Most node ids whose score is remembered.
pub const SCORE_BOOK_CAPACITY: usize = 10_000;

/// Configuration of the `scoring` layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringConfig {
    /// Half-life of the exponential decay, in seconds.
    pub half_life_secs: u64,
    /// Score at or below which the peer is disconnected.
    pub disconnect_threshold: f64,
    /// Score at or below which the peer's IP is banned.
    pub ban_threshold: f64,
    /// Length of a score ban, in seconds.
    pub ban_secs: u64,
    /// Highest score good behaviour can earn.
    pub max_score: f64,
    /// Penalty for an invalid signature or unsigned gossip.
    pub invalid_signature: f64,
    /// Penalty for a malformed message.
    pub malformed: f64,
    /// Penalty for a protocol violation.
    pub protocol_violation: f64,
    /// Penalty for a request timeout.
    pub timeout: f64,
    /// Penalty for each message over the rate limit.
    pub rate_limit_exceeded: f64,
    /// Penalty for a block or transaction that breaks the chain rules.
    pub invalid_data: f64,
    /// Penalty for a double spend or a competing block.
    pub conflicting: f64,
    /// Reward for a first delivery of a valid new envelope.
    pub first_delivery: f64,
    /// Reward for a response faster than `fast_response_ms`.
    pub fast_response: f64,
    /// What counts as a fast response, in milliseconds.
    pub fast_response_ms: u64,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        ScoringConfig {
            half_life_secs: 600,
            disconnect_threshold: -20.0,
            ban_threshold: -50.0,
            ban_secs: 3600,
            max_score: 20.0,
            invalid_signature: -25.0,
            malformed: -10.0,
            protocol_violation: -10.0,
            timeout: -5.0,
            rate_limit_exceeded: -2.0,
            invalid_data: -20.0,
            conflicting: -2.0,
            first_delivery: 1.0,
            fast_response: 0.5,
            fast_response_ms: 500,
        }
    }
}

impl ScoringConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// A message naming the bad parameter.
    pub fn validate(&self) -> Result<(), String> {
        if self.half_life_secs == 0 {
            return Err("half_life_secs must be at least 1".into());
        }
        if !(-100.0..0.0).contains(&self.disconnect_threshold) {
            return Err("disconnect_threshold must be in [-100, 0)".into());
        }
        if !(-100.0..=self.disconnect_threshold).contains(&self.ban_threshold) {
            return Err("ban_threshold must be in [-100, disconnect_threshold]".into());
        }
        if !(0.0..=100.0).contains(&self.max_score) {
            return Err("max_score must be in [0, 100]".into());
        }
        for (name, v) in [
            ("invalid_signature", self.invalid_signature),
            ("malformed", self.malformed),
            ("protocol_violation", self.protocol_violation),
            ("timeout", self.timeout),
            ("rate_limit_exceeded", self.rate_limit_exceeded),
            ("invalid_data", self.invalid_data),
            ("conflicting", self.conflicting),
        ] {
            if !(-100.0..=0.0).contains(&v) {
                return Err(format!("{name} is a penalty: it must be in [-100, 0]"));
            }
        }
        for (name, v) in [
            ("first_delivery", self.first_delivery),
            ("fast_response", self.fast_response),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("{name} is a reward: it must be in [0, 100]"));
            }
        }
        Ok(())
    }

    /// The half-life as a duration.
    pub fn half_life(&self) -> Duration {
        Duration::from_secs(self.half_life_secs)
    }

    fn penalty(&self, offence: Offence) -> f64 {
        match offence {
            Offence::InvalidSignature => self.invalid_signature,
            Offence::Malformed => self.malformed,
            Offence::ProtocolViolation => self.protocol_violation,
            Offence::Timeout => self.timeout,
            Offence::RateLimitExceeded => self.rate_limit_exceeded,
            Offence::InvalidData => self.invalid_data,
            Offence::Conflicting => self.conflicting,
        }
    }
}

/// Scores by node id (with the IP each was last seen from), bounded;
/// entries that decayed to about zero are the first to go when it is full.
#[derive(Debug)]
pub struct ScoreBook {
    scores: Mutex<HashMap<NodeId, (ScoreHandle, IpAddr)>>,
    half_life: Duration,
    capacity: usize,
}

impl ScoreBook {
    /// An empty book of [`SCORE_BOOK_CAPACITY`] ids.
    pub fn new(half_life: Duration) -> Self {
        Self::with_capacity(half_life, SCORE_BOOK_CAPACITY)
    }

    /// An empty book of `capacity` ids (at least 1).
    pub fn with_capacity(half_life: Duration, capacity: usize) -> Self {
        ScoreBook {
            scores: Mutex::new(HashMap::new()),
            half_life,
            capacity: capacity.max(1),
        }
    }

    /// The score handle of `node_id` (new at 0 if unknown), seen now from
    /// `ip`.
    pub fn handle(&self, node_id: NodeId, ip: IpAddr) -> ScoreHandle {
        let mut scores = crate::sync::lock(&self.scores);
        if let Some((h, seen)) = scores.get_mut(&node_id) {
            *seen = ip;
            return h.clone();
        }
        if scores.len() >= self.capacity {
            let half_life = self.half_life;
            scores.retain(|_, (h, _)| h.value(half_life).abs() >= 1.0);
            if scores.len() >= self.capacity {
                // Still full of live scores: forget the mildest one.
                if let Some(k) = scores
                    .iter()
                    .min_by(|a, b| {
                        a.1 .0
                            .value(half_life)
                            .abs()
                            .total_cmp(&b.1 .0.value(half_life).abs())
                    })
                    .map(|(k, _)| *k)
                {
                    scores.remove(&k);
                }
            }
        }
        scores
            .entry(node_id)
            .or_insert_with(|| (ScoreHandle::default(), ip))
            .0
            .clone()
    }

    /// The score of `node_id`, if it has one.
    pub fn score(&self, node_id: &NodeId) -> Option<f64> {
        crate::sync::lock(&self.scores)
            .get(node_id)
            .map(|(h, _)| h.value(self.half_life))
    }

    /// Resets to 0 every negative score whose last IP matches `pred`;
    /// returns how many were forgiven. Live connections share the handles,
    /// so they are forgiven too.
    pub fn forgive(&self, pred: impl Fn(IpAddr) -> bool) -> usize {
        let scores = crate::sync::lock(&self.scores);
        let mut forgiven = 0;
        for (handle, ip) in scores.values() {
            if pred(*ip) && handle.value(self.half_life) < 0.0 {
                handle.reset();
                forgiven += 1;
            }
        }
        forgiven
    }
}

/// The `scoring` layer.
#[derive(Clone, Debug)]
pub struct ScoringLayer {
    config: Arc<ScoringConfig>,
    blacklist: Arc<Blacklist>,
    book: Arc<ScoreBook>,
    counters: Arc<LayerCounters>,
}

impl ScoringLayer {
    /// A layer that bans through `blacklist`.
    pub fn new(config: &ScoringConfig, blacklist: Arc<Blacklist>) -> Self {
        ScoringLayer {
            book: Arc::new(ScoreBook::new(config.half_life())),
            config: Arc::new(config.clone()),
            blacklist,
            counters: Arc::new(LayerCounters::default()),
        }
    }

    /// The decision counters (`accepted` counts scored outcomes; rejections
    /// count disconnects and bans).
    pub fn counters(&self) -> &Arc<LayerCounters> {
        &self.counters
    }

    /// The node-wide score book.
    pub fn book(&self) -> &Arc<ScoreBook> {
        &self.book
    }

    /// The configuration.
    pub fn config(&self) -> &ScoringConfig {
        &self.config
    }

    /// Applies `offence` to `peer`: penalty, then disconnect or ban at the
    /// thresholds. Also used by the connection task for offences outside the
    /// stack (request timeouts).
    pub fn penalize(&self, peer: &PeerContext, offence: Offence) -> f64 {
        let score = peer
            .score
            .add(self.config.penalty(offence), self.config.half_life());
        metrics::counter!("timed_score_penalties_total", "offence" => offence.as_str())
            .increment(1);
        if score <= self.config.ban_threshold {
            // Messages already in flight may push it further: ban once.
            if peer.close_reason.get() != Some(&DisconnectReason::Banned) {
                self.ban(peer, score, offence.as_str());
            }
        } else if score <= self.config.disconnect_threshold && !peer.disconnect.is_cancelled() {
            self.counters.reject(NAME, "disconnected");
            if crate::logging::allow("score_disconnect") {
                tracing::info!(
                    peer.addr = %peer.addr,
                    node.id = %peer.node_id,
                    score,
                    %offence,
                    "score below the disconnect threshold"
                );
            }
            self.blacklist.record_violation(peer.ip(), "score");
            peer.close_with(
                DisconnectReason::ProtocolViolation,
                format!(
                    "score {score:.1} reached the disconnect threshold {:.1} (last offence: {offence})",
                    self.config.disconnect_threshold
                ),
            );
        }
        score
    }

    /// Bans the peer's IP for `ban_secs` and closes the connection.
    fn ban(&self, peer: &PeerContext, score: f64, why: &str) {
        self.counters.reject(NAME, "banned");
        if crate::logging::allow("score_ban") {
            tracing::warn!(
                peer.addr = %peer.addr,
                node.id = %peer.node_id,
                score,
                why,
                "score at the ban threshold: banning"
            );
        }
        self.blacklist.ban_ip(
            peer.ip(),
            Some(Duration::from_secs(self.config.ban_secs)),
            "score",
        );
        peer.close(DisconnectReason::Banned);
    }

    /// Decides whether a newly connected peer may stay: a peer whose
    /// carried-over score is at or below the disconnect threshold is
    /// refused (returns false; the connection is closed with a detail
    /// saying when it may come back). The refusal costs nothing: see the
    /// module docs.
    pub fn readmit(&self, peer: &PeerContext) -> bool {
        let half_life = self.config.half_life();
        let score = peer.score.value(half_life);
        if score > self.config.disconnect_threshold {
            return true;
        }
        // |score| halves every half-life: it is above the threshold after
        // half_life * log2(score / threshold).
        let wait_secs = (half_life.as_secs_f64()
            * (score / self.config.disconnect_threshold).log2())
        .max(0.0)
        .ceil() as u64
            + 1;
        self.counters.reject(NAME, "refused");
        if crate::logging::allow("score_refused") {
            tracing::info!(
                peer.addr = %peer.addr,
                node.id = %peer.node_id,
                score,
                retry_after_s = wait_secs,
                "reconnected below the disconnect threshold: refused"
            );
        }
        peer.close_with(
            DisconnectReason::ProtocolViolation,
            format!(
                "score {score:.1} is at or below the disconnect threshold {:.1}; retry in {wait_secs} s",
                self.config.disconnect_threshold
            ),
        );
        false
    }

    /// Rewards `peer` by `amount`, up to `max_score`.
    pub fn reward(&self, peer: &PeerContext, amount: f64) {
        let half_life = self.config.half_life();
        if peer.score.value(half_life) + amount <= self.config.max_score {
            peer.score.add(amount, half_life);
        }
    }

    /// Rewards a response that took `elapsed`, if it was fast.
    pub fn response_time(&self, peer: &PeerContext, elapsed: Duration) {
        if elapsed < Duration::from_millis(self.config.fast_response_ms) {
            self.reward(peer, self.config.fast_response);
        }
    }
}

impl<S> Layer<S> for ScoringLayer {
    type Service = Scoring<S>;

    fn layer(&self, inner: S) -> Scoring<S> {
        Scoring {
            inner,
            layer: self.clone(),
        }
    }
}

/// The `scoring` service.
#[derive(Clone, Debug)]
pub struct Scoring<S> {
    inner: S,
    layer: ScoringLayer,
}

impl<S> Service<Inbound> for Scoring<S>
where
    S: Service<Inbound, Response = Outcome, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Outcome, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Inbound) -> Self::Future {
        let peer = request.peer.clone();
        let layer = self.layer.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            layer.counters.accept(NAME);
            match &result {
                Ok(Outcome::Accepted) => layer.reward(&peer, layer.config.first_delivery),
                Ok(_) => {}
                Err(error) => {
                    if let Some(Rejection {
                        offence: Some(offence),
                        ..
                    }) = Rejection::find(error)
                    {
                        layer.penalize(&peer, *offence);
                    }
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
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
}

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
//! | request timeout | −5 |
//! | rate-limit excess | −2 |
//! | first delivery of a valid new envelope | +1 |
//! | fast response (< 500 ms) | +0.5 |
//!
//! At or below −20 the peer is disconnected and its IP gets a violation in
//! the ban list (whose escalation bans repeat offenders); at or below −50 its
//! IP is banned for an hour.
//!
//! # Security
//! Non-fatal offences reach the ban threshold too. A peer that comes back
//! while its score is still at or below the disconnect threshold (about 40 s
//! after a −20 disconnect, with the 10-minute half-life) is refused right
//! after the handshake and charged a protocol violation (−10): a flooder
//! that keeps reconnecting with the same identity goes −20, −30, −40, −50
//! and is banned by score at its fourth attempt. A flooder that rotates
//! identities starts each at 0, but every disconnect is a violation of its
//! IP, and the ban list's escalation bans the IP at the third.

use std::collections::HashMap;
use std::future::Future;
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

/// Scores by node id, bounded; entries that decayed to about zero are the
/// first to go when it is full.
#[derive(Debug)]
pub struct ScoreBook {
    scores: Mutex<HashMap<NodeId, ScoreHandle>>,
    half_life: Duration,
}

impl ScoreBook {
    /// An empty book.
    pub fn new(half_life: Duration) -> Self {
        ScoreBook {
            scores: Mutex::new(HashMap::new()),
            half_life,
        }
    }

    /// The score handle of `node_id` (new at 0 if unknown).
    pub fn handle(&self, node_id: NodeId) -> ScoreHandle {
        let mut scores = crate::sync::lock(&self.scores);
        if let Some(h) = scores.get(&node_id) {
            return h.clone();
        }
        if scores.len() >= SCORE_BOOK_CAPACITY {
            let half_life = self.half_life;
            scores.retain(|_, h| h.value(half_life).abs() >= 1.0);
            if scores.len() >= SCORE_BOOK_CAPACITY {
                // Still full of live scores: forget the mildest one.
                if let Some(k) = scores
                    .iter()
                    .min_by(|a, b| {
                        a.1.value(half_life)
                            .abs()
                            .total_cmp(&b.1.value(half_life).abs())
                    })
                    .map(|(k, _)| *k)
                {
                    scores.remove(&k);
                }
            }
        }
        scores.entry(node_id).or_default().clone()
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
            tracing::info!(
                peer.addr = %peer.addr,
                node.id = %peer.node_id,
                score,
                %offence,
                "score below the disconnect threshold"
            );
            self.blacklist.record_violation(peer.ip(), "score");
            peer.close(DisconnectReason::ProtocolViolation);
        }
        score
    }

    /// Bans the peer's IP for `ban_secs` and closes the connection.
    fn ban(&self, peer: &PeerContext, score: f64, why: &str) {
        self.counters.reject(NAME, "banned");
        tracing::warn!(
            peer.addr = %peer.addr,
            node.id = %peer.node_id,
            score,
            why,
            "score at the ban threshold: banning"
        );
        self.blacklist.ban_ip(
            peer.ip(),
            Some(Duration::from_secs(self.config.ban_secs)),
            "score",
        );
        peer.close(DisconnectReason::Banned);
    }

    /// Decides whether a newly connected peer may stay: a peer whose
    /// carried-over score is at or below the disconnect threshold is charged
    /// a protocol violation (banned at the ban threshold) and must be
    /// refused (returns false). No IP violation is recorded for it: its
    /// disconnect recorded one already.
    pub fn readmit(&self, peer: &PeerContext) -> bool {
        let half_life = self.config.half_life();
        if peer.score.value(half_life) > self.config.disconnect_threshold {
            return true;
        }
        let score = peer.score.add(self.config.protocol_violation, half_life);
        metrics::counter!("timed_score_penalties_total", "offence" => "reconnect_below_threshold")
            .increment(1);
        if score <= self.config.ban_threshold {
            self.ban(peer, score, "reconnect_below_threshold");
        } else {
            self.counters.reject(NAME, "refused");
            tracing::info!(
                peer.addr = %peer.addr,
                node.id = %peer.node_id,
                score,
                "reconnected below the disconnect threshold: refused"
            );
            peer.close(DisconnectReason::ProtocolViolation);
        }
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
    async fn a_peer_reconnecting_below_the_threshold_is_refused_until_banned() {
        let (layer, list) = layer();
        let id = peer([127, 0, 0, 10]).node_id;
        let reconnect = || {
            Arc::new(PeerContext::new(
                id,
                std::net::SocketAddr::from(([127, 0, 0, 10], 1)),
                crate::peer::Direction::Inbound,
                1,
                layer.book().handle(id),
            ))
        };
        let first = reconnect();
        assert!(layer.readmit(&first));
        first.score.add(-20.0, Duration::from_secs(600));
        let mut refused = 0;
        loop {
            let p = reconnect();
            if layer.readmit(&p) {
                break;
            }
            refused += 1;
            assert!(p.disconnect.is_cancelled());
            if list.is_banned(p.ip()) {
                assert_eq!(p.close_reason.get(), Some(&DisconnectReason::Banned));
                break;
            }
        }
        assert_eq!(refused, 3, "-30, -40, -50: banned at the third refusal");
        assert_eq!(list.banned(first.ip()).unwrap().reason, "score");
        // Once the score recovers above the threshold, the peer is welcome.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(layer.readmit(&reconnect()));
    }

    #[test]
    fn the_book_remembers_scores_per_node_id() {
        let (layer, _) = layer();
        let p = peer([127, 0, 0, 9]);
        let h = layer.book().handle(p.node_id);
        h.add(-7.0, Duration::from_secs(600));
        let again = layer.book().handle(p.node_id);
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

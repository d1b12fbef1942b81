//! `scoring`: a per-peer score that turns the outcomes of the layers inside
//! it into penalties, rewards, disconnects and bans.
//!
//! # Model
//! The score lives in `[-100, 100]` (positive part capped at `max_score`)
//! and decays exponentially towards 0 with a half-life of 10 minutes
//! (Lighthouse's 600 s). Scores are kept per node id in a bounded book, so a
//! peer that reconnects keeps its score; minting new identities cannot push
//! a bad score out of it (see [`ScoreBook`]).
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

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use lru::LruCache;
use serde::{Deserialize, Serialize};
use tower::{BoxError, Layer, Service};

use super::blacklist::Blacklist;
use super::{Inbound, LayerCounters, Offence, Outcome, PeerContext, Rejection};
use crate::crypto::NodeId;
use crate::peer::{PeerJudge, ScoreHandle};
use crate::protocol::DisconnectReason;

/// The layer's name in the config and in metrics.
pub const NAME: &str = "scoring";

/// Most node ids in each tier of the score book (see [`ScoreBook`]): at
/// most twice this many scores are remembered.
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

/// A remembered score: the handle live connections share, and the IP the
/// node id was last seen from (for [`ScoreBook::forgive`]).
#[derive(Debug)]
struct Entry {
    handle: ScoreHandle,
    ip: IpAddr,
}

/// One tier of the book: least recently used first, keyed with the
/// standard library's randomly seeded SipHash (node ids are chosen by
/// peers).
type Tier = LruCache<NodeId, Entry, RandomState>;

#[derive(Debug)]
struct Tiers {
    /// Every id as it is seen, least recently seen first.
    recent: Tier,
    /// Ids that left `recent` (or were charged while out of the book) with
    /// a score at or below [`PENALTY_FLOOR`].
    penalty: Tier,
}

/// Scores by node id (with the IP each was last seen from), bounded.
///
/// # Eviction
/// The book has two tiers of at most `capacity` ids each, both
/// [`lru::LruCache`]s (chosen over `quick_cache` and `moka`, whose own
/// admission and eviction policies cannot be told which entry must stay,
/// and over `hashlink`, which would do as well: `lru` is the most used of
/// the two and has the peek, promote and pop-oldest calls this policy is
/// made of, each O(1)):
/// - `recent` holds every id as it is seen; a new id makes room by taking
///   the least recently seen one out. If that one's score is at or below
///   [`PENALTY_FLOOR`] it moves to `penalty`, otherwise it is forgotten
///   (a neutral or positive score is worth no more than a fresh one).
/// - `penalty` holds bad scores. When it is full, a newcomer is compared
///   with its [`PENALTY_PROBES`] oldest entries, which then move to the
///   newest end (so the next comparison sees others): the mildest of them
///   is forgotten to make room if it is milder than the newcomer, else the
///   newcomer is the one forgotten.
///
/// So a lookup, a new id and an eviction each cost O(1): a few hash
/// lookups and at most [`PENALTY_PROBES`] score reads, whatever the size.
///
/// # Security
/// Node ids are free to mint, so an attacker can push any number of fresh
/// ids through the book. That never washes a bad score:
/// - fresh ids only displace ids from `recent`; a bad score found there
///   moves to `penalty` instead of being forgotten;
/// - an entry of `penalty` is forgotten only for a newcomer whose score is
///   worse than its own (it may have decayed to milder than the
///   newcomer's), and milder entries compared alongside it go first.
///   Pushing out a score below the disconnect threshold thus takes about
///   as many identities as `penalty` holds, each with a worse score, so
///   each one disconnected and giving its IP a violation (the ban list's
///   escalation bans the IP at the third); by then the decay has usually
///   forgiven the score anyway;
/// - an id forgotten while connected (with a mild score, as any fresh id
///   can make it the oldest in `recent`) is put back with its live handle
///   by [`ScoreBook::remember`] when it is charged, so the next connection
///   of that id starts from the bad score.
///
/// What recency may cost is a good score: an honest peer's reward credit
/// can be forgotten under churn, and it starts again from 0 like any new
/// peer. The book holds at most `2 × capacity` ids.
#[derive(Debug)]
pub struct ScoreBook {
    tiers: Mutex<Tiers>,
    half_life: Duration,
    capacity: usize,
}

/// A score at or below this is kept in the penalty tier when its id leaves
/// the recent tier; above it, the score has decayed to about nothing.
pub const PENALTY_FLOOR: f64 = -1.0;

/// Oldest entries of a full penalty tier compared with a newcomer.
pub const PENALTY_PROBES: usize = 8;

impl ScoreBook {
    /// An empty book of [`SCORE_BOOK_CAPACITY`] ids per tier.
    pub fn new(half_life: Duration) -> Self {
        Self::with_capacity(half_life, SCORE_BOOK_CAPACITY)
    }

    /// An empty book of `capacity` ids (at least 1) per tier.
    pub fn with_capacity(half_life: Duration, capacity: usize) -> Self {
        // Unbounded `LruCache`s with the bound kept here: nothing is
        // allocated up front, and eviction follows the policy above
        // rather than the cache's own.
        ScoreBook {
            tiers: Mutex::new(Tiers {
                recent: LruCache::unbounded_with_hasher(RandomState::new()),
                penalty: LruCache::unbounded_with_hasher(RandomState::new()),
            }),
            half_life,
            capacity: capacity.max(1),
        }
    }

    /// The score handle of `node_id` (new at 0 if unknown), seen now from
    /// `ip`.
    pub fn handle(&self, node_id: NodeId, ip: IpAddr) -> ScoreHandle {
        let mut guard = crate::locks::lock(&self.tiers);
        let tiers = &mut *guard;
        let known = match tiers.recent.get_mut(&node_id) {
            Some(entry) => Some(entry),
            None => tiers.penalty.get_mut(&node_id),
        };
        if let Some(entry) = known {
            entry.ip = ip;
            return entry.handle.clone();
        }
        if tiers.recent.len() >= self.capacity {
            if let Some((old_id, old)) = tiers.recent.pop_lru() {
                if old.handle.value(self.half_life) <= PENALTY_FLOOR {
                    self.keep_penalty(&mut tiers.penalty, old_id, old);
                }
            }
        }
        let handle = ScoreHandle::default();
        tiers.recent.push(
            node_id,
            Entry {
                handle: handle.clone(),
                ip,
            },
        );
        handle
    }

    /// Puts `handle`, the live score of `node_id` seen from `ip`, back in
    /// the book if it is at or below [`PENALTY_FLOOR`] and the book lost
    /// it (or holds a milder score under another handle); the scoring layer
    /// calls it on every offence. O(1).
    pub fn remember(&self, node_id: NodeId, ip: IpAddr, handle: &ScoreHandle) {
        let score = handle.value(self.half_life);
        if score > PENALTY_FLOOR {
            return;
        }
        let mut guard = crate::locks::lock(&self.tiers);
        let tiers = &mut *guard;
        let known = match tiers.recent.peek_mut(&node_id) {
            Some(entry) => Some(entry),
            None => tiers.penalty.peek_mut(&node_id),
        };
        match known {
            Some(entry) => {
                if !entry.handle.same_as(handle) && score < entry.handle.value(self.half_life) {
                    entry.handle = handle.clone();
                    entry.ip = ip;
                }
            }
            None => self.keep_penalty(
                &mut tiers.penalty,
                node_id,
                Entry {
                    handle: handle.clone(),
                    ip,
                },
            ),
        }
    }

    /// Adds `entry` (not in the tier) to the penalty tier, making room as
    /// the type's docs say.
    fn keep_penalty(&self, penalty: &mut Tier, node_id: NodeId, entry: Entry) {
        if penalty.len() >= self.capacity {
            let score = entry.handle.value(self.half_life);
            let mut mildest: Option<(NodeId, f64)> = None;
            for _ in 0..PENALTY_PROBES.min(penalty.len()) {
                let Some((old_id, old)) = penalty
                    .peek_lru()
                    .map(|(id, old)| (*id, old.handle.value(self.half_life)))
                else {
                    break;
                };
                if mildest.is_none_or(|(_, m)| old > m) {
                    mildest = Some((old_id, old));
                }
                penalty.promote(&old_id);
            }
            match mildest {
                Some((old_id, old)) if old > score => {
                    penalty.pop(&old_id);
                }
                // The newcomer is the mildest of those compared.
                _ => return,
            }
        }
        penalty.push(node_id, entry);
    }

    /// The score of `node_id`, if it has one.
    pub fn score(&self, node_id: &NodeId) -> Option<f64> {
        let tiers = crate::locks::lock(&self.tiers);
        tiers
            .recent
            .peek(node_id)
            .or_else(|| tiers.penalty.peek(node_id))
            .map(|entry| entry.handle.value(self.half_life))
    }

    /// Node ids remembered (both tiers).
    pub fn len(&self) -> usize {
        let tiers = crate::locks::lock(&self.tiers);
        tiers.recent.len() + tiers.penalty.len()
    }

    /// True when no score is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resets to 0 every negative score whose last IP matches `pred`;
    /// returns how many were forgiven. Live connections share the handles,
    /// so they are forgiven too. A walk over the book, for the operator's
    /// commands only.
    pub fn forgive(&self, pred: impl Fn(IpAddr) -> bool) -> usize {
        let tiers = crate::locks::lock(&self.tiers);
        let mut forgiven = 0;
        for (_, entry) in tiers.recent.iter().chain(tiers.penalty.iter()) {
            if pred(entry.ip) && entry.handle.value(self.half_life) < 0.0 {
                entry.handle.reset();
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
    /// False when `scoring` is not in the stack: offences are still scored
    /// (and shown by `getpeerinfo`), but never disconnect or ban.
    enforce: bool,
}

impl PeerJudge for ScoringLayer {
    fn penalize(&self, peer: &PeerContext, offence: Offence) {
        ScoringLayer::penalize(self, peer, offence);
    }

    fn response_time(&self, peer: &PeerContext, elapsed: Duration) {
        ScoringLayer::response_time(self, peer, elapsed);
    }
}

impl ScoringLayer {
    /// A layer that bans through `blacklist`.
    pub fn new(config: &ScoringConfig, blacklist: Arc<Blacklist>) -> Self {
        Self::with_book(
            config,
            blacklist,
            Arc::new(ScoreBook::new(config.half_life())),
        )
    }

    /// A layer over the network's score book, banning through `blacklist`.
    pub fn with_book(
        config: &ScoringConfig,
        blacklist: Arc<Blacklist>,
        book: Arc<ScoreBook>,
    ) -> Self {
        ScoringLayer {
            book,
            config: Arc::new(config.clone()),
            blacklist,
            counters: Arc::new(LayerCounters::default()),
            enforce: true,
        }
    }

    /// The judge of a node whose stack has no `scoring` layer: the default
    /// penalties and rewards are recorded in the score book, so scores stay
    /// visible and carry over if `scoring` is added back, but no score
    /// disconnects or bans a peer.
    pub fn record_only(blacklist: Arc<Blacklist>, book: Arc<ScoreBook>) -> Self {
        ScoringLayer {
            enforce: false,
            ..ScoringLayer::with_book(&ScoringConfig::default(), blacklist, book)
        }
    }

    /// Whether scores disconnect and ban (the layer is in the stack).
    pub fn enforces(&self) -> bool {
        self.enforce
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
        // The id may have been forgotten while connected: its next
        // connection must find this score.
        self.book.remember(peer.node_id, peer.ip(), &peer.score);
        metrics::counter!("timed_score_penalties_total", "offence" => offence.as_str())
            .increment(1);
        peer.stats
            .offences
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !self.enforce {
            return score;
        }
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
        if !self.enforce || score > self.config.disconnect_threshold {
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

impl crate::layers::stack::Middleware for ScoringConfig {
    const NAME: &'static str = NAME;
    const WITHOUT: &'static str = "Offences are still scored in the shared book and shown by `getpeerinfo`, and the ban list still counts violations of the IP; no score disconnects or bans a peer.";
    type Layer = ScoringLayer;

    fn validate(&self) -> Result<(), String> {
        ScoringConfig::validate(self)
    }

    fn build(&self, shared: &crate::layers::shared::SharedState) -> ScoringLayer {
        ScoringLayer::with_book(self, shared.blacklist.clone(), shared.scores.clone())
    }
}

#[cfg(test)]
mod tests;

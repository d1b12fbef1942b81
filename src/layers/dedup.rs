//! `dedup`: one node-wide bounded cache of message ids with a TTL.
//!
//! Covers every gossiped kind (the id of a signed envelope is the blake3 of
//! its encoding) and repeated requests (a request's id is the blake3 of the
//! sender's node id and the encoded request, so the same request from the
//! same peer within the TTL is dropped). A duplicate never reaches the
//! handlers; it is refused with the benign reason `duplicate`.
//!
//! # Correctness
//! An id is reserved while the inner service handles the message, so two
//! copies arriving at once on two connections cannot both pass; if the inner
//! service refuses the message (for example `auth` finds the signature
//! invalid), the reservation is released, so an envelope that failed
//! authentication never poisons the cache for the genuine one.
//!
//! # Security
//! The cache holds at most `capacity` ids; when full, the oldest entry is
//! evicted first. Entries expire after `ttl`: `auth` refuses envelopes older
//! than that, so an evicted id cannot be replayed successfully.
//!
//! Every operation a peer drives (reserve, commit, release) is O(1)
//! amortised: the ids live in one [`lru::LruCache`] ordered by the time of
//! their latest record, expired ids are popped from its old end (each pop
//! paid for by the insert that made the record), and a released
//! reservation is removed at once, so it holds no slot: a flood of
//! envelopes that fail authentication cannot push genuine ids out early.
//! The map is keyed with the standard library's randomly seeded SipHash, as
//! message ids come from the network.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use lru::LruCache;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

use super::{Inbound, LayerCounters, Outcome, Rejection};
use crate::protocol::{codec, Message, MessageId};

/// The layer's name in the config and in metrics.
pub const NAME: &str = "dedup";

/// Default TTL of a seen id.
///
/// gossipsub keeps ids 60 s, Lighthouse 768 s. Ten minutes covers the slowest
/// relay path of a small network and matches `auth`'s default maximum
/// envelope age, so an id forgotten here is also refused there.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);

/// Default capacity: 200,000 ids of 32 bytes plus bookkeeping is about
/// 20 MB at worst, and covers 300 messages/s for the whole TTL.
pub const DEFAULT_CAPACITY: usize = 200_000;

/// Configuration of the `dedup` layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// Seconds an id is remembered.
    pub ttl_secs: u64,
    /// Most ids remembered at once.
    pub capacity: usize,
    /// Also drop identical requests (`GetPeers`) repeated by the same
    /// node id within the ttl. Off by default: a node that reconnects
    /// within the ttl would get no answer and charge us a timeout, and the
    /// peer-exchange handler answers `GetPeers` once per connection anyway.
    pub requests: bool,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            ttl_secs: DEFAULT_TTL.as_secs(),
            capacity: DEFAULT_CAPACITY,
            requests: false,
        }
    }
}

impl DedupConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// A message naming the bad parameter.
    pub fn validate(&self) -> Result<(), String> {
        if self.ttl_secs == 0 {
            return Err("ttl_secs must be at least 1".into());
        }
        if self.capacity == 0 {
            return Err("capacity must be at least 1".into());
        }
        Ok(())
    }
}

/// How long a reservation may stay pending before another copy may take
/// it over.
///
/// A reservation normally ends when its message leaves the stack (the
/// [`Reservation`] guard releases it even when the connection drops the
/// future); this bound is the backstop, longer than any honest handling
/// (the handlers' slowest work, a block's validation, takes milliseconds).
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
enum Entry {
    /// Being handled by the inner service since the instant.
    Pending(Instant),
    /// Handled; expires at the instant.
    Seen(Instant),
}

/// The ids remembered.
///
/// `lru` rather than a hand-kept `HashMap` and queue: one map keeps both the
/// lookup and the order, with O(1) insert, lookup, move-to-newest and
/// removal of any entry. Its capacity is unbounded here and the bound is
/// kept by [`DedupCache::record`], so no storage is allocated up front for
/// the (large) configured capacity.
#[derive(Debug)]
struct Cache {
    /// Every id with its state and the instant of its latest record, least
    /// recently recorded first. Records are made with the current time, so
    /// this is also the order in which they expire.
    entries: LruCache<MessageId, (Entry, Instant), RandomState>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            entries: LruCache::unbounded_with_hasher(RandomState::new()),
        }
    }
}

/// The node-wide id cache.
///
/// # Correctness
/// Pending reservations are records too: they count against `capacity`,
/// expire with the TTL, and one pending longer than [`PENDING_TIMEOUT`] no
/// longer blocks the id, so no dropped future can hold an envelope out.
#[derive(Debug)]
pub struct DedupCache {
    cache: Mutex<Cache>,
    ttl: Duration,
    capacity: usize,
}

impl DedupCache {
    /// An empty cache.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        DedupCache {
            cache: Mutex::new(Cache::default()),
            ttl,
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        crate::locks::lock(&self.cache)
    }

    /// Records `entry` for `id` at `now`, expiring and evicting from the
    /// old end first. O(1) amortised: each expired id popped was pushed by
    /// an earlier record, and at most one id is evicted for room.
    fn record(&self, cache: &mut Cache, id: MessageId, entry: Entry, now: Instant) {
        while let Some((_, (_, at))) = cache.entries.peek_lru() {
            if now.saturating_duration_since(*at) < self.ttl {
                break;
            }
            cache.entries.pop_lru();
        }
        if cache.entries.len() >= self.capacity && !cache.entries.contains(&id) {
            cache.entries.pop_lru();
        }
        // A new record of a known id moves it to the newest end.
        cache.entries.push(id, (entry, now));
    }

    /// Reserves `id`; false if it is already pending or seen.
    pub fn reserve(&self, id: MessageId) -> bool {
        let now = Instant::now();
        let mut cache = self.lock();
        let taken = match cache.entries.peek(&id) {
            Some((Entry::Pending(since), _)) => {
                now.saturating_duration_since(*since) < PENDING_TIMEOUT
            }
            Some((Entry::Seen(until), _)) => *until > now,
            None => false,
        };
        if taken {
            return false;
        }
        self.record(&mut cache, id, Entry::Pending(now), now);
        true
    }

    /// Reserves `id` and returns a guard that releases the reservation
    /// unless committed, whatever happens to the caller; `None` if the id
    /// is already pending or seen.
    pub fn reservation(self: &Arc<Self>, id: MessageId) -> Option<Reservation> {
        self.reserve(id).then(|| Reservation {
            cache: self.clone(),
            id,
            settled: false,
        })
    }

    /// Marks a reserved id as seen (the inner service accepted it).
    pub fn commit(&self, id: MessageId) {
        let now = Instant::now();
        let mut cache = self.lock();
        self.record(&mut cache, id, Entry::Seen(now + self.ttl), now);
    }

    /// Releases a reservation (the inner service refused the message).
    pub fn release(&self, id: MessageId) {
        let mut cache = self.lock();
        if let Some((Entry::Pending(_), _)) = cache.entries.peek(&id) {
            cache.entries.pop(&id);
        }
    }

    /// Ids currently remembered (pending or seen).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Ids currently pending (a walk over the cache: for tests and
    /// diagnostics, never on a message's path).
    pub fn pending(&self) -> usize {
        self.lock()
            .entries
            .iter()
            .filter(|(_, (e, _))| matches!(e, Entry::Pending(_)))
            .count()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A reserved id: committed by [`Reservation::commit`], released by
/// [`Reservation::release`] or when dropped unsettled (the connection went
/// away while its message was in the stack).
#[derive(Debug)]
pub struct Reservation {
    cache: Arc<DedupCache>,
    id: MessageId,
    settled: bool,
}

impl Reservation {
    /// The message was accepted: remember its id for the TTL.
    pub fn commit(mut self) {
        self.settled = true;
        self.cache.commit(self.id);
    }

    /// The message was refused: another copy may come through.
    pub fn release(mut self) {
        self.settled = true;
        self.cache.release(self.id);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.cache.release(self.id);
        }
    }
}

/// The id dedup uses for a message, if it dedups that kind.
fn dedup_id(request: &Inbound, requests: bool) -> Option<MessageId> {
    match &*request.message {
        Message::Gossip(envelope) => Some(envelope.id()),
        Message::GetPeers if requests => {
            let bytes = codec::encode_message(&request.message).ok()?;
            let mut h = blake3::Hasher::new_derive_key("timed v1 request dedup");
            h.update(request.peer.node_id.as_bytes());
            h.update(&bytes);
            Some(MessageId(*h.finalize().as_bytes()))
        }
        _ => None,
    }
}

/// The `dedup` layer.
#[derive(Clone, Debug)]
pub struct DedupLayer {
    cache: Arc<DedupCache>,
    counters: Arc<LayerCounters>,
    requests: bool,
}

impl DedupLayer {
    /// A layer with its own node-wide cache.
    pub fn new(config: &DedupConfig) -> Self {
        Self::with_cache(
            config,
            Arc::new(DedupCache::new(
                Duration::from_secs(config.ttl_secs),
                config.capacity,
            )),
        )
    }

    /// A layer over the network's id cache.
    pub fn with_cache(config: &DedupConfig, cache: Arc<DedupCache>) -> Self {
        DedupLayer {
            cache,
            counters: Arc::new(LayerCounters::default()),
            requests: config.requests,
        }
    }

    /// The decision counters.
    pub fn counters(&self) -> &Arc<LayerCounters> {
        &self.counters
    }

    /// The shared cache.
    pub fn cache(&self) -> &Arc<DedupCache> {
        &self.cache
    }
}

impl<S> Layer<S> for DedupLayer {
    type Service = Dedup<S>;

    fn layer(&self, inner: S) -> Dedup<S> {
        Dedup {
            inner,
            layer: self.clone(),
        }
    }
}

/// The `dedup` service.
#[derive(Clone, Debug)]
pub struct Dedup<S> {
    inner: S,
    layer: DedupLayer,
}

impl<S> Service<Inbound> for Dedup<S>
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
        let Some(id) = dedup_id(&request, self.layer.requests) else {
            return Box::pin(self.inner.call(request));
        };
        let Some(reservation) = self.layer.cache.reservation(id) else {
            self.layer.counters.reject(NAME, "duplicate");
            metrics::counter!("timed_dedup_hits_total").increment(1);
            return Box::pin(std::future::ready(Err(Rejection::benign(
                NAME,
                "duplicate",
            )
            .into())));
        };
        self.layer.counters.accept(NAME);
        let future = self.inner.call(request);
        Box::pin(async move {
            // If this future is dropped before it completes (the connection
            // closed), the reservation's guard releases the id.
            let result = future.await;
            match &result {
                Ok(_) => reservation.commit(),
                Err(_) => reservation.release(),
            }
            result
        })
    }
}

impl crate::layers::stack::Middleware for DedupConfig {
    const NAME: &'static str = NAME;
    const WITHOUT: &'static str = "Copies of an envelope reach auth and the handlers, which verify and handle each again (the chain refuses what it already holds, for free); the network still marks the envelopes it signs as seen.";
    type Layer = DedupLayer;

    fn validate(&self) -> Result<(), String> {
        DedupConfig::validate(self)
    }

    fn build(&self, shared: &crate::layers::shared::SharedState) -> DedupLayer {
        DedupLayer::with_cache(self, shared.dedup.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::NodeIdentity;
    use crate::layers::test_support::{inbound, peer, CountingHandler};
    use crate::protocol::{Envelope, GossipKind};
    use std::sync::atomic::Ordering;
    use tower::ServiceExt;

    fn envelope(n: u8) -> Message {
        let id = NodeIdentity::from_secret_bytes(&[n; 32]);
        Message::Gossip(Envelope::sign(
            &id,
            *b"TDEV",
            GossipKind::Transaction,
            1,
            vec![n; 10],
        ))
    }

    #[tokio::test]
    async fn duplicates_never_reach_the_handler() {
        let handler = CountingHandler::default();
        let layer = DedupLayer::new(&DedupConfig {
            requests: true,
            ..DedupConfig::default()
        });
        let mut svc = layer.layer(handler.clone());
        let p = peer([127, 0, 0, 1]);
        for _ in 0..3 {
            let _ = svc
                .ready()
                .await
                .unwrap()
                .call(inbound(&p, envelope(1)))
                .await;
        }
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(inbound(&p, envelope(1)))
            .await
            .unwrap_err();
        assert_eq!(Rejection::find(&err).unwrap().reason, "duplicate");
        assert_eq!(handler.0.load(Ordering::Relaxed), 1);
        assert_eq!(layer.counters().rejected("duplicate"), 3);
        // Pings are not deduplicated; repeated GetPeers are.
        for _ in 0..2 {
            let _ = svc
                .ready()
                .await
                .unwrap()
                .call(inbound(&p, Message::GetPeers))
                .await;
        }
        assert_eq!(handler.0.load(Ordering::Relaxed), 2);
    }

    #[derive(Clone)]
    struct Refuse;
    impl Service<Inbound> for Refuse {
        type Response = Outcome;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Outcome, BoxError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Inbound) -> Self::Future {
            std::future::ready(Err("refused".into()))
        }
    }

    #[tokio::test]
    async fn a_refused_message_does_not_poison_the_cache() {
        let layer = DedupLayer::new(&DedupConfig::default());
        let p = peer([127, 0, 0, 1]);
        let mut refusing = layer.layer(Refuse);
        assert!(refusing.call(inbound(&p, envelope(2))).await.is_err());
        let handler = CountingHandler::default();
        let mut accepting = layer.layer(handler.clone());
        accepting.call(inbound(&p, envelope(2))).await.unwrap();
        assert_eq!(handler.0.load(Ordering::Relaxed), 1);
    }

    /// A handler that never answers.
    #[derive(Clone)]
    struct Hang;
    impl Service<Inbound> for Hang {
        type Response = Outcome;
        type Error = BoxError;
        type Future = std::future::Pending<Result<Outcome, BoxError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Inbound) -> Self::Future {
            std::future::pending()
        }
    }

    #[tokio::test]
    async fn a_dropped_request_releases_its_reservation() {
        let layer = DedupLayer::new(&DedupConfig::default());
        let p = peer([127, 0, 0, 1]);
        let mut hanging = layer.layer(Hang);
        let future = hanging.call(inbound(&p, envelope(3)));
        assert_eq!(layer.cache().pending(), 1);
        // The connection closes while the envelope is in the stack.
        drop(future);
        assert_eq!(layer.cache().pending(), 0);
        let handler = CountingHandler::default();
        let mut honest = layer.layer(handler.clone());
        honest.call(inbound(&p, envelope(3))).await.unwrap();
        assert_eq!(handler.0.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_reservation_expires() {
        let cache = DedupCache::new(Duration::from_secs(600), 10);
        let id = MessageId([9; 32]);
        assert!(cache.reserve(id));
        assert!(!cache.reserve(id), "pending blocks a copy");
        tokio::time::advance(PENDING_TIMEOUT).await;
        assert!(cache.reserve(id), "a stale reservation does not");
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_id_goes_first_and_each_id_holds_one_slot() {
        let cache = DedupCache::new(Duration::from_secs(600), 3);
        let id = |n: u8| MessageId([n; 32]);
        for n in 1..=3 {
            assert!(cache.reserve(id(n)));
            tokio::time::advance(Duration::from_secs(1)).await;
            cache.commit(id(n));
        }
        // Reserved then committed: one slot each, all three remembered.
        assert_eq!(cache.len(), 3);
        for n in 1..=3 {
            assert!(!cache.reserve(id(n)), "id {n} still remembered");
        }
        assert!(cache.reserve(id(4)));
        assert_eq!(cache.len(), 3);
        assert!(!cache.reserve(id(2)) && !cache.reserve(id(3)));
        assert!(cache.reserve(id(1)), "the oldest was evicted for room");
    }

    #[tokio::test(start_paused = true)]
    async fn refused_messages_do_not_push_genuine_ids_out() {
        // Room for the genuine ids and one reservation at a time.
        let cache = DedupCache::new(Duration::from_secs(600), 4);
        let id = |n: u32| {
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(&n.to_le_bytes());
            MessageId(bytes)
        };
        for n in 0..3 {
            assert!(cache.reserve(id(n)));
            cache.commit(id(n));
        }
        // A flood of envelopes that fail authentication: each is reserved,
        // then released.
        for n in 100..10_100 {
            assert!(cache.reserve(id(n)));
            cache.release(id(n));
        }
        assert_eq!(cache.len(), 3);
        for n in 0..3 {
            assert!(!cache.reserve(id(n)), "genuine id {n} still remembered");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ids_expire_after_the_ttl_and_capacity_is_bounded() {
        let cache = DedupCache::new(Duration::from_secs(10), 3);
        let id = |n: u8| MessageId([n; 32]);
        assert!(cache.reserve(id(1)));
        cache.commit(id(1));
        assert!(!cache.reserve(id(1)));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(cache.reserve(id(1)));
        cache.commit(id(1));
        for n in 2..10 {
            assert!(cache.reserve(id(n)));
            cache.commit(id(n));
            assert!(cache.len() <= 3, "len {}", cache.len());
        }
    }
}

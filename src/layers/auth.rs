//! `auth`: verifies signed envelopes before any handler sees them.
//!
//! Refuses unsigned gossip (an all-zero signature), envelopes older than
//! `max_age_secs` or more than `max_future_secs` ahead of our clock, and
//! envelopes whose signature does not verify (the ZIP 215 rule with explicit
//! weak-key, small-order and canonical-encoding checks, see
//! [`crate::protocol::envelope`]). Other messages pass.
//!
//! # Batching
//! With `batch = true` (the default), envelopes from every connection go to
//! one node-wide verifier thread. It takes whatever is waiting, up to
//! `max_batch`, and checks it with one ed25519 batch equation (about twice
//! the single-signature rate); a lone envelope is verified on its own, so
//! batching adds no latency when the node is idle. A failed batch is
//! re-checked one by one so only the forgeries are refused (see
//! [`crate::protocol::verify_batch`]).
//!
//! # Security
//! `max_age_secs` should not exceed `dedup`'s TTL: an envelope that `dedup`
//! may already have forgotten is refused here as stale, so it cannot be
//! replayed. The verifier queue is bounded; when it is full, callers wait
//! (backpressure reaches the connection, which stops reading).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tower::{BoxError, Layer, Service};

use super::{Inbound, LayerCounters, Offence, Outcome, Rejection};
use crate::constants::SIGNATURE_BATCH_SIZE;
use crate::protocol::version::unix_now;
use crate::protocol::{verify_batch, Envelope, EnvelopeError, Message, Verified};

/// The layer's name in the config and in metrics.
pub const NAME: &str = "auth";

/// Envelopes waiting for the verifier thread, at most.
pub const VERIFIER_QUEUE: usize = 4_096;

/// Configuration of the `auth` layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Oldest acceptable envelope, in seconds (≤ dedup's TTL).
    pub max_age_secs: u64,
    /// How far ahead of our clock an envelope may be, in seconds.
    pub max_future_secs: u64,
    /// Verify on the node-wide batch verifier thread.
    pub batch: bool,
    /// Most envelopes per batch.
    pub max_batch: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            max_age_secs: 600,
            max_future_secs: 120,
            batch: true,
            max_batch: SIGNATURE_BATCH_SIZE,
        }
    }
}

impl AuthConfig {
    /// Checks the parameters.
    ///
    /// # Errors
    /// A message naming the bad parameter.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_age_secs == 0 {
            return Err("max_age_secs must be at least 1".into());
        }
        if !(1..=1024).contains(&self.max_batch) {
            return Err("max_batch must be between 1 and 1024".into());
        }
        Ok(())
    }
}

type Job = (Arc<Message>, oneshot::Sender<Result<(), EnvelopeError>>);

/// The node-wide batch verifier: a thread fed by a bounded queue.
#[derive(Clone, Debug)]
pub struct BatchVerifier {
    queue: mpsc::Sender<Job>,
}

impl BatchVerifier {
    /// Starts the verifier thread; it ends when the last handle is dropped.
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn start(magic: [u8; 4], max_batch: usize) -> std::io::Result<Self> {
        let (queue, mut rx) = mpsc::channel::<Job>(VERIFIER_QUEUE);
        std::thread::Builder::new()
            .name("timed-verify".into())
            .spawn(move || {
                let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
                while let Some(job) = rx.blocking_recv() {
                    jobs.push(job);
                    while jobs.len() < max_batch {
                        match rx.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    metrics::histogram!("timed_auth_batch_size").record(jobs.len() as f64);
                    let results = {
                        let envelopes: Vec<&Envelope> = jobs
                            .iter()
                            .filter_map(|(m, _)| match &**m {
                                Message::Gossip(e) => Some(e),
                                _ => None,
                            })
                            .collect();
                        if envelopes.len() == 1 {
                            vec![envelopes[0].verify(magic)]
                        } else {
                            verify_batch(&envelopes, magic)
                        }
                    };
                    for ((_, reply), result) in jobs.drain(..).zip(results) {
                        let _ = reply.send(result);
                    }
                }
            })?;
        Ok(BatchVerifier { queue })
    }

    /// Verifies the envelope in `message` (which must be `Gossip`).
    ///
    /// # Errors
    /// The envelope's error, or `BadSignature` if the verifier is gone.
    pub async fn verify(&self, message: Arc<Message>) -> Result<(), EnvelopeError> {
        let (tx, rx) = oneshot::channel();
        if self.queue.send((message, tx)).await.is_err() {
            return Err(EnvelopeError::BadSignature);
        }
        rx.await.unwrap_or(Err(EnvelopeError::BadSignature))
    }
}

/// The `auth` layer.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    config: Arc<AuthConfig>,
    magic: [u8; 4],
    verifier: Option<BatchVerifier>,
    counters: Arc<LayerCounters>,
}

impl AuthLayer {
    /// A layer for the network with `magic`. Starts the batch verifier
    /// thread when `config.batch` is set (falls back to inline
    /// verification if the thread cannot start).
    pub fn new(config: &AuthConfig, magic: [u8; 4]) -> Self {
        let verifier = if config.batch {
            match BatchVerifier::start(magic, config.max_batch) {
                Ok(v) => Some(v),
                Err(error) => {
                    tracing::warn!(%error, "cannot start the batch verifier; verifying inline");
                    None
                }
            }
        } else {
            None
        };
        AuthLayer {
            config: Arc::new(config.clone()),
            magic,
            verifier,
            counters: Arc::new(LayerCounters::default()),
        }
    }

    /// The decision counters.
    pub fn counters(&self) -> &Arc<LayerCounters> {
        &self.counters
    }

    /// Checks what is cheap to check: signature present, timestamp window.
    fn precheck(&self, envelope: &Envelope) -> Result<(), Rejection> {
        if envelope.signature == [0u8; 64] {
            return Err(Rejection::offence(
                NAME,
                "unsigned",
                Offence::InvalidSignature,
            ));
        }
        let now_ms = unix_now().as_millis() as u64;
        let max_age_ms = self.config.max_age_secs.saturating_mul(1000);
        let max_future_ms = self.config.max_future_secs.saturating_mul(1000);
        if envelope.timestamp_ms.saturating_add(max_age_ms) < now_ms {
            return Err(Rejection::benign(NAME, "stale"));
        }
        if envelope.timestamp_ms > now_ms.saturating_add(max_future_ms) {
            // Within a clock skew the version exchange allows, an honest
            // relay may have passed it on: dropped free. Beyond that no
            // honest relay accepted it: charged.
            let skew_ms = crate::constants::MAX_VERSION_CLOCK_SKEW.as_millis() as u64;
            if envelope.timestamp_ms > now_ms.saturating_add(max_future_ms).saturating_add(skew_ms)
            {
                return Err(Rejection::offence(NAME, "far_future", Offence::Malformed));
            }
            return Err(Rejection::benign(NAME, "future"));
        }
        Ok(())
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// The `auth` service.
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

fn rejection_of(error: &EnvelopeError) -> Rejection {
    match error {
        EnvelopeError::PayloadTooLarge { .. } => {
            Rejection::offence(NAME, "payload_too_large", Offence::Malformed)
        }
        EnvelopeError::InvalidOriginator => {
            Rejection::offence(NAME, "invalid_originator", Offence::InvalidSignature)
        }
        EnvelopeError::BadSignature => {
            Rejection::offence(NAME, "bad_signature", Offence::InvalidSignature)
        }
    }
}

impl<S> Service<Inbound> for Auth<S>
where
    S: Service<Inbound, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Outcome, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Inbound) -> Self::Future {
        let Message::Gossip(envelope) = &*request.message else {
            return Box::pin(self.inner.call(request));
        };
        if let Err(rejection) = self.layer.precheck(envelope) {
            self.layer.counters.reject(NAME, rejection.reason);
            return Box::pin(std::future::ready(Err(rejection.into())));
        }
        let layer = self.layer.clone();
        // The inner service was made ready for this call: take it, leave a
        // clone (tower's readiness contract for services called later).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let verdict = match (&layer.verifier, &*request.message) {
                (Some(verifier), _) => verifier.verify(request.message.clone()).await,
                (None, Message::Gossip(envelope)) => envelope.verify(layer.magic),
                (None, _) => Ok(()),
            };
            if let Err(error) = verdict {
                let rejection = rejection_of(&error);
                layer.counters.reject(NAME, rejection.reason);
                return Err(rejection.into());
            }
            layer.counters.accept(NAME);
            let proof = match &*request.message {
                Message::Gossip(envelope) => Some(Verified::checked(envelope)),
                _ => None,
            };
            let request = match proof {
                Some(proof) => request.with_proof(proof),
                None => request,
            };
            inner.call(request).await
        })
    }
}

impl crate::layers::stack::Middleware for AuthConfig {
    const NAME: &'static str = NAME;
    const WITHOUT: &'static str = "Envelopes reach the router unverified, marked as such; the router verifies each one itself, one at a time and off the async workers, before any handler sees it, so a forged envelope is still refused and charged.";
    type Layer = AuthLayer;

    fn validate(&self) -> Result<(), String> {
        AuthConfig::validate(self)
    }

    fn build(&self, shared: &crate::layers::shared::SharedState) -> AuthLayer {
        AuthLayer::new(self, shared.magic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::NodeIdentity;
    use crate::layers::test_support::{inbound, peer, CountingHandler};
    use crate::protocol::GossipKind;
    use std::sync::atomic::Ordering;

    const MAGIC: [u8; 4] = *b"TDEV";

    fn gossip(n: u8, age_ms: i64) -> Envelope {
        let id = NodeIdentity::from_secret_bytes(&[n; 32]);
        let ts = (unix_now().as_millis() as i64 - age_ms) as u64;
        Envelope::sign(&id, MAGIC, GossipKind::Vote, ts, vec![n; 250])
    }

    async fn run(batch: bool) {
        let layer = AuthLayer::new(
            &AuthConfig {
                batch,
                ..AuthConfig::default()
            },
            MAGIC,
        );
        let handler = CountingHandler::default();
        let svc = layer.layer(handler.clone());
        let p = peer([127, 0, 0, 1]);
        let mut forged = gossip(2, 0);
        forged.payload[0] ^= 1;
        let mut unsigned = gossip(3, 0);
        unsigned.signature = [0; 64];
        let cases = [
            (gossip(1, 0), None),
            (forged, Some("bad_signature")),
            (unsigned, Some("unsigned")),
            (gossip(4, 700_000), Some("stale")),
            (gossip(5, -200_000), Some("future")),
        ];
        for (envelope, expected) in cases {
            let mut svc = svc.clone();
            let result = svc.call(inbound(&p, Message::Gossip(envelope))).await;
            match expected {
                None => assert!(result.is_ok()),
                Some(reason) => {
                    assert_eq!(
                        Rejection::find(&result.unwrap_err()).unwrap().reason,
                        reason
                    )
                }
            }
        }
        assert_eq!(handler.0.load(Ordering::Relaxed), 1);
        // Non-gossip passes untouched.
        svc.clone()
            .call(inbound(&p, Message::GetPeers))
            .await
            .unwrap();
        assert_eq!(handler.0.load(Ordering::Relaxed), 2);
        assert_eq!(layer.counters().rejected("bad_signature"), 1);
    }

    #[tokio::test]
    async fn inline_verification_refuses_forgeries() {
        run(false).await;
    }

    #[tokio::test]
    async fn batch_verification_refuses_forgeries() {
        run(true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_envelopes_are_batched_and_only_forgeries_refused() {
        let layer = AuthLayer::new(&AuthConfig::default(), MAGIC);
        let handler = CountingHandler::default();
        let svc = layer.layer(handler.clone());
        let p = peer([127, 0, 0, 1]);
        let mut tasks = Vec::new();
        for n in 0..200u8 {
            let mut env = gossip(n, 0);
            if n % 10 == 0 {
                env.signature[5] ^= 1;
            }
            let mut svc = svc.clone();
            let req = inbound(&p, Message::Gossip(env));
            tasks.push(tokio::spawn(async move { svc.call(req).await.is_ok() }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap());
        }
        assert_eq!(ok, 180);
        assert_eq!(handler.0.load(Ordering::Relaxed), 180);
        assert_eq!(layer.counters().rejected("bad_signature"), 20);
    }
}

#![allow(clippy::unwrap_used, missing_docs)]
//! Middleware benchmarks: the inbound stack (blacklist, scoring, rate_limit,
//! dedup, auth) that every peer message goes through.
//!
//! Groups (see the issue):
//! - `per_layer`: each layer alone around a trivial handler (a service that
//!   returns `Outcome::Accepted`), for signed 250-byte gossip envelopes;
//!   `none` is the handler alone, for reference;
//! - `full_stack`: messages per second through the default stack (rate limits
//!   raised so nothing is refused, fresh envelopes so dedup never hits), next
//!   to the single-core verify rate (raw ed25519-dalek `verify_strict` of a
//!   250-byte message, and `Envelope::verify`). Targets:
//!   `stack_sequential` (auth.batch = false) >= 0.8 x verify rate;
//!   `stack_batched_256_in_flight` (auth.batch = true, ~256 calls in flight
//!   on a 2-worker runtime) >= 1.5 x verify rate. Every envelope has its
//!   own originator (the worst case for batching: the batch equation shares
//!   the work of signatures by one key); `..._16_originators` is the same
//!   with 16 originators in turn, for comparison;
//! - `dynamic_vs_static`: the config-built, boxed stack against the same
//!   layers composed statically with `tower::ServiceBuilder`, with and
//!   without auth. Target: dynamic / static <= 1.15.
//!
//! Every figure is per message (`Throughput::Elements(1)`). Envelopes (each
//! from its own originator unless said otherwise) are signed once per group
//! with the current time (auth refuses envelopes older than 600 s); the
//! stack under test is rebuilt (outside the measured time) whenever the pool
//! wraps around, so dedup never sees a repeat.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use ed25519_dalek::{Signer, SigningKey};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::runtime::Runtime;
use tower::util::BoxCloneService;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};

use timed::crypto::{NodeId, NodeIdentity};
use timed::layers::auth::{AuthConfig, AuthLayer};
use timed::layers::blacklist::{Blacklist, BlacklistConfig, BlacklistLayer};
use timed::layers::dedup::{DedupConfig, DedupLayer};
use timed::layers::rate_limit::{KindLimit, RateLimitConfig, RateLimitLayer};
use timed::layers::scoring::{ScoringConfig, ScoringLayer};
use timed::layers::stack::{InboundService, MiddlewareConfig, MiddlewareStack};
use timed::peer::Direction;
use timed::peer::{Inbound, Outcome, PeerContext, ScoreHandle};
use timed::protocol::{Envelope, GossipKind, Message};

const MAGIC: [u8; 4] = *b"TDEV";
const PAYLOAD_LEN: usize = 250;
/// Envelopes signed per group (about 20 µs each).
const POOL: usize = 20_000;
/// Originators in the small-network pool (the batch verifier groups the
/// signatures of one key, so few originators flatter batching).
const FEW_ORIGINATORS: usize = 16;
/// Calls in flight in the batched full-stack figure.
const IN_FLIGHT: usize = 256;

fn short<M: criterion::measurement::Measurement>(group: &mut BenchmarkGroup<'_, M>) {
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(1));
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `POOL` distinct signed 250-byte transaction envelopes, timestamped now,
/// from `originators` distinct identities in turn.
fn sign_pool(originators: usize) -> Arc<Vec<Arc<Message>>> {
    let ids: Vec<NodeIdentity> = (0..originators.min(POOL))
        .map(|n| {
            let mut seed = [0x5au8; 32];
            seed[..8].copy_from_slice(&(n as u64).to_le_bytes());
            NodeIdentity::from_secret_bytes(&seed)
        })
        .collect();
    let ts = now_ms();
    let messages = (0..POOL)
        .map(|i| {
            let mut payload = vec![0xa5u8; PAYLOAD_LEN];
            payload[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let env = Envelope::sign(
                &ids[i % ids.len()],
                MAGIC,
                GossipKind::Transaction,
                ts,
                payload,
            );
            Arc::new(Message::Gossip(env))
        })
        .collect();
    Arc::new(messages)
}

fn peer() -> Arc<PeerContext> {
    Arc::new(PeerContext::new(
        NodeId([7; 32]),
        SocketAddr::from(([127, 0, 0, 1], 24_200)),
        Direction::Inbound,
        1,
        ScoreHandle::default(),
    ))
}

/// The trivial handler: accepts everything.
#[derive(Clone, Copy, Debug)]
struct Accept;

impl Service<Inbound> for Accept {
    type Response = Outcome;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Outcome, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Inbound) -> Self::Future {
        std::future::ready(Ok(Outcome::Accepted))
    }
}

/// Rate limits so high that nothing is refused (the check costs the same).
fn unlimited() -> RateLimitConfig {
    let huge = KindLimit {
        count: 1_000_000_000,
        per_secs: 1,
        burst: None,
    };
    RateLimitConfig {
        tx: Some(huge),
        vote: Some(huge),
        block: huge,
        addr: huge,
        get_peers: huge,
        peers: huge,
        ping: huge,
        get_blocks: huge,
        get_mempool: huge,
        other: huge,
        per_ip: Some(huge),
        ..RateLimitConfig::default()
    }
}

fn auth_config(batch: bool) -> AuthConfig {
    AuthConfig {
        batch,
        ..AuthConfig::default()
    }
}

/// The default stack, in the default order, with `unlimited` rate limits;
/// without its auth entry unless `auth` is `Some(batch)`.
fn stack_configs(auth: Option<bool>) -> Vec<MiddlewareConfig> {
    MiddlewareConfig::default_stack()
        .into_iter()
        .filter_map(|c| match c.name() {
            "rate_limit" => Some(MiddlewareConfig::new(unlimited())),
            "auth" => auth.map(|batch| MiddlewareConfig::new(auth_config(batch))),
            _ => Some(c),
        })
        .collect()
}

/// The config-built (boxed per layer) stack around the trivial handler.
fn dynamic_stack(configs: &[MiddlewareConfig]) -> InboundService {
    MiddlewareStack::build(configs, MAGIC, Default::default()).wrap(BoxCloneService::new(Accept))
}

/// The same layers composed statically, all five.
fn static_stack_with_auth(
) -> impl Service<Inbound, Response = Outcome, Error = BoxError, Future: Send> + Clone {
    let blacklist = Arc::new(Blacklist::new(&BlacklistConfig::default()));
    ServiceBuilder::new()
        .layer(BlacklistLayer::new(blacklist.clone()))
        .layer(ScoringLayer::new(&ScoringConfig::default(), blacklist))
        .layer(RateLimitLayer::new(&unlimited(), Default::default()))
        .layer(DedupLayer::new(&DedupConfig::default()))
        .layer(AuthLayer::new(&auth_config(false), MAGIC))
        .service(Accept)
}

/// The same layers composed statically, without auth.
fn static_stack_without_auth(
) -> impl Service<Inbound, Response = Outcome, Error = BoxError, Future: Send> + Clone {
    let blacklist = Arc::new(Blacklist::new(&BlacklistConfig::default()));
    ServiceBuilder::new()
        .layer(BlacklistLayer::new(blacklist.clone()))
        .layer(ScoringLayer::new(&ScoringConfig::default(), blacklist))
        .layer(RateLimitLayer::new(&unlimited(), Default::default()))
        .layer(DedupLayer::new(&DedupConfig::default()))
        .service(Accept)
}

/// Sends `messages` one after the other (each call awaited before the next).
async fn drive_sequential<S>(svc: &mut S, peer: &Arc<PeerContext>, messages: &[Arc<Message>])
where
    S: Service<Inbound, Response = Outcome, Error = BoxError>,
{
    for message in messages {
        let request = Inbound::new(peer.clone(), message.clone());
        let outcome = svc.ready().await.unwrap().call(request).await.unwrap();
        debug_assert_eq!(outcome, Outcome::Accepted);
        black_box(outcome);
    }
}

/// `iters` sequential calls, cycling through `pool`; a fresh service from
/// `make` for every pass over the pool (built and dropped outside the
/// measured time).
fn sequential<S, F>(rt: &Runtime, pool: &[Arc<Message>], iters: u64, mut make: F) -> Duration
where
    S: Service<Inbound, Response = Outcome, Error = BoxError>,
    F: FnMut() -> S,
{
    rt.block_on(async {
        let peer = peer();
        let mut left = usize::try_from(iters).unwrap();
        let mut total = Duration::ZERO;
        while left > 0 {
            let n = left.min(pool.len());
            let mut svc = make();
            let start = Instant::now();
            drive_sequential(&mut svc, &peer, &pool[..n]).await;
            total += start.elapsed();
            drop(svc);
            left -= n;
        }
        total
    })
}

/// Sends `messages` with up to `in_flight` calls outstanding, each on its
/// own ready clone of `svc`.
async fn drive_concurrent<S>(
    svc: S,
    peer: Arc<PeerContext>,
    pool: Arc<Vec<Arc<Message>>>,
    n: usize,
    in_flight: usize,
) where
    S: Service<Inbound, Response = Outcome, Error = BoxError> + Clone,
{
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    while next < n || !pending.is_empty() {
        while next < n && pending.len() < in_flight {
            let request = Inbound::new(peer.clone(), pool[next].clone());
            pending.push(svc.clone().oneshot(request));
            next += 1;
        }
        if let Some(result) = pending.next().await {
            black_box(result.unwrap());
        }
    }
}

/// `iters` calls with `in_flight` outstanding, driven by one task of the
/// multi-thread runtime `rt`; a fresh service per pass over the pool.
fn concurrent<S, F>(
    rt: &Runtime,
    pool: &Arc<Vec<Arc<Message>>>,
    iters: u64,
    in_flight: usize,
    mut make: F,
) -> Duration
where
    S: Service<Inbound, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    F: FnMut() -> S,
{
    let peer = peer();
    let mut left = usize::try_from(iters).unwrap();
    let mut total = Duration::ZERO;
    while left > 0 {
        let n = left.min(pool.len());
        let svc = make();
        let (peer, pool) = (peer.clone(), pool.clone());
        let task = rt.spawn(async move {
            let start = Instant::now();
            drive_concurrent(svc, peer, pool, n, in_flight).await;
            start.elapsed()
        });
        total += rt.block_on(task).unwrap();
        left -= n;
    }
    total
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn per_layer(c: &mut Criterion) {
    let pool = sign_pool(POOL);
    let rt = current_thread();
    let mut group = c.benchmark_group("per_layer");
    short(&mut group);

    group.bench_function("none", |b| {
        b.iter_custom(|iters| sequential(&rt, &pool, iters, || Accept));
    });
    group.bench_function("blacklist", |b| {
        b.iter_custom(|iters| {
            sequential(&rt, &pool, iters, || {
                let blacklist = Arc::new(Blacklist::new(&BlacklistConfig::default()));
                BlacklistLayer::new(blacklist).layer(Accept)
            })
        });
    });
    group.bench_function("scoring", |b| {
        b.iter_custom(|iters| {
            sequential(&rt, &pool, iters, || {
                let blacklist = Arc::new(Blacklist::new(&BlacklistConfig::default()));
                ScoringLayer::new(&ScoringConfig::default(), blacklist).layer(Accept)
            })
        });
    });
    group.bench_function("rate_limit", |b| {
        b.iter_custom(|iters| {
            sequential(&rt, &pool, iters, || {
                RateLimitLayer::new(&unlimited(), Default::default()).layer(Accept)
            })
        });
    });
    group.bench_function("dedup", |b| {
        b.iter_custom(|iters| {
            sequential(&rt, &pool, iters, || {
                DedupLayer::new(&DedupConfig::default()).layer(Accept)
            })
        });
    });
    group.bench_function("auth_inline", |b| {
        b.iter_custom(|iters| {
            sequential(&rt, &pool, iters, || {
                AuthLayer::new(&auth_config(false), MAGIC).layer(Accept)
            })
        });
    });
    group.finish();
}

fn full_stack(c: &mut Criterion) {
    let pool = sign_pool(POOL);
    let rt = current_thread();
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("full_stack");
    short(&mut group);

    // The single-core verify rate, for reference.
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let vk = key.verifying_key();
    let body = vec![0xa5u8; PAYLOAD_LEN];
    let sig = key.sign(&body);
    group.bench_function("raw_ed25519_verify_strict_250B", |b| {
        b.iter(|| vk.verify_strict(black_box(&body), black_box(&sig)).unwrap());
    });
    let Message::Gossip(envelope) = &*pool[0] else {
        unreachable!("the pool holds gossip")
    };
    group.bench_function("envelope_verify_250B", |b| {
        b.iter(|| black_box(envelope).verify(MAGIC).unwrap());
    });

    let sequential_configs = stack_configs(Some(false));
    group.bench_function("stack_sequential", |b| {
        b.iter_custom(|iters| sequential(&rt, &pool, iters, || dynamic_stack(&sequential_configs)));
    });
    let batched_configs = stack_configs(Some(true));
    group.bench_function("stack_batched_256_in_flight", |b| {
        b.iter_custom(|iters| {
            concurrent(&mt, &pool, iters, IN_FLIGHT, || {
                dynamic_stack(&batched_configs)
            })
        });
    });
    // Diagnostic: a small network, where the 64 signatures of a batch come
    // from only 16 originators and the batch equation shares their keys.
    let few = sign_pool(FEW_ORIGINATORS);
    group.bench_function("stack_batched_256_in_flight_16_originators", |b| {
        b.iter_custom(|iters| {
            concurrent(&mt, &few, iters, IN_FLIGHT, || {
                dynamic_stack(&batched_configs)
            })
        });
    });
    group.finish();
}

fn dynamic_vs_static(c: &mut Criterion) {
    let pool = sign_pool(POOL);
    let rt = current_thread();
    let mut group = c.benchmark_group("dynamic_vs_static");
    short(&mut group);

    let with_auth = stack_configs(Some(false));
    group.bench_function("dynamic_with_auth", |b| {
        b.iter_custom(|iters| sequential(&rt, &pool, iters, || dynamic_stack(&with_auth)));
    });
    group.bench_function("static_with_auth", |b| {
        b.iter_custom(|iters| sequential(&rt, &pool, iters, static_stack_with_auth));
    });
    let without_auth = stack_configs(None);
    group.bench_function("dynamic_without_auth", |b| {
        b.iter_custom(|iters| sequential(&rt, &pool, iters, || dynamic_stack(&without_auth)));
    });
    group.bench_function("static_without_auth", |b| {
        b.iter_custom(|iters| sequential(&rt, &pool, iters, static_stack_without_auth));
    });
    group.finish();
}

criterion_group!(benches, per_layer, full_stack, dynamic_vs_static);
criterion_main!(benches);

#![allow(clippy::unwrap_used, missing_docs)]
//! Transport benchmarks: encrypted bulk throughput against plain TCP, and
//! connection setup against the cost of its cryptography alone.
//!
//! Targets (see the issue):
//! - `bulk_1mib`: encrypted / plain throughput >= 0.5 for each backend;
//! - `connection_setup`: full setup time / crypto-only time <= 1.5.
//!
//! The target figures run both sides of a connection on a 2-worker
//! multi-thread runtime so that the sender and the receiver can work in
//! parallel, as on a real node. Diagnostics next to them:
//! - `bulk_1mib/*_two_threads`: sender and receiver each on its own OS thread
//!   (own current-thread runtime), so they are always in parallel; the
//!   multi-thread runtime does not guarantee that the two tasks sit on
//!   different workers, and its figures vary more from run to run;
//! - `frame_codec_1mib`: single-thread ceilings: the AEAD alone, and the frame
//!   codec's encode + decode of 1 MiB in memory;
//! - `connection_setup/full_tcp_noise_version/one_task`: both sides in one
//!   task of a current-thread runtime; `snow_xx_only`: bare snow XX.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_util::codec::{Decoder, Encoder, Framed, FramedParts};

use timed::constants::{DEFAULT_MAX_FRAME_LEN, MAX_NOISE_MESSAGE_LEN, MAX_NOISE_PLAINTEXT_LEN};
use timed::crypto::NodeIdentity;
use timed::params::Network;
use timed::peer::{establish, Direction, HandshakeConfig};
use timed::protocol::VersionParams;
use timed::transport::noise::{handshake, CryptoBackend, LocalKeys};
use timed::transport::{FrameCodec, RekeyPolicy};

#[path = "support/bulk.rs"]
mod bulk;
use bulk::{noise_pair, noise_round, tcp_pair, FramedNoise, MAGIC, MSG_LEN};

/// Not the protocol's suite: a reference for the cost of the cipher.
const AESGCM_REFERENCE: &str = "Noise_XX_25519_AESGCM_SHA256";

fn multi_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn current_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// As [`noise_pair`] with ring's AES-256-GCM instead of ChaCha20-Poly1305
/// (a reference, not the protocol): the sessions come from an in-memory XX
/// handshake.
async fn aesgcm_reference_pair() -> (FramedNoise, FramedNoise) {
    let (ti, tr) = snow_transport_pair(AESGCM_REFERENCE);
    let (dialed, accepted) = tcp_pair().await;
    let codec = |session| FrameCodec::new(session, DEFAULT_MAX_FRAME_LEN, RekeyPolicy::default());
    (
        Framed::new(dialed, codec(ti)),
        Framed::new(accepted, codec(tr)),
    )
}

/// Sends `n` messages from `tx` to `rx` and returns the time from the first
/// write until the receiver has read all of them.
async fn plain_round(
    mut tx: TcpStream,
    mut rx: TcpStream,
    payload: Arc<Vec<u8>>,
    n: u64,
) -> (TcpStream, TcpStream, Duration) {
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..n {
            tx.write_all(&payload).await.unwrap();
        }
        tx
    });
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; MSG_LEN];
        for _ in 0..n {
            rx.read_exact(&mut buf).await.unwrap();
        }
        let elapsed = start.elapsed();
        (rx, elapsed)
    });
    let tx = writer.await.unwrap();
    let (rx, elapsed) = reader.await.unwrap();
    (tx, rx, elapsed)
}

/// Runs `writer` and `reader` each on its own OS thread with its own
/// current-thread runtime (so they are always in parallel), starting both
/// at once; returns what they return and the time from the start until the
/// reader finished.
fn on_two_threads<W, R, WF, RF, WO, RO>(writer: W, reader: R) -> (WO, RO, Duration)
where
    W: FnOnce() -> WF + Send + 'static,
    R: FnOnce() -> RF + Send + 'static,
    WF: std::future::Future<Output = WO>,
    RF: std::future::Future<Output = RO>,
    WO: Send + 'static,
    RO: Send + 'static,
{
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let wb = Arc::clone(&barrier);
    let w = std::thread::spawn(move || {
        let rt = current_thread_runtime();
        let fut = {
            let _context = rt.enter();
            writer()
        };
        wb.wait();
        rt.block_on(fut)
    });
    let r = std::thread::spawn(move || {
        let rt = current_thread_runtime();
        let fut = {
            let _context = rt.enter();
            reader()
        };
        barrier.wait();
        let start = Instant::now();
        let out = rt.block_on(fut);
        (out, start.elapsed())
    });
    let wo = w.join().unwrap();
    let (ro, elapsed) = r.join().unwrap();
    (wo, ro, elapsed)
}

fn bulk_1mib(c: &mut Criterion) {
    let rt = multi_thread_runtime();
    let mut group = c.benchmark_group("bulk_1mib");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Bytes(MSG_LEN as u64));

    let payload: Vec<u8> = (0..MSG_LEN).map(|i| (i % 251) as u8).collect();

    let plain_payload = Arc::new(payload.clone());
    let mut pair = Some(rt.block_on(tcp_pair()));
    group.bench_function("plain_tcp", |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = pair.take().unwrap();
            let (tx, rx, elapsed) =
                rt.block_on(plain_round(tx, rx, Arc::clone(&plain_payload), iters));
            pair = Some((tx, rx));
            elapsed
        });
    });

    let noise_payload = Bytes::from(payload);
    for (name, backend) in [
        ("noise_ring", CryptoBackend::Ring),
        ("noise_rustcrypto", CryptoBackend::RustCrypto),
    ] {
        let mut pair = Some(rt.block_on(noise_pair(backend)));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let (tx, rx) = pair.take().unwrap();
                let (tx, rx, elapsed) =
                    rt.block_on(noise_round(tx, rx, noise_payload.clone(), iters));
                pair = Some((tx, rx));
                elapsed
            });
        });
    }

    // Reference: the same frames with ring's AES-256-GCM instead of
    // ChaCha20-Poly1305 (sessions keyed by an in-memory XX handshake).
    let mut pair = Some(rt.block_on(aesgcm_reference_pair()));
    group.bench_function("noise_aesgcm_ring_reference", |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = pair.take().unwrap();
            let (tx, rx, elapsed) = rt.block_on(noise_round(tx, rx, noise_payload.clone(), iters));
            pair = Some((tx, rx));
            elapsed
        });
    });

    // Diagnostic: sender and receiver pinned to their own threads.
    let (tx, rx) = rt.block_on(tcp_pair());
    let mut pair = Some((tx.into_std().unwrap(), rx.into_std().unwrap()));
    let pp = Arc::clone(&plain_payload);
    group.bench_function("plain_tcp_two_threads", |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = pair.take().unwrap();
            let payload = Arc::clone(&pp);
            let (tx, rx, elapsed) = on_two_threads(
                move || {
                    let mut tx = TcpStream::from_std(tx).unwrap();
                    async move {
                        for _ in 0..iters {
                            tx.write_all(&payload).await.unwrap();
                        }
                        tx.into_std().unwrap()
                    }
                },
                move || {
                    let mut rx = TcpStream::from_std(rx).unwrap();
                    async move {
                        let mut buf = vec![0u8; MSG_LEN];
                        for _ in 0..iters {
                            rx.read_exact(&mut buf).await.unwrap();
                        }
                        rx.into_std().unwrap()
                    }
                },
            );
            pair = Some((tx, rx));
            elapsed
        });
    });
    for (name, backend) in [
        ("noise_ring_two_threads", Some(CryptoBackend::Ring)),
        (
            "noise_rustcrypto_two_threads",
            Some(CryptoBackend::RustCrypto),
        ),
        ("noise_aesgcm_ring_reference_two_threads", None),
    ] {
        let (tx, rx) = match backend {
            Some(backend) => rt.block_on(noise_pair(backend)),
            None => rt.block_on(aesgcm_reference_pair()),
        };
        let (tx, rx) = (tx.into_parts(), rx.into_parts());
        let mut pair = Some((
            (tx.io.into_std().unwrap(), tx.codec),
            (rx.io.into_std().unwrap(), rx.codec, rx.read_buf),
        ));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let ((txio, txc), (rxio, rxc, rxbuf)) = pair.take().unwrap();
                let payload = noise_payload.clone();
                let (tx, rx, elapsed) = on_two_threads(
                    move || {
                        let mut tx = Framed::new(TcpStream::from_std(txio).unwrap(), txc);
                        async move {
                            for _ in 0..iters {
                                tx.send(payload.clone()).await.unwrap();
                            }
                            let p = tx.into_parts();
                            (p.io.into_std().unwrap(), p.codec)
                        }
                    },
                    move || {
                        let mut parts =
                            FramedParts::new::<Bytes>(TcpStream::from_std(rxio).unwrap(), rxc);
                        parts.read_buf = rxbuf;
                        let mut rx = Framed::from_parts(parts);
                        async move {
                            for _ in 0..iters {
                                let frame = rx.next().await.unwrap().unwrap();
                                assert_eq!(frame.len(), MSG_LEN);
                            }
                            // Keep any record read past the last frame (a
                            // trailing REKEY) for the next round.
                            let p = rx.into_parts();
                            (p.io.into_std().unwrap(), p.codec, p.read_buf)
                        }
                    },
                );
                pair = Some((tx, rx));
                elapsed
            });
        });
    }
    group.finish();
}

/// A pair of Noise transport sessions (initiator, responder) set up over an
/// in-memory pipe.
async fn memory_sessions(backend: CryptoBackend) -> (snow::TransportState, snow::TransportState) {
    let a = LocalKeys::new(&NodeIdentity::generate(), backend).unwrap();
    let b = LocalKeys::new(&NodeIdentity::generate(), backend).unwrap();
    let (mut x, mut y) = tokio::io::duplex(4096);
    let (ra, rb) = tokio::join!(
        handshake(&mut x, &a, MAGIC, true, None),
        handshake(&mut y, &b, MAGIC, false, None)
    );
    (ra.unwrap().0, rb.unwrap().0)
}

/// Single-thread ceilings under `bulk_1mib`: the AEAD alone (snow
/// `write_message` on 64 KiB records) and the frame codec (encode + decode of
/// 1 MiB in memory, all copies included).
fn frame_codec_1mib(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let mut group = c.benchmark_group("frame_codec_1mib");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Bytes(MSG_LEN as u64));
    let payload: Vec<u8> = (0..MSG_LEN).map(|i| (i % 251) as u8).collect();
    for (name, backend) in [
        ("ring", CryptoBackend::Ring),
        ("rustcrypto", CryptoBackend::RustCrypto),
    ] {
        let (mut seal, _) = rt.block_on(memory_sessions(backend));
        let mut out = vec![0u8; MAX_NOISE_MESSAGE_LEN];
        group.bench_function(format!("aead_seal_only_{name}"), |b| {
            b.iter(|| {
                for chunk in payload.chunks(MAX_NOISE_PLAINTEXT_LEN) {
                    seal.write_message(chunk, &mut out).unwrap();
                }
            });
        });
        let (tx, rx) = rt.block_on(memory_sessions(backend));
        let mut enc = FrameCodec::new(tx, DEFAULT_MAX_FRAME_LEN, RekeyPolicy::default());
        let mut dec = FrameCodec::new(rx, DEFAULT_MAX_FRAME_LEN, RekeyPolicy::default());
        let mut wire = BytesMut::new();
        group.bench_function(format!("encode_plus_decode_{name}"), |b| {
            b.iter(|| {
                Encoder::<&[u8]>::encode(&mut enc, &payload, &mut wire).unwrap();
                let frame = dec.decode(&mut wire).unwrap().unwrap();
                assert_eq!(frame.len(), MSG_LEN);
            });
        });
    }

    // Reference for the choice of cipher: ring's AES-256-GCM (AES-NI) in the
    // same Noise pattern. Not what the protocol uses.
    let (mut seal, _) = snow_transport_pair(AESGCM_REFERENCE);
    let mut out = vec![0u8; MAX_NOISE_MESSAGE_LEN];
    group.bench_function("aead_seal_only_aesgcm_ring_reference", |b| {
        b.iter(|| {
            for chunk in payload.chunks(MAX_NOISE_PLAINTEXT_LEN) {
                seal.write_message(chunk, &mut out).unwrap();
            }
        });
    });
    group.finish();
}

/// A snow builder for `name` with the ring resolver (RustCrypto fallback),
/// as `CryptoBackend::Ring` builds them.
fn ring_builder(name: &str) -> snow::Builder<'static> {
    use snow::resolvers::{DefaultResolver, FallbackResolver, RingResolver};
    snow::Builder::with_resolver(
        name.parse().unwrap(),
        Box::new(FallbackResolver::new(
            Box::new(RingResolver),
            Box::new(DefaultResolver),
        )),
    )
}

/// Runs an XX handshake for `name` in memory; returns the transport states
/// (initiator, responder).
fn snow_transport_pair(name: &str) -> (snow::TransportState, snow::TransportState) {
    let ki = ring_builder(name).generate_keypair().unwrap();
    let kr = ring_builder(name).generate_keypair().unwrap();
    let mut i = ring_builder(name)
        .local_private_key(&ki.private)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut r = ring_builder(name)
        .local_private_key(&kr.private)
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut msg, mut out) = ([0u8; 1024], [0u8; 1024]);
    let len = i.write_message(&[], &mut msg).unwrap();
    r.read_message(&msg[..len], &mut out).unwrap();
    let len = r.write_message(&[], &mut msg).unwrap();
    i.read_message(&msg[..len], &mut out).unwrap();
    let len = i.write_message(&[], &mut msg).unwrap();
    r.read_message(&msg[..len], &mut out).unwrap();
    (
        i.into_transport_mode().unwrap(),
        r.into_transport_mode().unwrap(),
    )
}

struct SetupFixture {
    listener: TcpListener,
    addr: SocketAddr,
    dialer: LocalKeys,
    acceptor: LocalKeys,
    config: HandshakeConfig,
}

impl SetupFixture {
    async fn new(backend: CryptoBackend) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Arc::new(SetupFixture {
            listener,
            addr,
            dialer: LocalKeys::new(&NodeIdentity::generate(), backend).unwrap(),
            acceptor: LocalKeys::new(&NodeIdentity::generate(), backend).unwrap(),
            config: HandshakeConfig::new(VersionParams::new(Network::Devnet)),
        })
    }

    /// Accepts one connection and runs the inbound side of the setup.
    async fn accept_one(self: Arc<Self>) {
        let (stream, _) = self.listener.accept().await.unwrap();
        let conn = establish(
            stream,
            Direction::Inbound,
            None,
            &self.acceptor,
            &self.config,
            0,
        )
        .await
        .unwrap();
        drop(conn);
    }

    /// Dials and runs the outbound side of the setup.
    async fn dial_one(&self) {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let conn = establish(
            stream,
            Direction::Outbound,
            Some(self.acceptor.node_id()),
            &self.dialer,
            &self.config,
            0,
        )
        .await
        .unwrap();
        drop(conn);
    }
}

/// `n` full connection setups, one after the other; the inbound side of each
/// runs in its own task (so on the other worker when one is free).
async fn full_setups(fixture: Arc<SetupFixture>, n: u64) -> Duration {
    let task = tokio::spawn(async move {
        let start = Instant::now();
        for _ in 0..n {
            let inbound = tokio::spawn(Arc::clone(&fixture).accept_one());
            fixture.dial_one().await;
            inbound.await.unwrap();
        }
        start.elapsed()
    });
    task.await.unwrap()
}

/// `n` full connection setups with both sides in one task (no cross-thread
/// wake-ups): for diagnosis.
async fn full_setups_one_task(fixture: Arc<SetupFixture>, n: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        tokio::join!(Arc::clone(&fixture).accept_one(), fixture.dial_one());
    }
    start.elapsed()
}

/// `n` Noise XX handshakes (including both identity-payload verifications)
/// over in-memory pipes, both sides in one thread: the crypto of a setup.
async fn crypto_only_setups(fixture: Arc<SetupFixture>, n: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        let (mut x, mut y) = tokio::io::duplex(4096);
        let (ra, rb) = tokio::join!(
            handshake(&mut x, &fixture.dialer, MAGIC, true, None),
            handshake(&mut y, &fixture.acceptor, MAGIC, false, None)
        );
        ra.unwrap();
        rb.unwrap();
    }
    start.elapsed()
}

/// `n` bare snow XX handshakes, no identity payloads or verifications, over
/// stack buffers: the floor under `crypto_only`.
fn snow_only_setups(n: u64) -> Duration {
    let builder = || ring_builder(timed::constants::NOISE_PROTOCOL_NAME);
    let ki = builder().generate_keypair().unwrap();
    let kr = builder().generate_keypair().unwrap();
    let prologue = timed::transport::noise::prologue(MAGIC);
    let payload = [7u8; timed::transport::noise::IDENTITY_PAYLOAD_LEN];
    let mut msg = [0u8; 1024];
    let mut out = [0u8; 1024];
    let start = Instant::now();
    for _ in 0..n {
        let mut i = builder()
            .local_private_key(&ki.private)
            .unwrap()
            .prologue(&prologue)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut r = builder()
            .local_private_key(&kr.private)
            .unwrap()
            .prologue(&prologue)
            .unwrap()
            .build_responder()
            .unwrap();
        let len = i.write_message(&[], &mut msg).unwrap();
        r.read_message(&msg[..len], &mut out).unwrap();
        let len = r.write_message(&payload, &mut msg).unwrap();
        i.read_message(&msg[..len], &mut out).unwrap();
        let len = i.write_message(&payload, &mut msg).unwrap();
        r.read_message(&msg[..len], &mut out).unwrap();
        let _ = (
            i.into_transport_mode().unwrap(),
            r.into_transport_mode().unwrap(),
        );
    }
    start.elapsed()
}

fn connection_setup(c: &mut Criterion) {
    let mt = multi_thread_runtime();
    let ct = current_thread_runtime();
    let mut group = c.benchmark_group("connection_setup");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));

    let backend = CryptoBackend::Ring;
    let fixture = mt.block_on(SetupFixture::new(backend));
    group.bench_function(BenchmarkId::new("full_tcp_noise_version", "mt2"), |b| {
        b.iter_custom(|iters| mt.block_on(full_setups(Arc::clone(&fixture), iters)));
    });
    drop(fixture);

    let fixture = ct.block_on(SetupFixture::new(backend));
    group.bench_function(
        BenchmarkId::new("full_tcp_noise_version", "one_task"),
        |b| {
            b.iter_custom(|iters| ct.block_on(full_setups_one_task(Arc::clone(&fixture), iters)));
        },
    );

    group.bench_function("crypto_only_noise_xx_verify", |b| {
        b.iter_custom(|iters| ct.block_on(crypto_only_setups(Arc::clone(&fixture), iters)));
    });

    group.bench_function("snow_xx_only", |b| b.iter_custom(snow_only_setups));
    group.finish();
}

criterion_group!(benches, bulk_1mib, frame_codec_1mib, connection_setup);
criterion_main!(benches);

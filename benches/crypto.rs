#![allow(clippy::unwrap_used, missing_docs)]
//! Signature and codec benchmarks: envelope sign / verify / batch verify
//! (with raw ed25519-dalek for reference), and message encode / decode.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput,
};
use ed25519_dalek::{Signer, SigningKey};

use timed::crypto::NodeIdentity;
use timed::params::Network;
use timed::protocol::codec::{decode_message, encode_message};
use timed::protocol::{verify_batch, Envelope, GossipKind, Message, Ping, VersionParams};

const MAGIC: [u8; 4] = *b"TDEV";
const PAYLOAD_LEN: usize = 250;
const BATCH: usize = 64;
const TIMESTAMP_MS: u64 = 1_700_000_000_000;

fn short<M: criterion::measurement::Measurement>(group: &mut BenchmarkGroup<'_, M>) {
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
}

fn identity(n: u8) -> NodeIdentity {
    NodeIdentity::from_secret_bytes(&[n.wrapping_add(1); 32])
}

fn payload(n: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_add(n)).collect()
}

fn envelope(n: u8, len: usize) -> Envelope {
    Envelope::sign(
        &identity(n),
        MAGIC,
        GossipKind::Transaction,
        TIMESTAMP_MS,
        payload(n, len),
    )
}

fn envelope_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    short(&mut group);
    group.throughput(Throughput::Elements(1));

    let id = identity(0);
    let body = payload(0, PAYLOAD_LEN);
    group.bench_function("sign_250B", |b| {
        b.iter_batched(
            || body.clone(),
            |p| Envelope::sign(&id, MAGIC, GossipKind::Transaction, TIMESTAMP_MS, p),
            BatchSize::SmallInput,
        );
    });

    let env = envelope(0, PAYLOAD_LEN);
    group.bench_function("verify_250B", |b| {
        b.iter(|| black_box(&env).verify(MAGIC).unwrap());
    });

    // Reference: raw ed25519-dalek on a 250-byte message (no digest, no key
    // decompression).
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let vk = key.verifying_key();
    let sig = key.sign(&body);
    group.bench_function("raw_ed25519_sign_250B", |b| {
        b.iter(|| key.sign(black_box(&body)));
    });
    group.bench_function("raw_ed25519_verify_strict_250B", |b| {
        b.iter(|| vk.verify_strict(black_box(&body), &sig).unwrap());
    });

    let envs: Vec<Envelope> = (0..BATCH as u8).map(|n| envelope(n, PAYLOAD_LEN)).collect();
    let refs: Vec<&Envelope> = envs.iter().collect();
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("verify_batch_64x250B", |b| {
        b.iter(|| {
            let results = verify_batch(black_box(&refs), MAGIC);
            assert!(results.iter().all(Result::is_ok));
        });
    });
    // Reference: the raw batch equation on the same 64 digests.
    let digests: Vec<[u8; 32]> = envs.iter().map(|e| e.digest(MAGIC)).collect();
    let messages: Vec<&[u8]> = digests.iter().map(|d| d.as_slice()).collect();
    let sigs: Vec<ed25519_dalek::Signature> = envs
        .iter()
        .map(|e| ed25519_dalek::Signature::from_bytes(&e.signature))
        .collect();
    let keys: Vec<ed25519_dalek::VerifyingKey> = envs
        .iter()
        .map(|e| ed25519_dalek::VerifyingKey::from_bytes(&e.originator).unwrap())
        .collect();
    group.bench_function("raw_ed25519_verify_batch_64", |b| {
        b.iter(|| ed25519_dalek::verify_batch(black_box(&messages), &sigs, &keys).unwrap());
    });
    // Reference: the per-envelope point work `verify_batch` adds on top of
    // the batch equation (key decompression + weak check, R decompression +
    // small-order check), 64 times.
    group.bench_function("key_and_r_checks_64", |b| {
        b.iter(|| {
            for e in black_box(&envs) {
                let key = ed25519_dalek::VerifyingKey::from_bytes(&e.originator).unwrap();
                assert!(!key.is_weak());
                let mut r = [0u8; 32];
                r.copy_from_slice(&e.signature[..32]);
                let point = curve25519_dalek::edwards::CompressedEdwardsY(r)
                    .decompress()
                    .unwrap();
                assert!(!point.is_small_order());
            }
        });
    });
    group.finish();
}

fn codec_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    short(&mut group);

    let version = VersionParams::new(Network::Devnet).build(identity(0).node_id(), 123_456);
    let messages = [
        (
            "ping",
            Message::Ping(Ping {
                nonce: 0x0123_4567_89ab_cdef,
                timestamp_ms: TIMESTAMP_MS,
            }),
        ),
        ("version", Message::Version(version)),
        ("gossip_250B", Message::Gossip(envelope(1, PAYLOAD_LEN))),
        ("gossip_1MiB", Message::Gossip(envelope(2, 1 << 20))),
    ];
    for (name, message) in &messages {
        let bytes = encode_message(message).unwrap();
        if bytes.len() > 64 * 1024 {
            group.throughput(Throughput::Bytes(bytes.len() as u64));
        } else {
            group.throughput(Throughput::Elements(1));
        }
        group.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| encode_message(black_box(message)).unwrap());
        });
        group.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| decode_message(black_box(&bytes)).unwrap());
        });
        assert_eq!(&decode_message(&bytes).unwrap(), message);
    }
    group.finish();
}

criterion_group!(benches, envelope_benches, codec_benches);
criterion_main!(benches);

#![allow(clippy::unwrap_used, missing_docs)]
//! Bounded maps on the paths a peer can drive: the cost of inserting a *new*
//! key into a full score book, ban list and dedup cache, at 1,000 and 10,000
//! entries. Insertion in O(1) shows as about the same figure at both sizes.
//!
//! Groups (each at capacity 1,000 and 10,000, one new key per iteration, the
//! structure full before and after):
//! - `score_book/new_id`: `ScoreBook::handle` for a node id never seen, in a
//!   book full of ids with a live (−5) score, as an attacker minting
//!   identities does;
//! - `score_book/new_id_penalised`: the same, and the new id is charged −5
//!   at once (every entry is live: nothing decayed to evict);
//! - `blacklist/new_violation`: `Blacklist::record_violation` from a new IP
//!   in a table full of violation records;
//! - `blacklist/new_violation_full_of_bans`: the same in a table full of
//!   one-hour bans;
//! - `blacklist/new_ban_full_of_bans`: `Blacklist::ban_ip` of a new IP in a
//!   table full of one-hour bans (each evicts the ban that ends first);
//! - `dedup/new_id`: `DedupCache::reserve` then `commit` of a new message id
//!   in a cache full of seen ids.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use timed::crypto::NodeId;
use timed::layers::blacklist::{Blacklist, BlacklistConfig};
use timed::layers::dedup::DedupCache;
use timed::layers::scoring::ScoreBook;
use timed::protocol::MessageId;

/// The capacities compared.
const SIZES: [usize; 2] = [1_000, 10_000];

const HALF_LIFE: Duration = Duration::from_secs(600);

/// A distinct 32-byte key for every `n`.
fn key(n: u64) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&n.to_le_bytes());
    k[8..16].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    k
}

/// A distinct IPv4 address for every `n` (from 11.0.0.0 upward).
fn ip(n: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0b00_0000u32.wrapping_add(n as u32)))
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    group
}

fn score_book(c: &mut Criterion) {
    let mut group = group(c, "score_book");
    for penalised in [false, true] {
        let name = if penalised {
            "new_id_penalised"
        } else {
            "new_id"
        };
        for size in SIZES {
            let book = ScoreBook::with_capacity(HALF_LIFE, size);
            let from: IpAddr = [10, 0, 0, 1].into();
            for n in 0..size as u64 {
                book.handle(NodeId(key(n)), from).add(-5.0, HALF_LIFE);
            }
            let mut next = size as u64;
            group.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| {
                    let handle = book.handle(NodeId(key(next)), from);
                    if penalised {
                        handle.add(-5.0, HALF_LIFE);
                    }
                    next += 1;
                    black_box(handle)
                })
            });
        }
    }
    group.finish();
}

fn blacklist(c: &mut Criterion) {
    let mut group = group(c, "blacklist");
    for (name, bans, ban_new) in [
        ("new_violation", false, false),
        ("new_violation_full_of_bans", true, false),
        ("new_ban_full_of_bans", true, true),
    ] {
        for size in SIZES {
            let list = Blacklist::new(&BlacklistConfig {
                max_entries: size,
                ..BlacklistConfig::default()
            });
            for n in 0..size as u64 {
                if bans {
                    list.ban_ip(ip(n), Some(Duration::from_secs(3600)), "score");
                } else {
                    list.record_violation(ip(n), "bench");
                }
            }
            assert_eq!(list.tracked(), size);
            let mut next = size as u64;
            group.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| {
                    let ban = if ban_new {
                        list.ban_ip(ip(next), Some(Duration::from_secs(3600)), "score");
                        None
                    } else {
                        list.record_violation(ip(next), "bench")
                    };
                    next += 1;
                    black_box(ban)
                })
            });
            assert!(list.tracked() <= size);
        }
    }
    group.finish();
}

fn dedup(c: &mut Criterion) {
    let mut group = group(c, "dedup");
    for size in SIZES {
        let cache = DedupCache::new(Duration::from_secs(600), size);
        for n in 0..size as u64 {
            let id = MessageId(key(n));
            assert!(cache.reserve(id));
            cache.commit(id);
        }
        let mut next = size as u64;
        group.bench_function(BenchmarkId::new("new_id", size), |b| {
            b.iter(|| {
                let id = MessageId(key(next));
                next += 1;
                let fresh = cache.reserve(id);
                cache.commit(id);
                black_box(fresh)
            })
        });
        assert!(cache.len() <= size);
    }
    group.finish();
}

criterion_group!(benches, score_book, blacklist, dedup);
criterion_main!(benches);

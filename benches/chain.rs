#![allow(clippy::unwrap_used, missing_docs)]
//! Chain benchmarks: transaction validation, block application and sync
//! over loopback, against the encrypted bulk throughput of the transport.
//!
//! Groups:
//! - `chain/tx_validate`: `Transaction::validate` of a 1-input 2-output
//!   ed25519 payment against an in-memory UTXO map and against the redb
//!   store (`txid` next to them: the id a block's path computes several
//!   times per transaction);
//! - `chain/block_apply`: `Chain::handle_block` (full validation + one
//!   atomic redb write with its fsync) of blocks of 0, 10 and 100
//!   transactions, prepared beforehand, on a fresh chain;
//! - `chain/sync`: a fresh in-process node syncing a seed node's chain of
//!   [`SYNC_BLOCKS`] blocks of [`SYNC_TXS`] transactions over loopback (each
//!   iteration a full sync of a fresh node), and in the same run the
//!   encrypted bulk throughput the way `benches/transport.rs` measures it (a
//!   Noise session over loopback pushing 1 MiB messages). The issue's
//!   target is sync MB/s / bulk MB/s >= 0.5.
//!
//! The seed chain's preparation also times where a node's time goes when it
//! applies that chain locally: decoding, validation alone (in memory),
//! storage alone (`Store::apply_block`, fsync included), the bare fsync of
//! the disk, and `Chain::handle_block` (both). A summary table is printed at
//! the end.
//!
//! All blocks live in past slots of a devnet genesis (2026-01-01) with one
//! masternode; every node here runs with `masternode: false`, so no producer
//! interferes.

use std::collections::{HashMap, VecDeque};
use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use tempfile::TempDir;
use tokio::runtime::Runtime;

use timed::app::Node;
use timed::chain::genesis::Genesis;
use timed::chain::{Address, Block, OutPoint, Transaction, TxOut, UtxoView, COIN};
use timed::crypto::{NodeIdentity, PublicKey, Signature, SignatureScheme};
use timed::encoding;
use timed::network::{NetworkConfig, PeerTarget};
use timed::params::Network;
use timed::peer::HandshakeConfig;
use timed::protocol::VersionParams;
use timed::state::{BlockOutcome, Chain, ChainOptions};
use timed::storage::{Store, DB_FILE};
use timed::transport::noise::CryptoBackend;
use timed::wallet::Wallet;

/// Blocks of the seed chain for `chain/sync`.
const SYNC_BLOCKS: u64 = 2_000;
/// Transactions per block of the seed chain.
const SYNC_TXS: usize = 10;
/// Wallets of the genesis (each gets `DEVNET_OUTPUTS_PER_NODE` = 10
/// outputs): 100 outputs, enough for blocks of 100 payments.
const WALLETS: usize = 10;
/// Each payment pays this to a sink address; the change goes back.
const PAYMENT: u64 = COIN / 100;
/// Each payment's fee.
const FEE: u64 = 1_000;

#[path = "support/bulk.rs"]
mod bulk;
use bulk::{noise_pair, noise_round, MSG_LEN};
/// Longest a single sync may take before the bench gives up.
const SYNC_DEADLINE: Duration = Duration::from_secs(300);

// ----- summary ------------------------------------------------------------

/// Figures gathered while benchmarking, printed at the end.
#[derive(Default)]
struct Summary {
    /// (name, total iterations, total time) per measured function.
    rates: Vec<(String, u64, Duration)>,
    /// Free-form lines (breakdowns, ratios).
    notes: Vec<String>,
}

static SUMMARY: Mutex<Summary> = Mutex::new(Summary {
    rates: Vec::new(),
    notes: Vec::new(),
});

/// Adds `iters` iterations taking `elapsed` to the tally of `name`.
fn record(name: &str, iters: u64, elapsed: Duration) {
    let mut s = SUMMARY.lock().unwrap();
    match s.rates.iter_mut().find(|r| r.0 == name) {
        Some(r) => {
            r.1 += iters;
            r.2 += elapsed;
        }
        None => s.rates.push((name.to_owned(), iters, elapsed)),
    }
}

/// Mean time per iteration of `name` over every call (warm-up included).
fn mean(name: &str) -> Option<Duration> {
    let s = SUMMARY.lock().unwrap();
    s.rates
        .iter()
        .find(|r| r.0 == name && r.1 > 0)
        .map(|r| r.2 / u32::try_from(r.1).unwrap_or(u32::MAX))
}

fn note(line: String) {
    eprintln!("{line}");
    SUMMARY.lock().unwrap().notes.push(line);
}

/// Bytes this process has passed to `write`/`pwrite` so far (`wchar` of
/// `/proc/self/io`), where available.
fn written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
}

fn per_sec(count: f64, d: Duration) -> f64 {
    count / d.as_secs_f64().max(1e-12)
}

fn mb(bytes: f64) -> f64 {
    bytes / 1e6
}

// ----- fixtures -----------------------------------------------------------

/// One devnet genesis with one masternode (the producer) and [`WALLETS`]
/// funded wallets, and a generator of valid chains on it.
struct Fixture {
    producer: NodeIdentity,
    wallets: Vec<Wallet>,
    sink: Address,
    genesis: Genesis,
    magic: [u8; 4],
}

impl Fixture {
    fn new() -> Self {
        let producer = NodeIdentity::generate();
        let wallets: Vec<Wallet> = (0..WALLETS).map(|_| Wallet::generate()).collect();
        let addresses: Vec<Address> = wallets.iter().map(Wallet::address).collect();
        let genesis = Genesis::devnet(1, &[*producer.public_key().as_bytes()], &addresses).unwrap();
        let magic = genesis.network.magic();
        Fixture {
            producer,
            wallets,
            sink: Wallet::generate().address(),
            genesis,
            magic,
        }
    }

    /// The genesis allocation's outputs, with the index of their wallet.
    fn allocations(&self) -> Vec<(usize, OutPoint, TxOut)> {
        let alloc = self.genesis.allocation_tx().unwrap();
        let txid = alloc.txid();
        alloc
            .outputs
            .iter()
            .enumerate()
            .map(|(i, out)| {
                let w = self
                    .wallets
                    .iter()
                    .position(|w| w.address() == out.address)
                    .unwrap();
                (
                    w,
                    OutPoint {
                        txid,
                        index: i as u32,
                    },
                    *out,
                )
            })
            .collect()
    }

    /// A 1-input 2-output payment spending `coin` with its wallet's key.
    fn payment(&self, coin: &(usize, OutPoint, TxOut)) -> Transaction {
        let (w, outpoint, out) = coin;
        let tx = self.wallets[*w]
            .build_payment(self.magic, &[(*outpoint, *out)], self.sink, PAYMENT, FEE)
            .unwrap();
        assert_eq!((tx.inputs.len(), tx.outputs.len()), (1, 2));
        tx
    }

    /// A valid chain of `blocks` blocks after genesis, in slots 1, 2, ...,
    /// each holding `txs` payments (each spends an output confirmed in an
    /// earlier block and returns its change, which a later block spends).
    fn build_chain(&self, blocks: u64, txs: usize) -> Vec<Block> {
        let mut coins: VecDeque<(usize, OutPoint, TxOut)> = self.allocations().into();
        assert!(txs <= coins.len(), "not enough outputs for {txs} per block");
        let mut prev = (self.genesis.hash(), 0u64);
        let mut chain = Vec::with_capacity(blocks as usize);
        for slot in 1..=blocks {
            let mut list = Vec::with_capacity(txs);
            let mut change = Vec::with_capacity(txs);
            for _ in 0..txs {
                let coin = coins.pop_front().unwrap();
                let tx = self.payment(&coin);
                change.push((
                    coin.0,
                    OutPoint {
                        txid: tx.txid(),
                        index: 1,
                    },
                    tx.outputs[1],
                ));
                list.push(tx);
            }
            coins.extend(change);
            let block = Block::produce(
                &self.producer,
                self.magic,
                prev,
                self.genesis.slot_start(slot),
                list,
            );
            prev = (block.hash(), block.header.height);
            chain.push(block);
        }
        chain
    }

    /// A fresh chain (genesis only) in a new temporary dir, not a producer.
    fn fresh_chain(&self) -> (TempDir, Chain) {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::open(
            dir.path(),
            self.genesis.clone(),
            &NodeIdentity::generate(),
            follower(),
        )
        .unwrap();
        (dir, chain)
    }
}

fn follower() -> ChainOptions {
    ChainOptions {
        masternode: false,
        ..ChainOptions::default()
    }
}

fn multi_thread_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ----- chain/tx_validate --------------------------------------------------

fn tx_validate(c: &mut Criterion, fx: &Fixture) {
    let coin = fx.allocations()[0];
    let tx = fx.payment(&coin);
    let map: HashMap<OutPoint, TxOut> = [(coin.1, coin.2)].into_iter().collect();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join(DB_FILE)).unwrap();
    store.apply_block(&fx.genesis.block()).unwrap();
    assert_eq!(store.utxo(&coin.1), Some(coin.2));
    let fee = tx.validate(fx.magic, &map).unwrap();
    assert_eq!(fee, FEE);
    assert_eq!(tx.validate(fx.magic, &store).unwrap(), FEE);

    let mut group = c.benchmark_group("chain/tx_validate");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    group.bench_function("hashmap_view", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(tx.validate(fx.magic, std::hint::black_box(&map)).unwrap());
            }
            let elapsed = start.elapsed();
            record("tx_validate/hashmap_view", iters, elapsed);
            elapsed
        });
    });
    group.bench_function("redb_store_view", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(tx.validate(fx.magic, std::hint::black_box(&store)).unwrap());
            }
            let elapsed = start.elapsed();
            record("tx_validate/redb_store_view", iters, elapsed);
            elapsed
        });
    });
    group.bench_function("txid_only", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(std::hint::black_box(&tx).txid());
            }
            let elapsed = start.elapsed();
            record("tx_validate/txid_only", iters, elapsed);
            elapsed
        });
    });
    group.finish();
}

// ----- chain/block_apply --------------------------------------------------

/// Prepared blocks applied one by one to a fresh chain; when they run out,
/// a new fresh chain starts (outside the timed part).
struct ApplyPool<'a> {
    fx: &'a Fixture,
    blocks: Vec<Block>,
    chain: Option<(TempDir, Chain)>,
    next: usize,
}

impl ApplyPool<'_> {
    /// Applies the next `iters` blocks; returns the time inside
    /// `handle_block` only.
    fn apply(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            if self.chain.is_none() || self.next == self.blocks.len() {
                self.chain = None;
                self.chain = Some(self.fx.fresh_chain());
                self.next = 0;
            }
            let chain = &self.chain.as_ref().unwrap().1;
            let block = self.blocks[self.next].clone();
            let start = Instant::now();
            let outcome = chain.handle_block(block, "bench");
            total += start.elapsed();
            assert_eq!(outcome.unwrap(), BlockOutcome::Applied);
            self.next += 1;
        }
        total
    }
}

fn block_apply(c: &mut Criterion, fx: &Fixture) {
    let mut group = c.benchmark_group("chain/block_apply");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for (txs, pool) in [(0usize, 300u64), (10, 200), (100, 40)] {
        let started = Instant::now();
        let blocks = fx.build_chain(pool, txs);
        eprintln!(
            "prepared {pool} blocks of {txs} txs in {:.2?} (avg {} bytes encoded)",
            started.elapsed(),
            blocks
                .iter()
                .map(|b| encoding::encode_value(b).unwrap().len())
                .sum::<usize>()
                / blocks.len()
        );
        let mut pool = ApplyPool {
            fx,
            blocks,
            chain: None,
            next: 0,
        };
        let name = format!("block_apply/{txs}_txs");
        group.bench_function(BenchmarkId::new("handle_block_txs", txs), |b| {
            b.iter_custom(|iters| {
                let elapsed = pool.apply(iters);
                record(&name, iters, elapsed);
                elapsed
            });
        });
    }
    group.finish();
}

// ----- chain/sync ---------------------------------------------------------

/// The seed: a node serving a prepared chain.
struct Seed {
    _dir: TempDir,
    node: Node,
    chain: Chain,
    height: u64,
    /// Sum of the encoded sizes of blocks 1..=height.
    bytes: u64,
}

/// Where a node's time goes when it applies the seed chain locally, each
/// part timed alone over the whole chain.
fn breakdown(fx: &Fixture, blocks: &[Block], raw: &[Vec<u8>], seed: &Chain) {
    let n = blocks.len() as f64;
    let txs: usize = blocks.iter().map(|b| b.transactions.len()).sum();

    // Decoding the wire bytes.
    let start = Instant::now();
    for bytes in raw {
        std::hint::black_box(Chain::decode_block(bytes).unwrap());
    }
    let decode = start.elapsed();

    // Validation alone, in memory: what `validate_block` does (size,
    // header signature, merkle root, every transaction against the UTXO
    // set as the block's earlier transactions leave it) without redb.
    let mut utxos: HashMap<OutPoint, TxOut> = fx
        .allocations()
        .into_iter()
        .map(|(_, o, out)| (o, out))
        .collect();
    let start = Instant::now();
    for block in blocks {
        let header = &block.header;
        assert!(
            encoding::encode_value(block).unwrap().len() <= timed::chain::block::MAX_BLOCK_BYTES
        );
        let key = PublicKey::from_bytes(SignatureScheme::Ed25519, &header.producer).unwrap();
        let sig = Signature::from_bytes(SignatureScheme::Ed25519, &header.signature).unwrap();
        key.verify(&header.signing_digest(fx.magic), &sig).unwrap();
        assert!(block.merkle_matches());
        for tx in &block.transactions {
            tx.validate(fx.magic, &utxos).unwrap();
            for input in &tx.inputs {
                utxos.remove(&input.prevout);
            }
            let txid = tx.txid();
            for (i, out) in tx.outputs.iter().enumerate() {
                utxos.insert(
                    OutPoint {
                        txid,
                        index: i as u32,
                    },
                    *out,
                );
            }
        }
    }
    let validate = start.elapsed();

    // Storage alone: `Store::apply_block` (one redb write transaction and
    // its fsync per block), no validation.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join(DB_FILE)).unwrap();
    store.apply_block(&fx.genesis.block()).unwrap();
    let written_before = written();
    let start = Instant::now();
    for block in blocks {
        store.apply_block(block).unwrap();
    }
    let storage = start.elapsed();
    let storage_written = written().zip(written_before).map(|(a, b)| a - b);
    drop(store);

    // The disk's floor: a 4 KiB write + fdatasync, as many times as blocks.
    let path = dir.path().join("fsync_probe");
    let mut file = std::fs::File::create(&path).unwrap();
    let page = [7u8; 4096];
    let start = Instant::now();
    for i in 0..blocks.len() {
        file.seek(SeekFrom::Start((i % 64) as u64 * 4096)).unwrap();
        file.write_all(&page).unwrap();
        file.sync_data().unwrap();
    }
    let fsync = start.elapsed();

    // Validation + storage: the seed's own `handle_block` of the whole
    // chain (what a syncing node does per block, minus the network).
    let start = Instant::now();
    for block in blocks {
        assert_eq!(
            seed.handle_block(block.clone(), "bench").unwrap(),
            BlockOutcome::Applied
        );
    }
    let handle = start.elapsed();

    let per_block = |d: Duration| d.as_secs_f64() * 1e3 / n;
    note(format!(
        "local apply of the {n} x {SYNC_TXS}-tx seed chain ({txs} txs), per block:"
    ));
    note(format!(
        "  decode (from wire bytes)         {:8.3} ms  ({:8.0} blocks/s)",
        per_block(decode),
        per_sec(n, decode)
    ));
    note(format!(
        "  validation only (in memory)      {:8.3} ms  ({:8.0} blocks/s, {:8.0} txs/s)",
        per_block(validate),
        per_sec(n, validate),
        per_sec(txs as f64, validate)
    ));
    note(format!(
        "  storage only (Store::apply_block){:8.3} ms  ({:8.0} blocks/s)",
        per_block(storage),
        per_sec(n, storage)
    ));
    if let Some(w) = storage_written {
        let encoded: usize = raw.iter().map(Vec::len).sum();
        note(format!(
            "  storage writes (wchar)           {:8.1} KB/block for {:.1} KB/block encoded ({:.0}x)",
            w as f64 / n / 1e3,
            encoded as f64 / n / 1e3,
            w as f64 / encoded as f64
        ));
    }
    note(format!(
        "  bare 4 KiB overwrite + fdatasync {:8.3} ms  ({:8.0} /s)",
        per_block(fsync),
        per_sec(n, fsync)
    ));
    note(format!(
        "  Chain::handle_block (both)       {:8.3} ms  ({:8.0} blocks/s, {:8.0} txs/s)",
        per_block(handle),
        per_sec(n, handle),
        per_sec(txs as f64, handle)
    ));
    record("sync_breakdown/handle_block", blocks.len() as u64, handle);
    record("sync_breakdown/validation", blocks.len() as u64, validate);
    record("sync_breakdown/storage", blocks.len() as u64, storage);
    record("sync_breakdown/decode", blocks.len() as u64, decode);
    record("sync_breakdown/fsync", blocks.len() as u64, fsync);
}

fn config(ip: [u8; 4]) -> NetworkConfig {
    NetworkConfig::new(
        SocketAddr::from((ip, 0)),
        HandshakeConfig::new(VersionParams::new(Network::Devnet)),
    )
}

/// Builds the seed chain, times its local application, and starts the
/// seed node on 127.0.80.1.
fn start_seed(rt: &Runtime, fx: &Fixture) -> Seed {
    let started = Instant::now();
    let blocks = fx.build_chain(SYNC_BLOCKS, SYNC_TXS);
    let raw: Vec<Vec<u8>> = blocks
        .iter()
        .map(|b| encoding::encode_value(b).unwrap())
        .collect();
    let bytes: u64 = raw.iter().map(|r| r.len() as u64).sum();
    eprintln!(
        "prepared the seed chain: {SYNC_BLOCKS} blocks x {SYNC_TXS} txs, {:.2} MB encoded, in {:.2?}",
        mb(bytes as f64),
        started.elapsed()
    );
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::open(dir.path(), fx.genesis.clone(), &fx.producer, follower()).unwrap();
    breakdown(fx, &blocks, &raw, &chain);
    assert_eq!(chain.tip().height, SYNC_BLOCKS);
    let served = chain.store().raw_blocks(1, usize::MAX, usize::MAX).unwrap();
    assert_eq!(served, raw, "the store serves the blocks as encoded");

    let cfg = config([127, 0, 80, 1]);
    let node = rt
        .block_on(Node::start(&fx.producer, cfg, Some(chain.clone())))
        .unwrap();
    Seed {
        _dir: dir,
        node,
        chain,
        height: SYNC_BLOCKS,
        bytes,
    }
}

/// Starts a fresh node on `ip` with the seed as its only peer; returns the
/// time from its start until its tip reached the seed's height.
fn sync_once(rt: &Runtime, fx: &Fixture, seed: &Seed, ip: [u8; 4]) -> Duration {
    let (_dir, chain) = fx.fresh_chain();
    let mut cfg = config(ip);
    cfg.peers = vec![PeerTarget {
        addr: seed.node.local_addr(),
        node_id: Some(seed.node.node_id()),
    }];
    let identity = NodeIdentity::generate();
    let elapsed = rt.block_on(async {
        let start = Instant::now();
        let node = Node::start(&identity, cfg, Some(chain.clone()))
            .await
            .unwrap();
        while chain.tip().height < seed.height {
            assert!(
                start.elapsed() < SYNC_DEADLINE,
                "sync stuck at {} of {}",
                chain.tip().height,
                seed.height
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = start.elapsed();
        node.shutdown();
        // Let both sides close the connection before the next round.
        tokio::time::sleep(Duration::from_millis(50)).await;
        elapsed
    });
    assert_eq!(chain.tip().hash, seed.chain.tip().hash);
    elapsed
}

fn sync(c: &mut Criterion, fx: &Fixture) {
    let mut group = c.benchmark_group("chain/sync");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    // The transport's encrypted bulk throughput, as `bulk_1mib/noise_*` in
    // benches/transport.rs, with the backend nodes use by default.
    let bulk_rt = multi_thread_runtime();
    let payload: Vec<u8> = (0..MSG_LEN).map(|i| (i % 251) as u8).collect();
    let payload = Bytes::from(payload);
    let mut pair = Some(bulk_rt.block_on(noise_pair(CryptoBackend::default())));
    group.throughput(Throughput::Bytes(MSG_LEN as u64));
    group.bench_function("bulk_noise_1mib", |b| {
        b.iter_custom(|iters| {
            let (tx, rx) = pair.take().unwrap();
            let (tx, rx, elapsed) = bulk_rt.block_on(noise_round(tx, rx, payload.clone(), iters));
            pair = Some((tx, rx));
            record("sync/bulk_noise_1mib", iters, elapsed);
            elapsed
        });
    });
    drop(pair);
    drop(bulk_rt);

    // Sync: each iteration a fresh node syncing the whole seed chain.
    let rt = multi_thread_runtime();
    let mut seed: Option<Seed> = None;
    let mut next_ip: u8 = 1;
    group
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(SYNC_BLOCKS));
    group.bench_function(
        BenchmarkId::new("fresh_node_blocks", format!("{SYNC_BLOCKS}x{SYNC_TXS}tx")),
        |b| {
            let seed = seed.get_or_insert_with(|| start_seed(&rt, fx));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let ip = [127, 0, 81, next_ip];
                    next_ip = next_ip % 250 + 1;
                    let elapsed = sync_once(&rt, fx, seed, ip);
                    eprintln!(
                        "  sync of {} blocks in {:.2?}: {:.0} blocks/s, {:.2} MB/s",
                        seed.height,
                        elapsed,
                        per_sec(seed.height as f64, elapsed),
                        mb(per_sec(seed.bytes as f64, elapsed))
                    );
                    total += elapsed;
                }
                record("sync/fresh_node", iters, total);
                total
            });
        },
    );
    group.finish();
    if let Some(seed) = seed {
        SUMMARY.lock().unwrap().notes.push(format!(
            "seed chain: {} blocks, {:.3} MB encoded ({} bytes/block)",
            seed.height,
            mb(seed.bytes as f64),
            seed.bytes / seed.height.max(1)
        ));
        print_summary(Some(&seed));
        seed.node.shutdown();
    } else {
        print_summary(None);
    }
    drop(rt);
}

fn print_summary(seed: Option<&Seed>) {
    let line = "-".repeat(78);
    eprintln!(
        "\n{line}\nchain benchmark summary (means over every timed call, warm-up included)\n{line}"
    );
    let row = |name: &str, value: String| eprintln!("{name:<46} {value}");
    for (name, label) in [
        ("tx_validate/hashmap_view", "tx_validate (HashMap view)"),
        (
            "tx_validate/redb_store_view",
            "tx_validate (redb Store view)",
        ),
        ("tx_validate/txid_only", "txid (one computation)"),
    ] {
        if let Some(d) = mean(name) {
            row(
                label,
                format!(
                    "{:>10.2} us/tx  {:>10.0} txs/s",
                    d.as_secs_f64() * 1e6,
                    per_sec(1.0, d)
                ),
            );
        }
    }
    for txs in [0u64, 10, 100] {
        if let Some(d) = mean(&format!("block_apply/{txs}_txs")) {
            row(
                &format!("block_apply, {txs} txs/block (handle_block)"),
                format!(
                    "{:>10.3} ms/block {:>8.0} blocks/s {:>9} txs/s",
                    d.as_secs_f64() * 1e3,
                    per_sec(1.0, d),
                    if txs == 0 {
                        "-".to_owned()
                    } else {
                        format!("{:.0}", per_sec(txs as f64, d))
                    }
                ),
            );
        }
    }
    let bulk = mean("sync/bulk_noise_1mib").map(|d| mb(per_sec(MSG_LEN as f64, d)));
    if let Some(b) = bulk {
        row(
            "bulk Noise 1 MiB msgs (loopback)",
            format!("{b:>10.1} MB/s"),
        );
    }
    if let (Some(seed), Some(d)) = (seed, mean("sync/fresh_node")) {
        let blocks = seed.height as f64;
        let sync_mb = mb(per_sec(seed.bytes as f64, d));
        row(
            &format!("sync {}x{SYNC_TXS}tx, fresh node", seed.height),
            format!(
                "{:>10.2} s/sync  {:>8.0} blocks/s {:>9.0} txs/s {:>7.2} MB/s",
                d.as_secs_f64(),
                per_sec(blocks, d),
                per_sec(blocks * SYNC_TXS as f64, d),
                sync_mb
            ),
        );
        if let Some(b) = bulk {
            row(
                "ratio sync MB/s / bulk MB/s (target >= 0.5)",
                format!("{:>10.4}", sync_mb / b),
            );
        }
        if let Some(h) = mean("sync_breakdown/handle_block") {
            let local = h.as_secs_f64() * blocks;
            row(
                "  of which local handle_block (est.)",
                format!(
                    "{:>10.2} s ({:.0}% of the sync)",
                    local,
                    100.0 * local / d.as_secs_f64()
                ),
            );
        }
    }
    for (name, label) in [
        ("sync_breakdown/decode", "  per block: decode"),
        (
            "sync_breakdown/validation",
            "  per block: validation only (memory)",
        ),
        (
            "sync_breakdown/storage",
            "  per block: storage only (apply_block)",
        ),
        (
            "sync_breakdown/fsync",
            "  per block: bare 4 KiB overwrite + fdatasync",
        ),
        (
            "sync_breakdown/handle_block",
            "  per block: handle_block (both)",
        ),
    ] {
        if let Some(d) = mean(name) {
            row(label, format!("{:>10.3} ms", d.as_secs_f64() * 1e3));
        }
    }
    for n in &SUMMARY.lock().unwrap().notes {
        if n.starts_with("seed chain") {
            eprintln!("{n}");
        }
    }
    eprintln!("{line}");
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let fx = Fixture::new();
    tx_validate(&mut c, &fx);
    block_apply(&mut c, &fx);
    sync(&mut c, &fx);
    c.final_summary();
}

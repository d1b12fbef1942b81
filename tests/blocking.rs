//! Validating a large block stalls no other connection: the node checks a
//! block's signatures on tokio's blocking pool and applies it on the chain
//! worker, so its async workers keep answering pings meanwhile.
//!
//! The node under test follows a devnet chain whose only masternode is a
//! key the test holds (the node itself neither votes nor produces). Block 1
//! fans the genesis allocations of a secp256k1 wallet out into thousands of
//! small outputs; block 2 spends them all, as many inputs as fit in
//! [`MAX_BLOCK_BYTES`] (secp256k1 inputs: the slowest signatures to check).
//! The test times [`Chain::handle_block`] of block 2 on a separate copy of
//! the chain, then delivers block 2 on two connections at once (two
//! envelopes, so that both reach the block handler: a node validating on
//! its two async workers would have both stalled) while a third connection,
//! driven from a thread and runtime of its own, pings every 10 ms. Every
//! pong that overlapped the node's validation must come back in a small
//! fraction of the block's validation time. (With the validation moved
//! onto the async workers, the one pong in that window took 1.7 times the
//! validation time and this test failed.)
//!
//! Addresses: 127.10.1.x.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use timed::app::Node;
use timed::chain::block::{Block, MAX_BLOCK_BYTES};
use timed::chain::genesis::{Genesis, GenesisMasternode, DEVNET_GENESIS_TIMESTAMP};
use timed::chain::transaction::{MAX_OUTPUTS, MAX_TX_BYTES};
use timed::chain::votes::Tier;
use timed::chain::{OutPoint, Transaction, TxIn, TxOut, COIN, MIN_FEE};
use timed::crypto::{NodeIdentity, SecretKey, SignatureScheme};
use timed::encoding::encode_value;
use timed::network::NetworkEvent;
use timed::params::Network;
use timed::protocol::codec::encode_message;
use timed::protocol::version::unix_now;
use timed::protocol::{Envelope, GossipKind, Message, Ping, Pong, VersionParams};
use timed::state::{Chain, ChainOptions};
use timed::wallet::Wallet;
use tokio::io::AsyncWriteExt;

/// Value of each genesis allocation.
const ALLOCATION: u64 = 1_000 * COIN;

/// A pong that overlapped the validation must come back within this
/// fraction of the block's validation time. A node validating on its async
/// workers would answer no sooner than the validation ends (about the whole
/// validation time, twice that with two blocks on two workers).
const MAX_PONG_SHARE: f64 = 1.0 / 3.0;

/// The pinging connection sends a ping at most this often.
const PING_EVERY: Duration = Duration::from_millis(10);

fn magic() -> [u8; 4] {
    Network::Devnet.magic()
}

fn now_ms() -> u64 {
    unix_now().as_millis() as u64
}

/// The test chain and its two blocks.
struct Fixture {
    genesis: Genesis,
    /// Block 1: the allocations fanned out into small outputs.
    fan_out: Block,
    /// Block 2: every one of those outputs spent, close to the size limit.
    big: Block,
}

/// An input spending `prevout`, to be signed.
fn input(prevout: OutPoint, key: &SecretKey) -> TxIn {
    TxIn {
        prevout,
        scheme: key.scheme(),
        public_key: key.public_key().to_bytes(),
        signature: [0; 64],
    }
}

fn encoded_len<T: serde::Serialize>(value: &T) -> usize {
    encode_value(value).unwrap().len()
}

impl Fixture {
    fn new() -> Self {
        let producer = NodeIdentity::generate();
        let key = SecretKey::generate(SignatureScheme::Secp256k1);
        let wallet = Wallet::from_secret(key);
        let key = wallet.secret_key();
        let sink = Wallet::generate().address();
        let dummy = OutPoint {
            txid: [0; 32],
            index: 0,
        };

        // What one more input adds to a transaction, and what a
        // transaction with one output costs besides its inputs, measured
        // on the encoding itself.
        let spend = |prevouts: Vec<OutPoint>, value: u64| Transaction {
            version: 1,
            inputs: prevouts.into_iter().map(|p| input(p, key)).collect(),
            outputs: vec![TxOut {
                value,
                address: sink,
            }],
            nonce: 0,
        };
        let one = encoded_len(&spend(vec![dummy], 1));
        let two = encoded_len(&spend(vec![dummy, dummy], 1));
        let per_input = two - one;
        let tx_base = one - per_input;
        let block_base = encoded_len(&Block::produce(
            &producer,
            magic(),
            ([0; 32], 0),
            0,
            Vec::new(),
        ));
        // Fill the block with full transactions, then one partial one.
        let inputs_per_tx = (MAX_TX_BYTES - tx_base) / per_input;
        let room = MAX_BLOCK_BYTES - block_base;
        let full_txs = room / (tx_base + inputs_per_tx * per_input);
        let rest = room - full_txs * (tx_base + inputs_per_tx * per_input);
        let last_inputs = rest.saturating_sub(tx_base) / per_input;
        let total_inputs = full_txs * inputs_per_tx + last_inputs;

        let fan_out_txs = total_inputs.div_ceil(MAX_OUTPUTS);
        let genesis = Genesis::new(
            Network::Devnet,
            DEVNET_GENESIS_TIMESTAMP,
            1,
            vec![GenesisMasternode {
                public_key: *producer.public_key().as_bytes(),
                tier: Tier::Free,
            }],
            vec![
                TxOut {
                    value: ALLOCATION,
                    address: wallet.address(),
                };
                fan_out_txs
            ],
        )
        .unwrap();
        let allocation = genesis.allocation_tx().unwrap().txid();

        // Block 1: allocation i split into up to MAX_OUTPUTS outputs.
        let mut coins: Vec<(OutPoint, u64)> = Vec::with_capacity(total_inputs);
        let mut fan_out = Vec::with_capacity(fan_out_txs);
        for i in 0..fan_out_txs {
            let n = (total_inputs - i * MAX_OUTPUTS).min(MAX_OUTPUTS);
            let value = (ALLOCATION - MIN_FEE) / n as u64;
            let mut tx = Transaction {
                version: 1,
                inputs: vec![input(
                    OutPoint {
                        txid: allocation,
                        index: i as u32,
                    },
                    key,
                )],
                outputs: vec![
                    TxOut {
                        value,
                        address: wallet.address(),
                    };
                    n
                ],
                nonce: i as u64,
            };
            tx.sign(magic(), &[key]);
            let txid = tx.txid();
            coins.extend((0..n).map(|index| {
                (
                    OutPoint {
                        txid,
                        index: index as u32,
                    },
                    value,
                )
            }));
            fan_out.push(tx);
        }
        let fan_out = Block::produce(
            &producer,
            magic(),
            (genesis.hash(), 0),
            genesis.slot_start(1),
            fan_out,
        );

        // Block 2: every small output spent, `inputs_per_tx` per payment.
        let keys = vec![key; inputs_per_tx];
        let big_txs: Vec<Transaction> = coins
            .chunks(inputs_per_tx)
            .enumerate()
            .map(|(i, chunk)| {
                let total: u64 = chunk.iter().map(|(_, v)| v).sum();
                let mut tx = spend(chunk.iter().map(|(p, _)| *p).collect(), total - MIN_FEE);
                tx.nonce = i as u64;
                tx.sign(magic(), &keys[..chunk.len()]);
                tx
            })
            .collect();
        let big = Block::produce(
            &producer,
            magic(),
            (fan_out.hash(), 1),
            genesis.slot_start(2),
            big_txs,
        );
        let size = encoded_len(&big);
        assert!(size <= MAX_BLOCK_BYTES, "{size} bytes");
        assert!(size > MAX_BLOCK_BYTES * 95 / 100, "only {size} bytes");
        Fixture {
            genesis,
            fan_out,
            big,
        }
    }

    fn inputs(&self) -> usize {
        self.big.transactions.iter().map(|t| t.inputs.len()).sum()
    }
}

fn follower() -> ChainOptions {
    ChainOptions {
        masternode: false,
        ..ChainOptions::default()
    }
}

/// A raw session as a fresh identity from `src` that completed the version
/// exchange with `node` (which follows `chain`).
async fn session(
    node: &Node,
    chain: &Chain,
    src: [u8; 4],
    events: &mut tokio::sync::broadcast::Receiver<NetworkEvent>,
) -> RawSession {
    let mut raw = RawSession::open(src, node.local_addr(), magic()).await;
    let mut params = VersionParams::new(Network::Devnet);
    params.genesis_hash = chain.genesis_hash();
    raw.send(&Message::Version(params.build(raw.identity.node_id(), 0)))
        .await;
    match raw.recv().await {
        Some(Message::Version(v)) => assert_eq!(v.genesis_hash, chain.genesis_hash()),
        other => panic!("expected the node's Version, got {other:?}"),
    }
    let id = raw.identity.node_id();
    wait_for(events, |e| match e {
        NetworkEvent::Connected(info) if info.node_id == id => Some(()),
        _ => None,
    })
    .await;
    raw
}

/// The encrypted frame of a block envelope signed by `raw`'s identity.
fn block_frame(raw: &mut RawSession, block: &Block) -> bytes::BytesMut {
    let envelope = Envelope::sign(
        &raw.identity,
        magic(),
        GossipKind::Block,
        now_ms(),
        encode_value(block).unwrap(),
    );
    let frame = encode_message(&Message::Gossip(envelope)).unwrap();
    raw.encode_frame(&frame)
}

/// Pings once and waits for the matching pong (answering the node's own
/// keepalive pings meanwhile); returns when it was sent and the round trip.
async fn ping(raw: &mut RawSession, nonce: u64) -> (Instant, Duration) {
    let sent = Instant::now();
    raw.send(&Message::Ping(Ping {
        nonce,
        timestamp_ms: now_ms(),
    }))
    .await;
    loop {
        match raw.recv().await {
            Some(Message::Pong(p)) if p.nonce == nonce => return (sent, sent.elapsed()),
            Some(Message::Ping(p)) => {
                raw.send(&Message::Pong(Pong {
                    nonce: p.nonce,
                    timestamp_ms: now_ms(),
                }))
                .await
            }
            Some(Message::Disconnect(d)) => panic!("the pinging session was disconnected: {d:?}"),
            Some(_) => continue,
            None => panic!("the node closed the pinging session"),
        }
    }
}

/// Pings the node from 127.10.1.100 on a thread and a runtime of its own,
/// one ping at a time and at most one per [`PING_EVERY`] (a sampler, not a
/// flood that would compete with the validation for the cores). Sharing
/// nothing with the node's runtime, it keeps sending on time if the node's
/// async workers stall: a stalled node shows as a slow pong, not as a
/// missing sample.
struct Pinger {
    halt: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, Duration)>>,
    /// The slowest of the first few round trips, on an idle node.
    idle_max: Duration,
}

impl Pinger {
    /// Connects, pings a few times and returns once sampling has started.
    async fn start(node: Node, chain: Chain) -> Pinger {
        let halt = Arc::new(AtomicBool::new(false));
        let halted = halt.clone();
        let (ready, idle) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut events = node.subscribe();
                let mut raw = session(&node, &chain, [127, 10, 1, 100], &mut events).await;
                let mut idle = Duration::ZERO;
                for nonce in 0..5 {
                    idle = idle.max(ping(&mut raw, nonce).await.1);
                }
                ready.send(idle).unwrap();
                let mut samples = Vec::new();
                let mut nonce = 1_000;
                let mut every = tokio::time::interval(PING_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !halted.load(Ordering::Relaxed) {
                    every.tick().await;
                    samples.push(ping(&mut raw, nonce).await);
                    nonce += 1;
                }
                samples
            })
        });
        let idle_max = idle.await.expect("the pinger failed to start");
        Pinger {
            halt,
            thread,
            idle_max,
        }
    }

    /// Stops sampling; returns when each ping was sent and its round trip.
    fn stop(self) -> Vec<(Instant, Duration)> {
        self.halt.store(true, Ordering::Relaxed);
        self.thread.join().expect("the pinger panicked")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_on_other_connections_are_answered_while_a_large_block_is_validated() {
    let built = Instant::now();
    let fx = Fixture::new();
    let block_bytes = encoded_len(&fx.big);
    println!(
        "block 2: {block_bytes} bytes ({:.1}% of MAX_BLOCK_BYTES), {} transactions, {} secp256k1 inputs; built in {:?}",
        100.0 * block_bytes as f64 / MAX_BLOCK_BYTES as f64,
        fx.big.transactions.len(),
        fx.inputs(),
        built.elapsed()
    );

    // The block's validation time: what Chain::handle_block does
    // (signatures in parallel, then UTXO checks and the commit), on a copy
    // of the chain, before the node starts so that nothing else competes
    // for the cores. Its two parts are timed apart for the printout.
    let (genesis, fan_out, big) = (fx.genesis.clone(), fx.fan_out.clone(), fx.big.clone());
    let (signatures, apply) = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let copy = Chain::open(dir.path(), genesis, &NodeIdentity::generate(), follower()).unwrap();
        copy.handle_block(fan_out, "gossip").unwrap();
        let start = Instant::now();
        let verified = copy.verify_block(big).unwrap();
        let signatures = start.elapsed();
        copy.handle_verified_block(verified, "gossip").unwrap();
        let apply = start.elapsed() - signatures;
        assert_eq!(copy.tip().height, 2);
        (signatures, apply)
    })
    .await
    .unwrap();
    let validation = signatures + apply;
    println!(
        "validation of block 2 on a copy of the chain: {validation:?} (signatures {signatures:?}, then state checks and commit {apply:?})"
    );

    // The node under test. `rate_limit` is left out of its stack: pings
    // have a budget of 6 per 10 s, and this test pings every 10 ms to
    // sample the delay; the layer stalls nothing either way.
    let dir = tempfile::tempdir().unwrap();
    let identity = NodeIdentity::generate();
    let chain = Chain::open(dir.path(), fx.genesis.clone(), &identity, follower()).unwrap();
    let mut cfg = config([127, 10, 1, 1]);
    cfg.middleware = timed::layers::stack::MiddlewareConfig::default_stack()
        .into_iter()
        .filter(|c| c.name() != "rate_limit")
        .collect();
    let node = Node::start(&identity, cfg, Some(chain.clone()))
        .await
        .unwrap();
    let mut events = node.subscribe();

    let pinger = Pinger::start(node.clone(), chain.clone()).await;
    let mut first = session(&node, &chain, [127, 10, 1, 101], &mut events).await;
    let mut second = session(&node, &chain, [127, 10, 1, 102], &mut events).await;

    // Block 1 makes the outputs block 2 spends.
    let frame = block_frame(&mut first, &fx.fan_out);
    first.stream.write_all(&frame).await.unwrap();
    wait_until("block 1 applied", || chain.tip().height == 1).await;

    // Block 2 on two connections at once, in two envelopes (encrypted
    // before the clock starts).
    let frame_a = block_frame(&mut first, &fx.big);
    let frame_b = block_frame(&mut second, &fx.big);
    let start = Instant::now();
    // A connection handles its messages in order: the pong to a ping sent
    // after the block says that connection's block was handled.
    let send_a = tokio::spawn(async move {
        first.stream.write_all(&frame_a).await.unwrap();
        ping(&mut first, 1).await;
        (first, start.elapsed())
    });
    let send_b = tokio::spawn(async move {
        second.stream.write_all(&frame_b).await.unwrap();
        ping(&mut second, 1).await;
        (second, start.elapsed())
    });
    wait_until("block 2 applied", || chain.tip().height == 2).await;
    let end = Instant::now();
    let applied = end - start;
    let idle_max = pinger.idle_max;
    let samples = pinger.stop();
    let ((_first, handled_a), (_second, handled_b)) =
        (send_a.await.unwrap(), send_b.await.unwrap());
    assert_eq!(chain.tip().hash, fx.big.hash());
    println!("the two deliveries of block 2 were handled after {handled_a:?} and {handled_b:?}");

    // The pings that were in flight at some point while the node received
    // and validated block 2.
    let during: Vec<Duration> = samples
        .iter()
        .filter(|(sent, rtt)| *sent < end && *sent + *rtt > start)
        .map(|(_, rtt)| *rtt)
        .collect();
    let worst = during.iter().max().copied().unwrap_or_default();
    println!(
        "node: block 2 (twice) received and applied in {applied:?}; {} pongs meanwhile, slowest {worst:?}, mean {:?}; idle round trip at most {:?}; slowest pong / validation = {:.3}",
        during.len(),
        during.iter().sum::<Duration>() / during.len().max(1) as u32,
        idle_max,
        worst.as_secs_f64() / validation.as_secs_f64()
    );
    assert!(
        during.len() >= 3,
        "only {} pongs came back while the node took {applied:?} over block 2",
        during.len()
    );
    assert!(
        worst.as_secs_f64() < validation.as_secs_f64() * MAX_PONG_SHARE,
        "a pong took {worst:?} while block 2 was validated; validating it takes {validation:?}"
    );

    node.shutdown();
    node.stopped().await;
}

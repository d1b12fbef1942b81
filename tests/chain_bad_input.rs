//! Bad chain data over real loopback TCP, one test per case: malformed,
//! badly signed, double-spending and overspending transactions; malformed
//! blocks, blocks from the wrong producer, with bad linkage or a bad merkle
//! root, and an oversized block payload; votes from a non-masternode, forged
//! votes and duplicate votes.
//!
//! Each test starts a victim [`Node`] that follows its own chain (a devnet
//! genesis with two masternodes the test holds the keys of, and two funded
//! wallets; the victim itself is neither, so it never votes or produces and
//! its tip stays at the genesis). Attackers and honest peers are raw
//! sessions ([`RawSession`]) that complete Noise and the version exchange
//! (with the victim's genesis hash) and then send signed gossip envelopes
//! with crafted payloads.
//!
//! Every case pins: (a) nothing was stored (tip, mempool, UTXO set, vote
//! tallies unchanged); (b) the attacker's score fell by the penalty of the
//! offence, and it was disconnected exactly when that reached the -20
//! threshold; (c) a log line names the typed reason (the handler's
//! `message refused by its handler` line with `handler`, `reason`,
//! `offence` and `peer`, or the auth or codec refusal); (d) the node keeps
//! serving: an honest peer from another address gets a pong and its valid
//! transaction is accepted. Each test uses its own 127.0.N.0/24 (N in
//! 70..=83): the victim on .1, the attacker on .101, the honest peer on .102.
//!
//! Two tests are ignored as known bugs (blocks above the tip are not
//! checked at all, and every block's height, refused or not, gates block
//! production through `best_seen`); one of them runs a victim that is the
//! only masternode and produces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;
use timed::app::Node;
use timed::chain::block::Block;
use timed::chain::genesis::Genesis;
use timed::chain::votes::{Verdict, Vote};
use timed::chain::{OutPoint, Transaction, TxIn, TxOut, Txid, COIN, MIN_FEE};
use timed::crypto::{NodeId, NodeIdentity};
use timed::encoding::encode_value;
use timed::network::NetworkEvent;
use timed::params::Network;
use timed::peer::ConnectionError;
use timed::protocol::version::unix_now;
use timed::protocol::{
    DisconnectReason, Envelope, GossipKind, Message, MessageId, Ping, VersionParams,
};
use timed::state::{Chain, ChainOptions, Tip};
use timed::wallet::Wallet;
use tokio::sync::broadcast;

/// Seconds per slot: long enough that a test never straddles a producer
/// change (the producer check uses the header's timestamp anyway).
const BLOCK_INTERVAL_SECS: u64 = 60;

/// Scoring defaults (src/layers/scoring.rs).
const INVALID_DATA: f64 = -20.0;
const MALFORMED: f64 = -10.0;
const PROTOCOL_VIOLATION: f64 = -10.0;
const INVALID_SIGNATURE: f64 = -25.0;
const FIRST_DELIVERY: f64 = 1.0;

fn now_ms() -> u64 {
    unix_now().as_millis() as u64
}

fn magic() -> [u8; 4] {
    Network::Devnet.magic()
}

/// What a refusal must leave unchanged.
#[derive(Debug, PartialEq)]
struct Snapshot {
    tip: Tip,
    mempool: Vec<Txid>,
    utxos: u64,
    equivocations: usize,
}

/// A node following a test chain, with everything a test needs around it.
struct Victim {
    node: Node,
    chain: Chain,
    events: broadcast::Receiver<NetworkEvent>,
    logs: LogBuffer,
    net: u8,
    /// The genesis masternodes (sorted by key, like the schedule).
    masternodes: Vec<NodeIdentity>,
    attacker_wallet: Wallet,
    honest_wallet: Wallet,
    /// When the victim started: before any score change, so it bounds how
    /// long a score can have decayed (see [`assert_score`]).
    started: tokio::time::Instant,
    _dir: tempfile::TempDir,
}

impl Victim {
    /// Starts the victim on 127.0.`net`.1; logs go to `logs`.
    async fn start(net: u8, logs: LogBuffer) -> Self {
        Self::start_with(net, logs, None).await
    }

    /// Like [`Victim::start`]; with `producer` (a block interval), the
    /// victim is the only masternode and produces a block per slot.
    async fn start_with(net: u8, logs: LogBuffer, producer: Option<u64>) -> Self {
        let identity = NodeIdentity::generate();
        let mut masternodes = match producer {
            Some(_) => vec![identity.clone()],
            None => vec![NodeIdentity::generate(), NodeIdentity::generate()],
        };
        masternodes.sort_by_key(|m| *m.public_key().as_bytes());
        let keys: Vec<[u8; 32]> = masternodes
            .iter()
            .map(|m| *m.public_key().as_bytes())
            .collect();
        let attacker_wallet = Wallet::generate();
        let honest_wallet = Wallet::generate();
        let genesis = Genesis::devnet(
            producer.unwrap_or(BLOCK_INTERVAL_SECS),
            &keys,
            &[attacker_wallet.address(), honest_wallet.address()],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::open(dir.path(), genesis, &identity, ChainOptions::default()).unwrap();
        assert_eq!(chain.is_masternode(), producer.is_some());
        let cfg = config([127, 0, net, 1]);
        let started = tokio::time::Instant::now();
        let node = Node::start(&identity, cfg, Some(chain.clone()))
            .await
            .unwrap();
        let events = node.subscribe();
        Victim {
            node,
            chain,
            events,
            logs,
            net,
            masternodes,
            attacker_wallet,
            honest_wallet,
            started,
            _dir: dir,
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            tip: self.chain.tip(),
            mempool: self.chain.mempool_txids(),
            utxos: self.chain.store().utxo_count().unwrap(),
            equivocations: self.chain.equivocations(),
        }
    }

    /// Connects a raw peer as `identity` from 127.0.`net`.`host`.
    async fn peer(&mut self, identity: NodeIdentity, host: u8) -> Peer {
        let src = [127, 0, self.net, host];
        let mut raw = RawSession::open_with(identity, src, self.node.local_addr(), magic()).await;
        let mut params = VersionParams::new(Network::Devnet);
        params.genesis_hash = self.chain.genesis_hash();
        let version = params.build(raw.identity.node_id(), 0);
        raw.send(&Message::Version(version)).await;
        match raw.recv().await {
            Some(Message::Version(v)) => assert_eq!(v.genesis_hash, self.chain.genesis_hash()),
            other => panic!("expected the victim's Version, got {other:?}"),
        }
        let id = raw.identity.node_id();
        wait_for(&mut self.events, |e| match e {
            NetworkEvent::Connected(info) if info.node_id == id => Some(()),
            _ => None,
        })
        .await;
        Peer { raw, id, src }
    }

    /// Connects the attacker (a fresh identity) from .101.
    async fn attacker(&mut self) -> Peer {
        self.peer(NodeIdentity::generate(), 101).await
    }

    /// Waits until `peer` is disconnected by policy; returns the error.
    /// Fails if a gossip delivery from it is seen first.
    async fn disconnected(&mut self, peer: NodeId) -> std::sync::Arc<ConnectionError> {
        wait_for(&mut self.events, |e| match e {
            NetworkEvent::Disconnected { peer: info, error } if info.node_id == peer => {
                Some(error.clone())
            }
            NetworkEvent::Delivered { id, from, .. } if *from == peer => {
                panic!("unexpected delivery of {id:?} from the attacker")
            }
            _ => None,
        })
        .await
    }

    /// Waits until the envelope `id` from `from` is accepted by a handler.
    async fn delivered(&mut self, id: MessageId, from: NodeId) {
        let by = wait_for(&mut self.events, |e| match e {
            NetworkEvent::Delivered { id: got, from, .. } if *got == id => Some(*from),
            _ => None,
        })
        .await;
        assert_eq!(by, from);
    }

    /// A valid payment from the `wallet`'s genesis output `index` (among
    /// its unspent ones) to `to`.
    fn payment(&self, wallet: &Wallet, index: usize, to: &Wallet, amount: u64) -> Transaction {
        let spendable = self.chain.spendable(&wallet.address()).unwrap();
        wallet
            .build_payment(
                magic(),
                &spendable[index..=index],
                to.address(),
                amount,
                MIN_FEE,
            )
            .unwrap()
    }

    /// The scheduled producer of the slot of `timestamp`, and another
    /// masternode.
    fn producers(&self, timestamp: u64) -> (&NodeIdentity, &NodeIdentity) {
        let genesis = self.chain.genesis();
        let scheduled = *genesis.producer(genesis.slot(timestamp)).unwrap();
        let (a, b) = (&self.masternodes[0], &self.masternodes[1]);
        if *a.public_key().as_bytes() == scheduled {
            (a, b)
        } else {
            (b, a)
        }
    }

    /// Waits for the handler's refusal line for `peer` with this reason and
    /// checks its fields.
    async fn refused(&self, handler: &str, reason: &str, offence: Option<&str>, peer: NodeId) {
        let find = || {
            self.logs
                .text()
                .lines()
                .find(|l| {
                    l.contains("message refused by its handler")
                        && l.contains(&format!("handler=\"{handler}\""))
                        && l.contains(&format!("reason=\"{reason}\""))
                        && l.contains(&format!("peer={peer}"))
                })
                .map(str::to_owned)
        };
        wait_until(&format!("the {handler} handler refused {reason}"), || {
            find().is_some()
        })
        .await;
        let line = find().unwrap();
        match offence {
            Some(o) => assert!(line.contains(&format!("offence=\"{o}\"")), "{line}"),
            None => assert!(!line.contains("offence="), "{line}"),
        }
        assert!(line.contains("peer.addr=127.0."), "{line}");
    }

    /// Asserts a log line contains every one of `parts`.
    fn logged(&self, parts: &[&str]) {
        let text = self.logs.text();
        assert!(
            text.lines().any(|l| parts.iter().all(|p| l.contains(p))),
            "no log line with {parts:?} in:\n{text}"
        );
    }

    /// The node still serves: a fresh honest peer from .102 gets a pong,
    /// and `tx` (valid) from it is accepted into the mempool and rewarded.
    async fn serves_honest_peer(&mut self, tx: Transaction) {
        let mut honest = self.peer(NodeIdentity::generate(), 102).await;
        honest.ping(1).await;
        let txid = tx.txid();
        let id = honest
            .gossip(GossipKind::Transaction, encode_value(&tx).unwrap())
            .await;
        self.delivered(id, honest.id).await;
        assert!(self.chain.mempool_txids().contains(&txid));
        assert_score(self, honest.id, FIRST_DELIVERY);
        assert!(self.node.peers().contains(&honest.id));
    }

    /// Proves `ip` got exactly one violation and no ban (mutates the list).
    fn assert_one_violation(&self, ip: IpAddr) {
        let list = self.node.blacklist();
        assert!(!list.is_banned(ip), "one violation must not ban");
        assert!(
            list.record_violation(ip, "test").is_none(),
            "more than one violation was already recorded"
        );
        assert!(
            list.record_violation(ip, "test").is_some(),
            "no violation was recorded for {ip}"
        );
    }
}

/// A raw session with a chain peer's identity.
struct Peer {
    raw: RawSession,
    id: NodeId,
    src: [u8; 4],
}

impl Peer {
    fn ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self.src))
    }

    /// Signs `payload` as this peer and sends it; returns the envelope id.
    async fn gossip(&mut self, kind: GossipKind, payload: Vec<u8>) -> MessageId {
        let envelope = Envelope::sign(&self.raw.identity, magic(), kind, now_ms(), payload);
        self.send(envelope).await
    }

    async fn send(&mut self, envelope: Envelope) -> MessageId {
        let id = envelope.id();
        self.raw.send(&Message::Gossip(envelope)).await;
        id
    }

    /// Pings and waits for the pong, skipping whatever else arrives.
    async fn ping(&mut self, nonce: u64) {
        self.raw
            .send(&Message::Ping(Ping {
                nonce,
                timestamp_ms: now_ms(),
            }))
            .await;
        loop {
            match self.raw.recv().await {
                Some(Message::Pong(p)) if p.nonce == nonce => return,
                Some(Message::Disconnect(d)) => panic!("disconnected: {d:?}"),
                Some(_) => continue,
                None => panic!("the victim closed the connection"),
            }
        }
    }

    /// Reads until the victim closes the connection; asserts it said
    /// `Disconnect(ProtocolViolation)` first.
    async fn closed_for_protocol_violation(&mut self) {
        let received = self.raw.drain_until_closed().await;
        assert!(
            received.iter().any(|m| matches!(
                m,
                Message::Disconnect(d) if d.reason == DisconnectReason::ProtocolViolation
            )),
            "no Disconnect(ProtocolViolation) among {received:?}"
        );
    }
}

/// Asserts `peer`'s score on the victim is `expected`, decayed over at most
/// the victim's lifetime (the only change to it was made after the start).
fn assert_score(v: &Victim, peer: NodeId, expected: f64) {
    assert_score_decayed(&v.node, peer, expected, v.started);
}

/// The handler refuses, charges `penalty` (at most -20 here), the victim
/// disconnects the attacker by policy and nothing is stored.
async fn refused_and_disconnected(
    v: &mut Victim,
    attacker: &mut Peer,
    handler: &str,
    reason: &str,
    offence: &str,
    penalty: f64,
) {
    let error = v.disconnected(attacker.id).await;
    assert!(
        matches!(
            *error,
            ConnectionError::Policy(DisconnectReason::ProtocolViolation)
        ),
        "{error:?}"
    );
    attacker.closed_for_protocol_violation().await;
    v.refused(handler, reason, Some(offence), attacker.id).await;
    assert_score(v, attacker.id, penalty);
    assert!(!v.node.peers().contains(&attacker.id));
    v.logged(&[
        "score below the disconnect threshold",
        &attacker.id.to_string(),
    ]);
    assert_eq!(
        layer_counters(&v.node, "scoring").rejected("disconnected"),
        1
    );
    v.assert_one_violation(attacker.ip());
}

// ----- transactions --------------------------------------------------------

#[tokio::test]
async fn malformed_transaction_bytes_cost_a_malformed_penalty() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let mut v = Victim::start(70, logs).await;
    let before = v.snapshot();
    let mut attacker = v.attacker().await;

    // A transaction whose input count claims 2^64 - 1 entries.
    attacker
        .gossip(GossipKind::Transaction, vec![1, 0, 0, 0, 0xff, 0xff, 0xff])
        .await;
    v.refused("transactions", "malformed", Some("malformed"), attacker.id)
        .await;
    assert_score(&v, attacker.id, MALFORMED);
    assert_eq!(v.snapshot(), before);

    // -10 is above the threshold: still connected and served.
    assert!(v.node.peers().contains(&attacker.id));
    attacker.ping(7).await;
    let tx = v.payment(&v.honest_wallet, 0, &v.attacker_wallet, COIN);
    v.serves_honest_peer(tx).await;
    v.node.shutdown();
}

#[tokio::test]
async fn a_transaction_with_a_bad_input_signature_is_invalid_data() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let mut v = Victim::start(71, logs).await;
    let before = v.snapshot();
    let mut attacker = v.attacker().await;

    // Signed, then an output changed: the signature covers another txid.
    let mut tx = v.payment(&v.attacker_wallet, 0, &v.honest_wallet, COIN);
    tx.outputs[0].value += 1;
    let txid = tx.txid();
    attacker
        .gossip(GossipKind::Transaction, encode_value(&tx).unwrap())
        .await;
    refused_and_disconnected(
        &mut v,
        &mut attacker,
        "transactions",
        "bad_signature",
        "invalid_data",
        INVALID_DATA,
    )
    .await;
    // The envelope itself was fine: auth passed it to the handler.
    let auth = layer_counters(&v.node, "auth");
    assert_eq!(auth.accepted(), 1);
    assert_eq!(auth.rejected("bad_signature"), 0);
    assert!(v.chain.transaction(&txid).unwrap().is_none());
    assert_eq!(v.snapshot(), before);

    let tx = v.payment(&v.honest_wallet, 0, &v.attacker_wallet, COIN);
    v.serves_honest_peer(tx).await;
    v.node.shutdown();
}

#[tokio::test]
async fn a_double_spend_of_a_pooled_output_is_refused_and_free() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let mut v = Victim::start(72, logs).await;
    let mut attacker = v.attacker().await;

    // Two valid payments spending the same output.
    let first = v.payment(&v.attacker_wallet, 0, &v.honest_wallet, COIN);
    let second = v.payment(&v.attacker_wallet, 0, &v.honest_wallet, 2 * COIN);
    assert_eq!(second.inputs[0].prevout, first.inputs[0].prevout);
    assert_ne!(second.txid(), first.txid());

    // The first enters the mempool (+1 for its first delivery) ...
    let id = attacker
        .gossip(GossipKind::Transaction, encode_value(&first).unwrap())
        .await;
    v.delivered(id, attacker.id).await;
    let before = v.snapshot();
    assert_eq!(before.mempool, vec![first.txid()]);

    // ... the second conflicts with it: refused, and free (an honest relay
    // that saw the second payment first sends exactly this).
    attacker
        .gossip(GossipKind::Transaction, encode_value(&second).unwrap())
        .await;
    v.refused("transactions", "conflict", None, attacker.id)
        .await;
    assert_score(&v, attacker.id, FIRST_DELIVERY);
    assert_eq!(v.snapshot(), before);
    assert!(v.chain.transaction(&second.txid()).unwrap().is_none());

    // Honest peers race like this too: not disconnected.
    assert!(v.node.peers().contains(&attacker.id));
    attacker.ping(7).await;
    let tx = v.payment(&v.honest_wallet, 0, &v.attacker_wallet, COIN);
    v.serves_honest_peer(tx).await;
    v.node.shutdown();
}

#[tokio::test]
async fn an_overspend_is_invalid_data() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let mut v = Victim::start(73, logs).await;
    let before = v.snapshot();
    let mut attacker = v.attacker().await;

    // 1,000 TIME in, 1,001 TIME out, correctly signed.
    let (prevout, spent): (OutPoint, TxOut) =
        v.chain.spendable(&v.attacker_wallet.address()).unwrap()[0];
    let key = v.attacker_wallet.secret_key();
    let mut tx = Transaction {
        version: 1,
        inputs: vec![TxIn {
            prevout,
            scheme: key.scheme(),
            public_key: Vec::new(),
            signature: [0; 64],
        }],
        outputs: vec![TxOut {
            value: spent.value + COIN,
            address: v.honest_wallet.address(),
        }],
        nonce: 1,
    };
    tx.sign(magic(), &[key]);
    attacker
        .gossip(GossipKind::Transaction, encode_value(&tx).unwrap())
        .await;
    refused_and_disconnected(
        &mut v,
        &mut attacker,
        "transactions",
        "insufficient_fee",
        "invalid_data",
        INVALID_DATA,
    )
    .await;
    assert!(v.chain.transaction(&tx.txid()).unwrap().is_none());
    assert_eq!(v.snapshot(), before);

    let tx = v.payment(&v.honest_wallet, 0, &v.attacker_wallet, COIN);
    v.serves_honest_peer(tx).await;
    v.node.shutdown();
}

// ----- blocks --------------------------------------------------------------

/// Sends `block` as the attacker and expects the block handler to refuse it
/// with `reason` as invalid data, disconnecting the attacker.
async fn block_refused(v: &mut Victim, block: &Block, reason: &str) {
    let before = v.snapshot();
    let mut attacker = v.attacker().await;
    attacker
        .gossip(GossipKind::Block, encode_value(block).unwrap())
        .await;
    refused_and_disconnected(
        v,
        &mut attacker,
        "blocks",
        reason,
        "invalid_data",
        INVALID_DATA,
    )
    .await;
    assert_eq!(v.snapshot(), before);
    assert_eq!(v.chain.tip().height, 0);
    assert!(v.chain.store().block(1).unwrap().is_none());
    assert!(v.chain.store().height_of(&block.hash()).unwrap().is_none());
    let tx = v.payment(&v.honest_wallet, 0, &v.attacker_wallet, COIN);
    v.serves_honest_peer(tx).await;
    v.node.shutdown();
}

#[tokio::test]
async fn malformed_block_bytes_are_refused() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let mut v = Victim::start(74, logs).await;
    let before = v.snapshot();
    let mut attacker = v.attacker().await;
    attacker
        .gossip(GossipKind::Block, b"not a block at all".to_vec())
        .await;
    // An undecodable block is charged as invalid data (a transaction or
    // vote that does not decode costs `malformed`; see the report).
    refused_and_disconnected(
        &mut v,
        &mut attacker,
        "blocks",
        "encoding",
        "invalid_data",
        INVALID_DATA,
    )
    .await;
    assert_eq!(v.snapshot(), before);
    let tx = v.payment(&v.honest_wallet, 0, &v.attacker_wallet, COIN);
    v.serves_honest_peer(tx).await;
    v.node.shutdown();
}

#[tokio::test]
async fn a_block_from_the_wrong_producer_is_refused() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let mut v = Victim::start(75, logs).await;
    let now = unix_now().as_secs();
    // Linked, in a fresh slot, correctly signed, by a masternode, but not
    // the one scheduled for the slot.
    let (_, wrong) = v.producers(now);
    let tip = v.chain.tip();
    let block = Block::produce(wrong, magic(), (tip.hash, tip.height), now, Vec::new());
    block_refused(&mut v, &block, "wrong_producer").await;
}

#[tokio::test]
async fn a_block_from_the_wrong_producer_ahead_of_the_tip_is_refused() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let mut v = Victim::start(82, logs).await;
    let now = unix_now().as_secs();
    // Two above the tip, on a parent the victim does not have, in a fresh
    // slot, correctly signed by a masternode that is not scheduled for it:
    // the header alone proves it invalid.
    let (_, wrong) = v.producers(now);
    let block = Block::produce(wrong, magic(), ([0x5a; 32], 1), now, Vec::new());
    assert_eq!(block.header.height, 2);
    block_refused(&mut v, &block, "wrong_producer").await;
    assert_eq!(v.chain.best_seen(), 0, "a refused block claims no height");
}

#[tokio::test]
async fn a_refused_block_does_not_stop_the_producer() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    // The victim is the only masternode, one block per second.
    let mut v = Victim::start_with(83, logs, Some(1)).await;
    wait_until("the victim produced", || v.chain.tip().height >= 1).await;
    let mut attacker = v.attacker().await;

    // Right after the victim's next block, the attacker sends one on top of
    // it, in the next slot, signed by a key that is not the producer.
    let seen = v.chain.tip().height;
    wait_until("the victim produced again", || v.chain.tip().height > seen).await;
    let tip = v.chain.tip();
    let outsider = NodeIdentity::generate();
    let block = Block::produce(
        &outsider,
        magic(),
        (tip.hash, tip.height),
        tip.timestamp + 1,
        Vec::new(),
    );
    attacker
        .gossip(GossipKind::Block, encode_value(&block).unwrap())
        .await;
    refused_and_disconnected(
        &mut v,
        &mut attacker,
        "blocks",
        "wrong_producer",
        "invalid_data",
        INVALID_DATA,
    )
    .await;
    assert!(v.chain.store().height_of(&block.hash()).unwrap().is_none());

    // The refused block must not count as a height seen: the victim goes on
    // producing (here it has no peer left to sync from).
    assert!(v.node.peers().is_empty());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while v.chain.tip().height < tip.height + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the producer stopped at height {} (best_seen {})",
            v.chain.tip().height,
            v.chain.best_seen()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    v.node.shutdown();
}

#[tokio::test]
async fn a_block_with_bad_linkage_is_refused() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let mut v = Victim::start(76, logs).await;
    let now = unix_now().as_secs();
    // By the scheduled producer, at the next height, on an unknown parent.
    let (scheduled, _) = v.producers(now);
    let block = Block::produce(scheduled, magic(), ([0x5a; 32], 0), now, Vec::new());
    assert_eq!(block.header.height, 1);
    block_refused(&mut v, &block, "linkage").await;
}

#[tokio::test]
async fn a_block_with_a_bad_merkle_root_is_refused() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let mut v = Victim::start(77, logs).await;
    let now = unix_now().as_secs();
    // A correctly signed header over no transactions, carrying one.
    let (scheduled, _) = v.producers(now);
    let tip = v.chain.tip();
    let mut block = Block::produce(scheduled, magic(), (tip.hash, tip.height), now, Vec::new());
    block
        .transactions
        .push(v.payment(&v.attacker_wallet, 0, &v.honest_wallet, COIN));
    assert!(!block.merkle_matches());
    block_refused(&mut v, &block, "merkle_root").await;
}

#[tokio::test]
async fn an_oversized_block_payload_is_refused_by_the_codec() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let mut v = Victim::start(78, logs).await;
    let before = v.snapshot();
    let mut attacker = v.attacker().await;

    // MAX_BLOCK_BYTES and MAX_ENVELOPE_PAYLOAD_LEN are both 2 MiB: the
    // message codec refuses the envelope before the block handler sees it.
    let payload = vec![0u8; 2 * 1024 * 1024 + 1];
    let envelope = Envelope::sign(
        &attacker.raw.identity,
        magic(),
        GossipKind::Block,
        now_ms(),
        payload,
    );
    let frame = encode_value(&Message::Gossip(envelope)).unwrap();
    attacker.raw.send_frame(&frame).await;

    let error = v.disconnected(attacker.id).await;
    assert_eq!(error.kind(), "limit_exceeded", "{error}");
    assert!(error.to_string().contains("gossip.payload"), "{error}");
    assert_closed(&mut attacker.raw.stream).await;
    v.logged(&[
        "peer disconnected",
        "error.kind=\"limit_exceeded\"",
        "peer.addr=127.0.78.101",
    ]);
    // Never reached the stack: no handler refusal, no score change, but a
    // violation against the IP.
    assert!(!v.logs.text().contains("message refused by its handler"));
    assert_eq!(layer_counters(&v.node, "auth").accepted(), 0);
    assert_score(&v, attacker.id, 0.0);
    v.assert_one_violation(attacker.ip());
    assert_eq!(v.snapshot(), before);

    let tx = v.payment(&v.honest_wallet, 0, &v.attacker_wallet, COIN);
    v.serves_honest_peer(tx).await;
    v.node.shutdown();
}

// ----- votes ---------------------------------------------------------------

fn vote(txid: Txid, verdict: Verdict) -> Vec<u8> {
    encode_value(&Vote { txid, verdict }).unwrap()
}

#[tokio::test]
async fn a_vote_from_a_non_masternode_is_a_protocol_violation() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let mut v = Victim::start(79, logs).await;
    let before = v.snapshot();
    let mut attacker = v.attacker().await;

    // A vote on a transaction the victim has not seen yet: a masternode's
    // would be held until it arrives.
    let tx = v.payment(&v.honest_wallet, 0, &v.attacker_wallet, COIN);
    let txid = tx.txid();
    attacker
        .gossip(GossipKind::Vote, vote(txid, Verdict::Accept))
        .await;
    v.refused(
        "votes",
        "not_masternode",
        Some("protocol_violation"),
        attacker.id,
    )
    .await;
    assert_score(&v, attacker.id, PROTOCOL_VIOLATION);
    assert_eq!(v.snapshot(), before);
    assert!(v.node.peers().contains(&attacker.id));
    attacker.ping(7).await;

    // The transaction arrives: no vote was held for it.
    v.serves_honest_peer(tx).await;
    let tally = v.chain.tally(&txid);
    assert_eq!((tally.accept, tally.reject, tally.voters), (0, 0, 0));
    v.node.shutdown();
}

#[tokio::test]
async fn a_forged_vote_is_refused_by_auth() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let mut v = Victim::start(80, logs).await;
    let before = v.snapshot();
    let mut attacker = v.attacker().await;

    // A vote claiming a masternode as originator, signed by the attacker.
    let tx = v.payment(&v.honest_wallet, 0, &v.attacker_wallet, COIN);
    let txid = tx.txid();
    let mut envelope = Envelope::sign(
        &attacker.raw.identity,
        magic(),
        GossipKind::Vote,
        now_ms(),
        vote(txid, Verdict::Accept),
    );
    envelope.originator = *v.masternodes[0].public_key().as_bytes();
    attacker.send(envelope).await;

    let error = v.disconnected(attacker.id).await;
    assert!(
        matches!(
            *error,
            ConnectionError::Policy(DisconnectReason::ProtocolViolation)
        ),
        "{error:?}"
    );
    attacker.closed_for_protocol_violation().await;
    let auth = layer_counters(&v.node, "auth");
    assert_eq!(auth.rejected("bad_signature"), 1);
    assert_eq!(auth.accepted(), 0);
    v.logged(&[
        "message rejected",
        "layer=\"auth\"",
        "reason=\"bad_signature\"",
        "offence=\"invalid_signature\"",
    ]);
    assert!(!v.logs.text().contains("message refused by its handler"));
    assert_score(&v, attacker.id, INVALID_SIGNATURE);
    v.assert_one_violation(attacker.ip());
    assert_eq!(v.snapshot(), before);

    // The transaction arrives: the forged vote was not held for it.
    v.serves_honest_peer(tx).await;
    let tally = v.chain.tally(&txid);
    assert_eq!((tally.accept, tally.reject, tally.voters), (0, 0, 0));
    v.node.shutdown();
}

#[tokio::test]
async fn a_duplicate_vote_is_not_counted_and_costs_nothing() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let mut v = Victim::start(81, logs).await;

    // A transaction in the mempool, from an honest peer.
    let tx = v.payment(&v.honest_wallet, 0, &v.attacker_wallet, COIN);
    let txid = tx.txid();
    v.serves_honest_peer(tx).await;

    // A masternode votes on it once (counted, +1) ...
    let masternode = v.masternodes[0].clone();
    let mut attacker = v.peer(masternode, 101).await;
    let id = attacker
        .gossip(GossipKind::Vote, vote(txid, Verdict::Accept))
        .await;
    v.delivered(id, attacker.id).await;
    let tally = v.chain.tally(&txid);
    assert_eq!((tally.accept, tally.reject, tally.voters), (1, 0, 1));
    assert!(!tally.finalized, "1 of 2 is not 2/3");
    let before = v.snapshot();

    // ... then again in another envelope (a later timestamp, as a
    // masternode re-announcing its votes after a restart sends it), and
    // once more with the other verdict. Both are handled as nothing new:
    // not counted, not relayed, not charged.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let again = attacker
        .gossip(GossipKind::Vote, vote(txid, Verdict::Accept))
        .await;
    assert_ne!(again, id);
    attacker
        .gossip(GossipKind::Vote, vote(txid, Verdict::Reject))
        .await;
    // Messages of one connection are handled in order: once the pong is
    // back, both votes were.
    attacker.ping(6).await;
    assert_score(&v, attacker.id, FIRST_DELIVERY);

    // Neither was counted; the dedup layer did not catch them (distinct
    // envelopes), the vote book did.
    let tally = v.chain.tally(&txid);
    assert_eq!((tally.accept, tally.reject, tally.voters), (1, 0, 1));
    assert_eq!(layer_counters(&v.node, "dedup").rejected("duplicate"), 0);
    assert_eq!(v.snapshot(), before);
    assert!(v.node.peers().contains(&attacker.id));
    attacker.ping(7).await;
    let tx = v.payment(&v.honest_wallet, 1, &v.attacker_wallet, COIN);
    // A second honest connection from .102 (the first is still open).
    v.serves_honest_peer(tx).await;
    v.node.shutdown();
}

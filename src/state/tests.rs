//! Unit tests of the chain state.
//!
//! Most tests simulate a small devnet: one [`Chain`] per masternode, each in
//! its own data dir, with blocks produced by `produce_if_scheduled` in slots
//! of the (past) devnet genesis and fed to the other chains as gossip.
use super::*;
use crate::chain::address::Address;
use crate::chain::genesis::{
    Genesis, GenesisMasternode, DEVNET_OUTPUTS_PER_NODE, DEVNET_OUTPUT_VALUE,
};
use crate::chain::transaction::MIN_FEE;
use crate::chain::transaction::{TxIn, COIN};
use crate::chain::votes::{Tier, Verdict};
use crate::constants::MAX_PENDING_VOTES;
use crate::params::Network;
use crate::wallet::Wallet;

/// Seconds per slot of the test genesis.
const INTERVAL: u64 = 10;

/// What a wallet holds at genesis.
const FUNDS: u64 = DEVNET_OUTPUTS_PER_NODE as u64 * DEVNET_OUTPUT_VALUE;

/// A devnet: `chains[i]` runs as `ids[i]`; `ids` are sorted by key, so
/// `ids[s % n]` produces slot `s`.
struct Net {
    genesis: Genesis,
    ids: Vec<NodeIdentity>,
    wallets: Vec<Wallet>,
    chains: Vec<Chain>,
    // Declared last: dropped after the chains.
    dirs: Vec<tempfile::TempDir>,
}

impl Net {
    fn new(masternodes: usize, wallets: usize) -> Net {
        Self::with_options(masternodes, wallets, &ChainOptions::default())
    }

    fn with_options(masternodes: usize, wallets: usize, options: &ChainOptions) -> Net {
        let mut ids: Vec<NodeIdentity> =
            (0..masternodes).map(|_| NodeIdentity::generate()).collect();
        ids.sort_by_key(key);
        let wallets: Vec<Wallet> = (0..wallets).map(|_| Wallet::generate()).collect();
        let keys: Vec<[u8; 32]> = ids.iter().map(key).collect();
        let addresses: Vec<Address> = wallets.iter().map(Wallet::address).collect();
        let genesis = Genesis::devnet(INTERVAL, &keys, &addresses).unwrap();
        Self::from_genesis(genesis, ids, wallets, options)
    }

    fn from_genesis(
        genesis: Genesis,
        ids: Vec<NodeIdentity>,
        wallets: Vec<Wallet>,
        options: &ChainOptions,
    ) -> Net {
        let mut net = Net {
            genesis,
            ids,
            wallets,
            chains: Vec::new(),
            dirs: Vec::new(),
        };
        for i in 0..net.ids.len() {
            let dir = tempfile::tempdir().unwrap();
            let chain = Chain::open(
                dir.path(),
                net.genesis.clone(),
                &net.ids[i],
                options.clone(),
            )
            .unwrap();
            net.chains.push(chain);
            net.dirs.push(dir);
        }
        net
    }

    /// A chain of a node outside the masternode set.
    fn observer(&mut self, options: ChainOptions) -> Chain {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain::open(
            dir.path(),
            self.genesis.clone(),
            &NodeIdentity::generate(),
            options,
        )
        .unwrap();
        self.dirs.push(dir);
        chain
    }

    fn key(&self, i: usize) -> [u8; 32] {
        key(&self.ids[i])
    }

    /// The index of the masternode producing `slot`.
    fn producer_of(&self, slot: u64) -> usize {
        let k = self.genesis.producer(slot).unwrap();
        self.ids.iter().position(|id| key(id) == *k).unwrap()
    }

    /// The first slot after `after` that masternode `i` produces.
    fn slot_of(&self, i: usize, after: u64) -> u64 {
        (after + 1..).find(|s| self.producer_of(*s) == i).unwrap()
    }

    /// Masternode `i` produces its block of `slot`.
    fn produce(&self, i: usize, slot: u64) -> Block {
        self.chains[i]
            .produce_if_scheduled(self.genesis.slot_start(slot))
            .unwrap()
            .expect("the node is scheduled")
    }

    /// A block signed by masternode `i` on `parent` at `timestamp`.
    fn block(
        &self,
        i: usize,
        parent: (BlockHash, u64),
        timestamp: u64,
        txs: Vec<Transaction>,
    ) -> Block {
        Block::produce(
            &self.ids[i],
            self.genesis.network.magic(),
            parent,
            timestamp,
            txs,
        )
    }

    /// Re-signs `block` as masternode `i` after a header change.
    fn resign(&self, block: &mut Block, i: usize) {
        block.header.signature = self.ids[i]
            .sign(&block.header.signing_digest(self.genesis.network.magic()))
            .to_bytes();
    }
}

fn key(id: &NodeIdentity) -> [u8; 32] {
    *id.public_key().as_bytes()
}

fn address() -> Address {
    Wallet::generate().address()
}

fn accept(txid: Txid) -> Vote {
    Vote {
        txid,
        verdict: Verdict::Accept,
    }
}

fn reject(txid: Txid) -> Vote {
    Vote {
        txid,
        verdict: Verdict::Reject,
    }
}

/// `from` pays `amount` to `to` from what `chain` says it can spend.
fn pay(chain: &Chain, from: &Wallet, to: Address, amount: u64, fee: u64) -> Transaction {
    let spendable = chain.spendable(&from.address()).unwrap();
    from.build_payment(chain.magic(), &spendable, to, amount, fee)
        .unwrap()
}

/// The tally once the journal is on disk (finality is reported durable
/// only).
fn durable_tally(chain: &Chain, txid: &Txid) -> Tally {
    assert!(chain.flush(std::time::Duration::from_secs(10)));
    chain.tally(txid)
}

fn tally(chain: &Chain, txid: &Txid) -> (u64, u64, usize, bool) {
    let t = durable_tally(chain, txid);
    (t.accept, t.reject, t.voters, t.finalized)
}

type Published = Arc<Mutex<Vec<(ItemKind, Vec<u8>)>>>;

/// Records what `chain` publishes.
fn capture(chain: &Chain) -> Published {
    let published: Published = Arc::default();
    let sink = published.clone();
    chain.set_publisher(Arc::new(move |kind, bytes| {
        sink.lock().unwrap().push((kind, bytes));
    }));
    published
}

fn published_votes(published: &Published) -> Vec<Vote> {
    published
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k == ItemKind::Vote)
        .map(|(_, b)| Chain::decode_vote(b).unwrap())
        .collect()
}

fn block_error(result: Result<BlockOutcome, ChainError>) -> BlockError {
    match result {
        Err(ChainError::Block(e)) => e,
        other => panic!("expected a block error, got {other:?}"),
    }
}

/// What a refused block must leave untouched.
#[derive(Debug, PartialEq)]
struct Snapshot {
    tip: Tip,
    store_tip: Option<(u64, BlockHash)>,
    utxos: u64,
    mempool: (usize, usize),
}

fn snapshot(chain: &Chain) -> Snapshot {
    Snapshot {
        tip: chain.tip(),
        store_tip: chain.store().tip().unwrap(),
        utxos: chain.store().utxo_count().unwrap(),
        mempool: chain.mempool_size(),
    }
}

/// `block` is refused by `chain` with `expected`, as invalid data, and
/// nothing changes.
fn assert_refused(chain: &Chain, block: Block, expected: &BlockError) {
    let before = snapshot(chain);
    let hash = block.hash();
    let result = chain.handle_block(block, "gossip");
    let error = match result {
        Err(e) => e,
        Ok(outcome) => panic!("expected {expected:?}, got {outcome:?}"),
    };
    assert_eq!(error.fault(), Some(Fault::Invalid), "{error}");
    assert_eq!(&block_error(Err(error)), expected);
    assert_eq!(snapshot(chain), before);
    assert_eq!(chain.store().height_of(&hash).unwrap(), None);
}

#[test]
fn a_fresh_chain_starts_at_its_genesis() {
    let dir = tempfile::tempdir().unwrap();
    let identity = NodeIdentity::generate();
    let genesis = Genesis::devnet(1, &[*identity.public_key().as_bytes()], &[]).unwrap();
    let chain = Chain::open(
        dir.path(),
        genesis.clone(),
        &identity,
        ChainOptions::default(),
    )
    .unwrap();
    assert_eq!(chain.tip().height, 0);
    assert_eq!(chain.tip().hash, genesis.hash());
    assert!(chain.is_masternode());
}

// ----- payments and finality --------------------------------------------

#[test]
fn a_payment_is_final_at_once_with_one_masternode() {
    let net = Net::new(1, 1);
    let chain = &net.chains[0];
    let published = capture(chain);
    let to = address();
    let tx = pay(chain, &net.wallets[0], to, 5 * COIN, MIN_FEE);
    let (txid, fee) = chain.submit_tx(tx.clone()).unwrap();
    assert_eq!((txid, fee), (tx.txid(), MIN_FEE));
    assert_eq!(chain.total_weight(), 1);
    assert_eq!(tally(chain, &txid), (1, 0, 1, true));
    assert!(durable_tally(chain, &txid).finality_secs.is_some());
    // The masternode published its own accept vote.
    assert_eq!(published_votes(&published), vec![accept(txid)]);
    assert_eq!(
        chain.transaction(&txid).unwrap(),
        Some(TxStatus::Pooled(tx.clone()))
    );
    assert_eq!(chain.mempool_txids(), vec![txid]);
    assert_eq!(chain.mempool_size(), (1, tx.size()));
    // The spent output is no longer spendable; the wallet's others are, and
    // so is the change of its own final payment.
    let spendable = chain.spendable(&net.wallets[0].address()).unwrap();
    assert_eq!(spendable.len(), DEVNET_OUTPUTS_PER_NODE);
    assert!(spendable.iter().all(|(o, _)| *o != tx.inputs[0].prevout));
    assert!(spendable
        .iter()
        .any(|(o, _)| *o == OutPoint { txid, index: 1 }));
    // The same transaction again is a harmless duplicate.
    let again = chain.submit_tx(tx).unwrap_err();
    assert!(matches!(
        again,
        ChainError::Mempool(MempoolError::Duplicate)
    ));
    assert_eq!(again.fault(), None);
    // Its own vote cannot be counted twice.
    let dup = chain.handle_vote(net.key(0), accept(txid)).unwrap();
    assert_eq!(dup, VoteHandled::Duplicate);
    assert_eq!(tally(chain, &txid), (1, 0, 1, true));
}

#[test]
fn a_payment_is_final_after_two_of_three_masternodes_accept() {
    let net = Net::new(3, 1);
    let chain = &net.chains[0];
    let tx = pay(chain, &net.wallets[0], address(), COIN, MIN_FEE);
    let (txid, _) = chain.submit_tx(tx).unwrap();
    assert_eq!(chain.total_weight(), 3);
    // Its own accept: 1 of 3, not final (3 × 1 < 2 × 3).
    assert_eq!(tally(chain, &txid), (1, 0, 1, false));
    assert_eq!(durable_tally(chain, &txid).finality_secs, None);
    // The second accept reaches 2/3.
    assert_eq!(
        chain.handle_vote(net.key(1), accept(txid)).unwrap(),
        VoteHandled::Counted(VoteOutcome::Finalized)
    );
    assert_eq!(tally(chain, &txid), (2, 0, 2, true));
    assert!(durable_tally(chain, &txid).finality_secs.is_some());
    // A later reject is counted but changes nothing.
    assert_eq!(
        chain.handle_vote(net.key(2), reject(txid)).unwrap(),
        VoteHandled::Counted(VoteOutcome::Counted)
    );
    assert_eq!(tally(chain, &txid), (2, 1, 3, true));
}

#[test]
fn vote_weights_follow_the_tiers() {
    let mut ids: Vec<NodeIdentity> = (0..3).map(|_| NodeIdentity::generate()).collect();
    ids.sort_by_key(key);
    let wallet = Wallet::generate();
    let tiers = [Tier::Gold, Tier::Free, Tier::Free];
    let masternodes = ids
        .iter()
        .zip(tiers)
        .map(|(id, tier)| GenesisMasternode {
            public_key: key(id),
            tier,
        })
        .collect();
    let allocations = vec![TxOut {
        value: 10 * COIN,
        address: wallet.address(),
    }];
    let genesis = Genesis::new(
        Network::Devnet,
        crate::chain::genesis::DEVNET_GENESIS_TIMESTAMP,
        INTERVAL,
        masternodes,
        allocations,
    )
    .unwrap();
    let net = Net::from_genesis(genesis, ids, vec![wallet], &ChainOptions::default());
    // Total 22: 2/3 needs 15 (3 × 15 = 45 ≥ 44).
    let chain = &net.chains[1];
    assert_eq!(chain.total_weight(), 22);
    let tx = pay(chain, &net.wallets[0], address(), COIN, MIN_FEE);
    let (txid, _) = chain.submit_tx(tx).unwrap();
    assert_eq!(
        chain.handle_vote(net.key(2), accept(txid)).unwrap(),
        VoteHandled::Counted(VoteOutcome::Counted)
    );
    assert_eq!(tally(chain, &txid), (2, 0, 2, false));
    assert_eq!(
        chain.handle_vote(net.key(0), accept(txid)).unwrap(),
        VoteHandled::Counted(VoteOutcome::Finalized)
    );
    assert_eq!(tally(chain, &txid), (22, 0, 3, true));
}

// ----- votes --------------------------------------------------------------

#[test]
fn votes_from_outsiders_are_a_protocol_violation() {
    let net = Net::new(3, 1);
    let chain = &net.chains[0];
    let (txid, _) = chain
        .submit_tx(pay(chain, &net.wallets[0], address(), COIN, MIN_FEE))
        .unwrap();
    let outsider = key(&NodeIdentity::generate());
    let err = chain.handle_vote(outsider, accept(txid)).unwrap_err();
    assert!(matches!(err, ChainError::Vote(VoteError::NotMasternode)));
    assert_eq!(err.fault(), Some(Fault::NotPermitted));
    assert_eq!(err.kind(), "not_masternode");
    // Also for a transaction nobody knows: never held.
    let err = chain.handle_vote(outsider, accept([9; 32])).unwrap_err();
    assert!(matches!(err, ChainError::Vote(VoteError::NotMasternode)));
    assert_eq!(tally(chain, &txid), (1, 0, 1, false));
}

#[test]
fn duplicate_votes_are_refused() {
    let net = Net::new(3, 1);
    let chain = &net.chains[0];
    let (txid, _) = chain
        .submit_tx(pay(chain, &net.wallets[0], address(), COIN, MIN_FEE))
        .unwrap();
    chain.handle_vote(net.key(1), reject(txid)).unwrap();
    for vote in [reject(txid), accept(txid)] {
        // Counted once; a repeat (e.g. re-announced) is no fault.
        let handled = chain.handle_vote(net.key(1), vote).unwrap();
        assert_eq!(handled, VoteHandled::Duplicate);
    }
    assert_eq!(tally(chain, &txid), (1, 1, 2, false));
    // Held votes too.
    let unknown = [7; 32];
    assert_eq!(
        chain.handle_vote(net.key(2), accept(unknown)).unwrap(),
        VoteHandled::Pending
    );
    assert_eq!(
        chain.handle_vote(net.key(2), accept(unknown)).unwrap(),
        VoteHandled::Duplicate
    );
}

#[test]
fn a_vote_before_its_transaction_is_held_and_counted_when_it_arrives() {
    let net = Net::new(3, 1);
    let chain = &net.chains[0];
    let tx = pay(chain, &net.wallets[0], address(), COIN, MIN_FEE);
    let txid = tx.txid();
    assert_eq!(
        chain.handle_vote(net.key(1), accept(txid)).unwrap(),
        VoteHandled::Pending
    );
    assert_eq!(tally(chain, &txid), (0, 0, 0, false));
    assert_eq!(chain.transaction(&txid).unwrap(), None);
    // Its own vote and the held one: 2 of 3.
    chain.submit_tx(tx).unwrap();
    assert_eq!(tally(chain, &txid), (2, 0, 2, true));
    assert_eq!(
        chain.handle_vote(net.key(2), accept(txid)).unwrap(),
        VoteHandled::Counted(VoteOutcome::Counted)
    );
    assert_eq!(tally(chain, &txid), (3, 0, 3, true));
}

#[test]
fn held_votes_are_bounded() {
    let net = Net::new(2, 0);
    let chain = &net.chains[0];
    for n in 0..=MAX_PENDING_VOTES as u64 {
        let mut txid = [0u8; 32];
        txid[..8].copy_from_slice(&n.to_le_bytes());
        assert_eq!(
            chain.handle_vote(net.key(1), accept(txid)).unwrap(),
            VoteHandled::Pending
        );
    }
    let state = chain.state();
    assert_eq!(state.pending_count, MAX_PENDING_VOTES);
    assert_eq!(state.pending_votes.len(), MAX_PENDING_VOTES);
    // The oldest went first.
    assert!(!state.pending_votes.contains_key(&[0u8; 32]));
}

/// In the ordinary gossip flow a node holds one of two conflicting
/// transactions; the voter's accept of the other should still be caught.
#[test]
fn an_accept_for_a_refused_conflicting_transaction_is_an_equivocation() {
    let net = Net::new(3, 1);
    let chain = &net.chains[0];
    let wallet = &net.wallets[0];
    let spendable = chain.spendable(&wallet.address()).unwrap();
    let first = wallet
        .build_payment(chain.magic(), &spendable, address(), COIN, MIN_FEE)
        .unwrap();
    let second = wallet
        .build_payment(chain.magic(), &spendable, address(), COIN, MIN_FEE)
        .unwrap();
    chain.submit_tx(first.clone()).unwrap();
    assert!(chain.submit_tx(second.clone()).is_err());
    chain.handle_vote(net.key(1), accept(first.txid())).unwrap();
    assert_eq!(
        chain
            .handle_vote(net.key(1), accept(second.txid()))
            .unwrap(),
        VoteHandled::Equivocation
    );
    assert_eq!(chain.equivocations(), 1);
}

/// A final transaction must stay final: a fee-paying newcomer must not
/// evict it from a full mempool and let a double spend of it finalize.
#[test]
fn a_final_transaction_is_not_evicted_by_a_higher_fee() {
    let options = ChainOptions {
        mempool_max_txs: 1,
        ..ChainOptions::default()
    };
    let net = Net::with_options(1, 2, &options);
    let chain = &net.chains[0];
    let wallet = &net.wallets[0];
    let spendable = chain.spendable(&wallet.address()).unwrap();
    let paid = wallet
        .build_payment(chain.magic(), &spendable, address(), COIN, MIN_FEE)
        .unwrap();
    let double = wallet
        .build_payment(chain.magic(), &spendable, wallet.address(), COIN, MIN_FEE)
        .unwrap();
    chain.submit_tx(paid.clone()).unwrap();
    assert!(durable_tally(chain, &paid.txid()).finalized);
    let rich = pay(chain, &net.wallets[1], address(), COIN, 50 * MIN_FEE);
    // Either refused (the pool holds only final transactions) or admitted
    // without evicting the final one.
    let _ = chain.submit_tx(rich);
    assert!(chain.mempool_txids().contains(&paid.txid()));
    assert!(chain.submit_tx(double.clone()).is_err());
    assert!(!durable_tally(chain, &double.txid()).finalized);
}

// ----- persistence --------------------------------------------------------

#[test]
fn a_reopened_chain_keeps_its_tip_and_refuses_another_genesis() {
    let mut net = Net::new(1, 1);
    let to = address();
    let tx = pay(&net.chains[0], &net.wallets[0], to, 3 * COIN, MIN_FEE);
    net.chains[0].submit_tx(tx.clone()).unwrap();
    for slot in 1..=3 {
        net.produce(0, slot);
    }
    let tip = net.chains[0].tip();
    assert_eq!(tip.height, 3);
    let hashes: Vec<_> = (0..=3)
        .map(|h| net.chains[0].hash_at(h).unwrap().unwrap())
        .collect();
    net.chains.clear();

    let path = net.dirs[0].path().to_path_buf();
    let chain = Chain::open(
        &path,
        net.genesis.clone(),
        &net.ids[0],
        ChainOptions::default(),
    )
    .unwrap();
    assert_eq!(chain.tip(), tip);
    for (h, hash) in hashes.iter().enumerate() {
        assert_eq!(chain.hash_at(h as u64).unwrap(), Some(*hash));
    }
    assert_eq!(chain.store().balance(&to).unwrap(), 3 * COIN);
    assert_eq!(
        chain.transaction(&tx.txid()).unwrap(),
        Some(TxStatus::InBlock(1, tx))
    );
    // It does not produce a slot it already produced, and goes on after.
    assert!(chain
        .produce_if_scheduled(net.genesis.slot_start(3))
        .unwrap()
        .is_none());
    let next = chain
        .produce_if_scheduled(net.genesis.slot_start(4))
        .unwrap()
        .unwrap();
    assert_eq!(next.header.height, 4);
    drop(chain);

    let other = Genesis::devnet(INTERVAL, &[net.key(0)], &[]).unwrap();
    let err = Chain::open(&path, other.clone(), &net.ids[0], ChainOptions::default()).unwrap_err();
    match &err {
        ChainError::WrongGenesis { expected, found } => {
            assert_eq!(expected, &hex::encode(other.hash()));
            assert_eq!(found, &hex::encode(net.genesis.hash()));
        }
        e => panic!("expected WrongGenesis, got {e:?}"),
    }
    assert_eq!(err.kind(), "wrong_genesis");
    // The right genesis still opens it.
    let chain = Chain::open(
        &path,
        net.genesis.clone(),
        &net.ids[0],
        ChainOptions::default(),
    )
    .unwrap();
    assert_eq!(chain.tip().height, 4);
}

#[test]
fn payloads_decode_or_fail_as_malformed() {
    let vote = accept([1; 32]);
    let bytes = encoding::encode_value(&vote).unwrap();
    assert_eq!(Chain::decode_vote(&bytes).unwrap(), vote);
    let err = Chain::decode_vote(&bytes[..10]).unwrap_err();
    assert_eq!(err.fault(), Some(Fault::Malformed));
    assert_eq!(err.kind(), "malformed");
    let tx = Transaction {
        version: 1,
        inputs: vec![TxIn {
            prevout: OutPoint {
                txid: [2; 32],
                index: 0,
            },
            scheme: SignatureScheme::Ed25519,
            public_key: vec![0; 32],
            signature: [0; 64],
        }],
        outputs: vec![TxOut {
            value: 1,
            address: Address([0; 20]),
        }],
        nonce: 0,
    };
    let bytes = encoding::encode_value(&tx).unwrap();
    assert_eq!(Chain::decode_tx(&bytes).unwrap(), tx);
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(
        Chain::decode_tx(&trailing),
        Err(ChainError::Encoding { .. })
    ));
}

mod blocks;
mod chains;

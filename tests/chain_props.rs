#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of the chain rules:
//!
//! * a signed transaction binds everything but its signatures: any change
//!   of an output, input, nonce or version, or of any byte of its encoding,
//!   is refused by `validate`; a signature change keeps the txid and is
//!   refused too (including the malleated forms of a valid signature);
//! * random payments and double spends never leave two pooled transactions
//!   spending one output, and the mempool stays within its bounds;
//! * a valid block with one mutated header field or a dropped, reordered or
//!   duplicated transaction is refused by a fresh node and changes nothing;
//!   re-signed by its producer, it is applied exactly when a model of the
//!   block rules says it is valid;
//! * the payload decoders never panic, on arbitrary bytes or on mutations
//!   of valid encodings.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};
use timed::chain::block::{merkle_root, Block, MAX_BLOCK_BYTES};
use timed::chain::genesis::Genesis;
use timed::chain::mempool::MempoolError;
use timed::chain::transaction::{TxError, MIN_FEE};
use timed::chain::votes::{Verdict, Vote};
use timed::chain::{Address, OutPoint, Transaction, TxOut, COIN};
use timed::constants::MAX_BLOCK_FUTURE_DRIFT_SECS;
use timed::crypto::{NodeIdentity, SecretKey, SignatureScheme};
use timed::encoding;
use timed::params::Network;
use timed::state::{BlockOutcome, Chain, ChainError, ChainOptions, TxStatus};
use timed::wallet::Wallet;

const MAGIC: [u8; 4] = Network::Devnet.magic();

/// Seconds per slot of the test genesis.
const INTERVAL: u64 = 10;

fn key(id: &NodeIdentity) -> [u8; 32] {
    *id.public_key().as_bytes()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn unsigned(tx: &Transaction) -> Transaction {
    let mut t = tx.clone();
    for input in &mut t.inputs {
        input.signature = [0; 64];
    }
    t
}

// ----- transactions -------------------------------------------------------

/// A wallet of `scheme` owning `outputs` outputs of 10 TIME, and the UTXO set
/// holding them.
fn funded(scheme: SignatureScheme, outputs: u32) -> (Wallet, HashMap<OutPoint, TxOut>) {
    let wallet = Wallet::from_secret(SecretKey::generate(scheme));
    let utxos = (0..outputs)
        .map(|index| {
            (
                OutPoint {
                    txid: [0xAB; 32],
                    index,
                },
                TxOut {
                    value: 10 * COIN,
                    address: wallet.address(),
                },
            )
        })
        .collect();
    (wallet, utxos)
}

#[derive(Clone, Debug)]
enum TxMutation {
    /// XOR one byte of the encoding with a nonzero mask.
    Flip {
        at: Index,
        mask: u8,
    },
    OutputValue {
        which: Index,
        value: u64,
    },
    OutputAddress {
        which: Index,
        address: [u8; 20],
    },
    AddOutput {
        value: u64,
    },
    DropOutput {
        which: Index,
    },
    Signature {
        which: Index,
        signature: Vec<u8>,
    },
    SignatureBit {
        which: Index,
        at: Index,
        mask: u8,
    },
    PublicKey {
        which: Index,
        flip: Index,
    },
    Prevout {
        which: Index,
        txid: [u8; 32],
        index: u32,
    },
    DropInput {
        which: Index,
    },
    Nonce(u64),
    Version(u32),
    /// Signed by another key of the same scheme.
    Thief,
}

impl TxMutation {
    fn only_signatures(&self) -> bool {
        matches!(
            self,
            TxMutation::Signature { .. } | TxMutation::SignatureBit { .. }
        )
    }
}

fn tx_mutation() -> impl Strategy<Value = TxMutation> {
    prop_oneof![
        3 => (any::<Index>(), 1u8..).prop_map(|(at, mask)| TxMutation::Flip { at, mask }),
        1 => (any::<Index>(), any::<u64>()).prop_map(|(which, value)| TxMutation::OutputValue { which, value }),
        1 => (any::<Index>(), any::<[u8; 20]>())
            .prop_map(|(which, address)| TxMutation::OutputAddress { which, address }),
        1 => (1..COIN).prop_map(|value| TxMutation::AddOutput { value }),
        1 => any::<Index>().prop_map(|which| TxMutation::DropOutput { which }),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 64))
            .prop_map(|(which, signature)| TxMutation::Signature { which, signature }),
        1 => (any::<Index>(), any::<Index>(), 1u8..)
            .prop_map(|(which, at, mask)| TxMutation::SignatureBit { which, at, mask }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(which, flip)| TxMutation::PublicKey { which, flip }),
        1 => (any::<Index>(), any::<[u8; 32]>(), 0u32..12)
            .prop_map(|(which, txid, index)| TxMutation::Prevout { which, txid, index }),
        1 => any::<Index>().prop_map(|which| TxMutation::DropInput { which }),
        1 => any::<u64>().prop_map(TxMutation::Nonce),
        1 => any::<u32>().prop_map(TxMutation::Version),
        1 => Just(TxMutation::Thief),
    ]
}

/// `tx` mutated, or `None` when the mutation changes nothing.
fn mutate_tx(tx: &Transaction, m: &TxMutation) -> Option<Transaction> {
    let mut t = tx.clone();
    let outputs = t.outputs.len();
    match m {
        TxMutation::Flip { .. } => return None,
        TxMutation::OutputValue { which, value } => t.outputs[which.index(outputs)].value = *value,
        TxMutation::OutputAddress { which, address } => {
            t.outputs[which.index(outputs)].address = Address(*address);
        }
        TxMutation::AddOutput { value } => t.outputs.push(TxOut {
            value: *value,
            address: t.outputs[0].address,
        }),
        TxMutation::DropOutput { which } => {
            t.outputs.remove(which.index(t.outputs.len()));
        }
        TxMutation::Signature { which, signature } => {
            let i = which.index(t.inputs.len());
            t.inputs[i].signature.copy_from_slice(signature);
        }
        TxMutation::SignatureBit { which, at, mask } => {
            let i = which.index(t.inputs.len());
            t.inputs[i].signature[at.index(64)] ^= mask;
        }
        TxMutation::PublicKey { which, flip } => {
            let i = which.index(t.inputs.len());
            let k = flip.index(t.inputs[i].public_key.len());
            t.inputs[i].public_key[k] ^= 0x01;
        }
        TxMutation::Prevout { which, txid, index } => {
            let i = which.index(t.inputs.len());
            t.inputs[i].prevout = OutPoint {
                txid: *txid,
                index: *index,
            };
        }
        TxMutation::DropInput { which } => {
            t.inputs.remove(which.index(t.inputs.len()));
        }
        TxMutation::Nonce(n) => t.nonce = *n,
        TxMutation::Version(v) => t.version = *v,
        TxMutation::Thief => {
            let thief = SecretKey::generate(tx.inputs[0].scheme);
            let keys = vec![&thief; t.inputs.len()];
            t.sign(MAGIC, &keys);
        }
    }
    (t != *tx).then_some(t)
}

/// `sig + L` for an ed25519 signature (`R || S`, `S` little-endian): the
/// same signature with a non-canonical `S`.
fn ed25519_malleate(signature: &[u8; 64]) -> [u8; 64] {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut out = *signature;
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(out[32 + i]) + u16::from(L[i]) + carry;
        out[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    out
}

/// `(r, n − s)` for a secp256k1 signature: the same signature with a high `S`.
fn secp256k1_malleate(signature: &[u8; 64]) -> [u8; 64] {
    let sig = k256::ecdsa::Signature::from_slice(signature).unwrap();
    let (r, s) = sig.split_scalars();
    let high = k256::ecdsa::Signature::from_scalars(r, -s).unwrap();
    let mut out = [0u8; 64];
    out.copy_from_slice(&high.to_bytes());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn a_mutated_signed_transaction_is_refused(
        secp in any::<bool>(),
        outputs in 1u32..4,
        amount_share in 1u64..1000,
        fee in MIN_FEE..10 * MIN_FEE,
        mutation in tx_mutation(),
    ) {
        let scheme = if secp { SignatureScheme::Secp256k1 } else { SignatureScheme::Ed25519 };
        let (wallet, utxos) = funded(scheme, outputs);
        let total = u64::from(outputs) * 10 * COIN;
        let amount = ((total - fee) / 1000 * amount_share).max(1);
        let spendable: Vec<_> = utxos.iter().map(|(o, t)| (*o, *t)).collect();
        let tx = wallet.build_payment(MAGIC, &spendable, Address([3; 20]), amount, fee).unwrap();
        prop_assert_eq!(tx.validate(MAGIC, &utxos), Ok(fee));

        if let TxMutation::Flip { at, mask } = &mutation {
            let mut bytes = encoding::encode_value(&tx).unwrap();
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
            if let Ok(decoded) = Chain::decode_tx(&bytes) {
                // Fixed-width encoding: no two encodings of one transaction.
                prop_assert_ne!(&decoded, &tx);
                prop_assert!(decoded.validate(MAGIC, &utxos).is_err(), "byte {} accepted", i);
                prop_assert_eq!(
                    decoded.txid() == tx.txid(),
                    unsigned(&decoded) == unsigned(&tx)
                );
            }
            return Ok(());
        }
        let Some(mutated) = mutate_tx(&tx, &mutation) else {
            return Ok(());
        };
        let result = mutated.validate(MAGIC, &utxos);
        prop_assert!(result.is_err(), "{:?} accepted", mutation);
        // The txid covers everything but the signatures.
        prop_assert_eq!(mutated.txid() == tx.txid(), mutation.only_signatures());
        if mutation.only_signatures() {
            prop_assert!(matches!(result, Err(TxError::Signature { .. })), "{:?}", result);
        }
    }

    #[test]
    fn malleated_signatures_are_refused_and_keep_the_txid(secp in any::<bool>(), which in any::<Index>()) {
        let scheme = if secp { SignatureScheme::Secp256k1 } else { SignatureScheme::Ed25519 };
        let (wallet, utxos) = funded(scheme, 3);
        let spendable: Vec<_> = utxos.iter().map(|(o, t)| (*o, *t)).collect();
        let tx = wallet.build_payment(MAGIC, &spendable, Address([3; 20]), 25 * COIN, MIN_FEE).unwrap();
        let i = which.index(tx.inputs.len());
        let mut malleated = tx.clone();
        let sig = &mut malleated.inputs[i].signature;
        *sig = if secp { secp256k1_malleate(sig) } else { ed25519_malleate(sig) };
        prop_assert_ne!(&malleated, &tx);
        prop_assert_eq!(malleated.txid(), tx.txid());
        let result = malleated.validate(MAGIC, &utxos);
        prop_assert!(matches!(result, Err(TxError::Signature { .. })), "{:?}", result);
    }

    #[test]
    fn the_owner_re_signing_a_changed_payment_makes_another_transaction(
        cut in 1u64..COIN,
        nonce in any::<u64>(),
    ) {
        let (wallet, utxos) = funded(SignatureScheme::Ed25519, 1);
        let spendable: Vec<_> = utxos.iter().map(|(o, t)| (*o, *t)).collect();
        let tx = wallet.build_payment(MAGIC, &spendable, Address([3; 20]), 2 * COIN, MIN_FEE).unwrap();
        let mut changed = tx.clone();
        changed.outputs[0].value -= cut;
        changed.nonce = nonce;
        prop_assert!(changed.validate(MAGIC, &utxos).is_err());
        changed.sign(MAGIC, &[wallet.secret_key()]);
        prop_assert_eq!(changed.validate(MAGIC, &utxos), Ok(MIN_FEE + cut));
        prop_assert_ne!(changed.txid(), tx.txid());
    }
}

// ----- the mempool under random payments and double spends ---------------

/// One node (the only masternode) and funded wallets.
struct Solo {
    genesis: Genesis,
    wallets: Vec<Wallet>,
    chain: Chain,
    _dir: tempfile::TempDir,
}

fn solo(wallets: usize, options: ChainOptions) -> Solo {
    let id = NodeIdentity::generate();
    let wallets: Vec<Wallet> = (0..wallets).map(|_| Wallet::generate()).collect();
    let addresses: Vec<Address> = wallets.iter().map(Wallet::address).collect();
    let genesis = Genesis::devnet(INTERVAL, &[key(&id)], &addresses).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::open(dir.path(), genesis.clone(), &id, options).unwrap();
    Solo {
        genesis,
        wallets,
        chain,
        _dir: dir,
    }
}

#[derive(Clone, Debug)]
enum PoolOp {
    /// A payment from what the node says the wallet can spend.
    Pay {
        wallet: Index,
        amount: u64,
        fee: u64,
    },
    /// A payment spending one chosen output of the wallet: one a pooled
    /// transaction spends (a double spend) when `conflict` and there is one,
    /// else any.
    Spend {
        wallet: Index,
        output: Index,
        conflict: bool,
        amount: u64,
        fee: u64,
    },
    /// Submit again a transaction submitted earlier.
    Replay(Index),
    /// Produce the next block.
    Produce,
}

fn pool_op() -> impl Strategy<Value = PoolOp> {
    let amount = 1..5 * COIN;
    let fee = MIN_FEE..40 * MIN_FEE;
    prop_oneof![
        4 => (any::<Index>(), amount.clone(), fee.clone())
            .prop_map(|(wallet, amount, fee)| PoolOp::Pay { wallet, amount, fee }),
        4 => (any::<Index>(), any::<Index>(), any::<bool>(), amount, fee)
            .prop_map(|(wallet, output, conflict, amount, fee)| PoolOp::Spend { wallet, output, conflict, amount, fee }),
        1 => any::<Index>().prop_map(PoolOp::Replay),
        1 => Just(PoolOp::Produce),
    ]
}

/// The mempool's invariants: within bounds, no output spent twice, every
/// transaction valid against the chain and not in it, and what it spends
/// not offered as spendable.
fn check_pool(s: &Solo, max_txs: usize, max_bytes: usize) -> Result<(), TestCaseError> {
    let chain = &s.chain;
    let (count, bytes) = chain.mempool_size();
    prop_assert!(count <= max_txs.max(1), "{} transactions", count);
    prop_assert!(bytes <= max_bytes, "{} bytes", bytes);
    let ids = chain.mempool_txids();
    prop_assert_eq!(ids.len(), count);
    let mut spent = HashSet::new();
    let mut size = 0;
    for id in &ids {
        let Some(TxStatus::Pooled(tx)) = chain.transaction(id).unwrap() else {
            return Err(TestCaseError::fail("a listed txid is not pooled"));
        };
        size += tx.size();
        for input in &tx.inputs {
            prop_assert!(
                spent.insert(input.prevout),
                "{:?} spent twice",
                input.prevout
            );
        }
        for input in &tx.inputs {
            prop_assert!(chain.store().get_utxo(&input.prevout).unwrap().is_some());
        }
        prop_assert_eq!(chain.store().tx_height(id).unwrap(), None);
    }
    prop_assert_eq!(size, bytes);
    for w in &s.wallets {
        for (o, _) in chain.spendable(&w.address()).unwrap() {
            prop_assert!(!spent.contains(&o));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn random_payments_and_double_spends_keep_the_mempool_consistent(
        max_txs in 1usize..6,
        max_bytes in 200usize..1500,
        ops in proptest::collection::vec(pool_op(), 1..20),
    ) {
        let options = ChainOptions {
            mempool_max_txs: max_txs,
            mempool_max_bytes: max_bytes,
            ..ChainOptions::default()
        };
        let s = solo(3, options);
        let chain = &s.chain;
        let mut submitted: Vec<Transaction> = Vec::new();
        let mut slot = 0;
        for op in ops {
            match op {
                PoolOp::Pay { wallet, amount, fee } => {
                    let w = &s.wallets[wallet.index(s.wallets.len())];
                    let spendable = chain.spendable(&w.address()).unwrap();
                    if let Ok(tx) = w.build_payment(MAGIC, &spendable, Address([1; 20]), amount, fee) {
                        match chain.submit_tx(tx.clone()) {
                            Ok((id, got)) => {
                                prop_assert_eq!((id, got), (tx.txid(), fee));
                                prop_assert!(chain.mempool_txids().contains(&id));
                            }
                            Err(e) => prop_assert!(
                                matches!(e, ChainError::Mempool(MempoolError::Full { .. } | MempoolError::TooLarge)),
                                "{:?}", e
                            ),
                        }
                        submitted.push(tx);
                    }
                }
                PoolOp::Spend { wallet, output, conflict, amount, fee } => {
                    let w = &s.wallets[wallet.index(s.wallets.len())];
                    let free = chain.spendable(&w.address()).unwrap();
                    let owned = chain.store().utxos_for(&w.address()).unwrap();
                    let pooled: Vec<_> = owned.iter().filter(|o| !free.contains(o)).copied().collect();
                    let choice = if conflict && !pooled.is_empty() { &pooled } else { &owned };
                    if choice.is_empty() {
                        continue;
                    }
                    let (o, out) = choice[output.index(choice.len())];
                    let pooled_spender = !free.iter().any(|(p, _)| *p == o);
                    let tx = w.build_payment(MAGIC, &[(o, out)], Address([2; 20]), amount, fee).unwrap();
                    let result = chain.submit_tx(tx.clone());
                    if pooled_spender {
                        prop_assert!(
                            matches!(result, Err(ChainError::Mempool(MempoolError::Conflict(_)))),
                            "a double spend was not refused: {:?}", result
                        );
                    } else {
                        prop_assert!(
                            !matches!(result, Err(ChainError::Mempool(MempoolError::Conflict(_)))),
                            "a conflict without a pooled spender"
                        );
                    }
                    submitted.push(tx);
                }
                PoolOp::Replay(which) => {
                    if !submitted.is_empty() {
                        let tx = submitted[which.index(submitted.len())].clone();
                        let id = tx.txid();
                        let before = chain.transaction(&id).unwrap();
                        let result = chain.submit_tx(tx);
                        match before {
                            Some(TxStatus::Pooled(_)) => prop_assert!(matches!(
                                result,
                                Err(ChainError::Mempool(MempoolError::Duplicate))
                            )),
                            Some(TxStatus::InBlock(..)) => {
                                prop_assert!(matches!(result, Err(ChainError::AlreadyInChain)));
                            }
                            None => {}
                        }
                    }
                }
                PoolOp::Produce => {
                    slot += 1;
                    let pooled = chain.mempool_txids();
                    let block = chain
                        .produce_if_scheduled(s.genesis.slot_start(slot))
                        .unwrap()
                        .expect("the only masternode produces every slot");
                    // Everything pooled was final (one masternode): all of it
                    // goes into the block, and the pool empties.
                    let ids: HashSet<_> = block.transactions.iter().map(Transaction::txid).collect();
                    prop_assert_eq!(ids, pooled.into_iter().collect::<HashSet<_>>());
                    prop_assert_eq!(chain.mempool_size(), (0, 0));
                }
            }
            check_pool(&s, max_txs, max_bytes)?;
        }
    }
}

// ----- mutated blocks -----------------------------------------------------

/// A valid block at height 1 of a two-masternode devnet, holding two
/// independent payments and one spending the first one's change.
struct BlockFixture {
    genesis: Genesis,
    ids: Vec<NodeIdentity>,
    producer: usize,
    block: Block,
    /// The genesis UTXO set.
    utxos: HashMap<OutPoint, TxOut>,
}

fn fixture() -> &'static BlockFixture {
    static FIXTURE: OnceLock<BlockFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut ids: Vec<NodeIdentity> = (0..2).map(|_| NodeIdentity::generate()).collect();
        ids.sort_by_key(key);
        let wallets: Vec<Wallet> = (0..2).map(|_| Wallet::generate()).collect();
        let keys: Vec<[u8; 32]> = ids.iter().map(key).collect();
        let addresses: Vec<Address> = wallets.iter().map(Wallet::address).collect();
        let genesis = Genesis::devnet(INTERVAL, &keys, &addresses).unwrap();
        let alloc = genesis.allocation_tx().unwrap();
        let alloc_id = alloc.txid();
        let utxos: HashMap<OutPoint, TxOut> = alloc
            .outputs
            .iter()
            .enumerate()
            .map(|(i, o)| {
                (
                    OutPoint {
                        txid: alloc_id,
                        index: i as u32,
                    },
                    *o,
                )
            })
            .collect();
        let of = |w: &Wallet| -> Vec<(OutPoint, TxOut)> {
            utxos
                .iter()
                .filter(|(_, o)| o.address == w.address())
                .map(|(p, o)| (*p, *o))
                .collect()
        };
        let first = wallets[0]
            .build_payment(MAGIC, &of(&wallets[0]), Address([7; 20]), 3 * COIN, MIN_FEE)
            .unwrap();
        let second = wallets[1]
            .build_payment(
                MAGIC,
                &of(&wallets[1]),
                Address([8; 20]),
                5 * COIN,
                2 * MIN_FEE,
            )
            .unwrap();
        let change = OutPoint {
            txid: first.txid(),
            index: 1,
        };
        let third = wallets[0]
            .build_payment(
                MAGIC,
                &[(change, first.outputs[1])],
                Address([9; 20]),
                COIN,
                MIN_FEE,
            )
            .unwrap();
        let slot = 1;
        let producer = ids
            .iter()
            .position(|id| Some(&key(id)) == genesis.producer(slot))
            .unwrap();
        let block = Block::produce(
            &ids[producer],
            MAGIC,
            (genesis.hash(), 0),
            genesis.slot_start(slot),
            vec![first, second, third],
        );
        BlockFixture {
            genesis,
            ids,
            producer,
            block,
            utxos,
        }
    })
}

/// A node at the fixture's genesis.
fn fresh_node(f: &BlockFixture) -> (tempfile::TempDir, Chain) {
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::open(
        dir.path(),
        f.genesis.clone(),
        &NodeIdentity::generate(),
        ChainOptions::default(),
    )
    .unwrap();
    (dir, chain)
}

#[derive(Clone, Debug)]
enum BlockMutation {
    Version(u32),
    Height(u64),
    PrevHash([u8; 32]),
    MerkleRoot([u8; 32]),
    Timestamp(u64),
    Producer([u8; 32]),
    /// The other masternode as the producer.
    OtherProducer,
    Signature(Vec<u8>),
    SignatureBit(Index, u8),
    DropTx(Index),
    SwapTxs(Index, Index),
    DuplicateTx(Index, Index),
}

fn block_mutation() -> impl Strategy<Value = BlockMutation> {
    let f = fixture();
    let genesis_ts = f.genesis.timestamp;
    let now = now_secs();
    let timestamp = prop_oneof![
        any::<u64>(),
        // Slot starts and points inside slots, from before the genesis on.
        (0u64..40, 0..INTERVAL)
            .prop_map(move |(s, o)| genesis_ts - 2 * INTERVAL + s * INTERVAL + o),
        // Well past the allowed drift.
        (now + MAX_BLOCK_FUTURE_DRIFT_SECS + 60..now + 1_000_000),
    ];
    prop_oneof![
        1 => any::<u32>().prop_map(BlockMutation::Version),
        1 => prop_oneof![0u64..5, any::<u64>()].prop_map(BlockMutation::Height),
        1 => any::<[u8; 32]>().prop_map(BlockMutation::PrevHash),
        1 => any::<[u8; 32]>().prop_map(BlockMutation::MerkleRoot),
        3 => timestamp.prop_map(BlockMutation::Timestamp),
        1 => any::<[u8; 32]>().prop_map(BlockMutation::Producer),
        1 => Just(BlockMutation::OtherProducer),
        1 => proptest::collection::vec(any::<u8>(), 64).prop_map(BlockMutation::Signature),
        1 => (any::<Index>(), 1u8..).prop_map(|(i, m)| BlockMutation::SignatureBit(i, m)),
        2 => any::<Index>().prop_map(BlockMutation::DropTx),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| BlockMutation::SwapTxs(a, b)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| BlockMutation::DuplicateTx(a, b)),
    ]
}

fn mutate_block(f: &BlockFixture, m: &BlockMutation) -> Block {
    let mut b = f.block.clone();
    let h = &mut b.header;
    let n = b.transactions.len();
    match m {
        BlockMutation::Version(v) => h.version = *v,
        BlockMutation::Height(x) => h.height = *x,
        BlockMutation::PrevHash(x) => h.prev_hash = *x,
        BlockMutation::MerkleRoot(x) => h.merkle_root = *x,
        BlockMutation::Timestamp(x) => h.timestamp = *x,
        BlockMutation::Producer(x) => h.producer = *x,
        BlockMutation::OtherProducer => h.producer = key(&f.ids[1 - f.producer]),
        BlockMutation::Signature(x) => h.signature.copy_from_slice(x),
        BlockMutation::SignatureBit(i, mask) => h.signature[i.index(64)] ^= mask,
        BlockMutation::DropTx(i) => {
            b.transactions.remove(i.index(n));
        }
        BlockMutation::SwapTxs(i, j) => b.transactions.swap(i.index(n), j.index(n)),
        BlockMutation::DuplicateTx(i, at) => {
            let tx = b.transactions[i.index(n)].clone();
            b.transactions.insert(at.index(n + 1), tx);
        }
    }
    b
}

/// Recomputes the merkle root (unless that is the mutation) and signs with
/// the scheduled producer's key.
fn resign(f: &BlockFixture, b: &mut Block, m: &BlockMutation) {
    if !matches!(m, BlockMutation::MerkleRoot(_)) {
        let ids: Vec<_> = b.transactions.iter().map(Transaction::txid).collect();
        b.header.merkle_root = merkle_root(&ids);
    }
    b.header.signature = f.ids[f.producer]
        .sign(&b.header.signing_digest(MAGIC))
        .to_bytes();
}

/// The block rules, restated: is `b`, signed by the scheduled producer of
/// the fixture's slot, a valid child of the genesis?
fn model_valid(f: &BlockFixture, b: &Block) -> bool {
    let h = &b.header;
    let g = &f.genesis;
    let slot = g.slot(h.timestamp);
    let txids: Vec<_> = b.transactions.iter().map(Transaction::txid).collect();
    let header_ok = h.version == 1
        && h.height == 1
        && h.prev_hash == g.hash()
        && h.merkle_root == merkle_root(&txids)
        && h.timestamp >= g.timestamp
        && slot >= 1
        && h.timestamp <= now_secs() + MAX_BLOCK_FUTURE_DRIFT_SECS
        && h.producer == key(&f.ids[f.producer])
        && g.producer(slot) == Some(&h.producer);
    if !header_ok {
        return false;
    }
    let mut utxos = f.utxos.clone();
    let mut seen = HashSet::new();
    for tx in &b.transactions {
        let id = tx.txid();
        if !seen.insert(id) || tx.validate(MAGIC, &utxos).is_err() {
            return false;
        }
        for input in &tx.inputs {
            utxos.remove(&input.prevout);
        }
        for (i, out) in tx.outputs.iter().enumerate() {
            utxos.insert(
                OutPoint {
                    txid: id,
                    index: i as u32,
                },
                *out,
            );
        }
    }
    true
}

/// Tip height and hash, UTXO count, stored tip.
type NodeState = (u64, [u8; 32], u64, Option<(u64, [u8; 32])>);

fn node_state(chain: &Chain) -> NodeState {
    let tip = chain.tip();
    (
        tip.height,
        tip.hash,
        chain.store().utxo_count().unwrap(),
        chain.store().tip().unwrap(),
    )
}

#[test]
fn the_fixture_block_is_valid() {
    let f = fixture();
    assert!(model_valid(f, &f.block));
    let (_dir, node) = fresh_node(f);
    let before = node.store().utxo_count().unwrap();
    assert_eq!(
        node.handle_block(f.block.clone(), "gossip").unwrap(),
        BlockOutcome::Applied
    );
    assert_eq!(node.tip().hash, f.block.hash());
    // Three transactions spend three outputs and create six.
    assert_eq!(node.store().utxo_count().unwrap(), before + 3);
}

/// A mutated block is refused whatever the mutation, so one node serves every
/// case (opening a store is the slow part).
#[test]
fn a_mutated_block_is_refused_and_changes_nothing() {
    let f = fixture();
    let (_dir, node) = fresh_node(f);
    let before = node_state(&node);
    let mut runner = TestRunner::new(Config::with_cases(256));
    runner
        .run(&block_mutation(), |m| {
            let block = mutate_block(f, &m);
            prop_assume!(block != f.block);
            let result = node.handle_block(block, "gossip");
            prop_assert!(
                matches!(result, Err(ChainError::Block(_)) | Ok(BlockOutcome::Ahead)),
                "{:?}: {:?}",
                m,
                result
            );
            prop_assert_eq!(node_state(&node), before);
            Ok(())
        })
        .unwrap();
}

/// Re-signed by the scheduled producer (with the merkle root recomputed), a
/// mutated block is applied exactly when the model says it is valid. A node
/// is replaced only after it applied a block.
#[test]
fn a_mutated_block_re_signed_by_its_producer_is_applied_exactly_when_valid() {
    let f = fixture();
    let node = std::cell::RefCell::new(fresh_node(f));
    let before = node_state(&node.borrow().1);
    let mut runner = TestRunner::new(Config::with_cases(128));
    runner
        .run(&block_mutation(), |m| {
            let mut block = mutate_block(f, &m);
            resign(f, &mut block, &m);
            prop_assume!(block != f.block);
            let valid = model_valid(f, &block);
            let hash = block.hash();
            let result = node.borrow().1.handle_block(block, "gossip");
            if valid {
                prop_assert_eq!(result.unwrap(), BlockOutcome::Applied, "{:?}", m);
                prop_assert_eq!(node.borrow().1.tip().hash, hash);
                *node.borrow_mut() = fresh_node(f);
            } else {
                prop_assert!(
                    matches!(result, Err(ChainError::Block(_)) | Ok(BlockOutcome::Ahead)),
                    "{:?}: {:?}",
                    m,
                    result
                );
                prop_assert_eq!(node_state(&node.borrow().1), before);
            }
            Ok(())
        })
        .unwrap();
}

// ----- decoders -----------------------------------------------------------

fn sample_vote() -> Vote {
    Vote {
        txid: [5; 32],
        verdict: Verdict::Reject,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Chain::decode_block(&bytes);
        let _ = Chain::decode_tx(&bytes);
        let _ = Chain::decode_vote(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_damaged_encodings(
        which in 0u8..3,
        flips in proptest::collection::vec((any::<Index>(), any::<u8>()), 0..4),
        cut in any::<Index>(),
        truncate in any::<bool>(),
    ) {
        let f = fixture();
        let mut bytes = match which {
            0 => encoding::encode_value(&f.block).unwrap(),
            1 => encoding::encode_value(&f.block.transactions[0]).unwrap(),
            _ => encoding::encode_value(&sample_vote()).unwrap(),
        };
        for (at, mask) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let block = Chain::decode_block(&bytes);
        let tx = Chain::decode_tx(&bytes);
        let vote = Chain::decode_vote(&bytes);
        // What decodes re-encodes to the same bytes (one encoding per value).
        if let Ok(b) = block {
            prop_assert_eq!(encoding::encode_value(&b).unwrap(), bytes.clone());
        }
        if let Ok(t) = tx {
            prop_assert_eq!(encoding::encode_value(&t).unwrap(), bytes.clone());
        }
        if let Ok(v) = vote {
            prop_assert_eq!(encoding::encode_value(&v).unwrap(), bytes);
        }
    }
}

/// Damaged block encodings that still decode never disturb a node.
#[test]
fn decoded_damaged_blocks_never_change_a_node() {
    let f = fixture();
    let (_dir, node) = fresh_node(f);
    let before = node_state(&node);
    let encoded = encoding::encode_value(&f.block).unwrap();
    let mut runner = TestRunner::new(Config::with_cases(128));
    runner
        .run(
            &proptest::collection::vec((any::<Index>(), 1u8..), 1..3),
            |flips| {
                let mut bytes = encoded.clone();
                for (at, mask) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] ^= mask;
                }
                if let Ok(block) = Chain::decode_block(&bytes) {
                    let result = node.handle_block(block, "gossip");
                    prop_assert!(
                        matches!(result, Err(ChainError::Block(_)) | Ok(BlockOutcome::Ahead)),
                        "{:?}",
                        result
                    );
                    prop_assert_eq!(node_state(&node), before);
                }
                Ok(())
            },
        )
        .unwrap();
    assert!(encoded.len() < MAX_BLOCK_BYTES);
}

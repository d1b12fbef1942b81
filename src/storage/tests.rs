//! Tests of the chain tables: applies, rollbacks, indexes, reopen.

use std::collections::BTreeMap;

use super::*;
use crate::chain::block::Block;
use crate::chain::transaction::{Transaction, TxIn, COIN};
use crate::crypto::{NodeIdentity, SecretKey, SignatureScheme};

const MAGIC: [u8; 4] = *b"TDEV";

fn genesis(owner: &SecretKey) -> Block {
    genesis_paying(vec![TxOut {
        value: 1_000 * COIN,
        address: Address::from_public_key(&owner.public_key()),
    }])
}

fn genesis_paying(outputs: Vec<TxOut>) -> Block {
    let alloc = Transaction {
        version: 1,
        inputs: Vec::new(),
        outputs,
        nonce: 0,
    };
    let txids = [alloc.txid()];
    Block {
        header: crate::chain::block::BlockHeader {
            version: 1,
            height: 0,
            prev_hash: [0; 32],
            merkle_root: crate::chain::block::merkle_root(&txids),
            timestamp: 0,
            producer: [0; 32],
            signature: [0; 64],
        },
        transactions: vec![alloc],
    }
}

fn address(key: &SecretKey) -> Address {
    Address::from_public_key(&key.public_key())
}

fn out(value: u64, address: Address) -> TxOut {
    TxOut { value, address }
}

fn op(tx: &Transaction, index: u32) -> OutPoint {
    OutPoint {
        txid: tx.txid(),
        index,
    }
}

/// A signed transaction spending `spends` (each with its owner's key).
fn pay(spends: &[(OutPoint, &SecretKey)], outputs: Vec<TxOut>, nonce: u64) -> Transaction {
    let mut tx = Transaction {
        version: 1,
        inputs: spends
            .iter()
            .map(|(prevout, _)| TxIn {
                prevout: *prevout,
                scheme: SignatureScheme::Ed25519,
                public_key: Vec::new(),
                signature: [0; 64],
            })
            .collect(),
        outputs,
        nonce,
    };
    let keys: Vec<&SecretKey> = spends.iter().map(|(_, key)| *key).collect();
    tx.sign(MAGIC, &keys);
    tx
}

/// Genesis and two blocks: block 1 spends a genesis output and, in a
/// second transaction, an output created earlier in the same block;
/// block 2 spends outputs of genesis and block 1 with several inputs.
struct Chain {
    producer: NodeIdentity,
    addresses: Vec<Address>,
    blocks: Vec<Block>,
}

fn chain() -> Chain {
    let a = SecretKey::generate(SignatureScheme::Ed25519);
    let b = SecretKey::generate(SignatureScheme::Ed25519);
    let c = Address([0xcc; 20]);
    let producer = NodeIdentity::generate();
    let g = genesis_paying(vec![
        out(1_000 * COIN, address(&a)),
        out(500 * COIN, address(&b)),
    ]);
    let alloc = &g.transactions[0];
    let t1 = pay(
        &[(op(alloc, 0), &a)],
        vec![out(100 * COIN, address(&b)), out(899 * COIN, address(&a))],
        1,
    );
    let t2 = pay(
        &[(op(&t1, 0), &b)],
        vec![out(50 * COIN, c), out(49 * COIN, address(&b))],
        2,
    );
    let b1 = Block::produce(
        &producer,
        MAGIC,
        (g.hash(), 0),
        1,
        vec![t1.clone(), t2.clone()],
    );
    let t3 = pay(
        &[(op(&t2, 1), &b), (op(alloc, 1), &b)],
        vec![out(300 * COIN, address(&a)), out(248 * COIN, c)],
        3,
    );
    let t4 = pay(
        &[(op(&t1, 1), &a)],
        vec![out(10 * COIN, c), out(888 * COIN, address(&a))],
        4,
    );
    let b2 = Block::produce(&producer, MAGIC, (b1.hash(), 1), 2, vec![t3, t4]);
    Chain {
        producer,
        addresses: vec![address(&a), address(&b), c, Address([0xdd; 20])],
        blocks: vec![g, b1, b2],
    }
}

type Rows = Vec<(Vec<u8>, Vec<u8>)>;

fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> Rows {
    let table = tx.open_table(table).unwrap();
    table
        .iter()
        .unwrap()
        .map(|entry| {
            let (k, v) = entry.unwrap();
            let key = K::as_bytes(&k.value()).as_ref().to_vec();
            let value = V::as_bytes(&v.value()).as_ref().to_vec();
            (key, value)
        })
        .collect()
}

/// Every chain table, raw.
fn snapshot(store: &Store) -> Vec<(&'static str, Rows)> {
    let tx = store.db().begin_read().unwrap();
    vec![
        ("blocks", rows(&tx, BLOCKS)),
        ("block_hashes", rows(&tx, BLOCK_HASHES)),
        ("block_heights", rows(&tx, BLOCK_HEIGHTS)),
        ("utxos", rows(&tx, UTXOS)),
        ("tx_index", rows(&tx, TX_INDEX)),
        ("undo", rows(&tx, UNDO)),
        ("address_utxos", rows(&tx, ADDRESS_UTXOS)),
        ("meta", rows(&tx, META)),
    ]
}

/// The UTXO set by a full scan of `utxos`.
fn scan(store: &Store) -> BTreeMap<OutPoint, TxOut> {
    let tx = store.db().begin_read().unwrap();
    rows(&tx, UTXOS)
        .into_iter()
        .map(|(key, value)| {
            let outpoint = OutPoint {
                txid: key[..32].try_into().unwrap(),
                index: u32::from_be_bytes(key[32..].try_into().unwrap()),
            };
            (outpoint, encoding::decode_value(&value).unwrap())
        })
        .collect()
}

fn undo_at(store: &Store, height: u64) -> Option<Vec<(OutPoint, TxOut)>> {
    let tx = store.db().begin_read().unwrap();
    let undo = tx.open_table(UNDO).unwrap();
    let record = undo.get(height).unwrap();
    record.map(|v| encoding::decode_value(v.value()).unwrap())
}

/// The address index answers exactly what a full scan of `utxos` does.
fn assert_index_matches_scan(store: &Store, addresses: &[Address]) {
    let all = scan(store);
    for address in addresses {
        let expected: Vec<(OutPoint, TxOut)> = all
            .iter()
            .filter(|(_, o)| o.address == *address)
            .map(|(p, o)| (*p, *o))
            .collect();
        assert_eq!(store.utxos_for(address).unwrap(), expected, "{address:?}");
        let sum: u64 = expected.iter().map(|(_, o)| o.value).sum();
        assert_eq!(store.balance(address).unwrap(), sum, "{address:?}");
    }
    let tx = store.db().begin_read().unwrap();
    let indexed = tx.open_table(ADDRESS_UTXOS).unwrap().len().unwrap();
    assert_eq!(indexed, all.len() as u64, "one index entry per output");
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join(DB_FILE)).unwrap()
}

/// A store in `dir` holding the whole test chain.
fn stored_chain(dir: &tempfile::TempDir) -> (Store, Chain) {
    let store = open(dir);
    let c = chain();
    for block in &c.blocks {
        store.apply_block(block).unwrap();
    }
    (store, c)
}

#[test]
fn blocks_apply_atomically_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let owner = SecretKey::generate(SignatureScheme::Ed25519);
    let producer = NodeIdentity::generate();
    let g = genesis(&owner);
    let funding = OutPoint {
        txid: g.transactions[0].txid(),
        index: 0,
    };
    let mut pay = Transaction {
        version: 1,
        inputs: vec![TxIn {
            prevout: funding,
            scheme: SignatureScheme::Ed25519,
            public_key: Vec::new(),
            signature: [0; 64],
        }],
        outputs: vec![TxOut {
            value: 10 * COIN,
            address: Address([3; 20]),
        }],
        nonce: 1,
    };
    pay.sign(MAGIC, &[&owner]);
    {
        let store = Store::open(&path).unwrap();
        assert_eq!(store.tip().unwrap(), None);
        store.apply_block(&g).unwrap();
        assert_eq!(pay.validate(MAGIC, &store).unwrap(), 990 * COIN);
        let b1 = Block::produce(&producer, MAGIC, (g.hash(), 0), 1, vec![pay.clone()]);
        store.apply_block(&b1).unwrap();
        // The same spend again: refused, nothing written.
        let b2 = Block::produce(&producer, MAGIC, (b1.hash(), 1), 2, vec![pay.clone()]);
        assert!(matches!(
            store.apply_block(&b2),
            Err(StoreError::MissingOutput(_))
        ));
        assert_eq!(store.tip().unwrap().unwrap().0, 1);
        // Not extending the tip: refused.
        assert!(matches!(
            store.apply_block(&b1),
            Err(StoreError::NotNext { .. })
        ));
    }
    let store = Store::open(&path).unwrap();
    let (height, hash) = store.tip().unwrap().unwrap();
    assert_eq!(height, 1);
    assert_eq!(store.height_of(&hash).unwrap(), Some(1));
    assert_eq!(store.block(1).unwrap().unwrap().transactions[0], pay);
    assert_eq!(store.get_utxo(&funding).unwrap(), None, "spent");
    assert_eq!(store.utxo_count().unwrap(), 1);
    assert_eq!(store.tx_height(&pay.txid()).unwrap(), Some(1));
}

#[test]
fn a_corrupt_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    std::fs::write(&path, vec![0x5a; 4096]).unwrap();
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::Damaged { .. })
    ));
}

#[test]
fn undo_records_list_the_spent_outputs_in_spend_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let c = chain();
    for block in &c.blocks {
        assert_eq!(undo_at(&store, block.header.height), None);
        let before = scan(&store);
        store.apply_block(block).unwrap();
        // Every input, in block order, with the output it spent: an
        // output created earlier in the same block included.
        let mut created = before.clone();
        let mut expected = Vec::new();
        for tx in &block.transactions {
            for input in &tx.inputs {
                let spent = created.remove(&input.prevout).unwrap();
                expected.push((input.prevout, spent));
            }
            for (i, o) in tx.outputs.iter().enumerate() {
                created.insert(op(tx, i as u32), *o);
            }
        }
        assert_eq!(created, scan(&store));
        assert_eq!(undo_at(&store, block.header.height), Some(expected));
    }
    assert_eq!(
        undo_at(&store, 0),
        Some(Vec::new()),
        "genesis spends nothing"
    );
    assert_eq!(undo_at(&store, 1).unwrap().len(), 2);
    assert_eq!(undo_at(&store, 2).unwrap().len(), 3);
}

#[test]
fn rollback_restores_exactly_the_state_before_the_block_and_reapply_works() {
    let dir = tempfile::tempdir().unwrap();
    let c = chain();
    let mut states = Vec::new();
    {
        let store = open(&dir);
        for block in &c.blocks {
            store.apply_block(block).unwrap();
            states.push(snapshot(&store));
        }
        let tip_utxos = scan(&store);
        assert_eq!(store.rollback_tip().unwrap(), c.blocks[2]);
        assert_eq!(snapshot(&store), states[1], "every table as after block 1");
        assert_eq!(store.tip().unwrap(), Some((1, c.blocks[1].hash())));
        for tx in &c.blocks[2].transactions {
            assert_eq!(store.tx_height(&tx.txid()).unwrap(), None);
            for input in &tx.inputs {
                assert!(store.get_utxo(&input.prevout).unwrap().is_some());
            }
        }
        assert_eq!(store.block(2).unwrap(), None);
        assert_eq!(store.height_of(&c.blocks[2].hash()).unwrap(), None);
        assert_eq!(undo_at(&store, 2), None);
        // Re-applying the same block gives the same state again.
        store.apply_block(&c.blocks[2]).unwrap();
        assert_eq!(snapshot(&store), states[2]);
        assert_eq!(scan(&store), tip_utxos);
        // Block 1 spends an output it creates; undoing it restores the
        // genesis state exactly.
        store.rollback_tip().unwrap();
        assert_eq!(store.rollback_tip().unwrap(), c.blocks[1]);
        assert_eq!(snapshot(&store), states[0]);
    }
    // The rollback is durable, and the chain grows again after a reopen.
    let store = open(&dir);
    assert_eq!(snapshot(&store), states[0]);
    store.apply_block(&c.blocks[1]).unwrap();
    assert_eq!(snapshot(&store), states[1]);
    store.apply_block(&c.blocks[2]).unwrap();
    assert_eq!(snapshot(&store), states[2]);
}

#[test]
fn rollback_refuses_genesis_and_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert!(matches!(
        store.rollback_tip(),
        Err(StoreError::CannotRollBack { tip_height: None })
    ));
    let c = chain();
    store.apply_block(&c.blocks[0]).unwrap();
    let state = snapshot(&store);
    let refused = store.rollback_tip().unwrap_err();
    assert!(matches!(
        refused,
        StoreError::CannotRollBack {
            tip_height: Some(0)
        }
    ));
    assert!(refused.to_string().contains("genesis"), "{refused}");
    assert_eq!(snapshot(&store), state);
}

#[test]
fn the_address_index_agrees_with_a_full_scan_through_applies_and_rollbacks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let c = chain();
    assert_index_matches_scan(&store, &c.addresses);
    for block in &c.blocks {
        store.apply_block(block).unwrap();
        assert_index_matches_scan(&store, &c.addresses);
    }
    let unknown = c.addresses[3];
    assert_eq!(store.utxos_for(&unknown).unwrap(), Vec::new());
    assert_eq!(store.balance(&unknown).unwrap(), 0);
    // Money is conserved up to the fees: 1500 TIME minted, 4 paid.
    let total: u64 = c.addresses.iter().map(|a| store.balance(a).unwrap()).sum();
    assert_eq!(total, 1_496 * COIN);
    assert_eq!(store.balance(&Address([0xcc; 20])).unwrap(), 308 * COIN);
    for _ in 0..2 {
        store.rollback_tip().unwrap();
        assert_index_matches_scan(&store, &c.addresses);
    }
    assert_eq!(store.balance(&c.addresses[0]).unwrap(), 1_000 * COIN);
    assert_eq!(store.balance(&c.addresses[1]).unwrap(), 500 * COIN);
    for block in &c.blocks[1..] {
        store.apply_block(block).unwrap();
        assert_index_matches_scan(&store, &c.addresses);
    }
}

#[test]
fn raw_blocks_stop_at_the_tip_the_count_and_the_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert_eq!(
        store.raw_blocks(0, 10, usize::MAX).unwrap(),
        Vec::<Vec<u8>>::new()
    );
    let c = chain();
    for block in &c.blocks {
        store.apply_block(block).unwrap();
    }
    let raw: Vec<Vec<u8>> = c
        .blocks
        .iter()
        .map(|b| encoding::encode_value(b).unwrap())
        .collect();
    let (l0, l1) = (raw[0].len(), raw[1].len());
    assert_eq!(store.raw_blocks(0, 10, usize::MAX).unwrap(), raw);
    assert_eq!(store.raw_blocks(0, 2, usize::MAX).unwrap(), raw[..2]);
    assert_eq!(store.raw_blocks(1, 10, usize::MAX).unwrap(), raw[1..]);
    assert_eq!(store.raw_blocks(2, 10, usize::MAX).unwrap(), raw[2..]);
    assert!(store.raw_blocks(3, 10, usize::MAX).unwrap().is_empty());
    assert!(store
        .raw_blocks(u64::MAX, 10, usize::MAX)
        .unwrap()
        .is_empty());
    assert!(store.raw_blocks(0, 0, usize::MAX).unwrap().is_empty());
    // The byte budget: exactly two fit, one byte less fits one, and the
    // first block comes even when it alone is over budget.
    assert_eq!(store.raw_blocks(0, 10, l0 + l1).unwrap(), raw[..2]);
    assert_eq!(store.raw_blocks(0, 10, l0 + l1 - 1).unwrap(), raw[..1]);
    assert_eq!(store.raw_blocks(1, 10, 0).unwrap(), raw[1..2]);
    // The bytes are the blocks.
    let decoded: Block = encoding::decode_value(&store.raw_blocks(2, 1, 0).unwrap()[0]).unwrap();
    assert_eq!(decoded, c.blocks[2]);
    store.rollback_tip().unwrap();
    assert_eq!(store.raw_blocks(0, 10, usize::MAX).unwrap(), raw[..2]);
    assert!(store.raw_blocks(2, 10, usize::MAX).unwrap().is_empty());
}

#[test]
fn block_by_hash_and_tx_location_follow_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let c = chain();
    for block in &c.blocks {
        assert_eq!(store.block_by_hash(&block.hash()).unwrap(), None);
        store.apply_block(block).unwrap();
    }
    for block in &c.blocks {
        assert_eq!(
            store.block_by_hash(&block.hash()).unwrap().as_ref(),
            Some(block)
        );
        for tx in &block.transactions {
            assert_eq!(
                store.tx_location(&tx.txid()).unwrap(),
                Some((block.header.height, tx.clone()))
            );
        }
    }
    assert_eq!(store.block_by_hash(&[7; 32]).unwrap(), None);
    assert_eq!(store.tx_location(&[7; 32]).unwrap(), None);
    let removed = store.rollback_tip().unwrap();
    assert_eq!(store.block_by_hash(&removed.hash()).unwrap(), None);
    for tx in &removed.transactions {
        assert_eq!(store.tx_location(&tx.txid()).unwrap(), None);
    }
    let t1 = &c.blocks[1].transactions[0];
    assert_eq!(
        store.tx_location(&t1.txid()).unwrap(),
        Some((1, t1.clone()))
    );
}

#[test]
fn a_block_failing_midway_leaves_tip_utxos_undo_and_index_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let c = chain();
    store.apply_block(&c.blocks[0]).unwrap();
    store.apply_block(&c.blocks[1]).unwrap();
    let state = snapshot(&store);
    let prev = (c.blocks[1].hash(), 1);
    let valid = c.blocks[2].transactions.clone();

    // The first transactions spend and create outputs, then one spends
    // an output that does not exist.
    let owner = SecretKey::generate(SignatureScheme::Ed25519);
    let missing = OutPoint {
        txid: [9; 32],
        index: 0,
    };
    let bad = pay(&[(missing, &owner)], vec![out(COIN, address(&owner))], 9);
    let mut txs = valid.clone();
    txs.push(bad);
    let block = Block::produce(&c.producer, MAGIC, prev, 2, txs);
    assert!(matches!(
        store.apply_block(&block),
        Err(StoreError::MissingOutput(o)) if o == missing
    ));
    assert_eq!(
        snapshot(&store),
        state,
        "nothing of the failed block written"
    );
    assert_eq!(store.tip().unwrap(), Some((1, c.blocks[1].hash())));
    assert_eq!(undo_at(&store, 2), None);
    assert_index_matches_scan(&store, &c.addresses);

    // A transaction already in the chain (here the genesis allocation,
    // which has no inputs) would overwrite outputs: refused as well.
    let mut txs = valid.clone();
    txs.push(c.blocks[0].transactions[0].clone());
    let block = Block::produce(&c.producer, MAGIC, prev, 2, txs);
    assert!(matches!(
        store.apply_block(&block),
        Err(StoreError::DuplicateTxid(id)) if id == c.blocks[0].transactions[0].txid()
    ));
    assert_eq!(snapshot(&store), state);

    // A block on another parent: refused before anything is written.
    let block = Block::produce(&c.producer, MAGIC, ([1; 32], 1), 2, valid);
    assert!(matches!(
        store.apply_block(&block),
        Err(StoreError::NotNext {
            height: 2,
            tip_height: 1
        })
    ));
    assert_eq!(snapshot(&store), state);

    // The store is still usable: the real block applies.
    store.apply_block(&c.blocks[2]).unwrap();
    assert_index_matches_scan(&store, &c.addresses);
}

#[test]
fn concurrent_applies_of_one_height_cannot_both_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let c = chain();
    store.apply_block(&c.blocks[0]).unwrap();
    // Two different blocks at height 1 on the same parent.
    let other = Block::produce(&c.producer, MAGIC, (c.blocks[0].hash(), 0), 99, Vec::new());
    let barrier = std::sync::Barrier::new(2);
    let results: Vec<Result<(), StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = [&c.blocks[1], &other]
            .into_iter()
            .map(|block| {
                let (store, barrier) = (&store, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    store.apply_block(block)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(StoreError::NotNext { height: 1, .. }))));
    let (height, hash) = store.tip().unwrap().unwrap();
    assert_eq!(height, 1);
    assert_eq!(store.block(1).unwrap().unwrap().hash(), hash);
    assert_index_matches_scan(&store, &c.addresses);
}

#[test]
fn a_store_written_before_schema_versions_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    {
        // What the previous layout left: a tip, no schema version.
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut meta = tx.open_table(META).unwrap();
            let tip = encoding::encode_value(&(0u64, [0u8; 32])).unwrap();
            meta.insert("tip", tip.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::Schema {
            found: None,
            expected: SCHEMA_VERSION
        })
    ));
    // A fresh store records the version and reopens.
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.apply_block(&chain().blocks[0]).unwrap();
    drop(store);
    let store = open(&dir);
    assert_eq!(store.tip().unwrap().unwrap().0, 0);
}

mod integrity;
mod reindex;

//! Tests of the rebuild of the derived tables from the stored blocks.

use super::{assert_index_matches_scan, open, scan, snapshot, stored_chain};
use crate::chain::block::Block;
use crate::storage::*;

/// Damages every derived table: an unspent output removed and a bogus one
/// added (and indexed), a txid unindexed and a stale one added, an undo
/// record emptied, a block hash unindexed.
fn damage(store: &Store, c: &super::Chain) {
    let tx = store.db().begin_write().unwrap();
    {
        let mut utxos = tx.open_table(UTXOS).unwrap();
        let first: Vec<u8> = utxos.first().unwrap().unwrap().0.value().to_vec();
        utxos.remove(first.as_slice()).unwrap();
        utxos
            .insert([7u8; 36].as_slice(), [1u8; 5].as_slice())
            .unwrap();
        let mut index = tx.open_table(TX_INDEX).unwrap();
        index.remove(&c.blocks[1].transactions[0].txid()).unwrap();
        index.insert(&[9u8; 32], 1).unwrap();
        let mut addresses = tx.open_table(ADDRESS_UTXOS).unwrap();
        addresses.insert(&[3u8; ADDRESS_KEY_LEN], 12).unwrap();
        let mut undo = tx.open_table(UNDO).unwrap();
        let empty = encoding::encode_value(&Vec::<(OutPoint, TxOut)>::new()).unwrap();
        undo.insert(2, empty.as_slice()).unwrap();
        let mut heights = tx.open_table(BLOCK_HEIGHTS).unwrap();
        heights.remove(&c.blocks[2].hash()).unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn a_healthy_store_is_rebuilt_identical_and_nothing_is_reported_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = stored_chain(&dir);
    let before = snapshot(&store);
    let report = store.reindex().unwrap();
    assert_eq!(snapshot(&store), before);
    let transactions: usize = c.blocks.iter().map(|b| b.transactions.len()).sum();
    assert_eq!(
        report,
        Reindexed {
            blocks: 3,
            transactions: transactions as u64,
            utxos: scan(&store).len() as u64,
            changed: Vec::new(),
        }
    );
    let txs = store.reindex_txs().unwrap();
    assert_eq!(txs, report);
    assert_eq!(snapshot(&store), before);
}

#[test]
fn damaged_derived_tables_are_rebuilt_exactly_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = stored_chain(&dir);
    let healthy = snapshot(&store);
    damage(&store, &c);
    assert_ne!(snapshot(&store), healthy);
    let report = store.reindex().unwrap();
    assert_eq!(
        snapshot(&store),
        healthy,
        "every table as the blocks make it"
    );
    let mut changed = report.changed.clone();
    changed.sort_unstable();
    assert_eq!(
        changed,
        [
            "address_utxos",
            "block_heights",
            "tx_index",
            "undo",
            "utxos"
        ]
    );
    assert_index_matches_scan(&store, &c.addresses);
    // The rebuilt undo records undo: the chain rolls back and re-applies.
    let tip = store.rollback_tip().unwrap();
    store.apply_block(&tip).unwrap();
    assert_eq!(snapshot(&store), healthy);
    // And the rebuild survives a reopen.
    drop(store);
    assert_eq!(snapshot(&open(&dir)), healthy);
}

#[test]
fn a_tx_index_rebuild_mends_the_index_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = stored_chain(&dir);
    let healthy = snapshot(&store);
    damage(&store, &c);
    let damaged = snapshot(&store);
    let report = store.reindex_txs().unwrap();
    assert_eq!(report.changed, ["tx_index"]);
    let after = snapshot(&store);
    for ((name, now), ((_, was), (_, good))) in after.iter().zip(damaged.iter().zip(&healthy)) {
        if *name == "tx_index" {
            assert_eq!(now, good, "tx_index rebuilt");
        } else {
            assert_eq!(now, was, "{name} left as it was");
        }
    }
    assert!(
        store
            .tx_height(&c.blocks[1].transactions[0].txid())
            .unwrap()
            == Some(1)
    );
    assert_eq!(
        store.tx_height(&[9u8; 32]).unwrap(),
        None,
        "stale entry gone"
    );
}

#[test]
fn a_damaged_block_aborts_the_rebuild_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = stored_chain(&dir);
    damage(&store, &c);
    store
        .overwrite_block_bytes_for_test(1, &[0x5a; 300])
        .unwrap();
    let before = snapshot(&store);
    for result in [store.reindex(), store.reindex_txs()] {
        assert!(
            matches!(result, Err(StoreError::BadBlock { height: 1, .. })),
            "{result:?}"
        );
        assert_eq!(snapshot(&store), before, "nothing deleted or written");
    }
    // Once the block is repaired from a good copy, the rebuild goes through.
    assert!(store.repair_block(&c.blocks[1]).unwrap());
    assert_eq!(store.reindex().unwrap().blocks, 3);
    assert_index_matches_scan(&store, &c.addresses);
}

/// Stores `block` at its height with a matching record, as if it had
/// been applied there.
fn store_raw(store: &Store, block: &crate::chain::block::Block) {
    let bytes = encoding::encode_value(block).unwrap();
    let tx = store.db().begin_write().unwrap();
    {
        let height = block.header.height;
        let mut blocks = tx.open_table(BLOCKS).unwrap();
        blocks.insert(height, bytes.as_slice()).unwrap();
        let mut hashes = tx.open_table(BLOCK_HASHES).unwrap();
        let record = super::super::blocks::record(&block.hash(), &bytes);
        hashes.insert(height, &record).unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn a_chain_that_does_not_replay_is_refused_with_nothing_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = stored_chain(&dir);
    // Each stored block checks out alone, but the chain does not replay:
    // block 1 replaced by one on another parent, then by one spending an
    // output that does not exist.
    let orphan = Block::produce(&c.producer, super::MAGIC, ([0x11; 32], 0), 1, Vec::new());
    let mut spender = c.blocks[1].clone();
    spender.transactions[0].inputs[0].prevout.index = 7;
    let spender = Block::produce(
        &c.producer,
        super::MAGIC,
        (c.blocks[0].hash(), 0),
        1,
        spender.transactions,
    );
    let cases: [(Block, &str); 2] = [
        (orphan, "does not follow"),
        (spender, "which no earlier block left unspent"),
    ];
    for (block, problem) in cases {
        store_raw(&store, &block);
        let before = snapshot(&store);
        match store.reindex() {
            Err(StoreError::Corrupt {
                table: "blocks",
                message,
            }) => assert!(message.contains(problem), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(snapshot(&store), before, "nothing changed");
    }
    // Back to the real block 1 (block 2 builds on it), the rebuild passes.
    store_raw(&store, &c.blocks[1]);
    assert!(store.reindex().unwrap().changed.is_empty());
}

#[test]
fn an_empty_store_rebuilds_to_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert_eq!(store.reindex().unwrap(), Reindexed::default());
    assert_eq!(store.reindex_txs().unwrap(), Reindexed::default());
}

/// Measures a full rebuild against applying the same blocks, side by side
/// in one run: `cargo test --release --lib reindex_time -- --ignored
/// --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn reindex_time_against_applying_the_blocks() {
    use crate::chain::transaction::COIN;
    use crate::crypto::{NodeIdentity, SecretKey, SignatureScheme};
    const BLOCKS: u64 = 2_000;
    const LANES: usize = 50;
    let key = SecretKey::generate(SignatureScheme::Ed25519);
    let owner = super::address(&key);
    let producer = NodeIdentity::generate();
    let genesis = super::genesis_paying(vec![super::out(COIN, owner); LANES]);
    let mut tips: Vec<OutPoint> = (0..LANES)
        .map(|i| super::op(&genesis.transactions[0], i as u32))
        .collect();
    let mut blocks = vec![genesis];
    for height in 1..=BLOCKS {
        let txs: Vec<_> = tips
            .iter()
            .enumerate()
            .map(|(i, tip)| {
                super::pay(
                    &[(*tip, &key)],
                    vec![super::out(COIN, owner)],
                    height * 1_000 + i as u64,
                )
            })
            .collect();
        tips = txs.iter().map(|t| super::op(t, 0)).collect();
        let prev = blocks.last().unwrap();
        let block = Block::produce(
            &producer,
            super::MAGIC,
            (prev.hash(), height - 1),
            height,
            txs,
        );
        blocks.push(block);
    }
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let started = std::time::Instant::now();
    for block in &blocks {
        store.apply_block(block).unwrap();
    }
    let applying = started.elapsed();
    let peak = |label: &str| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap_or("");
        eprintln!(
            "peak resident memory {label}: {}",
            line.trim_start_matches("VmHWM:").trim()
        );
    };
    peak("after applying");
    let started = std::time::Instant::now();
    let report = store.reindex().unwrap();
    let rebuilding = started.elapsed();
    peak("after the reindex");
    let started = std::time::Instant::now();
    store.reindex_txs().unwrap();
    let tx_index = started.elapsed();
    assert!(report.changed.is_empty());
    eprintln!(
        "{} blocks, {} transactions: applying {:.2} s (one commit per block), \
         reindex {:.2} s ({:.2}x), reindextransactions {:.2} s ({:.2}x)",
        report.blocks,
        report.transactions,
        applying.as_secs_f64(),
        rebuilding.as_secs_f64(),
        rebuilding.as_secs_f64() / applying.as_secs_f64(),
        tx_index.as_secs_f64(),
        tx_index.as_secs_f64() / applying.as_secs_f64(),
    );
}

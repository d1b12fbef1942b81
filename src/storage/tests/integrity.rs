//! Tests of the integrity checks: verified reads and repair, damaged files
//! at open, the tip marker, the schema migration, fatal errors.

use redb::StorageError;

use super::{open, stored_chain};
use crate::storage::bans::StoredBan;
use crate::storage::marker::{MarkedTip, TipMarker};
use crate::storage::*;

fn is_bad_block(result: Result<impl std::fmt::Debug, StoreError>, at: u64) -> bool {
    matches!(result, Err(StoreError::BadBlock { height, .. }) if height == at)
}

#[test]
fn a_damaged_block_is_refused_listed_and_repaired_from_a_good_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = stored_chain(&dir);
    let raw: Vec<Vec<u8>> = store.raw_blocks(0, 10, usize::MAX).unwrap();
    let b1 = &c.blocks[1];
    let tx1 = b1.transactions[0].txid();
    // Damage of every kind: garbage, a flipped byte in a signature (the
    // hash does not cover it), and another valid block's bytes.
    let mut flipped = raw[1].clone();
    let last = flipped.len() - 1;
    flipped[last - 10] ^= 0x01;
    for bad in [vec![0x5a; 300], flipped, raw[2].clone()] {
        store.overwrite_block_bytes_for_test(1, &bad).unwrap();
        assert!(is_bad_block(store.block(1), 1));
        assert_eq!(store.damaged_heights(), vec![1]);
        assert!(is_bad_block(store.block_by_hash(&b1.hash()), 1));
        assert!(is_bad_block(store.tx_location(&tx1), 1));
        // Serving peers: only the verified prefix, never the bad bytes.
        assert_eq!(store.raw_blocks(0, 10, usize::MAX).unwrap(), raw[..1]);
        assert!(store.raw_blocks(1, 10, usize::MAX).unwrap().is_empty());
        assert_eq!(store.raw_blocks(2, 10, usize::MAX).unwrap(), raw[2..]);
        assert_eq!(store.block(2).unwrap().as_ref(), Some(&c.blocks[2]));
        // A block with another hash is no repair.
        let mut forged = b1.clone();
        forged.header.timestamp += 1;
        assert!(!store.repair_block(&forged).unwrap());
        let mut bad_merkle = b1.clone();
        bad_merkle.transactions.pop();
        assert!(!store.repair_block(&bad_merkle).unwrap());
        assert_eq!(store.damaged_heights(), vec![1]);
        // The block the chain holds there is.
        assert!(store.repair_block(b1).unwrap());
        assert!(store.damaged_heights().is_empty());
        assert_eq!(store.block(1).unwrap().as_ref(), Some(b1));
        assert_eq!(store.raw_blocks(0, 10, usize::MAX).unwrap(), raw);
        assert_eq!(store.tx_location(&tx1).unwrap().unwrap().0, 1);
    }
    // The error says what happened and what is done about it.
    store.overwrite_block_bytes_for_test(2, b"junk").unwrap();
    let message = store.block(2).unwrap_err().to_string();
    assert!(
        message.contains("height 2") && message.contains("not served"),
        "{message}"
    );
    assert!(
        store.failure().is_none(),
        "a damaged block is not a failed database"
    );
}

#[test]
fn a_damaged_tip_is_not_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, c) = stored_chain(&dir);
    store.overwrite_block_bytes_for_test(2, &[1, 2, 3]).unwrap();
    assert!(is_bad_block(store.rollback_tip(), 2));
    assert_eq!(store.tip().unwrap(), Some((2, c.blocks[2].hash())));
    assert!(store.repair_block(&c.blocks[2]).unwrap());
    assert_eq!(store.rollback_tip().unwrap(), c.blocks[2]);
    // The rollback removed the record: the height is free again.
    assert_eq!(store.block(2).unwrap(), None);
    assert!(!store.repair_block(&c.blocks[2]).unwrap());
}

/// The error opening `bytes` as a database; the file is left as it was.
fn open_bytes(name: &str, bytes: &[u8]) -> StoreError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    std::fs::write(&path, bytes).unwrap();
    let error = Store::open(&path).unwrap_err();
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "{name}: file changed"
    );
    error
}

#[test]
fn damaged_files_are_typed_errors_saying_what_to_do_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    drop(stored_chain(&dir));
    let good = std::fs::read(&path).unwrap();
    let mut odd_tail = good.clone();
    odd_tail.extend([0x11; 100]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "empty (0 bytes)"),
        ("half", good[..good.len() / 2].to_vec(), "internal check"),
        ("100 bytes appended", odd_tail, "internal check"),
        ("not a database", vec![0x5a; 4096], "cannot read it"),
    ];
    for (name, bytes, problem) in cases {
        let error = open_bytes(name, &bytes);
        let message = error.to_string();
        assert!(
            matches!(error, StoreError::Damaged { .. }),
            "{name}: {error:?}"
        );
        assert!(message.contains(problem), "{name}: {message}");
        assert!(message.contains("timed run --resync"), "{name}: {message}");
        assert!(message.contains("backup"), "{name}: {message}");
        assert!(!message.contains('\n'), "{name}: one line: {message}");
    }
    // Untouched, it still opens, with its chain.
    assert_eq!(Store::open(&path).unwrap().tip().unwrap().unwrap().0, 2);
}

#[test]
fn whole_pages_of_garbage_appended_are_recovered_with_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let (store, c) = stored_chain(&dir);
    drop(store);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend((0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(&path, &bytes).unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.tip().unwrap(), Some((2, c.blocks[2].hash())));
    for block in &c.blocks {
        assert_eq!(
            store.block(block.header.height).unwrap().as_ref(),
            Some(block)
        );
    }
}

#[test]
fn the_marker_catches_a_store_that_lost_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let tip_hash = {
        let (store, c) = stored_chain(&dir);
        store.close(std::time::Duration::from_secs(5));
        c.blocks[2].hash()
    };
    let marker = TipMarker::next_to(&path);
    assert_eq!(
        marker.read(),
        Ok(Some(MarkedTip {
            height: 2,
            hash: tip_hash
        })),
        "written by the commits and the close"
    );
    let mark = |height: u64| {
        marker.write_now(MarkedTip {
            height,
            hash: [7; 32],
        })
    };
    // Up to MAX_REORG_DEPTH below the marker is a rollback, not a loss.
    mark(2 + crate::constants::MAX_REORG_DEPTH);
    drop(Store::open(&path).unwrap());
    mark(3 + crate::constants::MAX_REORG_DEPTH);
    let error = Store::open(&path).unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::LostData {
                height: Some(2),
                marker_height: 103,
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("ends at height 2"), "{message}");
    assert!(message.contains("reached height 103"), "{message}");
    assert!(
        message.contains("--resync") && message.contains("chain.tip"),
        "{message}"
    );
    // A missing database with a marker above 0: lost, not a new chain.
    mark(5);
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::LostData {
            height: None,
            marker_height: 5,
            ..
        })
    ));
    assert!(!path.exists(), "not created");
    // A marker at 0 (a node that only had genesis) allows a fresh start.
    mark(0);
    drop(Store::open(&path).unwrap());
    // No marker: the store opens and writes one.
    std::fs::remove_file(marker.path()).unwrap();
    let (store, _) = stored_chain(&tempfile::tempdir().unwrap());
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.tip().unwrap(), None);
    assert_eq!(marker.read(), Ok(None), "nothing to record before genesis");
}

#[test]
fn a_missing_or_unreadable_marker_is_rewritten_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    drop(stored_chain(&dir));
    let marker = TipMarker::next_to(&path);
    for damage in [None, Some(&b"height 9000\nhash zz\n"[..])] {
        match damage {
            None => std::fs::remove_file(marker.path()).unwrap(),
            Some(bytes) => std::fs::write(marker.path(), bytes).unwrap(),
        }
        drop(Store::open(&path).unwrap());
        assert_eq!(marker.read().unwrap().unwrap().height, 2);
    }
}

/// Turns the store at `path` into what schema 1 left: no `block_hashes`,
/// bans in the position-keyed `bans` table, schema 1.
fn make_v1(path: &std::path::Path, bans: &[StoredBan]) {
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        tx.delete_table(BLOCK_HASHES).unwrap();
        tx.delete_table(bans::BANS).unwrap();
        let old: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("bans");
        let mut table = tx.open_table(old).unwrap();
        for (i, ban) in (0u64..).zip(bans) {
            let value = encoding::encode_value(ban).unwrap();
            table.insert(i, value.as_slice()).unwrap();
        }
        table.insert(99, &b"not a ban"[..]).unwrap();
        let mut meta = tx.open_table(META).unwrap();
        let one = encoding::encode_value(&1u64).unwrap();
        meta.insert("schema", one.as_slice()).unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn a_schema_1_store_is_migrated_with_its_blocks_checked_and_its_bans_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let (store, c) = stored_chain(&dir);
    // Block 1 was damaged before the migration.
    store.overwrite_block_bytes_for_test(1, b"damaged").unwrap();
    drop(store);
    let ban = |subnet: &str, reason: &str| StoredBan {
        subnet: subnet.into(),
        expires_unix: None,
        reason: reason.into(),
    };
    make_v1(
        &path,
        &[
            ban("192.0.2.1/32", "score"),
            ban("2001:db8::/64", "manual"),
            ban("192.0.2.1/32", "escalation"),
        ],
    );
    let store = Store::open(&path).unwrap();
    // The damaged block was found while building block_hashes.
    assert_eq!(store.damaged_heights(), vec![1]);
    assert!(is_bad_block(store.block(1), 1));
    assert_eq!(store.block(2).unwrap().as_ref(), Some(&c.blocks[2]));
    assert!(store.repair_block(&c.blocks[1]).unwrap());
    assert_eq!(store.block(1).unwrap().as_ref(), Some(&c.blocks[1]));
    // One row per subnet, the later entry winning; the old table is gone.
    assert_eq!(
        store.load_bans().unwrap(),
        vec![
            ban("192.0.2.1/32", "escalation"),
            ban("2001:db8::/64", "manual")
        ]
    );
    {
        let tx = store.db().begin_read().unwrap();
        let old: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("bans");
        assert!(tx.open_table(old).is_err(), "schema 1's bans table dropped");
        let meta = tx.open_table(META).unwrap();
        let version: u64 =
            encoding::decode_value(meta.get("schema").unwrap().unwrap().value()).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
    drop(store);
    // Reopening does not migrate again.
    let store = Store::open(&path).unwrap();
    assert!(store.damaged_heights().is_empty());
    assert_eq!(store.load_bans().unwrap().len(), 2);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    drop(stored_chain(&dir));
    {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut meta = tx.open_table(META).unwrap();
            let v = encoding::encode_value(&(SCHEMA_VERSION + 1)).unwrap();
            meta.insert("schema", v.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::Schema {
            found: Some(3),
            expected: SCHEMA_VERSION
        })
    ));
}

#[test]
fn io_errors_mark_the_store_failed_and_other_errors_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let io = |e: StorageError| store.watch(|| Err::<(), _>(db_err("commit")(e)));
    assert!(matches!(
        io(StorageError::ValueTooLarge(1)),
        Err(StoreError::Db { .. })
    ));
    assert_eq!(store.failure(), None);
    assert!(matches!(
        io(StorageError::PreviousIo),
        Err(StoreError::Failed { .. })
    ));
    let failure = store.failure().unwrap();
    assert!(
        failure.contains("commit") && failure.contains("I/O"),
        "{failure}"
    );
    // The first failure is kept.
    let _ = io(StorageError::Io(std::io::Error::other("disk gone")));
    assert_eq!(store.failure().unwrap(), failure);
}

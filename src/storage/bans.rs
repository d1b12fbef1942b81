//! The persisted ban list: table `bans_v2`, one row per banned subnet
//! (its text, `203.0.113.7/32`) holding the encoded [`StoredBan`].
//!
//! A change to the list is a change to one row ([`BanWrite`]), so storing a
//! ban costs the same with 10 bans stored or 10,000; the node hands changes
//! to a [`BanWriter`](super::BanWriter), which commits them in batches off
//! the caller's path. [`Store::replace_bans`] rewrites the whole table (at
//! start-up, and when the writer lost track of changes).
//!
//! # Correctness
//! Each call is one write transaction: a reader, or a node restarted after
//! a crash, sees the rows before or after a batch, never part of one. The
//! rows stay bounded by the ban list's capacity because the ban list
//! reports every ban it drops (lifted, expired, evicted) as a
//! [`BanWrite::Delete`].
//!
//! Schema version 1 kept the list in table `bans`, keyed by position and
//! rewritten whole on every change; [`migrate_v1`] moves it to `bans_v2`.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{db_err, decode, encode, Store, StoreError};
use crate::encoding;

/// Banned subnet (text) → encoded [`StoredBan`].
pub(super) const BANS: TableDefinition<&str, &[u8]> = TableDefinition::new("bans_v2");

/// Schema 1's table: position in the saved list → encoded [`StoredBan`].
const BANS_V1: TableDefinition<u64, &[u8]> = TableDefinition::new("bans");

/// One persisted ban.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBan {
    /// The banned address or subnet, as text (`203.0.113.7/32`, `2001:db8::/48`).
    pub subnet: String,
    /// When the ban ends, seconds since the Unix epoch; `None`: never.
    pub expires_unix: Option<u64>,
    /// Why, for operators.
    pub reason: String,
}

/// One change to the persisted ban list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BanWrite {
    /// Stores (or replaces) the ban on `subnet`.
    Put(StoredBan),
    /// Removes the ban on exactly this subnet (text), if stored.
    Delete(String),
    /// Removes every stored ban.
    Clear,
}

impl Store {
    /// Applies `writes` in order, in one write transaction.
    ///
    /// # Errors
    /// [`StoreError`] on database failure; nothing is written then.
    pub fn write_bans(&self, writes: &[BanWrite]) -> Result<(), StoreError> {
        self.watch(|| {
            let tx = self.db().begin_write().map_err(db_err("begin"))?;
            {
                let mut table = tx.open_table(BANS).map_err(db_err("open bans"))?;
                for write in writes {
                    match write {
                        BanWrite::Put(ban) => {
                            let value = encode("bans", ban)?;
                            table
                                .insert(ban.subnet.as_str(), value.as_slice())
                                .map_err(db_err("write ban"))?;
                        }
                        BanWrite::Delete(subnet) => {
                            table
                                .remove(subnet.as_str())
                                .map_err(db_err("remove ban"))?;
                        }
                        BanWrite::Clear => {
                            table.retain(|_, _| false).map_err(db_err("clear bans"))?;
                        }
                    }
                }
            }
            tx.commit().map_err(db_err("commit"))?;
            Ok(())
        })
    }

    /// Replaces the persisted ban list with `bans`, atomically (one row per
    /// subnet: of two entries for one subnet the later stays).
    ///
    /// # Errors
    /// [`StoreError`] on database failure; the old list stays then.
    pub fn replace_bans(&self, bans: &[StoredBan]) -> Result<(), StoreError> {
        let mut writes = Vec::with_capacity(bans.len() + 1);
        writes.push(BanWrite::Clear);
        writes.extend(bans.iter().cloned().map(BanWrite::Put));
        self.write_bans(&writes)
    }

    /// The persisted bans, ordered by subnet text. A row that does not
    /// decode is skipped and logged (the next [`Store::replace_bans`]
    /// removes it).
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub fn load_bans(&self) -> Result<Vec<StoredBan>, StoreError> {
        self.watch(|| {
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
            let table = tx.open_table(BANS).map_err(db_err("open bans"))?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(db_err("read bans"))? {
                let (key, value) = entry.map_err(db_err("read bans"))?;
                match encoding::decode_value::<StoredBan>(value.value()) {
                    Ok(ban) if ban.subnet == key.value() => out.push(ban),
                    _ => tracing::warn!(
                        subnet = key.value().chars().take(64).collect::<String>(),
                        "stored ban does not decode: skipped"
                    ),
                }
            }
            Ok(out)
        })
    }

    /// How many bans are stored.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub fn ban_count(&self) -> Result<u64, StoreError> {
        self.watch(|| {
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
            let table = tx.open_table(BANS).map_err(db_err("open bans"))?;
            table.len().map_err(db_err("count bans"))
        })
    }
}

/// Moves schema 1's `bans` into `bans_v2` and drops it; returns how many
/// bans were moved. An entry that does not decode is dropped and logged.
///
/// # Errors
/// [`StoreError`] on database failure.
pub(super) fn migrate_v1(tx: &WriteTransaction) -> Result<usize, StoreError> {
    let mut moved = 0;
    {
        let old = tx.open_table(BANS_V1).map_err(db_err("open bans"))?;
        let mut new = tx.open_table(BANS).map_err(db_err("open bans_v2"))?;
        for entry in old.iter().map_err(db_err("read bans"))? {
            let (position, value) = entry.map_err(db_err("read bans"))?;
            let ban: StoredBan = match decode("bans", value.value()) {
                Ok(ban) => ban,
                Err(error) => {
                    tracing::warn!(position = position.value(), %error, "stored ban dropped");
                    continue;
                }
            };
            new.insert(ban.subnet.as_str(), value.value())
                .map_err(db_err("write ban"))?;
            moved += 1;
        }
    }
    tx.delete_table(BANS_V1).map_err(db_err("drop bans"))?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DB_FILE;

    fn ban(subnet: &str, expires_unix: Option<u64>, reason: &str) -> StoredBan {
        StoredBan {
            subnet: subnet.to_string(),
            expires_unix,
            reason: reason.to_string(),
        }
    }

    #[test]
    fn bans_are_rows_changed_one_by_one_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let a = ban("203.0.113.7/32", Some(1_700_000_000), "score");
        let b = ban("2001:db8::/48", None, "manual");
        let c = ban("198.51.100.0/24", Some(u64::MAX), "");
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.load_bans().unwrap(), Vec::new());
            store
                .write_bans(&[BanWrite::Put(a.clone()), BanWrite::Put(b.clone())])
                .unwrap();
            store
                .write_bans(&[
                    BanWrite::Put(c.clone()),
                    BanWrite::Delete(b.subnet.clone()),
                    BanWrite::Delete("192.0.2.1/32".into()),
                ])
                .unwrap();
            // Ordered by subnet text.
            assert_eq!(store.load_bans().unwrap(), vec![c.clone(), a.clone()]);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.load_bans().unwrap(), vec![c.clone(), a.clone()]);
        // A newer ban on the same subnet replaces the row.
        let longer = ban("203.0.113.7/32", None, "escalation");
        store.write_bans(&[BanWrite::Put(longer.clone())]).unwrap();
        assert_eq!(store.ban_count().unwrap(), 2);
        assert_eq!(store.load_bans().unwrap(), vec![c.clone(), longer]);
        store
            .write_bans(&[BanWrite::Clear, BanWrite::Put(b.clone())])
            .unwrap();
        assert_eq!(store.load_bans().unwrap(), vec![b.clone()]);
        store.replace_bans(&[a.clone(), c.clone()]).unwrap();
        assert_eq!(store.load_bans().unwrap(), vec![c, a]);
        store.replace_bans(&[]).unwrap();
        assert_eq!(store.ban_count().unwrap(), 0);
    }
}

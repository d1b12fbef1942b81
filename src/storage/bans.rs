//! The persisted ban list (table `bans`, see the parent module's table).
//!
//! # Correctness
//! The list is stored whole: [`Store::save_bans`] clears the table and
//! writes every entry in one write transaction, so a reader (or a node
//! restarted mid-save) sees either the old list or the new one, never a
//! mix. Entries are keyed by their position, so [`Store::load_bans`]
//! returns them in the order they were saved.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{db_err, decode, encode, Store, StoreError};

/// Position in the saved list → encoded [`StoredBan`].
pub(super) const BANS: TableDefinition<u64, &[u8]> = TableDefinition::new("bans");

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

impl Store {
    /// Replaces the persisted ban list with `bans`, atomically.
    ///
    /// # Correctness
    /// One write transaction clears the table and inserts every entry; on
    /// any error it is dropped uncommitted and the old list stays.
    ///
    /// # Errors
    /// [`StoreError`] on database failure or an unencodable entry.
    pub fn save_bans(&self, bans: &[StoredBan]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err("begin"))?;
        {
            let mut table = tx.open_table(BANS).map_err(db_err("open bans"))?;
            table.retain(|_, _| false).map_err(db_err("clear bans"))?;
            for (position, ban) in (0u64..).zip(bans) {
                let value = encode("bans", ban)?;
                table
                    .insert(position, value.as_slice())
                    .map_err(db_err("write ban"))?;
            }
        }
        tx.commit().map_err(db_err("commit"))?;
        Ok(())
    }

    /// The persisted ban list, in the order it was saved (empty if none was).
    ///
    /// # Errors
    /// [`StoreError`] on database failure or an undecodable entry.
    pub fn load_bans(&self) -> Result<Vec<StoredBan>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err("begin"))?;
        let table = tx.open_table(BANS).map_err(db_err("open bans"))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(db_err("read bans"))? {
            let (_, value) = entry.map_err(db_err("read bans"))?;
            out.push(decode("bans", value.value())?);
        }
        Ok(out)
    }
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
    fn bans_round_trip_across_a_reopen_and_save_replaces_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let first = vec![
            ban(
                "203.0.113.7/32",
                Some(1_700_000_000),
                "misbehaviour score 100",
            ),
            ban("2001:db8::/48", None, "operator"),
            ban("198.51.100.0/24", Some(u64::MAX), ""),
        ];
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.load_bans().unwrap(), Vec::new());
            store.save_bans(&first).unwrap();
            assert_eq!(store.load_bans().unwrap(), first);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.load_bans().unwrap(), first, "survives a reopen");
        // A shorter list replaces the whole old one: nothing is left over.
        let second = vec![ban("192.0.2.1/32", None, "second list")];
        store.save_bans(&second).unwrap();
        assert_eq!(store.load_bans().unwrap(), second);
        store.save_bans(&[]).unwrap();
        assert_eq!(store.load_bans().unwrap(), Vec::new());
        drop(store);
        assert_eq!(Store::open(&path).unwrap().load_bans().unwrap(), Vec::new());
    }
}

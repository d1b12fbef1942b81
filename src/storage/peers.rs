//! The address book's table: the network's address book, stored as the
//! bytes it encodes itself (the storage knows nothing of its layout).

use redb::TableDefinition;

use super::{db_err, Store, StoreError};

/// One row, key [`BOOK_KEY`]: the encoded address book.
pub(super) const ADDRESS_BOOK: TableDefinition<&str, &[u8]> = TableDefinition::new("address_book");

const BOOK_KEY: &str = "book";

/// The second row: the anchors (outbound peers saved at shutdown), as the
/// network encodes them.
const ANCHORS_KEY: &str = "anchors";

impl Store {
    /// The stored anchors, if any were saved.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub fn load_anchors(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.load_row(ANCHORS_KEY)
    }

    /// Replaces the stored anchors with `bytes`, in one commit.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub fn save_anchors(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.save_row(ANCHORS_KEY, bytes)
    }

    /// The stored address book, if one was saved.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub fn load_address_book(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.load_row(BOOK_KEY)
    }

    fn load_row(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.watch(|| {
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
            let table = tx
                .open_table(ADDRESS_BOOK)
                .map_err(db_err("open address book"))?;
            let row = table.get(key).map_err(db_err("read address book"))?;
            Ok(row.map(|v| v.value().to_vec()))
        })
    }

    /// Replaces the stored address book with `bytes`, in one commit.
    ///
    /// # Errors
    /// [`StoreError`] on database failure; the old book stays then.
    pub fn save_address_book(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.save_row(BOOK_KEY, bytes)
    }

    fn save_row(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.watch(|| {
            let tx = self.db().begin_write().map_err(db_err("begin"))?;
            {
                let mut table = tx
                    .open_table(ADDRESS_BOOK)
                    .map_err(db_err("open address book"))?;
                table
                    .insert(key, bytes)
                    .map_err(db_err("write address book"))?;
            }
            tx.commit().map_err(db_err("commit address book"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_book_round_trips_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(crate::storage::DB_FILE)).unwrap();
        assert_eq!(store.load_address_book().unwrap(), None);
        store.save_address_book(b"first").unwrap();
        store.save_address_book(b"second").unwrap();
        assert_eq!(
            store.load_address_book().unwrap().as_deref(),
            Some(&b"second"[..])
        );
        assert_eq!(store.load_anchors().unwrap(), None);
        store.save_anchors(b"anchors").unwrap();
        assert_eq!(
            store.load_anchors().unwrap().as_deref(),
            Some(&b"anchors"[..])
        );
        assert_eq!(
            store.load_address_book().unwrap().as_deref(),
            Some(&b"second"[..])
        );
    }
}

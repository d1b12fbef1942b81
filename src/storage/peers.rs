//! The address book's table: the network's address book, stored as the
//! bytes it encodes itself (the storage knows nothing of its layout).

use redb::TableDefinition;

use super::{db_err, Store, StoreError};

/// One row, key [`BOOK_KEY`]: the encoded address book.
pub(super) const ADDRESS_BOOK: TableDefinition<&str, &[u8]> = TableDefinition::new("address_book");

const BOOK_KEY: &str = "book";

impl Store {
    /// The stored address book, if one was saved.
    ///
    /// # Errors
    /// [`StoreError`] on database failure.
    pub fn load_address_book(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.watch(|| {
            let tx = self.db().begin_read().map_err(db_err("begin"))?;
            let table = tx
                .open_table(ADDRESS_BOOK)
                .map_err(db_err("open address book"))?;
            let row = table.get(BOOK_KEY).map_err(db_err("read address book"))?;
            Ok(row.map(|v| v.value().to_vec()))
        })
    }

    /// Replaces the stored address book with `bytes`, in one commit.
    ///
    /// # Errors
    /// [`StoreError`] on database failure; the old book stays then.
    pub fn save_address_book(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.watch(|| {
            let tx = self.db().begin_write().map_err(db_err("begin"))?;
            {
                let mut table = tx
                    .open_table(ADDRESS_BOOK)
                    .map_err(db_err("open address book"))?;
                table
                    .insert(BOOK_KEY, bytes)
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
    }
}

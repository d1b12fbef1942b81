//! The chain model: addresses and UTXO transactions, TIME Coin style.
//!
//! Work in progress for wave 1 step 4: blocks, masternode votes, the
//! mempool, storage and sync build on these types.

pub mod address;
pub mod block;
pub mod genesis;
pub mod mempool;
pub mod state;
pub mod sync;
pub mod transaction;
pub mod votes;

pub use address::{Address, AddressError};
pub use block::{Block, BlockHash, BlockHeader};
pub use transaction::{OutPoint, Transaction, TxError, TxIn, TxOut, Txid, UtxoView, COIN, MIN_FEE};

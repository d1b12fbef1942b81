//! The chain model, TIME Coin style: addresses and UTXO transactions,
//! blocks, masternode votes and finality, the mempool, the chain state and
//! sync.

pub mod address;
pub mod block;
pub mod genesis;
pub mod mempool;
pub mod transaction;
pub mod verified;
pub mod votes;

pub use address::{Address, AddressError};
pub use block::{Block, BlockHash, BlockHeader};
pub use transaction::{OutPoint, Transaction, TxError, TxIn, TxOut, Txid, UtxoView, COIN, MIN_FEE};

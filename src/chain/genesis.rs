//! The genesis: the chain parameters every node of a network shares, and
//! the block at height 0 they commit to.
//!
//! # What the genesis hash binds
//! The genesis block's header is ordinary (version 1, height 0, producer and
//! signature zero) except for `prev_hash`, which carries the *parameter
//! commitment*:
//!
//! ```text
//! params = blake3::derive_key("timed v1 genesis params",
//!            encode((magic, block_interval_secs, masternodes sorted by key)))
//! ```
//!
//! so two nodes agree on the genesis hash (which the version handshake
//! compares) only if they agree on the network, the block interval, the
//! masternode set with its tiers, the allocations (through the merkle root)
//! and the genesis timestamp. The genesis block holds one transaction
//! without inputs whose outputs are the allocations (none if there are no
//! allocations).
//!
//! # Block schedule
//! Time is cut into slots of `block_interval_secs` from the genesis
//! timestamp: `slot(t) = (t - genesis.timestamp) / block_interval_secs`. The
//! producer of a slot is `masternodes_sorted[slot % n]` (sorted by public
//! key, byte order), a round-robin every node computes alone. A producer that
//! is offline only costs its own slots: the next producer's slot comes
//! anyway.

use serde::{Deserialize, Serialize};

use super::address::Address;
use super::block::{merkle_root, Block, BlockHash, BlockHeader};
use super::transaction::{Transaction, TxOut, MAX_MONEY, MAX_OUTPUTS};
use super::votes::{MasternodeSet, Tier};
use crate::encoding;
use crate::params::Network;

/// Longest block interval a genesis may set (one day).
pub const MAX_BLOCK_INTERVAL_SECS: u64 = 86_400;

/// The genesis timestamp of the embedded devnet and of `timed devnet`
/// (2026-01-01T00:00:00Z).
pub const DEVNET_GENESIS_TIMESTAMP: u64 = 1_767_225_600;

/// Outputs the devnet gives each node's wallet, so that a wallet can make
/// several payments before the first is in a block.
pub const DEVNET_OUTPUTS_PER_NODE: usize = 10;

/// Units in each of those outputs (1,000 TIME).
pub const DEVNET_OUTPUT_VALUE: u64 = 1_000 * super::transaction::COIN;

/// A masternode of the genesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisMasternode {
    /// Its ed25519 node identity key.
    pub public_key: [u8; 32],
    /// Its tier.
    pub tier: Tier,
}

/// Why a genesis is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenesisError {
    /// The block interval is zero or too long.
    #[error("block interval must be between 1 and {MAX_BLOCK_INTERVAL_SECS} seconds, got {0}")]
    Interval(u64),
    /// A masternode is listed twice.
    #[error("masternode {0} is listed twice")]
    DuplicateMasternode(String),
    /// The allocations are too many or sum past the money supply.
    #[error("allocations are invalid: {0}")]
    Allocations(&'static str),
}

/// The chain parameters of a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Genesis {
    /// The network.
    pub network: Network,
    /// Seconds since the Unix epoch of the genesis block; slot 0 starts here.
    pub timestamp: u64,
    /// Seconds per slot.
    pub block_interval_secs: u64,
    /// The masternodes, sorted by key.
    masternodes: Vec<GenesisMasternode>,
    /// The initial outputs.
    pub allocations: Vec<TxOut>,
}

impl Genesis {
    /// A genesis; masternodes are sorted by key.
    ///
    /// # Errors
    /// A [`GenesisError`] for a bad interval, a duplicate masternode or bad
    /// allocations.
    pub fn new(
        network: Network,
        timestamp: u64,
        block_interval_secs: u64,
        mut masternodes: Vec<GenesisMasternode>,
        allocations: Vec<TxOut>,
    ) -> Result<Self, GenesisError> {
        if block_interval_secs == 0 || block_interval_secs > MAX_BLOCK_INTERVAL_SECS {
            return Err(GenesisError::Interval(block_interval_secs));
        }
        masternodes.sort_by_key(|m| m.public_key);
        for pair in masternodes.windows(2) {
            if pair[0].public_key == pair[1].public_key {
                return Err(GenesisError::DuplicateMasternode(hex::encode(
                    pair[0].public_key,
                )));
            }
        }
        if allocations.len() > MAX_OUTPUTS {
            return Err(GenesisError::Allocations(
                "more outputs than a transaction allows",
            ));
        }
        let mut total: u64 = 0;
        for out in &allocations {
            if out.value == 0 {
                return Err(GenesisError::Allocations("an allocation of zero"));
            }
            total = total
                .checked_add(out.value)
                .filter(|t| *t <= MAX_MONEY)
                .ok_or(GenesisError::Allocations(
                    "the total exceeds the money supply",
                ))?;
        }
        Ok(Genesis {
            network,
            timestamp,
            block_interval_secs,
            masternodes,
            allocations,
        })
    }

    /// The devnet genesis: every key a Free masternode, every wallet
    /// address funded with [`DEVNET_OUTPUTS_PER_NODE`] outputs of
    /// [`DEVNET_OUTPUT_VALUE`].
    ///
    /// # Errors
    /// As [`Genesis::new`].
    pub fn devnet(
        block_interval_secs: u64,
        masternodes: &[[u8; 32]],
        wallets: &[Address],
    ) -> Result<Self, GenesisError> {
        let allocations = wallets
            .iter()
            .flat_map(|a| {
                std::iter::repeat_n(
                    TxOut {
                        value: DEVNET_OUTPUT_VALUE,
                        address: *a,
                    },
                    DEVNET_OUTPUTS_PER_NODE,
                )
            })
            .collect();
        Genesis::new(
            Network::Devnet,
            DEVNET_GENESIS_TIMESTAMP,
            block_interval_secs,
            masternodes
                .iter()
                .map(|k| GenesisMasternode {
                    public_key: *k,
                    tier: Tier::Free,
                })
                .collect(),
            allocations,
        )
    }

    /// The masternodes, sorted by key.
    pub fn masternodes(&self) -> &[GenesisMasternode] {
        &self.masternodes
    }

    /// The masternode set for vote tallies.
    pub fn masternode_set(&self) -> MasternodeSet {
        MasternodeSet::new(self.masternodes.iter().map(|m| (m.public_key, m.tier)))
    }

    /// The commitment to the parameters carried in the genesis header.
    pub fn params_commitment(&self) -> [u8; 32] {
        let params = (
            self.network.magic(),
            self.block_interval_secs,
            &self.masternodes,
        );
        let bytes = encoding::encode_value(&params).unwrap_or_default();
        blake3::derive_key("timed v1 genesis params", &bytes)
    }

    /// The allocation transaction, if there are allocations.
    pub fn allocation_tx(&self) -> Option<Transaction> {
        (!self.allocations.is_empty()).then(|| Transaction {
            version: 1,
            inputs: Vec::new(),
            outputs: self.allocations.clone(),
            nonce: 0,
        })
    }

    /// The genesis block.
    pub fn block(&self) -> Block {
        let transactions: Vec<Transaction> = self.allocation_tx().into_iter().collect();
        let txids: Vec<_> = transactions.iter().map(Transaction::txid).collect();
        Block {
            header: BlockHeader {
                version: 1,
                height: 0,
                prev_hash: self.params_commitment(),
                merkle_root: merkle_root(&txids),
                timestamp: self.timestamp,
                producer: [0u8; 32],
                signature: [0u8; 64],
            },
            transactions,
        }
    }

    /// The genesis hash.
    pub fn hash(&self) -> BlockHash {
        self.block().hash()
    }

    /// The slot of `timestamp` (0 before the genesis).
    pub fn slot(&self, timestamp: u64) -> u64 {
        timestamp.saturating_sub(self.timestamp) / self.block_interval_secs
    }

    /// When `slot` starts.
    pub fn slot_start(&self, slot: u64) -> u64 {
        self.timestamp
            .saturating_add(slot.saturating_mul(self.block_interval_secs))
    }

    /// The masternode scheduled to produce in `slot`, if there are any.
    pub fn producer(&self, slot: u64) -> Option<&[u8; 32]> {
        let n = self.masternodes.len() as u64;
        (n > 0).then(|| &self.masternodes[(slot % n) as usize].public_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::signature::{SecretKey, SignatureScheme};

    fn address() -> Address {
        Address::from_public_key(&SecretKey::generate(SignatureScheme::Ed25519).public_key())
    }

    #[test]
    fn the_hash_binds_every_parameter() {
        let keys = [[1u8; 32], [2u8; 32]];
        let wallets = [address(), address()];
        let base = Genesis::devnet(2, &keys, &wallets).unwrap();
        let h = base.hash();
        assert_eq!(Genesis::devnet(2, &keys, &wallets).unwrap().hash(), h);
        // Order of the masternodes does not matter; their set does.
        assert_eq!(
            Genesis::devnet(2, &[keys[1], keys[0]], &wallets)
                .unwrap()
                .hash(),
            h
        );
        assert_ne!(Genesis::devnet(3, &keys, &wallets).unwrap().hash(), h);
        assert_ne!(Genesis::devnet(2, &keys[..1], &wallets).unwrap().hash(), h);
        assert_ne!(Genesis::devnet(2, &keys, &wallets[..1]).unwrap().hash(), h);
        let mut other = base.clone();
        other.timestamp += 1;
        assert_ne!(other.hash(), h);
        other = base.clone();
        other.network = Network::Testnet;
        assert_ne!(other.hash(), h);
        let mut silver = base.masternodes().to_vec();
        silver[0].tier = Tier::Silver;
        let g = Genesis::new(
            Network::Devnet,
            base.timestamp,
            2,
            silver,
            base.allocations.clone(),
        )
        .unwrap();
        assert_ne!(g.hash(), h);
    }

    #[test]
    fn the_schedule_is_round_robin_over_sorted_keys() {
        let g = Genesis::devnet(5, &[[9u8; 32], [3u8; 32], [7u8; 32]], &[]).unwrap();
        let t0 = g.timestamp;
        assert_eq!(g.slot(t0), 0);
        assert_eq!(g.slot(t0 + 4), 0);
        assert_eq!(g.slot(t0 + 5), 1);
        assert_eq!(g.slot(t0 - 100), 0);
        assert_eq!(g.slot_start(3), t0 + 15);
        let order: Vec<u8> = (0..6).map(|s| g.producer(s).unwrap()[0]).collect();
        assert_eq!(order, [3, 7, 9, 3, 7, 9]);
        let empty = Genesis::devnet(5, &[], &[]).unwrap();
        assert_eq!(empty.producer(0), None);
    }

    #[test]
    fn bad_parameters_are_typed_errors() {
        assert_eq!(
            Genesis::devnet(0, &[], &[]).unwrap_err(),
            GenesisError::Interval(0)
        );
        assert!(matches!(
            Genesis::devnet(1, &[[1; 32], [1; 32]], &[]),
            Err(GenesisError::DuplicateMasternode(_))
        ));
        let a = address();
        let huge = vec![
            TxOut {
                value: MAX_MONEY,
                address: a
            };
            2
        ];
        assert!(matches!(
            Genesis::new(Network::Devnet, 0, 1, vec![], huge),
            Err(GenesisError::Allocations(_))
        ));
    }

    #[test]
    fn the_genesis_block_holds_the_allocations() {
        let w = address();
        let g = Genesis::devnet(1, &[[1; 32]], &[w]).unwrap();
        let b = g.block();
        assert_eq!(b.header.height, 0);
        assert!(b.merkle_matches());
        assert_eq!(b.transactions.len(), 1);
        assert_eq!(b.transactions[0].outputs.len(), DEVNET_OUTPUTS_PER_NODE);
        assert!(b.transactions[0].check_structure(true).is_ok());
        assert!(Genesis::devnet(1, &[[1; 32]], &[])
            .unwrap()
            .block()
            .transactions
            .is_empty());
    }
}

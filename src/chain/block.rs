//! Blocks: a signed header and the transactions it finalizes.
//!
//! # Hashes
//! * `block hash = blake3::derive_key("timed v1 block", encode(header with
//!   the signature zeroed))`; the producer signs
//!   `blake3::derive_key("timed v1 block signature", magic || block hash)`.
//! * The merkle root is a binary blake3 tree over the txids with
//!   domain-separated leaves and nodes (`derive_key("timed v1 merkle leaf",
//!   txid)`, `derive_key("timed v1 merkle node", left || right)`); an odd
//!   node is promoted unchanged, never duplicated, so two different
//!   transaction lists cannot share a root (unlike Bitcoin's CVE-2012-2459).
//!   The root of no transactions is 32 zero bytes.

use serde::{Deserialize, Serialize};

use super::transaction::{Transaction, Txid};
use crate::crypto::NodeIdentity;
use crate::encoding;

/// A block hash.
pub type BlockHash = [u8; 32];

/// Largest encoded block, in bytes (fits a frame with room to spare).
pub const MAX_BLOCK_BYTES: usize = 2 * 1024 * 1024;

/// A block header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    /// Format version (1).
    pub version: u32,
    /// Height: 0 for genesis.
    pub height: u64,
    /// Hash of the previous block (zeros for genesis).
    pub prev_hash: BlockHash,
    /// Merkle root of the txids.
    pub merkle_root: [u8; 32],
    /// Producer's clock, seconds since the Unix epoch.
    pub timestamp: u64,
    /// The producing masternode's ed25519 key (zeros for genesis).
    pub producer: [u8; 32],
    /// The producer's signature (zeros for genesis).
    #[serde(with = "crate::encoding::fixed64")]
    pub signature: [u8; 64],
}

/// A block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The header.
    pub header: BlockHeader,
    /// The transactions, in order.
    pub transactions: Vec<Transaction>,
}

/// The merkle root of `txids` (see the module docs).
pub fn merkle_root(txids: &[Txid]) -> [u8; 32] {
    if txids.is_empty() {
        return [0u8; 32];
    }
    let mut level: Vec<[u8; 32]> = txids
        .iter()
        .map(|id| blake3::derive_key("timed v1 merkle leaf", id))
        .collect();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => {
                    let mut h = blake3::Hasher::new_derive_key("timed v1 merkle node");
                    h.update(left);
                    h.update(right);
                    *h.finalize().as_bytes()
                }
                [odd] => *odd,
                _ => [0u8; 32],
            })
            .collect();
    }
    level[0]
}

impl BlockHeader {
    /// The block hash (signature excluded).
    pub fn hash(&self) -> BlockHash {
        let mut unsigned = self.clone();
        unsigned.signature = [0u8; 64];
        let bytes = encoding::encode_value(&unsigned).unwrap_or_default();
        blake3::derive_key("timed v1 block", &bytes)
    }

    /// The digest the producer signs.
    pub fn signing_digest(&self, magic: [u8; 4]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("timed v1 block signature");
        h.update(&magic);
        h.update(&self.hash());
        *h.finalize().as_bytes()
    }
}

impl Block {
    /// Builds and signs a block on top of `prev` (hash and height).
    pub fn produce(
        producer: &NodeIdentity,
        magic: [u8; 4],
        prev: (BlockHash, u64),
        timestamp: u64,
        transactions: Vec<Transaction>,
    ) -> Block {
        let txids: Vec<Txid> = transactions.iter().map(Transaction::txid).collect();
        let mut header = BlockHeader {
            version: 1,
            height: prev.1 + 1,
            prev_hash: prev.0,
            merkle_root: merkle_root(&txids),
            timestamp,
            producer: *producer.public_key().as_bytes(),
            signature: [0u8; 64],
        };
        header.signature = producer.sign(&header.signing_digest(magic)).to_bytes();
        Block {
            header,
            transactions,
        }
    }

    /// The block's hash.
    pub fn hash(&self) -> BlockHash {
        self.header.hash()
    }

    /// True when the header's merkle root matches the transactions.
    pub fn merkle_matches(&self) -> bool {
        let txids: Vec<Txid> = self.transactions.iter().map(Transaction::txid).collect();
        merkle_root(&txids) == self.header.merkle_root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merkle_roots_differ_for_duplicated_lists() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let c = [3u8; 32];
        assert_ne!(merkle_root(&[a, b, c]), merkle_root(&[a, b, c, c]));
        assert_ne!(merkle_root(&[a, b]), merkle_root(&[b, a]));
        assert_eq!(merkle_root(&[]), [0u8; 32]);
        assert_eq!(
            merkle_root(&[a]),
            blake3::derive_key("timed v1 merkle leaf", &a)
        );
    }

    #[test]
    fn produced_blocks_link_and_sign() {
        let id = NodeIdentity::from_secret_bytes(&[4; 32]);
        let block = Block::produce(&id, *b"TDEV", ([7; 32], 9), 1_700_000_000, Vec::new());
        assert_eq!(block.header.height, 10);
        assert_eq!(block.header.prev_hash, [7; 32]);
        assert!(block.merkle_matches());
        let key = id.public_key();
        let sig = ed25519_dalek::Signature::from_bytes(&block.header.signature);
        key.verify_strict(&block.header.signing_digest(*b"TDEV"), &sig)
            .unwrap();
        let mut other = block.header.clone();
        other.signature = [1; 64];
        assert_eq!(
            other.hash(),
            block.hash(),
            "the hash excludes the signature"
        );
    }
}

//! Signed envelopes: everything relayed beyond one hop.
//!
//! # Layout and signature
//! An [`Envelope`] is encoded (see [`super::codec`]) as
//!
//! ```text
//! kind:u32le || originator[32] || timestamp_ms:u64le || payload_len:u64le || payload || signature[64]
//! ```
//!
//! The signature is ed25519 over the 32-byte digest
//!
//! ```text
//! blake3::derive_key("timed v1 gossip envelope", magic[4] || <all encoded bytes before the signature>)
//! ```
//!
//! binding the network magic, so an envelope cannot be replayed on another
//! network. The [`MessageId`] is `blake3(<all encoded bytes including the signature>)`.
//!
//! # Security
//! Verification is strict (`verify_strict`: no small-order keys or R, no
//! non-canonical S), and a signature has exactly one encoding, so an id
//! cannot be changed by re-encoding. Batch verification
//! ([`verify_batch`]) checks the weak-key and small-order-R conditions that
//! ed25519-dalek's batch equation skips, and falls back to one-by-one strict
//! verification when a batch fails, so it reports exactly which envelopes
//! are bad.

use curve25519_dalek::edwards::CompressedEdwardsY;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::constants::MAX_ENVELOPE_PAYLOAD_LEN;
use crate::crypto::{NodeId, NodeIdentity};

/// blake3 key-derivation context of the envelope digest.
pub const ENVELOPE_DIGEST_CONTEXT: &str = "timed v1 gossip envelope";

/// What an envelope carries; index on the wire as a `u32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GossipKind {
    /// 0: a transaction.
    Transaction,
    /// 1: a block.
    Block,
    /// 2: a masternode vote.
    Vote,
    /// 3: an address announcement.
    Address,
}

impl GossipKind {
    /// The wire index.
    pub const fn index(self) -> u32 {
        match self {
            GossipKind::Transaction => 0,
            GossipKind::Block => 1,
            GossipKind::Vote => 2,
            GossipKind::Address => 3,
        }
    }

    /// A short stable name, for logs and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            GossipKind::Transaction => "tx",
            GossipKind::Block => "block",
            GossipKind::Vote => "vote",
            GossipKind::Address => "addr",
        }
    }
}

/// The id of a gossip message: blake3 of the whole encoded envelope.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub [u8; 32]);

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({})", hex::encode(&self.0[..6]))
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A payload signed by its originator.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// What the payload is.
    pub kind: GossipKind,
    /// The originator's ed25519 public key.
    pub originator: [u8; 32],
    /// The originator's clock when signing, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The payload (its encoding depends on `kind`).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// ed25519 signature over the digest (see the module docs).
    #[serde(with = "super::codec::fixed64")]
    pub signature: [u8; 64],
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("kind", &self.kind)
            .field("originator", &hex::encode(&self.originator[..4]))
            .field("timestamp_ms", &self.timestamp_ms)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The payload is larger than [`MAX_ENVELOPE_PAYLOAD_LEN`].
    #[error("envelope payload of {len} bytes exceeds {max}")]
    PayloadTooLarge {
        /// The payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The originator key is not a valid ed25519 key, or is weak.
    #[error("invalid or weak originator key")]
    InvalidOriginator,
    /// The signature does not verify.
    #[error("envelope signature does not verify")]
    BadSignature,
}

impl Envelope {
    /// Signs `payload` as `identity`.
    pub fn sign(
        identity: &NodeIdentity,
        magic: [u8; 4],
        kind: GossipKind,
        timestamp_ms: u64,
        payload: Vec<u8>,
    ) -> Self {
        let mut env = Envelope {
            kind,
            originator: *identity.public_key().as_bytes(),
            timestamp_ms,
            payload,
            signature: [0u8; 64],
        };
        env.signature = identity.sign(&env.digest(magic)).to_bytes();
        env
    }

    /// Feeds the encoded bytes before the signature into `hasher`.
    fn hash_unsigned(&self, hasher: &mut blake3::Hasher) {
        hasher.update(&self.kind.index().to_le_bytes());
        hasher.update(&self.originator);
        hasher.update(&self.timestamp_ms.to_le_bytes());
        hasher.update(&(self.payload.len() as u64).to_le_bytes());
        hasher.update(&self.payload);
    }

    /// The 32-byte digest the originator signs.
    pub fn digest(&self, magic: [u8; 4]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_derive_key(ENVELOPE_DIGEST_CONTEXT);
        hasher.update(&magic);
        self.hash_unsigned(&mut hasher);
        *hasher.finalize().as_bytes()
    }

    /// The message id: blake3 of the whole encoded envelope.
    pub fn id(&self) -> MessageId {
        let mut hasher = blake3::Hasher::new();
        self.hash_unsigned(&mut hasher);
        hasher.update(&self.signature);
        MessageId(*hasher.finalize().as_bytes())
    }

    /// The originator's node id, if the key is valid.
    pub fn originator_id(&self) -> Option<NodeId> {
        VerifyingKey::from_bytes(&self.originator)
            .ok()
            .map(|k| NodeId::from_public_key(&k))
    }

    fn checked_key(&self) -> Result<VerifyingKey, EnvelopeError> {
        if self.payload.len() > MAX_ENVELOPE_PAYLOAD_LEN {
            return Err(EnvelopeError::PayloadTooLarge {
                len: self.payload.len(),
                max: MAX_ENVELOPE_PAYLOAD_LEN,
            });
        }
        let key = VerifyingKey::from_bytes(&self.originator)
            .map_err(|_| EnvelopeError::InvalidOriginator)?;
        if key.is_weak() {
            return Err(EnvelopeError::InvalidOriginator);
        }
        Ok(key)
    }

    /// Verifies the signature strictly.
    ///
    /// # Errors
    /// An [`EnvelopeError`] naming what is wrong.
    pub fn verify(&self, magic: [u8; 4]) -> Result<(), EnvelopeError> {
        let key = self.checked_key()?;
        key.verify_strict(&self.digest(magic), &Signature::from_bytes(&self.signature))
            .map_err(|_| EnvelopeError::BadSignature)
    }
}

/// True when the R half of a signature decodes to a point of small order
/// (or does not decode), which `verify_strict` refuses and the batch
/// equation does not check.
fn r_is_small_order_or_invalid(signature: &[u8; 64]) -> bool {
    let mut r = [0u8; 32];
    r.copy_from_slice(&signature[..32]);
    match CompressedEdwardsY(r).decompress() {
        Some(point) => point.is_small_order(),
        None => true,
    }
}

/// Verifies many envelopes at once; returns one result per envelope, in order.
///
/// Envelopes with a weak key, a small-order R or an oversized payload are
/// refused before the batch; the rest are checked with one batch equation.
/// If the batch fails, each is re-checked with `verify_strict` so that only
/// the bad ones are refused.
pub fn verify_batch(envelopes: &[&Envelope], magic: [u8; 4]) -> Vec<Result<(), EnvelopeError>> {
    let mut results: Vec<Result<(), EnvelopeError>> = Vec::with_capacity(envelopes.len());
    let mut digests = Vec::with_capacity(envelopes.len());
    let mut signatures = Vec::with_capacity(envelopes.len());
    let mut keys = Vec::with_capacity(envelopes.len());
    let mut positions = Vec::with_capacity(envelopes.len());
    for (i, env) in envelopes.iter().enumerate() {
        match env.checked_key() {
            Ok(_) if r_is_small_order_or_invalid(&env.signature) => {
                results.push(Err(EnvelopeError::BadSignature));
            }
            Ok(key) => {
                results.push(Ok(()));
                digests.push(env.digest(magic));
                signatures.push(Signature::from_bytes(&env.signature));
                keys.push(key);
                positions.push(i);
            }
            Err(e) => results.push(Err(e)),
        }
    }
    if positions.is_empty() {
        return results;
    }
    let messages: Vec<&[u8]> = digests.iter().map(|d| d.as_slice()).collect();
    if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_err() {
        for (j, &i) in positions.iter().enumerate() {
            if keys[j].verify_strict(messages[j], &signatures[j]).is_err() {
                results[i] = Err(EnvelopeError::BadSignature);
            }
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec;

    const MAGIC: [u8; 4] = *b"TDEV";

    fn env(n: u8) -> Envelope {
        let id = NodeIdentity::from_secret_bytes(&[n; 32]);
        Envelope::sign(
            &id,
            MAGIC,
            GossipKind::Transaction,
            1_700_000_000_000,
            vec![n; 250],
        )
    }

    #[test]
    fn sign_verify_and_id_match_the_encoding() {
        let e = env(1);
        e.verify(MAGIC).unwrap();
        assert_eq!(e.verify(*b"TIME"), Err(EnvelopeError::BadSignature));
        let bytes = codec::encode_envelope(&e);
        assert_eq!(e.id().0, *blake3::hash(&bytes).as_bytes());
        let mut signed = Vec::from(&MAGIC[..]);
        signed.extend_from_slice(&bytes[..bytes.len() - 64]);
        assert_eq!(
            e.digest(MAGIC),
            blake3::derive_key(ENVELOPE_DIGEST_CONTEXT, &signed)
        );
        assert_eq!(
            e.originator_id(),
            Some(NodeIdentity::from_secret_bytes(&[1; 32]).node_id())
        );
    }

    #[test]
    fn tampering_is_detected() {
        let mut e = env(2);
        e.payload[0] ^= 1;
        assert_eq!(e.verify(MAGIC), Err(EnvelopeError::BadSignature));
        let mut e = env(2);
        e.timestamp_ms += 1;
        assert_eq!(e.verify(MAGIC), Err(EnvelopeError::BadSignature));
        let mut e = env(2);
        e.kind = GossipKind::Vote;
        assert_eq!(e.verify(MAGIC), Err(EnvelopeError::BadSignature));
        let mut e = env(2);
        e.originator = [0u8; 32];
        e.originator[0] = 1; // the identity point: weak
        assert_eq!(e.verify(MAGIC), Err(EnvelopeError::InvalidOriginator));
    }

    #[test]
    fn batch_matches_single_verification() {
        let mut envs: Vec<Envelope> = (0..64).map(env).collect();
        let refs: Vec<&Envelope> = envs.iter().collect();
        assert!(verify_batch(&refs, MAGIC).iter().all(Result::is_ok));
        envs[5].payload[3] ^= 1;
        envs[40].signature[40] ^= 1;
        let refs: Vec<&Envelope> = envs.iter().collect();
        let results = verify_batch(&refs, MAGIC);
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.is_ok(), envs[i].verify(MAGIC).is_ok(), "envelope {i}");
            assert_eq!(r.is_ok(), i != 5 && i != 40, "envelope {i}");
        }
        assert!(verify_batch(&[], MAGIC).is_empty());
    }

    #[test]
    fn batch_refuses_small_order_r_and_weak_keys() {
        // A weak key (identity point) with an identity R and zero S
        // satisfies the unchecked batch equation; both checks must catch it.
        let mut weak = env(3);
        weak.originator = [0u8; 32];
        weak.originator[0] = 1;
        weak.signature = [0u8; 64];
        weak.signature[0] = 1;
        let ok = env(4);
        let results = verify_batch(&[&weak, &ok], MAGIC);
        assert_eq!(results[0], Err(EnvelopeError::InvalidOriginator));
        assert!(results[1].is_ok());
        let mut small_r = env(5);
        small_r.signature[..32].copy_from_slice(&weak.signature[..32]);
        assert_eq!(
            verify_batch(&[&small_r], MAGIC)[0],
            Err(EnvelopeError::BadSignature)
        );
    }
}

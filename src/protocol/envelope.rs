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
//! Envelopes are verified with the ZIP 215 rules of `ed25519-zebra` plus
//! extra checks, in this order, identically in [`Envelope::verify`] and
//! [`verify_batch`] (docs/PROTOCOL.md section 12.3):
//!
//! 1. the payload is at most [`MAX_ENVELOPE_PAYLOAD_LEN`] bytes
//!    ([`EnvelopeError::PayloadTooLarge`]);
//! 2. the originator key `A` decodes to a curve point, is the canonical
//!    encoding of that point and is not of small order
//!    ([`EnvelopeError::InvalidOriginator`]);
//! 3. `R` (signature bytes 0..32) likewise decodes, is canonical and is not of
//!    small order, and `S` (bytes 32..64) is a canonical scalar, `S < ℓ`
//!    ([`EnvelopeError::BadSignature`]);
//! 4. the **cofactored** equation `[8]([S]B − R − [k]A) = 0` holds, with
//!    `k = SHA-512(R || A || digest) mod ℓ` ([`EnvelopeError::BadSignature`]).
//!
//! Why cofactored: with the cofactorless equation (`verify_strict`), a
//! signature whose `R` or `A` has a small-order (torsion) component fails
//! alone but passes a random-linear-combination batch about one time in
//! eight, so nodes that batch and nodes that do not would disagree, and a
//! malicious originator could make honest relayers look like forgers. Under
//! ZIP 215 every term of the batch equation is multiplied by the cofactor,
//! so a batch of signatures that are each valid alone always passes, and a
//! batch holding an invalid one fails except with probability about 2^-128
//! (the random coefficients). A signature whose `R` has a torsion component
//! but satisfies the cofactored equation is therefore *valid* here, for
//! every node, alone or in any batch.
//!
//! Why the extra checks (ZIP 215 alone accepts small-order and
//! non-canonically encoded points): a small-order key
//! would verify signatures on any message; canonical `A`, `R` and `S` give
//! every envelope exactly one encoding, so a relay cannot change its id
//! (any other `(R, S)` for the same digest needs the originator's secret).
//! They are done on the bytes (`y < p` and `y` not one of the 5 `y` of the
//! small-order points; whether the point decodes at all is left to the
//! equation, which decodes it anyway), so they cost a few comparisons rather
//! than a decompression or the scalar multiplication of a torsion check, and
//! batch verification keeps its speed-up. Honest RFC 8032 signatures pass
//! both these rules and `verify_strict`.
//!
//! When a batch fails, every envelope in it is verified alone, so only the
//! bad ones are refused.

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::VerifyingKey;
use ed25519_zebra::batch;
use ed25519_zebra::{Signature, VerificationKey, VerificationKeyBytes};
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
    #[serde(with = "crate::encoding::fixed64")]
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

    /// The checks shared by [`Envelope::verify`] and [`verify_batch`], before
    /// the signature equation (rules 1 to 3 of the module docs), done on the
    /// bytes. Whether `A` and `R` decode at all is left to `ed25519-zebra`,
    /// which decodes them for the equation anyway (see
    /// [`canonical_and_not_small_order`]).
    fn precheck(&self) -> Result<(), EnvelopeError> {
        if self.payload.len() > MAX_ENVELOPE_PAYLOAD_LEN {
            return Err(EnvelopeError::PayloadTooLarge {
                len: self.payload.len(),
                max: MAX_ENVELOPE_PAYLOAD_LEN,
            });
        }
        if !canonical_and_not_small_order(&self.originator) {
            return Err(EnvelopeError::InvalidOriginator);
        }
        let mut r = [0u8; 32];
        r.copy_from_slice(&self.signature[..32]);
        let mut s = [0u8; 32];
        s.copy_from_slice(&self.signature[32..]);
        if !canonical_and_not_small_order(&r)
            || bool::from(Scalar::from_canonical_bytes(s).is_none())
        {
            // The key is checked before the signature: an originator that
            // does not decode is what gets reported (a rare path, only for
            // envelopes that are refused anyway).
            if CompressedEdwardsY(self.originator).decompress().is_none() {
                return Err(EnvelopeError::InvalidOriginator);
            }
            return Err(EnvelopeError::BadSignature);
        }
        Ok(())
    }

    /// The prechecks, then the batch item (key, signature, `k`) of this
    /// envelope.
    fn checked_item(&self, magic: [u8; 4]) -> Result<batch::Item, EnvelopeError> {
        self.precheck()?;
        let digest = self.digest(magic);
        Ok(batch::Item::from((
            VerificationKeyBytes::from(self.originator),
            Signature::from_bytes(&self.signature),
            &digest[..],
        )))
    }

    /// Verifies the signature: the ZIP 215 cofactored equation after the
    /// extra checks of the module docs, exactly as [`verify_batch`] does.
    ///
    /// # Errors
    /// An [`EnvelopeError`] naming what is wrong.
    pub fn verify(&self, magic: [u8; 4]) -> Result<(), EnvelopeError> {
        self.precheck()?;
        let key = VerificationKey::try_from(self.originator)
            .map_err(|_| EnvelopeError::InvalidOriginator)?;
        key.verify(&Signature::from_bytes(&self.signature), &self.digest(magic))
            .map_err(|_| EnvelopeError::BadSignature)
    }
}

/// Proof that the envelope with this id passed signature verification for
/// this node's network. Only verifying makes one ([`Envelope::verified`],
/// or the `auth` layer's batch verifier through `Verified::checked`), so
/// an unverified envelope cannot be mistaken for a verified one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified(MessageId);

impl Verified {
    /// The proof for `envelope`, which the caller has just verified (a
    /// batch verification that returned `Ok` for it).
    pub(crate) fn checked(envelope: &Envelope) -> Verified {
        Verified(envelope.id())
    }

    /// Whether this proves `envelope`.
    pub fn proves(&self, envelope: &Envelope) -> bool {
        self.0 == envelope.id()
    }
}

impl Envelope {
    /// Verifies the envelope for the network `magic` and returns the proof.
    ///
    /// # Errors
    /// As [`Envelope::verify`].
    pub fn verified(&self, magic: [u8; 4]) -> Result<Verified, EnvelopeError> {
        self.verify(magic)?;
        Ok(Verified(self.id()))
    }
}

/// The `y` coordinates (little-endian, sign bit clear) of the 8 points of
/// small order: 0 (the two points of order 4), 1 (the identity), the two `y`
/// of the four points of order 8, and `p − 1` (the point of order 2). With
/// either sign bit, these 10 encodings are exactly the encodings with
/// `y < p` that decode to a point of small order (the test
/// `byte_checks_match_decompression` derives them from the group).
const SMALL_ORDER_Y: [[u8; 32]; 5] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

/// The byte-level half of the point rule of the module docs.
///
/// For an encoding that decodes (which `ed25519-zebra` checks when it
/// decodes the point for the equation), this is true exactly when the point
/// is not of small order and `bytes` is its canonical encoding
/// (decompressing and compressing again gives `bytes` back). An encoding
/// whose `y` (low 255 bits) is below `p = 2^255 − 19` is canonical unless
/// `x = 0` and the sign bit is set; the two points with `x = 0` (the identity
/// and the point of order 2) are of small order and refused here with both
/// sign bits. So: `y < p` and `y` is not one of [`SMALL_ORDER_Y`]. This
/// costs a few byte comparisons, where decompressing and compressing would
/// cost two field exponentiations per point.
fn canonical_and_not_small_order(bytes: &[u8; 32]) -> bool {
    let mut y = *bytes;
    y[31] &= 0x7f;
    // y >= p  <=>  y[0] >= 0xed, y[1..31] all 0xff, y[31] == 0x7f.
    let y_at_least_p = y[0] >= 0xed && y[1..31].iter().all(|&b| b == 0xff) && y[31] == 0x7f;
    !y_at_least_p && !SMALL_ORDER_Y.contains(&y)
}

/// The error of a failed single verification of a batch item.
fn item_error(error: ed25519_zebra::Error) -> EnvelopeError {
    match error {
        ed25519_zebra::Error::MalformedPublicKey => EnvelopeError::InvalidOriginator,
        _ => EnvelopeError::BadSignature,
    }
}

/// Verifies many envelopes at once; returns one result per envelope, in order.
///
/// Applies exactly the rules of [`Envelope::verify`]: the extra checks on
/// each envelope first, then one ZIP 215 batch equation over those that
/// passed them (a lone envelope is verified alone). If the batch fails, each
/// of its envelopes is verified alone so that only the bad ones are refused.
/// Because the equation is cofactored, a result never depends on the other
/// envelopes of the batch.
pub fn verify_batch(envelopes: &[&Envelope], magic: [u8; 4]) -> Vec<Result<(), EnvelopeError>> {
    let mut results: Vec<Result<(), EnvelopeError>> = Vec::with_capacity(envelopes.len());
    let mut items = Vec::with_capacity(envelopes.len());
    let mut positions = Vec::with_capacity(envelopes.len());
    for (i, env) in envelopes.iter().enumerate() {
        match env.checked_item(magic) {
            Ok(item) => {
                results.push(Ok(()));
                items.push(item);
                positions.push(i);
            }
            Err(e) => results.push(Err(e)),
        }
    }
    // A lone envelope is cheaper to verify alone than as a batch of one.
    let batch_ok = items.len() > 1 && {
        let mut verifier = batch::Verifier::new();
        for item in &items {
            verifier.queue(item.clone());
        }
        verifier.verify(rand::thread_rng()).is_ok()
    };
    if !batch_ok {
        for (item, i) in items.into_iter().zip(positions) {
            if let Err(e) = item.verify_single() {
                results[i] = Err(item_error(e));
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

    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::edwards::EdwardsPoint;
    use curve25519_dalek::traits::IsIdentity;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use sha2::{Digest, Sha512};

    /// A point of order 8 (one of the standard small-order encodings).
    fn order_8_point() -> EdwardsPoint {
        let bytes: [u8; 32] =
            hex::decode("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
                .unwrap()
                .try_into()
                .unwrap();
        let t = CompressedEdwardsY(bytes).decompress().unwrap();
        assert!(t.mul_by_cofactor().is_identity());
        assert!(!(t * Scalar::from(4u8)).is_identity());
        t
    }

    fn random_scalar(rng: &mut StdRng) -> Scalar {
        let mut wide = [0u8; 64];
        rng.fill(&mut wide[..]);
        Scalar::from_bytes_mod_order_wide(&wide)
    }

    /// An envelope signed by the secret scalar `a` with public key
    /// `aB + key_torsion`, whose `R` is `rB + r_torsion`, with
    /// `k = SHA-512(R || A || digest)` and `s = r + k·a` — what a malicious
    /// originator who knows `a` can build. With `honest_k == false` the
    /// signature uses the `k` of `rB` instead, so it is invalid.
    fn torsion_envelope(
        rng: &mut StdRng,
        key_torsion: EdwardsPoint,
        r_torsion: EdwardsPoint,
        honest_k: bool,
    ) -> Envelope {
        let a = random_scalar(rng);
        let public = ED25519_BASEPOINT_POINT * a + key_torsion;
        let mut e = Envelope {
            kind: GossipKind::Vote,
            originator: public.compress().to_bytes(),
            timestamp_ms: rng.gen(),
            payload: vec![rng.gen(); rng.gen_range(0..300)],
            signature: [0u8; 64],
        };
        let digest = e.digest(MAGIC);
        let r = random_scalar(rng);
        let r_point = ED25519_BASEPOINT_POINT * r;
        let big_r = (r_point + r_torsion).compress().to_bytes();
        let hashed_r = if honest_k {
            big_r
        } else {
            r_point.compress().to_bytes()
        };
        let mut h = Sha512::new();
        h.update(hashed_r);
        h.update(e.originator);
        h.update(digest);
        let mut wide = [0u8; 64];
        wide.copy_from_slice(&h.finalize());
        let k = Scalar::from_bytes_mod_order_wide(&wide);
        let s = r + k * a;
        e.signature[..32].copy_from_slice(&big_r);
        e.signature[32..].copy_from_slice(s.as_bytes());
        e
    }

    fn strict_accepts(e: &Envelope) -> bool {
        VerifyingKey::from_bytes(&e.originator).is_ok_and(|k| {
            k.verify_strict(
                &e.digest(MAGIC),
                &ed25519_dalek::Signature::from_bytes(&e.signature),
            )
            .is_ok()
        })
    }

    #[test]
    fn torsion_signatures_get_the_same_verdict_alone_and_in_any_batch() {
        let mut rng = StdRng::seed_from_u64(215);
        let t8 = order_8_point();
        let zero = EdwardsPoint::default();
        let honest: Vec<Envelope> = (0..32).map(env).collect();
        let mut tampered = env(200);
        tampered.payload[0] ^= 1;
        for round in 0..100u32 {
            // A torsion component of order 2, 4 or 8 in R, and every fourth
            // time in the key too.
            let torsion = t8 * Scalar::from(1 + round % 7);
            let key_torsion = if round % 4 == 0 { torsion } else { zero };
            let forged = torsion_envelope(&mut rng, key_torsion, torsion, true);
            // Accepted by ZIP 215; with a torsion-free key, always refused by
            // the cofactorless rule (with a mixed-order key, only sometimes).
            if key_torsion == zero {
                assert!(!strict_accepts(&forged), "round {round}");
            }
            assert_eq!(forged.verify(MAGIC), Ok(()), "round {round}");
            let broken = torsion_envelope(&mut rng, key_torsion, torsion, false);
            assert_eq!(broken.verify(MAGIC), Err(EnvelopeError::BadSignature));

            let size = rng.gen_range(1..=honest.len());
            let mut batch: Vec<&Envelope> = honest.iter().take(size - 1).collect();
            batch.insert(rng.gen_range(0..size), &forged);
            if round % 4 == 1 {
                batch.insert(rng.gen_range(0..=batch.len()), &broken);
            }
            if round % 10 == 3 {
                batch.insert(rng.gen_range(0..=batch.len()), &tampered);
            }
            let results = verify_batch(&batch, MAGIC);
            assert_eq!(results.len(), batch.len());
            for (e, got) in batch.iter().zip(&results) {
                let alone = if std::ptr::eq(*e, &forged) {
                    Ok(())
                } else if std::ptr::eq(*e, &broken) || std::ptr::eq(*e, &tampered) {
                    Err(EnvelopeError::BadSignature)
                } else {
                    Ok(())
                };
                assert_eq!(*got, alone, "round {round}, batch of {}", batch.len());
            }
        }
        assert_eq!(tampered.verify(MAGIC), Err(EnvelopeError::BadSignature));
        assert!(honest.iter().all(|e| e.verify(MAGIC).is_ok()));
    }

    /// The encodings of `y` in `[p, 2^255)` (non-canonical), with both sign bits.
    fn non_canonical_encodings() -> Vec<[u8; 32]> {
        let mut out = Vec::new();
        for low in 0xedu8..=0xff {
            for sign in [0u8, 0x80] {
                let mut b = [0xffu8; 32];
                b[0] = low;
                b[31] = 0x7f | sign;
                out.push(b);
            }
        }
        out
    }

    /// The rule of the module docs for one point, the slow way.
    fn decodes_canonical_not_small_order(bytes: &[u8; 32]) -> bool {
        CompressedEdwardsY(*bytes)
            .decompress()
            .is_some_and(|p| !p.is_small_order() && p.compress().to_bytes() == *bytes)
    }

    #[test]
    fn byte_checks_match_decompression() {
        // The small-order table is the group's torsion subgroup.
        let t8 = order_8_point();
        let mut torsion_y: Vec<[u8; 32]> = (0..8u8)
            .map(|k| {
                let mut y = (t8 * Scalar::from(k)).compress().to_bytes();
                y[31] &= 0x7f;
                y
            })
            .collect();
        torsion_y.sort();
        torsion_y.dedup();
        let mut table = SMALL_ORDER_Y.to_vec();
        table.sort();
        assert_eq!(torsion_y, table);

        // Every encoding of a small-order y, of a y near 0 or p, of random
        // points with and without torsion, and random bytes.
        let mut rng = StdRng::seed_from_u64(8);
        let mut samples = non_canonical_encodings();
        for y in SMALL_ORDER_Y {
            samples.push(y);
            let mut signed = y;
            signed[31] |= 0x80;
            samples.push(signed);
        }
        for y in 0u8..=20 {
            for sign in [0u8, 0x80] {
                let mut b = [0u8; 32];
                b[0] = y;
                b[31] = sign;
                samples.push(b);
                let mut b = [0xffu8; 32]; // p − 1 − y
                b[0] = 0xec - y;
                b[31] = 0x7f | sign;
                samples.push(b);
            }
        }
        for _ in 0..200 {
            samples.push(rng.gen());
            let p = ED25519_BASEPOINT_POINT * random_scalar(&mut rng);
            samples.push(p.compress().to_bytes());
            samples.push((p + t8).compress().to_bytes());
        }
        let mut accepted = 0;
        for b in &samples {
            let reference = decodes_canonical_not_small_order(b);
            let decodes = CompressedEdwardsY(*b).decompress().is_some();
            assert_eq!(
                canonical_and_not_small_order(b) && decodes,
                reference,
                "{}",
                hex::encode(b)
            );
            accepted += usize::from(reference);
        }
        assert!(accepted > 400);
    }

    #[test]
    fn undecodable_points_are_refused_alone_and_in_batches() {
        // The smallest y that is not on the curve.
        let off_curve = (2u8..)
            .map(|y| {
                let mut b = [0u8; 32];
                b[0] = y;
                b
            })
            .find(|b| CompressedEdwardsY(*b).decompress().is_none())
            .unwrap();
        let mut key = env(12);
        key.originator = off_curve;
        let mut r = env(13);
        r.signature[..32].copy_from_slice(&off_curve);
        // Both bad: the key is reported, whichever check fails first.
        let mut both = env(14);
        both.originator = off_curve;
        both.signature[..32].copy_from_slice(&SMALL_ORDER_Y[1]);
        let mut both_s = env(15);
        both_s.originator = off_curve;
        both_s.signature[63] = 0xff;
        let ok = env(16);
        let all = [&key, &ok, &r, &both, &both_s];
        let expected = vec![
            Err(EnvelopeError::InvalidOriginator),
            Ok(()),
            Err(EnvelopeError::BadSignature),
            Err(EnvelopeError::InvalidOriginator),
            Err(EnvelopeError::InvalidOriginator),
        ];
        let single: Vec<_> = all.iter().map(|e| e.verify(MAGIC)).collect();
        assert_eq!(single, expected);
        assert_eq!(verify_batch(&all, MAGIC), expected);
        for e in all {
            assert_eq!(verify_batch(&[e], MAGIC), vec![e.verify(MAGIC)]);
        }
    }

    #[test]
    fn non_canonical_encodings_are_refused_alone_and_in_batches() {
        // A non-canonical encoding of a point of large order.
        let bad = non_canonical_encodings()
            .into_iter()
            .find(|b| {
                CompressedEdwardsY(*b)
                    .decompress()
                    .is_some_and(|p| !p.is_small_order())
            })
            .unwrap();
        let ok = env(6);
        let mut key = env(7);
        key.originator = bad;
        let mut r = env(8);
        r.signature[..32].copy_from_slice(&bad);
        // S + ℓ: the same scalar, not canonical.
        let mut s = env(9);
        let ell = Scalar::ZERO - Scalar::ONE; // ℓ - 1
        let mut carry = 1u16; // add ℓ = (ℓ - 1) + 1 to S, byte by byte
        for (byte, l) in s.signature[32..].iter_mut().zip(ell.as_bytes()) {
            let sum = u16::from(*byte) + u16::from(*l) + carry;
            *byte = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0);
        let expected = [
            Ok(()),
            Err(EnvelopeError::InvalidOriginator),
            Err(EnvelopeError::BadSignature),
            Err(EnvelopeError::BadSignature),
        ];
        let all = [&ok, &key, &r, &s];
        for (e, want) in all.iter().zip(&expected) {
            assert_eq!(e.verify(MAGIC), *want);
        }
        assert_eq!(verify_batch(&all, MAGIC), expected.to_vec());
    }

    #[test]
    fn oversized_payload_is_refused_alone_and_in_batches() {
        let mut big = env(10);
        big.payload = vec![0; MAX_ENVELOPE_PAYLOAD_LEN + 1];
        let err = Err(EnvelopeError::PayloadTooLarge {
            len: MAX_ENVELOPE_PAYLOAD_LEN + 1,
            max: MAX_ENVELOPE_PAYLOAD_LEN,
        });
        assert_eq!(big.verify(MAGIC), err);
        let ok = env(11);
        assert_eq!(verify_batch(&[&ok, &big], MAGIC), vec![Ok(()), err]);
    }
}

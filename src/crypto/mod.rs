//! Cryptographic building blocks: the node identity, signature schemes and
//! hashing helpers.
//!
//! Nothing here implements a primitive: ed25519-dalek, k256, blake3 and snow
//! (in the `transport` module) do the work; this module fixes how `timed` uses
//! them (domain separation strings, key files, constant-time comparison).

pub mod identity;
pub mod signature;

pub use identity::{KeyFileError, NodeId, NodeIdentity};
pub use signature::{PublicKey, SecretKey, Signature, SignatureError, SignatureScheme};

/// A 32-byte blake3 hash.
pub type Hash32 = [u8; 32];

/// blake3 of `data`: the content hash used for every id in `timed`.
pub fn hash(data: &[u8]) -> Hash32 {
    *blake3::hash(data).as_bytes()
}

/// Compares two byte strings in constant time (for secrets and MACs).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_matches_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert_eq!(hash(b""), *blake3::hash(b"").as_bytes());
    }
}

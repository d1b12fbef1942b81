//! The signature schemes a TIME Coin key may use, behind one enum.
//!
//! Node identities and gossip envelopes are always ed25519. Transaction inputs
//! may be signed with ed25519 or with secp256k1 ECDSA (k256), chosen
//! per input through [`SignatureScheme`].

use ed25519_dalek::Verifier as _;
use k256::ecdsa::signature::Signer as _;
use rand_core::OsRng;
use serde::{Deserialize, Serialize};

/// The signature algorithm of a key or a signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SignatureScheme {
    /// Ed25519 (RFC 8032), verified strictly (`verify_strict`).
    Ed25519,
    /// ECDSA over secp256k1 with SHA-256, low-S signatures only.
    Secp256k1,
}

/// Why a signature check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The public key bytes do not encode a valid key of the scheme.
    #[error("invalid {scheme:?} public key")]
    InvalidPublicKey {
        /// The scheme.
        scheme: SignatureScheme,
    },
    /// The signature bytes are malformed for the scheme.
    #[error("malformed {scheme:?} signature")]
    MalformedSignature {
        /// The scheme.
        scheme: SignatureScheme,
    },
    /// The key and signature use different schemes.
    #[error("signature scheme {signature:?} does not match key scheme {key:?}")]
    SchemeMismatch {
        /// The key's scheme.
        key: SignatureScheme,
        /// The signature's scheme.
        signature: SignatureScheme,
    },
    /// The signature does not verify.
    #[error("{scheme:?} signature does not verify")]
    Invalid {
        /// The scheme.
        scheme: SignatureScheme,
    },
}

/// A public key of either scheme.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// An ed25519 key.
    Ed25519(ed25519_dalek::VerifyingKey),
    /// A secp256k1 key.
    Secp256k1(k256::ecdsa::VerifyingKey),
}

/// A signature of either scheme.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signature {
    /// An ed25519 signature.
    Ed25519(ed25519_dalek::Signature),
    /// A secp256k1 ECDSA signature (normalized to low S).
    Secp256k1(k256::ecdsa::Signature),
}

/// A secret key of either scheme. Zeroized on drop by the underlying crates.
pub enum SecretKey {
    /// An ed25519 key.
    Ed25519(ed25519_dalek::SigningKey),
    /// A secp256k1 key.
    Secp256k1(k256::ecdsa::SigningKey),
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({:?}, ..)", self.scheme())
    }
}

impl SecretKey {
    /// Generates a key of `scheme` from the operating system's RNG.
    pub fn generate(scheme: SignatureScheme) -> Self {
        match scheme {
            SignatureScheme::Ed25519 => {
                SecretKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng))
            }
            SignatureScheme::Secp256k1 => {
                SecretKey::Secp256k1(k256::ecdsa::SigningKey::random(&mut OsRng))
            }
        }
    }

    /// The key's scheme.
    pub fn scheme(&self) -> SignatureScheme {
        match self {
            SecretKey::Ed25519(_) => SignatureScheme::Ed25519,
            SecretKey::Secp256k1(_) => SignatureScheme::Secp256k1,
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            SecretKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
            SecretKey::Secp256k1(k) => PublicKey::Secp256k1(*k.verifying_key()),
        }
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        match self {
            SecretKey::Ed25519(k) => Signature::Ed25519(ed25519_dalek::Signer::sign(k, message)),
            SecretKey::Secp256k1(k) => {
                let sig: k256::ecdsa::Signature = k.sign(message);
                Signature::Secp256k1(sig.normalize_s().unwrap_or(sig))
            }
        }
    }
}

impl PublicKey {
    /// The key's scheme.
    pub fn scheme(&self) -> SignatureScheme {
        match self {
            PublicKey::Ed25519(_) => SignatureScheme::Ed25519,
            PublicKey::Secp256k1(_) => SignatureScheme::Secp256k1,
        }
    }

    /// Parses a key: 32 bytes for ed25519, 33-byte SEC1 compressed for
    /// secp256k1.
    ///
    /// # Errors
    /// [`SignatureError::InvalidPublicKey`] for bytes that are not a key, and
    /// for ed25519 keys of small order (weak keys).
    pub fn from_bytes(scheme: SignatureScheme, bytes: &[u8]) -> Result<Self, SignatureError> {
        let invalid = SignatureError::InvalidPublicKey { scheme };
        match scheme {
            SignatureScheme::Ed25519 => {
                let arr: &[u8; 32] = bytes.try_into().map_err(|_| invalid.clone())?;
                let key =
                    ed25519_dalek::VerifyingKey::from_bytes(arr).map_err(|_| invalid.clone())?;
                if key.is_weak() {
                    return Err(invalid);
                }
                Ok(PublicKey::Ed25519(key))
            }
            SignatureScheme::Secp256k1 => {
                if bytes.len() != 33 {
                    return Err(invalid);
                }
                k256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                    .map(PublicKey::Secp256k1)
                    .map_err(|_| invalid)
            }
        }
    }

    /// The key's canonical bytes (see [`PublicKey::from_bytes`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            PublicKey::Ed25519(k) => k.as_bytes().to_vec(),
            PublicKey::Secp256k1(k) => k.to_encoded_point(true).as_bytes().to_vec(),
        }
    }

    /// Verifies `signature` over `message`.
    ///
    /// # Security
    /// ed25519 uses `verify_strict` (rejects small-order keys and R, and
    /// non-canonical S); secp256k1 rejects high-S signatures so that a
    /// signature has exactly one valid encoding (no malleability).
    ///
    /// # Errors
    /// A [`SignatureError`] naming why the check failed.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
        match (self, signature) {
            (PublicKey::Ed25519(k), Signature::Ed25519(s)) => {
                k.verify_strict(message, s)
                    .map_err(|_| SignatureError::Invalid {
                        scheme: SignatureScheme::Ed25519,
                    })
            }
            (PublicKey::Secp256k1(k), Signature::Secp256k1(s)) => {
                if s.normalize_s().is_some() {
                    return Err(SignatureError::MalformedSignature {
                        scheme: SignatureScheme::Secp256k1,
                    });
                }
                k.verify(message, s).map_err(|_| SignatureError::Invalid {
                    scheme: SignatureScheme::Secp256k1,
                })
            }
            (k, s) => Err(SignatureError::SchemeMismatch {
                key: k.scheme(),
                signature: s.scheme(),
            }),
        }
    }
}

impl Signature {
    /// The signature's scheme.
    pub fn scheme(&self) -> SignatureScheme {
        match self {
            Signature::Ed25519(_) => SignatureScheme::Ed25519,
            Signature::Secp256k1(_) => SignatureScheme::Secp256k1,
        }
    }

    /// Parses a signature: 64 bytes for both schemes (ed25519 `R || S`,
    /// secp256k1 `r || s` big-endian).
    ///
    /// # Errors
    /// [`SignatureError::MalformedSignature`] for a wrong length or, for
    /// secp256k1, out-of-range scalars.
    pub fn from_bytes(scheme: SignatureScheme, bytes: &[u8]) -> Result<Self, SignatureError> {
        let malformed = SignatureError::MalformedSignature { scheme };
        let arr: &[u8; 64] = bytes.try_into().map_err(|_| malformed.clone())?;
        match scheme {
            SignatureScheme::Ed25519 => Ok(Signature::Ed25519(
                ed25519_dalek::Signature::from_bytes(arr),
            )),
            SignatureScheme::Secp256k1 => k256::ecdsa::Signature::from_slice(arr)
                .map(Signature::Secp256k1)
                .map_err(|_| malformed),
        }
    }

    /// The signature's 64 bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        match self {
            Signature::Ed25519(s) => s.to_bytes(),
            Signature::Secp256k1(s) => s.to_bytes().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_schemes_sign_verify_and_round_trip() {
        for scheme in [SignatureScheme::Ed25519, SignatureScheme::Secp256k1] {
            let sk = SecretKey::generate(scheme);
            let pk = sk.public_key();
            let sig = sk.sign(b"spend");
            pk.verify(b"spend", &sig).unwrap();
            assert!(matches!(
                pk.verify(b"spenD", &sig),
                Err(SignatureError::Invalid { .. })
            ));
            let pk2 = PublicKey::from_bytes(scheme, &pk.to_bytes()).unwrap();
            let sig2 = Signature::from_bytes(scheme, &sig.to_bytes()).unwrap();
            pk2.verify(b"spend", &sig2).unwrap();
        }
    }

    #[test]
    fn scheme_mismatch_and_bad_bytes_are_typed_errors() {
        let ed = SecretKey::generate(SignatureScheme::Ed25519);
        let k1 = SecretKey::generate(SignatureScheme::Secp256k1);
        let err = ed.public_key().verify(b"m", &k1.sign(b"m")).unwrap_err();
        assert!(matches!(err, SignatureError::SchemeMismatch { .. }));
        assert!(PublicKey::from_bytes(SignatureScheme::Ed25519, &[0u8; 31]).is_err());
        assert!(PublicKey::from_bytes(SignatureScheme::Secp256k1, &[9u8; 33]).is_err());
        assert!(Signature::from_bytes(SignatureScheme::Secp256k1, &[0u8; 64]).is_err());
        // The identity point is a weak (small-order) ed25519 key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(PublicKey::from_bytes(SignatureScheme::Ed25519, &identity).is_err());
    }

    #[test]
    fn high_s_secp256k1_signature_is_refused() {
        let sk = SecretKey::generate(SignatureScheme::Secp256k1);
        let Signature::Secp256k1(low) = sk.sign(b"m") else {
            unreachable!()
        };
        let (r, s) = low.split_scalars();
        let high = k256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        let err = sk
            .public_key()
            .verify(b"m", &Signature::Secp256k1(high))
            .unwrap_err();
        assert!(matches!(err, SignatureError::MalformedSignature { .. }));
    }
}

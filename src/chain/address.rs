//! Addresses: who can spend an output.
//!
//! # Format
//! An address is the 20-byte hash
//! `blake3::derive_key("timed v1 address", scheme_tag || public_key)[..20]`
//! with `scheme_tag` 0 for ed25519 (32-byte key) and 1 for secp256k1
//! (33-byte SEC1 compressed key). As text, TIME Coin style:
//!
//! ```text
//! prefix || base58( version:u8 (=1) || hash[20] || checksum[4] )
//! ```
//!
//! with `prefix` `TIME1` on mainnet and `TIME0` on testnet and devnet, and
//! `checksum = blake3(prefix || version || hash)[..4]`, so an address of one
//! network is refused on another and a mistyped character is caught.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::crypto::{PublicKey, SignatureScheme};
use crate::params::Network;

/// Version byte of the text encoding.
pub const ADDRESS_VERSION: u8 = 1;

/// A 20-byte address hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Address(pub [u8; 20]);

/// Why an address text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The text does not start with this network's prefix.
    #[error("address must start with {expected} on {network}")]
    WrongPrefix {
        /// The expected prefix.
        expected: &'static str,
        /// The network.
        network: Network,
    },
    /// Not base58, or the wrong length.
    #[error("address is not valid base58 of 25 bytes")]
    Encoding,
    /// An unknown version byte.
    #[error("unknown address version {0}")]
    Version(u8),
    /// The checksum does not match (a typo).
    #[error("address checksum mismatch")]
    Checksum,
}

/// The text prefix of `network`.
pub const fn prefix(network: Network) -> &'static str {
    match network {
        Network::Mainnet => "TIME1",
        Network::Testnet | Network::Devnet => "TIME0",
    }
}

fn scheme_tag(scheme: SignatureScheme) -> u8 {
    match scheme {
        SignatureScheme::Ed25519 => 0,
        SignatureScheme::Secp256k1 => 1,
    }
}

fn checksum(prefix: &str, hash: &[u8; 20]) -> [u8; 4] {
    let mut h = blake3::Hasher::new();
    h.update(prefix.as_bytes());
    h.update(&[ADDRESS_VERSION]);
    h.update(hash);
    let mut out = [0u8; 4];
    out.copy_from_slice(&h.finalize().as_bytes()[..4]);
    out
}

impl Address {
    /// The address of a public key.
    pub fn from_public_key(key: &PublicKey) -> Self {
        let mut h = blake3::Hasher::new_derive_key("timed v1 address");
        h.update(&[scheme_tag(key.scheme())]);
        h.update(&key.to_bytes());
        let mut out = [0u8; 20];
        out.copy_from_slice(&h.finalize().as_bytes()[..20]);
        Address(out)
    }

    /// The text form on `network`.
    pub fn to_text(&self, network: Network) -> String {
        let prefix = prefix(network);
        let mut raw = Vec::with_capacity(25);
        raw.push(ADDRESS_VERSION);
        raw.extend_from_slice(&self.0);
        raw.extend_from_slice(&checksum(prefix, &self.0));
        format!("{prefix}{}", bs58::encode(raw).into_string())
    }

    /// Parses the text form on `network`.
    ///
    /// # Errors
    /// An [`AddressError`] naming what is wrong.
    pub fn parse(text: &str, network: Network) -> Result<Self, AddressError> {
        let expected = prefix(network);
        let body = text
            .strip_prefix(expected)
            .ok_or(AddressError::WrongPrefix { expected, network })?;
        let raw = bs58::decode(body)
            .into_vec()
            .map_err(|_| AddressError::Encoding)?;
        if raw.len() != 25 {
            return Err(AddressError::Encoding);
        }
        if raw[0] != ADDRESS_VERSION {
            return Err(AddressError::Version(raw[0]));
        }
        let mut hash = [0u8; 20];
        hash.copy_from_slice(&raw[1..21]);
        if raw[21..] != checksum(expected, &hash) {
            return Err(AddressError::Checksum);
        }
        Ok(Address(hash))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;

    #[test]
    fn text_round_trips_and_is_network_bound() {
        for scheme in [SignatureScheme::Ed25519, SignatureScheme::Secp256k1] {
            let a = Address::from_public_key(&SecretKey::generate(scheme).public_key());
            for network in [Network::Mainnet, Network::Testnet, Network::Devnet] {
                let text = a.to_text(network);
                assert!(text.starts_with(prefix(network)));
                assert_eq!(Address::parse(&text, network).unwrap(), a);
            }
            let main = a.to_text(Network::Mainnet);
            assert!(matches!(
                Address::parse(&main, Network::Testnet),
                Err(AddressError::WrongPrefix { .. })
            ));
            // A mistyped character is caught by the checksum or the encoding.
            let mut typo: Vec<char> = main.chars().collect();
            let last = typo.len() - 1;
            typo[last] = if typo[last] == '2' { '3' } else { '2' };
            let typo: String = typo.into_iter().collect();
            assert!(Address::parse(&typo, Network::Mainnet).is_err());
        }
        assert_eq!(
            Address::parse("TIME1", Network::Mainnet),
            Err(AddressError::Encoding)
        );
        assert_eq!(
            Address::parse("TIME10OIl", Network::Mainnet),
            Err(AddressError::Encoding)
        );
    }

    #[test]
    fn the_two_schemes_never_share_an_address() {
        let k = SecretKey::generate(SignatureScheme::Ed25519).public_key();
        let a = Address::from_public_key(&k);
        assert_ne!(
            a,
            Address(
                blake3::derive_key("timed v1 address", &k.to_bytes())[..20]
                    .try_into()
                    .unwrap()
            )
        );
    }
}

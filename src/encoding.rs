//! The value encoding shared by the chain, its storage and the wire:
//! bincode 2.0 in serde mode, little-endian fixed-width integers, and a size
//! limit of [`DEFAULT_MAX_FRAME_LEN`] (the layout is specified in
//! `docs/PROTOCOL.md`). Transaction ids, block hashes and stored records are
//! hashes of, or copies of, these bytes, so the chain and the network agree
//! on them without either importing the other.

use crate::constants::DEFAULT_MAX_FRAME_LEN;

/// The bincode configuration of every encoded value.
pub fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<DEFAULT_MAX_FRAME_LEN>()
}

/// Errors encoding or decoding a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodingError {
    /// The bytes do not decode as the expected value.
    #[error("undecodable value: {0}")]
    Malformed(String),
    /// The value decoded but left bytes over.
    #[error("{extra} trailing bytes after the value")]
    TrailingBytes {
        /// How many bytes were left.
        extra: usize,
    },
    /// The value could not be encoded (its encoding is larger than
    /// [`DEFAULT_MAX_FRAME_LEN`]).
    #[error("value cannot be encoded: {0}")]
    Encode(String),
}

/// Encodes a value (a transaction, a block, a stored record); chain ids and
/// storage use these bytes.
///
/// # Errors
/// [`EncodingError::Encode`] if the value is larger than the size limit.
pub fn encode_value<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, EncodingError> {
    let mut out = Vec::new();
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| EncodingError::Encode(e.to_string()))?;
    if out.len() > DEFAULT_MAX_FRAME_LEN {
        return Err(EncodingError::Encode(format!(
            "{} bytes exceed the limit of {DEFAULT_MAX_FRAME_LEN}",
            out.len()
        )));
    }
    Ok(out)
}

/// Decodes a value encoded by [`encode_value`]; the whole input must be
/// used.
///
/// # Errors
/// [`EncodingError::Malformed`] or [`EncodingError::TrailingBytes`]; never
/// panics.
pub fn decode_value<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, EncodingError> {
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| EncodingError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(EncodingError::TrailingBytes {
            extra: bytes.len() - used,
        });
    }
    Ok(value)
}

/// serde helper: a `[u8; 64]` as 64 raw bytes (a tuple), without a length.
pub mod fixed64 {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    /// Serializes 64 bytes as a 64-tuple.
    pub fn serialize<S: Serializer>(bytes: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(64)?;
        for b in bytes {
            t.serialize_element(b)?;
        }
        t.end()
    }

    struct V;

    impl<'de> Visitor<'de> for V {
        type Value = [u8; 64];

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("64 bytes")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 64], A::Error> {
            let mut out = [0u8; 64];
            for (i, slot) in out.iter_mut().enumerate() {
                *slot = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(i, &self))?;
            }
            Ok(out)
        }
    }

    /// Deserializes a 64-tuple of bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        d.deserialize_tuple(64, V)
    }
}

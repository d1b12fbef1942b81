//! The message codec: the one module that knows bincode.
//!
//! # Encoding
//! bincode 2.0 in serde mode with `standard()` configuration changed to
//! **little-endian, fixed-width integers** and a size limit of
//! [`DEFAULT_MAX_FRAME_LEN`]:
//! - `u8/u16/u32/u64`: 1/2/4/8 bytes little-endian; `bool`: one byte 0 or 1;
//! - enum: variant index as `u32`, then the variant's fields in order;
//! - struct and tuple: fields in declaration order, no header;
//! - `[u8; N]` (N ≤ 32) and the 64-byte signatures: N raw bytes;
//! - `Vec<T>`, `String`, byte strings: length as `u64`, then the elements;
//! - `Option<T>`: one byte 0 (None) or 1 followed by `T`.
//!
//! One frame holds exactly one message: trailing bytes are an error.
//!
//! # Limits
//! The same limits apply in both directions: [`decode_message`] refuses a
//! message whose fields exceed their protocol limits or that is larger than
//! [`DEFAULT_MAX_FRAME_LEN`], and [`encode_message`] refuses to encode one, so
//! this node never sends a message its peer must reject. (bincode's
//! `with_limit` is only enforced when decoding, hence the explicit checks.)

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::envelope::Envelope;
use super::message::{Message, MESSAGE_VARIANT_COUNT};
use crate::constants::{
    DEFAULT_MAX_FRAME_LEN, MAX_BLOCKS_PER_RESPONSE, MAX_BLOCKS_RESPONSE_BYTES,
    MAX_ENVELOPE_PAYLOAD_LEN, MAX_MEMPOOL_RESPONSE_BYTES, MAX_MEMPOOL_RESPONSE_TXS,
    MAX_NETWORK_NAME_LEN, MAX_PEER_ADDRESSES, MAX_USER_AGENT_LEN,
};
use crate::encoding::EncodingError;
use crate::transport::{FrameCodec, FrameError};

/// Largest `Disconnect::detail` accepted.
const MAX_DISCONNECT_DETAIL_LEN: usize = 256;

use crate::encoding::config;

/// Errors turning bytes into messages and back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The message index is not one this build knows.
    #[error("unknown message variant {tag}")]
    UnknownVariant {
        /// The index read from the wire.
        tag: u32,
    },
    /// The bytes do not decode as a message.
    #[error("undecodable message: {0}")]
    Malformed(String),
    /// The message decoded but left bytes over in its frame.
    #[error("{extra} trailing bytes after the message")]
    TrailingBytes {
        /// How many bytes were left.
        extra: usize,
    },
    /// A field is longer than its protocol limit.
    #[error("{field} has {len} entries or bytes, more than the limit of {max}")]
    LimitExceeded {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A message could not be encoded (its encoding is larger than
    /// [`DEFAULT_MAX_FRAME_LEN`]).
    #[error("message cannot be encoded: {0}")]
    Encode(String),
}

impl From<EncodingError> for CodecError {
    fn from(error: EncodingError) -> Self {
        match error {
            EncodingError::Malformed(e) => CodecError::Malformed(e),
            EncodingError::TrailingBytes { extra } => CodecError::TrailingBytes { extra },
            EncodingError::Encode(e) => CodecError::Encode(e),
        }
    }
}

impl CodecError {
    /// A short stable name of the error kind, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            CodecError::UnknownVariant { .. } => "unknown_variant",
            CodecError::Malformed(_) => "malformed",
            CodecError::TrailingBytes { .. } => "trailing_bytes",
            CodecError::LimitExceeded { .. } => "limit_exceeded",
            CodecError::Encode(_) => "encode",
        }
    }
}

/// Encodes `message` into `out` (cleared first), refusing what a peer's
/// [`decode_message`] would refuse.
///
/// # Errors
/// [`CodecError::LimitExceeded`] if a field is longer than its protocol
/// limit (checked before encoding); [`CodecError::Encode`] if the encoded
/// message is larger than [`DEFAULT_MAX_FRAME_LEN`] or cannot be encoded.
/// On error `out` is left empty.
pub fn encode_message_into(message: &Message, out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.clear();
    check_limits(message)?;
    encode_bounded(message, out, DEFAULT_MAX_FRAME_LEN)
}

/// Encodes `value` into `out` (empty) and refuses an encoding longer than
/// `max` bytes, leaving `out` empty on error.
fn encode_bounded<T: serde::Serialize>(
    value: &T,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), CodecError> {
    if let Err(e) = bincode::serde::encode_into_std_write(value, out, config()) {
        out.clear();
        return Err(CodecError::Encode(e.to_string()));
    }
    if out.len() > max {
        let len = out.len();
        out.clear();
        return Err(CodecError::Encode(format!(
            "message of {len} bytes exceeds the limit of {max} bytes"
        )));
    }
    Ok(())
}

/// Encodes `message` into a new buffer.
///
/// # Errors
/// See [`encode_message_into`].
pub fn encode_message(message: &Message) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_message_into(message, &mut out)?;
    Ok(out)
}

/// Encodes an envelope on its own (the bytes its id and signature cover).
pub fn encode_envelope(envelope: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(envelope.payload.len() + 128);
    // An envelope within the protocol limits always encodes.
    if bincode::serde::encode_into_std_write(envelope, &mut out, config()).is_err() {
        out.clear();
    }
    out
}

/// Decodes one message from a whole frame and checks its field limits.
///
/// # Errors
/// A [`CodecError`]; never panics, whatever the bytes.
pub fn decode_message(bytes: &[u8]) -> Result<Message, CodecError> {
    if bytes.len() >= 4 {
        let tag = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if tag >= MESSAGE_VARIANT_COUNT {
            return Err(CodecError::UnknownVariant { tag });
        }
    }
    let (message, used): (Message, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes {
            extra: bytes.len() - used,
        });
    }
    check_limits(&message)?;
    Ok(message)
}

fn limit(field: &'static str, len: usize, max: usize) -> Result<(), CodecError> {
    if len > max {
        Err(CodecError::LimitExceeded { field, len, max })
    } else {
        Ok(())
    }
}

fn check_limits(message: &Message) -> Result<(), CodecError> {
    match message {
        Message::Version(v) => {
            limit("version.user_agent", v.user_agent.len(), MAX_USER_AGENT_LEN)?;
            limit("version.network", v.network.len(), MAX_NETWORK_NAME_LEN)
        }
        Message::Disconnect(d) => limit(
            "disconnect.detail",
            d.detail.len(),
            MAX_DISCONNECT_DETAIL_LEN,
        ),
        Message::Gossip(e) => limit("gossip.payload", e.payload.len(), MAX_ENVELOPE_PAYLOAD_LEN),
        Message::Peers(p) => limit("peers", p.len(), MAX_PEER_ADDRESSES),
        Message::GetBlocks(g) => limit(
            "get_blocks.count",
            g.count as usize,
            MAX_BLOCKS_PER_RESPONSE,
        ),
        Message::Blocks(b) => {
            limit("blocks", b.blocks.len(), MAX_BLOCKS_PER_RESPONSE)?;
            let bytes = b.blocks.iter().map(|x| x.len()).sum::<usize>();
            // One block may exceed the budget on its own (it is sent alone).
            if b.blocks.len() > 1 {
                limit("blocks.bytes", bytes, MAX_BLOCKS_RESPONSE_BYTES)?;
            }
            Ok(())
        }
        Message::Mempool(txs) => {
            limit("mempool", txs.len(), MAX_MEMPOOL_RESPONSE_TXS)?;
            let bytes = txs.iter().map(|x| x.len()).sum::<usize>();
            limit("mempool.bytes", bytes, MAX_MEMPOOL_RESPONSE_BYTES)
        }
        Message::Ping(_) | Message::Pong(_) | Message::GetPeers | Message::GetMempool => Ok(()),
    }
}

/// Errors of the message codec over an encrypted connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The encrypted framing failed (including I/O errors).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame did not hold a valid message.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> Self {
        WireError::Frame(FrameError::Io(e))
    }
}

impl WireError {
    /// A short stable name of the error kind, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::Frame(e) => e.kind(),
            WireError::Codec(e) => e.kind(),
        }
    }
}

/// A tokio-util codec of [`Message`]s over encrypted frames.
#[derive(Debug)]
pub struct MessageCodec {
    frames: FrameCodec,
    scratch: Vec<u8>,
}

impl MessageCodec {
    /// Wraps a frame codec.
    pub fn new(frames: FrameCodec) -> Self {
        MessageCodec {
            frames,
            scratch: Vec::new(),
        }
    }

    /// The frame codec underneath.
    pub fn frames(&self) -> &FrameCodec {
        &self.frames
    }

    /// The frame codec underneath, mutably (to change the frame limit).
    pub fn frames_mut(&mut self) -> &mut FrameCodec {
        &mut self.frames
    }
}

impl Decoder for MessageCodec {
    type Item = Message;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        match self.frames.decode(src)? {
            Some(frame) => Ok(Some(decode_message(&frame)?)),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        match self.frames.decode_eof(src)? {
            Some(frame) => Ok(Some(decode_message(&frame)?)),
            None => Ok(None),
        }
    }
}

impl Encoder<&Message> for MessageCodec {
    type Error = WireError;

    fn encode(&mut self, message: &Message, dst: &mut BytesMut) -> Result<(), WireError> {
        encode_message_into(message, &mut self.scratch)?;
        Encoder::<&[u8]>::encode(&mut self.frames, &self.scratch, dst)?;
        Ok(())
    }
}

impl Encoder<Message> for MessageCodec {
    type Error = WireError;

    fn encode(&mut self, message: Message, dst: &mut BytesMut) -> Result<(), WireError> {
        Encoder::<&Message>::encode(self, &message, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::envelope::GossipKind;
    use crate::protocol::message::{Disconnect, DisconnectReason, Ping};
    use crate::protocol::VersionParams;

    fn peers(n: usize) -> Message {
        let record = Envelope {
            kind: GossipKind::Address,
            originator: [1; 32],
            timestamp_ms: 1,
            payload: vec![1, 0, 0, 0, 0, 0, 0, 0],
            signature: [2; 64],
        };
        Message::Peers(vec![record; n])
    }

    fn disconnect(detail_len: usize) -> Message {
        Message::Disconnect(Disconnect {
            reason: DisconnectReason::Shutdown,
            detail: "x".repeat(detail_len),
        })
    }

    fn gossip(payload_len: usize) -> Message {
        Message::Gossip(Envelope {
            kind: GossipKind::Block,
            originator: [1; 32],
            timestamp_ms: 1,
            payload: vec![0xab; payload_len],
            signature: [2; 64],
        })
    }

    fn version(user_agent_len: usize, network_len: usize) -> Message {
        let mut v = VersionParams::new(crate::params::Network::Devnet)
            .build(crate::crypto::NodeId([3; 32]), 0);
        v.user_agent = "u".repeat(user_agent_len);
        v.network = "n".repeat(network_len);
        Message::Version(v)
    }

    /// Messages exactly at a limit and one past it, with the field named.
    fn at_and_past_the_limits() -> Vec<(Message, Message, &'static str, usize)> {
        vec![
            (peers(1_000), peers(1_001), "peers", MAX_PEER_ADDRESSES),
            (
                disconnect(256),
                disconnect(257),
                "disconnect.detail",
                MAX_DISCONNECT_DETAIL_LEN,
            ),
            (
                gossip(MAX_ENVELOPE_PAYLOAD_LEN),
                gossip(MAX_ENVELOPE_PAYLOAD_LEN + 1),
                "gossip.payload",
                MAX_ENVELOPE_PAYLOAD_LEN,
            ),
            (
                version(MAX_USER_AGENT_LEN, 6),
                version(MAX_USER_AGENT_LEN + 1, 6),
                "version.user_agent",
                MAX_USER_AGENT_LEN,
            ),
            (
                version(13, MAX_NETWORK_NAME_LEN),
                version(13, MAX_NETWORK_NAME_LEN + 1),
                "version.network",
                MAX_NETWORK_NAME_LEN,
            ),
        ]
    }

    #[test]
    fn field_limits_are_enforced_when_encoding() {
        for (at, past, field, max) in at_and_past_the_limits() {
            let bytes = encode_message(&at).unwrap();
            assert_eq!(decode_message(&bytes).unwrap(), at, "{field}");
            let mut out = vec![1, 2, 3];
            assert_eq!(
                encode_message_into(&past, &mut out),
                Err(CodecError::LimitExceeded {
                    field,
                    len: max + 1,
                    max
                })
            );
            assert!(out.is_empty(), "{field}");
        }
    }

    #[test]
    fn encoded_size_is_bounded() {
        let message = Message::Ping(Ping {
            nonce: 1,
            timestamp_ms: 2,
        });
        let mut out = Vec::new();
        encode_bounded(&message, &mut out, 20).unwrap();
        assert_eq!(out.len(), 20);
        out.clear();
        let err = encode_bounded(&message, &mut out, 19).unwrap_err();
        assert_eq!(err.kind(), "encode");
        assert!(
            err.to_string().contains("20 bytes exceeds the limit of 19"),
            "{err}"
        );
        assert!(out.is_empty());
        // Within the field limits every message fits the frame limit, so the
        // largest legal messages encode.
        let largest = gossip(MAX_ENVELOPE_PAYLOAD_LEN);
        assert!(encode_message(&largest).unwrap().len() <= DEFAULT_MAX_FRAME_LEN);
    }

    #[tokio::test]
    async fn message_codec_sends_nothing_over_the_limits() {
        let (a, _) = crate::transport::frame::tests::session_pair().await;
        let mut codec = MessageCodec::new(FrameCodec::new(
            a,
            DEFAULT_MAX_FRAME_LEN,
            crate::transport::RekeyPolicy::default(),
        ));
        let mut dst = BytesMut::new();
        let err = Encoder::<&Message>::encode(&mut codec, &peers(1_001), &mut dst).unwrap_err();
        assert_eq!(err.kind(), "limit_exceeded");
        assert!(dst.is_empty());
        Encoder::<&Message>::encode(&mut codec, &peers(1_000), &mut dst).unwrap();
        assert!(!dst.is_empty());
    }
}

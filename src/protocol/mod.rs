//! The wire protocol above the encrypted frames: messages, their codec, the
//! version handshake rules and signed envelopes.

pub mod codec;
pub mod envelope;
pub mod message;
pub mod record;
pub mod version;

pub use codec::{decode_message, encode_message, CodecError, MessageCodec, WireError};
pub use envelope::{verify_batch, Envelope, EnvelopeError, GossipKind, MessageId, Verified};
pub use message::{
    Disconnect, DisconnectReason, Message, PeerAddress, Ping, Pong, Version, MESSAGE_VARIANT_COUNT,
};
pub use version::{VersionError, VersionParams};

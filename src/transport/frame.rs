//! Encrypted, length-prefixed frames over a Noise transport session.
//!
//! # Wire layout
//! After the handshake the byte stream is a sequence of Noise transport
//! messages, each `len:u16 (big-endian) || ciphertext[len]` with
//! `17 <= len <= 65535` (the 16-byte tag and at least the record's type byte;
//! a shorter `len` is refused as soon as it is read). Each decrypts to one
//! *record* of `len - 16` bytes:
//!
//! ```text
//! 0x01 FRAME_START  frame_len:u32 (big-endian) || chunk
//! 0x02 FRAME_CONT   chunk
//! 0x03 REKEY        (empty)
//! ```
//!
//! A frame of `frame_len` bytes is carried by one `FRAME_START` record and as
//! many `FRAME_CONT` records as needed; their chunks add up to exactly
//! `frame_len` bytes and no other record (except `REKEY`) may interleave.
//! `frame_len` must be between 1 and the receiver's limit; a larger one is
//! refused before any buffer is allocated for it. A sender emits `REKEY` and
//! then rotates its sending key (Noise `Rekey()`); the receiver rotates its
//! receiving key after decrypting it. Each side chooses when to rekey its own
//! direction (after a configured number of messages or bytes), so the two
//! sides never need to agree on a policy.
//!
//! # Security
//! Noise nonces are implicit counters: a replayed, reordered, dropped or
//! altered ciphertext fails authentication, and the connection is closed.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::constants::{
    DEFAULT_REKEY_AFTER_BYTES, DEFAULT_REKEY_AFTER_MESSAGES, MAX_NOISE_MESSAGE_LEN,
    MAX_NOISE_PLAINTEXT_LEN, NOISE_TAG_LEN,
};

/// Record type: first record of a frame.
pub const RECORD_FRAME_START: u8 = 0x01;
/// Record type: continuation of a frame.
pub const RECORD_FRAME_CONT: u8 = 0x02;
/// Record type: the sender rotates its sending key after this record.
pub const RECORD_REKEY: u8 = 0x03;

/// Shortest valid Noise transport message: the tag and a record type byte.
pub const MIN_NOISE_MESSAGE_LEN: usize = NOISE_TAG_LEN + 1;

/// Largest chunk in a `FRAME_START` record.
const MAX_START_CHUNK: usize = MAX_NOISE_PLAINTEXT_LEN - 5;
/// Largest chunk in a `FRAME_CONT` record.
const MAX_CONT_CHUNK: usize = MAX_NOISE_PLAINTEXT_LEN - 1;

/// When the sender rotates its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RekeyPolicy {
    /// Rotate after this many Noise messages sent under one key.
    pub after_messages: u64,
    /// Rotate after this many plaintext bytes sent under one key.
    pub after_bytes: u64,
}

impl Default for RekeyPolicy {
    fn default() -> Self {
        RekeyPolicy {
            after_messages: DEFAULT_REKEY_AFTER_MESSAGES,
            after_bytes: DEFAULT_REKEY_AFTER_BYTES,
        }
    }
}

/// Errors reading or writing encrypted frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A Noise message failed authentication: flipped bits, a replayed or
    /// reordered ciphertext, or a key mismatch.
    #[error("ciphertext failed authentication (tampered, replayed or reordered)")]
    Decrypt,
    /// A Noise message shorter than its tag plus the record type byte
    /// (17 bytes), so it cannot hold a record.
    #[error(
        "noise message of {len} bytes is shorter than the 16-byte tag plus the 1-byte record type"
    )]
    ShortMessage {
        /// The announced length.
        len: usize,
    },
    /// A frame longer than the receiver's limit was announced.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced frame length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The records do not form frames: an unknown record type, a zero length,
    /// a continuation without a start, a start inside a frame, or chunks that
    /// do not add up to the announced length.
    #[error("framing violation: {0}")]
    Framing(&'static str),
    /// The peer closed the connection in the middle of a Noise message or
    /// of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// Encryption failed (only if a Noise nonce is exhausted).
    #[error("encryption failed: {0}")]
    Encrypt(snow::Error),
}

impl FrameError {
    /// A short stable name of the error kind, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::Io(_) => "io",
            FrameError::Decrypt => "decrypt",
            FrameError::ShortMessage { .. } => "short_message",
            FrameError::TooLarge { .. } => "frame_too_large",
            FrameError::Framing(_) => "framing",
            FrameError::Truncated => "truncated",
            FrameError::Encrypt(_) => "encrypt",
        }
    }
}

struct PartialFrame {
    expected: usize,
    buf: BytesMut,
}

/// A tokio-util codec of encrypted frames over a Noise transport session.
///
/// Decodes to whole frames (`BytesMut`), encodes any byte slice as one frame.
pub struct FrameCodec {
    noise: snow::TransportState,
    max_frame_len: usize,
    rekey: RekeyPolicy,
    sent_messages: u64,
    sent_bytes: u64,
    partial: Option<PartialFrame>,
    scratch: Box<[u8]>,
    record: Box<[u8]>,
    rekeys_sent: u64,
    rekeys_received: u64,
}

impl std::fmt::Debug for FrameCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCodec")
            .field("max_frame_len", &self.max_frame_len)
            .field("rekey", &self.rekey)
            .field("rekeys_sent", &self.rekeys_sent)
            .field("rekeys_received", &self.rekeys_received)
            .finish_non_exhaustive()
    }
}

impl FrameCodec {
    /// Wraps a Noise transport session.
    pub fn new(noise: snow::TransportState, max_frame_len: usize, rekey: RekeyPolicy) -> Self {
        FrameCodec {
            noise,
            max_frame_len,
            rekey,
            sent_messages: 0,
            sent_bytes: 0,
            partial: None,
            scratch: vec![0u8; MAX_NOISE_MESSAGE_LEN].into_boxed_slice(),
            record: vec![0u8; MAX_NOISE_PLAINTEXT_LEN].into_boxed_slice(),
            rekeys_sent: 0,
            rekeys_received: 0,
        }
    }

    /// The current frame length limit.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Changes the frame length limit (raised once the version handshake
    /// is done).
    pub fn set_max_frame_len(&mut self, max: usize) {
        self.max_frame_len = max;
    }

    /// How many times this side rotated its sending key.
    pub fn rekeys_sent(&self) -> u64 {
        self.rekeys_sent
    }

    /// How many times the peer rotated its sending key.
    pub fn rekeys_received(&self) -> u64 {
        self.rekeys_received
    }

    /// Raw access to the Noise session, for tools and tests that must craft
    /// records by hand (see `tests/bad_input.rs`). Writing through it without
    /// [`FrameCodec::write_record`] desynchronises the rekey accounting.
    pub fn noise_mut(&mut self) -> &mut snow::TransportState {
        &mut self.noise
    }

    /// Encrypts one record (`record_type || body`) into `dst` and applies
    /// the rekey policy.
    ///
    /// # Errors
    /// [`FrameError::Encrypt`] if Noise refuses to encrypt.
    pub fn write_record(
        &mut self,
        record_type: u8,
        header: &[u8],
        body: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        self.seal(record_type, header, body, dst)?;
        self.sent_messages += 1;
        self.sent_bytes += (1 + header.len() + body.len()) as u64;
        if self.sent_messages >= self.rekey.after_messages
            || self.sent_bytes >= self.rekey.after_bytes
        {
            self.seal(RECORD_REKEY, &[], &[], dst)?;
            self.noise.rekey_outgoing();
            self.sent_messages = 0;
            self.sent_bytes = 0;
            self.rekeys_sent += 1;
        }
        Ok(())
    }

    fn seal(
        &mut self,
        record_type: u8,
        header: &[u8],
        body: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let plain_len = 1 + header.len() + body.len();
        debug_assert!(plain_len <= MAX_NOISE_PLAINTEXT_LEN);
        self.record[0] = record_type;
        self.record[1..1 + header.len()].copy_from_slice(header);
        self.record[1 + header.len()..plain_len].copy_from_slice(body);
        let cipher_len = plain_len + NOISE_TAG_LEN;
        dst.reserve(2 + cipher_len);
        // cipher_len <= 65535 by construction.
        dst.put_u16(cipher_len as u16);
        let start = dst.len();
        dst.resize(start + cipher_len, 0);
        let n = self
            .noise
            .write_message(&self.record[..plain_len], &mut dst[start..])
            .map_err(FrameError::Encrypt)?;
        debug_assert_eq!(n, cipher_len);
        Ok(())
    }

    /// Handles one decrypted record; returns a frame when one completes.
    fn on_record(&mut self, plain_len: usize) -> Result<Option<BytesMut>, FrameError> {
        let record = &self.scratch[..plain_len];
        let (&record_type, body) = record
            .split_first()
            .ok_or(FrameError::Framing("empty record"))?;
        match record_type {
            RECORD_REKEY => {
                if !body.is_empty() {
                    return Err(FrameError::Framing("REKEY record with a body"));
                }
                self.noise.rekey_incoming();
                self.rekeys_received += 1;
                Ok(None)
            }
            RECORD_FRAME_START => {
                if self.partial.is_some() {
                    return Err(FrameError::Framing("FRAME_START inside a frame"));
                }
                if body.len() < 4 {
                    return Err(FrameError::Framing("FRAME_START without a length"));
                }
                let (len, chunk) = body.split_at(4);
                let expected = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                if expected == 0 {
                    return Err(FrameError::Framing("zero-length frame"));
                }
                if expected > self.max_frame_len {
                    return Err(FrameError::TooLarge {
                        len: expected,
                        max: self.max_frame_len,
                    });
                }
                if chunk.len() > expected {
                    return Err(FrameError::Framing("chunk longer than the announced frame"));
                }
                // Grow with the data actually received, not with the claim.
                let mut buf = BytesMut::with_capacity(expected.min(MAX_NOISE_PLAINTEXT_LEN));
                buf.extend_from_slice(chunk);
                self.partial = Some(PartialFrame { expected, buf });
                self.complete()
            }
            RECORD_FRAME_CONT => {
                let partial = self
                    .partial
                    .as_mut()
                    .ok_or(FrameError::Framing("FRAME_CONT outside a frame"))?;
                if partial.buf.len() + body.len() > partial.expected {
                    return Err(FrameError::Framing("chunk longer than the announced frame"));
                }
                if body.is_empty() {
                    return Err(FrameError::Framing("empty FRAME_CONT"));
                }
                partial.buf.extend_from_slice(body);
                self.complete()
            }
            _ => Err(FrameError::Framing("unknown record type")),
        }
    }

    fn complete(&mut self) -> Result<Option<BytesMut>, FrameError> {
        match &self.partial {
            Some(p) if p.buf.len() == p.expected => Ok(self.partial.take().map(|p| p.buf)),
            _ => Ok(None),
        }
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        loop {
            if src.len() < 2 {
                return Ok(None);
            }
            let len = usize::from(u16::from_be_bytes([src[0], src[1]]));
            if len < MIN_NOISE_MESSAGE_LEN {
                return Err(FrameError::ShortMessage { len });
            }
            if src.len() < 2 + len {
                src.reserve(2 + len - src.len());
                return Ok(None);
            }
            src.advance(2);
            let message = src.split_to(len);
            let n = self
                .noise
                .read_message(&message, &mut self.scratch)
                .map_err(|_| FrameError::Decrypt)?;
            if let Some(frame) = self.on_record(n)? {
                return Ok(Some(frame));
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() && self.partial.is_none() => Ok(None),
            None => Err(FrameError::Truncated),
        }
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        if frame.is_empty() {
            return Err(FrameError::Framing("zero-length frame"));
        }
        if frame.len() > u32::MAX as usize {
            return Err(FrameError::TooLarge {
                len: frame.len(),
                max: u32::MAX as usize,
            });
        }
        let first = frame.len().min(MAX_START_CHUNK);
        let len = (frame.len() as u32).to_be_bytes();
        // Reserve once for the whole frame: header and tag per record.
        let records = 1 + (frame.len() - first).div_ceil(MAX_CONT_CHUNK);
        dst.reserve(frame.len() + records * (2 + 1 + NOISE_TAG_LEN) + 4);
        self.write_record(RECORD_FRAME_START, &len, &frame[..first], dst)?;
        for chunk in frame[first..].chunks(MAX_CONT_CHUNK) {
            self.write_record(RECORD_FRAME_CONT, &[], chunk, dst)?;
        }
        Ok(())
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        Encoder::<&[u8]>::encode(self, &frame, dst)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::constants::DEFAULT_MAX_FRAME_LEN;
    use crate::crypto::NodeIdentity;
    use crate::transport::noise::{handshake, CryptoBackend, LocalKeys};

    /// A connected pair of Noise transport sessions (initiator, responder).
    pub(crate) async fn session_pair() -> (snow::TransportState, snow::TransportState) {
        let a = LocalKeys::new(&NodeIdentity::generate(), CryptoBackend::Ring).unwrap();
        let b = LocalKeys::new(&NodeIdentity::generate(), CryptoBackend::RustCrypto).unwrap();
        let (mut x, mut y) = tokio::io::duplex(4096);
        let (ra, rb) = tokio::join!(
            handshake(&mut x, &a, *b"TDEV", true, None),
            handshake(&mut y, &b, *b"TDEV", false, None)
        );
        (ra.unwrap().0, rb.unwrap().0)
    }

    async fn codecs(rekey: RekeyPolicy, max: usize) -> (FrameCodec, FrameCodec) {
        let (a, b) = session_pair().await;
        (
            FrameCodec::new(a, max, rekey),
            FrameCodec::new(b, max, rekey),
        )
    }

    #[tokio::test]
    async fn frames_of_many_sizes_round_trip() {
        let (mut tx, mut rx) = codecs(RekeyPolicy::default(), DEFAULT_MAX_FRAME_LEN).await;
        let sizes = [
            1usize,
            100,
            MAX_START_CHUNK,
            MAX_START_CHUNK + 1,
            65_535,
            200_000,
            1 << 20,
        ];
        let mut wire = BytesMut::new();
        for &size in &sizes {
            let frame: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            Encoder::<&[u8]>::encode(&mut tx, &frame, &mut wire).unwrap();
        }
        for &size in &sizes {
            let got = rx.decode(&mut wire).unwrap().unwrap();
            assert_eq!(got.len(), size);
            assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        }
        assert!(rx.decode(&mut wire).unwrap().is_none());
    }

    #[tokio::test]
    async fn rekey_by_messages_and_bytes_both_directions() {
        let policy = RekeyPolicy {
            after_messages: 3,
            after_bytes: u64::MAX,
        };
        let (mut a, mut b) = codecs(policy, DEFAULT_MAX_FRAME_LEN).await;
        let (mut ab, mut ba) = (BytesMut::new(), BytesMut::new());
        for round in 0..10u8 {
            Encoder::<&[u8]>::encode(&mut a, &[round; 10], &mut ab).unwrap();
            assert_eq!(&b.decode(&mut ab).unwrap().unwrap()[..], &[round; 10]);
            Encoder::<&[u8]>::encode(&mut b, &[round; 20], &mut ba).unwrap();
            assert_eq!(&a.decode(&mut ba).unwrap().unwrap()[..], &[round; 20]);
        }
        // Trailing REKEY records are consumed by the next decode.
        assert!(b.decode(&mut ab).unwrap().is_none());
        assert!(a.decode(&mut ba).unwrap().is_none());
        assert_eq!(a.rekeys_sent(), 3);
        assert_eq!(b.rekeys_received(), 3);
        assert_eq!(b.rekeys_sent(), 3);
        assert_eq!(a.rekeys_received(), 3);

        let policy = RekeyPolicy {
            after_messages: u64::MAX,
            after_bytes: 100_000,
        };
        let (mut a, mut b) = codecs(policy, DEFAULT_MAX_FRAME_LEN).await;
        let mut wire = BytesMut::new();
        Encoder::<&[u8]>::encode(&mut a, &vec![7u8; 1_000_000], &mut wire).unwrap();
        assert_eq!(b.decode(&mut wire).unwrap().unwrap().len(), 1_000_000);
        // 16 records of ~64 KiB: a rekey after every second one.
        assert_eq!(a.rekeys_sent(), 7);
        assert_eq!(a.rekeys_sent(), b.rekeys_received());
    }

    #[tokio::test]
    async fn a_receiver_that_ignores_rekey_cannot_read_on() {
        let policy = RekeyPolicy {
            after_messages: 1,
            after_bytes: u64::MAX,
        };
        let (mut a, mut b) = codecs(policy, DEFAULT_MAX_FRAME_LEN).await;
        let mut wire = BytesMut::new();
        Encoder::<&[u8]>::encode(&mut a, b"one", &mut wire).unwrap();
        Encoder::<&[u8]>::encode(&mut a, b"two", &mut wire).unwrap();
        // Decrypt the first data record and skip the REKEY record by hand:
        // the second frame must then fail, proving the key really changed.
        let n = wire.get_u16() as usize;
        let msg = wire.split_to(n);
        let mut out = [0u8; 128];
        b.noise_mut().read_message(&msg, &mut out).unwrap();
        let n = wire.get_u16() as usize;
        let msg = wire.split_to(n);
        b.noise_mut().read_message(&msg, &mut out).unwrap();
        assert!(matches!(b.decode(&mut wire), Err(FrameError::Decrypt)));
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_at_its_header() {
        let (mut a, mut b) = codecs(RekeyPolicy::default(), 1000).await;
        a.set_max_frame_len(usize::MAX);
        let mut wire = BytesMut::new();
        Encoder::<&[u8]>::encode(&mut a, &vec![1u8; 1001], &mut wire).unwrap();
        assert!(matches!(
            b.decode(&mut wire),
            Err(FrameError::TooLarge {
                len: 1001,
                max: 1000
            })
        ));
    }

    #[tokio::test]
    async fn framing_violations_are_typed() {
        let (mut a, mut b) = codecs(RekeyPolicy::default(), 1000).await;
        let mut wire = BytesMut::new();
        a.write_record(RECORD_FRAME_CONT, &[], b"orphan", &mut wire)
            .unwrap();
        assert!(matches!(b.decode(&mut wire), Err(FrameError::Framing(_))));

        let (mut a, mut b) = codecs(RekeyPolicy::default(), 1000).await;
        let mut wire = BytesMut::new();
        a.write_record(
            RECORD_FRAME_START,
            &100u32.to_be_bytes(),
            b"short",
            &mut wire,
        )
        .unwrap();
        a.write_record(RECORD_FRAME_START, &5u32.to_be_bytes(), b"again", &mut wire)
            .unwrap();
        assert!(matches!(b.decode(&mut wire), Err(FrameError::Framing(_))));

        let (mut a, mut b) = codecs(RekeyPolicy::default(), 1000).await;
        let mut wire = BytesMut::new();
        a.write_record(0x7f, &[], b"?", &mut wire).unwrap();
        assert!(matches!(b.decode(&mut wire), Err(FrameError::Framing(_))));

        let (_, mut b) = codecs(RekeyPolicy::default(), 1000).await;
        let mut wire = BytesMut::from(&[0u8, 3, 1, 2, 3][..]);
        assert!(matches!(
            b.decode(&mut wire),
            Err(FrameError::ShortMessage { len: 3 })
        ));
        // A bare tag (16 bytes) cannot hold a record: refused from its length
        // prefix alone. 17 is the shortest length that waits for its bytes.
        let (_, mut b) = codecs(RekeyPolicy::default(), 1000).await;
        let mut wire = BytesMut::from(&[0u8, 16][..]);
        let err = b.decode(&mut wire).unwrap_err();
        assert!(matches!(err, FrameError::ShortMessage { len: 16 }));
        assert!(err.to_string().contains("tag plus the 1-byte record type"));
        let mut wire = BytesMut::from(&[0u8, 17][..]);
        assert!(b.decode(&mut wire).unwrap().is_none());
    }

    #[tokio::test]
    async fn tampered_and_replayed_ciphertexts_fail() {
        let (mut a, mut b) = codecs(RekeyPolicy::default(), 1000).await;
        let mut wire = BytesMut::new();
        Encoder::<&[u8]>::encode(&mut a, b"ping", &mut wire).unwrap();
        let copy = wire.clone();
        assert_eq!(&b.decode(&mut wire).unwrap().unwrap()[..], b"ping");
        let mut replay = copy.clone();
        assert!(matches!(b.decode(&mut replay), Err(FrameError::Decrypt)));

        let (mut a, mut b) = codecs(RekeyPolicy::default(), 1000).await;
        let mut wire = BytesMut::new();
        Encoder::<&[u8]>::encode(&mut a, b"ping", &mut wire).unwrap();
        wire[5] ^= 0x01;
        assert!(matches!(b.decode(&mut wire), Err(FrameError::Decrypt)));
    }
}

//! The Noise XX handshake with the ed25519 identity bound to the Noise static
//! key.
//!
//! # Protocol
//! `Noise_XX_25519_ChaChaPoly_SHA256`, prologue
//! `"timed/noise/1" || network_magic[4]`. Every handshake message travels as a
//! 2-byte big-endian length followed by the Noise message. Message 1 (`-> e`)
//! carries no payload; message 2 (`<- e, ee, s, es`) carries the responder's
//! identity payload and message 3 (`-> s, se`) the initiator's. The identity
//! payload is 97 bytes:
//!
//! ```text
//! version:u8 (=1) || ed25519_public_key[32] || ed25519_signature[64]
//! ```
//!
//! where the signature is over
//! `"timed/noise-static-key/1:" || x25519_static_public_key[32]`.
//!
//! # Security
//! The peer's static key is authenticated by Noise; the signature binds it to
//! the ed25519 identity, so the remote node id is authenticated once the
//! handshake completes. An initiator that expected a node id checks it after
//! message 2, before it reveals its own identity in message 3. A handshake
//! with oneself is refused on both sides.

use std::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::constants::{
    HANDSHAKE_PAYLOAD_VERSION, IDENTITY_SIGNATURE_DOMAIN, MAX_HANDSHAKE_MESSAGE_LEN,
    MAX_NOISE_MESSAGE_LEN, NOISE_PROLOGUE_PREFIX, NOISE_PROTOCOL_NAME,
};
use crate::crypto::{NodeId, NodeIdentity};

/// Length of the identity payload carried in handshake messages 2 and 3.
pub const IDENTITY_PAYLOAD_LEN: usize = 1 + 32 + 64;

/// Which crypto implementation snow uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CryptoBackend {
    /// ring's assembly ChaCha20-Poly1305 and SHA-256, with snow's RustCrypto
    /// X25519 (ring has no static-key X25519). Faster: see `benches/transport.rs`.
    #[default]
    Ring,
    /// snow's pure-Rust default resolver (RustCrypto crates).
    RustCrypto,
}

impl CryptoBackend {
    fn resolver(self) -> snow::resolvers::BoxedCryptoResolver {
        use snow::resolvers::{DefaultResolver, FallbackResolver, RingResolver};
        match self {
            CryptoBackend::Ring => Box::new(FallbackResolver::new(
                Box::new(RingResolver),
                Box::new(DefaultResolver),
            )),
            CryptoBackend::RustCrypto => Box::new(DefaultResolver),
        }
    }

    fn builder<'a>(self) -> snow::Builder<'a> {
        snow::Builder::with_resolver(noise_params(), self.resolver())
    }
}

fn noise_params() -> snow::params::NoiseParams {
    // The constant is a valid Noise protocol name; a unit test pins it.
    NOISE_PROTOCOL_NAME
        .parse()
        .unwrap_or_else(|_| unreachable!("NOISE_PROTOCOL_NAME is a valid Noise name"))
}

/// The Noise prologue for a network: `"timed/noise/1" || magic`.
pub fn prologue(magic: [u8; 4]) -> Vec<u8> {
    let mut p = Vec::with_capacity(NOISE_PROLOGUE_PREFIX.len() + 4);
    p.extend_from_slice(NOISE_PROLOGUE_PREFIX);
    p.extend_from_slice(&magic);
    p
}

/// The bytes the identity key signs: the domain string and the Noise static
/// public key.
pub fn identity_signed_bytes(noise_static_public: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(IDENTITY_SIGNATURE_DOMAIN.len() + noise_static_public.len());
    m.extend_from_slice(IDENTITY_SIGNATURE_DOMAIN);
    m.extend_from_slice(noise_static_public);
    m
}

/// The local Noise static key and the identity payload that vouches for it.
///
/// Created once per process: the static key is ephemeral to the process, the
/// identity key that signs it is long-lived.
pub struct LocalKeys {
    static_private: Zeroizing<Vec<u8>>,
    static_public: Vec<u8>,
    payload: [u8; IDENTITY_PAYLOAD_LEN],
    node_id: NodeId,
    backend: CryptoBackend,
}

impl fmt::Debug for LocalKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeys")
            .field("node_id", &self.node_id)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl LocalKeys {
    /// Generates a Noise static key pair and signs it with `identity`.
    ///
    /// # Errors
    /// Only if the crypto backend cannot generate a key pair.
    pub fn new(identity: &NodeIdentity, backend: CryptoBackend) -> Result<Self, HandshakeError> {
        let keypair = backend.builder().generate_keypair()?;
        let static_private = Zeroizing::new(keypair.private);
        let signature = identity.sign(&identity_signed_bytes(&keypair.public));
        let mut payload = [0u8; IDENTITY_PAYLOAD_LEN];
        payload[0] = HANDSHAKE_PAYLOAD_VERSION;
        payload[1..33].copy_from_slice(identity.public_key().as_bytes());
        payload[33..].copy_from_slice(&signature.to_bytes());
        Ok(LocalKeys {
            static_private,
            static_public: keypair.public,
            payload,
            node_id: identity.node_id(),
            backend,
        })
    }

    /// The local node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The crypto backend.
    pub fn backend(&self) -> CryptoBackend {
        self.backend
    }

    /// The Noise static public key.
    pub fn static_public(&self) -> &[u8] {
        &self.static_public
    }

    fn handshake_state(
        &self,
        magic: [u8; 4],
        initiator: bool,
    ) -> Result<snow::HandshakeState, HandshakeError> {
        let prologue = prologue(magic);
        let builder = self
            .backend
            .builder()
            .local_private_key(&self.static_private)?
            .prologue(&prologue)?;
        Ok(if initiator {
            builder.build_initiator()?
        } else {
            builder.build_responder()?
        })
    }
}

/// The authenticated identity of the remote side of a Noise session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteIdentity {
    /// The node id derived from `public_key`.
    pub node_id: NodeId,
    /// The remote ed25519 identity key.
    pub public_key: VerifyingKey,
}

/// Errors of the Noise handshake.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed.
    #[error("i/o error during noise handshake: {0}")]
    Io(#[source] std::io::Error),
    /// The peer closed the connection in the middle of the handshake.
    #[error("connection closed during noise handshake (truncated handshake)")]
    Truncated,
    /// A handshake message longer than the limit was announced.
    #[error("noise handshake message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Noise rejected a message: the peer uses another prologue (network
    /// magic or protocol), or the bytes were corrupted.
    #[error(
        "noise handshake message rejected (wrong network magic or prologue, or corrupted): {0}"
    )]
    Noise(#[from] snow::Error),
    /// The identity payload has the wrong length or version.
    #[error("malformed identity payload: {0}")]
    BadPayload(&'static str),
    /// The identity key in the payload is not a valid or is a weak ed25519 key.
    #[error("invalid identity public key")]
    InvalidIdentityKey,
    /// The identity signature over the Noise static key does not verify.
    #[error("identity signature over the noise static key does not verify (forged identity)")]
    ForgedIdentity,
    /// The dialed peer authenticated as another node id than the one expected.
    #[error("dialed node id {expected} but the peer is {actual}")]
    UnexpectedNodeId {
        /// The id we dialed.
        expected: NodeId,
        /// The id the peer proved.
        actual: NodeId,
    },
    /// The remote node id is our own.
    #[error("connection to self refused")]
    SelfConnection,
}

impl HandshakeError {
    /// A short stable name of the error kind, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            HandshakeError::Io(_) => "io",
            HandshakeError::Truncated => "truncated",
            HandshakeError::MessageTooLarge { .. } => "message_too_large",
            HandshakeError::Noise(_) => "noise_rejected",
            HandshakeError::BadPayload(_) => "bad_payload",
            HandshakeError::InvalidIdentityKey => "invalid_identity_key",
            HandshakeError::ForgedIdentity => "forged_identity",
            HandshakeError::UnexpectedNodeId { .. } => "unexpected_node_id",
            HandshakeError::SelfConnection => "self_connection",
        }
    }
}

fn io_error(e: std::io::Error) -> HandshakeError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        HandshakeError::Truncated
    } else {
        HandshakeError::Io(e)
    }
}

/// Writes one length-prefixed handshake message.
async fn write_handshake_message<S: AsyncWrite + Unpin>(
    io: &mut S,
    message: &[u8],
) -> Result<(), HandshakeError> {
    let mut out = Vec::with_capacity(2 + message.len());
    // Handshake messages are at most a few hundred bytes: the cast is exact.
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    io.write_all(&out).await.map_err(io_error)?;
    io.flush().await.map_err(io_error)
}

/// Reads one length-prefixed handshake message into `buf`, refusing lengths
/// above [`MAX_HANDSHAKE_MESSAGE_LEN`] before reading them.
async fn read_handshake_message<'b, S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &'b mut [u8; MAX_HANDSHAKE_MESSAGE_LEN],
) -> Result<&'b [u8], HandshakeError> {
    let mut len = [0u8; 2];
    io.read_exact(&mut len).await.map_err(io_error)?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_HANDSHAKE_MESSAGE_LEN {
        return Err(HandshakeError::MessageTooLarge {
            len,
            max: MAX_HANDSHAKE_MESSAGE_LEN,
        });
    }
    io.read_exact(&mut buf[..len]).await.map_err(io_error)?;
    Ok(&buf[..len])
}

/// Checks a received identity payload against the authenticated remote
/// Noise static key.
fn verify_identity_payload(
    payload: &[u8],
    remote_static: Option<&[u8]>,
) -> Result<RemoteIdentity, HandshakeError> {
    if payload.len() != IDENTITY_PAYLOAD_LEN {
        return Err(HandshakeError::BadPayload(
            "identity payload must be 97 bytes",
        ));
    }
    if payload[0] != HANDSHAKE_PAYLOAD_VERSION {
        return Err(HandshakeError::BadPayload(
            "unknown identity payload version",
        ));
    }
    let remote_static = remote_static.ok_or(HandshakeError::BadPayload("no remote static key"))?;
    let mut key = [0u8; 32];
    key.copy_from_slice(&payload[1..33]);
    let public_key =
        VerifyingKey::from_bytes(&key).map_err(|_| HandshakeError::InvalidIdentityKey)?;
    if public_key.is_weak() {
        return Err(HandshakeError::InvalidIdentityKey);
    }
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&payload[33..]);
    let signature = Signature::from_bytes(&sig);
    public_key
        .verify_strict(&identity_signed_bytes(remote_static), &signature)
        .map_err(|_| HandshakeError::ForgedIdentity)?;
    Ok(RemoteIdentity {
        node_id: NodeId::from_public_key(&public_key),
        public_key,
    })
}

/// Runs the Noise XX handshake over `io`.
///
/// `expected` is the node id a dialer expects (if any). The caller applies
/// the handshake deadline (see `peer::handshake`).
///
/// # Errors
/// A [`HandshakeError`] naming the failed step; the caller closes the
/// connection.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    keys: &LocalKeys,
    magic: [u8; 4],
    initiator: bool,
    expected: Option<NodeId>,
) -> Result<(snow::TransportState, RemoteIdentity), HandshakeError> {
    let mut state = keys.handshake_state(magic, initiator)?;
    let mut inbuf = [0u8; MAX_HANDSHAKE_MESSAGE_LEN];
    let mut outbuf = [0u8; MAX_HANDSHAKE_MESSAGE_LEN];
    let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE_LEN];
    let remote;
    if initiator {
        // -> e
        let n = state.write_message(&[], &mut outbuf)?;
        write_handshake_message(io, &outbuf[..n]).await?;
        // <- e, ee, s, es (+ responder identity)
        let msg = read_handshake_message(io, &mut inbuf).await?;
        let p = state.read_message(msg, &mut payload)?;
        remote = verify_identity_payload(&payload[..p], state.get_remote_static())?;
        if remote.node_id == keys.node_id {
            return Err(HandshakeError::SelfConnection);
        }
        if let Some(expected) = expected {
            if expected != remote.node_id {
                return Err(HandshakeError::UnexpectedNodeId {
                    expected,
                    actual: remote.node_id,
                });
            }
        }
        // -> s, se (+ initiator identity)
        let n = state.write_message(&keys.payload, &mut outbuf)?;
        write_handshake_message(io, &outbuf[..n]).await?;
    } else {
        // -> e
        let msg = read_handshake_message(io, &mut inbuf).await?;
        state.read_message(msg, &mut payload)?;
        // <- e, ee, s, es (+ responder identity)
        let n = state.write_message(&keys.payload, &mut outbuf)?;
        write_handshake_message(io, &outbuf[..n]).await?;
        // -> s, se (+ initiator identity)
        let msg = read_handshake_message(io, &mut inbuf).await?;
        let p = state.read_message(msg, &mut payload)?;
        remote = verify_identity_payload(&payload[..p], state.get_remote_static())?;
        if remote.node_id == keys.node_id {
            return Err(HandshakeError::SelfConnection);
        }
    }
    const { assert!(MAX_HANDSHAKE_MESSAGE_LEN <= MAX_NOISE_MESSAGE_LEN) };
    Ok((state.into_transport_mode()?, remote))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(
        a: &LocalKeys,
        b: &LocalKeys,
        magic_a: [u8; 4],
        magic_b: [u8; 4],
        expected: Option<NodeId>,
    ) -> (
        Result<(snow::TransportState, RemoteIdentity), HandshakeError>,
        Result<(snow::TransportState, RemoteIdentity), HandshakeError>,
    ) {
        let (mut x, mut y) = tokio::io::duplex(4096);
        tokio::join!(
            async {
                let r = handshake(&mut x, a, magic_a, true, expected).await;
                drop(x);
                r
            },
            async {
                let r = handshake(&mut y, b, magic_b, false, None).await;
                drop(y);
                r
            }
        )
    }

    #[test]
    fn protocol_name_parses() {
        let _ = noise_params();
        assert_eq!(prologue(*b"TIME"), b"timed/noise/1TIME");
    }

    #[tokio::test]
    async fn handshake_authenticates_both_identities() {
        for backend in [CryptoBackend::Ring, CryptoBackend::RustCrypto] {
            let ia = NodeIdentity::generate();
            let ib = NodeIdentity::generate();
            let a = LocalKeys::new(&ia, backend).unwrap();
            let b = LocalKeys::new(&ib, CryptoBackend::Ring).unwrap();
            let (ra, rb) = pair(&a, &b, *b"TDEV", *b"TDEV", Some(ib.node_id())).await;
            let (mut ta, ra) = ra.unwrap();
            let (mut tb, rb) = rb.unwrap();
            assert_eq!(ra.node_id, ib.node_id());
            assert_eq!(rb.node_id, ia.node_id());
            let mut ct = [0u8; 64];
            let mut pt = [0u8; 64];
            let n = ta.write_message(b"hello", &mut ct).unwrap();
            let m = tb.read_message(&ct[..n], &mut pt).unwrap();
            assert_eq!(&pt[..m], b"hello");
        }
    }

    #[tokio::test]
    async fn wrong_magic_fails_in_noise() {
        let a = LocalKeys::new(&NodeIdentity::generate(), CryptoBackend::Ring).unwrap();
        let b = LocalKeys::new(&NodeIdentity::generate(), CryptoBackend::Ring).unwrap();
        let (ra, rb) = pair(&a, &b, *b"TIME", *b"TDEV", None).await;
        assert!(matches!(ra, Err(HandshakeError::Noise(_))), "{ra:?}");
        assert!(matches!(rb, Err(HandshakeError::Truncated)), "{rb:?}");
    }

    #[tokio::test]
    async fn unexpected_node_id_and_self_connection() {
        let ia = NodeIdentity::generate();
        let a = LocalKeys::new(&ia, CryptoBackend::Ring).unwrap();
        let b = LocalKeys::new(&NodeIdentity::generate(), CryptoBackend::Ring).unwrap();
        let (ra, _) = pair(&a, &b, *b"TDEV", *b"TDEV", Some(ia.node_id())).await;
        assert!(matches!(ra, Err(HandshakeError::UnexpectedNodeId { .. })));
        let a2 = LocalKeys::new(&ia, CryptoBackend::Ring).unwrap();
        let (ra, rb) = pair(&a, &a2, *b"TDEV", *b"TDEV", None).await;
        assert!(matches!(ra, Err(HandshakeError::SelfConnection)));
        assert!(matches!(rb, Err(HandshakeError::Truncated)));
    }

    #[test]
    fn forged_payload_is_rejected() {
        let id = NodeIdentity::generate();
        let keys = LocalKeys::new(&id, CryptoBackend::Ring).unwrap();
        let ok = verify_identity_payload(&keys.payload, Some(keys.static_public())).unwrap();
        assert_eq!(ok.node_id, id.node_id());
        let mut other_static = keys.static_public().to_vec();
        other_static[0] ^= 1;
        assert!(matches!(
            verify_identity_payload(&keys.payload, Some(&other_static)),
            Err(HandshakeError::ForgedIdentity)
        ));
        let mut bad = keys.payload;
        bad[0] = 9;
        assert!(matches!(
            verify_identity_payload(&bad, Some(keys.static_public())),
            Err(HandshakeError::BadPayload(_))
        ));
        assert!(matches!(
            verify_identity_payload(&keys.payload[..50], Some(keys.static_public())),
            Err(HandshakeError::BadPayload(_))
        ));
    }
}

//! Property tests: every message round-trips through the codec, arbitrary
//! bytes never panic the decoders, the encoder refuses exactly what the
//! decoder refuses, batch and single envelope verification agree, and frames
//! of any size survive splitting into Noise messages.
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use proptest::prelude::*;
use timed::constants::{
    MAX_ENVELOPE_PAYLOAD_LEN, MAX_NETWORK_NAME_LEN, MAX_PEER_ADDRESSES, MAX_USER_AGENT_LEN,
};
use timed::crypto::{NodeId, NodeIdentity};
use timed::protocol::codec::{decode_message, encode_message};
use timed::protocol::{
    verify_batch, CodecError, Disconnect, DisconnectReason, Envelope, GossipKind, Message,
    PeerAddress, Ping, Pong, Version,
};
use timed::transport::noise::{handshake, CryptoBackend, LocalKeys};
use timed::transport::{FrameCodec, RekeyPolicy};
use tokio_util::codec::{Decoder, Encoder};

fn peer_address() -> impl Strategy<Value = PeerAddress> {
    (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| PeerAddress { ip, port })
}

fn version() -> impl Strategy<Value = Version> {
    (
        any::<[u8; 4]>(),
        any::<u32>(),
        "[a-z]{0,32}",
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        proptest::option::of(peer_address()),
        any::<u64>(),
        "\\PC{0,64}",
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                magic,
                protocol_version,
                network,
                genesis_hash,
                id,
                listen_addr,
                capabilities,
                user_agent,
                best_height,
                timestamp,
            )| Version {
                magic,
                protocol_version,
                network,
                genesis_hash,
                node_id: NodeId(id),
                listen_addr,
                capabilities,
                user_agent,
                best_height,
                timestamp,
            },
        )
}

fn gossip_kind() -> impl Strategy<Value = GossipKind> {
    prop_oneof![
        Just(GossipKind::Transaction),
        Just(GossipKind::Block),
        Just(GossipKind::Vote),
        Just(GossipKind::Address),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        gossip_kind(),
        any::<[u8; 32]>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..600),
        proptest::collection::vec(any::<u8>(), 64),
    )
        .prop_map(|(kind, originator, timestamp_ms, payload, sig)| Envelope {
            kind,
            originator,
            timestamp_ms,
            payload,
            signature: sig.try_into().unwrap(),
        })
}

fn disconnect_reason() -> impl Strategy<Value = DisconnectReason> {
    prop_oneof![
        Just(DisconnectReason::Shutdown),
        Just(DisconnectReason::IncompatibleVersion),
        Just(DisconnectReason::Duplicate),
        Just(DisconnectReason::TooManyPeers),
        Just(DisconnectReason::ProtocolViolation),
        Just(DisconnectReason::Banned),
        Just(DisconnectReason::SendQueueFull),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        version().prop_map(Message::Version),
        (any::<u64>(), any::<u64>()).prop_map(|(nonce, timestamp_ms)| Message::Ping(Ping {
            nonce,
            timestamp_ms
        })),
        (any::<u64>(), any::<u64>()).prop_map(|(nonce, timestamp_ms)| Message::Pong(Pong {
            nonce,
            timestamp_ms
        })),
        (disconnect_reason(), "\\PC{0,50}")
            .prop_map(|(reason, detail)| Message::Disconnect(Disconnect { reason, detail })),
        envelope().prop_map(Message::Gossip),
        Just(Message::GetPeers),
        proptest::collection::vec(envelope(), 0..8).prop_map(Message::Peers),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_message_round_trips(m in message()) {
        let bytes = encode_message(&m).unwrap();
        prop_assert_eq!(decode_message(&bytes).unwrap(), m);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_message(&bytes);
    }

    #[test]
    fn decoding_mutated_messages_never_panics(
        m in message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode_message(&m).unwrap();
        for (i, x) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        let _ = decode_message(&bytes);
        let cut = cut.index(bytes.len() + 1);
        let _ = decode_message(&bytes[..cut]);
    }

    #[test]
    fn envelope_signatures_verify_and_ids_differ(payload in proptest::collection::vec(any::<u8>(), 0..300), ts in any::<u64>()) {
        let id = NodeIdentity::from_secret_bytes(&[3; 32]);
        let a = Envelope::sign(&id, *b"TDEV", GossipKind::Vote, ts, payload.clone());
        prop_assert!(a.verify(*b"TDEV").is_ok());
        let b = Envelope::sign(&id, *b"TDEV", GossipKind::Vote, ts.wrapping_add(1), payload);
        prop_assert_ne!(a.id(), b.id());
    }
}

/// Messages whose variable-length fields are just below, at or just above
/// their protocol limits.
fn message_near_the_limits() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            version(),
            MAX_USER_AGENT_LEN - 2..=MAX_USER_AGENT_LEN + 2,
            MAX_NETWORK_NAME_LEN - 2..=MAX_NETWORK_NAME_LEN + 2,
        )
            .prop_map(|(mut v, user_agent, network)| {
                v.user_agent = "u".repeat(user_agent);
                v.network = "n".repeat(network);
                Message::Version(v)
            }),
        (disconnect_reason(), 254usize..=258).prop_map(|(reason, n)| {
            Message::Disconnect(Disconnect {
                reason,
                detail: "d".repeat(n),
            })
        }),
        (MAX_PEER_ADDRESSES - 2..=MAX_PEER_ADDRESSES + 2, envelope()).prop_map(|(n, mut e)| {
            e.payload.truncate(40);
            Message::Peers(vec![e; n])
        }),
        (
            envelope(),
            MAX_ENVELOPE_PAYLOAD_LEN - 2..=MAX_ENVELOPE_PAYLOAD_LEN + 2
        )
            .prop_map(|(mut e, n)| {
                e.payload = vec![0x5a; n];
                Message::Gossip(e)
            }),
    ]
}

/// The encoding of docs/PROTOCOL.md section 8.1, without any limit check.
fn encode_unchecked(m: &Message) -> Vec<u8> {
    let config = bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding();
    bincode::serde::encode_to_vec(m, config).unwrap()
}

/// A mutation of a signed envelope.
#[derive(Clone, Debug)]
enum Mutation {
    None,
    FlipSignature(usize, u8),
    FlipOriginator(usize, u8),
    FlipPayload(u8),
    SmallOrderR,
    SmallOrderKey,
    /// `S + ℓ`: the same scalar, not canonical.
    NonCanonicalS,
    RandomR([u8; 32]),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => Just(Mutation::None),
        1 => (0usize..64, 1u8..).prop_map(|(i, x)| Mutation::FlipSignature(i, x)),
        1 => (0usize..32, 1u8..).prop_map(|(i, x)| Mutation::FlipOriginator(i, x)),
        1 => (1u8..).prop_map(Mutation::FlipPayload),
        1 => Just(Mutation::SmallOrderR),
        1 => Just(Mutation::SmallOrderKey),
        1 => Just(Mutation::NonCanonicalS),
        1 => any::<[u8; 32]>().prop_map(Mutation::RandomR),
    ]
}

fn mutate(e: &mut Envelope, m: &Mutation) {
    // The identity point: small order.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    // ℓ, little-endian.
    let ell =
        hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010").unwrap();
    match m {
        Mutation::None => {}
        Mutation::FlipSignature(i, x) => e.signature[*i] ^= x,
        Mutation::FlipOriginator(i, x) => e.originator[*i] ^= x,
        Mutation::FlipPayload(x) => e.payload[0] ^= x,
        Mutation::SmallOrderR => e.signature[..32].copy_from_slice(&identity),
        Mutation::SmallOrderKey => e.originator = identity,
        Mutation::NonCanonicalS => {
            let mut carry = 0u16;
            for (b, l) in e.signature[32..].iter_mut().zip(&ell) {
                let sum = u16::from(*b) + u16::from(*l) + carry;
                *b = sum as u8;
                carry = sum >> 8;
            }
        }
        Mutation::RandomR(r) => e.signature[..32].copy_from_slice(r),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A node never sends what its peer must refuse: `encode_message`
    /// refuses a message exactly when `decode_message` refuses its bytes, and
    /// with the same error.
    #[test]
    fn encoder_and_decoder_enforce_the_same_limits(m in message_near_the_limits()) {
        let unchecked = encode_unchecked(&m);
        match encode_message(&m) {
            Ok(bytes) => {
                prop_assert_eq!(&bytes, &unchecked);
                prop_assert_eq!(decode_message(&bytes).unwrap(), m);
            }
            Err(e) => {
                prop_assert!(matches!(e, CodecError::LimitExceeded { .. }), "{}", e);
                prop_assert_eq!(decode_message(&unchecked), Err(e));
            }
        }
    }

    /// Batch verification gives every envelope the verdict it gets alone,
    /// whatever else is in the batch.
    #[test]
    fn batch_and_single_envelope_verification_agree(
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let envelopes: Vec<Envelope> = mutations
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let id = NodeIdentity::from_secret_bytes(&[i as u8 + 10; 32]);
                let mut e = Envelope::sign(&id, *b"TDEV", GossipKind::Block, 7, vec![i as u8; 40]);
                mutate(&mut e, m);
                e
            })
            .collect();
        let refs: Vec<&Envelope> = envelopes.iter().collect();
        let single: Vec<_> = envelopes.iter().map(|e| e.verify(*b"TDEV")).collect();
        prop_assert_eq!(verify_batch(&refs, *b"TDEV"), single.clone());
        for (m, r) in mutations.iter().zip(&single) {
            if matches!(m, Mutation::None) {
                prop_assert!(r.is_ok());
            }
        }
    }
}

fn session_pair() -> (snow::TransportState, snow::TransportState) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = LocalKeys::new(&NodeIdentity::generate(), CryptoBackend::Ring).unwrap();
        let b = LocalKeys::new(&NodeIdentity::generate(), CryptoBackend::Ring).unwrap();
        let (mut x, mut y) = tokio::io::duplex(4096);
        let (ra, rb) = tokio::join!(
            handshake(&mut x, &a, *b"TDEV", true, None),
            handshake(&mut y, &b, *b"TDEV", false, None)
        );
        (ra.unwrap().0, rb.unwrap().0)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn frames_of_any_size_reassemble_whatever_the_tcp_segmentation(
        sizes in proptest::collection::vec(1usize..200_000, 1..5),
        segment in 1usize..70_000,
        rekey_every in 1u64..10,
    ) {
        let (a, b) = session_pair();
        let policy = RekeyPolicy { after_messages: rekey_every, after_bytes: u64::MAX };
        let mut tx = FrameCodec::new(a, 1 << 20, policy);
        let mut rx = FrameCodec::new(b, 1 << 20, policy);
        let mut wire = BytesMut::new();
        for (n, &size) in sizes.iter().enumerate() {
            let frame = vec![n as u8; size];
            Encoder::<&[u8]>::encode(&mut tx, &frame, &mut wire).unwrap();
        }
        // Deliver the stream in segments of arbitrary size.
        let mut inbox = BytesMut::new();
        let mut got = Vec::new();
        while !wire.is_empty() {
            let take = segment.min(wire.len());
            inbox.extend_from_slice(&wire.split_to(take));
            while let Some(frame) = rx.decode(&mut inbox).unwrap() {
                got.push(frame);
            }
        }
        prop_assert_eq!(got.len(), sizes.len());
        for (n, frame) in got.iter().enumerate() {
            prop_assert_eq!(frame.len(), sizes[n]);
            prop_assert!(frame.iter().all(|&x| x == n as u8));
        }
    }

    #[test]
    fn frame_decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let (_, b) = session_pair();
        let mut rx = FrameCodec::new(b, 1 << 20, RekeyPolicy::default());
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = rx.decode(&mut buf);
        let _ = rx.decode_eof(&mut buf);
    }
}

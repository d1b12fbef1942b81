#![allow(clippy::unwrap_used)]
//! Test vectors of `docs/PROTOCOL.md`.
//!
//! Every hex string in the document's examples is asserted here against the
//! library's own encoders, hashes and signatures, so a change to the wire
//! format fails this test until the document is updated with it. The
//! interoperability tests at the end drive the real node code with a client
//! written from the document alone (snow for Noise, hand-written records).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use timed::app::Node;
use timed::constants::{
    DEFAULT_MAX_FRAME_LEN, IDENTITY_SIGNATURE_DOMAIN, MAX_ENVELOPE_PAYLOAD_LEN,
    MAX_HANDSHAKE_MESSAGE_LEN, MAX_NETWORK_NAME_LEN, MAX_PEER_ADDRESSES, MAX_USER_AGENT_LEN,
    NOISE_PROLOGUE_PREFIX, NOISE_PROTOCOL_NAME, PRE_VERSION_MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use timed::crypto::{NodeId, NodeIdentity};
use timed::network::{NetworkConfig, NetworkEvent};
use timed::params::Network;
use timed::peer::{ConnectionError, ConnectionEvent, HandshakeConfig};
use timed::protocol::codec::{decode_message, encode_envelope, encode_message};
use timed::protocol::message::capabilities;
use timed::protocol::{
    verify_batch, CodecError, Disconnect, DisconnectReason, Envelope, GossipKind, Message,
    PeerAddress, Ping, Pong, Version, VersionParams,
};
use timed::transport::noise::{identity_signed_bytes, prologue};
use timed::transport::{FrameCodec, RekeyPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

/// Prints `name = hex` (run with `--nocapture` to see it), checks it and
/// returns the expected bytes, so that callers decode the document's bytes.
fn check(name: &str, actual: &[u8], expected_hex: &str) -> Vec<u8> {
    let got = hex::encode(actual);
    println!("{name} ({} bytes) = {got}", actual.len());
    assert_eq!(got, expected_hex, "{name}");
    unhex(expected_hex)
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

const SEED_01: [u8; 32] = [0x01; 32];

#[test]
fn constants_quoted_by_the_document() {
    assert_eq!(NOISE_PROTOCOL_NAME, "Noise_XX_25519_ChaChaPoly_SHA256");
    assert_eq!(NOISE_PROLOGUE_PREFIX, b"timed/noise/1");
    assert_eq!(IDENTITY_SIGNATURE_DOMAIN, b"timed/noise-static-key/1:");
    assert_eq!(MAX_HANDSHAKE_MESSAGE_LEN, 1024);
    assert_eq!(PRE_VERSION_MAX_FRAME_LEN, 4096);
    assert_eq!(DEFAULT_MAX_FRAME_LEN, 4 * 1024 * 1024);
    assert_eq!(MAX_USER_AGENT_LEN, 256);
    assert_eq!(MAX_NETWORK_NAME_LEN, 32);
    assert_eq!(MAX_ENVELOPE_PAYLOAD_LEN, 2 * 1024 * 1024);
    assert_eq!(MAX_PEER_ADDRESSES, 1000);
    assert_eq!(PROTOCOL_VERSION, 2);
}

#[test]
fn prologues_and_default_genesis_hashes() {
    for (network, prologue_hex, genesis_hex) in [
        (
            Network::Mainnet,
            "74696d65642f6e6f6973652f31c01d7e4d",
            "74bb46df82442c964ac928d84ca8643da17da1f03860070538594ea41ce1ac1f",
        ),
        (
            Network::Testnet,
            "74696d65642f6e6f6973652f3154494d45",
            "e9edb81d721683c3e842663f3fc8fe71c1a1d3f6739525779d775ac27bd8b636",
        ),
        (
            Network::Devnet,
            "74696d65642f6e6f6973652f3154444556",
            "a47b5ff50b83a62c86e5068fc82958b6f8b663376ab341f39c6c6feeab6a6160",
        ),
    ] {
        check(
            &format!("prologue {network}"),
            &prologue(network.magic()),
            prologue_hex,
        );
        check(
            &format!("default genesis {network}"),
            &network.default_genesis_hash(),
            genesis_hex,
        );
        assert_eq!(
            network.default_genesis_hash(),
            blake3::derive_key("timed v1 default genesis", network.name().as_bytes())
        );
    }
}

#[test]
fn node_id_of_seed_01() {
    let id = NodeIdentity::from_secret_bytes(&SEED_01);
    check(
        "ed25519 public key",
        id.public_key().as_bytes(),
        "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c",
    );
    check(
        "node id",
        id.node_id().as_bytes(),
        "8639d1242746d741feba96ee5b0eb613e6ac032cbe85ef21b659a72177f185bb",
    );
    assert_eq!(
        id.node_id().0,
        blake3::derive_key("timed v1 node id", id.public_key().as_bytes())
    );
}

#[test]
fn identity_payload_for_a_static_key() {
    let id = NodeIdentity::from_secret_bytes(&SEED_01);
    let x25519_public = curve25519_dalek::MontgomeryPoint::mul_base_clamped([0x02; 32]).to_bytes();
    check(
        "x25519 static public (private 02..02)",
        &x25519_public,
        "ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59",
    );
    let signed = identity_signed_bytes(&x25519_public);
    check("identity signed bytes", &signed, "74696d65642f6e6f6973652d7374617469632d6b65792f313ace8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59");
    let signature = id.sign(&signed).to_bytes();
    check("identity signature", &signature, "898b660f9f2986a83be261bf4878d2be475dc6aa0d015a70b07680f8596e8c60ddb89ff40d0d4b2e3b617e64246e284ba435b1a32fc92060c7e9dd17ac81000c");
    let mut payload = vec![1u8];
    payload.extend_from_slice(id.public_key().as_bytes());
    payload.extend_from_slice(&signature);
    check("identity payload", &payload, "018a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c898b660f9f2986a83be261bf4878d2be475dc6aa0d015a70b07680f8596e8c60ddb89ff40d0d4b2e3b617e64246e284ba435b1a32fc92060c7e9dd17ac81000c");
    id.public_key()
        .verify_strict(&signed, &ed25519_dalek::Signature::from_bytes(&signature))
        .unwrap();
}

#[test]
fn small_messages() {
    let ping = Message::Ping(Ping {
        nonce: 0x0102_0304_0506_0708,
        timestamp_ms: 1_700_000_000_000,
    });
    let bytes = encode_message(&ping).unwrap();
    let bytes = check("ping", &bytes, "0100000008070605040302010068e5cf8b010000");
    assert_eq!(decode_message(&bytes).unwrap(), ping);

    let pong = Message::Pong(Pong {
        nonce: 0x0102_0304_0506_0708,
        timestamp_ms: 1_700_000_000_250,
    });
    let bytes = encode_message(&pong).unwrap();
    let bytes = check("pong", &bytes, "020000000807060504030201fa68e5cf8b010000");
    assert_eq!(decode_message(&bytes).unwrap(), pong);

    let bytes = encode_message(&Message::GetPeers).unwrap();
    let bytes = check("get_peers", &bytes, "05000000");
    assert_eq!(decode_message(&bytes).unwrap(), Message::GetPeers);

    let bye = Message::Disconnect(Disconnect {
        reason: DisconnectReason::TooManyPeers,
        detail: "full".into(),
    });
    let bytes = encode_message(&bye).unwrap();
    let bytes = check(
        "disconnect",
        &bytes,
        "0300000003000000040000000000000066756c6c",
    );
    assert_eq!(decode_message(&bytes).unwrap(), bye);

    let peers = Message::Peers(vec![example_record()]);
    let bytes = encode_message(&peers).unwrap();
    let bytes = check("peers", &bytes, "060000000100000000000000030000008a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c0068e5cf8b0100003400000000000000020000000000000000000000000000000000ffff7f000002885e20010db8000000000000000000000007c05d0300000000000000c0f069e30d3fc23ef8a6eb45b4181505a3e78a292e0270d8b3a3d2363f87c9a1f2dd148fca7117a3561911b37da509ebc5630d8a4290cc975a9e1b7c1f936504");
    assert_eq!(decode_message(&bytes).unwrap(), peers);
}

/// Node SEED_01's signed record: it listens on 127.0.0.2:24200 and
/// [2001:db8::7]:24000 with capabilities FULL_NODE | RELAY, signed at
/// 1,700,000,000,000 ms on devnet.
fn example_record() -> Envelope {
    let id = NodeIdentity::from_secret_bytes(&SEED_01);
    timed::protocol::record::sign(
        &id,
        Network::Devnet.magic(),
        &[
            "127.0.0.2:24200".parse().unwrap(),
            "[2001:db8::7]:24000".parse().unwrap(),
        ],
        capabilities::FULL_NODE | capabilities::RELAY,
        1_700_000_000_000,
    )
}

#[test]
fn peer_record() {
    let record = example_record();
    let payload = check("record payload", &record.payload, "020000000000000000000000000000000000ffff7f000002885e20010db8000000000000000000000007c05d0300000000000000");
    assert_eq!(payload, record.payload);
    let opened =
        timed::protocol::record::open(&record, Network::Devnet.magic(), 1_700_000_000_000).unwrap();
    assert_eq!(
        opened.node_id,
        NodeIdentity::from_secret_bytes(&SEED_01).node_id()
    );
    assert_eq!(opened.record.addresses.len(), 2);
}

fn example_version() -> Version {
    let id = NodeIdentity::from_secret_bytes(&SEED_01);
    Version {
        magic: Network::Devnet.magic(),
        protocol_version: 2,
        network: "devnet".into(),
        genesis_hash: Network::Devnet.default_genesis_hash(),
        node_id: id.node_id(),
        listen_addr: Some(PeerAddress::from(
            "127.0.0.1:24200".parse::<SocketAddr>().unwrap(),
        )),
        capabilities: capabilities::FULL_NODE | capabilities::RELAY,
        user_agent: "/timed:0.1.0/".into(),
        best_height: 42,
        timestamp: 1_700_000_000,
    }
}

#[test]
fn version_message() {
    let version = Message::Version(example_version());
    let bytes = encode_message(&version).unwrap();
    let bytes = check("version", &bytes, "00000000544445560200000006000000000000006465766e6574a47b5ff50b83a62c86e5068fc82958b6f8b663376ab341f39c6c6feeab6a61608639d1242746d741feba96ee5b0eb613e6ac032cbe85ef21b659a72177f185bb0100000000000000000000ffff7f000001885e03000000000000000d000000000000002f74696d65643a302e312e302f2a0000000000000000f1536500000000");
    assert_eq!(decode_message(&bytes).unwrap(), version);
}

fn example_envelope() -> Envelope {
    let id = NodeIdentity::from_secret_bytes(&SEED_01);
    Envelope::sign(
        &id,
        *b"TDEV",
        GossipKind::Transaction,
        1_700_000_000_000,
        b"hello".to_vec(),
    )
}

#[test]
fn signed_envelope() {
    let env = example_envelope();
    let encoded = encode_envelope(&env);
    let encoded = check("envelope", &encoded, "000000008a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c0068e5cf8b010000050000000000000068656c6c6f97d4a91a3849bbcfbc9e9db9fcf3ef013b86b1c8d521689c93cc8f01a2e244010ec769269ed01ce79adefa7f3020a692770b5ed2d9fff9db05d040b301504b05");
    let unsigned = &encoded[..encoded.len() - 64];
    let mut digest_input = b"TDEV".to_vec();
    digest_input.extend_from_slice(unsigned);
    check("digest input", &digest_input, "54444556000000008a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c0068e5cf8b010000050000000000000068656c6c6f");
    let digest = env.digest(*b"TDEV");
    check(
        "digest",
        &digest,
        "e898e6edb97ddd665a2d9f9ca04fc5978fd1632d4e2cd50863a2f5cc7bde76d5",
    );
    assert_eq!(
        digest,
        blake3::derive_key("timed v1 gossip envelope", &digest_input)
    );
    check("signature", &env.signature, "97d4a91a3849bbcfbc9e9db9fcf3ef013b86b1c8d521689c93cc8f01a2e244010ec769269ed01ce79adefa7f3020a692770b5ed2d9fff9db05d040b301504b05");
    assert_eq!(&encoded[encoded.len() - 64..], &env.signature[..]);
    let key = NodeIdentity::from_secret_bytes(&SEED_01).public_key();
    key.verify_strict(
        &digest,
        &ed25519_dalek::Signature::from_bytes(&env.signature),
    )
    .unwrap();
    check(
        "message id",
        &env.id().0,
        "080db72640c1dfbcb01aeb1919f869fd3513a4dcbfab8fad92a8c08081fa68bb",
    );
    assert_eq!(env.id().0, *blake3::hash(&encoded).as_bytes());
    env.verify(*b"TDEV").unwrap();
    assert!(env.verify(*b"TIME").is_err());
    assert!(verify_batch(&[&env], *b"TDEV")[0].is_ok());

    let gossip = Message::Gossip(env);
    let bytes = encode_message(&gossip).unwrap();
    let bytes = check("gossip message", &bytes, "04000000000000008a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c0068e5cf8b010000050000000000000068656c6c6f97d4a91a3849bbcfbc9e9db9fcf3ef013b86b1c8d521689c93cc8f01a2e244010ec769269ed01ce79adefa7f3020a692770b5ed2d9fff9db05d040b301504b05");
    assert_eq!(&bytes[4..], &encoded[..]);
    assert_eq!(decode_message(&bytes).unwrap(), gossip);
}

#[test]
fn decoding_errors() {
    // An index past the last variant.
    assert_eq!(
        decode_message(&unhex("0b000000")),
        Err(CodecError::UnknownVariant { tag: 11 })
    );
    // A whole message followed by one byte.
    assert_eq!(
        decode_message(&unhex("0500000000")),
        Err(CodecError::TrailingBytes { extra: 1 })
    );
    // Too short, unknown inner enum index, bad Option tag, bad UTF-8.
    assert!(matches!(
        decode_message(&unhex("050000")),
        Err(CodecError::Malformed(_))
    ));
    let mut gossip = encode_message(&Message::Gossip(example_envelope())).unwrap();
    gossip[4] = 4;
    assert!(matches!(
        decode_message(&gossip),
        Err(CodecError::Malformed(_))
    ));
    let mut version = encode_message(&Message::Version(example_version())).unwrap();
    let option_at = 4 + 4 + 4 + 8 + 6 + 32 + 32;
    assert_eq!(version[option_at], 1);
    version[option_at] = 2;
    assert!(matches!(
        decode_message(&version),
        Err(CodecError::Malformed(_))
    ));
    let bad_utf8 = unhex("03000000000000000100000000000000ff");
    assert!(matches!(
        decode_message(&bad_utf8),
        Err(CodecError::Malformed(_))
    ));
    // Field limits are checked after decoding, and `timed` refuses to
    // encode past them, so the bytes are built by hand from the layout.
    let address = example_record();
    let record_len = encode_envelope(&address).len();
    let too_many = Message::Peers(vec![address.clone(); 1001]);
    assert_eq!(
        encode_message(&too_many),
        Err(CodecError::LimitExceeded {
            field: "peers",
            len: 1001,
            max: MAX_PEER_ADDRESSES
        })
    );
    let mut bytes = encode_message(&Message::Peers(vec![address; 1000])).unwrap();
    bytes[4..12].copy_from_slice(&1001u64.to_le_bytes());
    bytes.extend_from_within(12..12 + record_len);
    assert_eq!(
        decode_message(&bytes),
        Err(CodecError::LimitExceeded {
            field: "peers",
            len: 1001,
            max: MAX_PEER_ADDRESSES
        })
    );
    let long_detail = Message::Disconnect(Disconnect {
        reason: DisconnectReason::Shutdown,
        detail: "x".repeat(257),
    });
    assert!(matches!(
        encode_message(&long_detail),
        Err(CodecError::LimitExceeded { .. })
    ));
    // index 3, reason 0, detail length 257, then 257 bytes
    let mut bytes = unhex("03000000000000000101000000000000");
    bytes.extend_from_slice(&[b'x'; 257]);
    assert!(matches!(
        decode_message(&bytes),
        Err(CodecError::LimitExceeded { .. })
    ));
}

/// Keys of the deterministic handshake example.
struct HandshakeKeys {
    identity_seed: [u8; 32],
    static_private: [u8; 32],
    ephemeral_private: [u8; 32],
}

const INITIATOR: HandshakeKeys = HandshakeKeys {
    identity_seed: [0x01; 32],
    static_private: [0x02; 32],
    ephemeral_private: [0x03; 32],
};

const RESPONDER: HandshakeKeys = HandshakeKeys {
    identity_seed: [0x04; 32],
    static_private: [0x05; 32],
    ephemeral_private: [0x06; 32],
};

fn identity_payload(keys: &HandshakeKeys) -> Vec<u8> {
    let id = NodeIdentity::from_secret_bytes(&keys.identity_seed);
    let static_public =
        curve25519_dalek::MontgomeryPoint::mul_base_clamped(keys.static_private).to_bytes();
    let mut payload = vec![1u8];
    payload.extend_from_slice(id.public_key().as_bytes());
    payload.extend_from_slice(&id.sign(&identity_signed_bytes(&static_public)).to_bytes());
    payload
}

/// Checks an identity payload the way the document says and returns the
/// node id it proves.
fn verify_identity_payload(payload: &[u8], remote_static: &[u8]) -> NodeId {
    assert_eq!(payload.len(), 97);
    assert_eq!(payload[0], 1);
    let key = ed25519_dalek::VerifyingKey::from_bytes(payload[1..33].try_into().unwrap()).unwrap();
    assert!(!key.is_weak());
    let signature = ed25519_dalek::Signature::from_bytes(payload[33..].try_into().unwrap());
    key.verify_strict(&identity_signed_bytes(remote_static), &signature)
        .unwrap();
    NodeId(blake3::derive_key("timed v1 node id", key.as_bytes()))
}

/// A Noise state with fixed static and ephemeral keys on the devnet.
fn fixed_noise_state(keys: &HandshakeKeys, initiator: bool) -> snow::HandshakeState {
    let prologue = prologue(Network::Devnet.magic());
    let builder = snow::Builder::new(NOISE_PROTOCOL_NAME.parse().unwrap())
        .local_private_key(&keys.static_private)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&keys.ephemeral_private)
        .prologue(&prologue)
        .unwrap();
    if initiator {
        builder.build_initiator().unwrap()
    } else {
        builder.build_responder().unwrap()
    }
}

/// `len:u16be || message`.
fn length_prefixed(message: &[u8]) -> Vec<u8> {
    let mut out = (message.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(message);
    out
}

/// The three handshake messages (with their length prefixes) and the two
/// transport states (initiator, responder).
struct Transcript {
    messages: [Vec<u8>; 3],
    handshake_hash: Vec<u8>,
    initiator: snow::TransportState,
    responder: snow::TransportState,
}

fn run_fixed_handshake() -> Transcript {
    let mut i = fixed_noise_state(&INITIATOR, true);
    let mut r = fixed_noise_state(&RESPONDER, false);
    let mut buf = [0u8; 1024];
    let mut payload = [0u8; 1024];

    let n = i.write_message(&[], &mut buf).unwrap();
    let m1 = buf[..n].to_vec();
    assert_eq!(r.read_message(&m1, &mut payload).unwrap(), 0);

    let n = r
        .write_message(&identity_payload(&RESPONDER), &mut buf)
        .unwrap();
    let m2 = buf[..n].to_vec();
    let p = i.read_message(&m2, &mut payload).unwrap();
    let responder_id = verify_identity_payload(&payload[..p], i.get_remote_static().unwrap());
    assert_eq!(
        responder_id,
        NodeIdentity::from_secret_bytes(&RESPONDER.identity_seed).node_id()
    );

    let n = i
        .write_message(&identity_payload(&INITIATOR), &mut buf)
        .unwrap();
    let m3 = buf[..n].to_vec();
    let p = r.read_message(&m3, &mut payload).unwrap();
    let initiator_id = verify_identity_payload(&payload[..p], r.get_remote_static().unwrap());
    assert_eq!(
        initiator_id,
        NodeIdentity::from_secret_bytes(&INITIATOR.identity_seed).node_id()
    );

    let handshake_hash = i.get_handshake_hash().to_vec();
    assert_eq!(handshake_hash, r.get_handshake_hash());
    Transcript {
        messages: [
            length_prefixed(&m1),
            length_prefixed(&m2),
            length_prefixed(&m3),
        ],
        handshake_hash,
        initiator: i.into_transport_mode().unwrap(),
        responder: r.into_transport_mode().unwrap(),
    }
}

/// Largest chunk of a `FRAME_START` record (65,535 - 16 - 1 - 4).
const MAX_START_CHUNK: usize = 65_514;
/// Largest chunk of a `FRAME_CONT` record (65,535 - 16 - 1).
const MAX_CONT_CHUNK: usize = 65_518;

/// Encrypts one record: `len:u16be || ciphertext`.
fn seal_record(noise: &mut snow::TransportState, plaintext: &[u8], wire: &mut Vec<u8>) {
    let mut ciphertext = vec![0u8; plaintext.len() + 16];
    let n = noise.write_message(plaintext, &mut ciphertext).unwrap();
    wire.extend_from_slice(&length_prefixed(&ciphertext[..n]));
}

/// Frames and encrypts `frame` as the document says, written independently
/// of `FrameCodec`. With `rekey_each_record` the sender rotates its key
/// after every record.
fn frame_to_records(
    noise: &mut snow::TransportState,
    frame: &[u8],
    rekey_each_record: bool,
) -> Vec<u8> {
    let mut wire = Vec::new();
    let first = frame.len().min(MAX_START_CHUNK);
    let mut records = Vec::new();
    let mut start = vec![0x01];
    start.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    start.extend_from_slice(&frame[..first]);
    records.push(start);
    for chunk in frame[first..].chunks(MAX_CONT_CHUNK) {
        let mut cont = vec![0x02];
        cont.extend_from_slice(chunk);
        records.push(cont);
    }
    for record in records {
        seal_record(noise, &record, &mut wire);
        if rekey_each_record {
            seal_record(noise, &[0x03], &mut wire);
            noise.rekey_outgoing();
        }
    }
    wire
}

#[test]
fn deterministic_handshake_and_first_records() {
    let t = run_fixed_handshake();
    let parties: [(&HandshakeKeys, &str, &str, &str, &str, &str); 2] = [
        (
            &INITIATOR,
            "initiator",
            "ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59",
            "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22",
            "8639d1242746d741feba96ee5b0eb613e6ac032cbe85ef21b659a72177f185bb",
            "018a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c898b660f9f2986a83be261bf4878d2be475dc6aa0d015a70b07680f8596e8c60ddb89ff40d0d4b2e3b617e64246e284ba435b1a32fc92060c7e9dd17ac81000c",
        ),
        (
            &RESPONDER,
            "responder",
            "50a61409b1ddd0325e9b16b700e719e9772c07000b1bd7786e907c653d20495d",
            "f5b2d6e60f9477e310c2982daaa6c9136c108a1777c5947e448fa37d68174557",
            "42277aeb74faa94bdea2224ab39ec6685f3b4e6bc8e051266840784ab6c63332",
            "01ca93ac1705187071d67b83c7ff0efe8108e8ec4530575d7726879333dbdabe7cdcd3e47f1c3680552979170cbb1e8f723206f03ce3d3ff9cfcd076c65eeb4e417308214a0ab6aede669cc76a075943d20def0783f4d3c3e8f517233f3ec90501",
        ),
    ];
    for (keys, who, static_hex, ephemeral_hex, node_id_hex, payload_hex) in parties {
        let s = curve25519_dalek::MontgomeryPoint::mul_base_clamped(keys.static_private);
        let e = curve25519_dalek::MontgomeryPoint::mul_base_clamped(keys.ephemeral_private);
        check(&format!("{who} static public"), s.as_bytes(), static_hex);
        check(
            &format!("{who} ephemeral public"),
            e.as_bytes(),
            ephemeral_hex,
        );
        let id = NodeIdentity::from_secret_bytes(&keys.identity_seed);
        check(
            &format!("{who} node id"),
            id.node_id().as_bytes(),
            node_id_hex,
        );
        check(
            &format!("{who} identity payload"),
            &identity_payload(keys),
            payload_hex,
        );
    }
    assert_eq!(t.messages[0].len(), 2 + 32);
    assert_eq!(t.messages[1].len(), 2 + 193);
    assert_eq!(t.messages[2].len(), 2 + 161);
    check(
        "handshake message 1",
        &t.messages[0],
        "00205dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22",
    );
    check("handshake message 2", &t.messages[1], "00c1f5b2d6e60f9477e310c2982daaa6c9136c108a1777c5947e448fa37d68174557c7d1fd99f1d533d3362ae2b80ffcd8c2b3e95ca446394c3218005c23f3be2286553b7dff161cf94122232a437564603ffaa53bfdbe4ee9ac04265d77ee98995e892e19ba410b9c30a936fd4deda44b36477049cb385251d5d4f268a24329cc1743cb4544ebe10cf8ea4ba758c638c3d0d5ba556f2b2f8750713ccaa7fb6c480c742db30ae6a865b3337374707f36fe1e97780b4ec90e6f3b8c629f3e84796dc38a");
    check("handshake message 3", &t.messages[2], "00a114e0dda8a82229f691a10b7678745eb95f1610ce16de8d846ba3e2ae1eb938208542fbb09dc3abd513c3a1889a4424604416e217e42238b4c357f656df625af3d6c5e2cf86606c24823d15c383d4e95e3b1eed497a54b35ab2b80da8592fbb1a92fa724ebf0033801bdb503d80946ef61e881d814ad06523513ef861d4d46ff0253133d52063430c0ae13b8ab51c67788f93fbc706b5511d0a744a06dadafafa9e");
    check(
        "handshake hash",
        &t.handshake_hash,
        "687eb5c241a221453c7f059cb94dbe2f43d93977697f76c77be13bff6c5acf4f",
    );

    // The initiator's first frame (its Version would come first on a real
    // connection; a Ping keeps the example short), default rekey policy.
    let ping = encode_message(&Message::Ping(Ping {
        nonce: 0x0102_0304_0506_0708,
        timestamp_ms: 1_700_000_000_000,
    }))
    .unwrap();
    let mut initiator = FrameCodec::new(
        t.initiator,
        PRE_VERSION_MAX_FRAME_LEN,
        RekeyPolicy::default(),
    );
    let mut wire = BytesMut::new();
    Encoder::<&[u8]>::encode(&mut initiator, &ping, &mut wire).unwrap();
    check(
        "initiator record 1 (Ping)",
        &wire,
        "00290385444790519049ba13fcf339ef2e434ca98ed802a5bb30a4bcfd220d3ab527d8cf8be9cfa3de6d29",
    );

    // The responder rekeys after every record: Pong, REKEY, Pong, REKEY.
    let policy = RekeyPolicy {
        after_messages: 1,
        after_bytes: u64::MAX,
    };
    let mut responder = FrameCodec::new(t.responder, PRE_VERSION_MAX_FRAME_LEN, policy);
    let pong = encode_message(&Message::Pong(Pong {
        nonce: 0x0102_0304_0506_0708,
        timestamp_ms: 1_700_000_000_250,
    }))
    .unwrap();
    let mut back = BytesMut::new();
    Encoder::<&[u8]>::encode(&mut responder, &pong, &mut back).unwrap();
    Encoder::<&[u8]>::encode(&mut responder, &pong, &mut back).unwrap();
    check("responder records (Pong, REKEY, Pong, REKEY)", &back, "0029e53078ac8739f346d0a30547dd254d14ca09a27b87155687312b07600472375aeb86b22de3c42a96630011037a27c1cb40a839650be056ade4245c3000298b889a21ded8f7b244fe212f5ec1c99fa1f2aaaa2ea568c1fd5fa4e0c32183a0fc3dc23ea258397ac50011f6dd50408232bbb29bcbef0861d189a651");

    let ping_wire = wire.to_vec();
    let pong_wire = back.to_vec();

    // The receivers decode them.
    assert_eq!(
        &responder.decode(&mut wire).unwrap().unwrap()[..],
        &ping[..]
    );
    assert_eq!(
        &initiator.decode(&mut back).unwrap().unwrap()[..],
        &pong[..]
    );
    assert_eq!(
        &initiator.decode(&mut back).unwrap().unwrap()[..],
        &pong[..]
    );
    assert!(initiator.decode(&mut back).unwrap().is_none());
    assert_eq!(initiator.rekeys_received(), 2);

    // A second, identical run framed by the document's rules alone gives
    // the same bytes, also for a frame split over several records.
    let mut t2 = run_fixed_handshake();
    assert_eq!(frame_to_records(&mut t2.initiator, &ping, false), ping_wire);
    let mut hand = frame_to_records(&mut t2.responder, &pong, true);
    hand.extend(frame_to_records(&mut t2.responder, &pong, true));
    assert_eq!(hand, pong_wire);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let hand_big = frame_to_records(&mut t2.initiator, &big, false);
    let mut big_wire = BytesMut::new();
    Encoder::<&[u8]>::encode(&mut initiator, &big, &mut big_wire).unwrap();
    assert_eq!(hand_big, &big_wire[..]);
    // 65,514 + 65,518 + 65,518 + 3,450 bytes in 4 records.
    assert_eq!(hand_big.len(), 200_000 + 4 + 4 * (2 + 1 + 16));
    responder.set_max_frame_len(DEFAULT_MAX_FRAME_LEN);
    assert_eq!(
        &responder.decode(&mut big_wire).unwrap().unwrap()[..],
        &big[..]
    );
}

// ---------------------------------------------------------------------------
// Interoperability: a client written from the document against a real node.
// ---------------------------------------------------------------------------

/// A minimal client that follows `docs/PROTOCOL.md`: snow for Noise, the
/// record layer written out by hand, and the library only for bincode.
struct SpecClient {
    stream: TcpStream,
    noise: snow::TransportState,
    identity: NodeIdentity,
    server_id: NodeId,
}

async fn write_handshake_message(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(&length_prefixed(message)).await.unwrap();
}

async fn read_handshake_message(stream: &mut TcpStream) -> Vec<u8> {
    let len = usize::from(stream.read_u16().await.unwrap());
    assert!(len <= MAX_HANDSHAKE_MESSAGE_LEN);
    let mut message = vec![0u8; len];
    stream.read_exact(&mut message).await.unwrap();
    message
}

impl SpecClient {
    async fn connect(addr: SocketAddr) -> SpecClient {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let identity = NodeIdentity::generate();
        let params: snow::params::NoiseParams = NOISE_PROTOCOL_NAME.parse().unwrap();
        let keypair = snow::Builder::new(params.clone())
            .generate_keypair()
            .unwrap();
        let prologue = prologue(Network::Devnet.magic());
        let mut noise = snow::Builder::new(params)
            .local_private_key(&keypair.private)
            .unwrap()
            .prologue(&prologue)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut buf = [0u8; 1024];
        let mut payload = [0u8; 1024];
        // -> e
        let n = noise.write_message(&[], &mut buf).unwrap();
        write_handshake_message(&mut stream, &buf[..n]).await;
        // <- e, ee, s, es + responder identity
        let m2 = read_handshake_message(&mut stream).await;
        let p = noise.read_message(&m2, &mut payload).unwrap();
        let server_id = verify_identity_payload(&payload[..p], noise.get_remote_static().unwrap());
        // -> s, se + initiator identity
        let mut ours = vec![1u8];
        ours.extend_from_slice(identity.public_key().as_bytes());
        ours.extend_from_slice(
            &identity
                .sign(&identity_signed_bytes(&keypair.public))
                .to_bytes(),
        );
        let n = noise.write_message(&ours, &mut buf).unwrap();
        write_handshake_message(&mut stream, &buf[..n]).await;
        SpecClient {
            stream,
            noise: noise.into_transport_mode().unwrap(),
            identity,
            server_id,
        }
    }

    /// Sends one message, rotating the sending key after every record.
    async fn send(&mut self, message: &Message) {
        let frame = encode_message(message).unwrap();
        let wire = frame_to_records(&mut self.noise, &frame, true);
        self.stream.write_all(&wire).await.unwrap();
    }

    /// Reads records until a frame completes; `None` on a clean close.
    async fn receive(&mut self) -> Option<Message> {
        let mut frame: Option<(usize, Vec<u8>)> = None;
        loop {
            let len = match self.stream.read_u16().await {
                Ok(len) => usize::from(len),
                Err(_) if frame.is_none() => return None,
                Err(e) => panic!("closed inside a frame: {e}"),
            };
            assert!(len > 16);
            let mut ciphertext = vec![0u8; len];
            self.stream.read_exact(&mut ciphertext).await.unwrap();
            let mut record = vec![0u8; len];
            let n = self.noise.read_message(&ciphertext, &mut record).unwrap();
            let (kind, body) = record[..n].split_first().unwrap();
            match (*kind, frame.as_mut()) {
                (0x03, _) => {
                    assert!(body.is_empty());
                    self.noise.rekey_incoming();
                }
                (0x01, None) => {
                    let total = u32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
                    assert!((1..=DEFAULT_MAX_FRAME_LEN).contains(&total));
                    frame = Some((total, body[4..].to_vec()));
                }
                (0x02, Some((_, buf))) => {
                    assert!(!body.is_empty());
                    buf.extend_from_slice(body);
                }
                (kind, _) => panic!("framing violation: record type {kind}"),
            }
            if let Some((total, buf)) = &frame {
                assert!(buf.len() <= *total);
                if buf.len() == *total {
                    return Some(decode_message(buf).unwrap());
                }
            }
        }
    }

    fn version(&self, genesis_hash: [u8; 32]) -> Message {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        Message::Version(Version {
            magic: *b"TDEV",
            protocol_version: 2,
            network: "devnet".into(),
            genesis_hash,
            node_id: NodeId(blake3::derive_key(
                "timed v1 node id",
                self.identity.public_key().as_bytes(),
            )),
            listen_addr: None,
            capabilities: 0,
            user_agent: "/spec-client:0/".into(),
            best_height: 0,
            timestamp: now,
        })
    }
}

async fn start_node() -> (Node, tokio::sync::broadcast::Receiver<NetworkEvent>) {
    let mut handshake = HandshakeConfig::new(VersionParams::new(Network::Devnet));
    // The node rotates its key after every record, so the client's REKEY
    // handling is exercised too.
    handshake.rekey = RekeyPolicy {
        after_messages: 1,
        after_bytes: u64::MAX,
    };
    let config = NetworkConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), handshake);
    let node = Node::start(&NodeIdentity::generate(), config, None)
        .await
        .unwrap();
    let events = node.subscribe();
    (node, events)
}

async fn next_event<T>(
    events: &mut tokio::sync::broadcast::Receiver<NetworkEvent>,
    mut pick: impl FnMut(&NetworkEvent) -> Option<T>,
) -> T {
    loop {
        if let Some(t) = pick(&events.recv().await.unwrap()) {
            return t;
        }
    }
}

#[tokio::test]
async fn a_client_written_from_the_document_talks_to_a_node() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let (node, mut events) = start_node().await;
        let mut client = SpecClient::connect(node.local_addr()).await;
        assert_eq!(client.server_id, node.node_id());

        // Both sides send Version first.
        client
            .send(&client.version(Network::Devnet.default_genesis_hash()))
            .await;
        let Some(Message::Version(v)) = client.receive().await else {
            panic!("expected the node's Version first");
        };
        assert_eq!(v.magic, *b"TDEV");
        assert_eq!(v.network, "devnet");
        assert_eq!(v.node_id, client.server_id);
        assert_eq!(v.genesis_hash, Network::Devnet.default_genesis_hash());
        next_event(&mut events, |e| {
            matches!(e, NetworkEvent::Connected(_)).then_some(())
        })
        .await;

        // The node pings at once; we ping it too, and answer its ping.
        client
            .send(&Message::Ping(Ping {
                nonce: 77,
                timestamp_ms: 0,
            }))
            .await;
        let (mut pinged, mut ponged) = (false, false);
        while !(pinged && ponged) {
            match client.receive().await.unwrap() {
                Message::Ping(p) => {
                    client
                        .send(&Message::Pong(Pong {
                            nonce: p.nonce,
                            timestamp_ms: 0,
                        }))
                        .await;
                    pinged = true;
                }
                Message::Pong(p) => {
                    assert_eq!(p.nonce, 77);
                    ponged = true;
                }
                // The node's signed record of itself (section 9.4).
                Message::Gossip(e) if e.kind == GossipKind::Address => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        next_event(&mut events, |e| {
            matches!(e, NetworkEvent::Connection(ConnectionEvent::Pong { .. })).then_some(())
        })
        .await;

        // A frame split over several records (an envelope that passes the
        // node's middleware and reaches its block handler), then a goodbye.
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let env = Envelope::sign(
            &client.identity,
            *b"TDEV",
            GossipKind::Block,
            now_ms,
            vec![0xab; 150_000],
        );
        client.send(&Message::Gossip(env.clone())).await;
        let (kind, from) = next_event(&mut events, |e| match e {
            NetworkEvent::Delivered { id, kind, from } if *id == env.id() => Some((*kind, *from)),
            _ => None,
        })
        .await;
        assert_eq!(kind, GossipKind::Block);
        assert_eq!(from, client.identity.node_id());
        client
            .send(&Message::Disconnect(Disconnect {
                reason: DisconnectReason::Shutdown,
                detail: String::new(),
            }))
            .await;
        let error = next_event(&mut events, |e| match e {
            NetworkEvent::Disconnected { error, .. } => Some(error.clone()),
            _ => None,
        })
        .await;
        assert!(
            matches!(
                *error,
                ConnectionError::PeerDisconnected {
                    reason: DisconnectReason::Shutdown,
                    ..
                }
            ),
            "{error}"
        );
        assert!(client.receive().await.is_none());
        node.shutdown();
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_refused_version_is_answered_with_disconnect() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let (node, _events) = start_node().await;
        let mut client = SpecClient::connect(node.local_addr()).await;
        client.send(&client.version([0x99; 32])).await;
        let Some(Message::Version(_)) = client.receive().await else {
            panic!("expected the node's Version first");
        };
        let Some(Message::Disconnect(d)) = client.receive().await else {
            panic!("expected a Disconnect");
        };
        assert_eq!(d.reason, DisconnectReason::IncompatibleVersion);
        assert!(d.detail.contains("genesis"), "{}", d.detail);
        assert!(client.receive().await.is_none());
        node.shutdown();
    })
    .await
    .unwrap();
}

#[test]
fn chain_messages() {
    use timed::protocol::message::{Blocks, GetBlocks};
    let get = Message::GetBlocks(GetBlocks {
        start: 5,
        count: 500,
    });
    let bytes = encode_message(&get).unwrap();
    assert_eq!(hex::encode(&bytes), "070000000500000000000000f4010000");
    assert_eq!(decode_message(&bytes).unwrap(), get);
    let empty = Message::Blocks(Blocks {
        tip_height: 7,
        blocks: vec![],
    });
    assert_eq!(
        hex::encode(encode_message(&empty).unwrap()),
        "0800000007000000000000000000000000000000"
    );
    let one = Message::Blocks(Blocks {
        tip_height: 1,
        blocks: vec![serde_bytes::ByteBuf::from(vec![0xaa; 416])],
    });
    let bytes = encode_message(&one).unwrap();
    assert_eq!(bytes.len(), 444);
    assert_eq!(
        hex::encode(&bytes[..28]),
        "08000000010000000000000001000000000000000a00100000000000".replace("0a001000", "a0010000")
    );
    assert_eq!(
        hex::encode(encode_message(&Message::GetMempool).unwrap()),
        "09000000"
    );
    assert_eq!(
        hex::encode(encode_message(&Message::Mempool(vec![])).unwrap()),
        "0a0000000000000000000000"
    );
    // Limits: more than 500 blocks asked for is refused.
    let too_many = unhex("07000000050000000000000000f5010000");
    assert!(decode_message(&too_many).is_err());
}

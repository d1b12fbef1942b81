//! Bad input over real loopback TCP, one test per case.
//!
//! Each case pins its outcome: the node reports a typed error (by its stable
//! `kind()`), closes the connection, writes a log line with structured fields
//! (`peer.addr`, `conn.id`, `direction`, `error.kind`), does not panic, and
//! keeps serving honest peers, proved in the same test by a fresh node that
//! connects and gets a pong back. Every server runs on its own 127.0.0.x
//! address; attackers and honest peers dial from other addresses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use timed::constants::{DEFAULT_MAX_FRAME_LEN, NOISE_PROTOCOL_NAME};
use timed::crypto::NodeIdentity;
use timed::network::{NetworkEvent, PeerTarget};
use timed::params::Network;
use timed::protocol::codec::encode_message;
use timed::protocol::{Message, Ping, VersionParams};
use timed::transport::frame::RECORD_FRAME_START;
use timed::transport::noise::{identity_signed_bytes, prologue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEVNET: [u8; 4] = *b"TDEV";

/// Asserts the captured log has a line for this failure kind with the
/// connection's structured fields.
fn assert_logged(logs: &LogBuffer, kind: &str) {
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains(&format!("error.kind=\"{kind}\"")))
        .unwrap_or_else(|| panic!("no log line with error.kind={kind:?} in:\n{text}"));
    for field in ["conn.id=", "peer.addr=", "direction="] {
        assert!(line.contains(field), "log line lacks {field}: {line}");
    }
}

#[tokio::test]
async fn garbage_before_the_handshake() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let (server, _) = start(config([127, 0, 1, 1])).await;
    let mut events = server.subscribe();

    // An HTTP request: its first two bytes announce an 18,245-byte message.
    let mut s = dial_from([127, 0, 1, 101], server.local_addr()).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (kind, text) = handshake_failure(&mut events).await;
    assert_eq!(kind, "message_too_large", "{text}");
    assert!(text.contains("18245"), "{text}");
    assert_closed(&mut s).await;

    // A well-sized but random message 3: Noise authentication fails.
    let mut s = dial_from([127, 0, 1, 101], server.local_addr()).await;
    let mut msg1 = vec![0u8, 32];
    msg1.extend_from_slice(&[7u8; 32]);
    s.write_all(&msg1).await.unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut msg2 = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg2).await.unwrap();
    let mut msg3 = vec![0u8, 161];
    msg3.extend_from_slice(&[0x5a; 161]);
    s.write_all(&msg3).await.unwrap();
    let (kind, text) = handshake_failure(&mut events).await;
    assert_eq!(kind, "noise_rejected", "{text}");
    assert_closed(&mut s).await;

    assert_logged(&logs, "message_too_large");
    assert_logged(&logs, "noise_rejected");
    assert_serves(&server, [127, 0, 1, 102]).await;
}

#[tokio::test]
async fn truncated_handshake() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let (server, _) = start(config([127, 0, 1, 2])).await;
    let mut events = server.subscribe();
    let mut s = dial_from([127, 0, 1, 101], server.local_addr()).await;
    // Announce 32 bytes, send 10, close our side.
    s.write_all(&[0, 32, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let (kind, text) = handshake_failure(&mut events).await;
    assert_eq!(kind, "truncated", "{text}");
    assert_closed(&mut s).await;
    assert_logged(&logs, "truncated");
    assert_serves(&server, [127, 0, 1, 102]).await;
}

#[tokio::test]
async fn stalled_handshake_one_byte_per_second() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let mut cfg = config([127, 0, 1, 3]);
    cfg.handshake.timeout = Duration::from_secs(2);
    let (server, _) = start(cfg).await;
    let mut events = server.subscribe();
    let mut s = dial_from([127, 0, 1, 101], server.local_addr()).await;
    let drip = tokio::spawn(async move {
        // A valid length prefix and then one byte per second, for at most
        // 60 s (the handshake would need 32): the drip itself is what is
        // tested. Returns whether a write failed, i.e. the server cut it
        // off before the bytes ran out.
        for byte in [0u8, 32].into_iter().chain(std::iter::repeat_n(1u8, 58)) {
            if s.write_all(&[byte]).await.is_err() {
                return (s, true);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        (s, false)
    });
    // The outcome: the handshake deadline (2 s) ended it, as a timeout, and
    // the server closed the socket while the client was still dripping.
    let (kind, text) = handshake_failure(&mut events).await;
    assert_eq!(kind, "timeout", "{text}");
    let (mut s, cut_off) = drip.await.unwrap();
    assert!(cut_off, "the server let the drip run to its end");
    assert_closed(&mut s).await;
    assert_logged(&logs, "timeout");
    assert_serves(&server, [127, 0, 1, 102]).await;
}

#[tokio::test]
async fn wrong_network_magic_fails_the_noise_prologue() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let (server, _) = start(config([127, 0, 1, 4])).await;
    let mut events = server.subscribe();
    let mut cfg = config([127, 0, 1, 104]);
    cfg.handshake.version = VersionParams::new(Network::Testnet);
    let (client, _) = start(cfg).await;
    let err = client
        .connect(&PeerTarget {
            addr: server.local_addr(),
            node_id: None,
        })
        .await
        .unwrap_err();
    // The dialer cannot authenticate the responder's message 2 ...
    assert_eq!(err.kind(), "noise_rejected", "{err}");
    // ... and the responder sees the dialer give up mid-handshake.
    let (kind, text) = handshake_failure(&mut events).await;
    assert_eq!(kind, "truncated", "{text}");
    assert_logged(&logs, "noise_rejected");
    client.shutdown();
    assert_serves(&server, [127, 0, 1, 102]).await;
}

/// Writes a 2-byte-length-prefixed handshake message.
async fn write_hs(s: &mut tokio::net::TcpStream, msg: &[u8]) {
    let mut out = (msg.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    s.write_all(&out).await.unwrap();
}

/// Reads a 2-byte-length-prefixed handshake message.
async fn read_hs(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg).await.unwrap();
    msg
}

#[tokio::test]
async fn forged_identity_signature() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let (server, _) = start(config([127, 0, 1, 5])).await;
    let mut events = server.subscribe();

    // A hand-driven Noise initiator whose identity signs another static key.
    let params: snow::params::NoiseParams = NOISE_PROTOCOL_NAME.parse().unwrap();
    let ours = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let other = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let prologue = prologue(DEVNET);
    let mut hs = snow::Builder::new(params)
        .local_private_key(&ours.private)
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .build_initiator()
        .unwrap();
    let identity = NodeIdentity::generate();
    let mut payload = vec![1u8];
    payload.extend_from_slice(identity.public_key().as_bytes());
    payload.extend_from_slice(
        &identity
            .sign(&identity_signed_bytes(&other.public))
            .to_bytes(),
    );

    let mut s = dial_from([127, 0, 1, 101], server.local_addr()).await;
    let mut buf = [0u8; 1024];
    let n = hs.write_message(&[], &mut buf).unwrap();
    write_hs(&mut s, &buf[..n]).await;
    let msg2 = read_hs(&mut s).await;
    let mut out = [0u8; 1024];
    hs.read_message(&msg2, &mut out).unwrap();
    let n = hs.write_message(&payload, &mut buf).unwrap();
    write_hs(&mut s, &buf[..n]).await;

    let (kind, text) = handshake_failure(&mut events).await;
    assert_eq!(kind, "forged_identity", "{text}");
    assert_closed(&mut s).await;
    assert_logged(&logs, "forged_identity");
    assert_serves(&server, [127, 0, 1, 102]).await;
}

#[tokio::test]
async fn dialed_node_id_does_not_match() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let (server, _) = start(config([127, 0, 1, 6])).await;
    let mut events = server.subscribe();
    let (client, _) = start(config([127, 0, 1, 106])).await;
    let wanted = NodeIdentity::generate().node_id();
    let err = client
        .connect(&PeerTarget {
            addr: server.local_addr(),
            node_id: Some(wanted),
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "unexpected_node_id", "{err}");
    assert!(err.to_string().contains(&wanted.to_string()));
    // The dialer aborts before revealing its identity in message 3.
    let (kind, _) = handshake_failure(&mut events).await;
    assert_eq!(kind, "truncated");
    assert_logged(&logs, "unexpected_node_id");
    client.shutdown();
    assert_serves(&server, [127, 0, 1, 102]).await;
}

#[tokio::test]
async fn self_connection_is_refused() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let (server, _) = start(config([127, 0, 1, 7])).await;
    let mut events = server.subscribe();
    let err = server
        .connect(&PeerTarget {
            addr: server.local_addr(),
            node_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "self_connection", "{err}");
    // Both halves of the attempt fail; neither becomes a peer.
    let mut kinds = vec![
        handshake_failure(&mut events).await.0,
        handshake_failure(&mut events).await.0,
    ];
    kinds.sort();
    assert_eq!(kinds, ["self_connection", "truncated"]);
    assert_logged(&logs, "self_connection");
    assert_serves(&server, [127, 0, 1, 102]).await;
}

/// An attacker that completed Noise and the version exchange with `server`.
async fn established_attacker(server: &timed::app::Node) -> RawSession {
    let mut raw = RawSession::open([127, 0, 1, 101], server.local_addr(), DEVNET).await;
    let version = VersionParams::new(Network::Devnet).build(raw.identity.node_id(), 0);
    let frame = encode_message(&Message::Version(version)).unwrap();
    raw.send_frame(&frame).await;
    raw
}

/// Waits until the server lists the attacker as connected.
async fn wait_connected(events: &mut tokio::sync::broadcast::Receiver<NetworkEvent>) {
    wait_for(events, |e| {
        matches!(e, NetworkEvent::Connected(_)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn frame_over_the_limit_is_refused_at_its_header() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let (server, _) = start(config([127, 0, 1, 8])).await;
    let mut events = server.subscribe();
    let mut raw = established_attacker(&server).await;
    wait_connected(&mut events).await;
    // Only the header of a 4 MiB + 1 frame: the server must refuse it
    // without waiting for (or allocating) the body.
    let claimed = (DEFAULT_MAX_FRAME_LEN as u32 + 1).to_be_bytes();
    let record = raw.encode_record(RECORD_FRAME_START, &claimed, &[0u8; 16]);
    raw.stream.write_all(&record).await.unwrap();
    let (kind, text) = disconnection(&mut events).await;
    assert_eq!(kind, "frame_too_large", "{text}");
    assert!(
        text.contains(&(DEFAULT_MAX_FRAME_LEN + 1).to_string()),
        "{text}"
    );
    assert_closed(&mut raw.stream).await;
    assert_logged(&logs, "frame_too_large");
    assert_serves(&server, [127, 0, 1, 102]).await;
}

#[tokio::test]
async fn frame_over_the_pre_version_limit_is_refused() {
    let (server, _) = start(config([127, 0, 1, 9])).await;
    let mut events = server.subscribe();
    let mut raw = RawSession::open([127, 0, 1, 101], server.local_addr(), DEVNET).await;
    // Before the version exchange only 4 KiB frames are allowed.
    raw.send_frame(&[0u8; 5000]).await;
    let (kind, text) = handshake_failure(&mut events).await;
    assert_eq!(kind, "frame_too_large", "{text}");
    assert_closed(&mut raw.stream).await;
    assert_serves(&server, [127, 0, 1, 102]).await;
}

#[tokio::test]
async fn length_prefixes_that_lie() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let (server, _) = start(config([127, 0, 1, 10])).await;
    let mut events = server.subscribe();

    // 1. A frame header announcing 100 bytes followed by another frame start.
    let mut raw = established_attacker(&server).await;
    wait_connected(&mut events).await;
    let mut bytes = raw.encode_record(RECORD_FRAME_START, &100u32.to_be_bytes(), b"short");
    bytes.extend_from_slice(&raw.encode_record(RECORD_FRAME_START, &4u32.to_be_bytes(), b"next"));
    raw.stream.write_all(&bytes).await.unwrap();
    let (kind, text) = disconnection(&mut events).await;
    assert_eq!(kind, "framing", "{text}");
    assert_closed(&mut raw.stream).await;

    // 2. A Noise length prefix announcing 65,535 bytes, 100 sent, then EOF.
    let mut raw = established_attacker(&server).await;
    wait_connected(&mut events).await;
    let mut bytes = vec![0xff, 0xff];
    bytes.extend_from_slice(&[0u8; 100]);
    raw.stream.write_all(&bytes).await.unwrap();
    raw.stream.shutdown().await.unwrap();
    let (kind, text) = disconnection(&mut events).await;
    assert_eq!(kind, "truncated", "{text}");
    assert_closed(&mut raw.stream).await;

    // 3. A Noise length prefix shorter than the tag.
    let mut raw = established_attacker(&server).await;
    wait_connected(&mut events).await;
    raw.stream.write_all(&[0, 5, 1, 2, 3, 4, 5]).await.unwrap();
    let (kind, text) = disconnection(&mut events).await;
    assert_eq!(kind, "short_message", "{text}");
    assert_closed(&mut raw.stream).await;

    assert_logged(&logs, "framing");
    assert_logged(&logs, "truncated");
    assert_serves(&server, [127, 0, 1, 102]).await;
}

fn ping_frame() -> Vec<u8> {
    encode_message(&Message::Ping(Ping {
        nonce: 42,
        timestamp_ms: 0,
    }))
    .unwrap()
}

#[tokio::test]
async fn flipped_ciphertext_bit() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let (server, _) = start(config([127, 0, 1, 11])).await;
    let mut events = server.subscribe();
    let mut raw = established_attacker(&server).await;
    wait_connected(&mut events).await;
    let mut bytes = raw.encode_frame(&ping_frame());
    let last = bytes.len() - 20;
    bytes[last] ^= 0x04;
    raw.stream.write_all(&bytes).await.unwrap();
    let (kind, text) = disconnection(&mut events).await;
    assert_eq!(kind, "decrypt", "{text}");
    assert_closed(&mut raw.stream).await;
    assert_logged(&logs, "decrypt");
    assert_serves(&server, [127, 0, 1, 102]).await;
}

#[tokio::test]
async fn replayed_ciphertext_frame() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let (server, _) = start(config([127, 0, 1, 12])).await;
    let mut events = server.subscribe();
    let mut raw = established_attacker(&server).await;
    wait_connected(&mut events).await;
    let bytes = raw.encode_frame(&ping_frame());
    raw.stream.write_all(&bytes).await.unwrap();
    raw.stream.write_all(&bytes).await.unwrap();
    let (kind, text) = disconnection(&mut events).await;
    assert_eq!(kind, "decrypt", "{text}");
    assert_closed(&mut raw.stream).await;
    assert_logged(&logs, "decrypt");
    assert_serves(&server, [127, 0, 1, 102]).await;
}

#[tokio::test]
async fn wrong_protocol_version_network_or_genesis() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let (server, _) = start(config([127, 0, 1, 13])).await;
    let mut events = server.subscribe();
    type Tweak = fn(&mut timed::protocol::Version);
    let cases: [(&str, Tweak); 4] = [
        ("unsupported_protocol_version", |v| v.protocol_version = 0),
        ("wrong_network", |v| v.network = "testnet".into()),
        ("wrong_genesis", |v| v.genesis_hash = [0xee; 32]),
        ("node_id_mismatch", |v| v.node_id.0[0] ^= 1),
    ];
    for (expected, tweak) in cases {
        let mut raw = RawSession::open([127, 0, 1, 101], server.local_addr(), DEVNET).await;
        let mut version = VersionParams::new(Network::Devnet).build(raw.identity.node_id(), 0);
        tweak(&mut version);
        raw.send_frame(&encode_message(&Message::Version(version)).unwrap())
            .await;
        let (kind, text) = handshake_failure(&mut events).await;
        assert_eq!(kind, expected, "{text}");
        assert_closed(&mut raw.stream).await;
        assert_logged(&logs, expected);
    }
    assert_serves(&server, [127, 0, 1, 102]).await;
}

#[tokio::test]
async fn undecodable_bytes() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let (server, _) = start(config([127, 0, 1, 14])).await;
    let mut events = server.subscribe();

    // Before the version exchange: a Version tag followed by junk.
    let mut raw = RawSession::open([127, 0, 1, 101], server.local_addr(), DEVNET).await;
    raw.send_frame(&[0, 0, 0, 0, 1, 2, 3]).await;
    let (kind, text) = handshake_failure(&mut events).await;
    assert_eq!(kind, "malformed", "{text}");
    assert_closed(&mut raw.stream).await;

    // After it: a Ping tag with a truncated body.
    let mut raw = established_attacker(&server).await;
    wait_connected(&mut events).await;
    raw.send_frame(&[1, 0, 0, 0, 0xff]).await;
    let (kind, text) = disconnection(&mut events).await;
    assert_eq!(kind, "malformed", "{text}");
    assert_closed(&mut raw.stream).await;

    // A valid Ping with a trailing byte.
    let mut raw = established_attacker(&server).await;
    wait_connected(&mut events).await;
    let mut frame = ping_frame();
    frame.push(0);
    raw.send_frame(&frame).await;
    let (kind, text) = disconnection(&mut events).await;
    assert_eq!(kind, "trailing_bytes", "{text}");
    assert_closed(&mut raw.stream).await;

    assert_logged(&logs, "malformed");
    assert_serves(&server, [127, 0, 1, 102]).await;
}

#[tokio::test]
async fn unknown_enum_variant() {
    let logs = LogBuffer::default();
    let _guard = logs.install();
    let (server, _) = start(config([127, 0, 1, 15])).await;
    let mut events = server.subscribe();
    let mut raw = established_attacker(&server).await;
    wait_connected(&mut events).await;
    raw.send_frame(&[99, 0, 0, 0, 1, 2, 3, 4]).await;
    let (kind, text) = disconnection(&mut events).await;
    assert_eq!(kind, "unknown_variant", "{text}");
    assert!(text.contains("99"), "{text}");
    assert_closed(&mut raw.stream).await;
    assert_logged(&logs, "unknown_variant");
    assert_serves(&server, [127, 0, 1, 102]).await;
}

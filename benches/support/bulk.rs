//! Encrypted bulk transfer over loopback, shared by `benches/transport.rs`
//! and `benches/chain.rs` (so the sync bench compares against exactly the
//! transport bench's measurement).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

use timed::constants::DEFAULT_MAX_FRAME_LEN;
use timed::crypto::NodeIdentity;
use timed::transport::noise::{handshake, CryptoBackend, LocalKeys};
use timed::transport::{FrameCodec, RekeyPolicy};

/// One bulk message: 1 MiB.
pub const MSG_LEN: usize = 1 << 20;
/// The network magic of the bulk sessions.
pub const MAGIC: [u8; 4] = *b"TDEV";

/// A connected loopback TCP pair (dialer, acceptor).
pub async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (dialed, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let dialed = dialed.unwrap();
    let accepted = accepted.unwrap().0;
    dialed.set_nodelay(true).unwrap();
    accepted.set_nodelay(true).unwrap();
    (dialed, accepted)
}

/// An encrypted framed stream.
pub type FramedNoise = Framed<TcpStream, FrameCodec>;

/// A connected pair of encrypted framed streams over loopback TCP
/// (initiator, responder), both with `backend`.
pub async fn noise_pair(backend: CryptoBackend) -> (FramedNoise, FramedNoise) {
    let (mut dialed, mut accepted) = tcp_pair().await;
    let a = LocalKeys::new(&NodeIdentity::generate(), backend).unwrap();
    let b = LocalKeys::new(&NodeIdentity::generate(), backend).unwrap();
    let (ra, rb) = tokio::join!(
        handshake(&mut dialed, &a, MAGIC, true, None),
        handshake(&mut accepted, &b, MAGIC, false, None)
    );
    let codec = |session| FrameCodec::new(session, DEFAULT_MAX_FRAME_LEN, RekeyPolicy::default());
    (
        Framed::new(dialed, codec(ra.unwrap().0)),
        Framed::new(accepted, codec(rb.unwrap().0)),
    )
}

/// `n` messages of [`MSG_LEN`] bytes from `tx` to `rx`, timed from the
/// first write until the receiver read them all.
pub async fn noise_round(
    mut tx: FramedNoise,
    mut rx: FramedNoise,
    payload: Bytes,
    n: u64,
) -> (FramedNoise, FramedNoise, Duration) {
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..n {
            tx.send(payload.clone()).await.unwrap();
        }
        tx
    });
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            let frame = rx.next().await.unwrap().unwrap();
            assert_eq!(frame.len(), MSG_LEN);
        }
        let elapsed = start.elapsed();
        (rx, elapsed)
    });
    let tx = writer.await.unwrap();
    let (rx, elapsed) = reader.await.unwrap();
    (tx, rx, elapsed)
}

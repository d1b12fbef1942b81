//! Helpers shared by the integration tests: real nodes on loopback addresses,
//! event waits with deadlines, raw attacker sessions and log capture; real
//! `timed` processes in [`procs`], seed chains built in-process in
//! [`chains`].
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

pub mod chains;
pub mod procs;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use timed::app::Node;
use timed::crypto::{NodeId, NodeIdentity};
use timed::layers::LayerCounters;
use timed::network::{NetworkConfig, NetworkEvent, PeerTarget};
use timed::params::Network;
use timed::peer::{ConnectionEvent, HandshakeConfig};
use timed::protocol::codec::encode_message;
use timed::protocol::{Message, MessageCodec, VersionParams};
use timed::transport::noise::{self, LocalKeys};
use timed::transport::{CryptoBackend, FrameCodec, RekeyPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::broadcast;

/// Upper bound for any single wait in these tests: an event that has not
/// come by then is not coming. Generous, so that a machine busy with other
/// work never fails a test that waits for something that does happen.
pub const WAIT: Duration = Duration::from_secs(30);

/// A node config listening on `ip:0` for the devnet.
pub fn config(ip: [u8; 4]) -> NetworkConfig {
    NetworkConfig::new(
        SocketAddr::from((ip, 0)),
        HandshakeConfig::new(VersionParams::new(Network::Devnet)),
    )
}

/// Starts a node with a fresh identity.
pub async fn start(config: NetworkConfig) -> (Node, NodeIdentity) {
    let identity = NodeIdentity::generate();
    let node = Node::start(&identity, config, None).await.unwrap();
    (node, identity)
}

/// Waits for the first event matching `pred`, returning what it maps to.
pub async fn wait_for<T>(
    rx: &mut broadcast::Receiver<NetworkEvent>,
    mut pred: impl FnMut(&NetworkEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Ok(event) => {
                    if let Some(t) = pred(&event) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("event channel closed: {e}"),
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}

/// Waits for the next handshake failure and returns its kind and text.
pub async fn handshake_failure(rx: &mut broadcast::Receiver<NetworkEvent>) -> (String, String) {
    wait_for(rx, |e| match e {
        NetworkEvent::HandshakeFailed { error, .. } => {
            Some((error.kind().to_owned(), error.to_string()))
        }
        _ => None,
    })
    .await
}

/// Waits for the next disconnection and returns its kind and text.
pub async fn disconnection(rx: &mut broadcast::Receiver<NetworkEvent>) -> (String, String) {
    wait_for(rx, |e| match e {
        NetworkEvent::Disconnected { error, .. } => {
            Some((error.kind().to_owned(), error.to_string()))
        }
        _ => None,
    })
    .await
}

/// Proves `server` still serves: a fresh honest node from `client_ip`
/// connects, completes the handshake and gets a pong back.
pub async fn assert_serves(server: &Node, client_ip: [u8; 4]) {
    let (client, _) = start(config(client_ip)).await;
    let mut rx = client.subscribe();
    let target = PeerTarget {
        addr: server.local_addr(),
        node_id: Some(server.node_id()),
    };
    let info = client
        .connect(&target)
        .await
        .expect("honest peer must connect");
    assert_eq!(info.node_id, server.node_id());
    wait_for(&mut rx, |e| match e {
        NetworkEvent::Connection(ConnectionEvent::Pong { .. }) => Some(()),
        _ => None,
    })
    .await;
    client.shutdown();
}

/// A TCP connection from a chosen source IP.
pub async fn dial_from(src_ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((src_ip, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Asserts the peer closes `stream` (EOF or reset) within the wait bound,
/// discarding whatever it sends first.
pub async fn assert_closed(stream: &mut TcpStream) {
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .expect("server did not close the connection");
}

/// A raw attacker session: a completed Noise handshake and nothing else,
/// with a message codec to craft frames by hand.
pub struct RawSession {
    pub stream: TcpStream,
    pub codec: MessageCodec,
    pub identity: NodeIdentity,
    /// Bytes read from the server and not decoded yet (see [`RawSession::recv`]).
    pub read_buf: BytesMut,
}

impl RawSession {
    /// Dials `to` from `src_ip` and completes the Noise handshake only.
    pub async fn open(src_ip: [u8; 4], to: SocketAddr, magic: [u8; 4]) -> Self {
        Self::open_with(NodeIdentity::generate(), src_ip, to, magic).await
    }

    /// Like [`RawSession::open`], as a fixed `identity` (to reconnect as the
    /// same node id).
    pub async fn open_with(
        identity: NodeIdentity,
        src_ip: [u8; 4],
        to: SocketAddr,
        magic: [u8; 4],
    ) -> Self {
        let keys = LocalKeys::new(&identity, CryptoBackend::default()).unwrap();
        let mut stream = dial_from(src_ip, to).await;
        let (session, _) = noise::handshake(&mut stream, &keys, magic, true, None)
            .await
            .unwrap();
        let codec = MessageCodec::new(FrameCodec::new(session, usize::MAX, RekeyPolicy::default()));
        RawSession {
            stream,
            codec,
            identity,
            read_buf: BytesMut::new(),
        }
    }

    /// Opens a session as `identity` and completes the devnet version
    /// exchange: sends our `Version`, reads the server's.
    pub async fn established_with(identity: NodeIdentity, src_ip: [u8; 4], to: SocketAddr) -> Self {
        let mut raw = Self::open_with(identity, src_ip, to, Network::Devnet.magic()).await;
        let version = VersionParams::new(Network::Devnet).build(raw.identity.node_id(), 0);
        raw.send(&Message::Version(version)).await;
        match raw.recv().await {
            Some(Message::Version(_)) => {}
            other => panic!("expected the server's Version, got {other:?}"),
        }
        raw
    }

    /// Encodes `message` as one frame and writes it.
    pub async fn send(&mut self, message: &Message) {
        let frame = encode_message(message).unwrap();
        self.send_frame(&frame).await;
    }

    /// The next message from the server; `None` once the connection ended
    /// (EOF, reset, or bytes that do not decode). Panics after [`WAIT`].
    pub async fn recv(&mut self) -> Option<Message> {
        use tokio_util::codec::Decoder;
        tokio::time::timeout(WAIT, async {
            loop {
                match self.codec.decode(&mut self.read_buf) {
                    Ok(Some(message)) => return Some(message),
                    Ok(None) => {}
                    Err(_) => return None,
                }
                match self.stream.read_buf(&mut self.read_buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("timed out waiting for a message from the server")
    }

    /// Reads until the server closes the connection; returns every message
    /// it sent first.
    pub async fn drain_until_closed(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(message) = self.recv().await {
            out.push(message);
        }
        out
    }

    /// Encodes `frame` as one encrypted frame and writes it.
    pub async fn send_frame(&mut self, frame: &[u8]) {
        let bytes = self.encode_frame(frame);
        self.stream.write_all(&bytes).await.unwrap();
    }

    /// Encodes `frame` as one encrypted frame without writing it.
    pub fn encode_frame(&mut self, frame: &[u8]) -> BytesMut {
        use tokio_util::codec::Encoder;
        let mut out = BytesMut::new();
        Encoder::<&[u8]>::encode(self.codec.frames_mut(), frame, &mut out).unwrap();
        out
    }

    /// Encodes one raw record (type, header, body) without writing it.
    pub fn encode_record(&mut self, record_type: u8, header: &[u8], body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        self.codec
            .frames_mut()
            .write_record(record_type, header, body, &mut out)
            .unwrap();
        out
    }
}

/// Polls `cond` every 10 ms until it holds; panics after [`WAIT`] with
/// `what` in the message.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The decision counters of `node`'s layer called `name`.
pub fn layer_counters(node: &Node, name: &str) -> Arc<LayerCounters> {
    node.middleware()
        .layers()
        .iter()
        .find(|l| l.name() == name)
        .unwrap_or_else(|| panic!("no {name} layer in the stack"))
        .counters()
        .clone()
}

/// The current score `node`'s score book holds for `peer`.
pub fn score_of(node: &Node, peer: NodeId) -> f64 {
    node.middleware()
        .shared()
        .scores
        .score(&peer)
        .unwrap_or(0.0)
}

/// Asserts that `node`'s score for `peer` is `applied` (one change from 0,
/// made after `before`) decayed by the node's half-life over at most the
/// time since `before`: the bounds hold however slowly the machine runs.
pub fn assert_score_decayed(node: &Node, peer: NodeId, applied: f64, before: tokio::time::Instant) {
    let score = score_of(node, peer);
    // Measured after the read: at least as long as the decay the read saw.
    let elapsed = before.elapsed();
    let half_life = node.score_half_life();
    let least_factor = 0.5f64.powf(elapsed.as_secs_f64() / half_life.as_secs_f64());
    let (a, b) = (applied, applied * least_factor);
    let (low, high) = (a.min(b) - 1e-9, a.max(b) + 1e-9);
    assert!(
        (low..=high).contains(&score),
        "score {score}: expected {applied} decayed over at most {elapsed:?} (half-life {half_life:?}), in [{low}, {high}]"
    );
}

/// Asserts the server closes a fresh socket without sending a byte, even
/// after we send a Noise message 1: the pre-handshake gate refused it.
pub async fn assert_refused_silently(stream: &mut TcpStream) {
    // A well-formed-looking Noise message 1 (length 32, an ephemeral key);
    // the write may already fail if the server closed the socket.
    let mut msg1 = vec![0u8, 32];
    msg1.extend_from_slice(&[7u8; 32]);
    let _ = stream.write_all(&msg1).await;
    let received = tokio::time::timeout(WAIT, async {
        let mut total = 0usize;
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    })
    .await
    .expect("server did not close the refused connection");
    assert_eq!(
        received, 0,
        "a refused connection must not get a single byte"
    );
}

/// A `tracing` writer that appends to a shared buffer, so a test can assert
/// on the log lines the node wrote.
#[derive(Clone, Default)]
pub struct LogBuffer(pub Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    /// Installs a subscriber for the current thread (use a current-thread
    /// runtime so every node task logs into it).
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

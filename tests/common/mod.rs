//! Helpers shared by the integration tests: real nodes on loopback addresses,
//! event waits with deadlines, raw attacker sessions and log capture.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use timed::crypto::NodeIdentity;
use timed::network::Network;
use timed::node::{Node, NodeConfig, NodeEvent, PeerTarget};
use timed::peer::{ConnectionEvent, HandshakeConfig};
use timed::protocol::{MessageCodec, VersionParams};
use timed::transport::noise::{self, LocalKeys};
use timed::transport::{CryptoBackend, FrameCodec, RekeyPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::broadcast;

/// Upper bound for any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// A node config listening on `ip:0` for the devnet.
pub fn config(ip: [u8; 4]) -> NodeConfig {
    NodeConfig::new(
        SocketAddr::from((ip, 0)),
        HandshakeConfig::new(VersionParams::new(Network::Devnet)),
    )
}

/// Starts a node with a fresh identity.
pub async fn start(config: NodeConfig) -> (Node, NodeIdentity) {
    let identity = NodeIdentity::generate();
    let node = Node::start(&identity, config).await.unwrap();
    (node, identity)
}

/// Waits for the first event matching `pred`, returning what it maps to.
pub async fn wait_for<T>(
    rx: &mut broadcast::Receiver<NodeEvent>,
    mut pred: impl FnMut(&NodeEvent) -> Option<T>,
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
pub async fn handshake_failure(rx: &mut broadcast::Receiver<NodeEvent>) -> (String, String) {
    wait_for(rx, |e| match e {
        NodeEvent::HandshakeFailed { error, .. } => {
            Some((error.kind().to_owned(), error.to_string()))
        }
        _ => None,
    })
    .await
}

/// Waits for the next disconnection and returns its kind and text.
pub async fn disconnection(rx: &mut broadcast::Receiver<NodeEvent>) -> (String, String) {
    wait_for(rx, |e| match e {
        NodeEvent::Disconnected { error, .. } => Some((error.kind().to_owned(), error.to_string())),
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
        NodeEvent::Connection(ConnectionEvent::Pong { .. }) => Some(()),
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
}

impl RawSession {
    /// Dials `to` from `src_ip` and completes the Noise handshake only.
    pub async fn open(src_ip: [u8; 4], to: SocketAddr, magic: [u8; 4]) -> Self {
        let identity = NodeIdentity::generate();
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
        }
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

//! The task that owns one established connection.
//!
//! ```text
//!             ┌──────────── connection task ────────────┐
//! socket ──►  │ read (only when the stack is ready) ─►  │ ─► middleware stack ─► handlers
//!             │ match pongs and responses to requests   │
//! socket ◄──  │ writer ◄── send queue (4 priority lanes)│ ◄─ Client, replies, broadcasts, pings
//!             └─────────────────────────────────────────┘
//! ```
//!
//! # Correctness
//! * Backpressure: while a message is inside the middleware stack, or the
//!   stack is not ready, the task does not read; TCP flow control then slows
//!   the peer down. Nothing inbound is queued.
//! * At most one request of ours is in flight; its response is matched by
//!   kind (`Peers` for `GetPeers`, `Pong` by nonce). A response that does not
//!   arrive within `request_timeout` fails the request and costs the peer
//!   one `Timeout` penalty, its only cost: if the answer comes later it is
//!   dropped quietly (`timed_late_responses_total`). The connection is
//!   closed as dead when, after a keepalive ping, neither its pong nor any
//!   other message arrives for `pong_timeout`: a peer working through a
//!   backlog of our messages answers the ping late, but keeps sending.
//! * The task ends on the first wire error, when the peer leaves, when
//!   policy (scoring, blacklist, dedup of connections) closes it, or at
//!   shutdown; in the last two cases it first sends `Disconnect` with the
//!   reason.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder, Framed};
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Service};

use super::client::{ClientError, ClientRequest, Request, Response};
use super::handshake::{Connection, PeerInfo};
use super::queue::{Priority, SendQueue};
use crate::constants::{DEFAULT_PING_INTERVAL, DEFAULT_PONG_TIMEOUT};
use crate::peer::InboundService;
use crate::peer::{Inbound, Offence, Outcome, PeerContext, PeerJudge, Rejection};
use crate::protocol::codec::encode_message;
use crate::protocol::version::unix_now;
use crate::protocol::{
    Disconnect, DisconnectReason, GossipKind, Message, MessageCodec, Ping, Pong, WireError,
};

/// Default time a request may take.
///
/// Zebra's request timeout is 20 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a closing connection waits for its last messages (the
/// `Disconnect`) to be written.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Parameters of an established connection.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    /// How often we ping.
    pub ping_interval: Duration,
    /// How long a keepalive pong may take before the connection is closed.
    pub pong_timeout: Duration,
    /// How long a request may take.
    pub request_timeout: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// A frame or message was bad, or the socket failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer did not answer a keepalive ping in time.
    #[error("no pong within {0:?}")]
    PongTimeout(Duration),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The peer said goodbye.
    #[error("peer disconnected: {reason:?} {detail:?}")]
    PeerDisconnected {
        /// Its reason code.
        reason: DisconnectReason,
        /// Its text.
        detail: String,
    },
    /// We closed the connection (scoring, ban, duplicate, slow reader).
    #[error("closed by policy: {0:?}")]
    Policy(DisconnectReason),
    /// The peer sent a message that is never allowed now.
    #[error("protocol violation: unexpected {0} message")]
    Unexpected(&'static str),
    /// The inbound middleware failed (not a rejection: a broken service).
    #[error("middleware failed: {0}")]
    Middleware(String),
    /// The node is shutting down.
    #[error("node shutting down")]
    Shutdown,
}

impl ConnectionError {
    /// A short stable name of the error kind, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectionError::Wire(e) => e.kind(),
            ConnectionError::PongTimeout(_) => "pong_timeout",
            ConnectionError::Closed => "closed",
            ConnectionError::PeerDisconnected { .. } => "peer_disconnected",
            ConnectionError::Policy(_) => "policy",
            ConnectionError::Unexpected(_) => "unexpected_message",
            ConnectionError::Middleware(_) => "middleware",
            ConnectionError::Shutdown => "shutdown",
        }
    }

    /// True when the peer misbehaved on the wire (the node then records a
    /// violation against its IP).
    pub fn is_misbehaviour(&self) -> bool {
        match self {
            ConnectionError::Wire(WireError::Frame(crate::transport::FrameError::Io(_))) => false,
            ConnectionError::Wire(_) | ConnectionError::Unexpected(_) => true,
            _ => false,
        }
    }
}

/// Something that happened on a connection, for the node's observers.
#[derive(Clone, Debug)]
pub enum ConnectionEvent {
    /// A keepalive pong answered our ping.
    Pong {
        /// The peer.
        peer: Arc<PeerInfo>,
        /// The measured round trip.
        rtt: Duration,
    },
}

/// The codec of a running connection: messages in, pre-encoded messages out.
/// It counts the bytes on the wire (ciphertext) per peer and per direction.
#[derive(Debug)]
pub struct PeerCodec {
    codec: MessageCodec,
    peer: Arc<PeerContext>,
}

impl PeerCodec {
    fn count_in(&self, before: usize, after: usize) {
        let used = before.saturating_sub(after) as u64;
        if used > 0 {
            self.peer.stats.bytes_in.fetch_add(used, Ordering::Relaxed);
            metrics::counter!("timed_bytes_total", "direction" => "in").increment(used);
        }
    }
}

impl Decoder for PeerCodec {
    type Item = Message;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        let before = src.len();
        let result = self.codec.decode(src);
        self.count_in(before, src.len());
        result
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        let before = src.len();
        let result = self.codec.decode_eof(src);
        self.count_in(before, src.len());
        result
    }
}

impl Encoder<Bytes> for PeerCodec {
    type Error = WireError;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), WireError> {
        let before = dst.len();
        Encoder::<&[u8]>::encode(self.codec.frames_mut(), &frame, dst)?;
        let written = (dst.len() - before) as u64;
        self.peer
            .stats
            .bytes_out
            .fetch_add(written, Ordering::Relaxed);
        metrics::counter!("timed_bytes_total", "direction" => "out").increment(written);
        Ok(())
    }
}

/// The lane a message is sent in.
pub fn priority_of(message: &Message) -> Priority {
    match message {
        Message::Gossip(e) => match e.kind {
            GossipKind::Block => Priority::Block,
            GossipKind::Vote => Priority::Vote,
            GossipKind::Transaction | GossipKind::Address => Priority::Transaction,
        },
        // Bulk answers must not hold up pings and small control messages.
        Message::Blocks(_) => Priority::Block,
        Message::Mempool(_) => Priority::Transaction,
        _ => Priority::Control,
    }
}

/// Encodes and queues `message` for `peer`; closes the peer if its queue is
/// full. Returns false if the message could not be queued.
pub fn enqueue(queue: &SendQueue, peer: &PeerContext, message: &Message) -> bool {
    match encode_message(message) {
        Ok(bytes) => {
            metrics::counter!("timed_messages_total", "kind" => message.kind(), "direction" => "out")
                .increment(1);
            enqueue_encoded(queue, peer, Bytes::from(bytes), priority_of(message))
        }
        Err(error) => {
            tracing::warn!(%error, kind = message.kind(), "cannot encode message");
            false
        }
    }
}

/// Queues an already encoded message; closes the peer if its queue is full.
pub fn enqueue_encoded(
    queue: &SendQueue,
    peer: &PeerContext,
    frame: Bytes,
    priority: Priority,
) -> bool {
    match queue.push(frame, priority) {
        Ok(()) => true,
        Err(full) => {
            if !peer.disconnect.is_cancelled() {
                if crate::logging::allow("send_queue_full") {
                    tracing::warn!(peer.addr = %peer.addr, lane = full.lane, "send queue full: disconnecting slow peer");
                }
                metrics::counter!("timed_send_queue_overflows_total").increment(1);
            }
            peer.close(DisconnectReason::SendQueueFull);
            false
        }
    }
}

/// Everything a connection task needs.
pub struct ConnectionParts {
    /// The established connection.
    pub conn: Connection,
    /// The peer's context (shared with the stack and the node).
    pub context: Arc<PeerContext>,
    /// The connection's middleware stack, with the handlers inside.
    pub stack: InboundService,
    /// The send queue.
    pub queue: Arc<SendQueue>,
    /// Requests from the [`super::client::Client`].
    pub(crate) requests: mpsc::Receiver<ClientRequest>,
    /// Judges offences outside the stack (timeouts, unsolicited answers)
    /// and response times.
    pub judge: Arc<dyn PeerJudge>,
}

impl std::fmt::Debug for ConnectionParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionParts")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

type Sink = SplitSink<Framed<TcpStream, PeerCodec>, Bytes>;
type Stream = SplitStream<Framed<TcpStream, PeerCodec>>;
type StackFuture = Pin<Box<dyn Future<Output = Result<Outcome, BoxError>> + Send>>;

async fn write_loop(
    mut sink: Sink,
    queue: Arc<SendQueue>,
    peer: Arc<PeerContext>,
) -> ConnectionError {
    while let Some(frame) = queue.pop().await {
        if let Err(e) = sink.feed(frame).await {
            return e.into();
        }
        peer.stats.messages_out.fetch_add(1, Ordering::Relaxed);
        if queue.is_empty() {
            if let Err(e) = sink.flush().await {
                return e.into();
            }
        }
    }
    let _ = sink.close().await;
    ConnectionError::Shutdown
}

enum Read {
    Message(Message),
    Error(ConnectionError),
}

async fn read_next(stack: &mut InboundService, stream: &mut Stream) -> Read {
    if let Err(e) = futures::future::poll_fn(|cx| stack.poll_ready(cx)).await {
        return Read::Error(ConnectionError::Middleware(e.to_string()));
    }
    match stream.next().await {
        Some(Ok(message)) => Read::Message(message),
        Some(Err(e)) => Read::Error(e.into()),
        None => Read::Error(ConnectionError::Closed),
    }
}

async fn next_inflight(inflight: &mut Option<StackFuture>) -> Result<Outcome, BoxError> {
    match inflight.as_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

struct Pending {
    request: Request,
    nonce: u64,
    sent: Instant,
    reply: oneshot::Sender<Result<Response, ClientError>>,
}

fn now_ms() -> u64 {
    unix_now().as_millis() as u64
}

/// Runs the connection until it fails, the peer leaves, policy closes it or
/// `shutdown` fires; returns why it ended.
pub async fn run(
    parts: ConnectionParts,
    config: ConnectionConfig,
    on_event: impl Fn(ConnectionEvent) + Send,
    shutdown: CancellationToken,
) -> ConnectionError {
    let ConnectionParts {
        conn,
        context,
        mut stack,
        queue,
        mut requests,
        judge,
    } = parts;
    let Connection { framed, info } = conn;
    let info = Arc::new(info);
    let peer = context.clone();
    let (sink, mut stream) = framed
        .map_codec(move |codec| PeerCodec { codec, peer })
        .split();
    let writer = write_loop(sink, queue.clone(), context.clone());
    tokio::pin!(writer);
    let mut ticker = tokio::time::interval(config.ping_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keepalive: Option<(u64, Instant)> = None;
    // When the peer last sent us anything: a peer busy answering a backlog
    // of our messages is alive even if its pong is still queued behind them.
    let mut last_in = Instant::now();
    let mut pending: Option<Pending> = None;
    // The kind of our last request that timed out: its answer may still
    // come, and is dropped quietly then (the timeout was its only cost).
    let mut late: Option<&'static str> = None;
    let mut inflight: Option<StackFuture> = None;

    let result = loop {
        let keepalive_deadline = keepalive.map(|(_, sent)| sent.max(last_in) + config.pong_timeout);
        let request_deadline = pending.as_ref().map(|p| p.sent + config.request_timeout);
        let deadline = match (keepalive_deadline, request_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break ConnectionError::Shutdown,
            _ = context.disconnect.cancelled() => {
                let reason = context
                    .close_reason
                    .get()
                    .copied()
                    .unwrap_or(DisconnectReason::ProtocolViolation);
                break ConnectionError::Policy(reason);
            }
            error = &mut writer => break error,
            _ = sleep_until_opt(deadline) => {
                let now = Instant::now();
                if keepalive_deadline.is_some_and(|d| d <= now) {
                    break ConnectionError::PongTimeout(config.pong_timeout);
                }
                if let Some(p) = pending.take_if(|p| p.sent + config.request_timeout <= now) {
                    late = Some(p.request.kind());
                    let _ = p.reply.send(Err(ClientError::Timeout(config.request_timeout)));
                    judge.penalize(&context, Offence::Timeout);
                }
            }
            _ = ticker.tick() => {
                if keepalive.is_none() {
                    let nonce = rand::thread_rng().gen();
                    let ping = Message::Ping(Ping { nonce, timestamp_ms: now_ms() });
                    if enqueue(&queue, &context, &ping) {
                        keepalive = Some((nonce, Instant::now()));
                    }
                }
            }
            request = requests.recv(), if pending.is_none() => {
                let Some(ClientRequest { request, reply }) = request else { continue };
                let nonce: u64 = rand::thread_rng().gen();
                let message = match request {
                    Request::Ping => Message::Ping(Ping { nonce, timestamp_ms: now_ms() }),
                    Request::GetPeers => Message::GetPeers,
                    Request::GetBlocks(g) => Message::GetBlocks(g),
                    Request::GetMempool => Message::GetMempool,
                };
                if enqueue(&queue, &context, &message) {
                    pending = Some(Pending { request, nonce, sent: Instant::now(), reply });
                } else {
                    let _ = reply.send(Err(ClientError::QueueFull));
                }
            }
            outcome = next_inflight(&mut inflight) => {
                inflight = None;
                match outcome {
                    Ok(Outcome::Reply(reply)) => {
                        enqueue(&queue, &context, &reply);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        context.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        match Rejection::find(&error) {
                            Some(r) => tracing::debug!(
                                layer = r.layer,
                                reason = r.reason,
                                offence = r.offence.map(|o| o.as_str()),
                                "message rejected"
                            ),
                            None => tracing::debug!(%error, "message failed in a handler"),
                        }
                    }
                }
            }
            read = read_next(&mut stack, &mut stream), if inflight.is_none() => {
                let message = match read {
                    Read::Message(m) => m,
                    Read::Error(e) => break e,
                };
                context.stats.messages_in.fetch_add(1, Ordering::Relaxed);
                last_in = Instant::now();
                metrics::counter!("timed_messages_total", "kind" => message.kind(), "direction" => "in").increment(1);
                match message {
                    Message::Pong(pong) => {
                        if let Some((nonce, sent)) = keepalive {
                            if nonce == pong.nonce {
                                let rtt = sent.elapsed();
                                keepalive = None;
                                context.stats.record_rtt(rtt);
                                metrics::histogram!("timed_ping_rtt_seconds").record(rtt.as_secs_f64());
                                tracing::info!(rtt_us = rtt.as_micros() as u64, nonce = pong.nonce, "pong received");
                                on_event(ConnectionEvent::Pong { peer: info.clone(), rtt });
                                continue;
                            }
                        }
                        match pending.take_if(|p| p.request == Request::Ping && p.nonce == pong.nonce) {
                            Some(p) => {
                                let rtt = p.sent.elapsed();
                                context.stats.record_rtt(rtt);
                                judge.response_time(&context, rtt);
                                let _ = p.reply.send(Ok(Response::Pong(rtt)));
                            }
                            None if late == Some(Request::Ping.kind()) => {
                                late = None;
                                late_response(Request::Ping.kind());
                            }
                            None => {
                                judge.penalize(&context, Offence::ProtocolViolation);
                            }
                        }
                    }
                    Message::Peers(addresses) if pending.as_ref().is_some_and(|p| p.request == Request::GetPeers) => {
                        answer(&mut pending, &*judge, &context, Response::Peers(addresses));
                    }
                    Message::Blocks(blocks) if pending.as_ref().is_some_and(|p| matches!(p.request, Request::GetBlocks(_))) => {
                        answer(&mut pending, &*judge, &context, Response::Blocks(blocks));
                    }
                    Message::Mempool(txs) if pending.as_ref().is_some_and(|p| p.request == Request::GetMempool) => {
                        answer(&mut pending, &*judge, &context, Response::Mempool(txs));
                    }
                    Message::Peers(_) | Message::Blocks(_) | Message::Mempool(_)
                        if late.is_some() && late == response_to(&message) =>
                    {
                        late = None;
                        late_response(message.kind());
                    }
                    Message::Ping(ping) => {
                        // Answered here, but counted against the rate limit
                        // by the stack first.
                        let request = Inbound::new(context.clone(), Arc::new(Message::Ping(ping)));
                        let pong = Message::Pong(Pong { nonce: ping.nonce, timestamp_ms: now_ms() });
                        let future = stack.call(request);
                        inflight = Some(Box::pin(async move {
                            future.await.map(|_| Outcome::Reply(pong))
                        }));
                    }
                    Message::Disconnect(d) => {
                        break ConnectionError::PeerDisconnected { reason: d.reason, detail: d.detail };
                    }
                    Message::Version(_) => break ConnectionError::Unexpected("version"),
                    other => {
                        let request = Inbound::new(context.clone(), Arc::new(other));
                        inflight = Some(Box::pin(stack.call(request)));
                    }
                }
            }
        }
    };

    // Say goodbye when we are the ones closing, then let the writer drain.
    let goodbye = match &result {
        ConnectionError::Shutdown => Some(DisconnectReason::Shutdown),
        ConnectionError::Policy(reason) => Some(*reason),
        ConnectionError::PongTimeout(_) | ConnectionError::Unexpected(_) => {
            Some(DisconnectReason::ProtocolViolation)
        }
        _ => None,
    };
    if let Some(p) = pending.take() {
        let _ = p.reply.send(Err(ClientError::Closed));
    }
    requests.close();
    if let Some(reason) = goodbye {
        if reason != DisconnectReason::SendQueueFull {
            let bye = Message::Disconnect(Disconnect {
                reason,
                detail: context.close_detail.get().cloned().unwrap_or_default(),
            });
            if let Ok(bytes) = encode_message(&bye) {
                let _ = queue.push(Bytes::from(bytes), Priority::Control);
            }
        }
        queue.close();
        let _ = tokio::time::timeout(CLOSE_GRACE, &mut writer).await;
    } else {
        queue.close();
    }
    context.disconnect.cancel();
    result
}

/// The kind of request `message` answers, if it is a response.
fn response_to(message: &Message) -> Option<&'static str> {
    match message {
        Message::Peers(_) => Some(Request::GetPeers.kind()),
        Message::Blocks(_) => Some("get_blocks"),
        Message::Mempool(_) => Some(Request::GetMempool.kind()),
        _ => None,
    }
}

/// Counts (and logs at debug level) a response that came after its request
/// timed out: the timeout was charged already, the answer costs nothing.
fn late_response(kind: &'static str) {
    metrics::counter!("timed_late_responses_total", "kind" => kind).increment(1);
    tracing::debug!(kind, "late response dropped");
}

/// Completes the outstanding request with `response`, recording how long
/// the peer took.
fn answer(
    pending: &mut Option<Pending>,
    judge: &dyn PeerJudge,
    context: &Arc<PeerContext>,
    response: Response,
) {
    if let Some(p) = pending.take() {
        let elapsed = p.sent.elapsed();
        metrics::histogram!("timed_request_duration_seconds", "kind" => p.request.kind())
            .record(elapsed.as_secs_f64());
        judge.response_time(context, elapsed);
        context.stats.record_latency(elapsed);
        let _ = p.reply.send(Ok(response));
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

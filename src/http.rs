//! Bounded HTTP/1.1 serving for the JSON-RPC and metrics endpoints.
//!
//! Each server runs its own accept loop over hyper's HTTP/1 connection
//! driver, so that nothing a local client does can exhaust file descriptors
//! or memory:
//!
//! * **Connection cap**: at most [`HttpLimits::max_connections`] connections
//!   are open; a connection beyond the cap is accepted and closed at once
//!   (before any byte is read), counted in
//!   `timed_http_connections_refused_total`.
//! * **Header deadline**: a new connection, or a keep-alive connection whose
//!   next request has begun, must deliver the complete request head within
//!   [`HttpLimits::header_timeout`] (a slowloris client is closed).
//! * **Idle deadline**: a keep-alive connection with no request and no I/O
//!   for [`HttpLimits::idle_timeout`] is closed.
//! * **Bounded buffers**: hyper buffers at most [`MAX_BUF_BYTES`] per
//!   connection for the request head; bodies are read by the handlers under
//!   their own limits (see `rpc::server`).
//!
//! Remote-triggerable events are counted exactly in metrics and logged as
//! one summary line per [`SUMMARY_INTERVAL`], never one line per event.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Largest per-connection read buffer hyper keeps, in bytes; it bounds the
/// request head (hyper's default, ~400 KiB, would let 128 idle clients pin
/// 50 MiB with oversized heads). 64 KiB holds any honest head many times.
pub const MAX_BUF_BYTES: usize = 64 * 1024;

/// Most headers in one request (hyper's default is 100; a JSON-RPC or
/// Prometheus client sends fewer than 10).
pub const MAX_HEADERS: usize = 64;

/// How often the abuse summary line is written (when there is something to
/// report).
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// How long in-flight requests may run after shutdown began before their
/// connections are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The limits of one HTTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most open connections; more are closed at once.
    pub max_connections: usize,
    /// Deadline for a complete request head, from the connection's start or
    /// the first byte of a keep-alive request.
    pub header_timeout: Duration,
    /// Deadline for a keep-alive connection without a request.
    pub idle_timeout: Duration,
}

/// Counts of remote-triggerable events since the last summary line. Idle
/// keep-alive connections closing are normal and only counted in metrics.
#[derive(Debug, Default)]
pub struct AbuseTally {
    refused: AtomicU64,
    header_timeouts: AtomicU64,
    body_timeouts: AtomicU64,
    busy: AtomicU64,
    too_large: AtomicU64,
}

impl AbuseTally {
    /// A request body that did not arrive within its deadline.
    pub fn body_timeout(&self) {
        self.body_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused because every worker stayed busy.
    pub fn busy(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    /// A request body over the size limit.
    pub fn too_large(&self) {
        self.too_large.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes one summary line if anything happened since the last one.
    fn flush(&self, server: &'static str, limits: &HttpLimits) {
        let take = |a: &AtomicU64| a.swap(0, Ordering::Relaxed);
        let refused = take(&self.refused);
        let header_timeouts = take(&self.header_timeouts);
        let body_timeouts = take(&self.body_timeouts);
        let busy = take(&self.busy);
        let too_large = take(&self.too_large);
        if refused + header_timeouts + body_timeouts + busy + too_large == 0 {
            return;
        }
        tracing::warn!(
            server,
            refused,
            header_timeouts,
            body_timeouts,
            busy,
            too_large,
            max_connections = limits.max_connections,
            interval_s = SUMMARY_INTERVAL.as_secs(),
            "HTTP clients refused or timed out (summary)"
        );
    }
}

/// The phase of a connection, for its watchdog.
const PHASE_HEAD: u8 = 0;
const PHASE_REQUEST: u8 = 1;
const PHASE_IDLE: u8 = 2;

/// What a connection's watchdog reads: its phase and when I/O last moved.
#[derive(Debug)]
struct Activity {
    base: Instant,
    phase: AtomicU8,
    /// Milliseconds from `base` at which the phase began.
    since_ms: AtomicU64,
    /// Milliseconds from `base` of the last byte read or written.
    last_io_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            base: Instant::now(),
            phase: AtomicU8::new(PHASE_HEAD),
            since_ms: AtomicU64::new(0),
            last_io_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn enter(&self, phase: u8) {
        self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
    }

    fn on_read(&self) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        // The first byte after a response starts the next request's head.
        if self
            .phase
            .compare_exchange(PHASE_IDLE, PHASE_HEAD, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.since_ms.store(now, Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Resolves with the phase name once the connection overstays its
    /// phase's deadline; never while a request is being handled (handlers
    /// bound their own work).
    async fn expired(&self, limits: &HttpLimits) -> &'static str {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        loop {
            let now = self.now_ms();
            let since = self.since_ms.load(Ordering::Relaxed);
            let (deadline, phase) = match self.phase.load(Ordering::Relaxed) {
                PHASE_HEAD => (since.saturating_add(ms(limits.header_timeout)), "header"),
                PHASE_IDLE => {
                    let last = since.max(self.last_io_ms.load(Ordering::Relaxed));
                    (last.saturating_add(ms(limits.idle_timeout)), "idle")
                }
                _ => (
                    now.saturating_add(ms(limits.header_timeout.min(limits.idle_timeout))),
                    "",
                ),
            };
            if deadline <= now && !phase.is_empty() {
                return phase;
            }
            tokio::time::sleep_until(self.base + Duration::from_millis(deadline)).await;
        }
    }
}

/// A stream that reports its reads and writes to the connection's
/// [`Activity`].
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown`, in a
/// task of `tasks` (which waits for its connections too when shutdown
/// waits for it); `server` names it in metrics and logs (`rpc`,
/// `metrics`). `tally` collects the handlers' own abuse counts for the
/// summary line.
pub fn spawn(
    server: &'static str,
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    tally: Arc<AbuseTally>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    metrics::counter!("timed_http_connections_refused_total", "server" => server, "reason" => "max_connections").increment(0);
    metrics::gauge!("timed_http_connections", "server" => server).set(0.0);
    crate::tasks::spawn(
        tasks,
        server,
        accept_loop(server, listener, router, limits, tally, shutdown),
    );
}

async fn accept_loop(
    server: &'static str,
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    tally: Arc<AbuseTally>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = TaskTracker::new();
    let mut summary = tokio::time::interval(SUMMARY_INTERVAL);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut accept_errors: u64 = 0;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = summary.tick() => {
                tally.flush(server, &limits);
                if accept_errors > 0 {
                    tracing::warn!(server, errors = accept_errors, "accept failed (summary)");
                    accept_errors = 0;
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Typically EMFILE: back off instead of spinning.
                accept_errors += 1;
                metrics::counter!("timed_http_connections_refused_total", "server" => server, "reason" => "accept_error").increment(1);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed before any byte is read: the descriptor is back at once.
            drop(stream);
            tally.refused.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("timed_http_connections_refused_total", "server" => server, "reason" => "max_connections").increment(1);
            continue;
        };
        let router = router.clone();
        let limits_c = limits;
        let tally = tally.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let open = metrics::gauge!("timed_http_connections", "server" => server);
            open.increment(1.0);
            serve_connection(server, stream, router, limits_c, &tally, shutdown).await;
            open.decrement(1.0);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    tally.flush(server, &limits);
}

async fn serve_connection(
    server: &'static str,
    stream: TcpStream,
    router: axum::Router,
    limits: HttpLimits,
    tally: &AbuseTally,
    shutdown: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let activity = service_activity.clone();
        activity.enter(PHASE_REQUEST);
        let call = router.clone().oneshot(request.map(axum::body::Body::new));
        async move {
            let response = call.await;
            activity.enter(PHASE_IDLE);
            Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper's own head timer also runs while a keep-alive connection
        // waits; set to the sum of both deadlines it is a backstop, and the
        // watchdog below applies each deadline to its own phase.
        .header_read_timeout(limits.header_timeout + limits.idle_timeout)
        .max_buf_size(MAX_BUF_BYTES)
        .max_headers(MAX_HEADERS);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut draining = false;
    let grace = tokio::time::sleep(Duration::MAX);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
                grace.as_mut().reset(Instant::now() + SHUTDOWN_GRACE);
            }
            _ = &mut grace => return,
            phase = activity.expired(&limits) => {
                metrics::counter!("timed_http_timeouts_total", "server" => server, "phase" => phase).increment(1);
                if phase == "header" {
                    tally.header_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits {
            max_connections: 4,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_expires_in_the_head_phase() {
        let activity = Activity::new();
        let phase = activity.expired(&limits()).await;
        assert_eq!(phase, "header");
        assert!(activity.base.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_connection_expires_when_idle() {
        let activity = Activity::new();
        activity.enter(PHASE_IDLE);
        assert_eq!(activity.expired(&limits()).await, "idle");
        assert!(activity.base.elapsed() >= Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_byte_of_a_request_starts_the_head_deadline() {
        let activity = Activity::new();
        activity.enter(PHASE_IDLE);
        tokio::time::sleep(Duration::from_secs(20)).await;
        activity.on_read();
        assert_eq!(activity.expired(&limits()).await, "header");
        assert!(activity.base.elapsed() >= Duration::from_secs(30));
        assert!(activity.base.elapsed() < Duration::from_secs(31));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_never_expires() {
        let activity = Activity::new();
        activity.enter(PHASE_REQUEST);
        let limits = limits();
        let outcome = tokio::time::timeout(Duration::from_secs(3600), activity.expired(&limits));
        assert!(outcome.await.is_err());
    }
}

//! The RPC's HTTP side: one `POST /` route served by [`crate::http`] under
//! the `[rpc]` limits.
//!
//! A request goes through, in order:
//! 1. the credentials (headers only; HTTP 401, see [`super::auth`]);
//! 2. its `Content-Length`: above `rpc.max_body_bytes`, HTTP 413 at once,
//!    before any body byte is read;
//! 3. one of `rpc.max_concurrent` permits, waited for at most
//!    `rpc.queue_timeout_secs` (then HTTP 503 "work queue depth exceeded",
//!    as Bitcoin Core answers): only permit holders read bodies, so body
//!    memory is bounded by `max_concurrent × max_body_bytes`;
//! 4. the body, bounded while it streams (HTTP 413 as soon as it passes
//!    the limit) and read within `rpc.body_timeout_secs` (HTTP 408), into
//!    one buffer of its declared length;
//! 5. the call or batch, still holding the permit.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{answer, codes, error_body, reply, RpcContext, RpcError};

/// Errors starting the RPC server.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for RPC on {addr}: {source}")]
pub struct RpcBindError {
    /// The address.
    pub addr: SocketAddr,
    /// The error.
    #[source]
    pub source: std::io::Error,
}

/// An error answer that also closes the connection (its body may be
/// unread, or the client is misbehaving).
fn refuse(status: StatusCode, code: i64, message: String, reason: &'static str) -> Response {
    metrics::counter!("timed_rpc_requests_refused_total", "reason" => reason).increment(1);
    let mut response = reply(
        status,
        error_body(Value::Null, &RpcError::new(code, message)),
    );
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn too_large(ctx: &RpcContext, limit: usize) -> Response {
    ctx.tally.too_large();
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        codes::INVALID_REQUEST,
        format!("request body larger than {limit} bytes"),
        "too_large",
    )
}

async fn handle(State(ctx): State<RpcContext>, headers: HeaderMap, body: Body) -> Response {
    if !ctx.credentials.allows(headers.get(header::AUTHORIZATION)) {
        let mut response = refuse(
            StatusCode::UNAUTHORIZED,
            codes::UNAUTHORIZED,
            "missing or wrong credentials".into(),
            "unauthorized",
        );
        // As bitcoind answers, so that HTTP clients know to send Basic.
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"jsonrpc\""),
        );
        return response;
    }
    let limit = ctx.settings.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(&ctx, limit);
    }
    let queue_timeout = Duration::from_secs(ctx.settings.queue_timeout_secs);
    let permit =
        match tokio::time::timeout(queue_timeout, ctx.semaphore.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) | Err(_) => {
                ctx.tally.busy();
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    codes::BUSY,
                    "work queue depth exceeded".into(),
                    "busy",
                );
            }
        };
    let body_timeout = Duration::from_secs(ctx.settings.body_timeout_secs);
    let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit));
    let read = read_body(body, limit, capacity);
    let body = match tokio::time::timeout(body_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(BodyError::TooLarge)) => return too_large(&ctx, limit),
        Ok(Err(BodyError::Broken)) => {
            // The client broke off mid-body: nobody is left to answer.
            return refuse(
                StatusCode::BAD_REQUEST,
                codes::INVALID_REQUEST,
                "the request body could not be read".into(),
                "body_error",
            );
        }
        Err(_) => {
            ctx.tally.body_timeout();
            metrics::counter!("timed_http_timeouts_total", "server" => "rpc", "phase" => "body")
                .increment(1);
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                codes::BUSY,
                format!(
                    "the request body did not arrive within {} s",
                    body_timeout.as_secs()
                ),
                "body_timeout",
            );
        }
    };
    let response = answer(&ctx, &body).await;
    drop(permit);
    response
}

enum BodyError {
    TooLarge,
    Broken,
}

/// Reads `body` into one buffer of `capacity` bytes (the declared length),
/// refusing it as soon as it passes `limit`. Each piece is copied out of
/// hyper's read buffer as it arrives, so a body holds its own size and no
/// more while it streams in.
async fn read_body(mut body: Body, limit: usize, capacity: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::with_capacity(capacity.min(limit));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Broken)?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// Serves JSON-RPC on `listen` until `shutdown`; returns the bound address.
///
/// # Errors
/// [`RpcBindError`] if the address is unavailable.
pub async fn serve(
    listen: SocketAddr,
    ctx: RpcContext,
    shutdown: CancellationToken,
) -> Result<SocketAddr, RpcBindError> {
    serve_tracked(listen, ctx, shutdown, &TaskTracker::new()).await
}

/// [`serve`], the server's task belonging to `tasks`.
///
/// # Errors
/// [`RpcBindError`] if the address is unavailable.
pub async fn serve_tracked(
    listen: SocketAddr,
    ctx: RpcContext,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<SocketAddr, RpcBindError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| RpcBindError {
            addr: listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| RpcBindError {
        addr: listen,
        source,
    })?;
    let limits = ctx.settings.http_limits();
    let tally = ctx.tally.clone();
    for reason in ["busy", "too_large", "unauthorized"] {
        metrics::counter!("timed_rpc_requests_refused_total", "reason" => reason).increment(0);
    }
    let app = axum::Router::new().route("/", post(handle)).with_state(ctx);
    crate::http::spawn("rpc", listener, app, limits, tally, shutdown, tasks);
    tracing::info!(
        rpc = %local,
        max_connections = limits.max_connections,
        header_timeout_s = limits.header_timeout.as_secs(),
        idle_timeout_s = limits.idle_timeout.as_secs(),
        "serving JSON-RPC"
    );
    Ok(local)
}

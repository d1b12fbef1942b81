//! JSON-RPC 2.0 over HTTP POST, in the style of `time-cli` / `bitcoin-cli`.
//!
//! # Errors
//! Standard codes: `-32700` parse error, `-32600` invalid request (also a
//! body over `rpc.max_body_bytes`, answered with HTTP 413), `-32601` method
//! not found, `-32602` invalid params (a wrong type, or more parameters
//! than the method takes), `-32603` internal error. Application codes:
//!
//! | code | meaning |
//! |---|---|
//! | `-32001` | unauthorized: missing or wrong credentials (HTTP 401) |
//! | `-32002` | not found: no such peer, ban, block or transaction; a one-off `addnode` dial that failed |
//! | `-32003` | config reload failed (the message says why; the old stack stays) |
//! | `-32004` | transaction rejected (the message names the reason: `insufficient_fee`, `conflict`, ...) |
//! | `-32005` | wallet error: insufficient funds (or `funds_pending`), zero amount, fee too low, nothing to merge |
//! | `-32006` | unavailable: the node has no chain or no wallet, or the chain has stopped |
//! | `-32007` | busy: work queue depth exceeded (HTTP 503), or the body came too slowly (HTTP 408) |
//! | `-32008` | the chain store could not do it (a `reindex` that met a damaged block); nothing was changed |
//!
//! Error messages quote at most [`params::ECHO_CHARS`] characters of
//! anything the caller sent.
//!
//! # Limits
//! See [`server`]: a cap on open connections, header, body and keep-alive
//! deadlines, at most `rpc.max_concurrent` requests at once (counted from
//! before their bodies are read), bodies bounded while they stream, and
//! batches of at most [`MAX_BATCH`] calls.
//!
//! # Authentication
//! As bitcoind does, in the `Authorization` header:
//! - the cookie: `Basic base64(__cookie__:<secret>)`, where
//!   `__cookie__:<secret>` is the text of `<data dir>/.cookie`, which `timed
//!   run` writes afresh at every start (mode 0600, 64 hex digits of fresh
//!   randomness) and removes when it stops (see [`auth::CookieFile`]);
//! - `Basic base64(<rpc.user>:<rpc.password>)`, if both are configured;
//! - `Bearer <rpc.bearer_token>`, if configured.
//!
//! If `rpc.bearer_token` or `rpc.user` / `rpc.password` is configured, every
//! request must carry one of the valid credentials. If neither is (the
//! default), a request without credentials is served too, so that TIME
//! Coin's `time-cli`, which sends none, works against a default node; a
//! request that carries credentials must carry valid ones all the same. A
//! refused request gets HTTP 401 with `WWW-Authenticate: Basic
//! realm="jsonrpc"` and error `-32001`, and is counted in
//! `timed_rpc_requests_refused_total{reason="unauthorized"}`. Secrets are
//! compared in constant time and never logged. `timed rpc` sends, in this
//! order of preference, an explicit token, an explicit user and password,
//! or the cookie file if it exists.
//!
//! # Security
//! The RPC listens on loopback by default and, unless credentials are
//! configured, serves any local caller; it has no TLS (credentials travel
//! in clear text). Expose it only behind a TLS proxy and with credentials.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RpcSection};
use crate::http::AbuseTally;
use crate::network::Network;
use crate::state::{Chain, ChainService};

pub mod auth;
mod chain;
pub mod client;
mod lookups;
mod masternodes;
mod merge;
mod methods;
pub mod params;
mod reindex;
pub mod server;
mod wallet_info;

pub use server::{serve, serve_tracked, RpcBindError};

/// Most calls in one batch request.
pub const MAX_BATCH: usize = 100;

/// JSON-RPC error codes used by `timed`.
pub mod codes {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid request object (or too large).
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Wrong parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// A bug.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Missing or wrong credentials.
    pub const UNAUTHORIZED: i64 = -32001;
    /// No such peer, ban, block or transaction.
    pub const NOT_FOUND: i64 = -32002;
    /// The config could not be reloaded.
    pub const RELOAD_FAILED: i64 = -32003;
    /// The transaction was refused (the message names the reason).
    pub const TX_REJECTED: i64 = -32004;
    /// The wallet cannot pay (insufficient funds, bad amount or fee).
    pub const WALLET: i64 = -32005;
    /// The node has no chain or no wallet.
    pub const UNAVAILABLE: i64 = -32006;
    /// Every worker stayed busy (HTTP 503), or the body came too slowly.
    pub const BUSY: i64 = -32007;
    /// The chain store could not do it (a damaged block, a chain that does
    /// not replay); nothing was changed.
    pub const STORE: i64 = -32008;
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    /// The code (see [`codes`]).
    pub code: i64,
    /// What went wrong.
    pub message: String,
}

impl RpcError {
    /// An error with `code` and `message`.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    /// `-32602` with `message`.
    pub fn params(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_PARAMS, message)
    }
}

/// The node the RPC serves: its network and, if it follows one, its chain
/// service. The network's methods are reachable directly.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    network: Network,
    chain: Option<ChainService>,
}

impl NodeHandle {
    /// A handle on `network` and `chain`.
    pub fn new(network: Network, chain: Option<ChainService>) -> Self {
        NodeHandle { network, chain }
    }

    /// The chain, if the node follows one.
    pub fn chain(&self) -> Option<&Chain> {
        self.chain.as_ref().map(ChainService::chain)
    }

    /// The chain service (changes run on its worker).
    pub fn chain_service(&self) -> Option<&ChainService> {
        self.chain.as_ref()
    }
}

impl std::ops::Deref for NodeHandle {
    type Target = Network;

    fn deref(&self) -> &Network {
        &self.network
    }
}

/// What the RPC server needs.
#[derive(Clone, Debug)]
pub struct RpcContext {
    /// The node.
    pub node: NodeHandle,
    /// The config file, for `reloadconfig` (none: nothing to reload).
    pub config_path: Option<PathBuf>,
    /// Cancelled by `stop`.
    pub stop: CancellationToken,
    /// The node's wallet, for the wallet methods.
    pub wallet: Option<Arc<crate::wallet::Wallet>>,
    settings: Arc<RpcSection>,
    credentials: Arc<auth::Credentials>,
    semaphore: Arc<tokio::sync::Semaphore>,
    tally: Arc<AbuseTally>,
}

impl RpcContext {
    /// A context serving `node` with `settings`.
    pub fn new(
        node: impl Into<NodeHandle>,
        settings: RpcSection,
        config_path: Option<PathBuf>,
        stop: CancellationToken,
    ) -> Self {
        RpcContext {
            semaphore: Arc::new(tokio::sync::Semaphore::new(settings.max_concurrent)),
            tally: Arc::default(),
            credentials: Arc::new(auth::Credentials::from_settings(&settings)),
            settings: Arc::new(settings),
            node: node.into(),
            config_path,
            stop,
            wallet: None,
        }
    }

    /// The same context with `wallet` for the wallet methods.
    pub fn with_wallet(mut self, wallet: crate::wallet::Wallet) -> Self {
        self.wallet = Some(Arc::new(wallet));
        self
    }

    /// The same context also accepting the cookie `secret` (see
    /// [`auth::CookieFile`]) as HTTP Basic credentials of `__cookie__`.
    pub fn with_cookie(mut self, secret: &str) -> Self {
        self.credentials = Arc::new((*self.credentials).clone().with_cookie(secret));
        self
    }

    /// Re-reads the config file and applies its `[[middleware]]` list to
    /// new connections.
    pub fn reload(&self) -> Result<String, RpcError> {
        let path = self.config_path.as_ref().ok_or_else(|| {
            RpcError::new(codes::RELOAD_FAILED, "the node runs without a config file")
        })?;
        let config =
            Config::load(path).map_err(|e| RpcError::new(codes::RELOAD_FAILED, e.to_string()))?;
        Ok(self.node.reload_middleware(&config.middleware))
    }
}

fn error_body(id: Value, error: &RpcError) -> Value {
    // Every message is built to quote little of the caller's input; this
    // cap keeps an overlooked quote from echoing a large body back.
    let message = params::excerpt_n(&error.message, MAX_ERROR_MESSAGE_CHARS);
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": error.code, "message": message}})
}

/// Longest error message sent, in characters: room for a sentence and a
/// few quoted excerpts.
const MAX_ERROR_MESSAGE_CHARS: usize = 512;

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn call_one(ctx: &RpcContext, request: Value) -> Option<Value> {
    let id = request.get("id").cloned();
    let obj = match request.as_object() {
        Some(o) => o,
        None => {
            return Some(error_body(
                Value::Null,
                &RpcError::new(codes::INVALID_REQUEST, "a request must be a JSON object"),
            ))
        }
    };
    let invalid = |m: &str| {
        Some(error_body(
            id.clone().unwrap_or(Value::Null),
            &RpcError::new(codes::INVALID_REQUEST, m),
        ))
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid("\"jsonrpc\" must be \"2.0\"");
    }
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        return invalid("\"method\" must be a string");
    };
    let params = match obj.get("params") {
        None | Some(Value::Null) => Value::Array(Vec::new()),
        Some(p @ (Value::Array(_) | Value::Object(_))) => p.clone(),
        Some(_) => return invalid("\"params\" must be an array or an object"),
    };
    if matches!(id, Some(Value::Object(_) | Value::Array(_))) {
        return invalid("\"id\" must be a string, a number or null");
    }
    let started = Instant::now();
    let result = methods::dispatch(ctx, method, &params).await;
    let label = if methods::NAMES.contains(&method) || chain::NAMES.contains(&method) {
        method.to_owned()
    } else {
        "unknown".to_owned()
    };
    metrics::histogram!("timed_rpc_request_duration_seconds", "method" => label.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("timed_rpc_requests_total", "method" => label, "result" => if result.is_ok() { "ok" } else { "error" })
        .increment(1);
    // A request without an id is a notification: no answer.
    let id = id?;
    Some(match result {
        Ok(value) => json!({"jsonrpc": "2.0", "id": id, "result": value}),
        Err(error) => {
            tracing::debug!(method, code = error.code, message = %error.message, "rpc error");
            error_body(id, &error)
        }
    })
}

/// Parses a request body (one call or a batch) and answers it.
async fn answer(ctx: &RpcContext, body: &[u8]) -> Response {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return reply(
                StatusCode::OK,
                error_body(
                    Value::Null,
                    &RpcError::new(codes::PARSE_ERROR, format!("parse error: {e}")),
                ),
            )
        }
    };
    match request {
        Value::Array(calls) => {
            if calls.is_empty() || calls.len() > MAX_BATCH {
                return reply(
                    StatusCode::OK,
                    error_body(
                        Value::Null,
                        &RpcError::new(
                            codes::INVALID_REQUEST,
                            format!("a batch holds 1 to {MAX_BATCH} calls"),
                        ),
                    ),
                );
            }
            let mut answers = Vec::with_capacity(calls.len());
            for call in calls {
                if let Some(answer) = call_one(ctx, call).await {
                    answers.push(answer);
                }
            }
            if answers.is_empty() {
                StatusCode::NO_CONTENT.into_response()
            } else {
                reply(StatusCode::OK, Value::Array(answers))
            }
        }
        single => match call_one(ctx, single).await {
            Some(answer) => reply(StatusCode::OK, answer),
            None => StatusCode::NO_CONTENT.into_response(),
        },
    }
}

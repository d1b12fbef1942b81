//! A small JSON-RPC client, used by `timed rpc` and the tests.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::RpcError;

/// Largest response read, in bytes.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The URL is not an `http://host:port/` URL.
    #[error("invalid RPC URL {0:?}")]
    Url(String),
    /// The node could not be reached.
    #[error("cannot reach {url}: {message} (is the node running, and is rpc.listen right?)")]
    Unreachable {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The answer is not JSON-RPC.
    #[error("bad answer from {url}: {message}")]
    BadAnswer {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The node answered with an error.
    #[error("{0}")]
    Rpc(RpcError),
}

/// Calls `method` with `params` at `url` and returns the result.
///
/// # Errors
/// A [`CallError`].
pub async fn call(
    url: &str,
    token: Option<&str>,
    method: &str,
    params: Value,
) -> Result<Value, CallError> {
    let uri: hyper::Uri = url.parse().map_err(|_| CallError::Url(url.to_owned()))?;
    if uri.scheme_str() != Some("http") {
        return Err(CallError::Url(url.to_owned()));
    }
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut request = hyper::Request::post(uri).header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| CallError::Url(url.to_owned()))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let unreachable = |message: String| CallError::Unreachable {
        url: url.to_owned(),
        message,
    };
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let bytes = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    let bad = |message: String| CallError::BadAnswer {
        url: url.to_owned(),
        message,
    };
    let answer: Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if let Some(error) = answer.get("error") {
        return Err(CallError::Rpc(RpcError::new(
            error.get("code").and_then(Value::as_i64).unwrap_or(0),
            error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error"),
        )));
    }
    answer
        .get("result")
        .cloned()
        .ok_or_else(|| bad("neither result nor error".into()))
}

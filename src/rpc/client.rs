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
    /// The credentials hold characters an HTTP header cannot carry.
    #[error("the RPC credentials hold characters an HTTP header cannot carry (a line break?)")]
    BadCredentials,
    /// The node answered with an error.
    #[error("{0}")]
    Rpc(RpcError),
}

/// The credentials a call carries (see [`crate::rpc`], "Authentication").
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// None: enough for a node that requires none.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `Authorization: Basic base64(<user>:<password>)`.
    Basic {
        /// The user (`__cookie__` for the cookie file).
        user: String,
        /// The password.
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Bearer(_) => f.write_str("Bearer(..)"),
            Auth::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .finish_non_exhaustive(),
        }
    }
}

/// Longest cookie file read, in bytes (one is 75).
const MAX_COOKIE_LEN: u64 = 1024;

impl Auth {
    /// The credentials in a cookie file (`user:password`, as
    /// `timed run` and bitcoind write it).
    ///
    /// # Errors
    /// The file cannot be read, or holds no `:`.
    pub fn from_cookie_file(path: &std::path::Path) -> std::io::Result<Auth> {
        use std::io::Read;
        let mut text = zeroize::Zeroizing::new(String::new());
        std::fs::File::open(path)?
            .take(MAX_COOKIE_LEN)
            .read_to_string(&mut text)?;
        let (user, password) = text.trim_end().split_once(':').ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not a cookie file (no user:password)",
            )
        })?;
        Ok(Auth::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// The `Authorization` header value, if any.
    fn header(&self) -> Option<String> {
        use base64::Engine;
        match self {
            Auth::None => None,
            Auth::Bearer(token) => Some(format!("Bearer {token}")),
            Auth::Basic { user, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )),
        }
    }
}

/// Calls `method` with `params` at `url`, with `auth`, and returns the
/// result.
///
/// # Errors
/// A [`CallError`].
pub async fn call(url: &str, auth: &Auth, method: &str, params: Value) -> Result<Value, CallError> {
    let uri: hyper::Uri = url.parse().map_err(|_| CallError::Url(url.to_owned()))?;
    if uri.scheme_str() != Some("http") {
        return Err(CallError::Url(url.to_owned()));
    }
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    let mut request = hyper::Request::post(uri).header("content-type", "application/json");
    if let Some(value) = auth.header() {
        let mut value =
            hyper::header::HeaderValue::from_str(&value).map_err(|_| CallError::BadCredentials)?;
        value.set_sensitive(true);
        request = request.header(hyper::header::AUTHORIZATION, value);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_file_becomes_basic_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".cookie");
        std::fs::write(&path, "__cookie__:abc:def\n").unwrap();
        let auth = Auth::from_cookie_file(&path).unwrap();
        assert_eq!(
            auth,
            Auth::Basic {
                user: "__cookie__".into(),
                password: "abc:def".into()
            }
        );
        // base64("__cookie__:abc:def")
        assert_eq!(auth.header().unwrap(), "Basic X19jb29raWVfXzphYmM6ZGVm");
        assert!(!format!("{auth:?}").contains("abc"));
        std::fs::write(&path, "no colon").unwrap();
        assert!(Auth::from_cookie_file(&path).is_err());
        assert!(Auth::from_cookie_file(&dir.path().join("missing")).is_err());
        assert_eq!(Auth::None.header(), None);
        assert_eq!(Auth::Bearer("t".into()).header().unwrap(), "Bearer t");
    }
}

//! Who may call the RPC: the cookie file, `rpc.user` / `rpc.password` and
//! `rpc.bearer_token`, checked in constant time.
//!
//! The cookie follows bitcoind: at every start `timed run` writes
//! `<data dir>/.cookie` holding `__cookie__:<64 hex digits>` (32 fresh
//! random bytes), readable by the node's user only (created with mode
//! 0600), and removes it when it stops. A local client that can read the
//! file sends it as HTTP Basic credentials.

use std::io::Write;
use std::path::{Path, PathBuf};

use axum::http::HeaderValue;
use base64::Engine;

use crate::config::RpcSection;
use crate::crypto::ct_eq;

pub use crate::constants::{RPC_COOKIE_FILE as COOKIE_FILE, RPC_COOKIE_USER as COOKIE_USER};

/// Where the cookie is written before it is renamed into place.
const COOKIE_TMP_FILE: &str = ".cookie.tmp";

/// Random bytes in a cookie secret (64 hex digits).
const COOKIE_SECRET_BYTES: usize = 32;

/// The cookie could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the RPC cookie file {path}: {source}")]
pub struct CookieError {
    /// The file.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: std::io::Error,
}

/// The cookie file of a running node: written by [`CookieFile::create`],
/// removed when dropped.
pub struct CookieFile {
    path: PathBuf,
    secret: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for CookieFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl CookieFile {
    /// Writes `<data_dir>/.cookie` with a fresh secret, replacing any old
    /// one: the text goes to `.cookie.tmp`, created with mode 0600 (so the
    /// secret is never readable by others, not even for a moment), and is
    /// then renamed over `.cookie`.
    ///
    /// # Errors
    /// A [`CookieError`] naming the file.
    pub fn create(data_dir: &Path) -> Result<CookieFile, CookieError> {
        let path = data_dir.join(COOKIE_FILE);
        let tmp = data_dir.join(COOKIE_TMP_FILE);
        let error = |path: &Path| {
            let path = path.to_owned();
            move |source| CookieError { path, source }
        };
        let mut bytes = zeroize::Zeroizing::new([0u8; COOKIE_SECRET_BYTES]);
        rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, bytes.as_mut())
            .map_err(|e| error(&path)(std::io::Error::other(e)))?;
        let secret = zeroize::Zeroizing::new(hex::encode(bytes.as_ref()));
        // A tmp file left by a crash may have any mode: it is removed, and
        // the new one created exclusively (never through a symlink).
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(error(&tmp)(e)),
        }
        let written = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp)?;
            file.write_all(format!("{COOKIE_USER}:{}", secret.as_str()).as_bytes())?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(error(&tmp)(e));
        }
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(error(&path)(e));
        }
        tracing::info!(path = %path.display(), "RPC cookie file written");
        Ok(CookieFile { path, secret })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The secret (the password of the `__cookie__` user).
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl Drop for CookieFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::debug!(path = %self.path.display(), "RPC cookie file removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "cannot remove the RPC cookie file");
            }
        }
    }
}

/// The credentials the RPC accepts.
#[derive(Clone, Default)]
pub(crate) struct Credentials {
    bearer: Option<String>,
    basic: Option<(String, String)>,
    cookie: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("bearer", &self.bearer.is_some())
            .field("basic", &self.basic.is_some())
            .field("cookie", &self.cookie.is_some())
            .finish()
    }
}

impl Credentials {
    /// The credentials `[rpc]` configures (no cookie).
    pub(crate) fn from_settings(settings: &RpcSection) -> Self {
        Credentials {
            bearer: settings.bearer_token.clone(),
            basic: settings.user.clone().zip(settings.password.clone()),
            cookie: None,
        }
    }

    /// The same, also accepting the cookie `secret`.
    pub(crate) fn with_cookie(mut self, secret: &str) -> Self {
        self.cookie = Some(zeroize::Zeroizing::new(secret.to_owned()));
        self
    }

    /// Whether a request must carry credentials: only when the operator
    /// configured some. The cookie alone does not require them, so that a
    /// client sending none (TIME Coin's own `time-cli`) still works against
    /// a default node, which listens on loopback.
    pub(crate) fn required(&self) -> bool {
        self.bearer.is_some() || self.basic.is_some()
    }

    /// Whether a request with this `Authorization` header may proceed:
    /// without one, only if none is [`required`](Self::required); with one,
    /// only if it holds valid credentials (a wrong cookie is refused even
    /// when none is required).
    pub(crate) fn allows(&self, header: Option<&HeaderValue>) -> bool {
        let Some(header) = header else {
            return !self.required();
        };
        let Ok(value) = header.to_str() else {
            return false;
        };
        let Some((scheme, rest)) = value.trim().split_once(' ') else {
            return false;
        };
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("Bearer") {
            self.bearer
                .as_ref()
                .is_some_and(|token| ct_eq(rest.as_bytes(), token.as_bytes()))
        } else if scheme.eq_ignore_ascii_case("Basic") {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
                return false;
            };
            let decoded = zeroize::Zeroizing::new(decoded);
            let Some(colon) = decoded.iter().position(|&b| b == b':') else {
                return false;
            };
            let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
            // Both candidates are compared, whichever matches, so that the
            // time taken says nothing about which one came close.
            let cookie_ok = self.cookie.as_ref().is_some_and(|secret| {
                ct_eq(user, COOKIE_USER.as_bytes()) & ct_eq(password, secret.as_bytes())
            });
            let basic_ok = self
                .basic
                .as_ref()
                .is_some_and(|(u, p)| ct_eq(user, u.as_bytes()) & ct_eq(password, p.as_bytes()));
            cookie_ok | basic_ok
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderValue {
        let text = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {text}")).unwrap()
    }

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    const COOKIE: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn without_configured_credentials_none_or_valid_ones_pass() {
        let c = Credentials::from_settings(&RpcSection::default()).with_cookie(COOKIE);
        assert!(!c.required());
        assert!(c.allows(None));
        assert!(c.allows(Some(&basic(COOKIE_USER, COOKIE))));
        // The scheme is case-insensitive (RFC 9110).
        let lower = basic(COOKIE_USER, COOKIE)
            .to_str()
            .unwrap()
            .replace("Basic", "basic");
        assert!(c.allows(Some(&HeaderValue::from_str(&lower).unwrap())));
        for wrong in [
            basic(COOKIE_USER, "00"),
            basic("__cookie_", COOKIE),
            basic("", ""),
            bearer(COOKIE),
            HeaderValue::from_static("Basic !!!"),
            HeaderValue::from_static("Basic"),
            HeaderValue::from_static("Digest abc"),
            HeaderValue::from_static("Basic X19jb29raWVfXw=="),
        ] {
            assert!(!c.allows(Some(&wrong)), "{wrong:?}");
        }
        // Without a cookie (an in-process server) nothing but no header passes.
        let c = Credentials::from_settings(&RpcSection::default());
        assert!(c.allows(None));
        assert!(!c.allows(Some(&basic(COOKIE_USER, ""))));
    }

    #[test]
    fn configured_credentials_are_required_and_each_one_passes() {
        let settings = RpcSection {
            bearer_token: Some("token-0123456789abcdef".into()),
            user: Some("alice".into()),
            password: Some("pass:word-0123456789".into()),
            ..RpcSection::default()
        };
        let c = Credentials::from_settings(&settings).with_cookie(COOKIE);
        assert!(c.required());
        assert!(!c.allows(None));
        assert!(c.allows(Some(&bearer("token-0123456789abcdef"))));
        assert!(c.allows(Some(&basic("alice", "pass:word-0123456789"))));
        assert!(c.allows(Some(&basic(COOKIE_USER, COOKIE))));
        for wrong in [
            bearer("token-0123456789abcdeX"),
            basic("alice", "pass:word-012345678"),
            basic("bob", "pass:word-0123456789"),
            basic(COOKIE_USER, "pass:word-0123456789"),
            basic("alice", COOKIE),
        ] {
            assert!(!c.allows(Some(&wrong)), "{wrong:?}");
        }
        let only_user = Credentials::from_settings(&RpcSection {
            user: Some("alice".into()),
            password: Some("pass:word-0123456789".into()),
            ..RpcSection::default()
        });
        assert!(only_user.required());
        assert!(!only_user.allows(Some(&bearer(""))));
    }

    #[test]
    fn the_cookie_file_is_private_fresh_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(COOKIE_FILE);
        // A stale cookie and tmp file (world-readable) are replaced.
        std::fs::write(&path, "__cookie__:old").unwrap();
        std::fs::write(dir.path().join(COOKIE_TMP_FILE), "junk").unwrap();
        for p in [&path, &dir.path().join(COOKIE_TMP_FILE)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let cookie = CookieFile::create(dir.path()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let secret = text.strip_prefix("__cookie__:").unwrap();
        assert_eq!(secret.len(), 64);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(secret, cookie.secret());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join(COOKIE_TMP_FILE).exists());
        assert!(!format!("{cookie:?}").contains(secret));
        let first = secret.to_owned();
        drop(cookie);
        assert!(!path.exists());
        let again = CookieFile::create(dir.path()).unwrap();
        assert_ne!(again.secret(), first);
    }

    #[test]
    fn an_unwritable_cookie_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir");
        let e = CookieFile::create(&missing).unwrap_err().to_string();
        assert!(e.contains("no-such-dir"), "{e}");
        assert!(e.contains("cookie"), "{e}");
    }
}

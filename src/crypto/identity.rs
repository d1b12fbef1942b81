//! The node identity: an ed25519 key pair, its key file and the node id.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::constants::KEY_FILE_FORBIDDEN_MODE_BITS;

/// blake3 key-derivation context for node ids.
pub const NODE_ID_CONTEXT: &str = "timed v1 node id";

/// A node id: `blake3::derive_key("timed v1 node id", ed25519_public_key)`.
///
/// Displayed as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// Derives the node id of an ed25519 public key.
    pub fn from_public_key(key: &VerifyingKey) -> Self {
        NodeId(blake3::derive_key(NODE_ID_CONTEXT, key.as_bytes()))
    }

    /// The id as bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 hex digits, for log lines.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

/// Error for a node id given as text.
#[derive(Debug, thiserror::Error)]
#[error("invalid node id {0:?}: expected 64 hex digits")]
pub struct InvalidNodeId(pub String);

impl std::str::FromStr for NodeId {
    type Err = InvalidNodeId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| InvalidNodeId(s.to_owned()))?;
        Ok(NodeId(out))
    }
}

/// Errors loading or creating a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read, created or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is readable by group or others.
    #[error(
        "key file {path} has mode {mode:o}: it must not be accessible by group or others \
         (run `chmod 600 {path}`)"
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is not a key.
    #[error("key file {path} is corrupt: {reason}")]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The long-lived ed25519 identity of this node.
///
/// # Security
/// The secret key is zeroized when the identity is dropped (ed25519-dalek's
/// `SigningKey` implements `ZeroizeOnDrop`); it is never logged: `Debug` prints
/// the node id only. A clone is a second zeroize-on-drop copy.
#[derive(Clone)]
pub struct NodeIdentity {
    signing: SigningKey,
    node_id: NodeId,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Generates a fresh identity from the operating system's RNG.
    pub fn generate() -> Self {
        Self::from_signing_key(SigningKey::generate(&mut OsRng))
    }

    /// Builds an identity from a 32-byte secret seed.
    pub fn from_secret_bytes(seed: &[u8; 32]) -> Self {
        Self::from_signing_key(SigningKey::from_bytes(seed))
    }

    fn from_signing_key(signing: SigningKey) -> Self {
        let node_id = NodeId::from_public_key(&signing.verifying_key());
        NodeIdentity { signing, node_id }
    }

    /// The node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The ed25519 public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Signs `message` with the identity key.
    pub fn sign(&self, message: &[u8]) -> ed25519_dalek::Signature {
        self.signing.sign(message)
    }

    /// Loads the identity from `path`, or creates the file with a new key
    /// (mode 0600) when it does not exist.
    ///
    /// # Errors
    /// A file that exists but cannot be read, is accessible by group or
    /// others, or does not hold exactly 64 hex digits is an error; it is
    /// never silently replaced.
    pub fn load_or_generate(path: &Path) -> Result<Self, KeyFileError> {
        match fs::symlink_metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Self::generate();
                identity.save(path)?;
                Ok(identity)
            }
            Err(source) => Err(KeyFileError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Loads the identity from an existing key file.
    ///
    /// # Errors
    /// See [`NodeIdentity::load_or_generate`].
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let seed = read_secret_file(path)?;
        Ok(Self::from_secret_bytes(&seed))
    }

    /// Writes the secret seed to a new file with mode 0600.
    ///
    /// # Errors
    /// Fails if the file exists already or cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        let text = Zeroizing::new(format!("{}\n", hex::encode(self.signing.to_bytes())));
        write_secret_file(path, text.as_bytes())
    }
}

/// Reads a secret key file holding 64 hex digits (and optional surrounding
/// whitespace), checking its permissions first.
pub(crate) fn read_secret_file(path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(KeyFileError::Corrupt {
            path: path.to_owned(),
            reason: "not a regular file",
        });
    }
    check_mode(path, &meta)?;
    if meta.len() > 1024 {
        return Err(KeyFileError::Corrupt {
            path: path.to_owned(),
            reason: "file is larger than a key file can be",
        });
    }
    let text = Zeroizing::new(fs::read(path).map_err(io)?);
    let trimmed = text.trim_ascii();
    let mut seed = Zeroizing::new([0u8; 32]);
    if trimmed.len() != 64 {
        return Err(KeyFileError::Corrupt {
            path: path.to_owned(),
            reason: "expected 64 hex digits",
        });
    }
    hex::decode_to_slice(trimmed, seed.as_mut()).map_err(|_| KeyFileError::Corrupt {
        path: path.to_owned(),
        reason: "expected 64 hex digits",
    })?;
    Ok(seed)
}

#[cfg(unix)]
fn check_mode(path: &Path, meta: &fs::Metadata) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & KEY_FILE_FORBIDDEN_MODE_BITS != 0 {
        return Err(KeyFileError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path, _meta: &fs::Metadata) -> Result<(), KeyFileError> {
    let _ = KEY_FILE_FORBIDDEN_MODE_BITS;
    Ok(())
}

/// Creates `path` (which must not exist) with mode 0600 and writes `bytes`.
pub(crate) fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generate_save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_key");
        let a = NodeIdentity::load_or_generate(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = NodeIdentity::load_or_generate(&path).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        assert_eq!(a.public_key(), b.public_key());
    }

    #[test]
    fn world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_key");
        NodeIdentity::generate().save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeIdentity::load_or_generate(&path).unwrap_err();
        assert!(matches!(
            err,
            KeyFileError::InsecurePermissions { mode: 0o644, .. }
        ));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn corrupt_key_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node_key");
        write_secret_file(&path, b"not a key\n").unwrap();
        let err = NodeIdentity::load_or_generate(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Corrupt { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"not a key\n");
        let path2 = dir.path().join("k2");
        write_secret_file(&path2, &[b'z'; 64]).unwrap();
        assert!(matches!(
            NodeIdentity::load(&path2),
            Err(KeyFileError::Corrupt { .. })
        ));
    }

    #[test]
    fn unreadable_key_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        // A path below a regular file cannot be read (ENOTDIR), even as root.
        let file = dir.path().join("plain");
        fs::write(&file, b"x").unwrap();
        let err = NodeIdentity::load_or_generate(&file.join("node_key")).unwrap_err();
        assert!(matches!(err, KeyFileError::Io { .. }), "{err}");
        // A directory where the key should be is not a key.
        let path = dir.path().join("node_key");
        fs::create_dir(&path).unwrap();
        let err = NodeIdentity::load_or_generate(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn node_id_is_derived_and_parses() {
        let id = NodeIdentity::from_secret_bytes(&[7u8; 32]);
        assert_eq!(
            id.node_id(),
            NodeId(blake3::derive_key(
                NODE_ID_CONTEXT,
                id.public_key().as_bytes()
            ))
        );
        let text = id.node_id().to_string();
        assert_eq!(text.parse::<NodeId>().unwrap(), id.node_id());
        assert!("xyz".parse::<NodeId>().is_err());
        assert!(!format!("{id:?}").contains(&hex::encode([7u8; 32])));
    }
}

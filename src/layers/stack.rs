//! Building each connection's middleware stack from the config's ordered
//! `[[middleware]]` list.
//!
//! ```toml
//! [[middleware]]
//! name = "blacklist"
//!
//! [[middleware]]
//! name = "rate_limit"
//! tx_per_sec = 50
//! ```
//!
//! The first entry is the outermost layer: it sees a message first and the
//! outcome last. Unknown names, unknown parameters, bad values and repeated
//! layers are start-up errors that name the entry.
//!
//! # Default order, and why
//! 1. `blacklist`: refusing a banned peer is the cheapest decision, so it
//!    comes first and costs nothing else.
//! 2. `scoring`: it sees the outcome of every layer inside it (rate-limit
//!    excess, invalid signatures, malformed messages, the handlers' verdicts)
//!    and turns offences into penalties, disconnects and bans. A layer placed
//!    *before* scoring refuses without the peer being penalised.
//! 3. `rate_limit`: floods are cut before any cache lookup or signature
//!    check; duplicates count against the budget, so flooding with copies is
//!    not free.
//! 4. `dedup`: an envelope seen before skips signature verification; its id
//!    covers the signature, and failed verifications release their
//!    reservation, so forgeries cannot poison the cache.
//! 5. `auth`: the expensive signature check runs last, only on new messages
//!    within the rate budget, batched when several are waiting.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tower::util::BoxCloneService;
use tower::Layer;

use super::auth::{AuthConfig, AuthLayer};
use super::blacklist::{Blacklist, BlacklistConfig, BlacklistLayer};
use super::dedup::{DedupConfig, DedupLayer};
use super::rate_limit::{GossipScale, RateLimitConfig, RateLimitLayer};
use super::scoring::{ScoringConfig, ScoringLayer};
use super::LayerCounters;

pub use crate::peer::InboundService;

/// One `[[middleware]]` entry: the layer's name and its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum MiddlewareConfig {
    /// See [`super::blacklist`].
    Blacklist(BlacklistConfig),
    /// See [`super::scoring`].
    Scoring(ScoringConfig),
    /// See [`super::rate_limit`].
    RateLimit(RateLimitConfig),
    /// See [`super::dedup`].
    Dedup(DedupConfig),
    /// See [`super::auth`].
    Auth(AuthConfig),
}

/// The names of the known layers.
pub const LAYER_NAMES: [&str; 5] = ["blacklist", "scoring", "rate_limit", "dedup", "auth"];

impl MiddlewareConfig {
    /// The layer's name.
    pub fn name(&self) -> &'static str {
        match self {
            MiddlewareConfig::Blacklist(_) => super::blacklist::NAME,
            MiddlewareConfig::Scoring(_) => super::scoring::NAME,
            MiddlewareConfig::RateLimit(_) => super::rate_limit::NAME,
            MiddlewareConfig::Dedup(_) => super::dedup::NAME,
            MiddlewareConfig::Auth(_) => super::auth::NAME,
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            MiddlewareConfig::Blacklist(c) => c.validate(),
            MiddlewareConfig::Scoring(c) => c.validate(),
            MiddlewareConfig::RateLimit(c) => c.validate(),
            MiddlewareConfig::Dedup(c) => c.validate(),
            MiddlewareConfig::Auth(c) => c.validate(),
        }
    }

    /// The default stack, in the documented order.
    pub fn default_stack() -> Vec<MiddlewareConfig> {
        vec![
            MiddlewareConfig::Blacklist(BlacklistConfig::default()),
            MiddlewareConfig::Scoring(ScoringConfig::default()),
            MiddlewareConfig::RateLimit(RateLimitConfig::default()),
            MiddlewareConfig::Dedup(DedupConfig::default()),
            MiddlewareConfig::Auth(AuthConfig::default()),
        ]
    }
}

/// Errors in the `[[middleware]]` list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// An entry without a `name`.
    #[error("middleware[{index}]: missing `name` (one of {known})", known = LAYER_NAMES.join(", "))]
    MissingName {
        /// The entry's position (0-based).
        index: usize,
    },
    /// An entry whose name is not a known layer.
    #[error("middleware[{index}]: unknown layer {name:?} (known layers: {known})", known = LAYER_NAMES.join(", "))]
    UnknownLayer {
        /// The entry's position.
        index: usize,
        /// The name given.
        name: String,
    },
    /// An entry with an unknown or badly typed parameter, or a bad value.
    #[error("middleware[{index}] ({name}): {message}")]
    BadParameter {
        /// The entry's position.
        index: usize,
        /// The layer.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The same layer twice.
    #[error("middleware[{index}]: layer {name:?} is already in the stack")]
    Duplicate {
        /// The entry's position.
        index: usize,
        /// The layer.
        name: String,
    },
}

/// Parses and validates raw `[[middleware]]` entries.
///
/// # Errors
/// The first bad entry, named by position and layer.
pub fn parse_entries(entries: &[toml::Value]) -> Result<Vec<MiddlewareConfig>, StackError> {
    let mut out: Vec<MiddlewareConfig> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let name = entry
            .get("name")
            .and_then(toml::Value::as_str)
            .ok_or(StackError::MissingName { index })?;
        if !LAYER_NAMES.contains(&name) {
            return Err(StackError::UnknownLayer {
                index,
                name: name.to_owned(),
            });
        }
        let config: MiddlewareConfig =
            entry
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| StackError::BadParameter {
                    index,
                    name: name.to_owned(),
                    message: e.message().trim().to_owned(),
                })?;
        config
            .validate()
            .map_err(|message| StackError::BadParameter {
                index,
                name: name.to_owned(),
                message,
            })?;
        if out.iter().any(|c| c.name() == config.name()) {
            return Err(StackError::Duplicate {
                index,
                name: name.to_owned(),
            });
        }
        out.push(config);
    }
    Ok(out)
}

/// A layer built from its config, with its node-wide state.
#[derive(Clone, Debug)]
pub enum BuiltLayer {
    /// `blacklist`.
    Blacklist(BlacklistLayer),
    /// `scoring`.
    Scoring(ScoringLayer),
    /// `rate_limit`.
    RateLimit(RateLimitLayer),
    /// `dedup`.
    Dedup(DedupLayer),
    /// `auth`.
    Auth(AuthLayer),
}

impl BuiltLayer {
    /// The layer's name.
    pub fn name(&self) -> &'static str {
        match self {
            BuiltLayer::Blacklist(_) => super::blacklist::NAME,
            BuiltLayer::Scoring(_) => super::scoring::NAME,
            BuiltLayer::RateLimit(_) => super::rate_limit::NAME,
            BuiltLayer::Dedup(_) => super::dedup::NAME,
            BuiltLayer::Auth(_) => super::auth::NAME,
        }
    }

    /// The layer's decision counters.
    pub fn counters(&self) -> &Arc<LayerCounters> {
        match self {
            BuiltLayer::Blacklist(l) => l.counters(),
            BuiltLayer::Scoring(l) => l.counters(),
            BuiltLayer::RateLimit(l) => l.counters(),
            BuiltLayer::Dedup(l) => l.counters(),
            BuiltLayer::Auth(l) => l.counters(),
        }
    }

    fn wrap(&self, inner: InboundService) -> InboundService {
        match self {
            BuiltLayer::Blacklist(l) => BoxCloneService::new(l.layer(inner)),
            BuiltLayer::Scoring(l) => BoxCloneService::new(l.layer(inner)),
            BuiltLayer::RateLimit(l) => BoxCloneService::new(l.layer(inner)),
            BuiltLayer::Dedup(l) => BoxCloneService::new(l.layer(inner)),
            BuiltLayer::Auth(l) => BoxCloneService::new(l.layer(inner)),
        }
    }
}

/// The node-wide middleware: built once at start-up (or on reload), applied
/// to every new connection.
#[derive(Clone, Debug)]
pub struct MiddlewareStack {
    layers: Vec<BuiltLayer>,
    configs: Vec<MiddlewareConfig>,
    blacklist: Arc<Blacklist>,
    judge: ScoringLayer,
}

impl MiddlewareStack {
    /// Builds the layers of `configs` (outermost first). `magic` is the
    /// network's, for envelope verification. The ban list is built from the
    /// `blacklist` entry's parameters, or from defaults without one: bans by
    /// `scoring` and at accept work whether or not the `blacklist` layer
    /// checks every message. `scale` sizes the gossip budgets of
    /// `rate_limit`.
    pub fn build(configs: &[MiddlewareConfig], magic: [u8; 4], scale: GossipScale) -> Self {
        let blacklist_config = configs
            .iter()
            .find_map(|c| match c {
                MiddlewareConfig::Blacklist(b) => Some(b.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let blacklist = Arc::new(Blacklist::new(&blacklist_config));
        Self::build_with_blacklist(configs, magic, scale, blacklist)
    }

    /// Like [`MiddlewareStack::build`], sharing an existing ban list (on a
    /// config reload, bans survive).
    pub fn build_with_blacklist(
        configs: &[MiddlewareConfig],
        magic: [u8; 4],
        scale: GossipScale,
        blacklist: Arc<Blacklist>,
    ) -> Self {
        let layers = configs
            .iter()
            .map(|c| match c {
                MiddlewareConfig::Blacklist(_) => {
                    BuiltLayer::Blacklist(BlacklistLayer::new(blacklist.clone()))
                }
                MiddlewareConfig::Scoring(s) => {
                    BuiltLayer::Scoring(ScoringLayer::new(s, blacklist.clone()))
                }
                MiddlewareConfig::RateLimit(r) => {
                    BuiltLayer::RateLimit(RateLimitLayer::new(r, scale))
                }
                MiddlewareConfig::Dedup(d) => BuiltLayer::Dedup(DedupLayer::new(d)),
                MiddlewareConfig::Auth(a) => BuiltLayer::Auth(AuthLayer::new(a, magic)),
            })
            .collect::<Vec<_>>();
        let judge = layers
            .iter()
            .find_map(|l| match l {
                BuiltLayer::Scoring(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| ScoringLayer::record_only(blacklist.clone()));
        MiddlewareStack {
            layers,
            configs: configs.to_vec(),
            blacklist,
            judge,
        }
    }

    /// Wraps a connection's handler in every layer, the first entry
    /// outermost.
    pub fn wrap(&self, handler: InboundService) -> InboundService {
        self.layers
            .iter()
            .rev()
            .fold(handler, |inner, layer| layer.wrap(inner))
    }

    /// The built layers, outermost first.
    pub fn layers(&self) -> &[BuiltLayer] {
        &self.layers
    }

    /// The configs the stack was built from.
    pub fn configs(&self) -> &[MiddlewareConfig] {
        &self.configs
    }

    /// The node-wide ban list.
    pub fn blacklist(&self) -> &Arc<Blacklist> {
        &self.blacklist
    }

    /// Who judges offences and response times outside the stack: the
    /// `scoring` layer, or without it a judge that records scores and
    /// never disconnects or bans.
    pub fn judge(&self) -> &ScoringLayer {
        &self.judge
    }

    /// The layer names, outermost first, joined by ` -> `.
    pub fn describe(&self) -> String {
        self.layers
            .iter()
            .map(BuiltLayer::name)
            .collect::<Vec<_>>()
            .join(" -> ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<toml::Value> {
        #[derive(Deserialize)]
        struct File {
            middleware: Vec<toml::Value>,
        }
        toml::from_str::<File>(text).unwrap().middleware
    }

    #[test]
    fn the_default_stack_parses_from_its_own_serialization() {
        let defaults = MiddlewareConfig::default_stack();
        #[derive(Serialize)]
        struct File<'a> {
            middleware: &'a [MiddlewareConfig],
        }
        let text = toml::to_string(&File {
            middleware: &defaults,
        })
        .unwrap();
        assert_eq!(parse_entries(&entries(&text)).unwrap(), defaults);
        let stack = MiddlewareStack::build(&defaults, *b"TDEV", Default::default());
        assert_eq!(
            stack.describe(),
            "blacklist -> scoring -> rate_limit -> dedup -> auth"
        );
    }

    #[test]
    fn bad_entries_name_themselves() {
        let err = parse_entries(&entries(
            "[[middleware]]\nname = \"dedup\"\n[[middleware]]\nname = \"firewall\"\n",
        ))
        .unwrap_err();
        assert_eq!(
            err,
            StackError::UnknownLayer {
                index: 1,
                name: "firewall".into()
            }
        );
        assert!(err.to_string().contains("firewall"));
        let err =
            parse_entries(&entries("[[middleware]]\nname = \"dedup\"\nttl = 5\n")).unwrap_err();
        assert!(
            matches!(&err, StackError::BadParameter { index: 0, message, .. } if message.contains("ttl")),
            "{err}"
        );
        let err = parse_entries(&entries(
            "[[middleware]]\nname = \"dedup\"\nttl_secs = \"x\"\n",
        ))
        .unwrap_err();
        assert!(matches!(err, StackError::BadParameter { .. }), "{err}");
        let err = parse_entries(&entries("[[middleware]]\nname = \"dedup\"\nttl_secs = 0\n"))
            .unwrap_err();
        assert!(err.to_string().contains("ttl_secs"), "{err}");
        let err = parse_entries(&entries("[[middleware]]\nttl_secs = 1\n")).unwrap_err();
        assert_eq!(err, StackError::MissingName { index: 0 });
        let err = parse_entries(&entries(
            "[[middleware]]\nname = \"dedup\"\n[[middleware]]\nname = \"dedup\"\n",
        ))
        .unwrap_err();
        assert!(matches!(err, StackError::Duplicate { index: 1, .. }));
    }
}

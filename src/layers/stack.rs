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
//!
//! # Adding a layer
//! A layer is one module (its config, its tower `Layer` and `Service`, its
//! metrics and tests) that implements [`Middleware`] for its config and
//! [`BuiltMiddleware`] for its layer, plus one line in [`REGISTRY`].
//! Parsing, the stack builder, `getmiddleware`, the metrics' label values
//! and the error messages' list of names all read the registry. State a
//! layer shares between connections belongs to the network
//! ([`SharedState`]), so a stack without the layer keeps the bookkeeping.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tower::util::BoxCloneService;

use super::auth::{AuthConfig, AuthLayer};
use super::blacklist::{Blacklist, BlacklistConfig, BlacklistLayer};
use super::dedup::{DedupConfig, DedupLayer};
use super::rate_limit::{GossipScale, RateLimitConfig, RateLimitLayer};
use super::scoring::{ScoringConfig, ScoringLayer};
use super::shared::SharedState;
use super::LayerCounters;

pub use crate::peer::InboundService;

/// A middleware layer's config: its `[[middleware]]` entry. Implementing
/// this for a config type, plus one line in [`REGISTRY`], is all a new
/// layer needs: parsing, the stack builder, `getmiddleware`, the metrics
/// and the docs' list of names follow from the registry.
pub trait Middleware:
    Serialize + DeserializeOwned + Clone + fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// The layer's name in the config, logs and metrics.
    const NAME: &'static str;
    /// What the node does without this layer (for the docs and
    /// `getmiddleware`).
    const WITHOUT: &'static str;
    /// The built layer.
    type Layer: BuiltMiddleware;

    /// Checks the parameters' values.
    ///
    /// # Errors
    /// What is wrong, naming the parameter.
    fn validate(&self) -> Result<(), String>;

    /// Builds the layer over the network's shared state.
    fn build(&self, shared: &SharedState) -> Self::Layer;
}

/// A built layer, as the stack holds it.
pub trait BuiltMiddleware: fmt::Debug + Send + Sync + 'static {
    /// The layer's name.
    fn name(&self) -> &'static str;
    /// The layer's decision counters.
    fn counters(&self) -> &Arc<LayerCounters>;
    /// Wraps `inner` in this layer.
    fn wrap(&self, inner: InboundService) -> InboundService;
    /// The shared state this layer reads, for `getmiddleware`.
    fn state(&self, _shared: &SharedState) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// For [`MiddlewareStack::layer`].
    fn as_any(&self) -> &dyn Any;
}

/// One layer known to the node: how to parse its entry and its defaults.
#[derive(Clone, Copy)]
pub struct Registration {
    /// The layer's name.
    pub name: &'static str,
    /// What the node does without it.
    pub without: &'static str,
    parse: fn(toml::Value) -> Result<MiddlewareConfig, String>,
    default: fn() -> MiddlewareConfig,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// The registration of layer `T`.
    pub const fn of<T: Middleware + Default>() -> Registration {
        Registration {
            name: T::NAME,
            without: T::WITHOUT,
            parse: parse_params::<T>,
            default: || MiddlewareConfig::new(T::default()),
        }
    }
}

fn parse_params<T: Middleware>(params: toml::Value) -> Result<MiddlewareConfig, String> {
    let config: T = params
        .try_into()
        .map_err(|e: toml::de::Error| e.message().trim().to_owned())?;
    config.validate()?;
    Ok(MiddlewareConfig::new(config))
}

/// Every layer the node knows, in the default order (outermost first; see
/// the module docs for why).
pub const REGISTRY: &[Registration] = &[
    Registration::of::<BlacklistConfig>(),
    Registration::of::<ScoringConfig>(),
    Registration::of::<RateLimitConfig>(),
    Registration::of::<DedupConfig>(),
    Registration::of::<AuthConfig>(),
];

/// The names of the known layers, in the default order.
pub fn layer_names() -> Vec<&'static str> {
    REGISTRY.iter().map(|r| r.name).collect()
}

/// The object-safe side of [`Middleware`].
trait Spec: fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    fn params(&self) -> serde_json::Value;
    fn build(&self, shared: &SharedState) -> Arc<dyn BuiltMiddleware>;
    fn clone_spec(&self) -> Box<dyn Spec>;
    fn eq_spec(&self, other: &dyn Spec) -> bool;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Middleware> Spec for T {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    fn build(&self, shared: &SharedState) -> Arc<dyn BuiltMiddleware> {
        Arc::new(Middleware::build(self, shared))
    }

    fn clone_spec(&self) -> Box<dyn Spec> {
        Box::new(self.clone())
    }

    fn eq_spec(&self, other: &dyn Spec) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One `[[middleware]]` entry: a layer's name and its parameters.
pub struct MiddlewareConfig(Box<dyn Spec>);

impl MiddlewareConfig {
    /// The entry for layer config `config`.
    pub fn new<T: Middleware>(config: T) -> Self {
        MiddlewareConfig(Box::new(config))
    }

    /// The layer's name.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// The parameters if this is an entry of layer `T`.
    pub fn get<T: Middleware>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref::<T>()
    }

    /// The default stack, in the registry's order.
    pub fn default_stack() -> Vec<MiddlewareConfig> {
        REGISTRY.iter().map(|r| (r.default)()).collect()
    }
}

impl Clone for MiddlewareConfig {
    fn clone(&self) -> Self {
        MiddlewareConfig(self.0.clone_spec())
    }
}

impl fmt::Debug for MiddlewareConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl PartialEq for MiddlewareConfig {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_spec(&*other.0)
    }
}

impl Serialize for MiddlewareConfig {
    /// As in the config file: `name` and the layer's parameters.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut params = match self.0.params() {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        params.insert("name".into(), self.name().into());
        params.serialize(s)
    }
}

impl<'de> Deserialize<'de> for MiddlewareConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entry = toml::Value::deserialize(d)?;
        parse_entries(std::slice::from_ref(&entry))
            .map_err(serde::de::Error::custom)?
            .pop()
            .ok_or_else(|| serde::de::Error::custom("empty middleware entry"))
    }
}

/// Errors in the `[[middleware]]` list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// An entry without a `name`.
    #[error("middleware[{index}]: missing `name` (one of {known})", known = layer_names().join(", "))]
    MissingName {
        /// The entry's position (0-based).
        index: usize,
    },
    /// An entry whose name is not a known layer.
    #[error("middleware[{index}]: unknown layer {name:?} (known layers: {known})", known = layer_names().join(", "))]
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
        let Some(registration) = REGISTRY.iter().find(|r| r.name == name) else {
            return Err(StackError::UnknownLayer {
                index,
                name: name.to_owned(),
            });
        };
        let mut params = entry.clone();
        if let Some(table) = params.as_table_mut() {
            table.remove("name");
        }
        let config = (registration.parse)(params).map_err(|message| StackError::BadParameter {
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

/// The node-wide middleware: built from the config at start-up (or on
/// reload) over the network's [`SharedState`], applied to every new
/// connection.
#[derive(Clone, Debug)]
pub struct MiddlewareStack {
    layers: Vec<Arc<dyn BuiltMiddleware>>,
    configs: Vec<MiddlewareConfig>,
    shared: SharedState,
    judge: ScoringLayer,
}

impl MiddlewareStack {
    /// Builds the layers of `configs` (outermost first) over fresh shared
    /// state for the network with `magic`; `scale` sizes the gossip budgets
    /// of `rate_limit`.
    pub fn build(configs: &[MiddlewareConfig], magic: [u8; 4], scale: GossipScale) -> Self {
        Self::build_with(configs, SharedState::new(configs, magic, scale))
    }

    /// Builds the layers of `configs` over `shared` (the network's state,
    /// kept across reloads).
    pub fn build_with(configs: &[MiddlewareConfig], shared: SharedState) -> Self {
        let layers: Vec<Arc<dyn BuiltMiddleware>> =
            configs.iter().map(|c| c.0.build(&shared)).collect();
        let judge = layers
            .iter()
            .find_map(|l| l.as_any().downcast_ref::<ScoringLayer>().cloned())
            .unwrap_or_else(|| {
                ScoringLayer::record_only(shared.blacklist.clone(), shared.scores.clone())
            });
        MiddlewareStack {
            layers,
            configs: configs.to_vec(),
            shared,
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
    pub fn layers(&self) -> &[Arc<dyn BuiltMiddleware>] {
        &self.layers
    }

    /// The built layer of type `L`, if it is in the stack.
    pub fn layer<L: BuiltMiddleware>(&self) -> Option<&L> {
        self.layers
            .iter()
            .find_map(|l| l.as_any().downcast_ref::<L>())
    }

    /// The configs the stack was built from.
    pub fn configs(&self) -> &[MiddlewareConfig] {
        &self.configs
    }

    /// The network's shared state.
    pub fn shared(&self) -> &SharedState {
        &self.shared
    }

    /// The node-wide ban list.
    pub fn blacklist(&self) -> &Arc<Blacklist> {
        &self.shared.blacklist
    }

    /// Who judges offences and response times outside the stack: the
    /// `scoring` layer, or without it a judge that records scores in the
    /// shared book and never disconnects or bans.
    pub fn judge(&self) -> &ScoringLayer {
        &self.judge
    }

    /// The layer names, outermost first, joined by ` -> `.
    pub fn describe(&self) -> String {
        self.layers
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(" -> ")
    }
}

/// Implements [`BuiltMiddleware`] for a layer type with `name`, `counters()`
/// and tower's `Layer<InboundService>`.
macro_rules! built_middleware {
    ($layer:ty, $name:expr, |$self_:ident, $shared:ident| $state:expr) => {
        impl BuiltMiddleware for $layer {
            fn name(&self) -> &'static str {
                $name
            }
            fn counters(&self) -> &Arc<LayerCounters> {
                <$layer>::counters(self)
            }
            fn wrap(&self, inner: InboundService) -> InboundService {
                BoxCloneService::new(tower::Layer::layer(self, inner))
            }
            fn state(&self, $shared: &SharedState) -> serde_json::Value {
                let $self_ = self;
                $state
            }
            fn as_any(&self) -> &dyn Any {
                self
            }
        }
    };
}

built_middleware!(BlacklistLayer, super::blacklist::NAME, |_l, shared| {
    serde_json::json!({
        "tracked_ips": shared.blacklist.tracked(),
        "bans": shared.blacklist.list().len(),
    })
});
built_middleware!(ScoringLayer, super::scoring::NAME, |_l, shared| {
    serde_json::json!({ "scores": shared.scores.len() })
});
built_middleware!(RateLimitLayer, super::rate_limit::NAME, |_l, shared| {
    serde_json::json!({ "tracked_ips": shared.tracked_ips() })
});
built_middleware!(DedupLayer, super::dedup::NAME, |_l, shared| {
    serde_json::json!({ "ids": shared.dedup.len() })
});
built_middleware!(AuthLayer, super::auth::NAME, |_l, _shared| {
    serde_json::Value::Null
});

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

    #[test]
    fn every_registered_layer_says_what_the_node_does_without_it() {
        assert_eq!(
            layer_names(),
            ["blacklist", "scoring", "rate_limit", "dedup", "auth"]
        );
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/CONFIG.md"),
        )
        .unwrap();
        for registration in REGISTRY {
            assert!(
                registration.without.len() > 40,
                "{}: say what the node does without it",
                registration.name
            );
            let row = format!("| `{}` | {} |", registration.name, registration.without);
            assert!(doc.contains(&row), "docs/CONFIG.md lacks the row {row}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_scoring_offences_are_recorded_and_never_disconnect() {
        use crate::peer::{Direction, Offence, PeerContext, PeerJudge};
        let configs: Vec<MiddlewareConfig> = MiddlewareConfig::default_stack()
            .into_iter()
            .filter(|c| c.name() != "scoring")
            .collect();
        let stack = MiddlewareStack::build(&configs, *b"TDEV", Default::default());
        assert!(stack.layer::<ScoringLayer>().is_none());
        assert!(stack.layer::<DedupLayer>().is_some());
        let id = crate::crypto::NodeId([7; 32]);
        let addr: std::net::SocketAddr = "127.0.0.7:1".parse().unwrap();
        let score = stack.shared().scores.handle(id, addr.ip());
        let peer = PeerContext::new(id, addr, Direction::Outbound, 1, score);
        for _ in 0..30 {
            PeerJudge::penalize(stack.judge(), &peer, Offence::Timeout);
        }
        // Recorded in the shared book (and so shown), at the floor...
        assert_eq!(stack.shared().scores.score(&id), Some(-100.0));
        // ...but no disconnect, no ban.
        assert!(!peer.disconnect.is_cancelled());
        assert!(!stack.blacklist().is_banned(addr.ip()));
        assert!(stack.judge().readmit(&peer));

        // A reload that adds scoring back keeps the book: the score counts.
        let reloaded = MiddlewareStack::build_with(
            &MiddlewareConfig::default_stack(),
            stack
                .shared()
                .reconfigure(&MiddlewareConfig::default_stack()),
        );
        assert!(Arc::ptr_eq(
            &reloaded.shared().scores,
            &stack.shared().scores
        ));
        assert!(Arc::ptr_eq(&reloaded.shared().dedup, &stack.shared().dedup));
        assert!(
            !reloaded.judge().readmit(&peer),
            "the carried-over score refuses it"
        );
    }
}

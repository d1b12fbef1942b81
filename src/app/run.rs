//! `timed run`: the process around a [`Node`], wired in one place.
//!
//! Started in this order: the chain (opened from the data dir, with its
//! worker), the network with the router, sync, block production and ban
//! persistence ([`Node::start`]), then the operator surfaces: metrics
//! (exporter and the gauges' refresh task) and the RPC (its cookie file is
//! written right after the chain opens, and removed last). Stopped in the
//! reverse order: RPC and metrics, then production, sync and the network
//! (each connection says `Disconnect`), then the chain (the pool journal
//! flushed, the store closed). Shutdown waits for every tracked task up to
//! [`SHUTDOWN_DEADLINE`], then exits anyway.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Node;
use crate::config::Config;
use crate::crypto::NodeIdentity;
use crate::network::address_book::{AddressBook, GroupBits};
use crate::network::PeerTarget;
use crate::rpc::auth::CookieFile;
use crate::rpc::{self, RpcContext};
use crate::state::{Chain, ChainError, ChainOptions};
use crate::storage::{Store, StoreError, DB_FILE};
use crate::wallet::Wallet;

/// How long shutdown waits for the node's tasks after telling them to stop.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(3);

/// What `timed run` starts with.
#[derive(Debug)]
pub struct RunOptions {
    /// The configuration, with the command line applied.
    pub config: Config,
    /// The config file, for `reloadconfig` and SIGHUP.
    pub config_path: Option<PathBuf>,
    /// The node's identity.
    pub identity: NodeIdentity,
    /// The data dir (exists).
    pub data_dir: PathBuf,
    /// Move the database aside and start over from genesis.
    pub resync: bool,
    /// The Prometheus exporter's handle, when metrics are enabled.
    pub metrics: Option<PrometheusHandle>,
    /// Cancelled to stop the node (by the `stop` RPC, or by the caller).
    pub stop: CancellationToken,
}

/// Why `timed run` failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Something the operator must fix in the config, the command line or
    /// the data dir.
    #[error("{0}")]
    Usage(String),
    /// The node could not start or failed while running.
    #[error("{0}")]
    Runtime(String),
}

impl RunError {
    fn usage(message: impl std::fmt::Display) -> Self {
        RunError::Usage(message.to_string())
    }

    fn runtime(message: impl std::fmt::Display) -> Self {
        RunError::Runtime(message.to_string())
    }
}

/// Runs a node until it is told to stop (signal, `stop` RPC, the caller's
/// token) or its database fails.
///
/// # Errors
/// A [`RunError`] naming what to fix.
pub async fn run(options: RunOptions) -> Result<(), RunError> {
    let RunOptions {
        config,
        config_path,
        identity,
        data_dir,
        resync,
        metrics,
        stop,
    } = options;
    let tasks = TaskTracker::new();
    crate::metrics::register_defaults(config.network().name());
    let wallet = Wallet::load_or_create(&data_dir).map_err(RunError::usage)?;
    let genesis = config
        .genesis(identity.public_key().as_bytes(), Some(wallet.address()))
        .map_err(RunError::usage)?;
    if resync {
        move_database_aside(&data_dir)?;
    }
    let chain = Chain::open(
        &data_dir,
        genesis,
        &identity,
        ChainOptions {
            mempool_max_txs: config.chain.mempool_max_txs,
            mempool_max_bytes: config.chain.mempool_max_bytes,
            masternode: config.chain.masternode,
        },
    )
    .map_err(|e| RunError::runtime(chain_open_failure(&data_dir, &e)))?;
    // Written once the chain holds the data dir's lock, so that a second
    // node on the same dir never replaces the first one's cookie; removed
    // when `cookie` drops, on every way out of this function.
    let cookie = if config.rpc.enabled {
        Some(CookieFile::create(&data_dir).map_err(RunError::usage)?)
    } else {
        None
    };
    let store = chain.store().clone();
    let tip = chain.tip();
    tracing::info!(
        genesis = %hex::encode(chain.genesis_hash()),
        height = tip.height,
        tip = %hex::encode(tip.hash),
        masternode = chain.is_masternode(),
        masternodes = chain.genesis().masternodes().len(),
        block_interval_s = chain.genesis().block_interval_secs,
        wallet = %wallet.address().to_text(config.network()),
        "chain opened"
    );
    let mut network_config = config.node_config();
    let diversity = Arc::new(
        crate::network::diversity::Diversity::open(&config.p2p.diversity)
            .map_err(|e| RunError::Usage(e.to_string()))?,
    );
    if diversity.has_country() || diversity.has_asn() {
        tracing::info!(
            country = diversity.has_country(),
            asn = diversity.has_asn(),
            "peer diversity databases loaded"
        );
    }
    network_config.diversity = diversity.clone();
    network_config.address_book = Arc::new(Mutex::new(load_address_book(
        &store,
        config.group_bits(),
        diversity,
    )));
    network_config.anchors = load_anchors(&store);
    let book = network_config.address_book.clone();
    let node = Node::start(&identity, network_config, Some(chain))
        .await
        .map_err(RunError::runtime)?;
    crate::tasks::spawn(
        &tasks,
        "save_address_book",
        save_address_book_every(store.clone(), book.clone(), stop.clone()),
    );
    if let Some(handle) = metrics {
        crate::metrics::serve_tracked(
            config.metrics_listen(),
            handle,
            config.metrics.http_limits(),
            stop.clone(),
            &tasks,
        )
        .await
        .map_err(RunError::runtime)?;
        crate::tasks::spawn(
            &tasks,
            "metrics_refresh",
            crate::metrics::refresh(node.network().clone(), Duration::from_secs(2), stop.clone()),
        );
    }
    let mut rpc_ctx =
        RpcContext::new(&node, config.rpc.clone(), config_path, stop.clone()).with_wallet(wallet);
    if let Some(cookie) = &cookie {
        rpc_ctx = rpc_ctx.with_cookie(cookie.secret());
    }
    if config.rpc.enabled {
        rpc::serve_tracked(config.rpc_listen(), rpc_ctx.clone(), stop.clone(), &tasks)
            .await
            .map_err(RunError::runtime)?;
    }
    let failure = wait_for_stop(&stop, &rpc_ctx, &store).await;
    match &failure {
        None => tracing::info!("shutting down"),
        Some(error) => tracing::error!(%error, "the database failed: stopping the node"),
    }
    // Stopped in the reverse order of starting: the operator surfaces
    // (RPC, metrics), then block production, sync and the network, then
    // the chain.
    stop.cancel();
    // The anchors are the outbound peers still connected now.
    save_anchors(&store, node.anchor_candidates()).await;
    node.shutdown();
    // Everything the pool journal holds reaches the disk before we exit.
    if let Some(chain) = node.chain() {
        if !chain.flush(Duration::from_secs(10)) {
            tracing::error!("the mempool could not be written to disk before exit");
        }
    }
    // Connections send their Disconnect and every task of the node ends;
    // a task that does not is not waited for past the deadline.
    let stopped = async {
        tasks.close();
        tasks.wait().await;
        node.stopped().await;
    };
    if tokio::time::timeout(SHUTDOWN_DEADLINE, stopped)
        .await
        .is_err()
    {
        tracing::warn!(
            deadline_s = SHUTDOWN_DEADLINE.as_secs(),
            "some tasks did not stop in time: exiting anyway"
        );
    }
    save_address_book(&store, &book).await;
    // The RPC has stopped: its cookie is of no more use.
    drop(cookie);
    match failure {
        None => {
            // Buffered ban changes and the tip marker, for a clean stop.
            tokio::task::spawn_blocking(move || store.close(Duration::from_secs(5)))
                .await
                .map_err(|e| RunError::Runtime(format!("closing the database: {e}")))?;
            Ok(())
        }
        Some(error) => Err(RunError::Runtime(format!(
            "the database {} failed while running ({error}); the node stopped rather than serve errors. \
             Check the disk (free space, I/O errors in the system log) and start again; \
             if the file is damaged, restore it from a backup or start over with `timed run --resync`",
            store.path().display()
        ))),
    }
}

/// The one-line message for a chain that cannot be opened.
fn chain_open_failure(data_dir: &Path, error: &ChainError) -> String {
    match error {
        // These name the file and say what to do.
        ChainError::Store(e @ (StoreError::Damaged { .. } | StoreError::LostData { .. })) => {
            e.to_string()
        }
        ChainError::Store(e @ StoreError::BadBlock { .. }) => format!(
            "chain in {}: {e}; the node cannot start without it: restore {DB_FILE} from a backup, \
             or start over with `timed run --resync`",
            data_dir.display()
        ),
        other => format!("chain in {}: {other}", data_dir.display()),
    }
}

/// `--resync`: moves the chain database and its tip marker aside, so that
/// the chain starts again from genesis.
fn move_database_aside(data_dir: &Path) -> Result<(), RunError> {
    let db = data_dir.join(DB_FILE);
    let stamp = crate::protocol::version::unix_now().as_secs();
    for file in [db.clone(), crate::storage::marker_path(&db)] {
        if !file.exists() {
            continue;
        }
        let mut aside = file.clone().into_os_string();
        aside.push(format!(".damaged-{stamp}"));
        let aside = PathBuf::from(aside);
        std::fs::rename(&file, &aside).map_err(|e| {
            RunError::runtime(format!(
                "--resync: cannot move {} aside: {e}",
                file.display()
            ))
        })?;
        tracing::warn!(
            from = %file.display(),
            to = %aside.display(),
            "--resync: moved aside"
        );
    }
    tracing::warn!(
        data_dir = %data_dir.display(),
        "--resync: STARTING OVER FROM GENESIS; the chain will be synced again from peers, \
         stored bans are not restored; the old files are kept under *.damaged-{stamp}"
    );
    Ok(())
}

/// Waits for Ctrl-C, SIGTERM or the `stop` RPC, or for the database to fail
/// (polled every second; returns the failure); SIGHUP reloads the config's
/// middleware list.
async fn wait_for_stop(
    stop: &CancellationToken,
    rpc_ctx: &RpcContext,
    store: &Store,
) -> Option<String> {
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::warn!("cannot install signal handlers; stop with the `stop` RPC");
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = poll.tick() => if let Some(failure) = store.failure() {
                        return Some(failure);
                    },
                }
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::signal::ctrl_c() => return None,
                _ = term.recv() => return None,
                _ = poll.tick() => if let Some(failure) = store.failure() {
                    return Some(failure);
                },
                _ = hup.recv() => match rpc_ctx.reload() {
                    Ok(stack) => tracing::info!(middleware = %stack, "SIGHUP: config reloaded"),
                    Err(error) => tracing::warn!(%error, "SIGHUP: config reload failed; keeping the old stack"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = rpc_ctx;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::signal::ctrl_c() => return None,
                _ = poll.tick() => if let Some(failure) = store.failure() {
                    return Some(failure);
                },
            }
        }
    }
}

/// How often the address book is saved while the node runs (and once more
/// at shutdown): a crash loses at most this much of what it learned.
const ADDRESS_BOOK_SAVE_INTERVAL: Duration = Duration::from_secs(60);

/// The stored address book, or an empty one: a book that cannot be read is
/// logged and replaced, never a reason not to start.
fn load_address_book(
    store: &Store,
    bits: GroupBits,
    diversity: Arc<crate::network::diversity::Diversity>,
) -> AddressBook {
    let empty = || {
        let mut book = AddressBook::new(rand::random(), bits);
        book.set_diversity(diversity.clone());
        book
    };
    match store.load_address_book() {
        Ok(Some(bytes)) => match AddressBook::from_bytes(&bytes, bits, Some(diversity.clone())) {
            Ok(book) => {
                let (new, tried) = book.sizes();
                tracing::info!(new, tried, "address book loaded");
                book
            }
            Err(error) => {
                tracing::warn!(%error, "stored address book unreadable: starting with an empty one");
                empty()
            }
        },
        Ok(None) => empty(),
        Err(error) => {
            tracing::warn!(%error, "cannot read the stored address book: starting with an empty one");
            empty()
        }
    }
}

/// The anchors saved at the last shutdown (one `NODE_ID@HOST:PORT` per
/// line); unreadable ones are logged and skipped.
fn load_anchors(store: &Store) -> Vec<PeerTarget> {
    let bytes = match store.load_anchors() {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Vec::new(),
        Err(error) => {
            tracing::warn!(%error, "cannot read the stored anchors: starting without");
            return Vec::new();
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let anchors: Vec<PeerTarget> = text
        .lines()
        .filter_map(|line| match line.parse() {
            Ok(target) => Some(target),
            Err(error) => {
                tracing::warn!(%error, "stored anchor unreadable: skipped");
                None
            }
        })
        .collect();
    if !anchors.is_empty() {
        tracing::info!(
            anchors = anchors.len(),
            "anchors loaded: dialling them first"
        );
    }
    anchors
}

/// Saves the node's current anchors (see `Network::anchor_candidates`).
async fn save_anchors(store: &Store, anchors: Vec<PeerTarget>) {
    let store = store.clone();
    let text: String = anchors.iter().map(|a| format!("{a}\n")).collect();
    let saved = tokio::task::spawn_blocking(move || store.save_anchors(text.as_bytes())).await;
    if !matches!(saved, Ok(Ok(()))) {
        tracing::warn!("cannot save the anchors");
    }
}

/// Saves `book` in `store`, off the async workers.
async fn save_address_book(store: &Store, book: &Arc<Mutex<AddressBook>>) {
    let (store, book) = (store.clone(), book.clone());
    let saved = tokio::task::spawn_blocking(move || {
        let bytes = crate::locks::lock(&book).to_bytes();
        store.save_address_book(&bytes)
    })
    .await;
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "cannot save the address book"),
        Err(error) => tracing::warn!(%error, "cannot save the address book"),
    }
}

/// Saves the address book every [`ADDRESS_BOOK_SAVE_INTERVAL`] until `stop`.
async fn save_address_book_every(
    store: Store,
    book: Arc<Mutex<AddressBook>>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(ADDRESS_BOOK_SAVE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => save_address_book(&store, &book).await,
        }
    }
}

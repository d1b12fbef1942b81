//! The open-file budget: at start-up the node raises its `RLIMIT_NOFILE`
//! soft limit to the hard limit, then splits the descriptors between the
//! P2P side, which gets its full need first, and the RPC and metrics
//! servers, which get what is left (capped by their config). Local RPC
//! abuse can then never take the descriptors an honest peer's connection
//! needs: the HTTP servers refuse connections beyond their caps instead.
//!
//! When even the P2P side does not fit, its limits are lowered (inbound
//! first, as Bitcoin Core does) and the node says so in a WARN line.

/// Descriptors the process holds besides connections and listeners:
/// stdin/stdout/stderr, the async runtime (epoll, wakers, the signal
/// pipe), the database file, log files, name lookups, and the brief extra
/// descriptor each refused connection holds between accept and close.
/// A running devnet node holds about 20 at rest; 64 leaves room to spare.
pub const FIXED_FDS: usize = 64;

/// Listening sockets: P2P, RPC and metrics.
pub const LISTENERS: usize = 3;

/// Fewest RPC connections worth serving: `timed rpc` plus a wallet and a
/// monitoring probe.
pub const MIN_RPC_CONNECTIONS: usize = 4;

/// Fewest metrics connections: one Prometheus scraper.
pub const MIN_METRICS_CONNECTIONS: usize = 1;

/// The largest soft limit asked for when the hard limit is unlimited
/// (Linux refuses more than `fs.nr_open`, 1,048,576 by default).
pub const UNLIMITED_TARGET: u64 = 1 << 20;

/// The process's open-file limit, before and after raising it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit found at start (`None`: unlimited).
    pub soft_before: Option<u64>,
    /// The soft limit now.
    pub soft: Option<u64>,
    /// The hard limit.
    pub hard: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (or to
/// [`UNLIMITED_TARGET`] when the hard limit is unlimited) and returns the
/// limits. A refused raise leaves the soft limit as it was.
pub fn raise_nofile_limit() -> NofileLimit {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    let target = before.maximum.unwrap_or(UNLIMITED_TARGET);
    if before.current.is_some_and(|soft| soft < target) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: before.maximum,
            },
        );
    }
    let after = getrlimit(Resource::Nofile);
    NofileLimit {
        soft_before: before.current,
        soft: after.current,
        hard: after.maximum,
    }
}

/// What the node would like to have open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdWants {
    /// `p2p.max_inbound` (established connections).
    pub max_inbound: usize,
    /// `p2p.max_pending_handshakes` (inbound sockets not authenticated yet).
    pub pending_handshakes: usize,
    /// `p2p.max_outbound`.
    pub max_outbound: usize,
    /// `rpc.max_connections`, or 0 when the RPC is disabled.
    pub rpc_connections: usize,
    /// `metrics.max_connections`, or 0 when metrics are disabled.
    pub metrics_connections: usize,
}

/// How the descriptors are shared out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft limit the budget was made for (`None`: unlimited).
    pub limit: Option<u64>,
    /// Descriptors kept for the P2P side and the process itself.
    pub p2p_reserve: usize,
    /// The inbound limit to use (lower than wanted if the limit is tight).
    pub max_inbound: usize,
    /// The outbound limit to use.
    pub max_outbound: usize,
    /// The RPC connection cap to use.
    pub rpc_connections: usize,
    /// The metrics connection cap to use.
    pub metrics_connections: usize,
}

impl FdBudget {
    /// True when the P2P limits had to be lowered.
    pub fn lowered_p2p(&self, wants: &FdWants) -> bool {
        self.max_inbound < wants.max_inbound || self.max_outbound < wants.max_outbound
    }
}

/// The open-file limit is too low to run at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the open-file limit is {limit}, below the {minimum} descriptors the node needs at least \
     (raise it, e.g. `ulimit -n 4096` or LimitNOFILE= in the systemd unit)"
)]
pub struct FdLimitTooLow {
    /// The soft limit.
    pub limit: u64,
    /// The least that works.
    pub minimum: usize,
}

/// Shares `limit` descriptors out for `wants`: the P2P side first, then the
/// metrics server (at most an eighth of what is left), then the RPC. The
/// HTTP servers keep at least [`MIN_RPC_CONNECTIONS`] and
/// [`MIN_METRICS_CONNECTIONS`]; to make room, inbound and then outbound
/// P2P limits are lowered (outbound never below 1).
///
/// # Errors
/// [`FdLimitTooLow`] when even that does not fit.
pub fn plan(limit: Option<u64>, wants: FdWants) -> Result<FdBudget, FdLimitTooLow> {
    let min_rpc = wants.rpc_connections.min(MIN_RPC_CONNECTIONS);
    let min_metrics = wants.metrics_connections.min(MIN_METRICS_CONNECTIONS);
    let fixed = FIXED_FDS + LISTENERS + wants.pending_handshakes;
    let Some(limit) = limit else {
        return Ok(FdBudget {
            limit: None,
            p2p_reserve: fixed + wants.max_inbound + wants.max_outbound,
            max_inbound: wants.max_inbound,
            max_outbound: wants.max_outbound,
            rpc_connections: wants.rpc_connections,
            metrics_connections: wants.metrics_connections,
        });
    };
    let available = usize::try_from(limit).unwrap_or(usize::MAX);
    let (mut inbound, mut outbound) = (wants.max_inbound, wants.max_outbound);
    let need = |inbound: usize, outbound: usize| fixed + inbound + outbound + min_rpc + min_metrics;
    if need(inbound, outbound) > available {
        let mut short = need(inbound, outbound) - available;
        let cut = short.min(inbound);
        inbound -= cut;
        short -= cut;
        let cut = short.min(outbound.saturating_sub(1));
        outbound -= cut;
        short -= cut;
        if short > 0 {
            return Err(FdLimitTooLow {
                limit,
                minimum: need(0, wants.max_outbound.min(1)),
            });
        }
    }
    let p2p_reserve = fixed + inbound + outbound;
    let left = available - p2p_reserve;
    let metrics = wants.metrics_connections.min((left / 8).max(min_metrics));
    let rpc = wants.rpc_connections.min(left - metrics);
    Ok(FdBudget {
        limit: Some(limit),
        p2p_reserve,
        max_inbound: inbound,
        max_outbound: outbound,
        rpc_connections: rpc,
        metrics_connections: metrics,
    })
}

/// How many files the process has open, and its soft limit (`None`:
/// unlimited): the fd-pressure signal of the network's dynamic inbound cap.
/// Counts the entries of `/proc/self/fd`; `None` where that does not exist.
pub fn usage() -> Option<(usize, Option<u64>)> {
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count();
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    Some((open, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wants() -> FdWants {
        FdWants {
            max_inbound: 64,
            pending_handshakes: 0,
            max_outbound: 16,
            rpc_connections: 128,
            metrics_connections: 16,
        }
    }

    #[test]
    fn a_roomy_limit_gives_every_cap_its_config() {
        let b = plan(Some(20_000), wants()).unwrap();
        assert_eq!((b.max_inbound, b.max_outbound), (64, 16));
        assert_eq!((b.rpc_connections, b.metrics_connections), (128, 16));
        assert_eq!(b.p2p_reserve, FIXED_FDS + LISTENERS + 80);
        assert!(!b.lowered_p2p(&wants()));
        assert_eq!(plan(None, wants()).unwrap().rpc_connections, 128);
    }

    #[test]
    fn a_tight_limit_shrinks_the_http_caps_first() {
        let b = plan(Some(256), wants()).unwrap();
        assert_eq!((b.max_inbound, b.max_outbound), (64, 16));
        let left = 256 - b.p2p_reserve;
        assert!(b.rpc_connections + b.metrics_connections <= left);
        assert!(b.rpc_connections >= MIN_RPC_CONNECTIONS);
        assert!(b.metrics_connections >= MIN_METRICS_CONNECTIONS);
        assert!(b.rpc_connections < 128);
    }

    #[test]
    fn a_very_tight_limit_lowers_inbound_then_outbound() {
        let b = plan(Some(120), wants()).unwrap();
        assert_eq!(b.max_outbound, 16);
        assert!(b.max_inbound < 64);
        assert!(b.lowered_p2p(&wants()));
        assert!(b.p2p_reserve + b.rpc_connections + b.metrics_connections <= 120);
        let b = plan(Some(80), wants()).unwrap();
        assert_eq!(b.max_inbound, 0);
        assert!((1..16).contains(&b.max_outbound), "{b:?}");
        let e = plan(Some(40), wants()).unwrap_err();
        assert_eq!(e.minimum, FIXED_FDS + LISTENERS + 1 + 4 + 1);
    }

    #[test]
    fn disabled_servers_get_nothing() {
        let mut w = wants();
        w.rpc_connections = 0;
        w.metrics_connections = 0;
        let b = plan(Some(256), w).unwrap();
        assert_eq!((b.rpc_connections, b.metrics_connections), (0, 0));
    }

    #[test]
    fn raising_the_limit_never_lowers_it() {
        let limit = raise_nofile_limit();
        assert!(limit.soft >= limit.soft_before || limit.soft.is_none());
    }
}

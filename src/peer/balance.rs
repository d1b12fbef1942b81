//! The peer set's request service: tower's power-of-two-choices balancer
//! over the connected peers, with a peak-EWMA load, a timeout per attempt
//! and a retry on another peer.
//!
//! ```text
//! PeerSetService: per request                           checks some eligible peer is left
//!   Retry<ExcludeFailed,                                 a failed peer is excluded, another asked
//!   Excluding(SharedBalance(                             the request's exclusions; one shared balancer
//!   Balance<PeerDiscover, PeerRequest>)))                p2c on load, over the discovered peers
//!     each peer: Endpoint(                               names the peer; not ready when excluded
//!                PeakEwma<                               load = RTT estimate × (in flight + 1)
//!                Timeout<                                PEER_ATTEMPT_TIMEOUT, never charged
//!                Slot<Client>>>)                         the connection (its own timeout charges)
//! ```
//!
//! * Discovery: [`PeerSet::discover`] hands out a [`PeerDiscover`] stream
//!   of `Change`s fed by [`PeerSet::admit`] (insert) and [`PeerSet::remove`]
//!   (remove), filtered by the capabilities a peer announced. The stream
//!   coalesces by node id (the last change of a peer wins, and a peer that
//!   came and went before the balancer looked is forgotten), so what waits
//!   in it is bounded by the connected peers plus those the balancer holds,
//!   however often a peer flaps.
//! * Readiness: the balancer is ready when some peer's connection has room
//!   for a request; on an empty set it is pending until a peer is admitted
//!   (callers bound the wait).
//! * Load: `tower::load::PeakEwma` with [`PEER_EWMA_DEFAULT_RTT`] and
//!   [`PEER_EWMA_DECAY`]: requests in flight and slow answers both make a
//!   peer less likely to be picked.
//! * Retry ([`ExcludeFailed`]): a peer that fails a request (connection
//!   closed, queue full, the connection's request timeout, or the attempt
//!   timeout) is added to the request's exclusion set and another peer is
//!   asked, at most [`PEER_REQUEST_ATTEMPTS`] peers in all. Power of two
//!   choices picks a peer in `poll_ready`, before it sees the request, so
//!   each attempt ([`Excluding`]) sets the balancer's exclusion set before
//!   it polls, and an excluded peer is not ready (`Exclusion`): it is
//!   never drawn, and its load is untouched. A request that excludes every
//!   eligible peer fails at once ([`PeerSetError::NoPeers`]). The caller's
//!   own exclusions (peers whose answers it found wrong) travel in the same
//!   set. (An endpoint still declines an excluded request in `call`, as a
//!   guard, at most [`PEER_REQUEST_DECLINES`] times per request.)
//! * The answer ([`PeerAnswer`]) names the peer that gave it, so the caller
//!   can charge it for bad data or keep talking to it.
//!
//! # Correctness
//! One slow reply costs the peer one `Timeout` at most: the connection's
//! request timeout is the only one that charges. The attempt timeout here
//! is longer, charges nothing, and only ends our wait; an answer that comes
//! after either is dropped quietly by the connection.
//!
//! A connection's request channel holds one request. A ready peer's slot is
//! checked, not held ([`Slot`]): a peer idle in the balancer keeps no slot
//! reserved, so a request sent straight to one peer (sync's fork search)
//! is never blocked behind the balancer.
//!
//! # Security
//! Load alone decides between the two peers drawn, so a fast attacker gets
//! more requests; the random draw keeps it from getting all of them, a new
//! peer starts at a modest default RTT, and sync verifies every answer.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower::balance::p2c::Balance;
use tower::discover::Change;
use tower::load::peak_ewma::Cost;
use tower::load::{CompleteOnResponse, Load, PeakEwma};
use tower::retry::{Policy, Retry};
use tower::timeout::Timeout;
use tower::{BoxError, Service, ServiceExt};

use super::client::{Client, ClientError, Request, Response};
use super::set::{PeerHandle, PeerSet};
use crate::constants::{
    PEER_ATTEMPT_TIMEOUT, PEER_EWMA_DECAY, PEER_EWMA_DEFAULT_RTT, PEER_REQUEST_ATTEMPTS,
    PEER_REQUEST_DECLINES,
};
use crate::crypto::NodeId;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A request for the peer set: what to ask, and which peers not to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRequest {
    /// The request.
    pub request: Request,
    /// Peers that must not be asked (they failed this request, or the
    /// caller has had enough of their answers).
    pub exclude: HashSet<NodeId>,
}

impl PeerRequest {
    /// `request`, for any peer.
    pub fn new(request: Request) -> Self {
        PeerRequest {
            request,
            exclude: HashSet::new(),
        }
    }

    /// Leaves out the peers in `ids`.
    pub fn excluding(mut self, ids: impl IntoIterator<Item = NodeId>) -> Self {
        self.exclude.extend(ids);
        self
    }
}

/// An answer and the peer that gave it.
#[derive(Clone, Debug)]
pub struct PeerAnswer {
    /// The peer that answered.
    pub peer: Arc<PeerHandle>,
    /// Its answer (matched to the request's kind by the connection).
    pub response: Response,
    /// The request's exclusion set when it was answered: the caller's
    /// exclusions and the peers that failed it on the way.
    pub excluded: HashSet<NodeId>,
}

/// How a request to one peer failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The connection failed it (closed, queue full, or its request
    /// timeout, which charged the peer).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// No answer within the attempt timeout (not charged).
    #[error("no answer within {0:?}")]
    Deadline(Duration),
    /// Something else (a broken service).
    #[error("{0}")]
    Other(String),
}

/// Errors of the peer set's request service.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerSetError {
    /// The peer failed the request.
    #[error("peer {node_id} failed the request: {failure}")]
    Peer {
        /// The peer.
        node_id: NodeId,
        /// How.
        failure: Failure,
    },
    /// The peer drawn is excluded from this request (nothing was sent).
    #[error("peer {0} is excluded from this request")]
    Excluded(NodeId),
    /// No eligible peer is left to ask.
    #[error("no eligible peer left")]
    NoPeers,
    /// `call` without a successful `poll_ready` on this handle.
    #[error("called before the service was ready")]
    NotReady,
}

impl PeerSetError {
    /// True when the last peer asked failed by the connection's request
    /// timeout or the attempt timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            PeerSetError::Peer {
                failure: Failure::Client(ClientError::Timeout(_)) | Failure::Deadline(_),
                ..
            }
        )
    }
}

/// A connection's [`Client`] whose readiness is checked, not held: ready
/// when the connection has room for a request now; `call` waits for the
/// room again (it is only taken in between by a request sent straight to
/// the peer).
#[derive(Debug)]
pub struct Slot {
    client: Client,
}

impl Service<Request> for Slot {
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        ready!(self.client.poll_ready(cx))?;
        self.client.release();
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move { client.oneshot(request).await })
    }
}

/// One peer as the balancer sees it: its connection under a timeout and a
/// peak-EWMA load, named by the peer (in answers and errors), declining
/// requests that exclude it.
pub struct Endpoint {
    peer: Arc<PeerHandle>,
    inner: PeakEwma<Timeout<Slot>, CompleteOnResponse>,
    exclusion: Arc<Mutex<Exclusion>>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("peer", &self.peer.info.node_id)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    fn new(peer: Arc<PeerHandle>, exclusion: Arc<Mutex<Exclusion>>) -> Self {
        let slot = Slot {
            client: peer.client.clone(),
        };
        let inner = PeakEwma::new(
            Timeout::new(slot, PEER_ATTEMPT_TIMEOUT),
            PEER_EWMA_DEFAULT_RTT,
            PEER_EWMA_DECAY.as_nanos() as f64,
            CompleteOnResponse::default(),
        );
        Endpoint {
            peer,
            inner,
            exclusion,
        }
    }

    fn failed(node_id: NodeId, error: BoxError) -> BoxError {
        let failure = if let Some(e) = error.downcast_ref::<ClientError>() {
            Failure::Client(e.clone())
        } else if error.is::<tower::timeout::error::Elapsed>() {
            Failure::Deadline(PEER_ATTEMPT_TIMEOUT)
        } else {
            Failure::Other(error.to_string())
        };
        Box::new(PeerSetError::Peer { node_id, failure })
    }
}

impl Load for Endpoint {
    type Metric = Cost;

    fn load(&self) -> Cost {
        self.inner.load()
    }
}

impl Service<PeerRequest> for Endpoint {
    type Response = PeerAnswer;
    type Error = BoxError;
    type Future = BoxFuture<Result<PeerAnswer, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let node_id = self.peer.info.node_id;
        if crate::locks::lock(&self.exclusion).parks(node_id, cx.waker()) {
            // Not ready for the request being placed: the balancer draws
            // among the other peers.
            return Poll::Pending;
        }
        self.inner
            .poll_ready(cx)
            .map_err(|e| Self::failed(node_id, e))
    }

    fn call(&mut self, request: PeerRequest) -> Self::Future {
        let node_id = self.peer.info.node_id;
        if request.exclude.contains(&node_id) {
            // Only if the exclusion changed between `poll_ready` and `call`
            // (it does not: see `SharedBalance`). Declined before the load
            // tracking: an excluded peer neither looks faster nor busier.
            return Box::pin(std::future::ready(Err(
                PeerSetError::Excluded(node_id).into()
            )));
        }
        let PeerRequest { request, exclude } = request;
        let answer = self.inner.call(request);
        let peer = self.peer.clone();
        Box::pin(async move {
            match answer.await {
                Ok(response) => Ok(PeerAnswer {
                    peer,
                    response,
                    excluded: exclude,
                }),
                Err(error) => Err(Endpoint::failed(node_id, error)),
            }
        })
    }
}

/// The peers excluded from the request being placed on a balancer, shared
/// by the balancer's endpoints: an excluded endpoint is not ready (so power
/// of two choices never draws it) and parks its waker until the exclusion
/// changes.
#[derive(Debug, Default)]
pub(crate) struct Exclusion {
    exclude: HashSet<NodeId>,
    parked: HashMap<NodeId, Waker>,
}

impl Exclusion {
    /// True (and the waker kept) when `node_id` is excluded.
    fn parks(&mut self, node_id: NodeId, waker: &Waker) -> bool {
        if !self.exclude.contains(&node_id) {
            return false;
        }
        self.parked.insert(node_id, waker.clone());
        true
    }

    /// Excludes `exclude` from now on; wakes the parked endpoints when it
    /// differs from before (they are polled again, and the ones no longer
    /// excluded become ready).
    fn set(&mut self, exclude: &HashSet<NodeId>) {
        if self.exclude == *exclude {
            return;
        }
        self.exclude.clone_from(exclude);
        for (_, waker) in self.parked.drain() {
            waker.wake();
        }
    }
}

/// What is waiting in one [`PeerDiscover`] stream.
#[derive(Debug, Default)]
struct FeedState {
    /// The last change per peer not yet taken by the balancer: the handle
    /// to insert, or `None` to remove.
    pending: HashMap<NodeId, Option<Arc<PeerHandle>>>,
    /// The peers the balancer holds (inserted and not removed since).
    known: HashSet<NodeId>,
    /// The balancer waiting for a change.
    waker: Option<Waker>,
}

/// The shared side of a [`PeerDiscover`]: the peer set writes changes, the
/// stream reads them.
#[derive(Debug)]
pub(crate) struct Feed {
    capabilities: u64,
    state: Mutex<FeedState>,
    exclusion: Arc<Mutex<Exclusion>>,
}

impl Feed {
    pub(crate) fn new(capabilities: u64, peers: impl IntoIterator<Item = Arc<PeerHandle>>) -> Self {
        let feed = Feed {
            capabilities,
            state: Mutex::new(FeedState::default()),
            exclusion: Arc::new(Mutex::new(Exclusion::default())),
        };
        for peer in peers {
            feed.inserted(&peer);
        }
        feed
    }

    fn eligible(&self, peer: &PeerHandle) -> bool {
        peer.info.version.capabilities & self.capabilities == self.capabilities
    }

    /// `peer` joined the set (or replaced the connection of its node id).
    pub(crate) fn inserted(&self, peer: &Arc<PeerHandle>) {
        if !self.eligible(peer) {
            self.removed(peer.info.node_id);
            return;
        }
        let mut state = crate::locks::lock(&self.state);
        state.pending.insert(peer.info.node_id, Some(peer.clone()));
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    /// The peer with `node_id` left the set.
    pub(crate) fn removed(&self, node_id: NodeId) {
        let mut state = crate::locks::lock(&self.state);
        if state.known.contains(&node_id) {
            state.pending.insert(node_id, None);
        } else {
            // The balancer never saw it: forget the pending insert.
            state.pending.remove(&node_id);
        }
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }
}

/// The `tower::discover::Discover` stream of the peers announcing some
/// capabilities (see [`PeerSet::discover`]); never ends.
#[derive(Debug)]
pub struct PeerDiscover {
    feed: Arc<Feed>,
}

impl PeerDiscover {
    pub(crate) fn new(feed: Arc<Feed>) -> Self {
        PeerDiscover { feed }
    }
}

impl Stream for PeerDiscover {
    type Item = Result<Change<NodeId, Endpoint>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = crate::locks::lock(&self.feed.state);
        let Some(node_id) = state.pending.keys().next().copied() else {
            state.waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let change = match state.pending.remove(&node_id).flatten() {
            Some(peer) => {
                state.known.insert(node_id);
                Change::Insert(node_id, Endpoint::new(peer, self.feed.exclusion.clone()))
            }
            None => {
                state.known.remove(&node_id);
                Change::Remove(node_id)
            }
        };
        Poll::Ready(Some(Ok(change)))
    }
}

type Balanced = Balance<PeerDiscover, PeerRequest>;

/// One balancer shared by clones. `poll_ready` first takes the balancer's
/// turn (a one-permit semaphore) and holds it until `call` (or until the
/// handle is dropped), so the readiness one clone saw, under its exclusion
/// set, is the one its `call` uses; other clones wait their turn.
pub struct SharedBalance {
    balance: Arc<Mutex<Balanced>>,
    exclusion: Arc<Mutex<Exclusion>>,
    turn: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
}

impl SharedBalance {
    fn new(discover: PeerDiscover) -> Self {
        let exclusion = discover.feed.exclusion.clone();
        SharedBalance {
            balance: Arc::new(Mutex::new(Balance::new(discover))),
            exclusion,
            turn: PollSemaphore::new(Arc::new(Semaphore::new(1))),
            permit: None,
        }
    }

    /// Ready when a peer not in `exclude` is ready.
    fn poll_ready_excluding(
        &mut self,
        cx: &mut Context<'_>,
        exclude: &HashSet<NodeId>,
    ) -> Poll<Result<(), BoxError>> {
        if self.permit.is_none() {
            // The semaphore is never closed.
            let permit = ready!(self.turn.poll_acquire(cx)).ok_or(PeerSetError::NotReady)?;
            self.permit = Some(permit);
        }
        crate::locks::lock(&self.exclusion).set(exclude);
        let ready = crate::locks::lock(&self.balance).poll_ready(cx);
        if let Poll::Ready(Err(_)) = ready {
            self.permit = None;
        }
        ready
    }
}

impl Clone for SharedBalance {
    fn clone(&self) -> Self {
        SharedBalance {
            balance: self.balance.clone(),
            exclusion: self.exclusion.clone(),
            turn: self.turn.clone(),
            permit: None,
        }
    }
}

impl fmt::Debug for SharedBalance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBalance")
            .field("has_turn", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl Service<PeerRequest> for SharedBalance {
    type Response = PeerAnswer;
    type Error = BoxError;
    type Future = BoxFuture<Result<PeerAnswer, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.poll_ready_excluding(cx, &HashSet::new())
    }

    fn call(&mut self, request: PeerRequest) -> Self::Future {
        // The turn ends once the request is handed to the balancer.
        let Some(_turn) = self.permit.take() else {
            return Box::pin(std::future::ready(Err(PeerSetError::NotReady.into())));
        };
        Box::pin(crate::locks::lock(&self.balance).call(request))
    }
}

/// The shared balancer as one request's attempts see it: ready when a
/// peer outside the request's exclusion set is ready. The exclusion set is
/// shared with the request's retry policy, which adds each failed peer.
#[derive(Clone, Debug)]
pub struct Excluding {
    shared: SharedBalance,
    exclude: Arc<Mutex<HashSet<NodeId>>>,
}

impl Service<PeerRequest> for Excluding {
    type Response = PeerAnswer;
    type Error = BoxError;
    type Future = BoxFuture<Result<PeerAnswer, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let exclude = crate::locks::lock(&self.exclude).clone();
        self.shared.poll_ready_excluding(cx, &exclude)
    }

    fn call(&mut self, request: PeerRequest) -> Self::Future {
        self.shared.call(request)
    }
}

/// The retry policy of the peer set: another peer after a failure, never
/// the same one twice for one request (see the module docs).
#[derive(Clone, Debug)]
pub struct ExcludeFailed {
    set: Weak<PeerSet>,
    capabilities: u64,
    exclude: Arc<Mutex<HashSet<NodeId>>>,
    attempts: usize,
    declines: usize,
}

impl Policy<PeerRequest, PeerAnswer, BoxError> for ExcludeFailed {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        request: &mut PeerRequest,
        result: &mut Result<PeerAnswer, BoxError>,
    ) -> Option<Self::Future> {
        let error = result.as_ref().err()?;
        match error.downcast_ref::<PeerSetError>()? {
            PeerSetError::Peer { node_id, .. } => {
                request.exclude.insert(*node_id);
                crate::locks::lock(&self.exclude).insert(*node_id);
                self.attempts = self.attempts.checked_sub(1)?;
            }
            PeerSetError::Excluded(_) => {
                self.declines = self.declines.checked_sub(1)?;
            }
            PeerSetError::NoPeers | PeerSetError::NotReady => return None,
        }
        // Give up at once when every eligible peer is excluded, instead of
        // waiting for one to connect.
        let set = self.set.upgrade()?;
        if !set.has_eligible(self.capabilities, &request.exclude) {
            *result = Err(PeerSetError::NoPeers.into());
            return None;
        }
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, request: &PeerRequest) -> Option<PeerRequest> {
        Some(request.clone())
    }
}

/// The peer set's request service over the peers announcing some
/// capabilities: power of two choices on peak-EWMA load, a timeout per
/// attempt, and a retry on another peer after a failure (see the module
/// docs). Clones share one balancer.
///
/// `poll_ready` is pending until some eligible peer's connection has room
/// for a request (on an empty set, until a peer is admitted); callers bound
/// the wait. `call` places the request's attempts through
/// `tower::retry::Retry`, each on a peer outside the request's exclusion
/// set.
#[derive(Clone, Debug)]
pub struct PeerSetService {
    shared: SharedBalance,
    set: Weak<PeerSet>,
    capabilities: u64,
}

impl PeerSetService {
    pub(crate) fn new(set: &Arc<PeerSet>, capabilities: u64) -> Self {
        PeerSetService {
            shared: SharedBalance::new(set.discover(capabilities)),
            set: Arc::downgrade(set),
            capabilities,
        }
    }
}

impl Service<PeerRequest> for PeerSetService {
    type Response = PeerAnswer;
    type Error = BoxError;
    type Future = BoxFuture<Result<PeerAnswer, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.shared.poll_ready(cx)
    }

    fn call(&mut self, request: PeerRequest) -> Self::Future {
        // Our turn was taken without the request's exclusions; its attempts
        // take their own turns with them.
        self.shared.permit = None;
        // A request that excludes every eligible peer fails at once instead
        // of waiting for a peer to connect.
        let eligible = self
            .set
            .upgrade()
            .is_some_and(|set| set.has_eligible(self.capabilities, &request.exclude));
        if !eligible {
            return Box::pin(std::future::ready(Err(PeerSetError::NoPeers.into())));
        }
        let exclude = Arc::new(Mutex::new(request.exclude.clone()));
        let policy = ExcludeFailed {
            set: self.set.clone(),
            capabilities: self.capabilities,
            exclude: exclude.clone(),
            attempts: PEER_REQUEST_ATTEMPTS.saturating_sub(1),
            declines: PEER_REQUEST_DECLINES,
        };
        let attempts = Retry::new(
            policy,
            Excluding {
                shared: self.shared.clone(),
                exclude,
            },
        );
        Box::pin(async move {
            attempts.oneshot(request).await.map_err(|error| {
                match error.downcast_ref::<PeerSetError>() {
                    Some(PeerSetError::Excluded(_)) => PeerSetError::NoPeers.into(),
                    _ => error,
                }
            })
        })
    }
}

#[cfg(test)]
mod tests;

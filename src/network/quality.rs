//! How good a peer has been to this node: reachability, speed and useful
//! work, kept per address in the address book and shown in `getpeerinfo`.
//!
//! Quality ranks peers for dialling and for outbound rotation; it is not
//! the misbehaviour score of the scoring layer, which disconnects and bans.
//! Offences count here too, so that an address that misbehaved ranks
//! below an equal one that did not, but they never ban.
//!
//! # The value
//! [`PeerQuality::value`] is a weighted sum of three terms in [0, 1], each
//! 0.5 for a peer we know nothing about, scaled down by misbehaviour:
//!
//! ```text
//! value = (0.4 · reliability + 0.3 · speed + 0.3 · contribution) · ½^misbehaviour
//! reliability  = (successes + 1) / (successes + failures + 2)
//! speed        = mean over the known EWMAs x (rtt, latency) of 200 / (200 + x ms)
//! contribution = 1 − ½ · 10 / (10 + first_deliveries)
//! ```
//!
//! * Reliability is the share of successful connection attempts with one
//!   success and one failure assumed beforehand (Laplace's rule), so a
//!   single attempt does not decide an address's fate.
//! * Speed is 1 for an instant peer, ½ at [`REFERENCE_MS`] and falls
//!   towards 0 for slow ones; an unmeasured peer is ½.
//! * Contribution rises from ½ with each new transaction, vote or block
//!   the peer was first to deliver, with diminishing returns: ¾ at
//!   [`CONTRIBUTION_SCALE`] deliveries. Bytes received do not count: they
//!   are cheap to send, while a first delivery is data this node
//!   validated and did not have.
//! * Each offence halves the value ([`MISBEHAVIOUR_FACTOR`]).
//!
//! A fresh address is thus worth exactly ½: it ranks above peers that
//! failed or were slow and below proven ones, so new addresses keep being
//! tried without displacing good peers.
//!
//! # Robustness
//! Every counter saturates; samples are clamped to [0, [`MAX_SAMPLE_MS`]]
//! ms; a stored average that is not a finite non-negative number (a
//! corrupt or hostile address-book file) counts as unmeasured and is
//! replaced by the next sample. The value is always finite and in [0, 1].

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Weight of a sample in the moving averages of round trip and latency:
/// about the last seven samples matter, so a peer's speed follows a
/// changed route within minutes of pings without one slow reply
/// dominating.
pub const EWMA_WEIGHT: f64 = 0.25;

/// Samples above this many milliseconds count as this much: a minute is
/// slower than any useful peer, and the cap keeps the averages finite.
pub const MAX_SAMPLE_MS: f64 = 60_000.0;

/// The round trip or latency, in milliseconds, that scores ½ for speed:
/// a transcontinental round trip, fast enough for consensus voting.
pub const REFERENCE_MS: f64 = 200.0;

/// First deliveries that bring the contribution term halfway from ½ to 1:
/// a handful of new transactions tells a relaying peer from a silent one.
pub const CONTRIBUTION_SCALE: f64 = 10.0;

/// Factor each offence applies to the value: one offence costs as much as
/// the difference between a proven peer and a stranger.
pub const MISBEHAVIOUR_FACTOR: f64 = 0.5;

/// Weight of reliability in the value: an address we cannot reach is
/// worth nothing else, so it weighs most.
pub const WEIGHT_RELIABILITY: f64 = 0.4;

/// Weight of speed in the value.
pub const WEIGHT_SPEED: f64 = 0.3;

/// Weight of contribution in the value.
pub const WEIGHT_CONTRIBUTION: f64 = 0.3;

/// What this node has seen of one peer (at most 38 bytes in the node's
/// encoding).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerQuality {
    /// Connection attempts that completed the handshake.
    pub successes: u32,
    /// Connection attempts that failed.
    pub failures: u32,
    /// Moving average of the ping round trip, in milliseconds.
    pub rtt_ms: Option<f32>,
    /// Moving average of the latency of our requests, in milliseconds.
    pub latency_ms: Option<f32>,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// New transactions, votes and blocks it delivered before any other
    /// peer.
    pub first_deliveries: u64,
    /// Offences charged to it.
    pub misbehaviour: u32,
}

impl PeerQuality {
    /// A connection attempt completed the handshake.
    pub fn record_success(&mut self) {
        self.successes = self.successes.saturating_add(1);
    }

    /// A connection attempt failed.
    pub fn record_failure(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    /// A ping came back after `rtt`.
    pub fn record_rtt(&mut self, rtt: Duration) {
        self.rtt_ms = Some(ewma(self.rtt_ms, rtt));
    }

    /// A request was answered after `latency`.
    pub fn record_latency(&mut self, latency: Duration) {
        self.latency_ms = Some(ewma(self.latency_ms, latency));
    }

    /// `n` bytes arrived from the peer.
    pub fn record_bytes(&mut self, n: u64) {
        self.bytes_in = self.bytes_in.saturating_add(n);
    }

    /// The peer was first to deliver a new transaction, vote or block.
    pub fn record_first_delivery(&mut self) {
        self.first_deliveries = self.first_deliveries.saturating_add(1);
    }

    /// An offence was charged to the peer.
    pub fn record_misbehaviour(&mut self) {
        self.misbehaviour = self.misbehaviour.saturating_add(1);
    }

    /// The peer's worth in [0, 1] (see the module documentation); ½ for a
    /// peer we know nothing about.
    pub fn value(&self) -> f64 {
        let successes = f64::from(self.successes);
        let failures = f64::from(self.failures);
        let reliability = (successes + 1.0) / (successes + failures + 2.0);

        let speeds: Vec<f64> = [self.rtt_ms, self.latency_ms]
            .into_iter()
            .filter_map(sane)
            .map(|ms| REFERENCE_MS / (REFERENCE_MS + ms))
            .collect();
        let speed = if speeds.is_empty() {
            0.5
        } else {
            speeds.iter().sum::<f64>() / speeds.len() as f64
        };

        let delivered = self.first_deliveries as f64;
        let contribution = 1.0 - 0.5 * CONTRIBUTION_SCALE / (CONTRIBUTION_SCALE + delivered);

        // Past 1,100 offences the factor is 0 in f64 anyway.
        let offences = i32::try_from(self.misbehaviour.min(1_100)).unwrap_or(1_100);
        let penalty = MISBEHAVIOUR_FACTOR.powi(offences);

        let value = (WEIGHT_RELIABILITY * reliability
            + WEIGHT_SPEED * speed
            + WEIGHT_CONTRIBUTION * contribution)
            * penalty;
        if value.is_finite() {
            value.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// A stored average as a usable number of milliseconds: `None` unless it
/// is finite and non-negative.
fn sane(ms: Option<f32>) -> Option<f64> {
    ms.map(f64::from)
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| ms.min(MAX_SAMPLE_MS))
}

/// The moving average `previous` updated with `sample`; the first sample
/// (or one after an unusable average) is taken as it is.
fn ewma(previous: Option<f32>, sample: Duration) -> f32 {
    let sample = (sample.as_secs_f64() * 1_000.0).min(MAX_SAMPLE_MS);
    let updated = match sane(previous) {
        Some(previous) => previous + EWMA_WEIGHT * (sample - previous),
        None => sample,
    };
    updated as f32
}

#[cfg(test)]
mod tests;

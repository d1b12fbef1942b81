//! Masternodes, their votes on transactions, and finality.
//!
//! # Rules
//! * The genesis config lists the masternodes: ed25519 key and tier. Vote
//!   weights follow TIME Coin's conflict weights: Free 1, Bronze 5, Silver 10,
//!   Gold 20.
//! * A vote (`Accept` or `Reject` a txid) travels in a gossip envelope of
//!   kind `Vote` signed by the masternode itself, so the envelope signature
//!   authenticates the voter; votes from keys outside the set are refused.
//! * A transaction is final when the weight accepting it reaches 2/3 of the
//!   total weight (`3 × accept ≥ 2 × total`).
//! * Conflicting transactions cannot both finalize: a transaction with an
//!   input already spent by a finalized one never finalizes. A masternode
//!   that accepts two transactions spending the same output equivocates:
//!   the second vote is refused and the equivocation recorded (with 2/3
//!   needed, two conflicting finalizations would need a third of the weight
//!   to equivocate).
//!
//! # Security
//! The book holds at most [`MAX_TRACKED_TXS`] tallies; the oldest are
//! forgotten first.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::transaction::{OutPoint, Txid};

/// Most transactions tallied at once.
pub const MAX_TRACKED_TXS: usize = 50_000;

/// A masternode tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// No collateral.
    Free,
    /// 1,000 TIME collateral.
    Bronze,
    /// 10,000 TIME collateral.
    Silver,
    /// 100,000 TIME collateral.
    Gold,
}

impl Tier {
    /// The vote weight.
    pub const fn weight(self) -> u64 {
        match self {
            Tier::Free => 1,
            Tier::Bronze => 5,
            Tier::Silver => 10,
            Tier::Gold => 20,
        }
    }
}

/// A vote's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// The transaction is valid and first seen for its inputs.
    Accept,
    /// The transaction is invalid or conflicts with one seen first.
    Reject,
}

/// A vote payload (inside a `Vote` envelope).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The transaction voted on.
    pub txid: Txid,
    /// The verdict.
    pub verdict: Verdict,
}

/// Why a vote was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoteError {
    /// The voter is not a masternode.
    #[error("vote from a key that is not a masternode")]
    NotMasternode,
    /// The voter already voted on this transaction.
    #[error("duplicate vote")]
    Duplicate,
    /// The voter accepted another transaction spending the same output.
    #[error(
        "equivocation: the voter accepted {} for the same input",
        hex::encode(first)
    )]
    Equivocation {
        /// The transaction it accepted first.
        first: Txid,
    },
}

impl VoteError {
    /// A short stable name, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            VoteError::NotMasternode => "not_masternode",
            VoteError::Duplicate => "duplicate",
            VoteError::Equivocation { .. } => "equivocation",
        }
    }
}

/// What a counted vote changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteOutcome {
    /// Counted; not final yet.
    Counted,
    /// This vote made the transaction final.
    Finalized,
    /// Counted, but the transaction can never finalize (a conflicting one
    /// is final).
    Conflicted,
}

/// The masternode set with its weights.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasternodeSet {
    nodes: BTreeMap<[u8; 32], Tier>,
}

impl MasternodeSet {
    /// A set from `(key, tier)` pairs.
    pub fn new(nodes: impl IntoIterator<Item = ([u8; 32], Tier)>) -> Self {
        MasternodeSet {
            nodes: nodes.into_iter().collect(),
        }
    }

    /// The tier of `key`, if it is a masternode.
    pub fn tier(&self, key: &[u8; 32]) -> Option<Tier> {
        self.nodes.get(key).copied()
    }

    /// The total vote weight.
    pub fn total_weight(&self) -> u64 {
        self.nodes.values().map(|t| t.weight()).sum()
    }

    /// Keys in ascending order (the block producer schedule walks it).
    pub fn keys(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.nodes.keys()
    }

    /// Masternodes in the set.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[derive(Debug, Default)]
struct Tally {
    accept: u64,
    reject: u64,
    voters: HashSet<[u8; 32]>,
    inputs: Vec<OutPoint>,
}

/// A recorded equivocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Equivocation {
    /// The masternode.
    pub voter: [u8; 32],
    /// The output it voted to spend twice.
    pub outpoint: OutPoint,
    /// The transaction it accepted first.
    pub first: Txid,
    /// The conflicting one.
    pub second: Txid,
}

/// Tallies of votes and the finalized transactions.
#[derive(Debug)]
pub struct VoteBook {
    set: MasternodeSet,
    tallies: HashMap<Txid, Tally>,
    order: VecDeque<Txid>,
    accepted_spends: HashMap<([u8; 32], OutPoint), Txid>,
    finalized: HashSet<Txid>,
    finalized_spends: HashMap<OutPoint, Txid>,
    equivocations: Vec<Equivocation>,
}

impl VoteBook {
    /// An empty book for `set`.
    pub fn new(set: MasternodeSet) -> Self {
        VoteBook {
            set,
            tallies: HashMap::new(),
            order: VecDeque::new(),
            accepted_spends: HashMap::new(),
            finalized: HashSet::new(),
            finalized_spends: HashMap::new(),
            equivocations: Vec::new(),
        }
    }

    /// The masternode set.
    pub fn masternodes(&self) -> &MasternodeSet {
        &self.set
    }

    /// Records `vote` by `voter` on a transaction spending `inputs`.
    ///
    /// # Errors
    /// A [`VoteError`]; equivocations are also recorded.
    pub fn record(
        &mut self,
        voter: [u8; 32],
        vote: Vote,
        inputs: &[OutPoint],
    ) -> Result<VoteOutcome, VoteError> {
        let tier = self.set.tier(&voter).ok_or(VoteError::NotMasternode)?;
        if self
            .tallies
            .get(&vote.txid)
            .is_some_and(|t| t.voters.contains(&voter))
        {
            return Err(VoteError::Duplicate);
        }
        if vote.verdict == Verdict::Accept {
            for outpoint in inputs {
                if let Some(first) = self.accepted_spends.get(&(voter, *outpoint)) {
                    if *first != vote.txid {
                        let first = *first;
                        self.equivocations.push(Equivocation {
                            voter,
                            outpoint: *outpoint,
                            first,
                            second: vote.txid,
                        });
                        metrics::counter!("timed_vote_equivocations_total").increment(1);
                        return Err(VoteError::Equivocation { first });
                    }
                }
            }
            for outpoint in inputs {
                self.accepted_spends.insert((voter, *outpoint), vote.txid);
            }
        }
        if !self.tallies.contains_key(&vote.txid) {
            if self.order.len() >= MAX_TRACKED_TXS {
                if let Some(old) = self.order.pop_front() {
                    self.tallies.remove(&old);
                }
            }
            self.order.push_back(vote.txid);
        }
        let tally = self.tallies.entry(vote.txid).or_default();
        tally.voters.insert(voter);
        if tally.inputs.is_empty() {
            tally.inputs = inputs.to_vec();
        }
        match vote.verdict {
            Verdict::Accept => tally.accept += tier.weight(),
            Verdict::Reject => tally.reject += tier.weight(),
        }
        if self.finalized.contains(&vote.txid) {
            return Ok(VoteOutcome::Counted);
        }
        let conflicted = inputs.iter().any(|o| {
            self.finalized_spends
                .get(o)
                .is_some_and(|t| *t != vote.txid)
        });
        if conflicted {
            return Ok(VoteOutcome::Conflicted);
        }
        let total = self.set.total_weight();
        if total > 0 && tally.accept.saturating_mul(3) >= total.saturating_mul(2) {
            self.finalized.insert(vote.txid);
            for outpoint in inputs {
                self.finalized_spends.insert(*outpoint, vote.txid);
            }
            return Ok(VoteOutcome::Finalized);
        }
        Ok(VoteOutcome::Counted)
    }

    /// True when `txid` is final.
    pub fn is_final(&self, txid: &Txid) -> bool {
        self.finalized.contains(txid)
    }

    /// `(accept weight, reject weight, voters)` for `txid`.
    pub fn tally(&self, txid: &Txid) -> (u64, u64, usize) {
        self.tallies
            .get(txid)
            .map_or((0, 0, 0), |t| (t.accept, t.reject, t.voters.len()))
    }

    /// True when `voter`'s vote on `txid` was counted.
    pub fn has_voted(&self, txid: &Txid, voter: &[u8; 32]) -> bool {
        self.tallies
            .get(txid)
            .is_some_and(|t| t.voters.contains(voter))
    }

    /// Every equivocation seen.
    pub fn equivocations(&self) -> &[Equivocation] {
        &self.equivocations
    }

    /// Forgets a transaction that is in a block.
    pub fn forget(&mut self, txid: &Txid) {
        if let Some(t) = self.tallies.remove(txid) {
            for o in &t.inputs {
                if self.finalized_spends.get(o) == Some(txid) {
                    self.finalized_spends.remove(o);
                }
                // Only this transaction's voters can have accepted it.
                for voter in &t.voters {
                    if self.accepted_spends.get(&(*voter, *o)) == Some(txid) {
                        self.accepted_spends.remove(&(*voter, *o));
                    }
                }
            }
        }
        self.finalized.remove(txid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> MasternodeSet {
        MasternodeSet::new([
            ([1; 32], Tier::Gold),
            ([2; 32], Tier::Silver),
            ([3; 32], Tier::Free),
            ([4; 32], Tier::Free),
        ])
    }

    fn op(n: u8) -> OutPoint {
        OutPoint {
            txid: [n; 32],
            index: 0,
        }
    }

    fn accept(txid: u8) -> Vote {
        Vote {
            txid: [txid; 32],
            verdict: Verdict::Accept,
        }
    }

    #[test]
    fn two_thirds_of_the_weight_finalizes() {
        // Total 20 + 10 + 1 + 1 = 32; 2/3 needs 22 (3 × 22 = 66 ≥ 64).
        let mut book = VoteBook::new(set());
        assert_eq!(
            book.record([1; 32], accept(9), &[op(1)]),
            Ok(VoteOutcome::Counted)
        );
        assert_eq!(
            book.record([3; 32], accept(9), &[op(1)]),
            Ok(VoteOutcome::Counted)
        );
        assert_eq!(
            book.record([4; 32], accept(9), &[op(1)]),
            Ok(VoteOutcome::Finalized)
        );
        assert!(book.is_final(&[9; 32]));
        assert_eq!(book.tally(&[9; 32]), (22, 0, 3));
    }

    #[test]
    fn outsiders_duplicates_and_equivocators_are_refused() {
        let mut book = VoteBook::new(set());
        assert_eq!(
            book.record([7; 32], accept(9), &[op(1)]),
            Err(VoteError::NotMasternode)
        );
        book.record([2; 32], accept(9), &[op(1)]).unwrap();
        assert_eq!(
            book.record([2; 32], accept(9), &[op(1)]),
            Err(VoteError::Duplicate)
        );
        // Accepting a second transaction that spends the same output.
        assert_eq!(
            book.record([2; 32], accept(8), &[op(1)]),
            Err(VoteError::Equivocation { first: [9; 32] })
        );
        assert_eq!(book.equivocations().len(), 1);
        // Rejecting the conflicting one is fine.
        let reject = Vote {
            txid: [8; 32],
            verdict: Verdict::Reject,
        };
        assert_eq!(
            book.record([2; 32], reject, &[op(1)]),
            Ok(VoteOutcome::Counted)
        );
    }

    #[test]
    fn conflicting_transactions_cannot_both_finalize() {
        let mut book = VoteBook::new(set());
        for voter in [[1; 32], [2; 32]] {
            book.record(voter, accept(9), &[op(1)]).unwrap();
        }
        assert!(book.is_final(&[9; 32]));
        // Even with every remaining weight, the conflict stays unfinal.
        for voter in [[3; 32], [4; 32]] {
            assert_eq!(
                book.record(voter, accept(8), &[op(1)]),
                Ok(VoteOutcome::Conflicted)
            );
        }
        assert!(!book.is_final(&[8; 32]));
    }
}

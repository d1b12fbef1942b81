//! Unit and property tests of [`super`].

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;

use super::*;

const KEY: [u8; 32] = [42; 32];

fn mins(m: u64) -> Duration {
    Duration::from_secs(60 * m)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// A peer with no measurements, connected for `connected`.
fn peer(id: u64, netgroup: &[u8], connected: Duration) -> EvictionCandidate {
    EvictionCandidate {
        id,
        netgroup: netgroup.to_vec(),
        connected,
        min_rtt: None,
        last_tx: None,
        last_block: None,
        protected: false,
    }
}

/// The rule that protected each protected candidate, by id.
fn protections(candidates: &[EvictionCandidate]) -> HashMap<u64, Protection> {
    let mut out = HashMap::new();
    sort_out(candidates, &KEY, |c, rule| {
        out.insert(c.id, rule);
    });
    out
}

/// One netgroup of ten peers: the oldest (id 1) is protected for its
/// netgroup, the older half of the rest for uptime, and the youngest,
/// id 100, is evicted unless a rule protects it.
fn crowd() -> Vec<EvictionCandidate> {
    let mut peers: Vec<_> = (1..=9)
        .map(|id| peer(id, b"crowd", mins(1000 - id)))
        .collect();
    peers.push(peer(100, b"crowd", mins(1)));
    peers
}

/// Checks that `crowd()` evicts id 100, and that after `change` to it,
/// id 100 is protected by `rule` and another peer is evicted.
fn protected_by(rule: Protection, change: impl FnOnce(&mut EvictionCandidate)) {
    let mut peers = crowd();
    assert_eq!(select_for_eviction(&peers, &KEY).map(|e| e.id), Some(100));
    let x = peers.iter_mut().find(|c| c.id == 100).expect("peer 100");
    change(x);
    assert_eq!(protections(&peers).get(&100), Some(&rule));
    let evicted = select_for_eviction(&peers, &KEY).expect("an unprotected peer");
    assert_ne!(evicted.id, 100);
}

/// `n` netgroups ordered by their keyed hash, highest (protected first)
/// first.
fn ranked_netgroups(n: u8) -> Vec<Vec<u8>> {
    let mut groups: Vec<Vec<u8>> = (0..n).map(|i| vec![b'g', i]).collect();
    groups.sort_by_key(|g| std::cmp::Reverse(netgroup_rank(&KEY, g)));
    groups
}

#[test]
fn empty_input_evicts_nothing() {
    assert_eq!(select_for_eviction(&[], &KEY), None);
}

#[test]
fn all_manual_peers_evict_nothing() {
    let peers: Vec<_> = crowd()
        .into_iter()
        .map(|c| EvictionCandidate {
            protected: true,
            ..c
        })
        .collect();
    assert_eq!(select_for_eviction(&peers, &KEY), None);
}

#[test]
fn a_lone_candidate_is_kept() {
    // The netgroup rule protects it; with its netgroup ranked out it would
    // still be the whole of the uptime share, rounded up.
    assert_eq!(select_for_eviction(&[peer(1, b"a", mins(1))], &KEY), None);
}

#[test]
fn manual_peers_are_never_chosen() {
    protected_by(Protection::Manual, |x| x.protected = true);
    // Only manual peers and one other: the other goes, or nothing.
    let mut peers: Vec<_> = crowd()
        .into_iter()
        .map(|c| EvictionCandidate {
            protected: true,
            ..c
        })
        .collect();
    peers.extend((200..210).map(|id| peer(id, b"other", mins(id))));
    for _ in 0..peers.len() {
        let Some(evicted) = select_for_eviction(&peers, &KEY) else {
            break;
        };
        assert!(evicted.id >= 200, "evicted manual peer {}", evicted.id);
        peers.retain(|c| c.id != evicted.id);
    }
    assert_eq!(peers.iter().filter(|c| c.protected).count(), 10);
}

#[test]
fn netgroup_rule_protects_one_peer_of_a_chosen_netgroup() {
    let groups = ranked_netgroups(12);
    // Eight singleton netgroups ranked 1 to 8, all older than x; x, alone
    // in the lowest-ranked netgroup, is the youngest, so it goes...
    let mut peers: Vec<_> = (1..=8)
        .map(|i| peer(i as u64, &groups[i], mins(500)))
        .collect();
    peers.push(peer(100, &groups[11], mins(1)));
    assert_eq!(select_for_eviction(&peers, &KEY).map(|e| e.id), Some(100));
    // ...unless its netgroup ranks among the first four present.
    let x = peers.last_mut().expect("x");
    x.netgroup = groups[0].clone();
    assert_eq!(protections(&peers).get(&100), Some(&Protection::Netgroup));
    assert_ne!(select_for_eviction(&peers, &KEY).map(|e| e.id), Some(100));
}

#[test]
fn netgroup_rule_protects_distinct_netgroups() {
    // Forty peers in the top-ranked netgroup win it one slot: the other
    // three slots go to other netgroups.
    let groups = ranked_netgroups(8);
    let mut peers: Vec<_> = (1..=40).map(|id| peer(id, &groups[0], mins(id))).collect();
    peers.extend((1..=4u8).map(|i| peer(100 + u64::from(i), &groups[usize::from(i)], mins(1))));
    let by_netgroup: BTreeSet<u64> = protections(&peers)
        .into_iter()
        .filter(|(_, rule)| *rule == Protection::Netgroup)
        .map(|(id, _)| id)
        .collect();
    // The oldest of the crowd, and the three next-ranked netgroups.
    assert_eq!(by_netgroup, BTreeSet::from([40, 101, 102, 103]));
}

#[test]
fn rtt_rule_protects_the_lowest_round_trip() {
    protected_by(Protection::Rtt, |x| x.min_rtt = Some(ms(5)));
}

#[test]
fn tx_rule_protects_the_latest_new_transaction() {
    protected_by(Protection::Tx, |x| x.last_tx = Some(Duration::from_secs(3)));
}

#[test]
fn block_rule_protects_the_latest_new_block() {
    protected_by(Protection::Block, |x| {
        x.last_block = Some(Duration::from_secs(30))
    });
}

#[test]
fn uptime_rule_protects_the_longest_connected() {
    // Older than every peer but the netgroup's oldest (id 1, 999 min).
    protected_by(Protection::Uptime, |x| {
        x.connected = mins(998) + Duration::from_secs(30)
    });
}

#[test]
fn rules_protect_at_most_their_counts() {
    // Sixty peers, each measured on everything: every rule is full.
    let peers: Vec<_> = (1..=60)
        .map(|id| EvictionCandidate {
            min_rtt: Some(ms(id)),
            last_tx: Some(ms(id * 7 % 61)),
            last_block: Some(ms(id * 11 % 61)),
            ..peer(id, &[(id % 10) as u8], mins(id * 13 % 61))
        })
        .collect();
    let mut counts: HashMap<Protection, usize> = HashMap::new();
    for rule in protections(&peers).into_values() {
        *counts.entry(rule).or_default() += 1;
    }
    assert_eq!(
        counts.get(&Protection::Netgroup),
        Some(&PROTECT_BY_NETGROUP)
    );
    assert_eq!(counts.get(&Protection::Rtt), Some(&PROTECT_BY_RTT));
    assert_eq!(counts.get(&Protection::Tx), Some(&PROTECT_BY_TX));
    assert_eq!(counts.get(&Protection::Block), Some(&PROTECT_BY_BLOCK));
    // Half of the 40 left.
    assert_eq!(counts.get(&Protection::Uptime), Some(&20));
    let evicted = select_for_eviction(&peers, &KEY).expect("a peer");
    assert_eq!(evicted.unprotected, 20);
}

#[test]
fn unmeasured_peers_are_not_protected_for_measurements() {
    let mut peers = crowd();
    let measured = |peers: &[EvictionCandidate]| -> Vec<u64> {
        let mut ids: Vec<u64> = protections(peers)
            .into_iter()
            .filter(|(_, rule)| {
                matches!(rule, Protection::Rtt | Protection::Tx | Protection::Block)
            })
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    };
    assert!(measured(&peers).is_empty());
    // One pinged peer: it alone is protected for its round trip, although
    // the rule has room for eight.
    peers[8].min_rtt = Some(ms(900));
    assert_eq!(measured(&peers), vec![peers[8].id]);
}

/// Three netgroups with old anchors (protected for their netgroups) and
/// five old fillers in `c`, so that the uptime share takes the fillers,
/// `c1` and, with `b4`, `a1`.
fn crowded(with_b4: bool) -> Vec<EvictionCandidate> {
    let h = |n: u64| mins(60 * n);
    let mut peers = vec![
        peer(1, b"a", h(100)),
        peer(2, b"b", h(99)),
        peer(3, b"c", h(98)),
        peer(11, b"a", h(5)),
        peer(12, b"a", h(4)),
        peer(13, b"a", mins(1)),
        peer(21, b"b", h(3)),
        peer(22, b"b", h(2)),
        peer(23, b"b", mins(2)),
        peer(31, b"c", h(10)),
    ];
    peers.extend((41..=45).map(|id| peer(id, b"c", h(50))));
    if with_b4 {
        peers.push(peer(24, b"b", mins(30)));
    }
    peers
}

#[test]
fn most_crowded_netgroup_loses_its_youngest() {
    // a: 11, 12, 13 and b: 21, 22, 23 and 24 are left; b is more crowded,
    // so its youngest (23) goes although 13 is younger.
    let evicted = select_for_eviction(&crowded(true), &KEY).expect("a peer");
    assert_eq!(evicted.id, 23);
    assert_eq!(evicted.netgroup_size, 4);
    assert_eq!(evicted.reason(), "crowded_netgroup");
}

#[test]
fn equally_crowded_netgroups_lose_the_youngest() {
    // The anchors are protected for their netgroups; of the twelve
    // others, the uptime share takes the fillers and 31.
    let peers = crowded(false);
    let rules = protections(&peers);
    let left: Vec<u64> = peers
        .iter()
        .map(|c| c.id)
        .filter(|id| !rules.contains_key(id))
        .collect();
    assert_eq!(left, vec![11, 12, 13, 21, 22, 23]);
    // Three each: a's youngest (13, 1 min) is younger than b's (23, 2 min).
    let evicted = select_for_eviction(&peers, &KEY).expect("a peer");
    assert_eq!(evicted.id, 13);
    assert_eq!(evicted.netgroup_size, 3);
    assert_eq!(evicted.unprotected, 6);
}

#[test]
fn singleton_netgroups_lose_the_youngest() {
    let peers: Vec<_> = (1..=30).map(|id| peer(id, &[id as u8], mins(id))).collect();
    let rules = protections(&peers);
    let youngest_left = (1..=30).find(|id| !rules.contains_key(id));
    let evicted = select_for_eviction(&peers, &KEY).expect("a peer");
    assert_eq!(Some(evicted.id), youngest_left);
    assert_eq!(evicted.netgroup_size, 1);
    assert_eq!(evicted.reason(), "youngest");
}

fn outbound(id: u64, quality: f64, connected: Duration) -> OutboundCandidate {
    OutboundCandidate {
        id,
        quality,
        connected,
        protected: false,
    }
}

#[test]
fn worst_outbound_is_the_lowest_quality_old_enough() {
    assert_eq!(worst_outbound(&[]), None);
    let peers = [
        outbound(1, 0.9, mins(60)),
        outbound(2, 0.2, mins(20)),
        // Lower, but too young to judge.
        outbound(3, 0.1, mins(9)),
        outbound(4, 0.5, mins(600)),
    ];
    assert_eq!(worst_outbound(&peers), Some(2));
    assert_eq!(worst_outbound(&peers[2..3]), None);
    // A configured peer is never rotated out.
    let mut configured = peers.clone();
    configured[1].protected = true;
    assert_eq!(worst_outbound(&configured), Some(4));
    // Ties go to the youngest; a quality that is not a number is the
    // lowest.
    let tied = [outbound(5, 0.3, mins(30)), outbound(6, 0.3, mins(20))];
    assert_eq!(worst_outbound(&tied), Some(6));
    let nan = [outbound(7, 0.0, mins(30)), outbound(8, f64::NAN, mins(30))];
    assert_eq!(worst_outbound(&nan), Some(8));
}

fn duration(max_ms: u64) -> impl Strategy<Value = Duration> {
    (0..=max_ms).prop_map(Duration::from_millis)
}

/// A candidate with arbitrary fields; the id is set by its position.
fn candidate() -> impl Strategy<Value = EvictionCandidate> {
    (
        0u8..12,
        duration(86_400_000),
        proptest::option::of(duration(2_000)),
        proptest::option::of(duration(3_600_000)),
        proptest::option::of(duration(3_600_000)),
        proptest::bool::weighted(0.1),
    )
        .prop_map(
            |(group, connected, min_rtt, last_tx, last_block, protected)| EvictionCandidate {
                id: 0,
                netgroup: vec![group],
                connected,
                min_rtt,
                last_tx,
                last_block,
                protected,
            },
        )
}

fn with_ids(mut peers: Vec<EvictionCandidate>) -> Vec<EvictionCandidate> {
    for (i, c) in peers.iter_mut().enumerate() {
        c.id = i as u64 + 1;
    }
    peers
}

/// What an honest peer wins.
#[derive(Clone, Copy, Debug)]
enum Win {
    Netgroup,
    Rtt,
    Tx,
    Block,
    Uptime,
}

proptest! {
    #[test]
    fn selection_is_an_unprotected_candidate(
        peers in proptest::collection::vec(candidate(), 0..80),
        seed in any::<u64>(),
    ) {
        let peers = with_ids(peers);
        let chosen = select_for_eviction(&peers, &KEY);
        if let Some(evicted) = chosen {
            let victim = peers.iter().find(|c| c.id == evicted.id);
            prop_assert!(victim.is_some_and(|c| !c.protected));
            let victim = victim.expect("checked");
            let same_group = peers
                .iter()
                .filter(|c| !c.protected && c.netgroup == victim.netgroup)
                .count();
            prop_assert!(evicted.netgroup_size >= 1 && evicted.netgroup_size <= same_group);
            prop_assert!(evicted.unprotected >= evicted.netgroup_size);
        } else {
            // Nothing chosen: everything was protected by some rule.
            prop_assert_eq!(protections(&peers).len(), peers.len());
        }
        // The order of the candidates does not matter.
        let mut shuffled = peers.clone();
        let len = shuffled.len();
        if len > 1 {
            shuffled.rotate_left((seed % len as u64) as usize);
            shuffled.swap(0, (seed / 7 % len as u64) as usize);
        }
        prop_assert_eq!(select_for_eviction(&shuffled, &KEY), chosen);
    }

    #[test]
    fn honest_peers_that_win_a_rule_are_never_evicted(
        attackers in proptest::collection::vec(candidate(), 0..80),
        wins in proptest::sample::subsequence(
            vec![Win::Netgroup, Win::Rtt, Win::Tx, Win::Block, Win::Uptime], 1..=5),
        honest in proptest::collection::vec(candidate(), 5),
    ) {
        // Attackers: no manual protection, round trips of at least 1 ms,
        // deliveries at least 1 s ago, at most a day connected.
        let mut peers: Vec<_> = attackers
            .into_iter()
            .map(|c| EvictionCandidate {
                protected: false,
                min_rtt: c.min_rtt.map(|d| d.max(ms(1))),
                last_tx: c.last_tx.map(|d| d.max(Duration::from_secs(1))),
                last_block: c.last_block.map(|d| d.max(Duration::from_secs(1))),
                ..c
            })
            .collect();
        // Honest peers: arbitrary, like attackers, except on the one thing
        // each of them wins.
        let first_honest = peers.len();
        for (win, c) in wins.iter().zip(honest) {
            let mut c = EvictionCandidate {
                protected: false,
                min_rtt: c.min_rtt.map(|d| d.max(ms(1))),
                last_tx: c.last_tx.map(|d| d.max(Duration::from_secs(1))),
                last_block: c.last_block.map(|d| d.max(Duration::from_secs(1))),
                ..c
            };
            match win {
                Win::Netgroup => {}
                Win::Rtt => c.min_rtt = Some(Duration::from_micros(500)),
                Win::Tx => c.last_tx = Some(Duration::ZERO),
                Win::Block => c.last_block = Some(Duration::ZERO),
                Win::Uptime => c.connected = Duration::from_secs(2 * 86_400),
            }
            peers.push(c);
        }
        // The netgroup winner's netgroup ranks above every other (the
        // attacker does not know the key, so cannot aim for it).
        if let Some(pos) = wins.iter().position(|w| matches!(w, Win::Netgroup)) {
            let top = peers
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != first_honest + pos)
                .map(|(_, c)| netgroup_rank(&KEY, &c.netgroup))
                .max()
                .unwrap_or_default();
            let best = (0..=u16::MAX)
                .map(|i| [b'h', (i >> 8) as u8, i as u8].to_vec())
                .find(|g| netgroup_rank(&KEY, g) > top)
                .expect("a netgroup ranked above ninety others");
            peers[first_honest + pos].netgroup = best;
        }
        let peers = with_ids(peers);
        let honest: Vec<u64> = peers[first_honest..].iter().map(|c| c.id).collect();
        let rules = protections(&peers);
        for id in &honest {
            prop_assert!(rules.contains_key(id), "honest peer {} unprotected", id);
        }
        if let Some(evicted) = select_for_eviction(&peers, &KEY) {
            prop_assert!(!honest.contains(&evicted.id));
        }
    }
}

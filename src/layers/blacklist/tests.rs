//! Tests of the ban list, its escalation, persistence and the layer.

use std::collections::BTreeMap;

use super::persist::unix_now;
use super::*;
use crate::layers::test_support::{inbound, peer, CountingHandler};
use crate::protocol::Message;
use std::sync::atomic::Ordering;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn escalation_follows_the_default_schedule() {
    let b = Blacklist::new(&BlacklistConfig::default());
    let a = ip("127.0.0.9");
    assert_eq!(b.record_violation(a, "test"), None);
    assert_eq!(b.record_violation(a, "test"), None);
    assert!(!b.is_banned(a));
    assert!(matches!(
        b.record_violation(a, "test"),
        Some(BanUntil::Until(_))
    ));
    assert!(b.is_banned(a));
    tokio::time::advance(Duration::from_secs(301)).await;
    assert!(!b.is_banned(a), "5 minute ban expired");
    assert_eq!(b.record_violation(a, "test"), None, "4th violation");
    b.record_violation(a, "test");
    assert_eq!(b.banned(a).unwrap().until.remaining_secs(), Some(3600));
    for _ in 6..=10 {
        b.record_violation(a, "test");
    }
    assert_eq!(b.banned(a).unwrap().until, BanUntil::Permanent);
    tokio::time::advance(Duration::from_secs(100 * 24 * 3600)).await;
    assert!(b.is_banned(a));
}

#[tokio::test(start_paused = true)]
async fn violations_decay_after_an_hour_clean() {
    let b = Blacklist::new(&BlacklistConfig::default());
    let a = ip("127.0.0.9");
    b.record_violation(a, "test");
    b.record_violation(a, "test");
    tokio::time::advance(Duration::from_secs(3601)).await;
    assert_eq!(b.record_violation(a, "test"), None, "count restarted");
    b.prune();
    assert_eq!(b.tracked(), 1);
    tokio::time::advance(Duration::from_secs(3601)).await;
    b.prune();
    assert_eq!(b.tracked(), 0);
}

#[test]
fn ipv6_is_banned_by_its_64_and_subnets_work() {
    let b = Blacklist::new(&BlacklistConfig {
        banned_subnets: vec!["10.1.0.0/16".parse().unwrap()],
        ..BlacklistConfig::default()
    });
    b.ban_ip(ip("2001:db8:1:2::5"), None, "manual");
    assert!(b.is_banned(ip("2001:db8:1:2:ffff::1")));
    assert!(!b.is_banned(ip("2001:db8:1:3::5")));
    assert!(b.is_banned(ip("10.1.200.3")));
    assert!(b.is_banned(ip("::ffff:10.1.0.1")));
    assert!(!b.is_banned(ip("10.2.0.1")));
    b.ban_subnet("192.168.7.0/24".parse().unwrap(), None, "manual");
    assert!(b.is_banned(ip("192.168.7.77")));
    assert_eq!(b.list().len(), 3);
    assert!(b.unban("192.168.7.0/24".parse().unwrap()));
    assert!(b.unban("2001:db8:1:2::/64".parse().unwrap()));
    assert!(!b.is_banned(ip("2001:db8:1:2::5")));
    b.clear();
    assert!(b.is_banned(ip("10.1.200.3")), "config bans survive clear");
}

#[test]
fn the_table_is_bounded_and_keeps_permanent_bans() {
    let b = Blacklist::new(&BlacklistConfig {
        max_entries: 3,
        ..BlacklistConfig::default()
    });
    b.ban_ip(ip("1.1.1.1"), None, "manual");
    for n in 0..50u8 {
        b.record_violation(IpAddr::from([2, 2, 2, n]), "test");
        assert!(b.tracked() <= 3);
    }
    assert!(b.is_banned(ip("1.1.1.1")));
}

fn tracks(b: &Blacklist, s: &str) -> bool {
    b.lock().ips.contains_key(&ip(s))
}

#[tokio::test(start_paused = true)]
async fn the_oldest_violation_without_a_ban_goes_first() {
    let b = Blacklist::new(&BlacklistConfig {
        max_entries: 3,
        ..BlacklistConfig::default()
    });
    for s in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        b.record_violation(ip(s), "test");
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // A new violation makes .1 the most recent.
    b.record_violation(ip("192.0.2.1"), "test");
    b.record_violation(ip("192.0.2.4"), "test");
    assert_eq!(b.tracked(), 3);
    assert!(!tracks(&b, "192.0.2.2"), "the oldest violation went first");
    assert!(tracks(&b, "192.0.2.1") && tracks(&b, "192.0.2.3"));
    b.record_violation(ip("192.0.2.5"), "test");
    assert!(!tracks(&b, "192.0.2.3"));
}

#[tokio::test(start_paused = true)]
async fn bans_go_only_when_no_record_without_one_is_left_and_the_first_to_end_first() {
    let b = Blacklist::new(&BlacklistConfig {
        max_entries: 4,
        ..BlacklistConfig::default()
    });
    let r = recording_sink(&b);
    b.ban_ip(ip("192.0.2.1"), Some(Duration::from_secs(600)), "score");
    b.ban_ip(ip("192.0.2.2"), Some(Duration::from_secs(60)), "score");
    b.ban_ip(ip("192.0.2.3"), None, "manual");
    b.record_violation(ip("192.0.2.4"), "test");
    // Full: each new violation evicts the one record without a ban.
    for n in 10..20u8 {
        b.record_violation(IpAddr::from([198, 51, 100, n]), "test");
        assert_eq!(b.tracked(), 4);
        assert!(b.is_banned(ip("192.0.2.1")) && b.is_banned(ip("192.0.2.2")));
    }
    assert!(!tracks(&b, "192.0.2.4"));
    // Only bans left: the one that ends first goes, reported removed.
    b.ban_ip(ip("192.0.2.5"), Some(Duration::from_secs(3600)), "score");
    assert!(!tracks(&b, "198.51.100.19"));
    b.ban_ip(ip("192.0.2.6"), Some(Duration::from_secs(3600)), "score");
    assert!(!b.is_banned(ip("192.0.2.2")), "the 60 s ban ended first");
    assert!(b.is_banned(ip("192.0.2.1")));
    assert!(r
        .changes
        .lock()
        .unwrap()
        .contains(&BanChange::Removed("192.0.2.2/32".parse().unwrap())));
    b.ban_ip(ip("192.0.2.7"), Some(Duration::from_secs(3600)), "score");
    assert!(!b.is_banned(ip("192.0.2.1")), "then the 600 s one");
    // Permanent bans stay whatever comes.
    for n in 0..50u8 {
        b.ban_ip(
            IpAddr::from([203, 0, 113, n]),
            Some(Duration::from_secs(60)),
            "score",
        );
    }
    assert!(b.is_banned(ip("192.0.2.3")));
    assert_eq!(b.tracked(), 4);
    assert_replay_matches(&r, &b);
}

#[tokio::test(start_paused = true)]
async fn rotating_addresses_cannot_wash_a_ban_or_a_count() {
    let b = Blacklist::new(&BlacklistConfig {
        max_entries: 100,
        ..BlacklistConfig::default()
    });
    let bad = ip("192.0.2.66");
    for _ in 0..3 {
        b.record_violation(bad, "test");
    }
    assert!(b.is_banned(bad));
    // The attacker's other addresses, each with one violation.
    for n in 0..10_000u32 {
        b.record_violation(IpAddr::from((0x0b00_0000 + n).to_be_bytes()), "test");
        assert!(b.tracked() <= 100);
    }
    assert!(b.is_banned(bad), "the ban outlives any number of records");
    // Its ban ends; its count (3) stays: two more violations ban it for an
    // hour.
    tokio::time::advance(Duration::from_secs(301)).await;
    b.prune();
    assert!(!b.is_banned(bad));
    b.record_violation(bad, "test");
    b.record_violation(bad, "test");
    assert_eq!(b.banned(bad).unwrap().until.remaining_secs(), Some(3600));
}

#[tokio::test]
async fn the_layer_refuses_banned_peers_and_disconnects_them() {
    let list = Arc::new(Blacklist::new(&BlacklistConfig::default()));
    let layer = BlacklistLayer::new(list.clone());
    let handler = CountingHandler::default();
    let mut svc = layer.layer(handler.clone());
    let good = peer([127, 0, 0, 1]);
    let bad = peer([127, 0, 0, 66]);
    list.ban_ip(bad.ip(), Some(Duration::from_secs(60)), "manual");
    svc.call(inbound(&good, Message::GetPeers)).await.unwrap();
    let err = svc
        .call(inbound(&bad, Message::GetPeers))
        .await
        .unwrap_err();
    assert_eq!(Rejection::find(&err).unwrap().reason, "banned");
    assert!(bad.disconnect.is_cancelled());
    assert!(!good.disconnect.is_cancelled());
    assert_eq!(handler.0.load(Ordering::Relaxed), 1);
    assert_eq!(layer.counters().rejected("banned"), 1);
}

fn now_unix_secs() -> u64 {
    unix_now().as_secs()
}

/// A sink that records every change it is told of, and how often an
/// operator's change asked it to wait.
#[derive(Default)]
struct Recorder {
    changes: Mutex<Vec<BanChange>>,
    operator: Mutex<usize>,
}

impl BanSink for Recorder {
    fn changed(&self, change: BanChange) {
        self.changes.lock().unwrap().push(change);
    }

    fn operator_changed(&self) {
        *self.operator.lock().unwrap() += 1;
    }
}

impl Recorder {
    fn count(&self) -> usize {
        self.changes.lock().unwrap().len()
    }

    fn last(&self) -> BanChange {
        self.changes.lock().unwrap().last().cloned().unwrap()
    }

    fn operator(&self) -> usize {
        *self.operator.lock().unwrap()
    }

    /// The stored copy a sink builds by applying every change in order.
    fn replayed(&self) -> Vec<PersistedBan> {
        let mut stored: BTreeMap<IpNet, PersistedBan> = BTreeMap::new();
        for change in self.changes.lock().unwrap().iter() {
            match change {
                BanChange::Set(ban) => {
                    stored.insert(ban.subnet, ban.clone());
                }
                BanChange::Removed(net) => {
                    stored.remove(net);
                }
                BanChange::Cleared => stored.clear(),
            }
        }
        stored.into_values().collect()
    }
}

fn recording_sink(b: &Blacklist) -> Arc<Recorder> {
    let recorder = Arc::new(Recorder::default());
    b.set_sink(recorder.clone());
    recorder
}

/// The replayed copy holds what `persisted` lists (expiries within the
/// second of rounding that separates the two computations).
fn assert_replay_matches(recorder: &Recorder, b: &Blacklist) {
    assert_replay_holds_the_same_bans(recorder, b);
    let (replayed, persisted) = (recorder.replayed(), sorted(b.persisted()));
    for (r, p) in replayed.iter().zip(&persisted) {
        let (r, p) = (r.expires_unix.unwrap_or(0), p.expires_unix.unwrap_or(0));
        assert!(r.abs_diff(p) <= 1, "{r} vs {p}");
    }
}

/// The replayed copy holds the same subnets, reasons and permanent bans as
/// `persisted` (with paused time, wall-clock expiries computed before and
/// after an `advance` differ by the advance).
fn assert_replay_holds_the_same_bans(recorder: &Recorder, b: &Blacklist) {
    let replayed = recorder.replayed();
    let persisted = sorted(b.persisted());
    let key = |v: &[PersistedBan]| -> Vec<(IpNet, String, bool)> {
        v.iter()
            .map(|p| (p.subnet, p.reason.clone(), p.expires_unix.is_some()))
            .collect()
    };
    assert_eq!(key(&replayed), key(&persisted));
}

fn sorted(mut bans: Vec<PersistedBan>) -> Vec<PersistedBan> {
    bans.sort_by_key(|b| b.subnet);
    bans
}

#[test]
fn persisted_round_trips_into_a_fresh_blacklist() {
    let config = BlacklistConfig {
        banned_subnets: vec!["10.1.0.0/16".parse().unwrap()],
        ..BlacklistConfig::default()
    };
    let b = Blacklist::new(&config);
    b.ban_ip(ip("203.0.113.7"), None, "manual");
    b.ban_ip(
        ip("2001:db8:1:2::5"),
        Some(Duration::from_secs(300)),
        "score",
    );
    b.ban_subnet(
        "198.51.100.0/24".parse().unwrap(),
        Some(Duration::from_secs(3600)),
        "manual",
    );
    let stored = b.persisted();
    assert_eq!(stored.len(), 3, "config bans are not persisted: {stored:?}");
    assert!(stored.iter().all(|p| p.reason != "config"));
    let v4 = stored
        .iter()
        .find(|p| p.subnet == "203.0.113.7/32".parse().unwrap())
        .unwrap();
    assert_eq!(v4.expires_unix, None);
    assert_eq!(v4.reason, "manual");
    let v6 = stored
        .iter()
        .find(|p| p.subnet == "2001:db8:1:2::/64".parse().unwrap())
        .unwrap();
    let expires = v6.expires_unix.unwrap();
    let now = now_unix_secs();
    assert!(
        (now + 299..=now + 301).contains(&expires),
        "{expires} vs {now}"
    );

    let fresh = Blacklist::new(&config);
    assert_eq!(fresh.restore(&stored), 3);
    assert!(fresh.is_banned(ip("203.0.113.7")));
    assert!(!fresh.is_banned(ip("203.0.113.8")));
    assert!(fresh.is_banned(ip("2001:db8:1:2:ffff::1")));
    assert!(!fresh.is_banned(ip("2001:db8:1:3::5")));
    assert!(fresh.is_banned(ip("198.51.100.200")));
    assert!(
        fresh.is_banned(ip("10.1.2.3")),
        "config ban from the config"
    );
    let v4 = fresh.banned(ip("203.0.113.7")).unwrap();
    assert_eq!((v4.until, v4.reason), (BanUntil::Permanent, "manual"));
    let v6 = fresh.banned(ip("2001:db8:1:2::9")).unwrap();
    assert_eq!(v6.reason, "score");
    let left = v6.until.remaining_secs().unwrap();
    assert!((298..=301).contains(&left), "{left}");
    let net = fresh.banned(ip("198.51.100.1")).unwrap();
    assert_eq!(net.subnet, "198.51.100.0/24".parse::<IpNet>().unwrap());
    assert!(net.until.remaining_secs().unwrap() > 3590);
    // Single addresses are back in the per-IP table.
    assert_eq!(fresh.tracked(), 2);
    assert_eq!(sorted(fresh.persisted()).len(), 3);
}

#[test]
fn restored_ip_bans_behave_as_before() {
    let b = Blacklist::new(&BlacklistConfig::default());
    let restored = b.restore(&[
        PersistedBan {
            subnet: "203.0.113.7/32".parse().unwrap(),
            expires_unix: None,
            reason: "escalation".into(),
        },
        PersistedBan {
            subnet: "203.0.113.8/32".parse().unwrap(),
            expires_unix: Some(now_unix_secs() + 600),
            reason: "something new".into(),
        },
    ]);
    assert_eq!(restored, 2);
    let a = ip("203.0.113.7");
    for _ in 0..5 {
        b.record_violation(a, "test");
    }
    assert_eq!(
        b.banned(a).unwrap().until,
        BanUntil::Permanent,
        "escalation keeps the longer restored ban"
    );
    assert_eq!(b.banned(ip("203.0.113.8")).unwrap().reason, "restored");
    assert!(b.unban("203.0.113.7/32".parse().unwrap()));
    assert!(!b.is_banned(a));
    assert!(b.unban("203.0.113.8/32".parse().unwrap()));
    assert!(b.list().is_empty());
}

#[test]
fn restore_skips_expired_bans() {
    let b = Blacklist::new(&BlacklistConfig::default());
    let now = now_unix_secs();
    let restored = b.restore(&[
        PersistedBan {
            subnet: "203.0.113.7/32".parse().unwrap(),
            expires_unix: Some(now.saturating_sub(10)),
            reason: "manual".into(),
        },
        PersistedBan {
            subnet: "198.51.100.0/24".parse().unwrap(),
            expires_unix: Some(0),
            reason: "manual".into(),
        },
        PersistedBan {
            subnet: "2001:db8::/64".parse().unwrap(),
            expires_unix: Some(now + 120),
            reason: "score".into(),
        },
    ]);
    assert_eq!(restored, 1);
    assert!(!b.is_banned(ip("203.0.113.7")));
    assert!(!b.is_banned(ip("198.51.100.1")));
    assert!(b.is_banned(ip("2001:db8::1")));
    assert_eq!(b.list().len(), 1);
}

#[test]
fn restore_respects_max_entries_and_keeps_the_longest() {
    let b = Blacklist::new(&BlacklistConfig {
        max_entries: 2,
        ..BlacklistConfig::default()
    });
    let now = now_unix_secs();
    let ban = |s: &str, expires_unix| PersistedBan {
        subnet: s.parse().unwrap(),
        expires_unix,
        reason: "manual".into(),
    };
    let restored = b.restore(&[
        ban("192.0.2.1/32", Some(now + 60)),
        ban("192.0.2.2/32", Some(now + 6000)),
        ban("192.0.2.3/32", None),
    ]);
    assert_eq!(restored, 2);
    assert_eq!(b.tracked(), 2);
    assert!(!b.is_banned(ip("192.0.2.1")), "the shortest is dropped");
    assert!(b.is_banned(ip("192.0.2.2")));
    assert!(b.is_banned(ip("192.0.2.3")));
}

#[test]
fn restore_does_not_call_the_sink() {
    let b = Blacklist::new(&BlacklistConfig::default());
    let recorder = recording_sink(&b);
    b.restore(&[PersistedBan {
        subnet: "192.0.2.1/32".parse().unwrap(),
        expires_unix: None,
        reason: "manual".into(),
    }]);
    b.prune();
    assert_eq!(recorder.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn every_change_is_reported_once_and_a_replayed_copy_matches() {
    let b = Blacklist::new(&BlacklistConfig {
        banned_subnets: vec!["10.1.0.0/16".parse().unwrap()],
        ..BlacklistConfig::default()
    });
    let r = recording_sink(&b);
    let a = ip("127.0.0.9");
    let a_net: IpNet = "127.0.0.9/32".parse().unwrap();

    b.record_violation(a, "test");
    b.record_violation(a, "test");
    assert_eq!(
        r.count(),
        0,
        "violations below the threshold change nothing"
    );
    b.record_violation(a, "test");
    assert_eq!(r.count(), 1, "the escalation ban");
    let BanChange::Set(ban) = r.last() else {
        panic!("{:?}", r.last())
    };
    assert_eq!((ban.subnet, ban.reason.as_str()), (a_net, "escalation"));
    assert!(ban.expires_unix.is_some());
    b.record_violation(a, "test");
    assert_eq!(r.count(), 1, "4th violation: no new ban");
    assert_replay_matches(&r, &b);

    b.ban_ip(ip("2001:db8::1"), None, "manual");
    assert_eq!(r.count(), 2);
    b.ban_subnet("192.168.7.0/24".parse().unwrap(), None, "manual");
    assert_eq!(r.count(), 3);
    assert_replay_matches(&r, &b);
    assert_eq!(b.persisted().len(), 3);

    assert!(!b.unban("192.168.8.0/24".parse().unwrap()));
    assert_eq!(r.count(), 3, "nothing lifted, nothing reported");
    assert!(b.unban("192.168.7.0/24".parse().unwrap()));
    assert_eq!(
        r.last(),
        BanChange::Removed("192.168.7.0/24".parse().unwrap())
    );
    assert_replay_matches(&r, &b);

    // The 5-minute escalation ban expires: prune reports it removed.
    tokio::time::advance(Duration::from_secs(301)).await;
    b.prune();
    assert_eq!(r.last(), BanChange::Removed(a_net));
    assert_replay_matches(&r, &b);
    let before = r.count();
    b.prune();
    assert_eq!(r.count(), before, "nothing more to expire");

    b.clear();
    assert_eq!(r.last(), BanChange::Cleared);
    assert_replay_matches(&r, &b);
    assert!(b.persisted().is_empty(), "clear leaves only config bans");
    assert!(b.is_banned(ip("10.1.0.1")));
}

#[test]
fn operator_changes_let_the_sink_wait_and_the_middlewares_do_not() {
    let b = Blacklist::new(&BlacklistConfig::default());
    let r = recording_sink(&b);
    for _ in 0..3 {
        b.record_violation(ip("192.0.2.9"), "test");
    }
    b.ban_ip(ip("192.0.2.8"), None, "score");
    assert_eq!((r.count(), r.operator()), (2, 0));
    b.ban_subnet("198.51.100.0/24".parse().unwrap(), None, "manual");
    assert_eq!(r.operator(), 1);
    assert!(!b.unban("203.0.113.0/24".parse().unwrap()));
    assert_eq!(r.operator(), 1, "nothing lifted: nothing to wait for");
    assert!(b.unban("192.0.2.8/32".parse().unwrap()));
    assert_eq!(r.operator(), 2);
    b.clear();
    assert_eq!(r.operator(), 3);
    assert_replay_matches(&r, &b);
}

#[test]
fn a_ban_evicted_for_room_is_reported_removed() {
    let b = Blacklist::new(&BlacklistConfig {
        max_entries: 1,
        ..BlacklistConfig::default()
    });
    b.ban_ip(ip("192.0.2.1"), Some(Duration::from_secs(60)), "manual");
    let r = recording_sink(&b);
    b.record_violation(ip("192.0.2.2"), "test");
    assert!(!b.is_banned(ip("192.0.2.1")));
    assert_eq!(
        *r.changes.lock().unwrap(),
        vec![BanChange::Removed("192.0.2.1/32".parse().unwrap())]
    );
}

#[test]
fn an_address_banned_by_ip_and_as_a_subnet_is_stored_once_with_the_longer_ban() {
    let b = Blacklist::new(&BlacklistConfig::default());
    let r = recording_sink(&b);
    let net: IpNet = "192.0.2.7/32".parse().unwrap();
    b.ban_subnet(net, None, "manual");
    b.ban_ip(ip("192.0.2.7"), Some(Duration::from_secs(60)), "score");
    // The permanent subnet ban outlasts the per-IP one: still stored.
    assert_eq!(
        r.last(),
        BanChange::Set(PersistedBan {
            subnet: net,
            expires_unix: None,
            reason: "manual".into()
        })
    );
    assert_eq!(b.persisted().len(), 1);
    assert_replay_matches(&r, &b);
    assert!(b.unban(net));
    assert_eq!(r.last(), BanChange::Removed(net));
    assert!(b.persisted().is_empty());
}

/// Random operations on a small, full table: the copy a sink builds from
/// the reported changes always equals `persisted`.
#[tokio::test(start_paused = true)]
async fn a_replayed_copy_follows_any_sequence_of_changes() {
    let b = Blacklist::new(&BlacklistConfig {
        max_entries: 6,
        banned_subnets: vec!["10.9.0.0/16".parse().unwrap()],
        ..BlacklistConfig::default()
    });
    let r = recording_sink(&b);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..2_000 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let pick = (x >> 33) as u8;
        let addr = IpAddr::from([192, 0, 2, pick % 12]);
        let net = IpNet::from(addr);
        match (x >> 40) % 10 {
            0..=3 => {
                b.record_violation(addr, "test");
            }
            4 => b.ban_ip(
                addr,
                Some(Duration::from_secs(u64::from(pick % 4) * 100)),
                "score",
            ),
            5 => b.ban_subnet(net, Some(Duration::from_secs(200)), "manual"),
            6 => {
                b.unban(net);
            }
            // Expired bans leave the stored copy at the next prune.
            7 => {
                tokio::time::advance(Duration::from_secs(150)).await;
                b.prune();
            }
            8 => b.prune(),
            _ => {
                if pick % 16 == 0 {
                    b.clear();
                }
            }
        }
        assert_replay_holds_the_same_bans(&r, &b);
    }
}

#[test]
fn bad_escalation_is_a_config_error() {
    let config = BlacklistConfig {
        escalation: vec![
            EscalationStep {
                violations: 5,
                ban_secs: Some(1),
            },
            EscalationStep {
                violations: 3,
                ban_secs: Some(1),
            },
        ],
        ..BlacklistConfig::default()
    };
    assert!(config.validate().is_err());
}

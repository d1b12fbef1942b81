//! Unit and property tests of [`super`].

use proptest::prelude::*;

use super::*;

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

#[test]
fn a_stranger_is_neutral() {
    assert_eq!(PeerQuality::default().value(), 0.5);
}

#[test]
fn reliable_fast_contributing_outranks_flaky_slow_silent() {
    let mut good = PeerQuality::default();
    let mut bad = PeerQuality::default();
    for _ in 0..20 {
        good.record_success();
        good.record_rtt(ms(30));
        good.record_latency(ms(60));
        good.record_first_delivery();
        good.record_bytes(10_000);
    }
    for i in 0..20 {
        if i % 4 == 0 {
            bad.record_success();
        } else {
            bad.record_failure();
        }
        bad.record_rtt(ms(1_500));
        bad.record_latency(ms(4_000));
        // Many bytes, nothing new: bytes earn nothing.
        bad.record_bytes(10_000_000);
    }
    let stranger = PeerQuality::default().value();
    assert!(good.value() > stranger, "{} <= {stranger}", good.value());
    assert!(bad.value() < stranger, "{} >= {stranger}", bad.value());
    assert!(good.value() > 0.8 && bad.value() < 0.3);
}

#[test]
fn each_term_ranks_on_its_own() {
    let base = PeerQuality {
        successes: 5,
        failures: 1,
        rtt_ms: Some(100.0),
        ..PeerQuality::default()
    };
    let better = |change: &dyn Fn(&mut PeerQuality)| {
        let mut q = base.clone();
        change(&mut q);
        q.value() > base.value()
    };
    assert!(better(&|q| q.record_success()));
    assert!(better(&|q| q.record_rtt(ms(10))));
    assert!(better(&|q| q.record_latency(ms(10))));
    assert!(better(&|q| q.record_first_delivery()));
    assert!(!better(&|q| q.record_failure()));
    assert!(!better(&|q| q.record_rtt(ms(5_000))));
    assert!(!better(&|q| q.record_bytes(1 << 30)));
}

#[test]
fn misbehaviour_ranks_lower_than_an_equal_peer() {
    let mut honest = PeerQuality::default();
    for _ in 0..50 {
        honest.record_success();
        honest.record_rtt(ms(20));
        honest.record_first_delivery();
    }
    let mut offender = honest.clone();
    offender.record_misbehaviour();
    assert!(offender.value() < honest.value());
    // One offence undoes a proven record: below a stranger.
    assert!(offender.value() < PeerQuality::default().value());
    offender.record_misbehaviour();
    let twice = offender.value();
    offender.record_misbehaviour();
    assert!(offender.value() < twice);
}

#[test]
fn averages_move_towards_samples() {
    let mut q = PeerQuality::default();
    q.record_rtt(ms(100));
    assert_eq!(q.rtt_ms, Some(100.0));
    q.record_rtt(ms(200));
    assert_eq!(q.rtt_ms, Some(125.0));
    q.record_latency(Duration::MAX);
    assert_eq!(q.latency_ms, Some(MAX_SAMPLE_MS as f32));
}

#[test]
fn unusable_stored_averages_are_unmeasured_and_replaced() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -5.0] {
        let mut q = PeerQuality {
            rtt_ms: Some(bad),
            latency_ms: Some(bad),
            ..PeerQuality::default()
        };
        assert_eq!(q.value(), 0.5);
        q.record_rtt(ms(40));
        assert_eq!(q.rtt_ms, Some(40.0));
    }
}

#[test]
fn counters_saturate() {
    let mut q = PeerQuality {
        successes: u32::MAX,
        failures: u32::MAX,
        bytes_in: u64::MAX,
        first_deliveries: u64::MAX,
        misbehaviour: u32::MAX,
        ..PeerQuality::default()
    };
    q.record_success();
    q.record_failure();
    q.record_bytes(u64::MAX);
    q.record_first_delivery();
    q.record_misbehaviour();
    assert_eq!(q.successes, u32::MAX);
    assert_eq!(q.bytes_in, u64::MAX);
    assert_eq!(q.value(), 0.0);
}

#[test]
fn stored_form_is_small_and_round_trips() {
    let mut q = PeerQuality::default();
    q.record_success();
    q.record_rtt(ms(12));
    q.record_latency(ms(30));
    q.record_bytes(4096);
    q.record_first_delivery();
    let bytes = crate::encoding::encode_value(&q).expect("encodes");
    assert_eq!(bytes.len(), 38);
    let back: PeerQuality = crate::encoding::decode_value(&bytes).expect("decodes");
    assert_eq!(back, q);
}

#[derive(Clone, Debug)]
enum Record {
    Success,
    Failure,
    Rtt(Duration),
    Latency(Duration),
    Bytes(u64),
    FirstDelivery,
    Misbehaviour,
}

fn record() -> impl Strategy<Value = Record> {
    let duration = prop_oneof![
        (0u64..10_000).prop_map(Duration::from_millis),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ];
    prop_oneof![
        Just(Record::Success),
        Just(Record::Failure),
        duration.clone().prop_map(Record::Rtt),
        duration.prop_map(Record::Latency),
        any::<u64>().prop_map(Record::Bytes),
        Just(Record::FirstDelivery),
        Just(Record::Misbehaviour),
    ]
}

fn average() -> impl Strategy<Value = Option<f32>> {
    prop_oneof![
        Just(None),
        any::<f32>().prop_map(Some),
        prop_oneof![
            Just(f32::NAN),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            Just(f32::MAX),
            Just(-0.0),
        ]
        .prop_map(Some),
    ]
}

/// Any stored quality, including what a corrupt file decodes to.
fn stored() -> impl Strategy<Value = PeerQuality> {
    (
        any::<u32>(),
        any::<u32>(),
        average(),
        average(),
        any::<u64>(),
        any::<u64>(),
        prop_oneof![0u32..8, any::<u32>()],
    )
        .prop_map(
            |(
                successes,
                failures,
                rtt_ms,
                latency_ms,
                bytes_in,
                first_deliveries,
                misbehaviour,
            )| {
                PeerQuality {
                    successes,
                    failures,
                    rtt_ms,
                    latency_ms,
                    bytes_in,
                    first_deliveries,
                    misbehaviour,
                }
            },
        )
}

proptest! {
    #[test]
    fn value_is_a_finite_share_and_moves_the_right_way(
        start in prop_oneof![Just(PeerQuality::default()), stored()],
        records in proptest::collection::vec(record(), 0..200),
    ) {
        let mut q = start;
        let mut before = q.value();
        prop_assert!(before.is_finite() && (0.0..=1.0).contains(&before));
        for record in records {
            match record {
                Record::Success => q.record_success(),
                Record::Failure => q.record_failure(),
                Record::Rtt(d) => q.record_rtt(d),
                Record::Latency(d) => q.record_latency(d),
                Record::Bytes(n) => q.record_bytes(n),
                Record::FirstDelivery => q.record_first_delivery(),
                Record::Misbehaviour => q.record_misbehaviour(),
            }
            let after = q.value();
            prop_assert!(after.is_finite() && (0.0..=1.0).contains(&after), "{after}");
            match record {
                Record::Success | Record::FirstDelivery => prop_assert!(after >= before),
                Record::Failure | Record::Misbehaviour => prop_assert!(after <= before),
                Record::Bytes(_) => prop_assert_eq!(after, before),
                Record::Rtt(_) | Record::Latency(_) => {}
            }
            before = after;
        }
    }
}

//! The broker on plain values and virtual time.

use super::*;
use crate::history::FaultKind;
use crate::subscription::{
    DEAD_LETTER_DELIVERY_COUNT, DEAD_LETTER_SUBSCRIPTION, DEAD_LETTER_SUBSCRIPTION_PROJECT,
};

const SUB: &str = "projects/p/subscriptions/sub";
const TOPIC: &str = "projects/p/topics/top";
const DLQ: &str = "projects/p/topics/dlq";
const LEASE: Duration = Duration::from_secs(10);
const STREAM: Transport = Transport::GrpcStream;
const UNARY: Transport = Transport::GrpcUnary;

fn broker(configure: impl FnOnce(&mut Subscription)) -> Broker {
    let mut b = Broker::new(WallClock::new(Instant::now(), SystemTime::UNIX_EPOCH));
    for t in [TOPIC, DLQ] {
        b.create_topic(Topic {
            name: t.into(),
            ..Default::default()
        })
        .unwrap();
    }
    let mut s = Subscription {
        name: SUB.into(),
        topic: TOPIC.into(),
        ..Default::default()
    };
    configure(&mut s);
    b.create_subscription(s).unwrap();
    b.create_subscription(Subscription {
        name: "projects/p/subscriptions/dlq-inspect".into(),
        topic: DLQ.into(),
        ..Default::default()
    })
    .unwrap();
    b
}

fn publish(b: &mut Broker, key: &str, data: &str, now: Instant) {
    b.publish(
        TOPIC,
        vec![PubsubMessage {
            data: data.as_bytes().to_vec().into(),
            ordering_key: key.into(),
            ..Default::default()
        }],
        UNARY,
        now,
    )
    .unwrap();
}

type Got = Vec<(String, String, i32)>;

fn pull_as(b: &mut Broker, sub: &str, consumer: Consumer, now: Instant) -> Got {
    b.pull(sub, consumer, STREAM, 100, u64::MAX, LEASE, now)
        .unwrap()
        .into_iter()
        .map(|r| {
            let m = r.message.unwrap_or_default();
            (
                String::from_utf8_lossy(&m.data).into_owned(),
                r.ack_id,
                r.delivery_attempt,
            )
        })
        .collect()
}

/// A pull by stream `stream`.
fn pull(b: &mut Broker, stream: ConsumerId, now: Instant) -> Got {
    pull_as(b, SUB, Consumer::Stream(stream), now)
}

fn data(got: &Got) -> Vec<&str> {
    got.iter().map(|(d, _, _)| d.as_str()).collect()
}

fn ack(b: &mut Broker, ack_id: &str, now: Instant) -> AckOutcome {
    b.acknowledge(SUB, &[ack_id.to_string()], UNARY, now)
        .unwrap()
}

fn nack(b: &mut Broker, ack_id: &str, now: Instant) {
    b.modify_ack_deadline(SUB, &[ack_id.to_string()], 0, UNARY, now)
        .unwrap();
}

fn ordered(s: &mut Subscription) {
    s.enable_message_ordering = true;
}

fn seconds(s: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: s,
        nanos: 0,
    }
}

#[test]
fn a_nack_brings_back_the_message_and_the_rest_of_its_key_in_order() {
    let now = Instant::now();
    let mut b = broker(ordered);
    for d in ["1", "2", "3"] {
        publish(&mut b, "k", d, now);
    }
    publish(&mut b, "other", "x", now);
    let first = pull(&mut b, 1, now);
    assert_eq!(data(&first), vec!["1", "2", "3", "x"]);
    ack(&mut b, &first[0].1, now);
    nack(&mut b, &first[1].1, now);
    // 3's old ack id was revoked with the nack of 2.
    let stale = ack(&mut b, &first[2].1, now);
    assert_eq!(stale.invalid, vec![first[2].1.clone()]);
    let again = pull(&mut b, 1, now);
    assert_eq!(data(&again), vec!["2", "3"]);
}

#[test]
fn later_messages_acknowledged_before_an_earlier_one_fails_come_back_too() {
    // "Redelivery of a message triggers redelivery of all subsequent messages for that key,
    // even acknowledged ones" (docs/ordering): the acks may arrive before the nack (Google's
    // Python client sends a batch's acks before its nacks).
    let now = Instant::now();
    let mut b = broker(ordered);
    for i in 0..6 {
        publish(&mut b, "k", &format!("k:{i}"), now);
    }
    let first = pull(&mut b, 1, now);
    for (_, ack_id, _) in first.iter().filter(|(d, _, _)| d != "k:3") {
        assert!(ack(&mut b, ack_id, now).invalid.is_empty());
    }
    nack(&mut b, &first[3].1, now);
    assert_eq!(data(&pull(&mut b, 1, now)), vec!["k:3", "k:4", "k:5"]);
}

#[test]
fn on_exactly_once_subscriptions_an_acknowledged_message_is_never_resent() {
    let now = Instant::now();
    let mut b = broker(|s| {
        s.enable_message_ordering = true;
        s.enable_exactly_once_delivery = true;
    });
    for i in 0..3 {
        publish(&mut b, "k", &format!("k:{i}"), now);
    }
    let first = pull(&mut b, 1, now);
    ack(&mut b, &first[2].1, now);
    nack(&mut b, &first[1].1, now);
    assert_eq!(data(&pull(&mut b, 1, now)), vec!["k:1"]);
}

#[test]
fn a_key_stays_with_one_stream_while_it_has_leased_messages() {
    let now = Instant::now();
    let mut b = broker(ordered);
    publish(&mut b, "k", "k1", now);
    let a = pull(&mut b, 1, now);
    assert_eq!(data(&a), vec!["k1"]);
    publish(&mut b, "k", "k2", now);
    publish(&mut b, "j", "j1", now);
    assert_eq!(
        data(&pull(&mut b, 2, now)),
        vec!["j1"],
        "k belongs to stream 1"
    );
    assert_eq!(data(&pull(&mut b, 1, now)), vec!["k2"]);
}

#[test]
fn a_key_leased_to_a_unary_pull_is_held_until_that_pull_settles_it() {
    let now = Instant::now();
    let mut b = broker(ordered);
    for d in ["d1", "d2", "d3"] {
        publish(&mut b, "d", d, now);
    }
    publish(&mut b, "e", "e1", now);
    let p1 = b.pull_request(SUB, 1, UNARY, now).unwrap();
    let got = b
        .pull(SUB, Consumer::Pull(p1), UNARY, 1, u64::MAX, LEASE, now)
        .unwrap();
    assert_eq!(got.len(), 1);
    let p2 = b.pull_request(SUB, 10, UNARY, now).unwrap();
    assert_eq!(
        data(&pull_as(&mut b, SUB, Consumer::Pull(p2), now)),
        vec!["e1"],
        "d is held while d1 is outstanding"
    );
    ack(&mut b, &got[0].ack_id, now);
    let p3 = b.pull_request(SUB, 10, UNARY, now).unwrap();
    assert_eq!(
        data(&pull_as(&mut b, SUB, Consumer::Pull(p3), now)),
        vec!["d2", "d3"],
        "one pull may take several of a key at once"
    );
}

#[test]
fn the_retry_policy_delays_redelivery_from_the_first_nack() {
    let now = Instant::now();
    let mut b = broker(|s| {
        s.retry_policy = Some(proto::RetryPolicy {
            minimum_backoff: Some(seconds(1)),
            maximum_backoff: Some(seconds(3)),
        })
    });
    publish(&mut b, "", "m", now);
    let mut t = now;
    for wait in [1, 2, 3, 3] {
        let got = pull(&mut b, 1, t);
        assert_eq!(data(&got), vec!["m"]);
        nack(&mut b, &got[0].1, t);
        let just_before = t + Duration::from_secs(wait) - Duration::from_millis(1);
        assert!(
            pull(&mut b, 1, just_before).is_empty(),
            "redelivered before {wait}s"
        );
        t += Duration::from_secs(wait);
    }
    assert_eq!(data(&pull(&mut b, 1, t)), vec!["m"]);
}

#[test]
fn without_a_retry_policy_redelivery_is_immediate() {
    let now = Instant::now();
    let mut b = broker(|_| {});
    publish(&mut b, "", "m", now);
    let got = pull(&mut b, 1, now);
    nack(&mut b, &got[0].1, now);
    assert_eq!(data(&pull(&mut b, 1, now)), vec!["m"]);
}

#[test]
fn an_expired_deadline_counts_as_a_failed_attempt() {
    let now = Instant::now();
    let mut b = broker(|s| {
        s.dead_letter_policy = Some(proto::DeadLetterPolicy {
            dead_letter_topic: DLQ.into(),
            max_delivery_attempts: 5,
        })
    });
    publish(&mut b, "", "m", now);
    let first = pull(&mut b, 1, now);
    assert_eq!(first[0].2, 1);
    assert!(pull(&mut b, 1, now + LEASE - Duration::from_millis(1)).is_empty());
    let later = now + LEASE;
    b.tick(later);
    let second = pull(&mut b, 1, later);
    assert_eq!((second[0].0.as_str(), second[0].2), ("m", 2));
    let expired = ack(&mut b, &first[0].1, later);
    assert_eq!(
        expired.invalid.len(),
        1,
        "the first ack id expired with its lease"
    );
}

#[test]
fn a_deadline_extension_keeps_the_lease_from_either_path() {
    let now = Instant::now();
    let mut b = broker(|_| {});
    publish(&mut b, "", "m", now);
    let got = pull(&mut b, 1, now);
    // Extended on the stream, then again as a unary call.
    b.modify_ack_deadline(SUB, &[got[0].1.clone()], 30, STREAM, now)
        .unwrap();
    let t = now + Duration::from_secs(25);
    b.modify_ack_deadline(SUB, &[got[0].1.clone()], 30, UNARY, t)
        .unwrap();
    b.tick(t + Duration::from_secs(29));
    assert!(pull(&mut b, 2, t + Duration::from_secs(29)).is_empty());
    assert!(
        ack(&mut b, &got[0].1, t + Duration::from_secs(29))
            .invalid
            .is_empty()
    );
}

#[test]
fn nacks_count_as_attempts_and_the_last_dead_letters_an_unordered_message() {
    let now = Instant::now();
    let mut b = broker(|s| {
        s.dead_letter_policy = Some(proto::DeadLetterPolicy {
            dead_letter_topic: DLQ.into(),
            max_delivery_attempts: 5,
        })
    });
    publish(&mut b, "", "m", now);
    for attempt in 1..=5 {
        let got = pull(&mut b, 1, now);
        assert_eq!(got[0].2, attempt);
        // The nacks alternate between the stream and unary calls: both count.
        let via = if attempt % 2 == 0 { STREAM } else { UNARY };
        b.modify_ack_deadline(SUB, &[got[0].1.clone()], 0, via, now)
            .unwrap();
    }
    assert!(pull(&mut b, 1, now).is_empty());
    let dead = pull_as(
        &mut b,
        "projects/p/subscriptions/dlq-inspect",
        Consumer::Stream(9),
        now,
    );
    assert_eq!(data(&dead), vec!["m"]);
}

#[test]
fn an_ordered_message_is_dead_lettered_after_its_last_attempt_and_the_key_goes_on() {
    let now = Instant::now();
    let mut b = broker(|s| {
        s.enable_message_ordering = true;
        s.dead_letter_policy = Some(proto::DeadLetterPolicy {
            dead_letter_topic: DLQ.into(),
            max_delivery_attempts: 5,
        });
    });
    publish(&mut b, "k", "poison", now);
    publish(&mut b, "k", "next", now);
    for attempt in 1..=5 {
        let got = pull(&mut b, 1, now);
        assert_eq!(data(&got), vec!["poison", "next"]);
        assert_eq!(got[0].2, attempt);
        nack(&mut b, &got[0].1, now);
    }
    assert_eq!(data(&pull(&mut b, 1, now)), vec!["next"]);
    let dead = b
        .pull(
            "projects/p/subscriptions/dlq-inspect",
            Consumer::Stream(9),
            STREAM,
            10,
            u64::MAX,
            LEASE,
            now,
        )
        .unwrap();
    assert_eq!(dead.len(), 1);
    let m = dead[0].message.clone().unwrap_or_default();
    assert_eq!(&m.data[..], b"poison");
    assert_eq!(m.ordering_key, "k");
    assert_eq!(m.attributes[DEAD_LETTER_DELIVERY_COUNT], "5");
    assert_eq!(m.attributes[DEAD_LETTER_SUBSCRIPTION], "sub");
    assert_eq!(m.attributes[DEAD_LETTER_SUBSCRIPTION_PROJECT], "p");
}

#[test]
fn filtered_out_messages_are_never_delivered_nor_counted() {
    let now = Instant::now();
    let mut b = broker(|s| s.filter = "attributes:keep".into());
    b.publish(
        TOPIC,
        vec![
            PubsubMessage {
                data: b"drop".to_vec().into(),
                ..Default::default()
            },
            PubsubMessage {
                data: b"keep".to_vec().into(),
                attributes: [("keep".to_string(), "1".to_string())].into(),
                ..Default::default()
            },
        ],
        UNARY,
        now,
    )
    .unwrap();
    assert_eq!(data(&pull(&mut b, 1, now)), vec!["keep"]);
}

#[test]
fn flow_control_counts_what_a_stream_holds() {
    let now = Instant::now();
    let mut b = broker(|_| {});
    for d in ["1", "2", "3"] {
        publish(&mut b, "", d, now);
    }
    let got = b
        .pull(SUB, Consumer::Stream(1), STREAM, 2, u64::MAX, LEASE, now)
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(b.subscription(SUB).unwrap().outstanding(1).messages, 2);
    ack(&mut b, &got[0].ack_id, now);
    assert_eq!(b.subscription(SUB).unwrap().outstanding(1).messages, 1);
}

#[test]
fn ack_ids_are_checked_against_the_subscription_that_issued_them() {
    let now = Instant::now();
    let mut b = broker(|_| {});
    publish(&mut b, "", "m", now);
    let got = pull(&mut b, 1, now);
    let e = b
        .acknowledge(SUB, &["garbage".into()], UNARY, now)
        .unwrap_err();
    assert_eq!(e.code, tonic::Code::InvalidArgument);
    // An id the DLQ-inspecting subscription issued, presented to SUB.
    b.publish(
        DLQ,
        vec![PubsubMessage {
            data: b"d".to_vec().into(),
            ..Default::default()
        }],
        UNARY,
        now,
    )
    .unwrap();
    let foreign = pull_as(
        &mut b,
        "projects/p/subscriptions/dlq-inspect",
        Consumer::Stream(2),
        now,
    );
    let e = b
        .modify_ack_deadline(SUB, &[foreign[0].1.clone()], 0, UNARY, now)
        .unwrap_err();
    assert_eq!(e.code, tonic::Code::InvalidArgument);
    assert!(e.message.contains("does not belong"), "{}", e.message);
    // A refused request changes nothing, even for its valid ids.
    assert!(
        b.acknowledge(SUB, &[got[0].1.clone(), "garbage".into()], UNARY, now)
            .is_err()
    );
    assert!(
        ack(&mut b, &got[0].1, now).invalid.is_empty(),
        "still leased"
    );
    // On a stream, bad ids are just invalid.
    let outcome = b
        .acknowledge(SUB, &["garbage".into()], STREAM, now)
        .unwrap();
    assert_eq!(outcome.invalid, vec!["garbage".to_string()]);
}

#[test]
fn bad_configuration_gets_the_real_errors() {
    let mut b = broker(|_| {});
    let mut s = Subscription {
        name: "projects/p/subscriptions/sub2".into(),
        topic: TOPIC.into(),
        ack_deadline_seconds: 9,
        ..Default::default()
    };
    assert_eq!(
        b.create_subscription(s.clone()).unwrap_err().code,
        tonic::Code::InvalidArgument
    );
    s.ack_deadline_seconds = 0;
    s.topic = "projects/p/topics/none".into();
    assert_eq!(
        b.create_subscription(s.clone()).unwrap_err().code,
        tonic::Code::NotFound
    );
    s.topic = TOPIC.into();
    s.filter = "attributes:".into();
    let e = b.create_subscription(s.clone()).unwrap_err();
    assert_eq!(e.code, tonic::Code::InvalidArgument);
    assert!(e.message.contains("position 11"), "{}", e.message);
    assert!(
        std::error::Error::source(&e).is_some(),
        "the parser's error is kept"
    );
    s.filter.clear();
    s.dead_letter_policy = Some(proto::DeadLetterPolicy {
        dead_letter_topic: DLQ.into(),
        max_delivery_attempts: 101,
    });
    assert_eq!(
        b.create_subscription(s.clone()).unwrap_err().code,
        tonic::Code::InvalidArgument
    );
    // The dead-letter topic must exist, at creation and at an update.
    s.dead_letter_policy = Some(proto::DeadLetterPolicy {
        dead_letter_topic: "projects/p/topics/no-such-dlq".into(),
        max_delivery_attempts: 5,
    });
    let e = b.create_subscription(s.clone()).unwrap_err();
    assert_eq!(e.code, tonic::Code::NotFound);
    assert!(e.message.contains("no-such-dlq"), "{}", e.message);
    let update = Subscription {
        name: SUB.into(),
        dead_letter_policy: s.dead_letter_policy.clone(),
        ..Default::default()
    };
    assert_eq!(
        b.update_subscription(update, &["dead_letter_policy".into()])
            .unwrap_err()
            .code,
        tonic::Code::NotFound
    );
    assert!(
        b.get_subscription(SUB)
            .unwrap()
            .dead_letter_policy
            .is_none()
    );
    s.dead_letter_policy = None;
    assert_eq!(
        b.create_subscription(s.clone())
            .unwrap()
            .ack_deadline_seconds,
        10
    );
    assert_eq!(
        b.create_subscription(s).unwrap_err().code,
        tonic::Code::AlreadyExists
    );
    assert_eq!(
        b.create_topic(Topic {
            name: "projects/p/topics/ab".into(),
            ..Default::default()
        })
        .unwrap_err()
        .code,
        tonic::Code::InvalidArgument,
        "ids need 3+ characters"
    );
}

#[test]
fn defaults_are_reported_as_the_real_service_reports_them() {
    let b = broker(|_| {});
    let s = b.get_subscription(SUB).unwrap();
    assert_eq!(s.state, proto::subscription::State::Active as i32);
    assert_eq!(s.ack_deadline_seconds, 10);
    assert_eq!(s.message_retention_duration, Some(seconds(7 * 24 * 3600)));
    assert_eq!(
        s.expiration_policy.and_then(|p| p.ttl),
        Some(seconds(31 * 24 * 3600))
    );
    assert_eq!(s.push_config, Some(proto::PushConfig::default()));
    assert_eq!(
        b.get_topic(TOPIC).unwrap().state,
        proto::topic::State::Active as i32
    );
}

#[test]
fn retention_outside_ten_minutes_to_thirty_one_days_is_refused() {
    let now = Instant::now();
    let mut b = broker(|_| {});
    for (secs, ok) in [
        (599, false),
        (600, true),
        (2_678_400, true),
        (2_678_401, false),
    ] {
        let topic = b.create_topic(Topic {
            name: format!("projects/p/topics/ret-{secs}"),
            message_retention_duration: Some(seconds(secs)),
            ..Default::default()
        });
        assert_eq!(topic.is_ok(), ok, "topic retention {secs}s");
        let sub = b.create_subscription(Subscription {
            name: format!("projects/p/subscriptions/ret-{secs}"),
            topic: TOPIC.into(),
            message_retention_duration: Some(seconds(secs)),
            ..Default::default()
        });
        assert_eq!(sub.is_ok(), ok, "subscription retention {secs}s");
    }
    let update = Subscription {
        name: SUB.into(),
        message_retention_duration: Some(seconds(1)),
        ..Default::default()
    };
    assert!(
        b.update_subscription(update, &["message_retention_duration".into()])
            .is_err()
    );
    let update = Topic {
        name: TOPIC.into(),
        message_retention_duration: Some(seconds(3_000_000)),
        ..Default::default()
    };
    assert!(
        b.update_topic(update, &["message_retention_duration".into()], now)
            .is_err()
    );
}

#[test]
fn a_detached_subscription_gets_nothing_and_its_topic_forgets_it() {
    let now = Instant::now();
    let mut b = broker(|_| {});
    publish(&mut b, "", "before", now);
    let got = pull(&mut b, 1, now);
    b.detach_subscription(SUB).unwrap();
    assert!(b.get_subscription(SUB).unwrap().detached);
    assert!(
        !b.topic_subscriptions(TOPIC)
            .unwrap()
            .contains(&SUB.to_string())
    );
    assert!(b.list_subscriptions("p").iter().any(|s| s.name == SUB));
    publish(&mut b, "", "after", now);
    let e = b
        .pull(SUB, Consumer::Stream(1), STREAM, 10, u64::MAX, LEASE, now)
        .unwrap_err();
    assert_eq!(e.code, tonic::Code::FailedPrecondition);
    assert_eq!(
        b.pull_request(SUB, 1, UNARY, now).unwrap_err().code,
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        b.open_stream(SUB, now).unwrap_err().code,
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        ack(&mut b, &got[0].1, now).invalid.len(),
        1,
        "its leases died"
    );
    // Created detached: never attached at all.
    b.create_subscription(Subscription {
        name: "projects/p/subscriptions/born-detached".into(),
        topic: TOPIC.into(),
        detached: true,
        ..Default::default()
    })
    .unwrap();
    assert!(
        !b.topic_subscriptions(TOPIC)
            .unwrap()
            .contains(&"projects/p/subscriptions/born-detached".to_string())
    );
}

fn publish_time(b: &mut Broker, now: Instant) -> prost_types::Timestamp {
    timestamp(b.clock.wall(now))
}

#[test]
fn seek_to_a_time_replays_retained_acknowledged_messages_and_purges_older_ones() {
    let t0 = Instant::now();
    let mut b = broker(|s| s.retain_acked_messages = true);
    publish(&mut b, "", "old", t0);
    let t1 = t0 + Duration::from_secs(5);
    publish(&mut b, "", "new", t1);
    for (_, ack_id, _) in pull(&mut b, 1, t1) {
        ack(&mut b, &ack_id, t1);
    }
    assert!(pull(&mut b, 1, t1).is_empty());
    let t2 = t0 + Duration::from_secs(6);
    let between = publish_time(&mut b, t0 + Duration::from_secs(3));
    b.seek(
        SUB,
        Some(proto::seek_request::Target::Time(between)),
        UNARY,
        t2,
    )
    .unwrap();
    assert_eq!(data(&pull(&mut b, 1, t2)), vec!["new"]);
    // Seeking to the future acknowledges everything.
    let future = publish_time(&mut b, t2 + Duration::from_secs(3600));
    b.seek(
        SUB,
        Some(proto::seek_request::Target::Time(future)),
        UNARY,
        t2,
    )
    .unwrap();
    assert!(pull(&mut b, 2, t2).is_empty());
    // And back to the start brings both.
    let start = publish_time(&mut b, t0);
    b.seek(
        SUB,
        Some(proto::seek_request::Target::Time(start)),
        UNARY,
        t2,
    )
    .unwrap();
    assert_eq!(data(&pull(&mut b, 3, t2)), vec!["old", "new"]);
}

#[test]
fn without_retention_a_seek_cannot_bring_back_acknowledged_messages() {
    let t0 = Instant::now();
    let mut b = broker(|_| {});
    publish(&mut b, "", "m", t0);
    let got = pull(&mut b, 1, t0);
    ack(&mut b, &got[0].1, t0);
    let start = publish_time(&mut b, t0);
    b.seek(
        SUB,
        Some(proto::seek_request::Target::Time(start)),
        UNARY,
        t0,
    )
    .unwrap();
    assert!(pull(&mut b, 1, t0).is_empty());
}

#[test]
fn topic_retention_lets_a_new_subscription_seek_before_it_existed() {
    let t0 = Instant::now();
    let mut b = broker(|_| {});
    b.create_topic(Topic {
        name: "projects/p/topics/kept".into(),
        message_retention_duration: Some(seconds(3600)),
        ..Default::default()
    })
    .unwrap();
    b.publish(
        "projects/p/topics/kept",
        vec![PubsubMessage {
            data: b"early".to_vec().into(),
            ..Default::default()
        }],
        UNARY,
        t0,
    )
    .unwrap();
    let late = "projects/p/subscriptions/late";
    b.create_subscription(Subscription {
        name: late.into(),
        topic: "projects/p/topics/kept".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        b.get_subscription(late)
            .unwrap()
            .topic_message_retention_duration,
        Some(seconds(3600))
    );
    let t1 = t0 + Duration::from_secs(60);
    assert!(pull_as(&mut b, late, Consumer::Stream(1), t1).is_empty());
    let start = publish_time(&mut b, t0);
    b.seek(
        late,
        Some(proto::seek_request::Target::Time(start)),
        UNARY,
        t1,
    )
    .unwrap();
    assert_eq!(
        data(&pull_as(&mut b, late, Consumer::Stream(1), t1)),
        vec!["early"]
    );
}

#[test]
fn a_snapshot_restores_its_unacknowledged_messages_and_those_published_after_it() {
    let now = Instant::now();
    let mut b = broker(|_| {});
    let other = "projects/p/subscriptions/other";
    b.create_subscription(Subscription {
        name: other.into(),
        topic: TOPIC.into(),
        ..Default::default()
    })
    .unwrap();
    publish(&mut b, "", "one", now);
    publish(&mut b, "", "two", now);
    let got = pull(&mut b, 1, now);
    ack(&mut b, &got[0].1, now);
    let snap = b
        .create_snapshot("projects/p/snapshots/snap".into(), SUB, HashMap::new(), now)
        .unwrap();
    assert_eq!(snap.topic, TOPIC);
    assert!(snap.expire_time.is_some());
    ack(&mut b, &got[1].1, now);
    publish(&mut b, "", "three", now);
    for (_, ack_id, _) in pull(&mut b, 1, now) {
        ack(&mut b, &ack_id, now);
    }
    b.seek(
        SUB,
        Some(proto::seek_request::Target::Snapshot(
            "projects/p/snapshots/snap".into(),
        )),
        UNARY,
        now,
    )
    .unwrap();
    assert_eq!(data(&pull(&mut b, 1, now)), vec!["two", "three"]);
    // Another subscription of the same topic takes the snapshot's state too.
    for (_, ack_id, _) in pull_as(&mut b, other, Consumer::Stream(2), now) {
        b.acknowledge(other, &[ack_id], UNARY, now).unwrap();
    }
    b.seek(
        other,
        Some(proto::seek_request::Target::Snapshot(
            "projects/p/snapshots/snap".into(),
        )),
        UNARY,
        now,
    )
    .unwrap();
    assert_eq!(
        data(&pull_as(&mut b, other, Consumer::Stream(2), now)),
        vec!["two", "three"]
    );
    assert_eq!(
        b.topic_snapshots(TOPIC).unwrap(),
        vec!["projects/p/snapshots/snap".to_string()]
    );
    assert_eq!(
        b.create_snapshot("projects/p/snapshots/snap".into(), SUB, HashMap::new(), now)
            .unwrap_err()
            .code,
        tonic::Code::AlreadyExists
    );
}

#[test]
fn a_snapshot_of_another_topic_or_a_re_created_one_cannot_be_sought() {
    let now = Instant::now();
    let mut b = broker(|_| {});
    b.create_snapshot("projects/p/snapshots/snap".into(), SUB, HashMap::new(), now)
        .unwrap();
    let target = || {
        Some(proto::seek_request::Target::Snapshot(
            "projects/p/snapshots/snap".into(),
        ))
    };
    let e = b
        .seek("projects/p/subscriptions/dlq-inspect", target(), UNARY, now)
        .unwrap_err();
    assert_eq!(e.code, tonic::Code::FailedPrecondition);
    b.delete_topic(TOPIC).unwrap();
    assert_eq!(b.get_subscription(SUB).unwrap().topic, DELETED_TOPIC);
    assert_eq!(
        b.seek(SUB, target(), UNARY, now).unwrap_err().code,
        tonic::Code::FailedPrecondition
    );
    b.create_topic(Topic {
        name: TOPIC.into(),
        ..Default::default()
    })
    .unwrap();
    b.create_subscription(Subscription {
        name: "projects/p/subscriptions/reborn".into(),
        topic: TOPIC.into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        b.seek("projects/p/subscriptions/reborn", target(), UNARY, now)
            .unwrap_err()
            .code,
        tonic::Code::FailedPrecondition,
        "a topic re-created under the same name is another topic"
    );
}

#[test]
fn snapshots_are_listed_updated_expired_and_deleted() {
    let now = Instant::now();
    let mut b = broker(|_| {});
    let name = "projects/p/snapshots/snap";
    b.create_snapshot(name.into(), SUB, HashMap::new(), now)
        .unwrap();
    assert_eq!(b.list_snapshots("p").len(), 1);
    assert!(b.list_snapshots("q").is_empty());
    let update = Snapshot {
        name: name.into(),
        labels: [("a".to_string(), "b".to_string())].into(),
        ..Default::default()
    };
    let updated = b.update_snapshot(update, &["labels".into()]).unwrap();
    assert_eq!(updated.labels["a"], "b");
    assert_eq!(
        b.get_snapshot("projects/p/snapshots/none")
            .unwrap_err()
            .code,
        tonic::Code::NotFound
    );
    b.tick(now + snapshot::MAX_LIFETIME);
    assert_eq!(
        b.get_snapshot(name).unwrap_err().code,
        tonic::Code::NotFound
    );
    assert!(b.topic_snapshots(TOPIC).unwrap().is_empty());
    b.create_snapshot(name.into(), SUB, HashMap::new(), now)
        .unwrap();
    b.delete_snapshot(name).unwrap();
    assert_eq!(
        b.delete_snapshot(name).unwrap_err().code,
        tonic::Code::NotFound
    );
}

fn with_labels(labels: &[(&str, &str)]) -> Broker {
    let labels: HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    broker(move |s| s.labels = labels)
}

#[test]
fn a_lost_ack_brings_the_message_back_after_its_deadline() {
    let now = Instant::now();
    let mut b = with_labels(&[("rig-fault-lost-ack-permille", "1000")]);
    publish(&mut b, "", "m", now);
    let got = pull(&mut b, 1, now);
    let outcome = ack(&mut b, &got[0].1, now);
    assert!(
        outcome.invalid.is_empty(),
        "the subscriber sees a successful ack"
    );
    assert!(pull(&mut b, 1, now + LEASE - Duration::from_millis(1)).is_empty());
    b.tick(now + LEASE);
    assert_eq!(data(&pull(&mut b, 1, now + LEASE)), vec!["m"]);
}

#[test]
fn a_lost_ack_with_a_short_lease_comes_back_when_that_lease_ends() {
    let now = Instant::now();
    let mut b = with_labels(&[
        ("rig-fault-lost-ack-permille", "1000"),
        ("rig-fault-lost-ack-lease-ms", "200"),
    ]);
    publish(&mut b, "", "m", now);
    let got = pull(&mut b, 1, now);
    let acked = now + Duration::from_millis(50);
    ack(&mut b, &got[0].1, acked);
    b.tick(acked + Duration::from_millis(199));
    assert!(pull(&mut b, 1, acked + Duration::from_millis(199)).is_empty());
    b.tick(acked + Duration::from_millis(200));
    assert_eq!(
        data(&pull(&mut b, 1, acked + Duration::from_millis(200))),
        vec!["m"]
    );
}

#[test]
fn a_duplicate_is_delivered_again_after_its_ack() {
    let now = Instant::now();
    let mut b = with_labels(&[("rig-fault-duplicate-permille", "1000")]);
    publish(&mut b, "", "m", now);
    let got = pull(&mut b, 1, now);
    ack(&mut b, &got[0].1, now);
    assert_eq!(data(&pull(&mut b, 1, now)), vec!["m"]);
}

#[test]
fn a_delayed_message_is_not_deliverable_before_its_delay() {
    let now = Instant::now();
    let mut b = with_labels(&[("rig-fault-delay-ms", "250")]);
    publish(&mut b, "", "m", now);
    assert!(pull(&mut b, 1, now + Duration::from_millis(249)).is_empty());
    assert_eq!(
        data(&pull(&mut b, 1, now + Duration::from_millis(250))),
        vec!["m"]
    );
}

#[test]
fn fault_labels_changed_on_a_live_subscription_take_effect_at_once() {
    let now = Instant::now();
    let mut b = broker(|_| {});
    let label = |on: bool| Subscription {
        name: SUB.into(),
        labels: if on {
            [(
                "rig-fault-duplicate-permille".to_string(),
                "1000".to_string(),
            )]
            .into()
        } else {
            HashMap::new()
        },
        ..Default::default()
    };
    publish(&mut b, "", "m", now);
    let leased = pull(&mut b, 1, now);
    b.update_subscription(label(true), &["labels".into()])
        .unwrap();
    ack(&mut b, &leased[0].1, now);
    let again = pull(&mut b, 1, now);
    assert_eq!(
        data(&again),
        vec!["m"],
        "the message leased before the update is duplicated"
    );
    b.update_subscription(label(false), &["labels".into()])
        .unwrap();
    ack(&mut b, &again[0].1, now);
    assert!(
        pull(&mut b, 1, now).is_empty(),
        "no more faults once the labels are gone"
    );
}

#[test]
fn the_same_seed_gives_the_same_faults() {
    let run = |seed: &str| {
        let now = Instant::now();
        let mut b = with_labels(&[
            ("rig-fault-seed", seed),
            ("rig-fault-duplicate-permille", "500"),
        ]);
        let mut redelivered = Vec::new();
        for i in 0..40 {
            publish(&mut b, "", &i.to_string(), now);
            let got = pull(&mut b, 1, now);
            ack(&mut b, &got[0].1, now);
            let mut again = pull(&mut b, 1, now);
            redelivered.push(!again.is_empty());
            // Ack duplicates (which may duplicate again) until none is left.
            while !again.is_empty() {
                for (_, ack_id, _) in again {
                    ack(&mut b, &ack_id, now);
                }
                again = pull(&mut b, 1, now);
            }
        }
        redelivered
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
    assert!(run("7").iter().any(|d| *d) && run("7").iter().any(|d| !*d));
}

#[test]
fn unknown_fault_labels_are_refused() {
    let mut b = broker(|_| {});
    let e = b
        .create_subscription(Subscription {
            name: "projects/p/subscriptions/faulty".into(),
            topic: TOPIC.into(),
            labels: [("rig-fault-typo".to_string(), "1".to_string())].into(),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.code, tonic::Code::InvalidArgument);
}

fn kinds(b: &Broker) -> Vec<String> {
    b.history_page("p", 0, 1000)
        .records
        .iter()
        .map(|r| {
            serde_json::to_value(&r.event).unwrap()["event"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn the_history_records_what_happened_with_its_transport() {
    let now = Instant::now();
    let mut b = broker(|s| {
        s.enable_message_ordering = true;
        s.dead_letter_policy = Some(proto::DeadLetterPolicy {
            dead_letter_topic: DLQ.into(),
            max_delivery_attempts: 5,
        });
    });
    publish(&mut b, "k", "before recording", now);
    assert!(kinds(&b).is_empty(), "nothing is recorded before a start");
    let got = pull(&mut b, 1, now);
    ack(&mut b, &got[0].1, now);
    assert_eq!(b.history_start("p"), 0);
    let stream = b.open_stream(SUB, now).unwrap();
    publish(&mut b, "k", "a", now);
    publish(&mut b, "k", "b", now);
    let got = pull(&mut b, stream, now);
    b.modify_ack_deadline(SUB, &[got[0].1.clone()], 30, STREAM, now)
        .unwrap();
    nack(&mut b, &got[0].1, now);
    let got = pull(&mut b, stream, now);
    ack(&mut b, &got[0].1, now);
    ack(&mut b, &got[0].1, now);
    let later = now + LEASE;
    b.tick(later);
    b.close_stream(SUB, stream, "the client closed the stream", later);
    let pull_id = b.pull_request(SUB, 5, Transport::Rest, later).unwrap();
    assert!(pull_id > 0);
    assert_eq!(
        kinds(&b),
        vec![
            "stream-opened",
            "publish",
            "publish",
            "deliver",
            "deliver",
            "extend",
            "nack",
            "revoked",
            "deliver",
            "deliver",
            "ack",
            "stale",
            "lease-expired",
            "stream-closed",
            "pull-request",
        ]
    );
    let page = b.history_page("p", 0, 1000);
    let transports: Vec<Transport> = page.records.iter().map(|r| r.transport).collect();
    assert_eq!(transports[3], STREAM, "deliveries on the stream");
    assert_eq!(transports[6], UNARY, "the nack came as a unary call");
    assert_eq!(transports[14], Transport::Rest);
    let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=15).collect::<Vec<_>>());
    match &page.records[3].event {
        Event::Deliver {
            consumer,
            ordering_key,
            ..
        } => {
            assert_eq!(*consumer, Consumer::Stream(stream));
            assert_eq!(ordering_key, "k");
        }
        other => panic!("expected a delivery, got {other:?}"),
    }
    b.history_stop("p");
    publish(&mut b, "k", "after", later);
    assert_eq!(b.history_page("p", 0, 1000).records.len(), 15);
}

#[test]
fn the_history_records_dead_letters_and_faults() {
    let now = Instant::now();
    let mut b = broker(|s| {
        s.dead_letter_policy = Some(proto::DeadLetterPolicy {
            dead_letter_topic: DLQ.into(),
            max_delivery_attempts: 5,
        });
        s.labels = [("rig-fault-delay-ms".to_string(), "10".to_string())].into();
    });
    b.history_start("p");
    publish(&mut b, "", "m", now);
    let mut t = now;
    for _ in 0..5 {
        t += Duration::from_millis(10);
        let got = pull(&mut b, 1, t);
        nack(&mut b, &got[0].1, t);
    }
    let records = b.history_page("p", 0, 1000).records;
    let fault = records
        .iter()
        .find_map(|r| match &r.event {
            Event::Fault {
                fault, delay_ms, ..
            } => Some((*fault, *delay_ms)),
            _ => None,
        })
        .expect("the delay is recorded");
    assert_eq!(fault, (FaultKind::Delay, Some(10)));
    let dead = records
        .iter()
        .find_map(|r| match &r.event {
            Event::DeadLetter {
                attempts,
                dead_letter_topic,
                ..
            } => Some((*attempts, dead_letter_topic.clone())),
            _ => None,
        })
        .expect("the dead letter is recorded");
    assert_eq!(dead, (5, DLQ.to_string()));
    // The forwarded copy is a publish on the dead-letter topic, after the dead letter.
    let last = records.last().expect("records");
    assert!(
        matches!(&last.event, Event::Publish { topic, .. } if topic == DLQ),
        "{last:?}"
    );
}

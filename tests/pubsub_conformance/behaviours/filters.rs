//! Subscription filters: the documented grammar, applied; non-matching messages acknowledged by
//! the service and never counted as delivery attempts; invalid filters refused at creation.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::model;
use proptest::prelude::*;

use super::{Behaviour, FILTERING, property};
use crate::scope::{Decision, Findings, Scope, Verdict, code_of, expect_code, message};

pub fn behaviours() -> Vec<Behaviour> {
    vec![
        Behaviour {
            name: "filter::delivers_exactly_the_matching_messages",
            expectation: "A subscription with a filter delivers exactly the messages whose attributes match it: attributes:k, attributes.k = \"v\", !=, hasPrefix, NOT, AND, OR and parentheses (property: random filters and attribute sets, judged by a reference evaluator)",
            source: FILTERING,
            check: delivers_exactly_the_matching_messages,
        },
        Behaviour {
            name: "filter::non_matching_never_delivered_nor_counted",
            expectation: "Messages that don't match the filter are acknowledged automatically: never delivered, never counted as delivery attempts, never dead-lettered",
            source: FILTERING,
            check: non_matching_never_delivered_nor_counted,
        },
        Behaviour {
            name: "filter::invalid_filter_rejected_at_creation",
            expectation: "Creating a subscription with a filter that is not valid filter syntax, or longer than 256 bytes, fails with INVALID_ARGUMENT",
            source: FILTERING,
            check: invalid_filter_rejected_at_creation,
        },
    ]
}

/// A filter expression, rendered to the documented syntax and evaluated by the rules the
/// documentation gives (the reference the implementations are judged by).
#[derive(Debug, Clone)]
enum Filter {
    Has(&'static str),
    Equals(&'static str, &'static str),
    /// Only on `a`, which every generated message carries: the documentation does not say how
    /// `!=` treats a missing attribute.
    NotEquals(&'static str),
    HasPrefix(&'static str, &'static str),
    Not(Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
}

const KEYS: [&str; 3] = ["a", "b", "c"];
const VALUES: [&str; 3] = ["x", "xy", "y"];

impl Filter {
    fn render(&self) -> String {
        match self {
            Filter::Has(k) => format!("attributes:{k}"),
            Filter::Equals(k, v) => format!("attributes.{k} = \"{v}\""),
            Filter::NotEquals(v) => format!("attributes.a != \"{v}\""),
            Filter::HasPrefix(k, p) => format!("hasPrefix(attributes.{k}, \"{p}\")"),
            Filter::Not(f) => format!("NOT ({})", f.render()),
            // Parentheses always: the grammar does not let AND and OR mix without them.
            Filter::And(l, r) => format!("({} AND {})", l.render(), r.render()),
            Filter::Or(l, r) => format!("({} OR {})", l.render(), r.render()),
        }
    }

    fn matches(&self, attributes: &HashMap<String, String>) -> bool {
        match self {
            Filter::Has(k) => attributes.contains_key(*k),
            Filter::Equals(k, v) => attributes.get(*k).is_some_and(|a| a == v),
            Filter::NotEquals(v) => attributes.get("a").is_none_or(|a| a != v),
            Filter::HasPrefix(k, p) => attributes.get(*k).is_some_and(|a| a.starts_with(p)),
            Filter::Not(f) => !f.matches(attributes),
            Filter::And(l, r) => l.matches(attributes) && r.matches(attributes),
            Filter::Or(l, r) => l.matches(attributes) || r.matches(attributes),
        }
    }
}

fn filter_strategy() -> impl Strategy<Value = Filter> {
    let key = prop::sample::select(KEYS.to_vec());
    let value = prop::sample::select(VALUES.to_vec());
    let atom = prop_oneof![
        key.clone().prop_map(Filter::Has),
        (key.clone(), value.clone()).prop_map(|(k, v)| Filter::Equals(k, v)),
        value.clone().prop_map(Filter::NotEquals),
        (key, prop::sample::select(vec!["x", "y", "xy"]))
            .prop_map(|(k, p)| Filter::HasPrefix(k, p)),
    ];
    atom.prop_recursive(2, 6, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|f| Filter::Not(Box::new(f))),
            (inner.clone(), inner.clone()).prop_map(|(l, r)| Filter::And(Box::new(l), Box::new(r))),
            (inner.clone(), inner).prop_map(|(l, r)| Filter::Or(Box::new(l), Box::new(r))),
        ]
    })
    .prop_filter("a filter is at most 256 bytes", |f| f.render().len() <= 256)
}

fn attributes_strategy() -> impl Strategy<Value = HashMap<String, String>> {
    let value = || prop::sample::select(VALUES.to_vec());
    (
        value(),
        prop::option::of(value()),
        prop::option::of(value()),
    )
        .prop_map(|(a, b, c)| {
            let mut attributes = HashMap::from([("a".to_string(), a.to_string())]);
            if let Some(b) = b {
                attributes.insert("b".into(), b.to_string());
            }
            if let Some(c) = c {
                attributes.insert("c".into(), c.to_string());
            }
            attributes
        })
}

fn delivers_exactly_the_matching_messages(scope: &Scope) -> Verdict {
    let strategy = (
        prop::collection::vec(filter_strategy(), 3),
        prop::collection::vec(attributes_strategy(), 10),
    );
    let mut case = 0;
    property(strategy, 2, |(filters, messages)| {
        case += 1;
        scope.block_on(async {
            let topic_name = format!("filter-{case}");
            let topic = scope.create_topic(&topic_name).await?;
            let mut subscriptions = Vec::new();
            for (i, filter) in filters.iter().enumerate() {
                let sub = scope
                    .create_subscription(
                        scope
                            .subscription(&format!("{topic_name}-{i}"), &topic_name)
                            .set_filter(filter.render()),
                    )
                    .await?;
                subscriptions.push(sub.name);
            }
            scope
                .publish(
                    &topic,
                    messages
                        .iter()
                        .enumerate()
                        .map(|(i, a)| message(&format!("m{i}")).set_attributes(a.clone()))
                        .collect(),
                )
                .await?;
            let receiving = filters.iter().zip(&subscriptions).map(|(filter, sub)| {
                let expected: BTreeSet<String> = messages
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| filter.matches(a))
                    .map(|(i, _)| format!("m{i}"))
                    .collect();
                async move {
                    let streamed = scope
                        .stream(sub, Duration::from_secs(20), Duration::from_secs(4), |_, _| {
                            Decision::Ack
                        })
                        .await;
                    let got: BTreeSet<String> =
                        streamed.deliveries.iter().map(|d| d.data.clone()).collect();
                    (filter, expected, got, streamed.failure())
                }
            });
            let mut findings = Findings::default();
            for (filter, expected, got, failure) in futures_join_all(receiving).await {
                findings.check(expected == got, || {
                    let extra: Vec<_> = got.difference(&expected).collect();
                    let missing: Vec<_> = expected.difference(&got).collect();
                    format!(
                        "filter `{}`: delivered {} non-matching {extra:?}, missed {} matching {missing:?}",
                        filter.render(),
                        extra.len(),
                        missing.len()
                    )
                });
                if let Some(failure) = failure {
                    findings.check(false, || failure);
                }
            }
            findings.verdict().map_err(|e| {
                format!(
                    "{e} (attributes: {:?})",
                    messages
                        .iter()
                        .enumerate()
                        .map(|(i, a)| format!("m{i}={a:?}"))
                        .collect::<Vec<_>>()
                )
            })
        })
    })
}

/// Runs futures concurrently on the current task and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => outputs[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

fn non_matching_never_delivered_nor_counted(scope: &Scope) -> Verdict {
    scope.block_on(async {
        let topic = scope.create_topic("fdl").await?;
        let dlq_topic = scope.create_topic("fdl-dlq").await?;
        let dlq_sub = scope
            .create_subscription(scope.subscription("fdl-dlq", "fdl-dlq"))
            .await?;
        let sub = scope
            .create_subscription(
                scope
                    .subscription("fdl", "fdl")
                    .set_filter("attributes.kind = \"keep\"")
                    .set_dead_letter_policy(
                        model::DeadLetterPolicy::new()
                            .set_dead_letter_topic(dlq_topic)
                            .set_max_delivery_attempts(5),
                    ),
            )
            .await?;
        let mut batch: Vec<_> = (0..6)
            .map(|i| message(&format!("skip{i}")).set_attributes([("kind", "skip")]))
            .collect();
        batch.push(message("keep").set_attributes([("kind", "keep")]));
        scope.publish(&topic, batch).await?;
        let streamed = scope
            .stream(
                &sub.name,
                Duration::from_secs(20),
                Duration::from_secs(5),
                |_, _| Decision::Ack,
            )
            .await;
        let mut findings = Findings::default();
        let delivered: Vec<&str> = streamed
            .deliveries
            .iter()
            .map(|d| d.data.as_str())
            .collect();
        findings.check(delivered == ["keep"], || {
            format!("delivered {delivered:?}; expected only [\"keep\"]")
        });
        let keep_attempt = streamed
            .deliveries
            .iter()
            .find(|d| d.data == "keep")
            .and_then(|d| d.attempt);
        findings.check(keep_attempt == Some(1), || {
            format!("the matching message's delivery_attempt is {keep_attempt:?}, expected 1")
        });
        let dead = scope
            .stream(
                &dlq_sub.name,
                Duration::from_secs(4),
                Duration::from_secs(4),
                |_, _| Decision::Ack,
            )
            .await;
        findings.check(dead.deliveries.is_empty(), || {
            format!(
                "{} non-matching messages were dead-lettered",
                dead.deliveries.len()
            )
        });
        findings.verdict()
    })
}

/// Filters the documented grammar does not allow, each refused at creation.
const INVALID_FILTERS: [&str; 9] = [
    "attributes:",
    "attributes.a =",
    "attributes.a = x",
    "(attributes:a",
    "attributes:a AND",
    "attributes:a OR OR attributes:b",
    "hasPrefix(attributes.a)",
    "attributes.a > \"x\"",
    "data = \"x\"",
];

fn invalid_filter_rejected_at_creation(scope: &Scope) -> Verdict {
    scope.block_on(async {
        scope.create_topic("badfilter").await?;
        let too_long = format!("attributes:{}", "k".repeat(250));
        let mut findings = Findings::default();
        for (i, filter) in INVALID_FILTERS
            .iter()
            .map(|f| f.to_string())
            .chain([too_long])
            .enumerate()
        {
            let result = scope
                .try_create_subscription(
                    scope
                        .subscription(&format!("badfilter-{i}"), "badfilter")
                        .set_filter(filter.clone()),
                )
                .await;
            let shown: String = filter.chars().take(40).collect();
            findings.add(expect_code(
                &format!("filter `{shown}`"),
                result.map_err(|e| code_of(&e)),
                Code::InvalidArgument,
            ));
        }
        findings.verdict()
    })
}

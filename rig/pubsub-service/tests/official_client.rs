//! The service driven by Google's official Rust client (`google-cloud-pubsub`), exactly as the
//! rig uses it: admin over REST, publish and streaming pull over gRPC, one endpoint.

use std::collections::HashMap;
use std::time::Duration;

use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{self, Message};
use pubsub_service::{PubsubService, RunningService};

const PROJECT: &str = "test-project";

struct Clients {
    service: RunningService,
    topics: TopicAdmin,
    subscriptions: SubscriptionAdmin,
    subscriber: Subscriber,
}

fn anonymous() -> google_cloud_auth::credentials::Credentials {
    google_cloud_auth::credentials::anonymous::Builder::new().build()
}

fn topic(id: &str) -> String {
    format!("projects/{PROJECT}/topics/{id}")
}

fn subscription(id: &str) -> String {
    format!("projects/{PROJECT}/subscriptions/{id}")
}

async fn start() -> anyhow::Result<Clients> {
    let service = PubsubService::start("127.0.0.1:0".parse()?).await?;
    let endpoint = service.endpoint();
    Ok(Clients {
        topics: TopicAdmin::builder()
            .with_endpoint(&endpoint)
            .with_credentials(anonymous())
            .build()
            .await?,
        subscriptions: SubscriptionAdmin::builder()
            .with_endpoint(&endpoint)
            .with_credentials(anonymous())
            .build()
            .await?,
        subscriber: Subscriber::builder()
            .with_endpoint(&endpoint)
            .with_credentials(anonymous())
            .build()
            .await?,
        service,
    })
}

impl Clients {
    async fn publisher(&self, id: &str) -> anyhow::Result<Publisher> {
        Ok(Publisher::builder(topic(id))
            .with_endpoint(self.service.endpoint())
            .with_credentials(anonymous())
            .set_delay_threshold(Duration::from_millis(1))
            .build()
            .await?)
    }

    async fn create_topic(&self, id: &str) -> anyhow::Result<()> {
        self.topics
            .create_topic()
            .set_name(topic(id))
            .send()
            .await?;
        Ok(())
    }

    async fn create_subscription(
        &self,
        s: model::Subscription,
    ) -> anyhow::Result<model::Subscription> {
        Ok(self
            .subscriptions
            .create_subscription()
            .with_request(s)
            .send()
            .await?)
    }
}

fn message(data: &str, key: &str) -> Message {
    Message::new()
        .set_data(data.to_string())
        .set_ordering_key(key.to_string())
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(&m.data).into_owned()
}

fn code(e: &google_cloud_pubsub::Error) -> Option<google_cloud_gax::error::rpc::Code> {
    e.status().map(|s| s.code)
}

fn publish_code(
    e: &google_cloud_pubsub::error::PublishError,
) -> Option<google_cloud_gax::error::rpc::Code> {
    match e {
        google_cloud_pubsub::error::PublishError::Rpc(e) => code(e),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reads_back_every_field_the_terraform_sets() -> anyhow::Result<()> {
    let c = start().await?;
    c.create_topic("events.raw").await?;
    c.create_topic("events.dlq").await?;
    let want = model::Subscription::new()
        .set_name(subscription("events.raw.worker"))
        .set_topic(topic("events.raw"))
        .set_filter("NOT attributes:rig_probe")
        .set_labels([("env", "dev")])
        .set_enable_message_ordering(true)
        .set_ack_deadline_seconds(30)
        .set_retry_policy(
            model::RetryPolicy::new()
                .set_minimum_backoff(google_cloud_wkt::Duration::clamp(1, 0))
                .set_maximum_backoff(google_cloud_wkt::Duration::clamp(5, 0)),
        )
        .set_dead_letter_policy(
            model::DeadLetterPolicy::new()
                .set_dead_letter_topic(topic("events.dlq"))
                .set_max_delivery_attempts(5),
        )
        .set_expiration_policy(model::ExpirationPolicy::new());
    c.create_subscription(want.clone()).await?;
    let got = c
        .subscriptions
        .get_subscription()
        .set_subscription(subscription("events.raw.worker"))
        .send()
        .await?;
    assert_eq!(got.topic, want.topic);
    assert_eq!(got.filter, want.filter);
    assert_eq!(got.labels, want.labels);
    assert!(got.enable_message_ordering);
    assert_eq!(got.ack_deadline_seconds, 30);
    assert_eq!(got.retry_policy, want.retry_policy);
    assert_eq!(got.dead_letter_policy, want.dead_letter_policy);
    assert_eq!(
        got.expiration_policy, want.expiration_policy,
        "ttl \"\" means never expire"
    );

    let again = c
        .subscriptions
        .create_subscription()
        .with_request(want)
        .send()
        .await
        .expect_err("a second create must fail");
    assert_eq!(
        code(&again),
        Some(google_cloud_gax::error::rpc::Code::AlreadyExists)
    );
    let missing = c
        .subscriptions
        .get_subscription()
        .set_subscription(subscription("nope-nope"))
        .send()
        .await
        .expect_err("an unknown subscription");
    assert_eq!(
        code(&missing),
        Some(google_cloud_gax::error::rpc::Code::NotFound)
    );
    let listed = c
        .topics
        .list_topic_subscriptions()
        .set_topic(topic("events.raw"))
        .send()
        .await?;
    assert_eq!(
        listed.subscriptions,
        vec![subscription("events.raw.worker")]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_ordered_message_comes_back_with_the_rest_of_its_key_in_order()
-> anyhow::Result<()> {
    let c = start().await?;
    c.create_topic("orders").await?;
    c.create_subscription(
        model::Subscription::new()
            .set_name(subscription("orders.worker"))
            .set_topic(topic("orders"))
            .set_enable_message_ordering(true),
    )
    .await?;
    let publisher = c.publisher("orders").await?;
    for i in 1..=6 {
        publisher.publish(message(&i.to_string(), "k")).await?;
    }
    let mut stream = c
        .subscriber
        .subscribe(subscription("orders.worker"))
        .build();
    // Like the rig's worker: message 3 fails twice; while it is failed, later messages of
    // the key are refused too.
    let mut failures_left = 2;
    let mut blocked = false;
    let mut stored = Vec::new();
    let mut deliveries = Vec::new();
    while stored.len() < 6 {
        let (m, h) = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await?
            .expect("the stream ended")?;
        let n: u32 = text(&m).parse()?;
        deliveries.push(n);
        if blocked && n != 3 {
            h.nack();
            continue;
        }
        if n == 3 && failures_left > 0 {
            failures_left -= 1;
            blocked = true;
            h.nack();
            continue;
        }
        blocked = false;
        stored.push(n);
        h.ack();
    }
    assert_eq!(stored, vec![1, 2, 3, 4, 5, 6], "deliveries: {deliveries:?}");
    // After each nack of 3, the next delivery of the key is 3 again.
    for w in deliveries.windows(2) {
        assert!(w[1] <= w[0] + 1, "a delivery skipped ahead: {deliveries:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_message_failing_five_times_is_dead_lettered_and_its_key_goes_on()
-> anyhow::Result<()> {
    let c = start().await?;
    c.create_topic("raw").await?;
    c.create_topic("dlq").await?;
    c.create_subscription(
        model::Subscription::new()
            .set_name(subscription("raw.worker"))
            .set_topic(topic("raw"))
            .set_enable_message_ordering(true)
            .set_retry_policy(
                model::RetryPolicy::new()
                    .set_minimum_backoff(google_cloud_wkt::Duration::clamp(0, 50_000_000))
                    .set_maximum_backoff(google_cloud_wkt::Duration::clamp(0, 200_000_000)),
            )
            .set_dead_letter_policy(
                model::DeadLetterPolicy::new()
                    .set_dead_letter_topic(topic("dlq"))
                    .set_max_delivery_attempts(5),
            ),
    )
    .await?;
    c.create_subscription(
        model::Subscription::new()
            .set_name(subscription("dlq.inspect"))
            .set_topic(topic("dlq")),
    )
    .await?;
    let publisher = c.publisher("raw").await?;
    publisher.publish(message("poison", "k")).await?;
    publisher.publish(message("healthy", "k")).await?;

    let mut stream = c.subscriber.subscribe(subscription("raw.worker")).build();
    let mut poison_attempts = Vec::new();
    let healthy_attempt = loop {
        let (m, h) = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await?
            .expect("the stream ended")?;
        let attempt = h.delivery_attempt();
        match text(&m).as_str() {
            "poison" => {
                poison_attempts.push(attempt);
                h.nack();
            }
            _ if poison_attempts.len() < 5 => h.nack(), // blocked behind the poison message
            _ => {
                h.ack();
                break attempt;
            }
        }
    };
    assert_eq!(
        poison_attempts,
        (1..=5).map(Some).collect::<Vec<_>>(),
        "delivery_attempt on every delivery"
    );
    assert!(healthy_attempt.is_some());

    let mut dlq = c.subscriber.subscribe(subscription("dlq.inspect")).build();
    let (dead, h) = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await?
        .expect("the dead-letter stream ended")?;
    h.ack();
    assert_eq!(text(&dead), "poison");
    assert_eq!(dead.ordering_key, "k");
    let attr = |k: &str| dead.attributes.get(k).cloned().unwrap_or_default();
    assert_eq!(attr("CloudPubSubDeadLetterSourceDeliveryCount"), "5");
    assert_eq!(
        attr("CloudPubSubDeadLetterSourceSubscription"),
        "raw.worker"
    );
    assert_eq!(
        attr("CloudPubSubDeadLetterSourceSubscriptionProject"),
        PROJECT
    );
    assert!(!attr("CloudPubSubDeadLetterSourceTopicPublishTime").is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_deliver_only_matching_messages_and_bad_filters_are_refused() -> anyhow::Result<()>
{
    let c = start().await?;
    c.create_topic("mixed").await?;
    for (id, filter) in [
        ("only.probes", "attributes:rig_probe"),
        ("no.probes", "NOT attributes:rig_probe"),
        (
            "eu.orders",
            "attributes.region = \"eu\" AND hasPrefix(attributes.kind, \"order\")",
        ),
    ] {
        c.create_subscription(
            model::Subscription::new()
                .set_name(subscription(id))
                .set_topic(topic("mixed"))
                .set_filter(filter),
        )
        .await?;
    }
    let publisher = c.publisher("mixed").await?;
    let attrs = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    for (data, a) in [
        ("probe", attrs(&[("rig_probe", "1")])),
        (
            "eu-order",
            attrs(&[("region", "eu"), ("kind", "order.created")]),
        ),
        (
            "us-order",
            attrs(&[("region", "us"), ("kind", "order.created")]),
        ),
    ] {
        publisher
            .publish(Message::new().set_data(data).set_attributes(a))
            .await?;
    }
    let receive_all = |id: &'static str| {
        let mut stream = c.subscriber.subscribe(subscription(id)).build();
        async move {
            let mut got = Vec::new();
            while let Ok(Some(next)) =
                tokio::time::timeout(Duration::from_millis(700), stream.next()).await
            {
                let (m, h) = next?;
                got.push(text(&m));
                h.ack();
            }
            got.sort();
            anyhow::Ok(got)
        }
    };
    assert_eq!(receive_all("only.probes").await?, vec!["probe"]);
    assert_eq!(
        receive_all("no.probes").await?,
        vec!["eu-order", "us-order"]
    );
    assert_eq!(receive_all("eu.orders").await?, vec!["eu-order"]);

    let bad = c
        .subscriptions
        .create_subscription()
        .with_request(
            model::Subscription::new()
                .set_name(subscription("bad.filter"))
                .set_topic(topic("mixed"))
                .set_filter("attributes:a AND attributes:b OR attributes:c"),
        )
        .send()
        .await
        .expect_err("mixing AND and OR without parentheses is invalid");
    assert_eq!(
        code(&bad),
        Some(google_cloud_gax::error::rpc::Code::InvalidArgument)
    );
    assert!(bad.to_string().contains("position 30"), "{bad}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_refused_with_invalid_argument() -> anyhow::Result<()> {
    let c = start().await?;
    c.create_topic("limits").await?;
    let publisher = c.publisher("limits").await?;
    let many: HashMap<String, String> = (0..101).map(|i| (format!("k{i}"), "v".into())).collect();
    let cases = [
        (
            "101 attributes",
            Message::new().set_data("x").set_attributes(many),
        ),
        (
            "a 257-byte attribute key",
            Message::new()
                .set_data("x")
                .set_attributes([("k".repeat(257), "v")]),
        ),
        (
            "a 1025-byte attribute value",
            Message::new()
                .set_data("x")
                .set_attributes([("k", "v".repeat(1025))]),
        ),
        (
            "a 1025-byte ordering key",
            Message::new()
                .set_data("x")
                .set_ordering_key("o".repeat(1025)),
        ),
        ("an empty message", Message::new()),
    ];
    for (what, m) in cases {
        let e = publisher.publish(m).await.expect_err(what);
        assert_eq!(
            publish_code(&e),
            Some(google_cloud_gax::error::rpc::Code::InvalidArgument),
            "{what}: {e}"
        );
    }
    let big = Message::new().set_data(vec![b'x'; 10_000_001]);
    let e = publisher.publish(big).await.expect_err("over 10 MB");
    assert_eq!(
        publish_code(&e),
        Some(google_cloud_gax::error::rpc::Code::InvalidArgument),
        "{e}"
    );
    // A message just under the limit goes through.
    publisher
        .publish(Message::new().set_data(vec![b'x'; 9_990_000]))
        .await?;

    let e = c
        .subscriptions
        .create_subscription()
        .with_request(
            model::Subscription::new()
                .set_name(subscription("slow.sub"))
                .set_topic(topic("limits"))
                .set_ack_deadline_seconds(601),
        )
        .send()
        .await
        .expect_err("ack deadline over 600 s");
    assert_eq!(
        code(&e),
        Some(google_cloud_gax::error::rpc::Code::InvalidArgument)
    );
    let e = c
        .publisher("no-such-topic")
        .await?
        .publish(Message::new().set_data("x"))
        .await
        .expect_err("unknown topic");
    assert_eq!(
        publish_code(&e),
        Some(google_cloud_gax::error::rpc::Code::NotFound),
        "{e}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_survives_stream_resets_and_sees_duplicates() -> anyhow::Result<()> {
    let c = start().await?;
    c.create_topic("faulty").await?;
    c.create_subscription(
        model::Subscription::new()
            .set_name(subscription("faulty.sub"))
            .set_topic(topic("faulty"))
            .set_labels([
                ("rig-fault-seed", "42"),
                ("rig-fault-stream-reset-permille", "500"),
                ("rig-fault-duplicate-permille", "200"),
            ]),
    )
    .await?;
    let publisher = c.publisher("faulty").await?;
    const N: usize = 40;
    for i in 0..N {
        // One at a time: the service sends many small batches, each a chance of a reset.
        publisher.publish(message(&i.to_string(), "")).await?;
    }
    let mut stream = c.subscriber.subscribe(subscription("faulty.sub")).build();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut deliveries = 0usize;
    while seen.len() < N {
        let (m, h) = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("no delivery for 20 s; seen {} of {N}", seen.len()))?
            .expect("the client gave up on the stream")?;
        *seen.entry(text(&m)).or_default() += 1;
        deliveries += 1;
        h.ack();
    }
    // Duplicates follow acks, which the client sends in batches: keep listening a while.
    while let Ok(Some(next)) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
        let (m, h) = next?;
        *seen.entry(text(&m)).or_default() += 1;
        deliveries += 1;
        h.ack();
    }
    assert!(
        deliveries > N,
        "with 20% duplicates some message must come twice: {deliveries} deliveries"
    );
    Ok(())
}

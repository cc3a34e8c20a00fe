//! The gRPC surface: `google.pubsub.v1.Publisher` and `Subscriber` over the broker. What the
//! official clients' data plane uses (Publish, StreamingPull, Acknowledge,
//! ModifyAckDeadline) and what the Python client uses for admin too.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::broker::{AckOutcome, ConsumerId, UNARY};
use crate::error::ServiceError;
use crate::limits;
use crate::proto::publisher_server::Publisher;
use crate::proto::subscriber_server::Subscriber;
use crate::proto::{self, streaming_pull_response};
use crate::server::Shared;

type GrpcResult<T> = Result<Response<T>, Status>;

/// Longest a unary Pull without `return_immediately` waits for a message.
const PULL_WAIT: Duration = Duration::from_secs(10);
/// Most messages in one StreamingPullResponse.
const STREAM_BATCH: usize = 1000;

#[derive(Clone)]
pub struct Service {
    pub shared: Arc<Shared>,
}

fn page<T: Clone>(items: Vec<T>, page_size: i32, token: &str) -> Result<(Vec<T>, String), Status> {
    let start: usize = if token.is_empty() {
        0
    } else {
        token
            .parse()
            .map_err(|_| Status::invalid_argument(format!("Invalid page_token {token:?}.")))?
    };
    let size = if page_size <= 0 {
        items.len().max(1)
    } else {
        page_size as usize
    };
    let end = (start + size).min(items.len());
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    Ok((
        items.get(start..end).map(<[T]>::to_vec).unwrap_or_default(),
        next,
    ))
}

fn project_of(path: &str) -> Result<&str, Status> {
    path.strip_prefix("projects/")
        .filter(|p| !p.is_empty() && !p.contains('/'))
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "Invalid project {path:?}: expected projects/PROJECT."
            ))
        })
}

fn mask(m: Option<prost_types::FieldMask>) -> Vec<String> {
    m.map(|m| m.paths).unwrap_or_default()
}

/// The status exactly-once delivery gives when some ack ids are no longer valid: one
/// `ErrorInfo` whose metadata maps each such id to `PERMANENT_FAILURE_INVALID_ACK_ID`
/// (<https://cloud.google.com/pubsub/docs/exactly-once-delivery>; the official clients read
/// it this way).
pub fn exactly_once_failure(invalid: &[String]) -> Status {
    #[derive(Clone, PartialEq, prost::Message)]
    struct ErrorInfo {
        #[prost(string, tag = "1")]
        reason: String,
        #[prost(string, tag = "2")]
        domain: String,
        #[prost(map = "string, string", tag = "3")]
        metadata: std::collections::HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
        #[prost(message, repeated, tag = "3")]
        details: Vec<prost_types::Any>,
    }
    let message = format!("{} ack id(s) are invalid or expired", invalid.len());
    let info = ErrorInfo {
        reason: "EXACTLY_ONCE_ACKID_FAILURE".into(),
        domain: "pubsub.googleapis.com".into(),
        metadata: invalid
            .iter()
            .map(|id| (id.clone(), "PERMANENT_FAILURE_INVALID_ACK_ID".to_string()))
            .collect(),
    };
    let status = RpcStatus {
        code: tonic::Code::InvalidArgument as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
            value: info.encode_to_vec(),
        }],
    };
    Status::with_details(
        tonic::Code::InvalidArgument,
        message,
        status.encode_to_vec().into(),
    )
}

impl Service {
    fn ack_result(&self, subscription: &str, outcome: AckOutcome) -> GrpcResult<()> {
        let exactly_once = self
            .shared
            .lock()
            .subscription(subscription)
            .is_ok_and(|s| s.exactly_once());
        if exactly_once && !outcome.invalid.is_empty() {
            return Err(exactly_once_failure(&outcome.invalid));
        }
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl Publisher for Service {
    async fn create_topic(&self, request: Request<proto::Topic>) -> GrpcResult<proto::Topic> {
        let topic = self.shared.lock().create_topic(request.into_inner())?;
        Ok(Response::new(topic))
    }

    async fn update_topic(
        &self,
        request: Request<proto::UpdateTopicRequest>,
    ) -> GrpcResult<proto::Topic> {
        let r = request.into_inner();
        let topic = r
            .topic
            .ok_or_else(|| Status::invalid_argument("The topic is required."))?;
        let topic = self
            .shared
            .lock()
            .update_topic(topic, &mask(r.update_mask))?;
        Ok(Response::new(topic))
    }

    async fn publish(
        &self,
        request: Request<proto::PublishRequest>,
    ) -> GrpcResult<proto::PublishResponse> {
        let r = request.into_inner();
        let message_ids = self
            .shared
            .lock()
            .publish(&r.topic, r.messages, Instant::now())?;
        Ok(Response::new(proto::PublishResponse { message_ids }))
    }

    async fn get_topic(
        &self,
        request: Request<proto::GetTopicRequest>,
    ) -> GrpcResult<proto::Topic> {
        let topic = self.shared.lock().get_topic(&request.into_inner().topic)?;
        Ok(Response::new(topic))
    }

    async fn list_topics(
        &self,
        request: Request<proto::ListTopicsRequest>,
    ) -> GrpcResult<proto::ListTopicsResponse> {
        let r = request.into_inner();
        let project = project_of(&r.project)?;
        let all = self.shared.lock().list_topics(project);
        let (topics, next_page_token) = page(all, r.page_size, &r.page_token)?;
        Ok(Response::new(proto::ListTopicsResponse {
            topics,
            next_page_token,
        }))
    }

    async fn list_topic_subscriptions(
        &self,
        request: Request<proto::ListTopicSubscriptionsRequest>,
    ) -> GrpcResult<proto::ListTopicSubscriptionsResponse> {
        let r = request.into_inner();
        let all = self.shared.lock().topic_subscriptions(&r.topic)?;
        let (subscriptions, next_page_token) = page(all, r.page_size, &r.page_token)?;
        Ok(Response::new(proto::ListTopicSubscriptionsResponse {
            subscriptions,
            next_page_token,
        }))
    }

    async fn list_topic_snapshots(
        &self,
        _request: Request<proto::ListTopicSnapshotsRequest>,
    ) -> GrpcResult<proto::ListTopicSnapshotsResponse> {
        Err(ServiceError::unsupported("Snapshots").into())
    }

    async fn delete_topic(&self, request: Request<proto::DeleteTopicRequest>) -> GrpcResult<()> {
        self.shared
            .lock()
            .delete_topic(&request.into_inner().topic)?;
        Ok(Response::new(()))
    }

    async fn detach_subscription(
        &self,
        request: Request<proto::DetachSubscriptionRequest>,
    ) -> GrpcResult<proto::DetachSubscriptionResponse> {
        self.shared
            .lock()
            .detach_subscription(&request.into_inner().subscription)?;
        Ok(Response::new(proto::DetachSubscriptionResponse {}))
    }
}

type PullStream = Pin<Box<dyn Stream<Item = Result<proto::StreamingPullResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Subscriber for Service {
    async fn create_subscription(
        &self,
        request: Request<proto::Subscription>,
    ) -> GrpcResult<proto::Subscription> {
        let s = self
            .shared
            .lock()
            .create_subscription(request.into_inner())?;
        Ok(Response::new(s))
    }

    async fn get_subscription(
        &self,
        request: Request<proto::GetSubscriptionRequest>,
    ) -> GrpcResult<proto::Subscription> {
        let s = self
            .shared
            .lock()
            .get_subscription(&request.into_inner().subscription)?;
        Ok(Response::new(s))
    }

    async fn update_subscription(
        &self,
        request: Request<proto::UpdateSubscriptionRequest>,
    ) -> GrpcResult<proto::Subscription> {
        let r = request.into_inner();
        let s = r
            .subscription
            .ok_or_else(|| Status::invalid_argument("The subscription is required."))?;
        let s = self
            .shared
            .lock()
            .update_subscription(s, &mask(r.update_mask))?;
        Ok(Response::new(s))
    }

    async fn list_subscriptions(
        &self,
        request: Request<proto::ListSubscriptionsRequest>,
    ) -> GrpcResult<proto::ListSubscriptionsResponse> {
        let r = request.into_inner();
        let project = project_of(&r.project)?;
        let all = self.shared.lock().list_subscriptions(project);
        let (subscriptions, next_page_token) = page(all, r.page_size, &r.page_token)?;
        Ok(Response::new(proto::ListSubscriptionsResponse {
            subscriptions,
            next_page_token,
        }))
    }

    async fn delete_subscription(
        &self,
        request: Request<proto::DeleteSubscriptionRequest>,
    ) -> GrpcResult<()> {
        self.shared
            .lock()
            .delete_subscription(&request.into_inner().subscription)?;
        Ok(Response::new(()))
    }

    async fn modify_ack_deadline(
        &self,
        request: Request<proto::ModifyAckDeadlineRequest>,
    ) -> GrpcResult<()> {
        let r = request.into_inner();
        let outcome = self.shared.lock().modify_ack_deadline(
            &r.subscription,
            &r.ack_ids,
            r.ack_deadline_seconds,
            Instant::now(),
        )?;
        self.ack_result(&r.subscription, outcome)
    }

    async fn acknowledge(&self, request: Request<proto::AcknowledgeRequest>) -> GrpcResult<()> {
        let r = request.into_inner();
        if r.ack_ids.is_empty() {
            return Err(Status::invalid_argument("No ack ids in the request."));
        }
        let outcome =
            self.shared
                .lock()
                .acknowledge(&r.subscription, &r.ack_ids, Instant::now())?;
        self.ack_result(&r.subscription, outcome)
    }

    // `return_immediately` is deprecated but still honoured by the real service.
    #[allow(deprecated)]
    async fn pull(&self, request: Request<proto::PullRequest>) -> GrpcResult<proto::PullResponse> {
        let r = request.into_inner();
        let received_messages = unary_pull(
            &self.shared,
            &r.subscription,
            r.max_messages,
            r.return_immediately,
        )
        .await?;
        Ok(Response::new(proto::PullResponse { received_messages }))
    }

    type StreamingPullStream = PullStream;

    async fn streaming_pull(
        &self,
        request: Request<Streaming<proto::StreamingPullRequest>>,
    ) -> GrpcResult<Self::StreamingPullStream> {
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("The stream ended before its first request.")
        })?;
        if first.subscription.is_empty() {
            return Err(Status::invalid_argument(
                "The first StreamingPullRequest must name the subscription.",
            ));
        }
        let deadline = first.stream_ack_deadline_seconds;
        if !(limits::MIN_ACK_DEADLINE_SECONDS..=limits::MAX_ACK_DEADLINE_SECONDS)
            .contains(&deadline)
        {
            return Err(Status::invalid_argument(format!(
                "Invalid stream_ack_deadline_seconds {deadline}: it must be between {} and {}.",
                limits::MIN_ACK_DEADLINE_SECONDS,
                limits::MAX_ACK_DEADLINE_SECONDS
            )));
        }
        let consumer = {
            let mut broker = self.shared.lock();
            broker.subscription(&first.subscription)?;
            broker.new_consumer()
        };
        handle_stream_request(&self.shared, &first.subscription, &first)?;
        let (tx, rx) = mpsc::channel(4);
        let stream = PullLoop {
            shared: self.shared.clone(),
            subscription: first.subscription.clone(),
            consumer,
            lease: Duration::from_secs(deadline as u64),
            max_messages: positive(first.max_outstanding_messages),
            max_bytes: positive(first.max_outstanding_bytes),
        };
        let client_gone = tokio_util::sync::CancellationToken::new();
        {
            let shared = self.shared.clone();
            let subscription = first.subscription.clone();
            let client_gone = client_gone.clone();
            tokio::spawn(async move {
                // Acks and deadline changes sent on the stream, until the client closes it.
                while let Ok(Some(req)) = inbound.message().await {
                    if handle_stream_request(&shared, &subscription, &req).is_err() {
                        break;
                    }
                }
                client_gone.cancel();
            });
        }
        tokio::spawn(stream.run(tx, client_gone));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn modify_push_config(
        &self,
        _request: Request<proto::ModifyPushConfigRequest>,
    ) -> GrpcResult<()> {
        Err(ServiceError::unsupported("Push delivery").into())
    }

    async fn get_snapshot(
        &self,
        _request: Request<proto::GetSnapshotRequest>,
    ) -> GrpcResult<proto::Snapshot> {
        Err(ServiceError::unsupported("Snapshots").into())
    }

    async fn list_snapshots(
        &self,
        _request: Request<proto::ListSnapshotsRequest>,
    ) -> GrpcResult<proto::ListSnapshotsResponse> {
        Err(ServiceError::unsupported("Snapshots").into())
    }

    async fn create_snapshot(
        &self,
        _request: Request<proto::CreateSnapshotRequest>,
    ) -> GrpcResult<proto::Snapshot> {
        Err(ServiceError::unsupported("Snapshots").into())
    }

    async fn update_snapshot(
        &self,
        _request: Request<proto::UpdateSnapshotRequest>,
    ) -> GrpcResult<proto::Snapshot> {
        Err(ServiceError::unsupported("Snapshots").into())
    }

    async fn delete_snapshot(
        &self,
        _request: Request<proto::DeleteSnapshotRequest>,
    ) -> GrpcResult<()> {
        Err(ServiceError::unsupported("Snapshots").into())
    }

    async fn seek(&self, _request: Request<proto::SeekRequest>) -> GrpcResult<proto::SeekResponse> {
        Err(ServiceError::unsupported("Seek").into())
    }
}

fn positive(n: i64) -> u64 {
    if n > 0 { n as u64 } else { u64::MAX }
}

/// Unary Pull (also REST `:pull`): leases for the subscription's ack deadline.
pub async fn unary_pull(
    shared: &Shared,
    subscription: &str,
    max_messages: i32,
    return_immediately: bool,
) -> Result<Vec<proto::ReceivedMessage>, Status> {
    if max_messages <= 0 {
        return Err(Status::invalid_argument("max_messages must be positive."));
    }
    let max = (max_messages as usize).min(limits::MAX_PULL_MESSAGES);
    let give_up = Instant::now() + PULL_WAIT;
    loop {
        let (notify, wake) = {
            let mut broker = shared.lock();
            let lease = Duration::from_secs(
                broker
                    .subscription(subscription)?
                    .config
                    .ack_deadline_seconds as u64,
            );
            let now = Instant::now();
            let got = broker.pull(subscription, UNARY, max, u64::MAX, lease, now)?;
            if !got.is_empty() || return_immediately || now >= give_up {
                return Ok(got);
            }
            let sub = broker.subscription(subscription)?;
            (sub.notify.clone(), sub.next_event())
        };
        let wake = wake.unwrap_or(give_up).min(give_up);
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep_until(wake) => {}
            _ = shared.stopping.cancelled() => return Err(Status::unavailable("The service is stopping.")),
        }
    }
}

fn handle_stream_request(
    shared: &Shared,
    subscription: &str,
    req: &proto::StreamingPullRequest,
) -> Result<(), Status> {
    if req.modify_deadline_ack_ids.len() != req.modify_deadline_seconds.len() {
        return Err(Status::invalid_argument(
            "modify_deadline_seconds and modify_deadline_ack_ids must have the same length.",
        ));
    }
    let now = Instant::now();
    let mut broker = shared.lock();
    if !req.ack_ids.is_empty() {
        broker.acknowledge(subscription, &req.ack_ids, now)?;
    }
    for (id, seconds) in req
        .modify_deadline_ack_ids
        .iter()
        .zip(&req.modify_deadline_seconds)
    {
        broker.modify_ack_deadline(subscription, std::slice::from_ref(id), *seconds, now)?;
    }
    Ok(())
}

/// One StreamingPull: sends batches as messages become deliverable, within the client's flow
/// control, until the client goes, the subscription goes, or the service stops.
struct PullLoop {
    shared: Arc<Shared>,
    subscription: String,
    consumer: ConsumerId,
    lease: Duration,
    max_messages: u64,
    max_bytes: u64,
}

enum Step {
    Send(proto::StreamingPullResponse),
    Wait(Arc<tokio::sync::Notify>, Option<Instant>),
    End(Status),
}

impl PullLoop {
    async fn run(
        self,
        tx: mpsc::Sender<Result<proto::StreamingPullResponse, Status>>,
        client_gone: tokio_util::sync::CancellationToken,
    ) {
        loop {
            if self.shared.stopping.is_cancelled() {
                let _ = tx
                    .send(Err(Status::unavailable(
                        "The service is stopping; reconnect to continue.",
                    )))
                    .await;
                break;
            }
            if client_gone.is_cancelled() {
                break;
            }
            let closing = self.shared.closing();
            let closed = closing.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            match self.step() {
                Step::Send(response) => {
                    if tx.send(Ok(response)).await.is_err() {
                        break;
                    }
                }
                Step::End(status) => {
                    let _ = tx.send(Err(status)).await;
                    break;
                }
                Step::Wait(notify, wake) => {
                    let notified = notify.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    // Re-check after arming, so a publish between step() and here is not missed.
                    if let Step::Send(response) = self.step() {
                        if tx.send(Ok(response)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    let wake = wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                    tokio::select! {
                        _ = notified => {}
                        _ = closed => {}
                        _ = tokio::time::sleep_until(wake) => {}
                        _ = client_gone.cancelled() => break,
                        _ = self.shared.stopping.cancelled() => {}
                        _ = tx.closed() => break,
                    }
                }
            }
        }
        if let Ok(sub) = self.shared.lock().subscription_mut(&self.subscription) {
            sub.end_consumer(self.consumer);
        }
    }

    fn step(&self) -> Step {
        let now = Instant::now();
        let mut broker = self.shared.lock();
        let (room, bytes_room, properties, reset) =
            match broker.subscription_mut(&self.subscription) {
                Err(e) => return Step::End(e.into()),
                Ok(sub) => {
                    let o = sub.outstanding(self.consumer);
                    let properties = streaming_pull_response::SubscriptionProperties {
                        exactly_once_delivery_enabled: sub.exactly_once(),
                        message_ordering_enabled: sub.config.enable_message_ordering,
                    };
                    (
                        self.max_messages.saturating_sub(o.messages),
                        self.max_bytes.saturating_sub(o.bytes),
                        properties,
                        sub.has_deliverable(now) && sub.roll_stream_reset(),
                    )
                }
            };
        if reset {
            return Step::End(Status::unavailable(
                "The stream was reset (rig-fault-stream-reset-permille); reconnect to continue.",
            ));
        }
        let mut received = Vec::new();
        if room > 0 && bytes_room > 0 {
            match broker.pull(
                &self.subscription,
                self.consumer,
                (room.min(STREAM_BATCH as u64)) as usize,
                bytes_room,
                self.lease,
                now,
            ) {
                Ok(r) => received = r,
                Err(e) => return Step::End(e.into()),
            }
        }
        if !received.is_empty() {
            return Step::Send(proto::StreamingPullResponse {
                received_messages: received,
                acknowledge_confirmation: None,
                modify_ack_deadline_confirmation: None,
                subscription_properties: Some(properties),
            });
        }
        match broker.subscription(&self.subscription) {
            Ok(sub) => Step::Wait(sub.notify.clone(), sub.next_event()),
            Err(e) => Step::End(e.into()),
        }
    }
}

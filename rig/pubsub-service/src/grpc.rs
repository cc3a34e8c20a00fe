//! The gRPC surface: `google.pubsub.v1.Publisher` and `Subscriber` over the broker, through
//! the operations in `service.rs` that REST shares. What the official clients' data plane uses
//! (Publish, StreamingPull, Acknowledge, ModifyAckDeadline), what the Python client uses for
//! admin too, snapshots and seek.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::broker::Broker;
use crate::error::ServiceError;
use crate::history::{Consumer, Transport};
use crate::limits;
use crate::proto::publisher_server::Publisher;
use crate::proto::subscriber_server::Subscriber;
use crate::proto::{self, streaming_pull_response};
use crate::service::{self, Shared};
use crate::subscription::ConsumerId;

type GrpcResult<T> = Result<Response<T>, Status>;

/// Most messages in one StreamingPullResponse.
const STREAM_BATCH: usize = 1000;
const UNARY: Transport = Transport::GrpcUnary;

#[derive(Clone)]
pub struct Service {
    pub shared: Arc<Shared>,
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

fn page<T>(items: Vec<T>, size: i32, token: &str) -> Result<(Vec<T>, String), Status> {
    Ok(service::page(items, size, token)?)
}

impl Service {
    fn broker(&self) -> std::sync::MutexGuard<'_, Broker> {
        self.shared.lock()
    }
}

#[tonic::async_trait]
impl Publisher for Service {
    async fn create_topic(&self, request: Request<proto::Topic>) -> GrpcResult<proto::Topic> {
        let topic = self.broker().create_topic(request.into_inner())?;
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
            .broker()
            .update_topic(topic, &mask(r.update_mask), Instant::now())?;
        Ok(Response::new(topic))
    }

    async fn publish(
        &self,
        request: Request<proto::PublishRequest>,
    ) -> GrpcResult<proto::PublishResponse> {
        let r = request.into_inner();
        let message_ids = self
            .broker()
            .publish(&r.topic, r.messages, UNARY, Instant::now())?;
        Ok(Response::new(proto::PublishResponse { message_ids }))
    }

    async fn get_topic(
        &self,
        request: Request<proto::GetTopicRequest>,
    ) -> GrpcResult<proto::Topic> {
        let topic = self.broker().get_topic(&request.into_inner().topic)?;
        Ok(Response::new(topic))
    }

    async fn list_topics(
        &self,
        request: Request<proto::ListTopicsRequest>,
    ) -> GrpcResult<proto::ListTopicsResponse> {
        let r = request.into_inner();
        let project = project_of(&r.project)?;
        let all = self.broker().list_topics(project);
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
        let all = self.broker().topic_subscriptions(&r.topic)?;
        let (subscriptions, next_page_token) = page(all, r.page_size, &r.page_token)?;
        Ok(Response::new(proto::ListTopicSubscriptionsResponse {
            subscriptions,
            next_page_token,
        }))
    }

    async fn list_topic_snapshots(
        &self,
        request: Request<proto::ListTopicSnapshotsRequest>,
    ) -> GrpcResult<proto::ListTopicSnapshotsResponse> {
        let r = request.into_inner();
        let all = self.broker().topic_snapshots(&r.topic)?;
        let (snapshots, next_page_token) = page(all, r.page_size, &r.page_token)?;
        Ok(Response::new(proto::ListTopicSnapshotsResponse {
            snapshots,
            next_page_token,
        }))
    }

    async fn delete_topic(&self, request: Request<proto::DeleteTopicRequest>) -> GrpcResult<()> {
        self.broker().delete_topic(&request.into_inner().topic)?;
        Ok(Response::new(()))
    }

    async fn detach_subscription(
        &self,
        request: Request<proto::DetachSubscriptionRequest>,
    ) -> GrpcResult<proto::DetachSubscriptionResponse> {
        self.broker()
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
        let s = self.broker().create_subscription(request.into_inner())?;
        Ok(Response::new(s))
    }

    async fn get_subscription(
        &self,
        request: Request<proto::GetSubscriptionRequest>,
    ) -> GrpcResult<proto::Subscription> {
        let s = self
            .broker()
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
        let s = self.broker().update_subscription(s, &mask(r.update_mask))?;
        Ok(Response::new(s))
    }

    async fn list_subscriptions(
        &self,
        request: Request<proto::ListSubscriptionsRequest>,
    ) -> GrpcResult<proto::ListSubscriptionsResponse> {
        let r = request.into_inner();
        let project = project_of(&r.project)?;
        let all = self.broker().list_subscriptions(project);
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
        self.broker()
            .delete_subscription(&request.into_inner().subscription)?;
        Ok(Response::new(()))
    }

    async fn modify_ack_deadline(
        &self,
        request: Request<proto::ModifyAckDeadlineRequest>,
    ) -> GrpcResult<()> {
        let r = request.into_inner();
        service::modify_ack_deadline(
            &self.shared,
            &r.subscription,
            &r.ack_ids,
            r.ack_deadline_seconds,
            UNARY,
        )?;
        Ok(Response::new(()))
    }

    async fn acknowledge(&self, request: Request<proto::AcknowledgeRequest>) -> GrpcResult<()> {
        let r = request.into_inner();
        service::acknowledge(&self.shared, &r.subscription, &r.ack_ids, UNARY)?;
        Ok(Response::new(()))
    }

    // `return_immediately` is deprecated but still honoured by the real service.
    #[allow(deprecated)]
    async fn pull(&self, request: Request<proto::PullRequest>) -> GrpcResult<proto::PullResponse> {
        let r = request.into_inner();
        let received_messages = service::pull(
            &self.shared,
            &r.subscription,
            r.max_messages,
            r.return_immediately,
            UNARY,
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
        let consumer = self
            .broker()
            .open_stream(&first.subscription, Instant::now())?;
        if let Err(e) = service::stream_request(&self.shared, &first.subscription, &first) {
            self.broker().close_stream(
                &first.subscription,
                consumer,
                &e.to_string(),
                Instant::now(),
            );
            return Err(e.into());
        }
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
                    if service::stream_request(&shared, &subscription, &req).is_err() {
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
        request: Request<proto::ModifyPushConfigRequest>,
    ) -> GrpcResult<()> {
        let r = request.into_inner();
        // An empty push config makes a subscription pull, which every subscription here is.
        let pull = r.push_config.as_ref().is_none_or(|p| {
            p.push_endpoint.is_empty() && p.authentication_method.is_none() && p.wrapper.is_none()
        });
        self.broker().subscription(&r.subscription)?;
        if pull {
            Ok(Response::new(()))
        } else {
            Err(ServiceError::unsupported("Push delivery").into())
        }
    }

    async fn get_snapshot(
        &self,
        request: Request<proto::GetSnapshotRequest>,
    ) -> GrpcResult<proto::Snapshot> {
        let s = self.broker().get_snapshot(&request.into_inner().snapshot)?;
        Ok(Response::new(s))
    }

    async fn list_snapshots(
        &self,
        request: Request<proto::ListSnapshotsRequest>,
    ) -> GrpcResult<proto::ListSnapshotsResponse> {
        let r = request.into_inner();
        let project = project_of(&r.project)?;
        let all = self.broker().list_snapshots(project);
        let (snapshots, next_page_token) = page(all, r.page_size, &r.page_token)?;
        Ok(Response::new(proto::ListSnapshotsResponse {
            snapshots,
            next_page_token,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<proto::CreateSnapshotRequest>,
    ) -> GrpcResult<proto::Snapshot> {
        let r = request.into_inner();
        let s = self
            .broker()
            .create_snapshot(r.name, &r.subscription, r.labels, Instant::now())?;
        Ok(Response::new(s))
    }

    async fn update_snapshot(
        &self,
        request: Request<proto::UpdateSnapshotRequest>,
    ) -> GrpcResult<proto::Snapshot> {
        let r = request.into_inner();
        let s = r
            .snapshot
            .ok_or_else(|| Status::invalid_argument("The snapshot is required."))?;
        let s = self.broker().update_snapshot(s, &mask(r.update_mask))?;
        Ok(Response::new(s))
    }

    async fn delete_snapshot(
        &self,
        request: Request<proto::DeleteSnapshotRequest>,
    ) -> GrpcResult<()> {
        self.broker()
            .delete_snapshot(&request.into_inner().snapshot)?;
        Ok(Response::new(()))
    }

    async fn seek(&self, request: Request<proto::SeekRequest>) -> GrpcResult<proto::SeekResponse> {
        let r = request.into_inner();
        self.broker()
            .seek(&r.subscription, r.target, UNARY, Instant::now())?;
        Ok(Response::new(proto::SeekResponse {}))
    }
}

fn positive(n: i64) -> u64 {
    if n > 0 { n as u64 } else { u64::MAX }
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
        // A batch the channel refuses never reached the client: it goes back at once rather
        // than waiting out its lease on a stream that is gone.
        let give_back =
            |returned: mpsc::error::SendError<Result<proto::StreamingPullResponse, Status>>| {
                if let Ok(response) = returned.0 {
                    let ids: Vec<String> = response
                        .received_messages
                        .into_iter()
                        .map(|r| r.ack_id)
                        .collect();
                    self.shared
                        .lock()
                        .undelivered(&self.subscription, &ids, Instant::now());
                }
            };
        let reason = loop {
            if self.shared.stopping.is_cancelled() {
                let _ = tx
                    .send(Err(Status::unavailable(
                        "The service is stopping; reconnect to continue.",
                    )))
                    .await;
                break "the service stopped".to_string();
            }
            if client_gone.is_cancelled() {
                break "the client closed the stream".to_string();
            }
            let closing = self.shared.closing();
            let closed = closing.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            match self.step(&tx) {
                Step::Send(response) => {
                    if let Err(returned) = tx.send(Ok(response)).await {
                        give_back(returned);
                        break "the client went away".to_string();
                    }
                }
                Step::End(status) => {
                    let reason = format!("{:?}: {}", status.code(), status.message());
                    let _ = tx.send(Err(status)).await;
                    break reason;
                }
                Step::Wait(notify, wake) => {
                    let notified = notify.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    // Re-check after arming, so a publish between step() and here is not missed.
                    match self.step(&tx) {
                        Step::Send(response) => {
                            if let Err(returned) = tx.send(Ok(response)).await {
                                give_back(returned);
                                break "the client went away".to_string();
                            }
                            continue;
                        }
                        Step::End(status) => {
                            let reason = format!("{:?}: {}", status.code(), status.message());
                            let _ = tx.send(Err(status)).await;
                            break reason;
                        }
                        Step::Wait(..) => {}
                    }
                    let wake = wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                    tokio::select! {
                        _ = notified => {}
                        _ = closed => {}
                        _ = tokio::time::sleep_until(wake) => {}
                        _ = client_gone.cancelled() => break "the client closed the stream".to_string(),
                        _ = self.shared.stopping.cancelled() => {}
                        _ = tx.closed() => break "the client went away".to_string(),
                    }
                }
            }
        };
        self.shared
            .lock()
            .close_stream(&self.subscription, self.consumer, &reason, Instant::now());
    }

    fn step(&self, tx: &mpsc::Sender<Result<proto::StreamingPullResponse, Status>>) -> Step {
        if tx.is_closed() {
            return Step::End(Status::cancelled("The client went away."));
        }
        let now = Instant::now();
        let mut broker = self.shared.lock();
        let (room, bytes_room, properties, reset) =
            match broker.subscription_mut(&self.subscription) {
                Err(e) => return Step::End(e.into()),
                Ok(sub) if sub.config.detached => {
                    return Step::End(Status::failed_precondition("Subscription is detached."));
                }
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
                        sub.has_deliverable(now) && sub.roll_stream_reset(self.consumer),
                    )
                }
            };
        if reset {
            broker.flush(&self.subscription, now);
            return Step::End(Status::unavailable(
                "The stream was reset (rig-fault-stream-reset-permille); reconnect to continue.",
            ));
        }
        let mut received = Vec::new();
        if room > 0 && bytes_room > 0 {
            match broker.pull(
                &self.subscription,
                Consumer::Stream(self.consumer),
                Transport::GrpcStream,
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

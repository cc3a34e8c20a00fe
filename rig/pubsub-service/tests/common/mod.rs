//! What the integration tests share: a service, raw gRPC calls with the crate's own messages
//! (for requests no official client sends as such: acks on the stream, chosen ack ids), and
//! HTTP/JSON calls.
#![allow(dead_code)]

use std::time::Duration;

use http::uri::PathAndQuery;
use pubsub_service::proto;
use pubsub_service::{PubsubService, RunningService};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

pub const PATIENCE: Duration = Duration::from_secs(10);

pub async fn service() -> RunningService {
    PubsubService::start("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("starting pubsub-service")
}

pub struct Grpc {
    channel: Channel,
}

impl Grpc {
    pub async fn connect(service: &RunningService) -> Self {
        let channel = Channel::from_shared(service.endpoint())
            .expect("endpoint")
            .connect()
            .await
            .expect("gRPC connect");
        Self { channel }
    }

    pub async fn unary<Req, Resp>(
        &self,
        method: &'static str,
        message: Req,
    ) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec: ProstCodec<Req, Resp> = ProstCodec::default();
        grpc.unary(
            tonic::Request::new(message),
            PathAndQuery::from_static(method),
            codec,
        )
        .await
        .map(tonic::Response::into_inner)
    }

    pub async fn topic(&self, name: &str) {
        let _: proto::Topic = self
            .unary(
                "/google.pubsub.v1.Publisher/CreateTopic",
                proto::Topic {
                    name: name.into(),
                    ..Default::default()
                },
            )
            .await
            .expect("CreateTopic");
    }

    pub async fn subscription(&self, s: proto::Subscription) -> proto::Subscription {
        self.unary("/google.pubsub.v1.Subscriber/CreateSubscription", s)
            .await
            .expect("CreateSubscription")
    }

    pub async fn publish(&self, topic: &str, messages: Vec<proto::PubsubMessage>) -> Vec<String> {
        let r: proto::PublishResponse = self
            .unary(
                "/google.pubsub.v1.Publisher/Publish",
                proto::PublishRequest {
                    topic: topic.into(),
                    messages,
                },
            )
            .await
            .expect("Publish");
        r.message_ids
    }

    #[allow(deprecated)]
    pub async fn pull(
        &self,
        subscription: &str,
        max: i32,
    ) -> Result<Vec<proto::ReceivedMessage>, tonic::Status> {
        let r: proto::PullResponse = self
            .unary(
                "/google.pubsub.v1.Subscriber/Pull",
                proto::PullRequest {
                    subscription: subscription.into(),
                    return_immediately: true,
                    max_messages: max,
                },
            )
            .await?;
        Ok(r.received_messages)
    }

    pub async fn ack(&self, subscription: &str, ack_ids: Vec<String>) -> Result<(), tonic::Status> {
        self.unary(
            "/google.pubsub.v1.Subscriber/Acknowledge",
            proto::AcknowledgeRequest {
                subscription: subscription.into(),
                ack_ids,
            },
        )
        .await
    }

    pub async fn modack(
        &self,
        subscription: &str,
        ack_ids: Vec<String>,
        seconds: i32,
    ) -> Result<(), tonic::Status> {
        self.unary(
            "/google.pubsub.v1.Subscriber/ModifyAckDeadline",
            proto::ModifyAckDeadlineRequest {
                subscription: subscription.into(),
                ack_deadline_seconds: seconds,
                ack_ids,
            },
        )
        .await
    }

    /// Opens a StreamingPull; returns the request sender and the response stream.
    pub async fn stream(
        &self,
        subscription: &str,
        max_outstanding: i64,
    ) -> (
        mpsc::Sender<proto::StreamingPullRequest>,
        tonic::Streaming<proto::StreamingPullResponse>,
    ) {
        let (tx, rx) = mpsc::channel(16);
        tx.send(proto::StreamingPullRequest {
            subscription: subscription.into(),
            stream_ack_deadline_seconds: 10,
            max_outstanding_messages: max_outstanding,
            ..Default::default()
        })
        .await
        .expect("first request");
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.expect("channel ready");
        let codec: ProstCodec<proto::StreamingPullRequest, proto::StreamingPullResponse> =
            ProstCodec::default();
        let responses = grpc
            .streaming(
                tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                PathAndQuery::from_static("/google.pubsub.v1.Subscriber/StreamingPull"),
                codec,
            )
            .await
            .expect("StreamingPull")
            .into_inner();
        (tx, responses)
    }
}

/// The next messages a stream delivers, within `PATIENCE`.
pub async fn next_batch(
    stream: &mut tonic::Streaming<proto::StreamingPullResponse>,
) -> Vec<proto::ReceivedMessage> {
    match tokio::time::timeout(PATIENCE, stream.message()).await {
        Ok(Ok(Some(r))) => r.received_messages,
        Ok(Ok(None)) => panic!("the stream ended"),
        Ok(Err(status)) => panic!("the stream failed: {status}"),
        Err(_) => panic!("nothing arrived on the stream within {PATIENCE:?}"),
    }
}

/// Reads the stream until `count` messages arrived.
pub async fn receive(
    stream: &mut tonic::Streaming<proto::StreamingPullResponse>,
    count: usize,
) -> Vec<proto::ReceivedMessage> {
    let mut got = Vec::new();
    while got.len() < count {
        got.extend(next_batch(stream).await);
    }
    got
}

pub fn text(r: &proto::ReceivedMessage) -> String {
    r.message
        .as_ref()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .unwrap_or_default()
}

pub fn keyed(data: &str, key: &str) -> proto::PubsubMessage {
    proto::PubsubMessage {
        data: data.as_bytes().to_vec().into(),
        ordering_key: key.into(),
        ..Default::default()
    }
}

pub struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    pub fn new(service: &RunningService) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: service.endpoint(),
        }
    }

    /// `method path` with an optional JSON body: the status and the JSON answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("HTTP body");
        let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, value)
    }

    pub async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let (status, value) = self.call(method.clone(), path, body).await;
        assert_eq!(status, 200, "{method} {path}: {value}");
        value
    }
}

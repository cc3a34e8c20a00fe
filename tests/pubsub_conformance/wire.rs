//! Raw Pub/Sub v1 gRPC calls, for the few requests the official client never sends as such:
//! a unary `Pull`, a `ModifyAckDeadline` or `Acknowledge` with an ack id the test chose (an
//! expired one), a `Publish` of 1001 messages or over 10 MB in one request. The messages are
//! the fields of `google/pubsub/v1/pubsub.proto` these calls need; unknown fields are skipped
//! by prost, so the real service's fuller responses decode.

use std::collections::HashMap;
use std::time::Duration;

use http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

const CALL_TIMEOUT: Duration = Duration::from_secs(8);

#[derive(Clone, PartialEq, prost::Message)]
pub struct PubsubMessage {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    #[prost(map = "string, string", tag = "2")]
    pub attributes: HashMap<String, String>,
    #[prost(string, tag = "3")]
    pub message_id: String,
    #[prost(string, tag = "5")]
    pub ordering_key: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishRequest {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(message, repeated, tag = "2")]
    pub messages: Vec<PubsubMessage>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishResponse {
    #[prost(string, repeated, tag = "1")]
    pub message_ids: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PullRequest {
    #[prost(string, tag = "1")]
    pub subscription: String,
    #[prost(bool, tag = "2")]
    pub return_immediately: bool,
    #[prost(int32, tag = "3")]
    pub max_messages: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReceivedMessage {
    #[prost(string, tag = "1")]
    pub ack_id: String,
    #[prost(message, optional, tag = "2")]
    pub message: Option<PubsubMessage>,
    #[prost(int32, tag = "3")]
    pub delivery_attempt: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PullResponse {
    #[prost(message, repeated, tag = "1")]
    pub received_messages: Vec<ReceivedMessage>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModifyAckDeadlineRequest {
    #[prost(string, tag = "1")]
    pub subscription: String,
    #[prost(int32, tag = "3")]
    pub ack_deadline_seconds: i32,
    #[prost(string, repeated, tag = "4")]
    pub ack_ids: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AcknowledgeRequest {
    #[prost(string, tag = "1")]
    pub subscription: String,
    #[prost(string, repeated, tag = "2")]
    pub ack_ids: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// A gRPC connection to one implementation, with the headers every call carries (a bearer
/// token against real GCP).
#[derive(Clone)]
pub struct Wire {
    channel: Channel,
    authorization: Option<String>,
}

impl Wire {
    /// Plaintext gRPC to a local implementation (`http://127.0.0.1:PORT`).
    pub async fn plaintext(endpoint: &str) -> Result<Self, String> {
        let channel = Channel::from_shared(endpoint.to_string())
            .map_err(|e| format!("gRPC endpoint {endpoint}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("gRPC connect to {endpoint}: {e}"))?;
        Ok(Self {
            channel,
            authorization: None,
        })
    }

    /// TLS to pubsub.googleapis.com with an OAuth token from Application Default Credentials.
    pub async fn google(authorization: String) -> Result<Self, String> {
        let endpoint = "https://pubsub.googleapis.com";
        let channel = Channel::from_static(endpoint)
            .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
            .map_err(|e| format!("TLS for {endpoint}: {e}"))?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| format!("gRPC connect to {endpoint}: {e}"))?;
        Ok(Self {
            channel,
            authorization: Some(authorization),
        })
    }

    async fn unary<Req, Resp>(
        &self,
        method: &'static str,
        message: Req,
    ) -> Result<Resp, tonic::Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("channel not ready: {e}")))?;
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.authorization {
            let value = token
                .parse()
                .map_err(|_| tonic::Status::internal("authorization header is not ASCII"))?;
            request.metadata_mut().insert("authorization", value);
        }
        let codec: ProstCodec<Req, Resp> = ProstCodec::default();
        // Google's emulator never answers some requests (an 11 MB publish): no call waits forever.
        match tokio::time::timeout(
            CALL_TIMEOUT,
            grpc.unary(request, PathAndQuery::from_static(method), codec),
        )
        .await
        {
            Ok(answer) => answer.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer to {method} within {CALL_TIMEOUT:?}"
            ))),
        }
    }

    pub async fn publish(
        &self,
        topic: &str,
        messages: Vec<PubsubMessage>,
    ) -> Result<Vec<String>, tonic::Status> {
        let response: PublishResponse = self
            .unary(
                "/google.pubsub.v1.Publisher/Publish",
                PublishRequest {
                    topic: topic.to_string(),
                    messages,
                },
            )
            .await?;
        Ok(response.message_ids)
    }

    /// One unary pull that answers at once with what is available (`return_immediately`:
    /// deprecated, still honoured). A waiting pull abandoned by the client can stay open on the
    /// server and swallow the next delivery, so the checks never leave one behind.
    pub async fn pull_now(
        &self,
        subscription: &str,
        max_messages: i32,
    ) -> Result<Vec<ReceivedMessage>, tonic::Status> {
        let response: PullResponse = self
            .unary(
                "/google.pubsub.v1.Subscriber/Pull",
                PullRequest {
                    subscription: subscription.to_string(),
                    return_immediately: true,
                    max_messages,
                },
            )
            .await?;
        Ok(response.received_messages)
    }

    /// Polls until at least one message arrives or `within` passes.
    pub async fn pull_some(
        &self,
        subscription: &str,
        within: Duration,
    ) -> Result<Vec<ReceivedMessage>, tonic::Status> {
        let until = tokio::time::Instant::now() + within;
        loop {
            let got = self.pull_now(subscription, 100).await?;
            if !got.is_empty() || tokio::time::Instant::now() >= until {
                return Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn modify_ack_deadline(
        &self,
        subscription: &str,
        ack_ids: Vec<String>,
        seconds: i32,
    ) -> Result<(), tonic::Status> {
        let _: Empty = self
            .unary(
                "/google.pubsub.v1.Subscriber/ModifyAckDeadline",
                ModifyAckDeadlineRequest {
                    subscription: subscription.to_string(),
                    ack_deadline_seconds: seconds,
                    ack_ids,
                },
            )
            .await?;
        Ok(())
    }

    pub async fn acknowledge(
        &self,
        subscription: &str,
        ack_ids: Vec<String>,
    ) -> Result<(), tonic::Status> {
        let _: Empty = self
            .unary(
                "/google.pubsub.v1.Subscriber/Acknowledge",
                AcknowledgeRequest {
                    subscription: subscription.to_string(),
                    ack_ids,
                },
            )
            .await?;
        Ok(())
    }
}

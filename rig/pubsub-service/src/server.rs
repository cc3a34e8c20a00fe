//! One port for everything: gRPC (HTTP/2, `content-type: application/grpc`) goes to the
//! tonic services, anything else to the REST surface. The official Rust client speaks REST
//! for admin and gRPC for publish/subscribe; the Python client speaks gRPC only.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::body::Body;
use tower::Service as _;

use crate::grpc::Service;
use crate::limits;
use crate::observe;
use crate::proto::publisher_server::PublisherServer;
use crate::proto::subscriber_server::SubscriberServer;
use crate::rest;
use crate::service::Shared;

/// What the transport decodes: well above the request limit, so that an oversized publish
/// reaches `limits` and gets the real service's INVALID_ARGUMENT rather than the transport's
/// OUT_OF_RANGE (the conformance suite sends 11 MB).
const MAX_GRPC_MESSAGE: usize = 4 * limits::MAX_REQUEST_BYTES;

#[derive(Clone)]
struct Router {
    shared: Arc<Shared>,
    publisher: PublisherServer<Service>,
    subscriber: SubscriberServer<Service>,
}

impl Router {
    fn new(shared: Arc<Shared>) -> Self {
        let service = Service {
            shared: shared.clone(),
        };
        Self {
            shared,
            publisher: PublisherServer::new(service.clone())
                .max_decoding_message_size(MAX_GRPC_MESSAGE)
                .max_encoding_message_size(MAX_GRPC_MESSAGE),
            subscriber: SubscriberServer::new(service)
                .max_decoding_message_size(MAX_GRPC_MESSAGE)
                .max_encoding_message_size(MAX_GRPC_MESSAGE),
        }
    }

    async fn serve(
        mut self,
        request: http::Request<Incoming>,
    ) -> Result<http::Response<Body>, Infallible> {
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if grpc {
            let path = request.uri().path();
            let response = if path.starts_with("/google.pubsub.v1.Publisher/") {
                self.publisher.call(request).await
            } else if path.starts_with("/google.pubsub.v1.Subscriber/") {
                self.subscriber.call(request).await
            } else {
                let status = tonic::Status::unimplemented(format!(
                    "{path} is not served by pubsub-service (Publisher and Subscriber only)"
                ));
                Ok(status.into_http())
            };
            return Ok(response.unwrap_or_else(|never| match never {}));
        }
        let (parts, body) = request.into_parts();
        if parts.uri.path().starts_with(observe::PREFIX) {
            let response = observe::handle(
                &self.shared,
                &parts.method,
                parts.uri.path(),
                parts.uri.query(),
            );
            return Ok(to_http(response));
        }
        let payload = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let e = crate::error::ServiceError::invalid("Reading the request body failed.")
                    .with_source(e);
                return Ok(to_http(rest::error(&e)));
            }
        };
        if payload.len() > MAX_GRPC_MESSAGE * 2 {
            let e = crate::error::ServiceError::invalid("Request payload too large.");
            return Ok(to_http(rest::error(&e)));
        }
        let response = rest::handle(
            &self.shared,
            &parts.method,
            parts.uri.path(),
            parts.uri.query(),
            &payload,
        )
        .await;
        Ok(to_http(response))
    }
}

fn to_http(r: rest::RestResponse) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(Full::new(r.body)));
    *response.status_mut() = r.status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    response
}

/// Accepts connections until `shared.stopping`; expires leases in the background.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    tokio::spawn(expire_leases(shared.clone()));
    let router = Router::new(shared.clone());
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .max_frame_size(1 << 20);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shared.stopping.cancelled() => break,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!("pubsub-service accept: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let builder = builder.clone();
        let stopping = shared.stopping.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| router.clone().serve(req));
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stopping.cancelled() => {
                    // Let the streams send their UNAVAILABLE, then close.
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_millis(500), connection).await;
                }
            }
        });
    }
}

/// Leases expire (and may dead-letter) even when nobody pulls the subscription.
async fn expire_leases(shared: Arc<Shared>) {
    loop {
        let next = shared.lock().next_deadline();
        let cap = Instant::now() + Duration::from_millis(200);
        let wake = next.map_or(cap, |n| n.min(cap));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = shared.stopping.cancelled() => return,
        }
        shared.lock().tick(Instant::now());
    }
}

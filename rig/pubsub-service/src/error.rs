//! The service's errors: a gRPC code and a message, rendered as a `tonic::Status` for gRPC
//! and as Google's JSON error body for REST (<https://cloud.google.com/apis/design/errors>).

use std::sync::Arc;

use tonic::Code;

/// What the service answers when a request cannot be served. `source`, when set, is the error
/// underneath (a JSON parser's, a base64 decoder's), kept for callers that walk the chain.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", self.status_name())]
pub struct ServiceError {
    pub code: Code,
    pub message: String,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    /// Exactly-once delivery: the ack ids that failed, each reported as
    /// `PERMANENT_FAILURE_INVALID_ACK_ID` in an `ErrorInfo`, as the official clients read it
    /// (<https://cloud.google.com/pubsub/docs/exactly-once-delivery>).
    invalid_ack_ids: Vec<String>,
}

impl PartialEq for ServiceError {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code && self.message == other.message
    }
}

impl Eq for ServiceError {}

pub type Result<T> = std::result::Result<T, ServiceError>;

impl ServiceError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            source: None,
            invalid_ack_ids: Vec::new(),
        }
    }
    /// An exactly-once subscription refusing acks or deadline changes of `ack_ids`.
    pub fn invalid_ack_ids(ack_ids: Vec<String>) -> Self {
        let mut e = Self::invalid(
            "Some acknowledgement ids in the request were invalid. This could be because the acknowledgement ids have expired or the acknowledgement ids were malformed.",
        );
        e.invalid_ack_ids = ack_ids;
        e
    }
    /// The same error, keeping `source` as its cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    pub fn not_found(what: &str, name: &str) -> Self {
        Self::new(Code::NotFound, format!("{what} not found: {name}"))
    }
    pub fn already_exists(what: &str, name: &str) -> Self {
        Self::new(
            Code::AlreadyExists,
            format!("{what} already exists: {name}"),
        )
    }
    pub fn unsupported(what: &str) -> Self {
        Self::new(
            Code::Unimplemented,
            format!("{what} is not supported by pubsub-service (see docs/pubsub-service.md)"),
        )
    }

    /// The HTTP status Google's REST surface uses for this code.
    pub fn http_status(&self) -> u16 {
        match self.code {
            Code::Ok => 200,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::Unauthenticated => 401,
            Code::PermissionDenied => 403,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::ResourceExhausted => 429,
            Code::Cancelled => 499,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::DeadlineExceeded => 504,
            _ => 500,
        }
    }

    /// The canonical name (`NOT_FOUND`), as the REST error body's `status` carries it.
    pub fn status_name(&self) -> &'static str {
        match self.code {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    pub fn rest_body(&self) -> serde_json::Value {
        let mut error = serde_json::json!({
            "code": self.http_status(),
            "message": self.message,
            "status": self.status_name(),
        });
        if !self.invalid_ack_ids.is_empty() {
            let metadata: serde_json::Map<String, serde_json::Value> = self
                .invalid_ack_ids
                .iter()
                .map(|id| (id.clone(), PERMANENT_FAILURE.into()))
                .collect();
            error["details"] = serde_json::json!([{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": EXACTLY_ONCE_REASON,
                "domain": DOMAIN,
                "metadata": metadata,
            }]);
        }
        serde_json::json!({ "error": error })
    }
}

const EXACTLY_ONCE_REASON: &str = "EXACTLY_ONCE_ACKID_FAILURE";
const PERMANENT_FAILURE: &str = "PERMANENT_FAILURE_INVALID_ACK_ID";
const DOMAIN: &str = "pubsub.googleapis.com";

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        if e.invalid_ack_ids.is_empty() {
            return tonic::Status::new(e.code, e.message);
        }
        // google.rpc.Status with one google.rpc.ErrorInfo, in the grpc-status-details-bin
        // trailer the official clients decode.
        use prost::Message as _;
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
        let info = ErrorInfo {
            reason: EXACTLY_ONCE_REASON.into(),
            domain: DOMAIN.into(),
            metadata: e
                .invalid_ack_ids
                .iter()
                .map(|id| (id.clone(), PERMANENT_FAILURE.to_string()))
                .collect(),
        };
        let status = RpcStatus {
            code: e.code as i32,
            message: e.message.clone(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
                value: info.encode_to_vec(),
            }],
        };
        tonic::Status::with_details(e.code, e.message, status.encode_to_vec().into())
    }
}

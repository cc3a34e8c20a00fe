//! The service's errors: a gRPC code and a message, rendered as a `tonic::Status` for gRPC
//! and as Google's JSON error body for REST (<https://cloud.google.com/apis/design/errors>).

use tonic::Code;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    pub code: Code,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, ServiceError>;

impl ServiceError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
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
        serde_json::json!({
            "error": {
                "code": self.http_status(),
                "message": self.message,
                "status": self.status_name(),
            }
        })
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status_name(), self.message)
    }
}

impl std::error::Error for ServiceError {}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        tonic::Status::new(e.code, e.message)
    }
}

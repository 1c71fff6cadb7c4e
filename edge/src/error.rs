//! The one mapping from what went wrong to what a client sees: a JSON
//! `error` message on a WebSocket, a status code and JSON body over HTTP.
//! Causes are logged once here; clients get a plain message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What a client did wrong, or what failed on its behalf.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidMessage(String),
    /// An `action` (or message `type`) the endpoint does not have; every
    /// endpoint reports it with the one code `unknown_action`.
    #[error("unknown {field} {action:?}; expected one of: {expected}")]
    UnknownAction {
        /// `action` or `type`: the field the client named it in.
        field: &'static str,
        action: String,
        expected: &'static str,
    },
    #[error("binary messages are not supported; send JSON text")]
    BinaryMessage,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    LimitReached(String),
    #[error("{0}")]
    Unauthorized(crate::auth::AuthError),
    #[error("{0}")]
    Forbidden(crate::auth::AuthError),
    #[error("{service} service unavailable: {detail}")]
    Unavailable {
        service: &'static str,
        detail: String,
    },
    #[error("internal error")]
    Internal(String),
}

impl ClientError {
    /// A stable, machine-readable name for the error's kind.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::InvalidJson(_) => "invalid_json",
            ClientError::InvalidMessage(_) => "invalid_message",
            ClientError::UnknownAction { .. } => "unknown_action",
            ClientError::BinaryMessage => "unsupported_message",
            ClientError::NotFound(_) => "not_found",
            ClientError::LimitReached(_) => "limit_reached",
            ClientError::Unauthorized(_) => "unauthorized",
            ClientError::Forbidden(_) => "forbidden",
            ClientError::Unavailable { .. } => "service_unavailable",
            ClientError::Internal(_) => "internal",
        }
    }

    /// Maps a failed call to `service` onto what the client should see.
    pub fn from_status(service: &'static str, status: tonic::Status) -> Self {
        use tonic::Code;
        match status.code() {
            Code::NotFound => ClientError::NotFound(status.message().to_owned()),
            Code::ResourceExhausted => ClientError::LimitReached(status.message().to_owned()),
            Code::InvalidArgument => ClientError::InvalidMessage(status.message().to_owned()),
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Unknown => {
                tracing::warn!(service, code = ?status.code(), message = status.message(), "service call failed");
                ClientError::Unavailable {
                    service,
                    detail: status.message().to_owned(),
                }
            }
            _ => {
                tracing::error!(service, code = ?status.code(), message = status.message(), "service call failed");
                ClientError::Internal(status.message().to_owned())
            }
        }
    }

    fn http_status(&self) -> StatusCode {
        match self {
            ClientError::InvalidJson(_)
            | ClientError::InvalidMessage(_)
            | ClientError::UnknownAction { .. }
            | ClientError::BinaryMessage => StatusCode::BAD_REQUEST,
            ClientError::NotFound(_) => StatusCode::NOT_FOUND,
            ClientError::LimitReached(_) => StatusCode::TOO_MANY_REQUESTS,
            ClientError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ClientError::Forbidden(_) => StatusCode::FORBIDDEN,
            ClientError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ClientError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The JSON body of an HTTP error: FastAPI's `detail`, which the seed
/// systems' clients read, plus a machine-readable `code`.
#[derive(Serialize)]
struct HttpErrorBody {
    detail: String,
    code: &'static str,
}

/// An HTTP error response, counted in the client-error metrics (as the
/// connection driver counts the errors it sends).
impl IntoResponse for ClientError {
    fn into_response(self) -> Response {
        let code = self.code();
        switchboard_proto::metrics::metrics().client_error(code);
        let body = HttpErrorBody {
            detail: self.to_string(),
            code,
        };
        (self.http_status(), axum::Json(body)).into_response()
    }
}

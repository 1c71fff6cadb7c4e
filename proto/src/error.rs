//! What kind of failure an error is, and the one mapping from that kind to
//! a gRPC status code.
//!
//! Each layer keeps its own `thiserror` enum (the bus's `BusError`, the
//! registry's, the alerts', the counters'), with its causes as sources, and
//! says of each variant which [`ErrorCode`] it is ([`ServiceError`]). A
//! service turns its errors into a `tonic::Status` only at its gRPC server,
//! through [`status`] (or [`reply`], for a whole answer); code below the
//! server never builds a `Status`. The message a client reads is the
//! error's `Display`.

/// What kind of failure an error is: what a caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request is malformed or out of bounds: retrying it is useless
    /// (gRPC `INVALID_ARGUMENT`).
    InvalidArgument,
    /// What the request names does not exist, or no longer does
    /// (`NOT_FOUND`).
    NotFound,
    /// A limit was reached: a user's connections, a store's size
    /// (`RESOURCE_EXHAUSTED`).
    LimitReached,
    /// Concurrent writers kept winning, past the retries a write allows
    /// (`ABORTED`, as gRPC defines it for concurrency conflicts).
    Contended,
    /// A dependency (NATS, another service) failed or did not answer: try
    /// again (`UNAVAILABLE`).
    Unavailable,
    /// Stored state is not what this version can read, or a bug
    /// (`INTERNAL`).
    Internal,
}

impl ErrorCode {
    /// The gRPC status code a client gets for this kind of failure.
    pub fn grpc(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::LimitReached => tonic::Code::ResourceExhausted,
            ErrorCode::Contended => tonic::Code::Aborted,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }
}

/// An error that knows what kind of failure it is.
pub trait ServiceError: std::error::Error {
    /// The kind of failure, which decides the status code a client sees.
    fn error_code(&self) -> ErrorCode;
}

/// The gRPC status for `error`: its kind's code, its message as the status
/// message. The one place a service error becomes a `Status`; a server
/// calls it on whatever its operations return (`.map_err(status)`).
pub fn status(error: impl ServiceError) -> tonic::Status {
    tonic::Status::new(error.error_code().grpc(), error.to_string())
}

/// The answer to a gRPC call whose operation ended with `outcome`: the
/// value as the response, or the error's [`status`].
pub fn reply<T>(
    outcome: Result<T, impl ServiceError>,
) -> Result<tonic::Response<T>, tonic::Status> {
    outcome.map(tonic::Response::new).map_err(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("session s1 not found")]
    struct Missing;

    impl ServiceError for Missing {
        fn error_code(&self) -> ErrorCode {
            ErrorCode::NotFound
        }
    }

    #[test]
    fn a_status_has_the_kind_s_code_and_the_error_s_message() {
        let status = status(Missing);
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "session s1 not found");
    }
}

//! Why a connection ends, and what the client is told: the one table of
//! close codes (RFC 6455 section 7.4) and their reasons, for every endpoint.

use std::fmt;
use std::time::Duration;

use crate::auth::AuthError;

/// Why the server ends a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// The conversation is over: `stop`, a terminated or timed-out session,
    /// a connection replaced by a newer one (1000).
    Done(String),
    /// No heartbeat within the timeout (1001).
    NoHeartbeat(Duration),
    /// The client broke the WebSocket protocol (1002).
    Protocol,
    /// A text message that is not UTF-8 (1007).
    NotUtf8,
    /// The token was refused (1008).
    Unauthorized(AuthError),
    /// A per-user connection limit (1008).
    LimitReached(String),
    /// More messages per second than allowed (1008).
    RateLimited { per_second: u32 },
    /// The client did not read: its queue overflowed, or a write stalled
    /// (1008).
    TooSlow { queued: usize },
    /// A message over the size limit (1009).
    TooBig { limit: usize },
    /// The edge is draining: reconnect, to another instance (1012).
    Restart,
    /// A service the connection needs is unavailable: try again later
    /// (1013).
    Unavailable(&'static str),
}

impl Close {
    /// The close code.
    pub fn code(&self) -> u16 {
        match self {
            Close::Done(_) => 1000,
            Close::NoHeartbeat(_) => 1001,
            Close::Protocol => 1002,
            Close::NotUtf8 => 1007,
            Close::Unauthorized(_)
            | Close::LimitReached(_)
            | Close::RateLimited { .. }
            | Close::TooSlow { .. } => 1008,
            Close::TooBig { .. } => 1009,
            Close::Restart => 1012,
            Close::Unavailable(_) => 1013,
        }
    }
}

/// The close reason: short, one wording per cause (a close frame holds at
/// most 123 bytes of it).
impl fmt::Display for Close {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Close::Done(reason) => formatter.write_str(reason),
            Close::NoHeartbeat(timeout) => {
                write!(
                    formatter,
                    "no heartbeat for {} seconds",
                    timeout.as_secs_f64()
                )
            }
            Close::Protocol => formatter.write_str("websocket protocol error"),
            Close::NotUtf8 => formatter.write_str("text message is not UTF-8"),
            Close::Unauthorized(reason) => write!(formatter, "{reason}"),
            Close::LimitReached(reason) => formatter.write_str(reason),
            Close::RateLimited { per_second } => write!(
                formatter,
                "rate limit exceeded: at most {per_second} messages per second"
            ),
            Close::TooSlow { queued } => {
                write!(formatter, "too slow: more than {queued} messages unread")
            }
            Close::TooBig { limit } => {
                write!(formatter, "message too big: the limit is {limit} bytes")
            }
            Close::Restart => formatter.write_str("server restarting: reconnect"),
            Close::Unavailable(what) => write!(formatter, "{what} unavailable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_fits_a_close_frame() {
        let closes = [
            Close::Done("session terminated".into()),
            Close::NoHeartbeat(Duration::from_secs(60)),
            Close::Protocol,
            Close::NotUtf8,
            Close::Unauthorized(AuthError::AlgorithmNotAccepted),
            Close::LimitReached("connection limit reached: at most 5 connections per user".into()),
            Close::RateLimited { per_second: 10 },
            Close::TooSlow { queued: 256 },
            Close::TooBig { limit: 65536 },
            Close::Restart,
            Close::Unavailable("session service"),
        ];
        for close in closes {
            assert!(close.to_string().len() <= 123, "{close}");
            assert!((1000..=1013).contains(&close.code()));
        }
    }
}

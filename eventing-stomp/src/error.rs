//! The provider's own errors, and how they map to [`eventing::Error`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::FrameError;

/// The provider name used in [`eventing::Error`]s.
pub(crate) const PROVIDER: &str = "stomp";

/// Longest broker text kept in an error.
const MAX_TEXT: usize = 2000;

/// An `ERROR` frame: the broker's `message` header and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerError {
    /// The `message` header (a short summary, e.g. `not_found`).
    pub message: String,
    /// The body (details), lossily decoded and trimmed.
    pub body: String,
}

impl BrokerError {
    /// Reads an `ERROR` frame.
    pub(crate) fn from_frame(frame: &crate::frame::Frame) -> BrokerError {
        BrokerError {
            message: clip(frame.get("message").unwrap_or("(no message header)").trim()),
            body: clip(String::from_utf8_lossy(&frame.body).trim()),
        }
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if !self.body.is_empty() && self.body != self.message {
            write!(f, ": {}", self.body)?;
        }
        Ok(())
    }
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// What can go wrong in the STOMP provider. Messages name the broker as
/// `host:port`, never with credentials.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StompError {
    /// The URL is malformed or has an unknown parameter.
    #[error("invalid STOMP URL: {reason}")]
    InvalidUrl {
        /// What is wrong (the URL itself is not repeated).
        reason: String,
    },
    /// The TCP connection could not be made.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// `host:port`.
        endpoint: String,
        /// The I/O error.
        reason: String,
    },
    /// TLS setup or handshake failed.
    #[error("TLS with {endpoint}: {reason}")]
    Tls {
        /// `host:port`.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// `stomps://` was asked for but the crate was built without TLS.
    #[error("stomps:// needs eventing-stomp's `rustls` feature")]
    TlsNotBuilt,
    /// The broker answered `CONNECT` with an `ERROR` frame (bad credentials,
    /// unknown virtual host, ...).
    #[error("{endpoint} refused the STOMP session: {error}")]
    ConnectRefused {
        /// `host:port`.
        endpoint: String,
        /// The broker's `ERROR` frame.
        error: BrokerError,
    },
    /// The broker sent an `ERROR` frame.
    #[error("broker error: {0}")]
    Broker(BrokerError),
    /// The peer sent bytes that are not STOMP 1.2, or a frame over the limits.
    #[error("bad frame from the broker: {0}")]
    Frame(Arc<FrameError>),
    /// The message cannot be sent as it is (e.g. a header name RabbitMQ
    /// cannot store); refused before it reaches the broker.
    #[error("cannot send this message: {reason}")]
    Unsendable {
        /// Why.
        reason: String,
    },
    /// A frame could not be encoded (too large, too many headers, ...).
    #[error("cannot encode frame: {0}")]
    Encode(Arc<FrameError>),
    /// Nothing arrived from the broker for longer than the heart-beat window.
    #[error("no data or heart-beat from the broker for {after:?}: connection lost")]
    HeartbeatTimeout {
        /// The window.
        after: Duration,
    },
    /// The connection is closed (by the broker, an I/O error, or `close`).
    #[error("STOMP connection closed: {reason}")]
    Closed {
        /// Why.
        reason: String,
    },
    /// An operation did not complete in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        operation: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The broker sent a frame the protocol does not allow here (such as a
    /// `MESSAGE` of a client-acknowledged subscription without an `ack` header).
    #[error("the broker broke the STOMP protocol: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },
    /// Declaring topology over AMQP 0-9-1 failed (RabbitMQ exchanges).
    #[error("declaring topology over AMQP at {endpoint}: {reason}")]
    Topology {
        /// `host:port` of the AMQP listener.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// The broker refused a topology operation (AMQP reply code and text, such
    /// as `406 PRECONDITION_FAILED - inequivalent arg 'type'`).
    #[error("broker refused {operation}: {code} {text}")]
    TopologyRefused {
        /// What was asked (`declare exchange "x"`).
        operation: String,
        /// AMQP reply code.
        code: u16,
        /// AMQP reply text.
        text: String,
    },
}

impl StompError {
    /// Whether a new connection attempt may succeed (the broker is down or
    /// unreachable), as opposed to a configuration or authorization problem.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StompError::Connect { .. }
                | StompError::HeartbeatTimeout { .. }
                | StompError::Closed { .. }
                | StompError::Timeout { .. }
                | StompError::Frame(_)
        )
    }

    /// The runtime's error for this one.
    pub fn into_eventing(self) -> eventing::Error {
        match self {
            StompError::InvalidUrl { reason } => eventing::Error::InvalidUrl { reason },
            StompError::Timeout { operation, after } => {
                eventing::Error::Timeout { operation, after }
            }
            StompError::Connect { .. }
            | StompError::HeartbeatTimeout { .. }
            | StompError::Closed { .. }
            | StompError::Frame(_) => eventing::Error::Unavailable {
                provider: PROVIDER,
                reason: self.to_string(),
            },
            other => eventing::Error::provider(PROVIDER, other),
        }
    }
}

impl From<StompError> for eventing::Error {
    fn from(error: StompError) -> Self {
        error.into_eventing()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Command, Frame};

    #[test]
    fn broker_error_carries_message_and_body() {
        let frame = Frame::new(Command::Error)
            .header("message", "not_found")
            .with_body("NOT_FOUND - no exchange 'x' in vhost '/'\n");
        let error = BrokerError::from_frame(&frame);
        assert_eq!(error.message, "not_found");
        assert_eq!(error.body, "NOT_FOUND - no exchange 'x' in vhost '/'");
        assert_eq!(
            error.to_string(),
            "not_found: NOT_FOUND - no exchange 'x' in vhost '/'"
        );
        let long = Frame::new(Command::Error).with_body(vec![b'x'; 5000]);
        assert!(BrokerError::from_frame(&long).body.len() < 2100);
    }

    #[test]
    fn mapping_to_runtime_errors() {
        let lost = StompError::HeartbeatTimeout {
            after: Duration::from_secs(2),
        };
        assert!(lost.is_transient());
        assert!(matches!(
            lost.into_eventing(),
            eventing::Error::Unavailable {
                provider: "stomp",
                ..
            }
        ));
        let broker = StompError::Broker(BrokerError {
            message: "m".into(),
            body: "b".into(),
        });
        assert!(!broker.is_transient());
        let mapped = broker.into_eventing();
        assert!(matches!(mapped, eventing::Error::Provider { .. }));
        assert_eq!(mapped.to_string(), "provider `stomp`: broker error: m: b");
        assert!(matches!(
            StompError::Timeout {
                operation: "x",
                after: Duration::ZERO
            }
            .into_eventing(),
            eventing::Error::Timeout { operation: "x", .. }
        ));
    }
}

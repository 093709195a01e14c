//! This crate's errors, and how broker failures map onto [`eventing::Error`].

use eventing::Error;
use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::ShortString;

/// The provider's name in logs and errors.
pub(crate) const PROVIDER: &str = "amqp";

/// What went wrong on the AMQP side. It travels as the `source` of
/// [`eventing::Error::Provider`]; downcast to it for details.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// An AMQP operation on a queue, exchange or channel failed.
    #[error("{operation} `{target}` failed: {source}")]
    Operation {
        /// What was attempted (`"declaring queue"`, `"publishing to"`, ...).
        operation: &'static str,
        /// The queue, exchange or consumer it was attempted on.
        target: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker refused to declare a queue or exchange because of a conflict.
    #[error("{operation} `{target}` failed: {hint}: {source}")]
    Declaration {
        /// What was attempted.
        operation: &'static str,
        /// The queue or exchange.
        target: String,
        /// The likely cause.
        hint: &'static str,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// A queue name, exchange name or header name is longer than AMQP's 255 bytes.
    #[error("{what} `{name}` is {len} bytes long; AMQP allows at most 255")]
    NameTooLong {
        /// What kind of name.
        what: &'static str,
        /// The name (cut to 64 characters).
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The broker returned a dead letter as unroutable: its queue is gone.
    #[error("dead-letter queue `{queue}` does not exist; the broker returned the message")]
    Unroutable {
        /// The dead-letter queue.
        queue: String,
    },
}

/// Wraps a lapin error with what was being done. Connection-level failures become
/// [`Error::Unavailable`], the rest [`Error::Provider`] with an [`AmqpError`].
pub(crate) fn broker(operation: &'static str, target: &str, source: lapin::Error) -> Error {
    if is_connection_error(&source) {
        Error::Unavailable {
            provider: PROVIDER,
            reason: format!("{operation} `{target}`: {source}"),
        }
    } else {
        Error::provider(
            PROVIDER,
            AmqpError::Operation {
                operation,
                target: target.to_string(),
                source,
            },
        )
    }
}

/// True when the connection (not just a channel) is gone or unusable.
pub(crate) fn is_connection_error(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::IOError(_)
            | ErrorKind::InvalidConnectionState(_)
            | ErrorKind::MissingHeartbeatError
            | ErrorKind::RuntimeShutdownError(_)
    ) || error.is_amqp_hard_error()
}

/// True for the broker's 404 NOT_FOUND (no such queue or exchange).
pub(crate) fn is_not_found(error: &lapin::Error) -> bool {
    soft_error(error) == Some(AMQPSoftError::NOTFOUND)
}

/// The channel-level AMQP error code of `error`, if it is one.
pub(crate) fn soft_error(error: &lapin::Error) -> Option<AMQPSoftError> {
    match error.kind() {
        ErrorKind::ProtocolError(e) => match e.kind() {
            AMQPErrorKind::Soft(soft) => Some(soft.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

/// A name as an AMQP short string, or a typed error if it is too long.
pub(crate) fn short(what: &'static str, name: &str) -> Result<ShortString, Error> {
    ShortString::try_new(name).map_err(|_| {
        Error::provider(
            PROVIDER,
            AmqpError::NameTooLong {
                what,
                name: name.chars().take(64).collect(),
                len: name.len(),
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_typed_errors_not_panics() {
        assert!(short("queue", "q").is_ok());
        let long = "x".repeat(300);
        let error = short("queue", &long).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("300 bytes"), "{text}");
        assert!(text.len() < 200, "the name is cut: {text}");
    }

    #[test]
    fn io_errors_mean_unavailable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = broker("connecting to", "127.0.0.1:5672", lapin::Error::from(io));
        assert!(
            matches!(
                error,
                Error::Unavailable {
                    provider: "amqp",
                    ..
                }
            ),
            "{error:?}"
        );
    }
}

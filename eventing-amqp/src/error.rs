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
    /// A durable message was published on a channel that did not confirm it: it is
    /// not reported as sent.
    #[error("publishing to `{target}`: the channel gave no publisher confirm")]
    NotConfirmed {
        /// The exchange or queue.
        target: String,
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

/// True when the channel an operation used is gone: closed or closing, because
/// the broker closed it (a channel error) or because its connection dropped.
/// Another channel may work.
pub(crate) fn is_channel_lost(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::InvalidChannelState(..) | ErrorKind::InvalidChannel(_)
    )
}

/// True when a publish that failed with `error` may succeed if made again on a
/// fresh channel, or a fresh connection once the broker is back: the connection
/// was lost or closed by the broker (I/O errors, a missed heartbeat, connection
/// errors such as 320 CONNECTION_FORCED when the broker shuts down), the channel
/// was closed under the publish, or the broker closed the channel because the
/// exchange was deleted (404 NOT_FOUND; a new channel declares it again).
///
/// Errors that would come back the same on every attempt are not retried: access
/// refused (403), precondition failed (406, e.g. a message over the broker's size
/// limit), frame and parsing errors, too many channels.
pub(crate) fn is_retryable(error: &lapin::Error) -> bool {
    is_connection_error(error) || is_channel_lost(error) || is_not_found(error)
}

/// [`is_retryable`] for a failure already turned into an [`eventing::Error`]
/// (opening a channel, declaring an exchange): `Unavailable` and `Timeout` are, a
/// wrapped lapin error is if its cause is, everything else is not.
pub(crate) fn is_retryable_error(error: &Error) -> bool {
    match error {
        Error::Unavailable { .. } | Error::Timeout { .. } => true,
        Error::Provider { source, .. } => match source.downcast_ref::<AmqpError>() {
            Some(AmqpError::Operation { source, .. }) => is_retryable(source),
            _ => false,
        },
        _ => false,
    }
}

/// A short name for the kind of a lapin error, for logs.
pub(crate) fn kind_name(error: &lapin::Error) -> &'static str {
    match error.kind() {
        ErrorKind::IOError(_) => "io",
        ErrorKind::InvalidConnectionState(_) => "invalid-connection-state",
        ErrorKind::InvalidChannelState(..) => "invalid-channel-state",
        ErrorKind::InvalidChannel(_) => "invalid-channel",
        ErrorKind::MissingHeartbeatError => "missing-heartbeat",
        ErrorKind::RuntimeShutdownError(_) => "runtime-shutdown",
        ErrorKind::ProtocolError(e) => match e.kind() {
            AMQPErrorKind::Hard(_) => "amqp-connection-error",
            AMQPErrorKind::Soft(_) => "amqp-channel-error",
        },
        ErrorKind::ChannelsLimitReached => "channels-limit",
        ErrorKind::ParsingError(_) => "parsing",
        ErrorKind::SerialisationError(_) => "serialisation",
        _ => "other",
    }
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

    fn protocol(id: u16, text: &str) -> lapin::Error {
        let error = lapin::protocol::AMQPError::from_id(id, text.into()).expect("a known code");
        lapin::Error::from(ErrorKind::ProtocolError(error))
    }

    fn channel_state(state: lapin::ChannelState, context: &'static str) -> lapin::Error {
        lapin::Error::from(ErrorKind::InvalidChannelState(state, context))
    }

    #[test]
    fn lost_connections_and_channels_are_retried() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let retried = [
            lapin::Error::from(io),
            lapin::Error::from(ErrorKind::InvalidConnectionState(
                lapin::ConnectionState::Closing,
            )),
            lapin::Error::from(ErrorKind::MissingHeartbeatError),
            // RabbitMQ shutting down (`rabbitmqctl stop_app`).
            protocol(
                320,
                "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
            ),
            // A publish racing the connection's close: the channel is already
            // closing when basic.publish runs, or closed before its confirm came.
            channel_state(lapin::ChannelState::Closing, "basic.publish"),
            channel_state(lapin::ChannelState::Closed, "channel.close-ok received"),
            channel_state(lapin::ChannelState::Error, "basic.publish"),
            lapin::Error::from(ErrorKind::InvalidChannel(7)),
            // The exchange was deleted under the channel: a new channel declares it.
            protocol(404, "NOT_FOUND - no exchange 'e' in vhost '/'"),
        ];
        for error in &retried {
            assert!(is_retryable(error), "{error}");
            let wrapped = broker("publishing to exchange", "e", error.clone());
            assert!(is_retryable_error(&wrapped), "{wrapped}");
        }
        // Channel states are exactly what the old classification missed: the
        // publish failed with a provider error and the sender gave up on it.
        let closing = channel_state(lapin::ChannelState::Closing, "basic.publish");
        assert!(!is_connection_error(&closing));
        assert!(is_channel_lost(&closing));
    }

    #[test]
    fn errors_that_would_repeat_are_not_retried() {
        let not_retried = [
            protocol(403, "ACCESS_REFUSED - access to exchange 'e' refused"),
            protocol(
                406,
                "PRECONDITION_FAILED - message size 200000000 is larger than configured max size",
            ),
            lapin::Error::from(ErrorKind::ChannelsLimitReached),
        ];
        for error in &not_retried {
            assert!(!is_retryable(error), "{error}");
            let wrapped = broker("publishing to exchange", "e", error.clone());
            assert!(!is_retryable_error(&wrapped), "{wrapped}");
        }
        let too_long = short("exchange", &"x".repeat(300)).unwrap_err();
        assert!(!is_retryable_error(&too_long));
        let refused = Error::Refused {
            provider: PROVIDER,
            address: "e".into(),
            message_id: "m".into(),
            reason: "nack".into(),
        };
        assert!(!is_retryable_error(&refused));
        let conflict = Error::provider(
            PROVIDER,
            AmqpError::Declaration {
                operation: "declaring exchange",
                target: "e".into(),
                hint: "it exists with other settings",
                source: protocol(406, "PRECONDITION_FAILED - inequivalent arg 'durable'"),
            },
        );
        assert!(!is_retryable_error(&conflict));
        let timeout = Error::Timeout {
            operation: "connecting to the AMQP broker",
            after: std::time::Duration::from_secs(1),
        };
        assert!(is_retryable_error(&timeout));
    }

    #[test]
    fn kinds_are_named_for_logs() {
        assert_eq!(
            kind_name(&channel_state(
                lapin::ChannelState::Closing,
                "basic.publish"
            )),
            "invalid-channel-state"
        );
        assert_eq!(kind_name(&protocol(320, "forced")), "amqp-connection-error");
        assert_eq!(kind_name(&protocol(404, "not found")), "amqp-channel-error");
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

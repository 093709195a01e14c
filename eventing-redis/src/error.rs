//! This provider's own failures, carried as the source of [`eventing::Error`]s.

use std::time::Duration;

use eventing::Error;

/// What went wrong talking to Redis, beyond "unreachable" (which is
/// [`Error::Unavailable`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// The server refused a command.
    #[error("{operation}: Redis answered {code}: {detail}")]
    Server {
        /// What the provider was doing.
        operation: &'static str,
        /// The error code (`ERR`, `WRONGTYPE`, `NOGROUP`, ...).
        code: String,
        /// The rest of the server's message.
        detail: String,
    },
    /// A reply of a shape the provider does not expect (a key of another type, a
    /// server of another kind).
    #[error("{operation}: unexpected reply from Redis")]
    Reply {
        /// What the provider was doing.
        operation: &'static str,
    },
    /// A stream is at its `maxlen` bound and its consumer groups have not
    /// acknowledged enough entries to trim it.
    #[error(
        "stream `{stream}` holds {maxlen} entries or more (`maxlen`) that its consumer groups have not all acknowledged; waited {waited:?}"
    )]
    StreamFull {
        /// The stream key.
        stream: String,
        /// The bound.
        maxlen: u64,
        /// How long the send waited for room.
        waited: Duration,
    },
    /// A durable send reached the master, but not enough replicas confirmed it.
    #[error(
        "the entry is on the master but {confirmed} of {wanted} replicas confirmed it within {timeout:?} (WAIT, until the send timeout)"
    )]
    Replicas {
        /// Replicas that confirmed.
        confirmed: i64,
        /// Replicas asked for (`replicas`).
        wanted: u32,
        /// How long the send waited for them.
        timeout: Duration,
    },
}

pub(crate) fn unavailable(reason: impl Into<String>) -> Error {
    Error::Unavailable {
        provider: crate::NAME,
        reason: reason.into(),
    }
}

pub(crate) fn provider(error: RedisError) -> Error {
    Error::Provider {
        provider: crate::NAME,
        source: Box::new(error),
    }
}

/// True for client errors that mean "not reachable right now" (worth a reconnect
/// and a retry): I/O, a dropped connection, a timeout, and the server states that
/// pass (`LOADING`, `READONLY` after a failover, `MASTERDOWN`, `TRYAGAIN`, `BUSY`).
pub(crate) fn transient(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.code(),
            Some("LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "BUSY" | "CLUSTERDOWN")
        )
        || matches!(
            error.kind(),
            redis::ErrorKind::MasterNameNotFoundBySentinel | redis::ErrorKind::EmptySentinelList
        )
}

/// Maps a client error: transient ones to [`Error::Unavailable`], the rest to a
/// [`RedisError::Server`]. The client's messages hold no credentials.
pub(crate) fn from_redis(operation: &'static str, error: &redis::RedisError) -> Error {
    if transient(error) {
        return unavailable(format!("{operation}: {error}"));
    }
    provider(RedisError::Server {
        operation,
        code: error.code().unwrap_or("ERR").to_string(),
        detail: error
            .detail()
            .map_or_else(|| error.to_string(), str::to_string),
    })
}

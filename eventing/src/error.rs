//! The runtime's error type.

use std::time::Duration;

/// A boxed error from user code (a listener or a pipeline) or a provider.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the runtime. Messages name the event, listener,
/// queue or provider involved; URLs in messages never carry credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event could not be serialized.
    #[error("cannot encode event `{event}`: {source}")]
    Encode {
        /// Event name.
        event: String,
        /// The codec's error.
        #[source]
        source: BoxError,
    },
    /// A body could not be decoded into the event type.
    #[error("cannot decode body of event `{event}` ({content_type}): {reason}")]
    Decode {
        /// Event name.
        event: String,
        /// Content type of the body.
        content_type: String,
        /// What the codec said.
        reason: String,
    },
    /// A pipeline refused an envelope.
    #[error("pipeline `{pipeline}` refused the envelope: {source}")]
    Pipeline {
        /// The pipeline's name.
        pipeline: &'static str,
        /// Its error.
        #[source]
        source: BoxError,
    },
    /// Two event types registered the same event name.
    #[error(
        "two event types are registered as event `{name}`: `{first}` and `{second}`; give one of them another name with #[event(name = \"...\")]"
    )]
    DuplicateEvent {
        /// The shared name.
        name: String,
        /// One type.
        first: &'static str,
        /// The other type.
        second: &'static str,
    },
    /// Two listener types registered the same listener name for one event.
    #[error(
        "two listener types are registered as listener `{name}` of event `{event}`: `{first}` and `{second}`; rename one with #[event_listener(..., name = \"...\")]"
    )]
    DuplicateListener {
        /// Event name.
        event: String,
        /// Listener name.
        name: String,
        /// One type.
        first: &'static str,
        /// The other type.
        second: &'static str,
    },
    /// A listener has state, so the runtime cannot construct it, and no instance was bound.
    #[error(
        "listener `{listener}` (`{type_name}`) has state and no instance is bound: call EventManagerBuilder::listener with an instance, or deselect it"
    )]
    ListenerNotBound {
        /// Listener name.
        listener: &'static str,
        /// Listener type.
        type_name: &'static str,
    },
    /// An event's name uses a `{placeholder}` the manager has no value for.
    #[error(
        "event name `{name}` uses `{{{placeholder}}}`, which the manager does not define (EventManagerBuilder::var)"
    )]
    UnresolvedName {
        /// The template.
        name: String,
        /// The missing placeholder.
        placeholder: String,
    },
    /// No provider is registered for the URL's scheme.
    #[error(
        "no provider for scheme `{scheme}://` is linked into this binary (known: {known}); enable the provider's cargo feature and reference its crate (`use eventing_amqp as _;`)"
    )]
    UnknownScheme {
        /// The scheme asked for.
        scheme: String,
        /// The schemes that are registered.
        known: String,
    },
    /// A provider URL is malformed. The URL itself is not repeated, so credentials in it cannot leak.
    #[error("invalid provider URL: {reason}")]
    InvalidUrl {
        /// What is wrong with it.
        reason: String,
    },
    /// The broker is unreachable or the connection is down.
    #[error("provider `{provider}` unavailable: {reason}")]
    Unavailable {
        /// Provider name.
        provider: &'static str,
        /// Why.
        reason: String,
    },
    /// The broker refused a durable message (a nack or an ERROR frame).
    #[error("provider `{provider}` refused message {message_id} for `{address}`: {reason}")]
    Refused {
        /// Provider name.
        provider: &'static str,
        /// The event address.
        address: String,
        /// Message id.
        message_id: String,
        /// The broker's reason.
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
    /// A body or frame is over the configured limit.
    #[error("message for `{address}` is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The event address.
        address: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Any other provider failure.
    #[error("provider `{provider}`: {source}")]
    Provider {
        /// Provider name.
        provider: &'static str,
        /// Its error.
        #[source]
        source: BoxError,
    },
    /// `start()` was called on a manager that already started.
    #[error("event manager: start() was called twice (or raced with another start())")]
    AlreadyStarted,
    /// The manager was shut down; it sends and starts no more.
    #[error("event manager: {operation} after shutdown()")]
    ShutDown {
        /// What was asked (`"send_event()"`, `"start()"`).
        operation: &'static str,
    },
    /// A bound listener instance is not of the type its registration names.
    #[error("listener `{listener}`: the bound instance is not a `{type_name}`")]
    WrongListenerInstance {
        /// Listener name.
        listener: &'static str,
        /// The type it was registered as.
        type_name: &'static str,
    },
    /// No listener (of this manager, or of the registry) uses the queue named.
    #[error("no listener uses queue `{queue}` (see the topology)")]
    UnknownQueue {
        /// The queue asked for.
        queue: String,
    },
    /// No registered event has the name given.
    #[error("no registered event is named `{name}` (see the registry)")]
    UnknownEvent {
        /// The name asked for.
        name: String,
    },
    /// The queue does not exist on the broker (for example a per-process queue whose
    /// server is not running), so messages cannot be put onto it.
    #[error("queue `{queue}` does not exist on the broker")]
    QueueNotFound {
        /// The queue.
        queue: String,
    },
    /// Replaying dead letters failed after some of them were moved.
    #[error("replay of the dead letters of `{queue}` stopped after {moved} moved: {source}")]
    ReplayInterrupted {
        /// The queue.
        queue: String,
        /// How many letters were moved before the failure.
        moved: usize,
        /// What stopped it.
        #[source]
        source: Box<Error>,
    },
    /// The operation is not supported by this provider.
    #[error("provider `{provider}` does not support {operation}")]
    Unsupported {
        /// Provider name.
        provider: &'static str,
        /// What was asked.
        operation: &'static str,
    },
    /// A run-time subscription's name is taken by another listener of the event
    /// (compiled, or another subscription of this manager).
    #[error(
        "listener `{name}` of event `{event}` exists already ({existing}); choose another name, or SubscribeOptions::compete_with_existing() to share its queue"
    )]
    ListenerNameTaken {
        /// Event address.
        event: String,
        /// The listener name asked for.
        name: String,
        /// Who has it (a type name or a subscription id), and why sharing is not possible if it is not.
        existing: String,
    },
    /// A run-time subscription's name is unusable in a queue name.
    #[error("listener name `{name}` {reason}")]
    InvalidListenerName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No active subscription of this manager has this id (it was unsubscribed
    /// already, or never made here).
    #[error("subscription {id} is not active: unsubscribed already, or not made by this manager")]
    UnknownSubscription {
        /// The id asked for.
        id: u64,
    },
    /// A listener function takes `State<T>` and the manager has no `T`.
    #[error(
        "listener `{listener}` (`{type_name}`) takes `State<{state}>` and the manager has none: call EventManagerBuilder::state with a value, or deselect it"
    )]
    StateNotProvided {
        /// Listener name.
        listener: &'static str,
        /// The listener function's path.
        type_name: &'static str,
        /// The state's type.
        state: &'static str,
    },
}

impl Error {
    /// Wraps a provider's own error.
    pub fn provider(provider: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Provider {
            provider,
            source: source.into(),
        }
    }
}

/// Replaces the password (and user info) of a URL with `***` for logs and errors.
///
/// ```
/// assert_eq!(
///     eventing::redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
///     "amqp://***@127.0.0.1:5672/%2f"
/// );
/// assert_eq!(eventing::redact_url("memory://"), "memory://");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://***{}", &url[..scheme_end], &rest[at..]),
        None => url.to_string(),
    }
}

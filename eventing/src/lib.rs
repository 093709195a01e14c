#![doc = include_str!("docs/crate.md")]

pub mod asyncapi;
pub mod backoff;
#[cfg(feature = "cli")]
pub mod cli;
mod codec;
mod envelope;
mod error;
mod event;
mod eventlog;
mod listener;
mod manager;
mod memory;
pub mod metrics;
mod pipeline;
pub mod provider;
pub mod registry;
mod topology;
mod trace;

#[doc(hidden)]
pub mod __private;

pub use eventing_macros::{event, event_listener};
pub use futures_util::future::BoxFuture;

pub use codec::{CBOR, Codec, JSON, MSGPACK};
pub use envelope::{Envelope, Headers, header, new_message_id, now_rfc3339};
pub use error::{BoxError, Error, Result, redact_url};
pub use event::{Event, EventDescriptor};
pub use eventlog::{
    CALL_CHAIN, CALL_ID, EVENT_TYPE, EventLogConfig, EventLogEntry, EventLogPipeline, SERVICE,
    current_call_chain,
};
pub use listener::{Context, EventListener, ListenerDescriptor, ListenerResult};
pub use manager::{
    EventManager, EventManagerBuilder, Health, ListenerHealth, ListenerOptions, ListenerState,
    RetryPolicy, Stats, URL_VARIABLE, WeakManager,
};
pub use memory::{DEFAULT_MAX_QUEUE_LEN, MemoryProvider};
pub use pipeline::{
    Call, EnvelopePipeline, Outcome, SessionPipeline, current_session, with_session,
};
pub use provider::{
    Acker, Capabilities, ConnectFuture, ConsumeOptions, Consumer, Delivery, DynProvider, Provider,
    ProviderConfig, ProviderFactory, Route, connect,
};
pub use topology::{EventInfo, QueueSpec, SINGLETON, Topology, queue_name};
pub use trace::{
    TRACEPARENT, TRACESTATE, TraceContext, TraceContextPipeline, current_trace, with_trace,
};

#![doc = include_str!("docs/crate.md")]

//! # Layout
//!
//! The crate root holds what an application writes daily: the [`event`] and
//! [`event_listener`] macros, [`Event`], [`EventListener`], [`Context`],
//! [`EventManager`] and its builder, [`Envelope`], [`Error`] and [`Result`]. The rest
//! lives in named modules: [`provider`] (the transport contract), [`memory`] (the
//! in-process provider), [`pipeline`], [`header`], [`trace`], [`eventlog`],
//! [`topology`], [`codec`], [`manager`] (health and statistics), [`backoff`],
//! [`registry`], [`metrics`], [`asyncapi`] and, with the `cli` feature, [`cli`].

pub mod asyncapi;
pub mod backoff;
mod call;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
mod envelope;
mod error;
mod event;
pub mod eventlog;
mod listener;
pub mod manager;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod provider;
pub mod registry;
pub mod topology;
pub mod trace;

#[doc(hidden)]
pub mod __private;

pub use eventing_macros::{event, event_listener};
pub use futures_util::future::BoxFuture;

pub use envelope::{Envelope, Headers, header};
pub use error::{BoxError, Error, Result, redact_url};
pub use event::{Event, EventDescriptor};
pub use listener::{
    Context, EventListener, ListenerDescriptor, ListenerFn, ListenerOrigin, ListenerResult, State,
};
pub use manager::{
    EventManager, EventManagerBuilder, ListenerOptions, RetryPolicy, SubscribeOptions, Subscription,
};

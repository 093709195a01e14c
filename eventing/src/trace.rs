//! W3C Trace Context (`traceparent`) across events.
//!
//! [`TraceContextPipeline`] puts the current trace in a `traceparent` header on send
//! (a child of the current one, or a new trace) and makes the received one current
//! while the listener runs, so an event sent from a listener continues the trace:
//! a chain A -> B -> C shares one trace id. The handling span records `trace_id`.

use std::fmt;
use std::future::Future;

use crate::envelope::Envelope;
use crate::error::BoxError;
use crate::event::EventDescriptor;
use crate::listener::ListenerDescriptor;
use crate::pipeline::{Call, EnvelopePipeline};

/// The header name.
pub const TRACEPARENT: &str = "traceparent";

/// A trace id, a parent (span) id and flags, as in a `traceparent` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

impl TraceContext {
    /// A new trace (random ids, sampled).
    pub fn new_root() -> Self {
        let random = uuid::Uuid::new_v4().as_u128();
        let span = uuid::Uuid::new_v4().as_u64_pair().0;
        Self {
            trace_id: random.max(1),
            span_id: span.max(1),
            flags: 1,
        }
    }

    /// A child in the same trace, with a new span id.
    pub fn child(&self) -> Self {
        Self {
            span_id: uuid::Uuid::new_v4().as_u64_pair().0.max(1),
            ..*self
        }
    }

    /// Parses a `traceparent` value (version `00`; per the spec, a higher version
    /// is read by its first four fields). Returns `None` for an invalid value.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut parts = value.splitn(5, '-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !hex(version, 2) || version == "ff" || (version == "00" && rest.is_some()) {
            return None;
        }
        if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id, 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        format!("{:016x}", self.span_id)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

tokio::task_local! {
    static TRACE: TraceContext;
}

/// The trace of the current task: set by [`with_trace`], or inside a listener, the
/// one the event arrived with (via [`TraceContextPipeline`]).
pub fn current_trace() -> Option<TraceContext> {
    TRACE.try_with(|t| *t).ok()
}

/// Runs `future` with `trace` as the current trace.
pub async fn with_trace<F: Future>(trace: TraceContext, future: F) -> F::Output {
    TRACE.scope(trace, future).await
}

/// Propagates W3C trace context in the `traceparent` header.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContextPipeline;

impl EnvelopePipeline for TraceContextPipeline {
    fn name(&self) -> &'static str {
        "trace-context"
    }

    fn send(&self, envelope: &mut Envelope, _: &EventDescriptor) -> Result<(), BoxError> {
        let trace = current_trace().map_or_else(TraceContext::new_root, |t| t.child());
        envelope.headers.insert(TRACEPARENT, trace.to_string());
        Ok(())
    }

    fn around(&self, envelope: &Envelope, _: &ListenerDescriptor, call: Call) -> Call {
        match envelope.headers.get(TRACEPARENT) {
            Some(value) => match TraceContext::parse(value) {
                Some(trace) => {
                    tracing::Span::current().record("trace_id", trace.trace_id().as_str());
                    Box::pin(TRACE.scope(trace, call))
                }
                None => {
                    // The spec says to ignore an invalid value and start anew.
                    tracing::warn!(
                        traceparent = value,
                        "ignoring an invalid traceparent header"
                    );
                    call
                }
            },
            None => call,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_spec_example() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = TraceContext::parse(value).expect("valid");
        assert_eq!(trace.to_string(), value);
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = trace.child();
        assert_eq!(child.trace_id(), trace.trace_id());
        assert_ne!(child.span_id(), trace.span_id());
    }

    #[test]
    fn rejects_invalid_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        // A future version is read by its first four fields.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }
}

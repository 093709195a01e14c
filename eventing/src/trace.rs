//! W3C Trace Context (`traceparent`) across events.
//!
//! [`TraceContextPipeline`] puts the current trace in a `traceparent` header on send
//! (a child of the current one, or a new trace) and makes the received one current
//! while the listener runs, so an event sent from a listener continues the trace:
//! a chain A -> B -> C shares one trace id. The handling span records `trace_id`.
//!
//! With the `opentelemetry` feature the pipeline speaks OpenTelemetry: on send it
//! injects the OpenTelemetry context of the current `tracing` span (through a
//! `tracing-opentelemetry` layer) as `traceparent` and `tracestate`, and the
//! runtime makes each listener's `handle` span a child of the span that sent the
//! event (`adopt_remote_parent`, called before the span is first entered: the
//! layer starts the OpenTelemetry span on entry, after which its parent is fixed,
//! so this cannot happen in [`EnvelopePipeline::around`]).

use std::fmt;
use std::future::Future;

use crate::envelope::Envelope;
use crate::error::BoxError;
use crate::event::EventDescriptor;
use crate::listener::ListenerDescriptor;
use crate::pipeline::{Call, EnvelopePipeline};

/// The header name.
pub const TRACEPARENT: &str = "traceparent";

/// The W3C `tracestate` header (vendor-specific trace data), written and read by
/// the OpenTelemetry bridge (feature `opentelemetry`).
pub const TRACESTATE: &str = "tracestate";

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
        Self {
            trace_id: fastrand::u128(1..),
            span_id: fastrand::u64(1..),
            flags: 1,
        }
    }

    /// A child in the same trace, with a new span id.
    pub fn child(&self) -> Self {
        Self {
            span_id: fastrand::u64(1..),
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
///
/// On send it writes a `traceparent`: a child of the current trace
/// ([`current_trace`]) or a new trace. While a listener runs, the trace its event
/// arrived with is the current one, so what the listener sends continues it.
///
/// # OpenTelemetry
///
/// With the cargo feature `opentelemetry` and a
/// [`tracing-opentelemetry`](https://docs.rs/tracing-opentelemetry) layer installed,
/// the header carries the OpenTelemetry span context of the current `tracing` span
/// (or, without one, of `opentelemetry::Context::current()`), plus `tracestate`
/// when it has one, and each listener's `handle` span becomes a child of the span
/// that sent the event: a chain A -> B -> C is one trace in your tracing backend.
/// Without a layer (or without the feature) the pipeline behaves as above.
/// Nothing is forced on users who do not enable the feature.
///
/// ```
/// # #[cfg(feature = "opentelemetry")] {
/// use opentelemetry::trace::TracerProvider as _;
/// use tracing_subscriber::layer::SubscriberExt as _;
///
/// // Your exporter here (OTLP, Jaeger, ...); the in-memory one for the example.
/// let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
/// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
///     .with_simple_exporter(exporter)
///     .build();
/// let subscriber = tracing_subscriber::registry()
///     .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("shop")));
/// tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
///
/// let builder = eventing::EventManager::builder().pipeline(eventing::trace::TraceContextPipeline);
/// # drop(builder); }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContextPipeline;

impl EnvelopePipeline for TraceContextPipeline {
    fn name(&self) -> &'static str {
        "trace-context"
    }

    fn send(&self, envelope: &mut Envelope, _: &EventDescriptor) -> Result<(), BoxError> {
        #[cfg(feature = "opentelemetry")]
        if otel::inject_current(envelope) {
            return Ok(());
        }
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

/// Makes `span`, a listener's handling span that has not been entered yet, a child
/// of the OpenTelemetry span that sent `envelope` (its `traceparent` and
/// `tracestate`). Does nothing without the `opentelemetry` feature, without a
/// `tracing-opentelemetry` layer, for a disabled span, or without a valid header.
#[inline]
pub(crate) fn adopt_remote_parent(span: &tracing::Span, envelope: &Envelope) {
    #[cfg(feature = "opentelemetry")]
    otel::adopt_remote_parent(span, envelope);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, envelope);
}

/// The OpenTelemetry bridge: W3C Trace Context to and from OpenTelemetry span
/// contexts (the format of OpenTelemetry's `TraceContextPropagator`; with only the
/// API crate as a dependency, so the SDK stays the user's choice).
#[cfg(feature = "opentelemetry")]
mod otel {
    use std::str::FromStr;

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::{TRACEPARENT, TRACESTATE, TraceContext, TraceContextPipeline};
    use crate::envelope::Envelope;

    impl TraceContext {
        /// This context as an OpenTelemetry span context of a remote parent, with
        /// `trace_state`. Feature `opentelemetry`.
        pub fn to_span_context(&self, trace_state: TraceState) -> SpanContext {
            SpanContext::new(
                TraceId::from_bytes(self.trace_id.to_be_bytes()),
                SpanId::from_bytes(self.span_id.to_be_bytes()),
                TraceFlags::new(self.flags),
                true,
                trace_state,
            )
        }

        /// The trace id, span id and sampled flag of an OpenTelemetry span context;
        /// `None` if it is not valid. Feature `opentelemetry`.
        pub fn from_span_context(context: &SpanContext) -> Option<Self> {
            if !context.is_valid() {
                return None;
            }
            Some(Self {
                trace_id: u128::from_be_bytes(context.trace_id().to_bytes()),
                span_id: u64::from_be_bytes(context.span_id().to_bytes()),
                // Version 00 defines only the sampled flag.
                flags: (context.trace_flags() & TraceFlags::SAMPLED).to_u8(),
            })
        }
    }

    impl TraceContextPipeline {
        /// The OpenTelemetry context `envelope` carries, as a remote parent: its
        /// `traceparent`, with its `tracestate` if that is valid (an invalid
        /// `tracestate` is dropped, as the W3C spec says). `None` without a valid
        /// `traceparent`. Feature `opentelemetry`.
        ///
        /// ```
        /// use opentelemetry::trace::TraceContextExt as _;
        /// let mut envelope = eventing::Envelope::default();
        /// envelope.headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        /// envelope.headers.insert("tracestate", "shop=a1");
        /// let cx = eventing::trace::TraceContextPipeline::extract(&envelope).expect("a parent");
        /// let parent = cx.span().span_context().clone();
        /// assert_eq!(parent.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        /// assert!(parent.is_remote() && parent.is_sampled());
        /// assert_eq!(parent.trace_state().get("shop"), Some("a1"));
        /// ```
        pub fn extract(envelope: &Envelope) -> Option<opentelemetry::Context> {
            let trace = TraceContext::parse(envelope.headers.get(TRACEPARENT)?)?;
            let state = envelope
                .headers
                .get(TRACESTATE)
                .and_then(|value| TraceState::from_str(value).ok())
                .unwrap_or_default();
            let remote = trace.to_span_context(state);
            Some(opentelemetry::Context::new().with_remote_span_context(remote))
        }

        /// Writes the span context of `cx` as `traceparent` (and `tracestate` when
        /// it has entries). Returns false, writing nothing, when `cx` has no valid
        /// span context. Feature `opentelemetry`.
        pub fn inject(cx: &opentelemetry::Context, envelope: &mut Envelope) -> bool {
            let span = cx.span();
            let context = span.span_context();
            let Some(trace) = TraceContext::from_span_context(context) else {
                return false;
            };
            envelope.headers.insert(TRACEPARENT, trace.to_string());
            let state = context.trace_state().header();
            if !state.is_empty() {
                envelope.headers.insert(TRACESTATE, state);
            }
            true
        }
    }

    /// Injects the context of the current `tracing` span, or else the current
    /// OpenTelemetry context; false if neither has a valid span.
    pub(super) fn inject_current(envelope: &mut Envelope) -> bool {
        let span = tracing::Span::current();
        if !span.is_disabled() && TraceContextPipeline::inject(&span.context(), envelope) {
            return true;
        }
        TraceContextPipeline::inject(&opentelemetry::Context::current(), envelope)
    }

    pub(super) fn adopt_remote_parent(span: &tracing::Span, envelope: &Envelope) {
        if span.is_disabled() {
            return;
        }
        let Some(parent) = TraceContextPipeline::extract(envelope) else {
            return;
        };
        match span.set_parent(parent) {
            // No tracing-opentelemetry layer: nothing to link.
            Ok(()) | Err(tracing_opentelemetry::SetParentError::LayerNotFound) => {}
            Err(error) => tracing::debug!(%error, "cannot link the handling span to its sender"),
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

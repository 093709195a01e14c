//! The OpenTelemetry bridge (feature `opentelemetry`): a listener's `handle` span is
//! a child of the span that sent its event, and a chain of events is one trace.
//! Spans go to the SDK's in-memory exporter through a `tracing-opentelemetry` layer.
#![cfg(feature = "opentelemetry")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use eventing::memory::MemoryProvider;
use eventing::trace::{TRACEPARENT, TRACESTATE, TraceContextPipeline};
use eventing::{
    Context, Envelope, EventListener, EventManager, ListenerResult, event, event_listener,
};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// The exporter behind the process-wide subscriber (installed once; the tests of
/// this binary tell their spans apart by the `event` attribute).
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("otel-test")));
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        exporter
    })
}

/// What a listener saw: `n`, the message id, the `traceparent` header and the
/// span context current in `on`.
type Seen = Arc<Mutex<Vec<(u32, String, String, SpanContext)>>>;

fn record(seen: &Seen, n: u32, ctx: &Context) -> Result<(), eventing::BoxError> {
    let current = tracing::Span::current()
        .context()
        .span()
        .span_context()
        .clone();
    seen.lock().map_err(|_| "poisoned")?.push((
        n,
        ctx.message_id().to_string(),
        ctx.header(TRACEPARENT).unwrap_or("").to_string(),
        current,
    ));
    Ok(())
}

/// One hop.
#[event(name = "otel.Single")]
#[derive(Serialize, Deserialize)]
pub struct Single {
    /// Unused.
    pub n: u32,
}

/// Records singles.
#[event_listener(Single, name = "SingleReader")]
pub struct SingleReader {
    seen: Seen,
}

impl EventListener<Single> for SingleReader {
    async fn on(&self, event: Single, ctx: &Context) -> ListenerResult {
        record(&self.seen, event.n, ctx)
    }
}

/// A chain: the listener sends `n - 1` until 0.
#[event(name = "otel.Chain")]
#[derive(Serialize, Deserialize)]
pub struct Chain {
    /// Hops left.
    pub n: u32,
}

/// Records and forwards the chain.
#[event_listener(Chain, name = "Forwarder")]
pub struct Forwarder {
    seen: Seen,
    manager: Arc<tokio::sync::OnceCell<EventManager>>,
}

impl EventListener<Chain> for Forwarder {
    async fn on(&self, event: Chain, ctx: &Context) -> ListenerResult {
        record(&self.seen, event.n, ctx)?;
        if event.n > 0 {
            let manager = self.manager.get().ok_or("no manager yet")?;
            manager.send_event(&Chain { n: event.n - 1 }).await?;
        }
        Ok(())
    }
}

/// Waits (at most 10 s) until `check` holds.
async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// The finished `handle` spans of `event`, by message id.
fn handle_spans(event: &str) -> HashMap<String, SpanData> {
    exporter()
        .get_finished_spans()
        .expect("finished spans")
        .into_iter()
        .filter(|s| s.name == "handle" && attribute(s, "event").as_deref() == Some(event))
        .filter_map(|s| Some((attribute(&s, "message_id")?, s)))
        .collect()
}

fn traceparent_of(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_span_is_a_child_of_the_sender_span() {
    exporter();
    let seen: Seen = Arc::default();
    let manager = EventManager::builder()
        .provider(MemoryProvider::new())
        .pipeline(TraceContextPipeline)
        .only_bound_listeners()
        .listener(SingleReader {
            seen: Arc::clone(&seen),
        })
        .build()
        .await
        .expect("build");
    manager.start().await.expect("start");

    let sender = tracing::info_span!("checkout");
    let sender_context = sender.context().span().span_context().clone();
    assert!(
        sender_context.is_valid(),
        "the layer gives the span a context"
    );
    manager
        .send_event(&Single { n: 1 })
        .instrument(sender.clone())
        .await
        .expect("send");
    drop(sender);
    assert!(eventually(|| seen.lock().expect("lock").len() == 1).await);
    manager.shutdown().await.expect("shutdown");

    let (_, message_id, traceparent, in_listener) = seen.lock().expect("lock")[0].clone();
    assert_eq!(
        traceparent,
        traceparent_of(&sender_context),
        "the header carries the sender's span"
    );
    let spans = handle_spans("otel.Single");
    let handle = spans
        .get(&message_id)
        .expect("the handle span was exported");
    assert_eq!(
        handle.span_context.trace_id(),
        sender_context.trace_id(),
        "same trace"
    );
    assert_eq!(
        handle.parent_span_id,
        sender_context.span_id(),
        "the handle span's parent is the sender's span"
    );
    assert!(handle.parent_span_is_remote);
    assert_eq!(
        &in_listener, &handle.span_context,
        "inside `on` the handle span is current"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_events_is_one_trace() {
    exporter();
    let seen: Seen = Arc::default();
    let cell = Arc::new(tokio::sync::OnceCell::new());
    let manager = EventManager::builder()
        .provider(MemoryProvider::new())
        .pipeline(TraceContextPipeline)
        .only_bound_listeners()
        .listener(Forwarder {
            seen: Arc::clone(&seen),
            manager: Arc::clone(&cell),
        })
        .build()
        .await
        .expect("build");
    cell.set(manager.clone()).ok();
    manager.start().await.expect("start");

    let root = tracing::info_span!("request");
    let root_context = root.context().span().span_context().clone();
    manager
        .send_event(&Chain { n: 2 })
        .instrument(root.clone())
        .await
        .expect("send");
    drop(root);
    assert!(eventually(|| seen.lock().expect("lock").len() == 3).await);
    manager.shutdown().await.expect("shutdown");

    let mut seen = seen.lock().expect("lock").clone();
    // A (n = 2) -> B (n = 1) -> C (n = 0).
    seen.sort_by_key(|(n, ..)| std::cmp::Reverse(*n));
    let mut spans = HashMap::new();
    assert!(
        eventually(|| {
            spans = handle_spans("otel.Chain");
            seen.iter().all(|(_, id, ..)| spans.contains_key(id))
        })
        .await,
        "three handle spans exported"
    );
    let mut parent = root_context.span_id();
    for (n, message_id, traceparent, _) in &seen {
        let handle = &spans[message_id];
        assert_eq!(
            handle.span_context.trace_id(),
            root_context.trace_id(),
            "hop {n}: one trace id along the chain"
        );
        assert_eq!(
            handle.parent_span_id, parent,
            "hop {n}: a child of the span that sent it"
        );
        assert!(traceparent.contains(&parent.to_string()), "hop {n}");
        parent = handle.span_context.span_id();
    }
}

/// The headers are W3C Trace Context as OpenTelemetry's own propagator writes and
/// reads them, `tracestate` included.
#[test]
fn headers_match_the_w3c_propagator() {
    let state: TraceState = "shop=a1,rojo=00f067aa0ba902b7".parse().expect("tracestate");
    let context = SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"),
        SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
        TraceFlags::SAMPLED,
        true,
        state,
    );
    let cx = opentelemetry::Context::new().with_remote_span_context(context.clone());
    let propagator = TraceContextPropagator::new();

    // Ours -> the SDK's.
    let mut envelope = Envelope::default();
    assert!(TraceContextPipeline::inject(&cx, &mut envelope));
    let carrier: HashMap<String, String> = envelope
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut expected = HashMap::new();
    propagator.inject_context(&cx, &mut expected);
    assert_eq!(
        carrier, expected,
        "the same headers as the SDK's propagator"
    );
    let back = propagator.extract(&carrier);
    assert_eq!(back.span().span_context(), &context);

    // The SDK's -> ours.
    let mut envelope = Envelope::default();
    for (k, v) in &expected {
        envelope.headers.insert(k, v);
    }
    let ours = TraceContextPipeline::extract(&envelope).expect("valid");
    assert_eq!(ours.span().span_context(), &context);

    // An invalid tracestate is dropped, the traceparent kept; no traceparent, no context.
    envelope.headers.insert(TRACESTATE, "not a list member");
    let ours = TraceContextPipeline::extract(&envelope).expect("valid");
    assert_eq!(ours.span().span_context().trace_id(), context.trace_id());
    assert_eq!(ours.span().span_context().trace_state(), &TraceState::NONE);
    envelope.headers.remove(TRACEPARENT);
    assert!(TraceContextPipeline::extract(&envelope).is_none());
    // Nothing to inject from an empty context.
    let mut empty = Envelope::default();
    assert!(!TraceContextPipeline::inject(
        &opentelemetry::Context::new(),
        &mut empty
    ));
    assert!(empty.headers.is_empty());
}

//! The features beyond the origin (issue 6), written once for every provider: the
//! event log, versioned events, `{env}` names, the singleton kind, trace context
//! (plain and OpenTelemetry), MessagePack and CBOR bodies, metrics and the
//! command-line tool. `features_tests!` runs them per harness, as
//! `conformance_tests!` runs the suite.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use eventing::codec::Codec;
use eventing::eventlog::{
    CALL_CHAIN, CALL_ID, EVENT_TYPE, EventLogConfig, EventLogEntry, EventLogPipeline, SERVICE,
};
use eventing::provider::Route;
use eventing::trace::{TRACEPARENT, TraceContext, TraceContextPipeline};
use eventing::{
    Context, Envelope, Event, EventListener, EventManager, ListenerOptions, ListenerResult,
    RetryPolicy, event, event_listener, header,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, OnceCell};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::harness::TestEnv;
use crate::suite::{dead_letters, eventually};

const WAIT: Duration = Duration::from_secs(20);

/// Items listeners recorded; a test waits for a count.
pub struct Collected<T> {
    items: Mutex<Vec<T>>,
    changed: Notify,
}

impl<T: Clone> Collected<T> {
    /// An empty collection.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            items: Mutex::new(Vec::new()),
            changed: Notify::new(),
        })
    }

    /// Adds one.
    pub fn push(&self, item: T) {
        self.items.lock().expect("collected lock").push(item);
        self.changed.notify_waiters();
    }

    /// Everything so far.
    pub fn all(&self) -> Vec<T> {
        self.items.lock().expect("collected lock").clone()
    }

    /// Waits until there are at least `n`, at most `limit`; returns what there is.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<T> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            let items = self.all();
            if items.len() >= n {
                return items;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.all();
            }
        }
    }
}

/// Listener options without retries (one call, then the dead-letter queue).
fn single_attempt() -> ListenerOptions {
    ListenerOptions {
        prefetch: 50,
        concurrency: 8,
        retry: RetryPolicy {
            max_attempts: 1,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            delays: Vec::new(),
        },
    }
}

fn headers_of(ctx: &Context) -> HashMap<String, String> {
    ctx.headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Publishes `body` as event `E` straight through the provider (no pipelines),
/// with `headers` added to the standard ones.
async fn publish_raw<E: Event>(
    manager: &EventManager,
    content_type: &'static str,
    body: &'static [u8],
    headers: &[(&str, &str)],
) {
    let address = manager.address_of(E::descriptor()).expect("address");
    let mut envelope = Envelope::new(&address, content_type, Bytes::from_static(body));
    for (name, value) in headers {
        envelope.headers.insert(name, value);
    }
    let route = Route::new(&address, E::descriptor().durable());
    tokio::time::timeout(WAIT, manager.provider().publish(route, envelope))
        .await
        .expect("raw publish timed out")
        .expect("raw publish");
}

/// Runs one case's future for at most `limit`, catching a panic: `None` if it
/// timed out. The caller then cleans up the broker and re-raises the outcome
/// with [`rethrow`], so a failed case leaves no queues behind.
pub async fn bounded_unwind(
    case: impl std::future::Future<Output = ()>,
    limit: Duration,
) -> Option<std::thread::Result<()>> {
    use futures_util::FutureExt as _;
    tokio::time::timeout(limit, std::panic::AssertUnwindSafe(case).catch_unwind())
        .await
        .ok()
}

/// Re-raises a case's panic, or panics if it timed out.
pub fn rethrow(case: &str, outcome: Option<std::thread::Result<()>>, limit: Duration) {
    match outcome {
        Some(Ok(())) => {}
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        None => panic!("{case} timed out after {limit:?}"),
    }
}

// ---------------------------------------------------------------------------------
// event log

/// A step of a chain A -> B -> C.
#[event(name = "features.{env}.Step", durable = true)]
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    /// Steps left; the listener fails at 0.
    pub n: u32,
}

/// Records the headers of each step and sends the next one.
#[event_listener(Step, name = "FeatureStepper")]
pub struct Stepper {
    seen: Arc<Collected<HashMap<String, String>>>,
    manager: Arc<OnceCell<EventManager>>,
}

impl EventListener<Step> for Stepper {
    async fn on(&self, step: Step, ctx: &Context) -> ListenerResult {
        self.seen.push(headers_of(ctx));
        if step.n == 0 {
            return Err("the last step fails on purpose".into());
        }
        let manager = self.manager.get().ok_or("no manager yet")?;
        manager.send_event(&Step { n: step.n - 1 }).await?;
        Ok(())
    }
}

/// Also listens to `Step`; excluded from auto-capture.
#[event_listener(Step, name = "FeatureQuiet")]
pub struct Quiet {
    calls: Arc<AtomicU32>,
}

impl EventListener<Step> for Quiet {
    async fn on(&self, _: Step, _: &Context) -> ListenerResult {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Collects the auto-captured entries of the event log.
#[event_listener(EventLogEntry, name = "FeatureLogCollector")]
pub struct LogCollector {
    entries: Arc<Collected<EventLogEntry>>,
}

impl EventListener<EventLogEntry> for LogCollector {
    async fn on(&self, entry: EventLogEntry, _: &Context) -> ListenerResult {
        self.entries.push(entry);
        Ok(())
    }
}

/// The event-log pipeline stamps service, event type, call id and call chain on a
/// chain A -> B -> C, and auto-capture sends one entry per captured listener call
/// to the configured log event (`{eventlog}`), none for an excluded listener.
pub async fn event_log_chain(env: &mut TestEnv<'_>) {
    let harness = env.harness;
    let log_event = format!("features.{}.eventlog", env.env);
    let seen = Collected::new();
    let entries = Collected::new();
    let quiet = Arc::new(AtomicU32::new(0));
    let cell = Arc::new(OnceCell::new());
    let config = EventLogConfig {
        service: "shop".into(),
        auto_capture: true,
        exclude: vec!["FeatureQuiet".into()],
    };
    let manager = env
        .start(
            env.builder("a")
                .var("eventlog", &log_event)
                .pipeline(EventLogPipeline::new(config))
                .listener_options_for("FeatureStepper", single_attempt())
                .listener(Stepper {
                    seen: Arc::clone(&seen),
                    manager: Arc::clone(&cell),
                })
                .listener(Quiet {
                    calls: Arc::clone(&quiet),
                })
                .listener(LogCollector {
                    entries: Arc::clone(&entries),
                }),
        )
        .await;
    cell.set(manager.clone()).ok();
    let queues: Vec<String> = manager.queues().into_iter().map(|q| q.name).collect();
    assert!(
        queues.contains(&format!("{log_event}::FeatureLogCollector")),
        "{}: the log collector listens on the configured log event: {queues:?}",
        harness.name()
    );
    manager.send_event(&Step { n: 2 }).await.expect("send");

    let steps = seen.wait_for(3, WAIT).await;
    assert_eq!(steps.len(), 3, "{}: A -> B -> C", harness.name());
    let address = format!("features.{}.Step", env.env);
    let mut previous: Vec<String> = Vec::new();
    for headers in &steps {
        let get = |name: &str| headers.get(name).map(String::as_str).unwrap_or("");
        assert_eq!(get(SERVICE), "shop", "{}: {headers:?}", harness.name());
        assert_eq!(get(EVENT_TYPE), "features.{env}.Step");
        assert_eq!(get(header::EVENT), address);
        assert!(
            humantime::parse_rfc3339(get(header::TIMESTAMP)).is_ok(),
            "{}: timestamp {headers:?}",
            harness.name()
        );
        let call_id = get(CALL_ID);
        assert!(call_id.starts_with("shop."), "{call_id}");
        let chain: Vec<String> = get(CALL_CHAIN).split(',').map(String::from).collect();
        assert_eq!(chain.last().map(String::as_str), Some(call_id));
        assert_eq!(
            chain[..chain.len() - 1],
            previous[..],
            "{}: the chain continues the one before",
            harness.name()
        );
        previous = chain;
    }
    assert_eq!(previous.len(), 3);

    let got = entries.wait_for(3, WAIT).await;
    // Give an unexpected entry (Quiet, the collector itself) a moment to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = if entries.all().len() > got.len() {
        entries.all()
    } else {
        got
    };
    assert_eq!(
        got.len(),
        3,
        "{}: one entry per Stepper call and none for the excluded listener: {got:?}",
        harness.name()
    );
    for entry in &got {
        assert_eq!(
            (entry.service.as_str(), entry.listener.as_str()),
            ("shop", "FeatureStepper")
        );
        assert_eq!(entry.event, address);
        assert!(!entry.timestamp.is_empty() && !entry.message_id.is_empty());
    }
    let failed: Vec<&EventLogEntry> = got.iter().filter(|e| e.outcome != "ok").collect();
    assert_eq!(failed.len(), 1, "{got:?}");
    assert!(
        failed[0].outcome.contains("the last step fails on purpose"),
        "{:?}",
        failed[0]
    );
    assert_eq!(
        failed[0].call_chain, previous,
        "the entry carries the chain"
    );
    assert_eq!(quiet.load(Ordering::SeqCst), 3, "the excluded listener ran");
}

// ---------------------------------------------------------------------------------
// versioned events

/// A versioned event.
#[event(name = "features.{env}.Priced", durable = true, version = "1.2")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Priced {
    /// Amount.
    pub cents: u64,
}

/// Accepts versions below 2.0.
#[event_listener(Priced, name = "FeatureV1Reader", version = "<2.0")]
pub struct V1Reader {
    seen: Arc<Collected<(u64, Option<String>)>>,
}

impl EventListener<Priced> for V1Reader {
    async fn on(&self, event: Priced, ctx: &Context) -> ListenerResult {
        let version = ctx.header(header::EVENT_VERSION).map(String::from);
        self.seen.push((event.cents, version));
        Ok(())
    }
}

/// A matching version is handled; one outside the range, a missing and a malformed
/// version are dead-lettered with the reason and never reach the listener.
pub async fn versioned_events(env: &mut TestEnv<'_>) {
    let harness = env.harness;
    let seen = Collected::new();
    let manager = env
        .start(env.builder("a").listener(V1Reader {
            seen: Arc::clone(&seen),
        }))
        .await;
    manager
        .send_event(&Priced { cents: 5 })
        .await
        .expect("send");
    let body = b"{\"cents\":1}";
    publish_raw::<Priced>(
        &manager,
        eventing::codec::JSON,
        body,
        &[(header::EVENT_VERSION, "1.9.3")],
    )
    .await;
    publish_raw::<Priced>(
        &manager,
        eventing::codec::JSON,
        body,
        &[(header::EVENT_VERSION, "2.1.0")],
    )
    .await;
    publish_raw::<Priced>(&manager, eventing::codec::JSON, body, &[]).await;
    publish_raw::<Priced>(
        &manager,
        eventing::codec::JSON,
        body,
        &[(header::EVENT_VERSION, "two")],
    )
    .await;

    let queue = format!("features.{}.Priced::FeatureV1Reader", env.env);
    let letters = dead_letters(&manager, &queue, 3).await;
    let mut reasons: Vec<String> = letters
        .iter()
        .filter_map(|l| l.headers.get(header::DEAD_LETTER_REASON).map(String::from))
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{}: {reasons:?}", harness.name());
    let expected = [
        "event version 2.1.0 is outside the range <2.0 that listener `FeatureV1Reader` accepts",
        "malformed `event-version` header `two`",
        "no `event-version` header; listener `FeatureV1Reader` accepts versions <2.0",
    ];
    for (reason, expected) in reasons.iter().zip(expected) {
        assert!(
            reason.contains(expected),
            "{}: `{reason}` should say `{expected}`",
            harness.name()
        );
    }
    let mut got = seen.wait_for(2, WAIT).await;
    got.sort();
    assert_eq!(
        got,
        vec![(1, Some("1.9.3".into())), (5, Some("1.2.0".into()))],
        "{}: only versions in range are handled",
        harness.name()
    );
    // The counter moves when the provider confirmed the letters (see
    // `suite::retry_then_dead_letter`).
    eventually(WAIT, || manager.stats().dead_lettered >= 3).await;
    assert_eq!(manager.stats().dead_lettered, 3);
}

// ---------------------------------------------------------------------------------
// `{env}` names

/// An event whose address depends on `{env}`.
#[event(name = "features.{env}.Templated", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Templated {
    /// Which manager sent it.
    pub from: String,
}

/// Records templated events with the server that got them.
#[event_listener(Templated, name = "FeatureTemplateReader")]
pub struct TemplateReader {
    seen: Arc<Collected<(String, String, String)>>,
    server: String,
}

impl EventListener<Templated> for TemplateReader {
    async fn on(&self, event: Templated, ctx: &Context) -> ListenerResult {
        let address = ctx.header(header::EVENT).unwrap_or("").to_string();
        self.seen.push((self.server.clone(), event.from, address));
        Ok(())
    }
}

/// One binary, two values of `{env}`: distinct addresses and queues, and events of
/// one environment never reach the other.
pub async fn env_templates(env: &mut TestEnv<'_>) {
    let harness = env.harness;
    let (blue, green) = (format!("{}-blue", env.env), format!("{}-green", env.env));
    let seen = Collected::new();
    let mut managers = Vec::new();
    for name in [&blue, &green] {
        let builder = env.builder(name).var("env", name).listener(TemplateReader {
            seen: Arc::clone(&seen),
            server: name.clone(),
        });
        managers.push(env.start(builder).await);
    }
    for (manager, name) in managers.iter().zip([&blue, &green]) {
        let address = manager
            .address_of(Templated::descriptor())
            .expect("address");
        assert_eq!(&*address, format!("features.{name}.Templated"));
        let queues: Vec<String> = manager.queues().into_iter().map(|q| q.name).collect();
        assert_eq!(
            queues,
            [format!("features.{name}.Templated::FeatureTemplateReader")]
        );
    }
    managers[0]
        .send_event(&Templated { from: blue.clone() })
        .await
        .expect("send");
    assert_eq!(seen.wait_for(1, WAIT).await.len(), 1);
    managers[1]
        .send_event(&Templated {
            from: green.clone(),
        })
        .await
        .expect("send");
    seen.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = seen.all();
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                blue.clone(),
                blue.clone(),
                format!("features.{blue}.Templated")
            ),
            (
                green.clone(),
                green.clone(),
                format!("features.{green}.Templated")
            ),
        ],
        "{}: each environment gets only its own events",
        harness.name()
    );
}

// ---------------------------------------------------------------------------------
// singleton kind

/// An event with singleton listeners.
#[event(name = "features.{env}.Billed", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Billed {
    /// Item number.
    pub n: u32,
}

/// `(listener, server, n)` per call.
type Calls = Arc<Collected<(&'static str, String, u32)>>;

/// One singleton listener of `Billed`.
#[event_listener(Billed, name = "FeatureInvoicer", singleton = true)]
pub struct Invoicer {
    calls: Calls,
    server: String,
}

impl EventListener<Billed> for Invoicer {
    async fn on(&self, event: Billed, _: &Context) -> ListenerResult {
        self.calls
            .push(("FeatureInvoicer", self.server.clone(), event.n));
        Ok(())
    }
}

/// Another singleton listener of `Billed`.
#[event_listener(Billed, name = "FeatureAuditor", singleton = true)]
pub struct Auditor {
    calls: Calls,
    server: String,
}

impl EventListener<Billed> for Auditor {
    async fn on(&self, event: Billed, _: &Context) -> ListenerResult {
        self.calls
            .push(("FeatureAuditor", self.server.clone(), event.n));
        Ok(())
    }
}

/// Two servers with two singleton listeners each share one queue: every event is
/// handled exactly once in all.
pub async fn singleton_kind(env: &mut TestEnv<'_>) {
    let harness = env.harness;
    const N: u32 = 40;
    let calls: Calls = Collected::new();
    let mut managers = Vec::new();
    for server in ["a", "b"] {
        let builder = env
            .builder(server)
            .listener(Invoicer {
                calls: Arc::clone(&calls),
                server: server.into(),
            })
            .listener(Auditor {
                calls: Arc::clone(&calls),
                server: server.into(),
            });
        managers.push(env.start(builder).await);
    }
    let singleton = format!("features.{}.Billed::singleton", env.env);
    for manager in &managers {
        let queues: Vec<String> = manager.queues().into_iter().map(|q| q.name).collect();
        assert_eq!(queues, [singleton.clone(), singleton.clone()]);
    }
    for n in 0..N {
        managers[0].send_event(&Billed { n }).await.expect("send");
    }
    calls.wait_for(N as usize, WAIT).await;
    // Give a duplicate a moment to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = calls.all();
    let mut numbers: Vec<u32> = got.iter().map(|(_, _, n)| *n).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..N).collect::<Vec<_>>(),
        "{}: every event exactly once among all singleton listeners",
        harness.name()
    );
    let mut takers: Vec<(&str, &str)> = got.iter().map(|(l, s, _)| (*l, s.as_str())).collect();
    takers.sort_unstable();
    takers.dedup();
    assert!(
        takers.len() > 1,
        "{}: the listeners share the work: {takers:?}",
        harness.name()
    );
}

// ---------------------------------------------------------------------------------
// trace context

/// A hop of a traced chain.
#[event(name = "features.{env}.Hop", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    /// Hops left.
    pub n: u32,
}

/// What a hop saw: `n`, message id, `traceparent`, `current_trace()` and the
/// OpenTelemetry span context current in `on`.
type Hops = Arc<Collected<(u32, String, String, Option<TraceContext>, SpanContext)>>;

/// Records and forwards the chain.
#[event_listener(Hop, name = "FeatureHopper")]
pub struct Hopper {
    seen: Hops,
    manager: Arc<OnceCell<EventManager>>,
}

impl EventListener<Hop> for Hopper {
    async fn on(&self, hop: Hop, ctx: &Context) -> ListenerResult {
        let span = tracing::Span::current()
            .context()
            .span()
            .span_context()
            .clone();
        self.seen.push((
            hop.n,
            ctx.message_id().to_string(),
            ctx.header(TRACEPARENT).unwrap_or("").to_string(),
            eventing::trace::current_trace(),
            span,
        ));
        if hop.n > 0 {
            let manager = self.manager.get().ok_or("no manager yet")?;
            manager.send_event(&Hop { n: hop.n - 1 }).await?;
        }
        Ok(())
    }
}

async fn start_hopper(env: &mut TestEnv<'_>) -> (EventManager, Hops) {
    let seen: Hops = Collected::new();
    let cell = Arc::new(OnceCell::new());
    let manager = env
        .start(
            env.builder("a")
                .pipeline(TraceContextPipeline)
                .listener(Hopper {
                    seen: Arc::clone(&seen),
                    manager: Arc::clone(&cell),
                }),
        )
        .await;
    cell.set(manager.clone()).ok();
    (manager, seen)
}

/// A -> B -> C across the broker: every `traceparent` continues the sender's trace,
/// and the received context is `current_trace()` inside `on`.
pub async fn trace_context_chain(env: &mut TestEnv<'_>) {
    let harness = env.harness;
    let (manager, seen) = start_hopper(env).await;
    let root = TraceContext::new_root();
    eventing::trace::with_trace(root, manager.send_event(&Hop { n: 2 }))
        .await
        .expect("send");
    let got = seen.wait_for(3, WAIT).await;
    assert_eq!(got.len(), 3, "{}: three hops", harness.name());
    let mut span_ids = vec![root.span_id()];
    for (n, _, traceparent, current, _) in &got {
        let parsed = TraceContext::parse(traceparent)
            .unwrap_or_else(|| panic!("{}: hop {n}: `{traceparent}`", harness.name()));
        assert_eq!(
            parsed.trace_id(),
            root.trace_id(),
            "{}: hop {n}: one trace",
            harness.name()
        );
        assert_eq!(current.as_ref(), Some(&parsed), "hop {n}: current in `on`");
        span_ids.push(parsed.span_id());
    }
    span_ids.sort();
    span_ids.dedup();
    assert_eq!(span_ids.len(), 4, "each hop is a new span");
}

/// The exporter of the process-wide `tracing` subscriber with an OpenTelemetry
/// layer, installed on first use (tests tell their spans apart by event name).
pub fn otel_exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("features")));
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global tracing subscriber in a features test binary");
        exporter
    })
}

fn span_attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// With the OpenTelemetry bridge, across the broker: each listener's `handle` span
/// is a child of the span that sent its event, and A -> B -> C is one trace.
pub async fn opentelemetry_chain(env: &mut TestEnv<'_>) {
    let harness = env.harness;
    let exporter = otel_exporter();
    let (manager, seen) = start_hopper(env).await;
    let root = tracing::info_span!("features-request");
    let root_context = root.context().span().span_context().clone();
    assert!(root_context.is_valid());
    manager
        .send_event(&Hop { n: 2 })
        .instrument(root.clone())
        .await
        .expect("send");
    drop(root);
    let mut got = seen.wait_for(3, WAIT).await;
    assert_eq!(got.len(), 3, "{}: three hops", harness.name());
    got.sort_by_key(|(n, ..)| std::cmp::Reverse(*n));
    let address = format!("features.{}.Hop", env.env);
    let mut spans: HashMap<String, SpanData> = HashMap::new();
    let exported = eventually(WAIT, || {
        spans = exporter
            .get_finished_spans()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.name == "handle" && span_attribute(s, "event") == Some(address.clone()))
            .filter_map(|s| Some((span_attribute(&s, "message_id")?, s)))
            .collect();
        got.iter().all(|(_, id, ..)| spans.contains_key(id))
    })
    .await;
    assert!(
        exported,
        "{}: the handle spans were exported",
        harness.name()
    );
    let mut parent: SpanId = root_context.span_id();
    for (n, message_id, traceparent, _, in_listener) in &got {
        let handle = &spans[message_id];
        assert_eq!(
            handle.span_context.trace_id(),
            root_context.trace_id(),
            "{}: hop {n}: one trace",
            harness.name()
        );
        assert_eq!(
            handle.parent_span_id,
            parent,
            "{}: hop {n}: a child of the span that sent it",
            harness.name()
        );
        assert!(handle.parent_span_is_remote);
        assert!(
            traceparent.contains(&format!("-{parent}-")),
            "{traceparent}"
        );
        assert_eq!(in_listener, &handle.span_context, "current in `on`");
        parent = handle.span_context.span_id();
    }
}

// ---------------------------------------------------------------------------------
// codecs

/// Always MessagePack.
#[event(name = "features.{env}.Packed", durable = true, codec = "msgpack")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Packed {
    /// A number.
    pub n: u64,
    /// Text with a NUL.
    pub text: String,
    /// Every byte value, so the body holds NULs and high bytes.
    pub bytes: Vec<u8>,
}

/// Uses the manager's codec (CBOR in the test).
#[event(name = "features.{env}.Plain", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plain {
    /// A list.
    pub items: Vec<i64>,
    /// Every byte value.
    pub bytes: Vec<u8>,
}

/// `(content-type, debug of the event)` per call.
type Bodies = Arc<Collected<(String, String)>>;

/// Records both events with their content type.
#[event_listener(Packed, name = "FeatureBodyReader")]
#[event_listener(Plain, name = "FeatureBodyReader")]
pub struct BodyReader {
    seen: Bodies,
}

impl EventListener<Packed> for BodyReader {
    async fn on(&self, event: Packed, ctx: &Context) -> ListenerResult {
        let ct = ctx.header(header::CONTENT_TYPE).unwrap_or("").to_string();
        self.seen.push((ct, format!("{event:?}")));
        Ok(())
    }
}

impl EventListener<Plain> for BodyReader {
    async fn on(&self, event: Plain, ctx: &Context) -> ListenerResult {
        let ct = ctx.header(header::CONTENT_TYPE).unwrap_or("").to_string();
        self.seen.push((ct, format!("{event:?}")));
        Ok(())
    }
}

/// MessagePack (per event) and CBOR (per manager) bodies cross the broker with
/// their content type and decode intact; a JSON body of the same event still
/// reads, and an unknown content type is dead-lettered with the reason.
pub async fn codecs(env: &mut TestEnv<'_>) {
    let harness = env.harness;
    let seen: Bodies = Collected::new();
    let manager = env
        .start(
            env.builder("a")
                .codec(Codec::Cbor)
                .listener_options_for("FeatureBodyReader", single_attempt())
                .listener(BodyReader {
                    seen: Arc::clone(&seen),
                }),
        )
        .await;
    let bytes: Vec<u8> = (0..=255).collect();
    let packed = Packed {
        n: u64::MAX,
        text: "héllo\0wörld".into(),
        bytes: bytes.clone(),
    };
    let plain = Plain {
        items: vec![1, -2, i64::MIN],
        bytes,
    };
    manager.send_event(&packed).await.expect("send msgpack");
    manager.send_event(&plain).await.expect("send cbor");
    publish_raw::<Plain>(
        &manager,
        eventing::codec::JSON,
        b"{\"items\":[3],\"bytes\":[0]}",
        &[],
    )
    .await;
    publish_raw::<Plain>(&manager, "application/xml", b"<items/>", &[]).await;

    let mut got = seen.wait_for(3, WAIT).await;
    got.sort();
    assert_eq!(
        got,
        vec![
            (eventing::codec::CBOR.to_string(), format!("{plain:?}")),
            (
                eventing::codec::JSON.to_string(),
                "Plain { items: [3], bytes: [0] }".to_string()
            ),
            (eventing::codec::MSGPACK.to_string(), format!("{packed:?}")),
        ],
        "{}: bodies and content types cross the broker",
        harness.name()
    );
    let queue = format!("features.{}.Plain::FeatureBodyReader", env.env);
    let letters = dead_letters(&manager, &queue, 1).await;
    assert_eq!(letters.len(), 1, "{}", harness.name());
    let reason = letters[0]
        .headers
        .get(header::DEAD_LETTER_REASON)
        .unwrap_or("");
    assert!(
        reason.contains("unsupported content type `application/xml`"),
        "{}: {reason}",
        harness.name()
    );
}

// ---------------------------------------------------------------------------------
// metrics

/// A `metrics` recorder that keeps counter totals and histogram sample counts by
/// `name{label=value,...}` (labels sorted). Unlike a snapshotting recorder it never
/// resets, so tests running in parallel can each read their own keys.
#[derive(Default)]
pub struct TotalsRecorder {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<String, Arc<SampleCount>>>,
}

/// Counts the samples a histogram recorded.
#[derive(Default)]
pub struct SampleCount(AtomicU64);

impl metrics::HistogramFn for SampleCount {
    fn record(&self, _: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn key_text(key: &metrics::Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl metrics::Recorder for TotalsRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let mut counters = self.counters.lock().expect("counters lock");
        metrics::Counter::from_arc(Arc::clone(counters.entry(key_text(key)).or_default()))
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        let mut histograms = self.histograms.lock().expect("histograms lock");
        metrics::Histogram::from_arc(Arc::clone(histograms.entry(key_text(key)).or_default()))
    }
}

impl TotalsRecorder {
    /// The recorder installed for this process (on first use).
    pub fn global() -> &'static TotalsRecorder {
        static RECORDER: OnceLock<&'static TotalsRecorder> = OnceLock::new();
        RECORDER.get_or_init(|| {
            let recorder: &'static TotalsRecorder = Box::leak(Box::default());
            metrics::set_global_recorder(recorder)
                .expect("no other metrics recorder in a features test binary");
            recorder
        })
    }

    /// The total of counter `key` (`name{labels}`), 0 if never registered.
    pub fn counter(&self, key: &str) -> u64 {
        let counters = self.counters.lock().expect("counters lock");
        counters.get(key).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The samples histogram `key` recorded.
    pub fn samples(&self, key: &str) -> u64 {
        let histograms = self.histograms.lock().expect("histograms lock");
        histograms
            .get(key)
            .map_or(0, |h| h.0.load(Ordering::Relaxed))
    }
}

/// A measured event.
#[event(name = "features.{env}.Measured", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Fail every call.
    pub fail: bool,
}

/// Fails on request.
#[event_listener(Measured, name = "FeatureMeter")]
pub struct Meter;

impl EventListener<Measured> for Meter {
    async fn on(&self, event: Measured, _: &Context) -> ListenerResult {
        if event.fail {
            return Err("asked to fail".into());
        }
        Ok(())
    }
}

/// The `metrics` counters and the histogram count what happened over the broker.
pub async fn metrics_counters(env: &mut TestEnv<'_>) {
    let harness = env.harness;
    let recorder = TotalsRecorder::global();
    let mut two_attempts = single_attempt();
    two_attempts.retry.max_attempts = 2;
    let manager = env
        .start(
            env.builder("a")
                .listener_options_for("FeatureMeter", two_attempts)
                .listener(Meter),
        )
        .await;
    for fail in [false, true, false] {
        manager.send_event(&Measured { fail }).await.expect("send");
    }
    let done = eventually(WAIT, || {
        let stats = manager.stats();
        stats.handled == 2 && stats.dead_lettered == 1
    })
    .await;
    assert!(done, "{}: {:?}", harness.name(), manager.stats());
    let event = format!("event=features.{}.Measured", env.env);
    let labels = format!("{event},listener=FeatureMeter");
    let count = |name: &str, labels: &str| recorder.counter(&format!("{name}{{{labels}}}"));
    assert_eq!(
        count("eventing_sent_total", &event),
        3,
        "{}",
        harness.name()
    );
    assert_eq!(count("eventing_handled_total", &labels), 2);
    assert_eq!(
        count("eventing_failed_total", &labels),
        2,
        "two calls failed"
    );
    assert_eq!(count("eventing_retried_total", &labels), 1);
    assert_eq!(count("eventing_dead_lettered_total", &labels), 1);
    assert_eq!(
        recorder.samples(&format!("eventing_handling_seconds{{{labels}}}")),
        2,
        "one sample per successful call"
    );
}

// ---------------------------------------------------------------------------------
// command line

/// An event for the command-line tool.
#[event(name = "features.{env}.Mail", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mail {
    /// Order id.
    pub id: u64,
}

/// Fails every call.
#[event_listener(Mail, name = "FeatureMailer")]
pub struct Mailer;

impl EventListener<Mail> for Mailer {
    async fn on(&self, _: Mail, _: &Context) -> ListenerResult {
        Err("mail server down".into())
    }
}

async fn cli(line: &[&str]) -> Result<String, eventing::cli::CliError> {
    let args = line.iter().map(|s| s.to_string());
    tokio::time::timeout(WAIT, eventing::cli::run_args(args))
        .await
        .expect("the command timed out")
}

/// `send`, `dead-letters` and `replay` of the command-line tool against the
/// broker a running manager uses.
pub async fn cli_send_and_dead_letters(env: &mut TestEnv<'_>) {
    let harness = env.harness;
    let manager = env
        .start(
            env.builder("a")
                .listener_options_for("FeatureMailer", single_attempt())
                .listener(Mailer),
        )
        .await;
    let url = harness.url(&env.env);
    let var = format!("env={}", env.env);
    let common = ["--url", url.as_str(), "--var", var.as_str()];
    let queue = format!("features.{}.Mail::FeatureMailer", env.env);

    let send = [
        "send",
        "--event",
        "features.{env}.Mail",
        "--json",
        "{\"id\":7}",
    ];
    let sent = cli(&[&send[..], &common[..]].concat()).await.expect("send");
    assert!(
        sent.starts_with(&format!("sent features.{}.Mail message-id ", env.env)),
        "{sent}"
    );
    assert!(
        !sent.contains("guest:guest"),
        "no credentials in the output"
    );
    assert!(
        eventually(WAIT, || manager.stats().dead_lettered == 1).await,
        "{}: the listener got the event and gave up on it",
        harness.name()
    );

    let list = ["dead-letters", "--queue", queue.as_str()];
    let listed = cli(&[&list[..], &common[..]].concat())
        .await
        .expect("dead-letters");
    assert!(
        listed.contains(
            "x-dead-letter-reason: listener failed 1 times; last error: mail server down"
        ),
        "{}: {listed}",
        harness.name()
    );
    assert!(listed.contains("body: {\"id\":7}"), "{listed}");
    let messages = listed.lines().filter(|l| l.starts_with("message ")).count();
    assert_eq!(messages, 1, "{listed}");

    let unknown = ["dead-letters", "--queue", "no-such-queue"];
    let error = cli(&[&unknown[..], &common[..]].concat())
        .await
        .expect_err("unknown queue");
    // The wording of eventing's `Error::UnknownQueue` (5b3a85f; "no registered
    // listener ..." before it).
    assert!(
        error
            .to_string()
            .contains("no listener uses queue `no-such-queue`"),
        "{error}"
    );

    // Replay while the listener still fails: the letter runs once more and is
    // dead-lettered again, once (a replay takes each letter at most once).
    let replay = ["replay", "--queue", queue.as_str()];
    let replayed = cli(&[&replay[..], &common[..]].concat())
        .await
        .expect("replay");
    assert_eq!(
        replayed,
        format!("replayed 1 message(s) onto {queue}\n"),
        "{}",
        harness.name()
    );
    assert!(
        eventually(WAIT, || manager.stats().dead_lettered == 2).await,
        "{}: the replayed message ran again",
        harness.name()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(manager.stats().dead_lettered, 2, "{}", harness.name());
    let listed = cli(&[&list[..], &common[..]].concat())
        .await
        .expect("dead-letters");
    let messages = listed.lines().filter(|l| l.starts_with("message ")).count();
    assert_eq!(messages, 1, "{}: {listed}", harness.name());
}

//! End-to-end throughput and round-trip latency over NATS JetStream, in one run:
//! `EventManager` over eventing-nats beside raw `async-nats` JetStream doing the
//! same work, against the server at `EVENTING_NATS_URL` (default
//! `nats://127.0.0.1:4222`):
//!
//! ```text
//! bash scripts/nats.sh start
//! cargo bench -p eventing-nats --bench nats
//! BENCH_EVENTS=20000 BENCH_SAMPLES=1000 BENCH_ROUNDS=3 BENCH_IN_FLIGHT=64 BENCH_PREFETCH=256
//! BENCH_SIDES=eventing   # one side alone (raw, same-format, eventing), to profile it
//! BENCH_CONCURRENCY=1     # the listener's concurrency (default: the runtime's)
//! BENCH_VERBOSE=1         # each round's rate and CPU per event
//! bash scripts/nats.sh stop
//! ```
//!
//! Both sides move the same 62-byte JSON payload (serialized per send, decoded per
//! delivery) through a file-storage stream with limits retention, one subject, and
//! a durable pull consumer with explicit acks, one ack per message:
//!
//! - `raw`: async-nats JetStream at its plainest, on two connections as
//!   eventing's provider is (one publishing; one consuming and acknowledging; on
//!   one connection both sides of the run lose 10-15%): `publish` with the ack
//!   awaited, `BENCH_IN_FLIGHT` publishes in flight; a durable pull consumer
//!   (`max_ack_pending` = 16 × prefetch, as eventing's shared queues) read with
//!   `messages()` in batches of `BENCH_PREFETCH`, `ack()` per message;
//! - `raw, eventing's format`: the same raw code publishing what eventing puts on
//!   the wire for a default event (one header, the message id), so the table shows
//!   what the format costs apart from what the runtime costs;
//! - `eventing`: an `EventManager` with a durable event and one competing
//!   listener, `send_event` with the same number in flight, listener prefetch
//!   `BENCH_PREFETCH`.
//!
//! Throughput: N events with a bounded number of sends in flight, from the first
//! send to the last handled message, with the CPU time this process and
//! nats-server spent per event meanwhile (`bench::CpuClock`). Round trip: one event at a time, from send
//! (publish ack included on both sides) to handled. The sides take turns
//! (who goes first rotates) for `BENCH_ROUNDS` rounds; each figure is the
//! median of the rounds. Streams and consumers get unique names per run and are
//! deleted at the end; a missing server fails within seconds with a message.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::{RetentionPolicy, StorageType};
use async_nats::jetstream::{self as js, consumer::AckPolicy, consumer::DeliverPolicy};
use bytes::Bytes;
use eventing::{
    Context, EventListener, EventManager, ListenerOptions, ListenerResult, event, event_listener,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use eventing_nats as _;
use eventing_test::bench::{
    Counter, Figures, bounded, print_comparison, print_same_format, setting, three_sides,
    under_cargo_bench,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The longest anything is awaited at once: a missing server or a stuck consumer
/// fails the run instead of hanging it.
const LIMIT: Duration = Duration::from_secs(60);
/// Connecting (and the first JetStream call).
const CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// eventing's default `max_age` of event streams, for the raw stream too.
const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The payload: `{"id":100000,"kind":"bench.tick","note":"nats bench payload!"}`, 62 bytes.
#[event(name = "bench.nats.{run}.Tick", durable = true)]
#[derive(Serialize, Deserialize)]
struct Tick {
    id: u64,
    kind: String,
    note: String,
}

fn tick(id: u64) -> Tick {
    Tick {
        id: 100_000 + id % 900_000,
        kind: "bench.tick".into(),
        note: "nats bench payload!".into(),
    }
}

#[event_listener(Tick, name = "Counter")]
struct TickListener {
    counter: Arc<Counter>,
}

impl EventListener<Tick> for TickListener {
    async fn on(&self, event: Tick, _: &Context) -> ListenerResult {
        std::hint::black_box(event.id);
        self.counter.hit();
        Ok(())
    }
}

struct Settings {
    url: String,
    n: u64,
    samples: usize,
    rounds: u64,
    in_flight: usize,
    prefetch: u16,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            url: std::env::var("EVENTING_NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
            n: setting("BENCH_EVENTS", 20_000).max(1),
            samples: setting("BENCH_SAMPLES", 1_000).max(10),
            rounds: setting("BENCH_ROUNDS", 3).max(1),
            in_flight: setting("BENCH_IN_FLIGHT", 64).max(1),
            prefetch: setting("BENCH_PREFETCH", 256).max(1),
        }
    }
}

// ---------------------------------------------------------------------------------
// raw async-nats

/// The raw side: a JetStream context, the subject it publishes to, and the task
/// that consumes, decodes and acks.
struct Raw {
    js: js::Context,
    subject: String,
    consuming: tokio::task::JoinHandle<()>,
}

impl Raw {
    async fn new(
        js: &js::Context,
        consuming: &js::Context,
        names: &RawNames,
        settings: &Settings,
        counter: Arc<Counter>,
    ) -> Self {
        let stream = js::stream::Config {
            name: names.stream.clone(),
            subjects: vec![names.subject.clone()],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            max_age: MAX_AGE,
            ..Default::default()
        };
        bounded("creating the raw stream", LIMIT, js.create_stream(stream))
            .await
            .expect("create the raw stream");
        let prefetch = i64::from(settings.prefetch);
        let config = js::consumer::pull::Config {
            durable_name: Some(names.consumer.clone()),
            filter_subject: names.subject.clone(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            deliver_policy: DeliverPolicy::New,
            max_ack_pending: prefetch * 16,
            ..Default::default()
        };
        let consumer: js::consumer::PullConsumer = bounded(
            "creating the raw consumer",
            LIMIT,
            consuming.create_consumer_on_stream(config, &names.stream),
        )
        .await
        .expect("create the raw consumer");
        let mut messages = bounded(
            "starting the raw consumer",
            LIMIT,
            consumer
                .stream()
                .max_messages_per_batch(usize::from(settings.prefetch))
                .messages(),
        )
        .await
        .expect("raw consumer messages");
        let consuming = tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        eprintln!("raw consumer: {error}");
                        continue;
                    }
                };
                let event: Tick = serde_json::from_slice(&message.payload).expect("JSON body");
                std::hint::black_box(event.id);
                if let Err(error) = message.ack().await {
                    eprintln!("raw consumer: ack: {error}");
                }
                counter.hit();
            }
        });
        Self {
            js: js.clone(),
            subject: names.subject.clone(),
            consuming,
        }
    }

    async fn send(&self, id: u64) {
        let body = Bytes::from(serde_json::to_vec(&tick(id)).expect("JSON"));
        let ack = self
            .js
            .publish(self.subject.clone(), body)
            .await
            .expect("raw publish");
        ack.await.expect("raw publish ack");
    }

    /// As [`Raw::send`], in eventing's wire format for a default event: one
    /// header, the message id (a UUID).
    async fn send_same_format(&self, id: u64) {
        let body = Bytes::from(serde_json::to_vec(&tick(id)).expect("JSON"));
        let mut headers = async_nats::HeaderMap::new();
        let message_id = eventing::header::new_message_id();
        headers.insert(eventing::header::MESSAGE_ID, message_id.as_str());
        let ack = self
            .js
            .publish_with_headers(self.subject.clone(), headers, body)
            .await
            .expect("raw publish");
        ack.await.expect("raw publish ack");
    }
}

struct RawNames {
    stream: String,
    subject: String,
    consumer: String,
}

// ---------------------------------------------------------------------------------
// both, and main

async fn start_eventing(settings: &Settings, run: &str) -> (EventManager, Arc<Counter>) {
    let counter = Counter::new();
    let build = EventManager::builder()
        .url(settings.url.as_str())
        .server_name("bench")
        .var("run", run)
        .send_timeout(Duration::from_secs(10))
        .listener(TickListener {
            counter: Arc::clone(&counter),
        })
        .only_bound_listeners()
        .listener_options(ListenerOptions {
            prefetch: settings.prefetch,
            concurrency: setting("BENCH_CONCURRENCY", ListenerOptions::default().concurrency),
            ..ListenerOptions::default()
        })
        .build();
    let manager = bounded("building the manager", LIMIT, build)
        .await
        .expect("build the manager");
    bounded("starting the manager", LIMIT, manager.start())
        .await
        .expect("start the manager");
    (manager, counter)
}

/// The three sides, taking turns (who goes first rotates each round);
/// (raw, raw in eventing's format, eventing).
async fn measure_all(
    settings: Arc<Settings>,
    (js, consuming): (js::Context, js::Context),
    run: String,
    names: RawNames,
) -> (Figures, Figures, Figures) {
    let raw_counter = Counter::new();
    let raw = Raw::new(&js, &consuming, &names, &settings, Arc::clone(&raw_counter)).await;
    let (manager, counter) = start_eventing(&settings, &run).await;
    let shape = (settings.n, settings.in_flight, settings.samples);
    let manager = &manager;
    let figures = three_sides(
        (settings.rounds, "nats-server"),
        shape,
        LIMIT,
        (&raw_counter, |i| raw.send(i)),
        (&raw_counter, |i| raw.send_same_format(i)),
        (&counter, |i| async move {
            manager.send_event(&tick(i)).await.expect("send_event");
        }),
    )
    .await;
    raw.consuming.abort();
    bounded("shutting the manager down", LIMIT, manager.shutdown())
        .await
        .expect("shutdown");
    let [raw, same_format, eventing] = figures;
    (raw, same_format, eventing)
}

fn fail(message: String) -> ! {
    eprintln!("nats bench: {message}");
    eprintln!("(start a server with JetStream: `bash scripts/nats.sh start`)");
    std::process::exit(1);
}

fn main() {
    if !under_cargo_bench() {
        return;
    }
    let settings = Arc::new(Settings::from_env());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let run = format!("{}-{nanos}", std::process::id());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // The raw side connects as eventing does (same URL parsing and options).
        let url = eventing_nats::url::parse(&settings.url)
            .unwrap_or_else(|e| fail(format!("EVENTING_NATS_URL: {e}")));
        let endpoint = url.servers.join(",");
        let connect = || async {
            let options = url
                .options()
                .await
                .unwrap_or_else(|e| fail(format!("EVENTING_NATS_URL: {e}")))
                .connection_timeout(CONNECT_LIMIT);
            match tokio::time::timeout(CONNECT_LIMIT, options.connect(url.servers.clone())).await {
                Ok(Ok(client)) => client,
                Ok(Err(error)) => fail(format!("cannot connect to {endpoint}: {error}")),
                Err(_) => fail(format!("connecting to {endpoint} timed out")),
            }
        };
        let (client, consuming) = (connect().await, connect().await);
        let context = |client: &async_nats::Client| {
            js::ContextBuilder::new()
                .timeout(Duration::from_secs(5))
                .build(client.clone())
        };
        let js = context(&client);
        // `$JS.API.INFO` answers with an error (or nobody answers) without JetStream.
        let info = client.request("$JS.API.INFO", Bytes::new());
        match tokio::time::timeout(CONNECT_LIMIT, info).await {
            Ok(Ok(answer)) => {
                let answer: serde_json::Value =
                    serde_json::from_slice(&answer.payload).unwrap_or_default();
                if let Some(error) = answer.get("error") {
                    fail(format!("no JetStream at {endpoint}: {error}"));
                }
            }
            Ok(Err(error)) => fail(format!("no JetStream at {endpoint}: {error}")),
            Err(_) => fail(format!("no JetStream answer from {endpoint}")),
        }

        let names = RawNames {
            stream: format!("bench-raw-{run}"),
            subject: format!("bench.raw.{run}"),
            consumer: "Counter".to_string(),
        };
        let raw_stream = names.stream.clone();
        let event_stream =
            eventing_nats::names::stream(&format!("bench.nats.{run}.Tick")).expect("stream name");
        let payload = serde_json::to_vec(&tick(0)).expect("JSON").len();
        eprintln!(
            "nats bench: {} events per round, {} round trips, {} rounds, {payload}-byte JSON, \
             {} sends in flight, prefetch {}",
            settings.n, settings.samples, settings.rounds, settings.in_flight, settings.prefetch
        );

        // Measured in a task of its own, so the streams are deleted even if a
        // measurement panics.
        let measured = tokio::spawn(measure_all(
            Arc::clone(&settings),
            (js.clone(), context(&consuming)),
            run.clone(),
            names,
        ))
        .await;
        for stream in [&raw_stream, &event_stream] {
            // Deleting a stream deletes its consumers.
            match tokio::time::timeout(CONNECT_LIMIT, js.delete_stream(stream)).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => eprintln!("nats bench: deleting stream {stream}: {error}"),
                Err(_) => eprintln!("nats bench: deleting stream {stream} timed out"),
            }
        }
        let _ = client.flush().await;
        let (raw, same_format, eventing) = match measured {
            Ok(figures) => figures,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => panic!("measurement task: {error}"),
            },
        };

        let title = format!(
            "NATS JetStream end to end ({endpoint}), durable (file) stream, {} events of \
             {payload} B JSON, {} in flight, prefetch {}, {} round trips, median of {} rounds",
            settings.n, settings.in_flight, settings.prefetch, settings.samples, settings.rounds
        );
        print_comparison(
            &title,
            "raw async-nats",
            &raw,
            "eventing over NATS",
            &eventing,
        );
        print_same_format("raw, eventing's format", &same_format, &eventing);
    });
}

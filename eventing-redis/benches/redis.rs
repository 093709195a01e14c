//! End-to-end throughput and round-trip latency over Redis Streams, in one run:
//! `EventManager` over eventing-redis beside raw redis-rs doing the same work, against
//! the server at `EVENTING_REDIS_URL` (default `redis://127.0.0.1:6390`, the one
//! `scripts/redis.sh` starts: AOF with `appendfsync always`):
//!
//! ```text
//! bash scripts/redis.sh start
//! cargo bench -p eventing-redis --bench redis
//! BENCH_EVENTS=20000 BENCH_SAMPLES=1000 BENCH_ROUNDS=3 BENCH_IN_FLIGHT=64 BENCH_PREFETCH=256
//! bash scripts/redis.sh stop
//! ```
//!
//! Both sides move the same JSON payload (serialized per send, decoded per delivery)
//! through one stream and one consumer group, one `XACK` per entry:
//!
//! - `raw`: redis-rs at its plainest: `XADD <stream> * body <json>` on a multiplexed
//!   connection, `BENCH_IN_FLIGHT` in flight; a consumer reading with `XREADGROUP
//!   COUNT <prefetch> BLOCK` on a connection of its own and acking each entry with
//!   `XACK` on the shared one;
//! - `raw, eventing's format`: the same raw code adding what eventing writes for a
//!   default event (message id, event, timestamp and content type as fields before
//!   the body), so the table shows what the format costs apart from the runtime;
//! - `eventing`: an `EventManager` with a durable event and one competing listener,
//!   `send_event` with the same number in flight, listener prefetch `BENCH_PREFETCH`.
//!
//! Throughput: N events with a bounded number of sends in flight, from the first
//! send to the last handled message. Round trip: one event at a time, from send to
//! handled. The sides take turns (who goes first rotates) for `BENCH_ROUNDS`
//! rounds; each figure is the median of the rounds. The streams get unique names
//! per run and are deleted at the end; a missing server fails within seconds.

use std::sync::Arc;
use std::time::Duration;

use eventing::{
    Context, EventListener, EventManager, ListenerOptions, ListenerResult, event, event_listener,
};
use redis::Value;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

/// As in the other providers' benches: glibc's malloc makes every side pay for
/// frees of memory another thread allocated (docs/benchmarks.md, In-process).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use eventing_redis as _;
use eventing_test::bench::{
    Counter, Figures, bounded, print_comparison, print_same_format, setting, three_sides,
    under_cargo_bench,
};

/// The longest anything is awaited at once: a missing server or a stuck consumer
/// fails the run instead of hanging it.
const LIMIT: Duration = Duration::from_secs(60);
/// Connecting.
const CONNECT_LIMIT: Duration = Duration::from_secs(5);

/// The payload: `{"id":100000,"kind":"bench.tick","note":"redis bench payload"}`.
#[event(name = "bench.redis.{run}.Tick", durable = true)]
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
        note: "redis bench payload".into(),
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
            url: std::env::var("EVENTING_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6390".into()),
            n: setting("BENCH_EVENTS", 20_000).max(1),
            samples: setting("BENCH_SAMPLES", 1_000).max(10),
            rounds: setting("BENCH_ROUNDS", 3).max(1),
            in_flight: setting("BENCH_IN_FLIGHT", 64).max(1),
            prefetch: setting("BENCH_PREFETCH", 256).max(1),
        }
    }
}

// ---------------------------------------------------------------------------------
// raw redis-rs

/// The raw side: the shared connection, the stream, and the consuming task.
struct Raw {
    connection: MultiplexedConnection,
    stream: String,
    consuming: tokio::task::JoinHandle<()>,
}

impl Raw {
    async fn new(
        client: &redis::Client,
        stream: &str,
        prefetch: u16,
        counter: Arc<Counter>,
    ) -> Self {
        let mut connection = connect(client).await;
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg("Counter")
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await
            .expect("create the raw group");
        let mut reader = connect(client).await;
        let acks = connection.clone();
        let stream_key = stream.to_string();
        let consuming = tokio::spawn(async move {
            loop {
                let reply: Value = match redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("Counter")
                    .arg("raw")
                    .arg("COUNT")
                    .arg(prefetch)
                    .arg("BLOCK")
                    .arg(1000)
                    .arg("STREAMS")
                    .arg(&stream_key)
                    .arg(">")
                    .query_async(&mut reader)
                    .await
                {
                    Ok(reply) => reply,
                    Err(error) => {
                        eprintln!("raw consumer: {error}");
                        return;
                    }
                };
                for (id, body) in raw_entries(&reply) {
                    let event: Tick = serde_json::from_slice(&body).expect("JSON body");
                    std::hint::black_box(event.id);
                    let mut acks = acks.clone();
                    let key = stream_key.clone();
                    let counter = Arc::clone(&counter);
                    tokio::spawn(async move {
                        let acked: redis::RedisResult<i64> = redis::cmd("XACK")
                            .arg(&key)
                            .arg("Counter")
                            .arg(&id)
                            .query_async(&mut acks)
                            .await;
                        if let Err(error) = acked {
                            eprintln!("raw consumer: ack: {error}");
                        }
                    });
                    counter.hit();
                }
            }
        });
        Self {
            connection,
            stream: stream.to_string(),
            consuming,
        }
    }

    async fn send(&self, id: u64) {
        let body = serde_json::to_vec(&tick(id)).expect("JSON");
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("XADD")
            .arg(&self.stream)
            .arg("*")
            .arg("body")
            .arg(body)
            .query_async(&mut connection)
            .await
            .expect("raw XADD");
    }

    /// As [`Raw::send`], in eventing's wire format for a default event: the
    /// headers as fields before the body.
    async fn send_same_format(&self, id: u64) {
        let body = serde_json::to_vec(&tick(id)).expect("JSON");
        let envelope = eventing::Envelope::new("bench.Tick", "application/json", body.into());
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&self.stream).arg("*");
        for (name, value) in envelope.headers.iter() {
            xadd.arg(name).arg(value);
        }
        xadd.arg("body").arg(envelope.body.as_ref());
        let mut connection = self.connection.clone();
        let _: String = xadd.query_async(&mut connection).await.expect("raw XADD");
    }
}

/// (id, body) of the entries of an XREADGROUP reply.
fn raw_entries(reply: &Value) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Value::Array(streams) = reply else {
        return out;
    };
    for stream in streams {
        let Value::Array(parts) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = parts.get(1) else {
            continue;
        };
        for entry in entries {
            let Value::Array(entry) = entry else { continue };
            let (Some(Value::BulkString(id)), Some(Value::Array(fields))) =
                (entry.first(), entry.get(1))
            else {
                continue;
            };
            let body = fields.chunks_exact(2).find_map(|pair| match pair {
                [Value::BulkString(name), Value::BulkString(value)] if name == b"body" => {
                    Some(value.clone())
                }
                _ => None,
            });
            if let Some(body) = body {
                out.push((String::from_utf8_lossy(id).into_owned(), body));
            }
        }
    }
    out
}

async fn connect(client: &redis::Client) -> MultiplexedConnection {
    // Replies may take as long as a blocking read (1 s) and then some.
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_LIMIT))
        .set_response_timeout(Some(CONNECT_LIMIT));
    let connecting = client.get_multiplexed_async_connection_with_config(&config);
    match tokio::time::timeout(CONNECT_LIMIT, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => fail(format!("cannot connect: {error}")),
        Err(_) => fail("connecting timed out".into()),
    }
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
    client: redis::Client,
    run: String,
    raw_stream: String,
) -> (Figures, Figures, Figures) {
    let raw_counter = Counter::new();
    let raw = Raw::new(
        &client,
        &raw_stream,
        settings.prefetch,
        Arc::clone(&raw_counter),
    )
    .await;
    let (manager, counter) = start_eventing(&settings, &run).await;
    let shape = (settings.n, settings.in_flight, settings.samples);
    let manager = &manager;
    let figures = three_sides(
        (settings.rounds, "redis-server"),
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
    eprintln!("redis bench: {message}");
    eprintln!("(start a server: `bash scripts/redis.sh start`)");
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
        let client = redis::Client::open(settings.url.as_str())
            .unwrap_or_else(|e| fail(format!("EVENTING_REDIS_URL: {e}")));
        let mut admin = connect(&client).await;
        let raw_stream = format!("bench.raw.{run}");
        let event_stream = format!("bench.redis.{run}.Tick");
        let payload = serde_json::to_vec(&tick(0)).expect("JSON").len();
        let aof: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async(&mut admin)
            .await
            .unwrap_or_default();
        let fsync = aof.get(1).cloned().unwrap_or_else(|| "?".into());
        eprintln!(
            "redis bench: {} events per round, {} round trips, {} rounds, {payload}-byte JSON, \
             {} sends in flight, prefetch {}, appendfsync {fsync}",
            settings.n, settings.samples, settings.rounds, settings.in_flight, settings.prefetch
        );

        // Measured in a task of its own, so the streams are deleted even if a
        // measurement panics.
        let measured = tokio::spawn(measure_all(
            Arc::clone(&settings),
            client.clone(),
            run.clone(),
            raw_stream.clone(),
        ))
        .await;
        let deleted: redis::RedisResult<i64> = redis::cmd("DEL")
            .arg(&raw_stream)
            .arg(&event_stream)
            .query_async(&mut admin)
            .await;
        if let Err(error) = deleted {
            eprintln!("redis bench: deleting the streams: {error}");
        }
        let (raw, same_format, eventing) = match measured {
            Ok(figures) => figures,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => panic!("measurement task: {error}"),
            },
        };

        let title = format!(
            "Redis Streams end to end (appendfsync {fsync}), {} events of {payload} B JSON, \
             {} in flight, prefetch {}, {} round trips, median of {} rounds",
            settings.n, settings.in_flight, settings.prefetch, settings.samples, settings.rounds
        );
        print_comparison(
            &title,
            "raw redis-rs",
            &raw,
            "eventing over Redis",
            &eventing,
        );
        print_same_format("raw, eventing's format", &same_format, &eventing);
    });
}

//! End-to-end throughput and round-trip latency over RabbitMQ's STOMP plugin (or
//! ActiveMQ Classic, with `?broker=activemq` in the URL), in one run:
//! `EventManager` over the STOMP provider beside a minimal raw STOMP client (this
//! crate's codec over a `TcpStream`: `SEND`, and a `SUBSCRIBE` with a prefetch of
//! 1000 and one `ACK` per message), with the same ~60-byte JSON payload through
//! the same kind of destinations: on RabbitMQ a fanout exchange and a durable
//! queue, on ActiveMQ a virtual topic and its consumer queue.
//!
//! - throughput: N events sent back to back, from the first send to the last
//!   handled message;
//! - round trip: one event at a time, send to handled, p50 and p99 of the samples.
//!
//! The two clients take turns (alternating who goes first) for `BENCH_ROUNDS`
//! rounds (default 4) and the best round of each is reported, which tames a
//! machine shared with other work. Both use the same allocator (mimalloc).
//!
//! ```text
//! cargo bench -p eventing-stomp --bench stomp
//! EVENTING_STOMP_URL=stomp://guest:guest@127.0.0.1:61613 BENCH_EVENTS=30000 BENCH_SAMPLES=2000 BENCH_ROUNDS=4
//! EVENTING_STOMP_URL='stomp://127.0.0.1:61623?broker=activemq' cargo bench -p eventing-stomp --bench stomp
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use eventing::{
    Context, EventListener, EventManager, ListenerOptions, ListenerResult, event, event_listener,
};
use eventing_stomp::codec::{Incoming, StompCodec};
use eventing_stomp::frame::{Command, Frame};
use eventing_stomp::{Dialect, RabbitAdmin, StompConfig, activemq};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::FramedRead;

// The same allocator for both clients (and as in `eventing`'s in-process bench);
// glibc's malloc is slow when one thread frees what another allocated.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PREFETCH: u16 = 1000;

/// The payload: `{"id":123456,"kind":"bench.tick","note":"stomp bench payload"}` is 60 bytes.
#[event(name = "bench.stomp.{run}.Tick")]
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
        note: "stomp bench payload".into(),
    }
}

/// Counts handled events and wakes the bench at a target.
struct Counter {
    handled: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

impl Counter {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            handled: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            done: Notify::new(),
        })
    }

    fn hit(&self) {
        let n = self.handled.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.target.load(Ordering::Acquire) {
            self.done.notify_one();
        }
    }

    /// Waits until `n` more events than now were handled (the returned future
    /// must be created before the events are sent).
    fn arm(&self, n: u64) {
        let target = self.handled.load(Ordering::Acquire) + n;
        self.target.store(target, Ordering::Release);
    }

    async fn wait(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.done.notified();
            if self.handled.load(Ordering::Acquire) >= self.target.load(Ordering::Acquire) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "only {} of {} events handled in {limit:?}",
                    self.handled.load(Ordering::Acquire),
                    self.target.load(Ordering::Acquire)
                );
            }
        }
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

struct Measured {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// Sends `n` events with `send` and waits until all were handled.
async fn throughput<F, Fut>(counter: &Counter, n: u64, mut send: F) -> f64
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    counter.arm(n);
    let start = Instant::now();
    for i in 0..n {
        send(i).await;
    }
    counter.wait(Duration::from_secs(120)).await;
    n as f64 / start.elapsed().as_secs_f64()
}

/// `samples` round trips, one event at a time; (p50, p99).
async fn round_trips<F, Fut>(counter: &Counter, samples: usize, mut send: F) -> (Duration, Duration)
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        counter.arm(1);
        let start = Instant::now();
        send(i as u64).await;
        counter.wait(Duration::from_secs(10)).await;
        times.push(start.elapsed());
    }
    times.sort_unstable();
    (
        times[samples / 2],
        times[(samples * 99 / 100).min(samples - 1)],
    )
}

/// The manager under test, started, with its counter.
async fn start_eventing(url: &str, run: &str) -> (EventManager, Arc<Counter>) {
    let counter = Counter::new();
    let manager = EventManager::builder()
        .url(url)
        .server_name("bench")
        .var("run", run)
        .listener(TickListener {
            counter: Arc::clone(&counter),
        })
        .only_bound_listeners()
        .listener_options(ListenerOptions {
            prefetch: PREFETCH,
            concurrency: 256,
            ..ListenerOptions::default()
        })
        .build()
        .await
        .expect("build manager");
    manager.start().await.expect("start manager");
    (manager, counter)
}

async fn measure_eventing(
    manager: &EventManager,
    counter: &Counter,
    n: u64,
    samples: usize,
) -> Measured {
    let send = |i: u64| async move { manager.send_event(&tick(i)).await.expect("send") };
    throughput(counter, n.min(2000), send).await; // warm-up
    let per_second = throughput(counter, n, send).await;
    let (p50, p99) = round_trips(counter, samples, send).await;
    Measured {
        per_second,
        p50,
        p99,
    }
}

/// The raw client: one connection, a writer task, a reader task that decodes
/// the JSON and acknowledges each message.
struct Raw {
    tx: mpsc::UnboundedSender<Bytes>,
    codec: StompCodec,
    destination: String,
}

impl Raw {
    async fn connect(
        config: &StompConfig,
        exchange: &str,
        queue: &str,
        counter: Arc<Counter>,
    ) -> Raw {
        let tcp = TcpStream::connect((config.host.as_str(), config.port))
            .await
            .expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (read, mut write) = tcp.into_split();
        let codec = StompCodec::new();
        let mut connect = Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("host", config.vhost.clone())
            .header("heart-beat", "0,0");
        if let (Some(login), Some(passcode)) = (&config.login, &config.passcode) {
            connect.push_header("login", login.clone());
            connect.push_header("passcode", passcode.clone());
        }
        let (destination, subscribe) = if config.dialect == Dialect::ActiveMq {
            // The virtual topic and the consumer queue the raw client reads.
            let destination = activemq::event_destination(exchange);
            let subscribe = Frame::new(Command::Subscribe)
                .header(
                    "destination",
                    format!("/queue/Consumer.Counter.VirtualTopic.{exchange}"),
                )
                .header(activemq::PREFETCH, PREFETCH.to_string());
            (destination, subscribe)
        } else {
            let destination = format!("/exchange/{exchange}");
            let subscribe = Frame::new(Command::Subscribe)
                .header("destination", destination.clone())
                .header("x-queue-name", queue)
                .header("durable", "true")
                .header("auto-delete", "false")
                .header("prefetch-count", PREFETCH.to_string());
            (destination, subscribe)
        };
        let subscribe = subscribe
            .header("id", "0")
            .header("ack", "client-individual")
            .header("receipt", "subscribed");
        let mut buf = BytesMut::new();
        codec.encode_frame(&connect, &mut buf).expect("encode");
        codec.encode_frame(&subscribe, &mut buf).expect("encode");
        write.write_all(&buf).await.expect("write");
        let mut frames = FramedRead::new(read, StompCodec::new());
        loop {
            match frames.next().await {
                Some(Ok(Incoming::Frame(frame))) if frame.command == Command::Receipt => break,
                Some(Ok(Incoming::Frame(frame))) if frame.command == Command::Error => {
                    panic!("raw client: {frame:?}")
                }
                Some(Ok(_)) => {}
                other => panic!("raw client: {other:?}"),
            }
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        tokio::spawn(async move {
            let mut batch = BytesMut::with_capacity(64 * 1024);
            while let Some(bytes) = rx.recv().await {
                batch.extend_from_slice(&bytes);
                while let Ok(bytes) = rx.try_recv() {
                    batch.extend_from_slice(&bytes);
                }
                if write.write_all(&batch).await.is_err() {
                    return;
                }
                batch.clear();
            }
        });
        let acks = tx.clone();
        tokio::spawn(async move {
            let codec = StompCodec::new();
            while let Some(Ok(item)) = frames.next().await {
                let Incoming::Frame(frame) = item else {
                    continue;
                };
                if frame.command != Command::Message {
                    continue;
                }
                let event: Tick = serde_json::from_slice(&frame.body).expect("JSON body");
                std::hint::black_box(event.id);
                let mut buf = BytesMut::with_capacity(64);
                let ack = Frame::new(Command::Ack).header("id", frame.get("ack").unwrap_or(""));
                codec.encode_frame(&ack, &mut buf).expect("encode");
                if acks.send(buf.freeze()).is_err() {
                    return;
                }
                counter.hit();
            }
        });
        Raw {
            tx,
            codec,
            destination,
        }
    }

    fn send(&self, id: u64) {
        let body = serde_json::to_vec(&tick(id)).expect("JSON");
        let frame = Frame::new(Command::Send)
            .header("destination", self.destination.clone())
            .header("content-type", eventing::codec::JSON)
            .with_body(body);
        let mut buf = BytesMut::with_capacity(160);
        self.codec.encode_frame(&frame, &mut buf).expect("encode");
        self.tx.send(buf.freeze()).expect("writer alive");
    }
}

async fn measure_raw(raw: &Raw, counter: &Counter, n: u64, samples: usize) -> Measured {
    let send = |i: u64| async move { raw.send(i) };
    throughput(counter, n.min(2000), send).await; // warm-up
    let per_second = throughput(counter, n, send).await;
    let (p50, p99) = round_trips(counter, samples, send).await;
    Measured {
        per_second,
        p50,
        p99,
    }
}

/// The better of two measurements, metric by metric.
fn best(a: Option<Measured>, b: Measured) -> Measured {
    match a {
        None => b,
        Some(a) => Measured {
            per_second: a.per_second.max(b.per_second),
            p50: a.p50.min(b.p50),
            p99: a.p99.min(b.p99),
        },
    }
}

/// Both clients, taking turns; the best round of each.
async fn measure_both(
    config: StompConfig,
    url: String,
    run: String,
    (raw_exchange, raw_queue): (String, String),
    (n, samples, rounds): (u64, usize, u64),
) -> (Option<Measured>, Option<Measured>) {
    let raw_counter = Counter::new();
    let raw_client =
        Raw::connect(&config, &raw_exchange, &raw_queue, Arc::clone(&raw_counter)).await;
    let (manager, counter) = start_eventing(&url, &run).await;
    let (mut raw, mut eventing) = (None, None);
    // BENCH_ONLY=raw|eventing runs one side only (for profilers).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for round in 0..rounds {
        // Alternate who goes first, so neither always follows the other.
        for raw_turn in [round % 2 == 0, round % 2 == 1] {
            if raw_turn && only != "eventing" {
                raw = Some(best(
                    raw,
                    measure_raw(&raw_client, &raw_counter, n, samples).await,
                ));
            } else if !raw_turn && only != "raw" {
                let measured = measure_eventing(&manager, &counter, n, samples).await;
                eventing = Some(best(eventing, measured));
            }
        }
    }
    manager.shutdown().await.expect("shutdown");
    (raw, eventing)
}

async fn cleanup(config: &StompConfig, queues: &[&String], exchanges: &[&String]) {
    if config.dialect == Dialect::ActiveMq {
        // STOMP cannot delete destinations; the broker's policy collects empty ones.
        return;
    }
    let mut admin = RabbitAdmin::connect(config).await.expect("AMQP admin");
    for name in queues {
        admin.delete_queue(name).await.expect("delete queue");
    }
    for name in exchanges {
        admin.delete_exchange(name).await.expect("delete exchange");
    }
    admin.close().await;
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // Keep `cargo test --benches` quick: only `cargo bench` passes `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let url = std::env::var("EVENTING_STOMP_URL")
        .unwrap_or_else(|_| "stomp://guest:guest@127.0.0.1:61613".to_string());
    let n = env_number("BENCH_EVENTS", 30_000).max(1);
    let samples = usize::try_from(env_number("BENCH_SAMPLES", 2_000))
        .unwrap_or(2_000)
        .max(1);
    let rounds = env_number("BENCH_ROUNDS", 4).max(1);
    let config = StompConfig::from_url(&url).expect("EVENTING_STOMP_URL");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let run = format!("{}-{nanos}", std::process::id());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let raw_exchange = format!("bench.stomp.{run}.raw.Tick");
        let raw_queue = format!("{raw_exchange}::Counter");
        let event = format!("bench.stomp.{run}.Tick");
        let queue = format!("{event}::Counter");
        if config.dialect != Dialect::ActiveMq {
            let mut admin = RabbitAdmin::connect(&config).await.expect("AMQP admin");
            admin
                .declare_exchange(&raw_exchange, false)
                .await
                .expect("declare");
            admin.close().await;
        }

        // Measured in a task of its own, so the broker is cleaned up even if a
        // measurement panics.
        let measured = tokio::spawn(measure_both(
            config.clone(),
            url.clone(),
            run.clone(),
            (raw_exchange.clone(), raw_queue.clone()),
            (n, samples, rounds),
        ))
        .await;
        let dlq = format!("{queue}.dlq");
        cleanup(&config, &[&raw_queue, &queue, &dlq], &[&raw_exchange, &event]).await;
        let (raw, eventing) = match measured {
            Ok((Some(raw), Some(eventing))) => (raw, eventing),
            Ok(_) => return,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => panic!("measurement task: {error}"),
            },
        };

        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!();
        println!(
            "STOMP end to end ({}), {n} events of 60 B JSON, {samples} round trips, best of {rounds} rounds",
            config.display_endpoint()
        );
        println!(
            "{:<24}{:>12}{:>12}{:>12}",
            "", "events/s", "p50 (us)", "p99 (us)"
        );
        for (name, m) in [
            ("raw STOMP client", &raw),
            ("eventing over STOMP", &eventing),
        ] {
            println!(
                "{name:<24}{:>12.0}{:>12.0}{:>12.0}",
                m.per_second,
                us(m.p50),
                us(m.p99)
            );
        }
        println!(
            "{:<24}{:>11.2}x{:>11.2}x{:>11.2}x",
            "eventing / raw",
            eventing.per_second / raw.per_second,
            us(eventing.p50) / us(raw.p50),
            us(eventing.p99) / us(raw.p99)
        );
    });
}

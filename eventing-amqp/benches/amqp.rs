//! End-to-end throughput and latency of eventing over AMQP against raw lapin, in one
//! run against the broker at `EVENTING_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`):
//!
//! ```text
//! cargo bench -p eventing-amqp --bench amqp
//! BENCH_N=100000 BENCH_REPS=5 cargo bench -p eventing-amqp --bench amqp
//! ```
//!
//! Three sides move the same JSON payload with the same prefetch and number of
//! publishes in flight, each publishing on one connection and consuming on another.
//! Every side does the same work per event: serializes it on send and decodes it
//! on delivery (until December 2026 the raw sides sent one pre-serialized buffer
//! and never decoded, so their figures then left out work eventing did):
//!
//! - `raw`: lapin at its best: bare messages (delivery mode and content type only),
//!   acks with `multiple` every `BENCH_ACK_BATCH` deliveries;
//! - `raw-format`: the same lapin code sending eventing's wire format (message id,
//!   `type` = the event, content type, timestamp in seconds, no headers table), to
//!   tell the cost of the format from the cost of the runtime;
//! - `eventing`: an `EventManager` over eventing-amqp, `send_event` and a listener.
//!
//! Throughput is events per second from the first send to the last handled message;
//! latency is one message at a time, from send to handled. Each figure is the median
//! of `BENCH_REPS` runs; in each phase who goes first rotates from run to run
//! (`bench::turns`), so no side always follows another on a broker it warmed.
//!
//! The `batch` phase sends durable events two more ways: one at a time, each
//! publish's confirm awaited before the next (raw lapin; eventing's `send_event`
//! awaited in a loop), and in batches of `BENCH_BATCH`: raw lapin pipelined (every
//! publish of a batch queued, then all confirms awaited together) against
//! eventing's `send_events`. One at a time runs `BENCH_N / 5` events.
//!
//! Settings: `BENCH_N` (50000), `BENCH_REPS` (3), `BENCH_SAMPLES` (2000),
//! `BENCH_PREFETCH` (256), `BENCH_IN_FLIGHT` (64), `BENCH_CONCURRENCY` (32, the
//! listener's), `BENCH_ACK_BATCH` (64), `BENCH_BATCH` (1024); for profiling,
//! `BENCH_SIDES` (`raw,raw-format,eventing`), `BENCH_PHASES`
//! (`transient,durable,batch,latency`) and `BENCH_FORMAT` (`id,type,timestamp`: the
//! fields of eventing's format that `raw-format` sends, to tell what each costs);
//! `BENCH_VERBOSE` prints each round's figures and latency tail.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventing::{
    Context, EventListener, EventManager, ListenerOptions, ListenerResult, event, event_listener,
};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::{Deserialize, Serialize};

/// As in the other providers' benches: glibc's malloc makes every side pay for
/// frees of memory another thread allocated (docs/benchmarks.md, In-process).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tokio::sync::{Mutex, Notify, mpsc};

use eventing_amqp as _;
use eventing_test::bench::{CpuClock, in_flight, median, percentiles, setting, turns, verbose};

/// The payload: about 60 bytes of JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Payload {
    id: u64,
    name: String,
    value: f64,
    tag: String,
}

impl Payload {
    fn new(id: u64) -> Self {
        Self {
            id: 1_000_000 + id,
            name: "bench-event".into(),
            value: 3.25,
            tag: "abcdefgh".into(),
        }
    }
}

#[event(name = "bench.{run}.Transient")]
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Transient(Payload);

#[event(name = "bench.{run}.Durable", durable = true)]
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Durable(Payload);

#[event_listener(Transient, name = "Counter")]
struct TransientCounter(Arc<Probe>);

impl EventListener<Transient> for TransientCounter {
    async fn on(&self, _: Transient, _: &Context) -> ListenerResult {
        self.0.handled();
        Ok(())
    }
}

#[event_listener(Durable, name = "Counter")]
struct DurableCounter(Arc<Probe>);

impl EventListener<Durable> for DurableCounter {
    async fn on(&self, _: Durable, _: &Context) -> ListenerResult {
        self.0.handled();
        Ok(())
    }
}

/// Counts handled messages, or in latency mode reports each arrival.
struct Probe {
    count: AtomicU64,
    target: AtomicU64,
    done: Notify,
    latency: AtomicBool,
    arrivals: mpsc::Sender<Instant>,
    received: Mutex<mpsc::Receiver<Instant>>,
}

impl Probe {
    fn new() -> Arc<Self> {
        let (arrivals, received) = mpsc::channel(16);
        Arc::new(Self {
            count: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            done: Notify::new(),
            latency: AtomicBool::new(false),
            arrivals,
            received: Mutex::new(received),
        })
    }

    /// Records one message; true when the expected count is reached.
    fn handled(&self) -> bool {
        if self.latency.load(Ordering::Relaxed) {
            let _ = self.arrivals.try_send(Instant::now());
            return false;
        }
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let last = count == self.target.load(Ordering::Relaxed);
        if last {
            self.done.notify_one();
        }
        last
    }

    fn expect(&self, n: u64) {
        self.latency.store(false, Ordering::SeqCst);
        self.count.store(0, Ordering::SeqCst);
        self.target.store(n, Ordering::SeqCst);
    }

    fn latency_mode(&self) {
        self.latency.store(true, Ordering::SeqCst);
    }
}

struct Settings {
    url: String,
    n: u64,
    reps: usize,
    samples: usize,
    prefetch: u16,
    in_flight: usize,
    concurrency: usize,
    ack_batch: u64,
    batch: usize,
    sides: String,
    phases: String,
    /// The fields of eventing's format the `raw-format` side sends.
    format: String,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            url: std::env::var("EVENTING_AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            n: setting("BENCH_N", 50_000),
            reps: setting("BENCH_REPS", 3).max(1),
            samples: setting("BENCH_SAMPLES", 2000).max(10),
            prefetch: setting("BENCH_PREFETCH", 256),
            in_flight: setting("BENCH_IN_FLIGHT", 64).max(1),
            concurrency: setting("BENCH_CONCURRENCY", 32).max(1),
            ack_batch: setting("BENCH_ACK_BATCH", 64).max(1),
            batch: setting("BENCH_BATCH", 1024).max(1),
            sides: setting("BENCH_SIDES", "raw,raw-format,eventing".to_string()),
            phases: setting(
                "BENCH_PHASES",
                "transient,durable,batch,latency".to_string(),
            ),
            format: setting("BENCH_FORMAT", "id,type,timestamp".to_string()),
        }
    }

    fn side(&self, name: &str) -> bool {
        self.sides.split(',').any(|s| s.trim() == name)
    }

    fn phase(&self, name: &str) -> bool {
        self.phases.split(',').any(|s| s.trim() == name)
    }

    fn field(&self, name: &str) -> bool {
        self.format.split(',').any(|s| s.trim() == name)
    }
}

/// One side's figures, one entry per run.
#[derive(Default)]
struct Figures {
    throughput: [Vec<f64>; 2],
    /// Durable: one at a time, in batches.
    batch: [Vec<f64>; 2],
    p50: [Vec<f64>; 2],
    p99: [Vec<f64>; 2],
    /// This process's and the broker's CPU per event in the throughput phases (us).
    client_cpu: [Vec<f64>; 2],
    server_cpu: [Vec<f64>; 2],
}

enum Side {
    Raw(Box<RawSide>),
    Eventing(EventingSide),
}

impl Side {
    /// (events/s, client and broker CPU per event in microseconds).
    async fn throughput(&self, settings: &Settings, durable: bool) -> (f64, f64, f64) {
        let (probe, n) = (self.probe(durable), settings.n);
        let once = |n: u64| async move {
            probe.expect(n);
            let done = probe.done.notified();
            let start = Instant::now();
            in_flight(settings.in_flight, n, |i| self.send(i as usize, durable)).await;
            bounded(done).await;
            n as f64 / start.elapsed().as_secs_f64()
        };
        once(n / 20 + 1).await; // warm-up
        let clock = CpuClock::watching("beam.smp");
        let before = clock.now();
        let rate = once(n).await;
        let (client, server) = clock.now().since(&before).per_event(n);
        (rate, client, server)
    }

    /// Durable events one at a time (each confirm awaited) or in batches.
    async fn batch_throughput(&self, settings: &Settings, batched: bool) -> f64 {
        let probe = self.probe(true);
        let once = |n: u64| async move {
            probe.expect(n);
            let done = probe.done.notified();
            let start = Instant::now();
            let n = n as usize;
            if batched {
                for from in (0..n).step_by(settings.batch) {
                    self.send_batch(from..n.min(from + settings.batch)).await;
                }
            } else {
                for i in 0..n {
                    self.send(i, true).await;
                }
            }
            bounded(done).await;
            n as f64 / start.elapsed().as_secs_f64()
        };
        let n = if batched { settings.n } else { settings.n / 5 };
        once(n / 20 + 1).await; // warm-up
        once(n.max(1)).await
    }

    async fn send_batch(&self, range: std::ops::Range<usize>) {
        match self {
            Side::Raw(raw) => raw.publish_pipelined(range).await,
            Side::Eventing(side) => side.send_batch(range).await,
        }
    }

    async fn latency(&self, settings: &Settings, durable: bool) -> Vec<Duration> {
        let probe = self.probe(durable);
        probe.latency_mode();
        let mut received = probe.received.lock().await;
        let warm_up = settings.samples / 10;
        let mut samples = Vec::with_capacity(settings.samples);
        for i in 0..settings.samples + warm_up {
            let start = Instant::now();
            self.send(i, durable).await;
            let arrived = bounded(received.recv()).await.expect("arrival");
            if i >= warm_up {
                samples.push(arrived - start);
            }
        }
        samples
    }

    fn probe(&self, durable: bool) -> &Probe {
        let probes = match self {
            Side::Raw(raw) => &raw.probes,
            Side::Eventing(side) => &side.probes,
        };
        &probes[usize::from(durable)]
    }

    async fn send(&self, i: usize, durable: bool) {
        match self {
            Side::Raw(raw) => raw.publish(i, durable).await,
            Side::Eventing(side) => side.send(i, durable).await,
        }
    }

    async fn close(self) {
        match self {
            Side::Raw(raw) => (*raw).close().await,
            Side::Eventing(side) => side.close().await,
        }
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test discovery
    }
    let settings = Settings::from_env();
    let run = format!("{}-{}", std::process::id(), now_nanos());
    let payload = serde_json::to_vec(&Payload::new(0)).expect("payload");
    println!(
        "eventing-amqp bench: {} events per run, median of {} runs, {}-byte JSON payload, \
         prefetch {}, {} publishes in flight, listener concurrency {}, {} latency samples",
        settings.n,
        settings.reps,
        payload.len(),
        settings.prefetch,
        settings.in_flight,
        settings.concurrency,
        settings.samples
    );

    let names = ["raw", "raw-format", "eventing"];
    let mut sides = Vec::new();
    for name in names {
        let side = match name {
            _ if !settings.side(name) => None,
            "eventing" => Some(Side::Eventing(EventingSide::new(&settings, &run).await)),
            _ => {
                let format = name == "raw-format";
                let raw = RawSide::new(&settings, &run, name, format).await;
                Some(Side::Raw(Box::new(raw)))
            }
        };
        sides.push(side);
    }
    let mut figures: Vec<Figures> = names.iter().map(|_| Figures::default()).collect();
    for rep in 0..settings.reps {
        eprintln!("run {} of {}", rep + 1, settings.reps);
        for durable in [false, true] {
            if !settings.phase(if durable { "durable" } else { "transient" }) {
                continue;
            }
            for index in turns(rep as u64, sides.len()) {
                let figures = &mut figures[index];
                if let Some(side) = &sides[index] {
                    let (rate, client, server) = side.throughput(&settings, durable).await;
                    if verbose() {
                        let phase = if durable { "durable" } else { "transient" };
                        eprintln!(
                            "{} {phase}: {rate:.0} events/s, client {client:.1} us/event, \
                             broker {server:.1} us/event",
                            names[index]
                        );
                    }
                    let at = usize::from(durable);
                    figures.throughput[at].push(rate);
                    figures.client_cpu[at].push(client);
                    figures.server_cpu[at].push(server);
                }
            }
        }
        if settings.phase("batch") {
            for batched in [false, true] {
                for index in turns(rep as u64, sides.len()) {
                    let figures = &mut figures[index];
                    if let Some(side) = &sides[index] {
                        let figure = side.batch_throughput(&settings, batched).await;
                        figures.batch[usize::from(batched)].push(figure);
                    }
                }
            }
        }
        if settings.phase("latency") {
            for durable in [false, true] {
                for index in turns(rep as u64, sides.len()) {
                    let figures = &mut figures[index];
                    if let Some(side) = &sides[index] {
                        let samples = side.latency(&settings, durable).await;
                        if verbose() {
                            tail(names[index], durable, &samples);
                        }
                        let (p50, p99) = percentiles(samples);
                        figures.p50[usize::from(durable)].push(p50);
                        figures.p99[usize::from(durable)].push(p99);
                    }
                }
            }
        }
    }
    for side in sides.into_iter().flatten() {
        side.close().await;
    }
    print_table(&figures);
}

/// Prints one round's latency tail (`BENCH_VERBOSE`): the slow samples come in
/// runs of consecutive sends, so the longest run of samples over twice the median
/// is printed too.
fn tail(side: &str, durable: bool, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let Some(&max) = sorted.last() else { return };
    let at = |q: usize| sorted[(sorted.len() - 1) * q / 100].as_micros();
    let slow = sorted[sorted.len() / 2] * 2;
    let (mut run, mut longest) = (0, 0);
    for sample in samples {
        run = if *sample > slow { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    eprintln!(
        "{side} {}: p50 {} p90 {} p99 {} max {} us; longest run over 2x p50: {longest}",
        if durable { "durable" } else { "transient" },
        at(50),
        at(90),
        at(99),
        max.as_micros(),
    );
}

fn print_table(figures: &[Figures]) {
    let [raw, format, eventing] = figures else {
        return;
    };
    println!();
    println!(
        "{:<30} {:>10} {:>11} {:>10} {:>13} {:>13}",
        "", "raw", "raw-format", "eventing", "eventing/raw", "ev/raw-format"
    );
    type Pick = fn(&Figures) -> &Vec<f64>;
    let rows: [(&str, Pick); 12] = [
        ("transient throughput (ev/s)", |f| &f.throughput[0]),
        ("  client CPU (us/ev)", |f| &f.client_cpu[0]),
        ("  broker CPU (us/ev)", |f| &f.server_cpu[0]),
        ("durable+confirm thr. (ev/s)", |f| &f.throughput[1]),
        ("  client CPU (us/ev)", |f| &f.client_cpu[1]),
        ("  broker CPU (us/ev)", |f| &f.server_cpu[1]),
        ("durable one at a time (ev/s)", |f| &f.batch[0]),
        ("durable batches (ev/s)", |f| &f.batch[1]),
        ("transient latency p50 (us)", |f| &f.p50[0]),
        ("transient latency p99 (us)", |f| &f.p99[0]),
        ("durable latency p50 (us)", |f| &f.p50[1]),
        ("durable latency p99 (us)", |f| &f.p99[1]),
    ];
    for (name, pick) in rows {
        let (r, f, e) = (
            median(pick(raw)),
            median(pick(format)),
            median(pick(eventing)),
        );
        if r.is_nan() && f.is_nan() && e.is_nan() {
            continue;
        }
        // CPU per event in tenths, rates and latencies whole.
        let digits = usize::from(name.contains("CPU"));
        println!(
            "{name:<30} {r:>10.digits$} {f:>11.digits$} {e:>10.digits$} {:>13.2} {:>13.2}",
            e / r,
            e / f
        );
    }
    let batched = median(&eventing.batch[1]);
    if !batched.is_nan() {
        println!();
        println!(
            "durable: send_events / send_event one at a time: {:.2}   send_events / send_event in flight: {:.2}   \
             send_events / raw one at a time: {:.2}   send_events / raw pipelined: {:.2}",
            batched / median(&eventing.batch[0]),
            batched / median(&eventing.throughput[1]),
            batched / median(&raw.batch[0]),
            batched / median(&raw.batch[1]),
        );
    }
    println!();
    println!("targets: throughput eventing/raw >= 0.90, latency p99 eventing/raw <= 1.20");
    println!("batch targets: send_events >= 1.5x send_event (durable) and above raw one at a time");
}

// ---------------------------------------------------------------------------------
// raw lapin

struct RawSide {
    publishing: Connection,
    consuming: Connection,
    transient: Channel,
    confirmed: Channel,
    exchanges: [String; 2],
    queues: [String; 2],
    probes: [Arc<Probe>; 2],
    /// Which of eventing's message id, type and timestamp it sends: none for bare
    /// messages, those `BENCH_FORMAT` names for the `raw-format` side.
    fields: [bool; 3],
}

impl RawSide {
    async fn new(settings: &Settings, run: &str, name: &str, format: bool) -> Self {
        let connect = || Connection::connect(&settings.url, ConnectionProperties::default());
        let publishing = connect().await.expect("connect raw");
        let consuming = connect().await.expect("connect raw");
        let transient = publishing.create_channel().await.expect("channel");
        let confirmed = publishing.create_channel().await.expect("channel");
        confirmed
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        let exchanges = [
            format!("bench.{run}.{name}.Transient"),
            format!("bench.{run}.{name}.Durable"),
        ];
        let queues = exchanges
            .clone()
            .map(|exchange| format!("{exchange}::Counter"));
        let probes = [Probe::new(), Probe::new()];
        for (i, durable) in [false, true].into_iter().enumerate() {
            let options = ExchangeDeclareOptions {
                durable,
                ..ExchangeDeclareOptions::default()
            };
            let (exchange, queue) = (exchanges[i].as_str(), queues[i].as_str());
            transient
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Fanout,
                    options,
                    FieldTable::default(),
                )
                .await
                .expect("exchange");
            transient
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions::durable(),
                    FieldTable::default(),
                )
                .await
                .expect("queue");
            transient
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    ShortString::default(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind");
            let channel = consuming.create_channel().await.expect("channel");
            channel
                .basic_qos(settings.prefetch, BasicQosOptions { global: false })
                .await
                .expect("qos");
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    ShortString::default(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("consume");
            let probe = Arc::clone(&probes[i]);
            tokio::spawn(raw_consume(consumer, channel, probe, settings.ack_batch));
        }
        Self {
            publishing,
            consuming,
            transient,
            confirmed,
            exchanges,
            queues,
            probes,
            fields: ["id", "type", "timestamp"].map(|field| format && settings.field(field)),
        }
    }

    fn properties(&self, durable: bool) -> BasicProperties {
        let mode = if durable { 2 } else { 1 };
        let mut properties = BasicProperties::default()
            .with_delivery_mode(mode)
            .with_content_type("application/json".into());
        let [id, kind, timestamp] = self.fields;
        if id {
            properties =
                properties.with_message_id(uuid::Uuid::new_v4().hyphenated().to_string().into());
        }
        if kind {
            let event = &self.exchanges[usize::from(durable)];
            properties = properties.with_type(event.as_str().into());
        }
        if timestamp {
            let seconds = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            properties = properties.with_timestamp(seconds);
        }
        properties
    }

    /// Publishes event `i`, serialized here as eventing serializes each send.
    async fn publish(&self, i: usize, durable: bool) {
        let body = serde_json::to_vec(&Payload::new(i as u64)).expect("JSON");
        let channel = if durable {
            &self.confirmed
        } else {
            &self.transient
        };
        let confirm = channel
            .basic_publish(
                self.exchanges[usize::from(durable)].as_str().into(),
                ShortString::default(),
                BasicPublishOptions::default(),
                &body,
                self.properties(durable),
            )
            .await
            .expect("publish");
        let confirmation = confirm.await.expect("confirm");
        assert!(!confirmation.is_nack(), "nacked");
    }

    /// `count` durable publishes queued at once, then all their confirms awaited.
    async fn publish_pipelined(&self, range: std::ops::Range<usize>) {
        let exchange = self.exchanges[1].as_str();
        let publishes = range.map(|i| async move {
            let body = serde_json::to_vec(&Payload::new(i as u64)).expect("JSON");
            let confirm = self
                .confirmed
                .basic_publish(
                    exchange.into(),
                    ShortString::default(),
                    BasicPublishOptions::default(),
                    &body,
                    self.properties(true),
                )
                .await
                .expect("publish");
            confirm.await.expect("confirm")
        });
        for confirmation in futures_util::future::join_all(publishes).await {
            assert!(!confirmation.is_nack(), "nacked");
        }
    }

    async fn close(self) {
        let _ = self.consuming.close(200, "done".into()).await;
        for queue in &self.queues {
            let options = QueueDeleteOptions::default();
            let _ = self
                .transient
                .queue_delete(queue.as_str().into(), options)
                .await;
        }
        for exchange in &self.exchanges {
            let options = ExchangeDeleteOptions::default();
            let _ = self
                .transient
                .exchange_delete(exchange.as_str().into(), options)
                .await;
        }
        let _ = self.publishing.close(200, "done".into()).await;
    }
}

/// The raw consumer: counts, and acks with `multiple` every `batch` deliveries (each
/// delivery in latency mode, where one message is in flight at a time).
async fn raw_consume(
    mut consumer: lapin::Consumer,
    channel: Channel,
    probe: Arc<Probe>,
    batch: u64,
) {
    let mut unacked = 0;
    while let Some(Ok(delivery)) = consumer.next().await {
        let tag = delivery.delivery_tag;
        // Decoded, as eventing decodes every delivery for its listener.
        let event: Payload = serde_json::from_slice(&delivery.data).expect("JSON body");
        std::hint::black_box(event.id);
        unacked += 1;
        let latency = probe.latency.load(Ordering::Relaxed);
        let last = probe.handled();
        if latency || unacked >= batch || last {
            let _ = channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await;
            unacked = 0;
        }
    }
}

// ---------------------------------------------------------------------------------
// eventing

struct EventingSide {
    manager: EventManager,
    probes: [Arc<Probe>; 2],
    events: Vec<(Transient, Durable)>,
    url: String,
}

impl EventingSide {
    async fn new(settings: &Settings, run: &str) -> Self {
        let probes = [Probe::new(), Probe::new()];
        let manager = EventManager::builder()
            .url(settings.url.as_str())
            .server_name("bench")
            .var("run", run)
            .only_bound_listeners()
            .listener(TransientCounter(Arc::clone(&probes[0])))
            .listener(DurableCounter(Arc::clone(&probes[1])))
            .listener_options(ListenerOptions {
                prefetch: settings.prefetch,
                concurrency: settings.concurrency,
                ..ListenerOptions::default()
            })
            .build()
            .await
            .expect("build the manager");
        manager.start().await.expect("start the manager");
        let events = (0..settings.n.max(settings.samples as u64))
            .map(|i| (Transient(Payload::new(i)), Durable(Payload::new(i))))
            .collect();
        Self {
            manager,
            probes,
            events,
            url: settings.url.clone(),
        }
    }

    async fn send(&self, i: usize, durable: bool) {
        let (transient, durable_event) = &self.events[i % self.events.len()];
        let sent = if durable {
            self.manager.send_event(durable_event).await
        } else {
            self.manager.send_event(transient).await
        };
        sent.expect("send_event");
    }

    async fn send_batch(&self, range: std::ops::Range<usize>) {
        let len = self.events.len();
        let events = range.map(|i| &self.events[i % len].1);
        self.manager.send_events(events).await.expect("send_events");
    }

    async fn close(self) {
        let queues = self.manager.queues();
        self.manager.shutdown().await.expect("shutdown");
        let connection = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connect for cleanup");
        let channel = connection.create_channel().await.expect("channel");
        for queue in &queues {
            for name in [queue.name.clone(), queue.dead_letter_queue()] {
                let options = QueueDeleteOptions::default();
                let _ = channel.queue_delete(name.as_str().into(), options).await;
            }
            let options = ExchangeDeleteOptions::default();
            let _ = channel
                .exchange_delete(queue.event.as_str().into(), options)
                .await;
        }
        let _ = connection.close(200, "done".into()).await;
    }
}

// ---------------------------------------------------------------------------------
// helpers

/// How long the broker may keep the bench waiting at once.
const PATIENCE: Duration = Duration::from_secs(120);

async fn bounded<T>(future: impl Future<Output = T>) -> T {
    eventing_test::bench::bounded("the broker stopped answering", PATIENCE, future).await
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000)
}

//! End-to-end throughput and round-trip latency over RabbitMQ's STOMP plugin (or
//! ActiveMQ Classic, with `?broker=activemq` in the URL), in one run:
//! `EventManager` over the STOMP provider beside a minimal raw STOMP client (this
//! crate's codec over a `TcpStream`: `SEND`, and a `SUBSCRIBE` with a prefetch of
//! 1000 and one `ACK` per message), with the same ~60-byte JSON payload
//! (serialized per send, decoded per delivery) through the same kind of
//! destinations: on RabbitMQ a fanout exchange and a durable queue, on ActiveMQ a
//! virtual topic and its consumer queue.
//!
//! - `raw`: `SEND` with `destination` and `content-type` only;
//! - `raw, eventing's format`: the same client sending the frame eventing sends for
//!   a default event (its headers: message id, event name, timestamp), so the
//!   table shows what the format costs apart from what the runtime costs;
//! - `eventing`: an `EventManager` with a transient event and one competing
//!   listener (prefetch 1000, concurrency 256).
//!
//! Throughput: N events with at most `BENCH_IN_FLIGHT` sends in flight, from the
//! first send to the last handled message, with the CPU time this process and the
//! broker (`beam.smp`, or `java` for ActiveMQ) spent per event meanwhile. Round
//! trip: one event at a time, send to handled, p50 and p99. The sides take turns
//! (who goes first rotates) for `BENCH_ROUNDS` rounds; each figure is the median
//! of the rounds (`eventing_test::bench`).
//!
//! ```text
//! bash scripts/broker.sh start
//! cargo bench -p eventing-stomp --bench stomp
//! EVENTING_STOMP_URL=stomp://guest:guest@127.0.0.1:61613 BENCH_EVENTS=30000 BENCH_SAMPLES=2000 BENCH_ROUNDS=3
//! BENCH_SIDES=eventing   # one side alone (raw, same-format, eventing), to profile it
//! BENCH_VERBOSE=1         # each round's rate and CPU per event
//! EVENTING_STOMP_URL='stomp://127.0.0.1:61623?broker=activemq' cargo bench -p eventing-stomp --bench stomp
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use eventing::{
    Context, Envelope, EventListener, EventManager, ListenerOptions, ListenerResult, event,
    event_listener,
};
use eventing_stomp::codec::{Incoming, StompCodec};
use eventing_stomp::frame::{Command, Frame};
use eventing_stomp::{Dialect, RabbitAdmin, StompConfig, activemq};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use eventing_test::bench::{
    Counter, Figures, bounded, print_comparison, print_same_format, setting, three_sides,
    under_cargo_bench,
};

// The same allocator for both clients (and as in `eventing`'s in-process bench);
// glibc's malloc is slow when one thread frees what another allocated.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PREFETCH: u16 = 1000;
/// The longest anything is awaited at once: a missing broker or a stuck consumer
/// fails the run instead of hanging it.
const LIMIT: Duration = Duration::from_secs(60);

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
        .build();
    let manager = bounded("building the manager", LIMIT, manager)
        .await
        .expect("build the manager");
    bounded("starting the manager", LIMIT, manager.start())
        .await
        .expect("start the manager");
    (manager, counter)
}

/// A raw STOMP session: `CONNECT` (and `first`, whose `RECEIPT` is awaited),
/// then a writer task fed by a channel bounded as eventing's sessions are
/// (1024 frames); the frames read after that.
async fn session(
    config: &StompConfig,
    first: Option<Frame>,
) -> (FramedRead<OwnedReadHalf, StompCodec>, mpsc::Sender<Bytes>) {
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
    let mut buf = BytesMut::new();
    codec.encode_frame(&connect, &mut buf).expect("encode");
    let awaited = if let Some(first) = &first {
        codec.encode_frame(first, &mut buf).expect("encode");
        Command::Receipt
    } else {
        Command::Connected
    };
    write.write_all(&buf).await.expect("write");
    let mut frames = FramedRead::new(read, StompCodec::new());
    loop {
        match bounded("the broker's answer", LIMIT, frames.next()).await {
            Some(Ok(Incoming::Frame(frame))) if frame.command == awaited => break,
            Some(Ok(Incoming::Frame(frame))) if frame.command == Command::Error => {
                panic!("raw client: {frame:?}")
            }
            Some(Ok(_)) => {}
            other => panic!("raw client: {other:?}"),
        }
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
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
    (frames, tx)
}

/// What a raw client sends: bare frames, or eventing's.
#[derive(Clone, Copy)]
enum Format {
    Bare,
    Eventing,
}

/// The raw client, shaped as eventing's provider: one session sends, another
/// subscribes, and its reader task decodes the JSON and acknowledges each message.
struct Raw {
    /// Frames for the sending session's writer.
    tx: mpsc::Sender<Bytes>,
    codec: StompCodec,
    /// The exchange (RabbitMQ) or virtual topic (ActiveMQ) it sends to.
    exchange: String,
    destination: String,
    dialect: Dialect,
}

impl Raw {
    async fn connect(
        config: &StompConfig,
        (exchange, queue): (&str, &str),
        format: Format,
        counter: Arc<Counter>,
    ) -> Raw {
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
        let (mut frames, acks) = session(config, Some(subscribe)).await;
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
                if acks.send(buf.freeze()).await.is_err() {
                    return;
                }
                counter.hit();
            }
        });
        let (_, tx) = session(config, None).await;
        // The frames of the side in eventing's format are encoded as eventing's
        // RabbitMQ sessions encode them (`content-length` only when needed).
        let codec = match (format, config.dialect) {
            (Format::Eventing, Dialect::RabbitMq) => StompCodec::new().length_when_needed(),
            _ => StompCodec::new(),
        };
        Raw {
            tx,
            codec,
            exchange: exchange.to_string(),
            destination,
            dialect: config.dialect,
        }
    }

    /// Sends one event: `destination` and `content-type` only.
    async fn send(&self, id: u64) {
        let body = serde_json::to_vec(&tick(id)).expect("JSON");
        let frame = Frame::new(Command::Send)
            .header("destination", self.destination.clone())
            .header("content-type", eventing::codec::JSON)
            .with_body(body);
        self.write(&frame).await;
    }

    /// As [`Raw::send`], in eventing's wire format for a default event: the frame
    /// the provider's dialect builds from a fresh envelope (message id, event
    /// name, timestamp, content type).
    async fn send_same_format(&self, id: u64) {
        let body = Bytes::from(serde_json::to_vec(&tick(id)).expect("JSON"));
        let envelope = Envelope::new(&self.exchange, eventing::codec::JSON, body);
        let frame = self.dialect.send_frame(&self.exchange, &envelope, false);
        self.write(&frame).await;
    }

    async fn write(&self, frame: &Frame) {
        let mut buf = BytesMut::with_capacity(256);
        self.codec.encode_frame(frame, &mut buf).expect("encode");
        self.tx.send(buf.freeze()).await.expect("writer alive");
    }
}

/// The three sides, taking turns (who goes first rotates each round);
/// (raw, raw in eventing's format, eventing).
async fn measure_all(
    settings: Arc<Settings>,
    config: StompConfig,
    run: String,
    raw_names: [(String, String); 2],
) -> [Figures; 3] {
    let [(raw_exchange, raw_queue), (same_exchange, same_queue)] = &raw_names;
    let raw_counter = Counter::new();
    let raw = Raw::connect(
        &config,
        (raw_exchange, raw_queue),
        Format::Bare,
        Arc::clone(&raw_counter),
    )
    .await;
    let same_counter = Counter::new();
    let same = Raw::connect(
        &config,
        (same_exchange, same_queue),
        Format::Eventing,
        Arc::clone(&same_counter),
    )
    .await;
    let (manager, counter) = start_eventing(&settings.url, &run).await;
    let shape = (settings.n, settings.in_flight, settings.samples);
    let server = match config.dialect {
        Dialect::RabbitMq => "beam.smp",
        _ => "java",
    };
    let manager = &manager;
    let figures = three_sides(
        (settings.rounds, server),
        shape,
        LIMIT,
        (&raw_counter, |i| raw.send(i)),
        (&same_counter, |i| same.send_same_format(i)),
        (&counter, |i| async move {
            manager.send_event(&tick(i)).await.expect("send_event");
        }),
    )
    .await;
    bounded("shutting the manager down", LIMIT, manager.shutdown())
        .await
        .expect("shutdown");
    figures
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

/// The bench's settings, from the environment.
struct Settings {
    url: String,
    n: u64,
    samples: usize,
    rounds: u64,
    in_flight: usize,
}

impl Settings {
    fn from_env() -> Self {
        Self {
            url: std::env::var("EVENTING_STOMP_URL")
                .unwrap_or_else(|_| "stomp://guest:guest@127.0.0.1:61613".into()),
            n: setting("BENCH_EVENTS", 30_000).max(1),
            samples: setting("BENCH_SAMPLES", 2_000).max(10),
            rounds: setting("BENCH_ROUNDS", 3).max(1),
            in_flight: setting("BENCH_IN_FLIGHT", 64).max(1),
        }
    }
}

fn main() {
    if !under_cargo_bench() {
        return;
    }
    let settings = Arc::new(Settings::from_env());
    let config = StompConfig::from_url(&settings.url).expect("EVENTING_STOMP_URL");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let run = format!("{}-{nanos}", std::process::id());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let raw_names = ["raw", "same"].map(|side| {
            let exchange = format!("bench.stomp.{run}.{side}.Tick");
            let queue = format!("{exchange}::Counter");
            (exchange, queue)
        });
        let event = format!("bench.stomp.{run}.Tick");
        let queue = format!("{event}::Counter");
        if config.dialect != Dialect::ActiveMq {
            let mut admin = bounded("connecting over AMQP", LIMIT, RabbitAdmin::connect(&config))
                .await
                .expect("AMQP admin");
            for (exchange, _) in &raw_names {
                admin
                    .declare_exchange(exchange, false)
                    .await
                    .expect("declare");
            }
            admin.close().await;
        }
        let payload = serde_json::to_vec(&tick(0)).expect("JSON").len();
        eprintln!(
            "stomp bench: {} events per round, {} round trips, {} rounds, {payload}-byte JSON, \
             {} sends in flight, prefetch {PREFETCH}",
            settings.n, settings.samples, settings.rounds, settings.in_flight
        );

        // Measured in a task of its own, so the broker is cleaned up even if a
        // measurement panics.
        let measured = tokio::spawn(measure_all(
            Arc::clone(&settings),
            config.clone(),
            run.clone(),
            raw_names.clone(),
        ))
        .await;
        let dlq = format!("{queue}.dlq");
        let [(raw_exchange, raw_queue), (same_exchange, same_queue)] = &raw_names;
        cleanup(
            &config,
            &[raw_queue, same_queue, &queue, &dlq],
            &[raw_exchange, same_exchange, &event],
        )
        .await;
        let [raw, same_format, eventing] = match measured {
            Ok(figures) => figures,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => panic!("measurement task: {error}"),
            },
        };

        let title = format!(
            "STOMP end to end ({}), transient event, {} events of {payload} B JSON, {} in \
             flight, prefetch {PREFETCH}, {} round trips, median of {} rounds",
            config.display_endpoint(),
            settings.n,
            settings.in_flight,
            settings.samples,
            settings.rounds
        );
        print_comparison(
            &title,
            "raw STOMP client",
            &raw,
            "eventing over STOMP",
            &eventing,
        );
        print_same_format("raw, eventing's format", &same_format, &eventing);
    });
}

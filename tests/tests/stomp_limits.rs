//! Messages the STOMP client cannot read whole, on RabbitMQ: a frame over the
//! client's `max_frame`, a header RabbitMQ passes through that is not UTF-8,
//! more header lines than the client takes, a header line over its limit.
//!
//! Before, each of them made the consumer's session fail on decoding; the
//! broker delivered the same message again to the next session, forever (the
//! listener reconnected about five times a second and handled nothing after
//! it). Now each is dead-lettered with the reason and acknowledged, and the
//! session goes on.
#![cfg(feature = "stomp")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventing::manager::ListenerState;
use eventing::{
    Context, Envelope, EventListener, EventManager, ListenerResult, event, event_listener, header,
};
use eventing_stomp::{StompConfig, StompProvider};
use eventing_test::suite;
use eventing_tests::TestEnv;
use eventing_tests::stomp::{StompHarness, queue_names, rabbitmqctl};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs a test body with a time limit (logs with `RUST_LOG`).
async fn bounded(body: impl std::future::Future<Output = ()>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::time::timeout(Duration::from_secs(120), body)
        .await
        .expect("test timed out after 120 s");
}

/// An event with a payload of any size.
#[event(name = "limits.{env}.Blob", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Blob {
    n: u32,
    pad: String,
}

/// Records the `n` of every event it handles.
#[event_listener(Blob, name = "Sink")]
struct Sink {
    seen: Arc<Mutex<Vec<u32>>>,
}

impl EventListener<Blob> for Sink {
    async fn on(&self, event: Blob, _ctx: &Context) -> ListenerResult {
        self.seen.lock().expect("lock").push(event.n);
        Ok(())
    }
}

/// A consumer manager on its own provider (so the test can read the
/// provider's counters), with `params` added to the harness URL.
async fn start_consumer(
    env: &mut TestEnv<'_>,
    harness: &StompHarness,
    params: &str,
) -> (EventManager, StompProvider, Arc<Mutex<Vec<u32>>>) {
    start_consumer_via(env, harness, params, None).await
}

/// [`start_consumer`], connecting its STOMP sessions to `port` on 127.0.0.1
/// if given (a relay in front of the broker).
async fn start_consumer_via(
    env: &mut TestEnv<'_>,
    harness: &StompHarness,
    params: &str,
    port: Option<u16>,
) -> (EventManager, StompProvider, Arc<Mutex<Vec<u32>>>) {
    let url = harness.broker_url();
    let url = match (params.is_empty(), url.contains('?')) {
        (true, _) => url.to_string(),
        (false, true) => format!("{url}&{params}"),
        (false, false) => format!("{url}?{params}"),
    };
    let mut config = StompConfig::from_url(&url).expect("valid URL");
    if let Some(port) = port {
        config.host = "127.0.0.1".into();
        config.port = port;
    }
    let provider = StompProvider::with_config(config, "consumer", Duration::from_secs(20))
        .await
        .expect("connect");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let manager = env
        .start(
            env.builder("consumer")
                .provider(provider.clone())
                .listener(Sink {
                    seen: Arc::clone(&seen),
                }),
        )
        .await;
    (manager, provider, seen)
}

fn queue_of(env: &TestEnv<'_>) -> String {
    format!("limits.{}.Blob::Sink", env.env)
}

/// Waits (bounded) until the listener has seen `n` and the provider has
/// dead-lettered `letters` unreadable messages.
async fn wait_for(seen: &Arc<Mutex<Vec<u32>>>, n: u32, provider: &StompProvider, letters: u64) {
    let probe = Arc::clone(seen);
    let done = suite::eventually(Duration::from_secs(30), || {
        probe.lock().expect("lock").contains(&n) && provider.unreadable_dead_lettered() >= letters
    })
    .await;
    assert!(
        done,
        "within 30 s: seen {:?}, unreadable dead-lettered {} of {letters}",
        seen.lock().expect("lock"),
        provider.unreadable_dead_lettered()
    );
}

/// The dead letter's standard dead-letter headers.
fn check_letter(letter: &Envelope, queue: &str) -> String {
    assert_eq!(
        letter.headers.get("x-stomp-unreadable"),
        None,
        "the client reads its own dead letters back whole"
    );
    assert_eq!(letter.headers.get(header::DEAD_LETTER_ATTEMPTS), Some("0"));
    assert_eq!(letter.headers.get(header::DEAD_LETTER_QUEUE), Some(queue));
    assert_eq!(
        letter.headers.get(header::DEAD_LETTER_LISTENER),
        Some("Sink")
    );
    letter
        .headers
        .get(header::DEAD_LETTER_REASON)
        .expect("a reason")
        .to_string()
}

/// No loop: a while later nothing more was dead-lettered, the listener never
/// lost its subscription, and the queue holds nothing (unacknowledged or not).
async fn check_settled(
    manager: &EventManager,
    provider: &StompProvider,
    queue: &str,
    letters: usize,
) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(provider.unreadable_dead_lettered(), letters as u64);
    assert_eq!(provider.unreadable_held(), 0);
    let listed = manager.dead_letters(queue, 1000).await.expect("list");
    assert_eq!(listed.len(), letters, "exactly one dead letter each");
    let stats = manager.stats();
    assert_eq!(stats.reconnects, 0, "the session was never lost: {stats:?}");
    let health = manager.health();
    assert!(
        health
            .listeners
            .iter()
            .all(|l| l.state == ListenerState::Consuming),
        "{health:?}"
    );
    let depth = rabbitmqctl(&["list_queues", "--no-table-headers", "name", "messages"]).await;
    let line = depth
        .lines()
        .find(|line| line.split('\t').next() == Some(queue))
        .unwrap_or_else(|| panic!("queue {queue} not listed: {depth}"));
    assert_eq!(line, format!("{queue}\t0"), "nothing left on the queue");
}

/// Deletes the test's queues and exchange if the test fails or times out
/// before [`finish`] (on a thread of its own: the test's runtime may be
/// unwinding).
struct Cleanup {
    harness: StompHarness,
    env: String,
    armed: bool,
}

impl Cleanup {
    fn new(harness: &StompHarness, env: &TestEnv<'_>) -> Cleanup {
        Cleanup {
            harness: harness.clone(),
            env: env.env.clone(),
            armed: true,
        }
    }

    /// [`finish`] did it.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let harness = self.harness.clone();
        let event = format!("limits.{}.Blob", self.env);
        let queues = vec![format!("{event}::Sink"), format!("{event}::Sink.dlq")];
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let delete = harness.delete(&queues, std::slice::from_ref(&event));
                let _ = tokio::time::timeout(Duration::from_secs(20), delete).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Ends the test: shuts down, deletes what it created and checks nothing of
/// this test's is left on the broker.
async fn finish(env: TestEnv<'_>) {
    let name = env.env.clone();
    env.finish().await;
    assert_eq!(
        queue_names(&name).await,
        Vec::<String>::new(),
        "queues left"
    );
}

/// A message over the consumer's `max_frame` (sent by a client with the
/// default 16 MiB limit) is dead-lettered without its body, with the reason,
/// and acknowledged; the message after it is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_dead_lettered_and_the_next_is_handled() {
    bounded(async {
        let harness = StompHarness::from_env();
        let mut env = TestEnv::new(&harness);
        let cleanup = Cleanup::new(&harness, &env);
        let (consumer, provider, seen) =
            start_consumer(&mut env, &harness, "max_frame=65536").await;
        assert_eq!(provider.config().limits.max_frame_bytes, 65536);
        let sender = env.start(env.builder("sender")).await;
        let big = Blob {
            n: 1,
            pad: "x".repeat(200 * 1024),
        };
        sender.send_event(&big).await.expect("send big");
        sender
            .send_event(&Blob {
                n: 2,
                pad: String::new(),
            })
            .await
            .expect("send small");
        wait_for(&seen, 2, &provider, 1).await;
        assert_eq!(
            *seen.lock().expect("lock"),
            [2],
            "the big one never reached it"
        );

        let queue = queue_of(&env);
        let letters = suite::dead_letters(&consumer, &queue, 1).await;
        assert_eq!(letters.len(), 1);
        let letter = &letters[0];
        let reason = check_letter(letter, &queue);
        let prefix = "frame of ";
        let suffix = " bytes exceeds the client's limit of 65536 bytes; body dropped";
        assert!(
            reason.starts_with(prefix) && reason.ends_with(suffix),
            "reason: {reason}"
        );
        let size: usize = reason[prefix.len()..reason.len() - suffix.len()]
            .parse()
            .expect("a size");
        assert!(size > 200 * 1024, "size {size}");
        assert!(letter.body.is_empty(), "the body was dropped");
        // The envelope's own headers came through.
        assert_eq!(
            letter.headers.get(header::EVENT),
            Some(format!("limits.{}.Blob", env.env).as_str())
        );
        assert!(!letter.message_id().is_empty());
        assert!(letter.headers.get(header::TIMESTAMP).is_some());

        check_settled(&consumer, &provider, &queue, 1).await;
        finish(env).await;
        cleanup.disarm();
    })
    .await;
}

/// Sends one raw STOMP frame (`head` holds the header lines, each ending in
/// LF) to `destination` with a receipt, as a client other than this crate may.
async fn raw_send(harness: &StompHarness, destination: &str, head: &[u8], body: &[u8]) {
    let config = harness.config();
    let mut tcp = tokio::net::TcpStream::connect((config.host.as_str(), config.port))
        .await
        .expect("connect to STOMP");
    let mut connect = b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n".to_vec();
    connect.extend_from_slice(format!("host:{}\n", config.vhost).as_bytes());
    if let Some(login) = &config.login {
        connect.extend_from_slice(format!("login:{login}\n").as_bytes());
    }
    if let Some(passcode) = &config.passcode {
        connect.extend_from_slice(format!("passcode:{passcode}\n").as_bytes());
    }
    connect.extend_from_slice(b"\n\0");
    tcp.write_all(&connect).await.expect("write CONNECT");
    let connected = read_frame(&mut tcp).await;
    assert!(connected.starts_with(b"CONNECTED"), "{connected:?}");

    let mut send =
        format!("SEND\ndestination:{destination}\npersistent:true\nreceipt:raw-1\n").into_bytes();
    send.extend_from_slice(head);
    send.extend_from_slice(format!("content-length:{}\n\n", body.len()).as_bytes());
    send.extend_from_slice(body);
    send.push(0);
    tcp.write_all(&send).await.expect("write SEND");
    let answer = read_frame(&mut tcp).await;
    assert!(
        answer.starts_with(b"RECEIPT"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let _ = tcp.write_all(b"DISCONNECT\n\n\0").await;
}

/// The next frame's bytes (heart-beats skipped), at most 20 s.
async fn read_frame(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
    let read = async {
        let mut frame = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            let n = tcp.read(&mut byte).await.expect("read");
            assert_eq!(n, 1, "the broker closed the connection");
            match byte[0] {
                0 => return frame,
                b'\n' if frame.is_empty() => {}
                other => frame.push(other),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("no frame within 20 s")
}

fn body(n: u32) -> Vec<u8> {
    serde_json::to_vec(&Blob {
        n,
        pad: String::new(),
    })
    .expect("json")
}

/// Headers RabbitMQ passes through to subscribers but this client cannot take:
/// a value that is not UTF-8, 200 header lines (limit 128), a 70 KB line
/// (limit 64 KiB). Each message is dead-lettered with its body and the reason,
/// and acknowledged; the event after them is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_headers_are_dead_lettered_with_the_body() {
    bounded(async {
        let harness = StompHarness::from_env();
        let mut env = TestEnv::new(&harness);
        let cleanup = Cleanup::new(&harness, &env);
        let (consumer, provider, seen) = start_consumer(&mut env, &harness, "").await;
        let destination = format!("/exchange/limits.{}.Blob", env.env);

        raw_send(&harness, &destination, b"x-bad:\xff\xfe\n", &body(10)).await;
        let many: Vec<u8> = (0..200)
            .flat_map(|i| format!("x-h{i}:v\n").into_bytes())
            .collect();
        raw_send(&harness, &destination, &many, &body(11)).await;
        let mut long = b"x-long:".to_vec();
        long.extend(std::iter::repeat_n(b'l', 70_000));
        long.push(b'\n');
        raw_send(&harness, &destination, &long, &body(12)).await;

        let sender = env.start(env.builder("sender")).await;
        sender
            .send_event(&Blob {
                n: 13,
                pad: String::new(),
            })
            .await
            .expect("send");
        wait_for(&seen, 13, &provider, 3).await;
        assert_eq!(*seen.lock().expect("lock"), [13], "only the readable one");

        let queue = queue_of(&env);
        let letters = suite::dead_letters(&consumer, &queue, 3).await;
        assert_eq!(letters.len(), 3);
        for letter in &letters {
            let reason = check_letter(letter, &queue);
            let blob: Blob = serde_json::from_slice(&letter.body).expect("the body was kept");
            match blob.n {
                10 => {
                    assert!(
                        reason.starts_with("header line ")
                            && reason.ends_with(" is not valid UTF-8"),
                        "reason: {reason}"
                    );
                    assert_eq!(letter.headers.get("x-bad"), None);
                }
                11 => {
                    assert!(
                        reason.contains("header lines exceed the client's limit of 128"),
                        "reason: {reason}"
                    );
                    assert!(
                        reason.contains("left out of the dead letter to fit the limits"),
                        "reason: {reason}"
                    );
                    let kept = letter
                        .headers
                        .iter()
                        .filter(|(n, _)| n.starts_with("x-h"))
                        .count();
                    assert!((100..128).contains(&kept), "{kept} of the 200 kept");
                }
                12 => {
                    assert!(
                        reason.contains("exceeds the client's limit of 65536 bytes"),
                        "reason: {reason}"
                    );
                    assert_eq!(letter.headers.get("x-long"), None);
                }
                other => panic!("unexpected dead letter {other}: {reason}"),
            }
        }

        check_settled(&consumer, &provider, &queue, 3).await;
        finish(env).await;
        cleanup.disarm();
    })
    .await;
}

/// A TCP relay to the broker's STOMP port that forwards what the broker sends
/// at `rate` bytes per second (what the client sends goes through at once), as
/// a slow link does. Dropped, it stops relaying.
struct SlowLink {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    async fn start(harness: &StompHarness, rate: usize) -> SlowLink {
        let config = harness.config();
        let target = (config.host.clone(), config.port);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind relay");
        let port = listener.local_addr().expect("relay address").port();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                links.spawn(async move {
                    let Ok(broker) =
                        tokio::net::TcpStream::connect((target.0.as_str(), target.1)).await
                    else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut broker_read, mut broker_write) = broker.into_split();
                    let up = async {
                        let _ = tokio::io::copy(&mut client_read, &mut broker_write).await;
                    };
                    let down = async {
                        // A tenth of the rate every 100 ms.
                        let mut buf = vec![0u8; (rate / 10).max(1)];
                        loop {
                            let Ok(n) = broker_read.read(&mut buf).await else {
                                return;
                            };
                            if n == 0 || client_write.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    };
                    tokio::join!(up, down);
                });
            }
        });
        SlowLink { port, task }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        // Aborting the accept loop drops the JoinSet, which aborts every link.
        self.task.abort();
    }
}

/// An oversized message that takes longer to arrive than the heart-beat
/// window (1 s heart-beats: 2 s of silence is a lost connection) is not taken
/// for a silent broker: the bytes streaming in count, also while the decoder
/// skips them without completing a frame. It is dead-lettered once, and the
/// session is never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_arriving_slowly_is_not_a_lost_connection() {
    bounded(async {
        let harness = StompHarness::from_env();
        let mut env = TestEnv::new(&harness);
        let cleanup = Cleanup::new(&harness, &env);
        let link = SlowLink::start(&harness, 256 * 1024).await;
        let (consumer, provider, seen) = start_consumer_via(
            &mut env,
            &harness,
            "max_frame=65536&heartbeat=1000",
            Some(link.port),
        )
        .await;
        let sender = env.start(env.builder("sender")).await;
        let started = tokio::time::Instant::now();
        sender
            .send_event(&Blob {
                n: 1,
                pad: "s".repeat(1536 * 1024),
            })
            .await
            .expect("send big");
        sender
            .send_event(&Blob {
                n: 2,
                pad: String::new(),
            })
            .await
            .expect("send small");
        wait_for(&seen, 2, &provider, 1).await;
        let took = started.elapsed();
        assert!(
            took > Duration::from_secs(4),
            "the link was slow enough to outlast the window: {took:?}"
        );
        assert_eq!(*seen.lock().expect("lock"), [2]);
        let queue = queue_of(&env);
        let letters = suite::dead_letters(&consumer, &queue, 1).await;
        assert_eq!(letters.len(), 1);
        let reason = check_letter(&letters[0], &queue);
        assert!(
            reason.ends_with("exceeds the client's limit of 65536 bytes; body dropped"),
            "{reason}"
        );
        check_settled(&consumer, &provider, &queue, 1).await;
        finish(env).await;
        cleanup.disarm();
        drop(link);
    })
    .await;
}

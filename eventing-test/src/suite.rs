//! The behaviours every provider owes users, written once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use eventing::pipeline::{EnvelopePipeline, SessionPipeline};
use eventing::provider::Route;
use eventing::{
    BoxError, Context, Envelope, Event, EventDescriptor, EventListener, EventManager,
    ListenerDescriptor, ListenerResult, event, event_listener, header,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::harness::{Harness, TestEnv};

/// What a listener saw: the payload, the headers and the current session.
#[derive(Clone, Debug)]
pub struct Seen<T> {
    /// The event.
    pub event: T,
    /// Its headers as the listener got them.
    pub headers: HashMap<String, String>,
    /// `eventing::pipeline::current_session()` inside `on`.
    pub session: Option<String>,
    /// The server that handled it.
    pub server: String,
}

/// Records what listeners see and lets the test wait for a count.
pub struct Recorder<T> {
    seen: Mutex<Vec<Seen<T>>>,
    changed: Notify,
}

impl<T: Clone> Recorder<T> {
    /// An empty recorder.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new(Vec::new()),
            changed: Notify::new(),
        })
    }

    fn record(&self, event: T, ctx: &Context, server: &str) {
        let headers = ctx
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.seen.lock().expect("recorder lock").push(Seen {
            event,
            headers,
            session: eventing::pipeline::current_session(),
            server: server.to_string(),
        });
        self.changed.notify_waiters();
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Seen<T>> {
        self.seen.lock().expect("recorder lock").clone()
    }

    /// Waits until at least `n` were seen, at most `limit`; returns what was seen.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Seen<T>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.seen();
            }
        }
    }
}

const WAIT: Duration = Duration::from_secs(20);

/// Waits until `check` holds, polling every 20 ms, at most `limit`.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// Waits (bounded) until `queue` of `manager` holds at least `n` dead letters.
pub async fn dead_letters(manager: &EventManager, queue: &str, n: usize) -> Vec<Envelope> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let letters = manager
            .dead_letters(queue, 1000)
            .await
            .expect("list dead letters");
        if letters.len() >= n || tokio::time::Instant::now() >= deadline {
            return letters;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------
// round trip

/// A small event.
#[event(name = "suite.{env}.Ping", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    /// Sequence number.
    pub n: u32,
    /// Some text with characters that need care on the wire.
    pub text: String,
}

/// A second event type.
#[event(name = "suite.{env}.Pong")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Pong {
    /// A variant with data.
    Score(i64),
    /// A unit variant.
    Miss,
}

/// Records pings.
#[event_listener(Ping, name = "Recorder")]
pub struct PingListener {
    /// Where to record.
    pub seen: Arc<Recorder<Ping>>,
    /// The server name.
    pub server: String,
}

impl EventListener<Ping> for PingListener {
    async fn on(&self, event: Ping, ctx: &Context) -> ListenerResult {
        self.seen.record(event, ctx, &self.server);
        Ok(())
    }
}

/// Records pongs; the same type also listens to pings under another name.
#[event_listener(Pong, name = "Recorder")]
pub struct PongListener {
    /// Where to record.
    pub seen: Arc<Recorder<Pong>>,
}

impl EventListener<Pong> for PongListener {
    async fn on(&self, event: Pong, ctx: &Context) -> ListenerResult {
        self.seen.record(event, ctx, "");
        Ok(())
    }
}

/// Several events of two types arrive intact.
pub async fn round_trip(harness: &dyn Harness) {
    let mut env = TestEnv::new(harness);
    let pings = Recorder::new();
    let pongs = Recorder::new();
    let manager = env
        .start(
            env.builder("a")
                .listener(PingListener {
                    seen: Arc::clone(&pings),
                    server: "a".into(),
                })
                .listener(PongListener {
                    seen: Arc::clone(&pongs),
                }),
        )
        .await;
    let sent: Vec<Ping> = (0..5)
        .map(|n| Ping {
            n,
            text: format!("héllo {n}\n\"quoted\" \\ back\0slash"),
        })
        .collect();
    for ping in &sent {
        manager.send_event(ping).await.expect("send ping");
    }
    manager
        .send_event(&Pong::Score(-7))
        .await
        .expect("send pong");
    manager.send_event(&Pong::Miss).await.expect("send pong");

    let got = pings.wait_for(5, WAIT).await;
    let mut got: Vec<Ping> = got.into_iter().map(|s| s.event).collect();
    got.sort_by_key(|p| p.n);
    assert_eq!(got, sent, "{}: pings", harness.name());
    let got: Vec<Pong> = pongs
        .wait_for(2, WAIT)
        .await
        .into_iter()
        .map(|s| s.event)
        .collect();
    assert_eq!(got.len(), 2, "{}: pongs", harness.name());
    assert!(got.contains(&Pong::Score(-7)) && got.contains(&Pong::Miss));
    env.finish().await;
}

// ---------------------------------------------------------------------------------
// headers and session

/// Adds a header on send and remembers every envelope it sent.
struct Stamp {
    sent: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

impl EnvelopePipeline for Stamp {
    fn name(&self) -> &'static str {
        "stamp"
    }

    fn send(&self, envelope: &mut Envelope, _: &EventDescriptor) -> Result<(), BoxError> {
        // A value that would break a naive text protocol.
        envelope
            .headers
            .insert("x-stamp", "line1\nline2:colon\\back\rcr");
        let headers = envelope
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.sent.lock().expect("lock").push(headers);
        Ok(())
    }

    fn handle(&self, envelope: &mut Envelope, _: &ListenerDescriptor) -> Result<(), BoxError> {
        envelope.headers.insert("x-seen-by-pipeline", "yes");
        Ok(())
    }
}

/// Standard and pipeline headers arrive identical; the session id is current in `on`.
pub async fn headers_and_session(harness: &dyn Harness) {
    let mut env = TestEnv::new(harness);
    let pings = Recorder::new();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let manager = env
        .start(
            env.builder("a")
                .pipeline(SessionPipeline)
                .pipeline(Stamp {
                    sent: Arc::clone(&sent),
                })
                .listener(PingListener {
                    seen: Arc::clone(&pings),
                    server: "a".into(),
                }),
        )
        .await;
    eventing::pipeline::with_session("session-42", async {
        let ping = Ping {
            n: 1,
            text: "x".into(),
        };
        manager.send_event(&ping).await
    })
    .await
    .expect("send");
    // Without a session, no session header and no current session.
    manager
        .send_event(&Ping {
            n: 2,
            text: "y".into(),
        })
        .await
        .expect("send");

    let mut got = pings.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2, "{}: both pings arrive", harness.name());
    got.sort_by_key(|s| s.event.n);
    let sent = sent.lock().expect("lock").clone();
    for (seen, sent) in got.iter().zip(&sent) {
        for (name, value) in sent {
            assert_eq!(
                seen.headers.get(name),
                Some(value),
                "{}: header {name} must arrive identical",
                harness.name()
            );
        }
        for name in [
            header::MESSAGE_ID,
            header::EVENT,
            header::TIMESTAMP,
            header::CONTENT_TYPE,
        ] {
            assert!(seen.headers.contains_key(name), "standard header {name}");
        }
        assert_eq!(
            seen.headers.get("x-seen-by-pipeline").map(String::as_str),
            Some("yes")
        );
        assert_eq!(
            seen.headers.get(header::EVENT),
            Some(&format!("suite.{}.Ping", env.env))
        );
    }
    assert_eq!(got[0].session.as_deref(), Some("session-42"));
    assert_eq!(
        got[0].headers.get(header::SESSION_ID).map(String::as_str),
        Some("session-42")
    );
    assert_eq!(got[1].session, None);
    assert!(!got[1].headers.contains_key(header::SESSION_ID));
    env.finish().await;
}

// ---------------------------------------------------------------------------------
// competing consumers and broadcast

/// Work that one instance among all servers does.
#[event(name = "suite.{env}.Work", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Work {
    /// Item number.
    pub n: u32,
}

/// A competing listener (one queue shared by all servers).
#[event_listener(Work, name = "Worker")]
pub struct Worker {
    /// Where to record.
    pub seen: Arc<Recorder<Work>>,
    /// The server name.
    pub server: String,
}

impl EventListener<Work> for Worker {
    async fn on(&self, event: Work, ctx: &Context) -> ListenerResult {
        self.seen.record(event, ctx, &self.server);
        Ok(())
    }
}

/// A per-process listener of the same event (one queue per server).
#[event_listener(Work, name = "Cache", per_process = true)]
pub struct CacheListener {
    /// Where to record.
    pub seen: Arc<Recorder<Work>>,
    /// The server name.
    pub server: String,
}

impl EventListener<Work> for CacheListener {
    async fn on(&self, event: Work, ctx: &Context) -> ListenerResult {
        self.seen.record(event, ctx, &self.server);
        Ok(())
    }
}

const STREAM: u32 = 40;

/// Two servers, one listener name: each event is handled exactly once overall.
pub async fn competing_consumers(harness: &dyn Harness) {
    let mut env = TestEnv::new(harness);
    let seen = Recorder::new();
    let mut managers = Vec::new();
    for server in ["a", "b"] {
        let builder = env.builder(server).listener(Worker {
            seen: Arc::clone(&seen),
            server: server.into(),
        });
        managers.push(env.start(builder).await);
    }
    for n in 0..STREAM {
        managers[0].send_event(&Work { n }).await.expect("send");
    }
    let got = seen.wait_for(STREAM as usize, WAIT).await;
    // Give a duplicate a moment to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = if seen.seen().len() > got.len() {
        seen.seen()
    } else {
        got
    };
    let mut numbers: Vec<u32> = got.iter().map(|s| s.event.n).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..STREAM).collect::<Vec<_>>(),
        "{}: every event exactly once",
        harness.name()
    );
    for server in ["a", "b"] {
        let count = got.iter().filter(|s| s.server == server).count();
        assert!(
            count > 0,
            "{}: server {server} took no work (a: {}, b: {})",
            harness.name(),
            got.iter().filter(|s| s.server == "a").count(),
            got.iter().filter(|s| s.server == "b").count()
        );
    }
    env.finish().await;
}

/// Two servers with a per-process listener: both get every event.
pub async fn per_process_broadcast(harness: &dyn Harness) {
    let mut env = TestEnv::new(harness);
    let seen = Recorder::new();
    let mut managers = Vec::new();
    for server in ["a", "b"] {
        let builder = env.builder(server).listener(CacheListener {
            seen: Arc::clone(&seen),
            server: server.into(),
        });
        managers.push(env.start(builder).await);
    }
    let queues: Vec<String> = managers
        .iter()
        .flat_map(|m| m.queues())
        .map(|q| q.name)
        .collect();
    assert_eq!(
        queues,
        vec![
            format!("suite.{}.Work::Cache-a", env.env),
            format!("suite.{}.Work::Cache-b", env.env)
        ]
    );
    for n in 0..STREAM {
        managers[1].send_event(&Work { n }).await.expect("send");
    }
    let got = seen.wait_for(2 * STREAM as usize, WAIT).await;
    for server in ["a", "b"] {
        let mut numbers: Vec<u32> = got
            .iter()
            .filter(|s| s.server == server)
            .map(|s| s.event.n)
            .collect();
        numbers.sort_unstable();
        assert_eq!(
            numbers,
            (0..STREAM).collect::<Vec<_>>(),
            "{}: server {server} gets every event once",
            harness.name()
        );
    }
    env.finish().await;
}

// ---------------------------------------------------------------------------------
// failures

/// An event whose listeners fail on purpose.
#[event(name = "suite.{env}.Flaky", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flaky {
    /// How many calls fail before one succeeds (`u32::MAX`: always fails).
    pub failures: u32,
    /// Panic instead of returning an error.
    pub panic: bool,
}

/// Fails `failures` times per message, then succeeds.
#[event_listener(Flaky, name = "Flaky")]
pub struct FlakyListener {
    /// Calls so far, all messages together.
    pub calls: Arc<AtomicU32>,
    /// Successful calls.
    pub seen: Arc<Recorder<Flaky>>,
}

impl EventListener<Flaky> for FlakyListener {
    async fn on(&self, event: Flaky, ctx: &Context) -> ListenerResult {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if ctx.attempt() <= event.failures {
            if event.panic {
                panic!("flaky listener panics on attempt {}", ctx.attempt());
            }
            return Err(format!("flaky failure on attempt {}", ctx.attempt()).into());
        }
        self.seen.record(event, ctx, "");
        Ok(())
    }
}

async fn start_flaky(
    env: &mut TestEnv<'_>,
) -> (EventManager, Arc<AtomicU32>, Arc<Recorder<Flaky>>) {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Recorder::new();
    let builder = env.builder("a").listener(FlakyListener {
        calls: Arc::clone(&calls),
        seen: Arc::clone(&seen),
    });
    (env.start(builder).await, calls, seen)
}

fn flaky_queue(env: &TestEnv<'_>) -> String {
    format!("suite.{}.Flaky::Flaky", env.env)
}

/// A failing call is retried; past the limit the message is dead-lettered with the
/// reason, the attempts and the queue in its headers.
pub async fn retry_then_dead_letter(harness: &dyn Harness) {
    let mut env = TestEnv::new(harness);
    let (manager, calls, seen) = start_flaky(&mut env).await;
    manager
        .send_event(&Flaky {
            failures: 2,
            panic: false,
        })
        .await
        .expect("send");
    let got = seen.wait_for(1, WAIT).await;
    assert_eq!(
        got.len(),
        1,
        "{}: succeeds on the third call",
        harness.name()
    );
    manager
        .send_event(&Flaky {
            failures: u32::MAX,
            panic: false,
        })
        .await
        .expect("send");
    let letters = dead_letters(&manager, &flaky_queue(&env), 1).await;
    assert_eq!(letters.len(), 1, "{}: one dead letter", harness.name());
    let letter = &letters[0];
    let reason = letter.headers.get(header::DEAD_LETTER_REASON).unwrap_or("");
    assert!(
        reason.contains("flaky failure on attempt 3"),
        "reason: {reason}"
    );
    assert_eq!(letter.headers.get(header::DEAD_LETTER_ATTEMPTS), Some("3"));
    assert_eq!(
        letter.headers.get(header::DEAD_LETTER_QUEUE),
        Some(flaky_queue(&env).as_str())
    );
    let body: Flaky = serde_json::from_slice(&letter.body).expect("dead letter keeps the body");
    assert_eq!(body.failures, u32::MAX);
    assert_eq!(calls.load(Ordering::SeqCst), 6, "3 calls + 3 calls");
    // The counter moves when the provider confirmed the letter; a listing can see
    // the letter a moment before (ActiveMQ shows it before its receipt arrives).
    eventually(WAIT, || manager.stats().dead_lettered >= 1).await;
    assert_eq!(manager.stats().dead_lettered, 1);
    env.finish().await;
}

/// An event whose listener fails while a switch is on.
#[event(name = "suite.{env}.Replayed", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Replayed {
    /// Sequence number.
    pub n: u32,
}

/// Fails every call while `failing` is set.
#[event_listener(Replayed, name = "Replayer")]
pub struct ReplayListener {
    /// While true, every call fails.
    pub failing: Arc<std::sync::atomic::AtomicBool>,
    /// Successful calls.
    pub seen: Arc<Recorder<Replayed>>,
}

impl EventListener<Replayed> for ReplayListener {
    async fn on(&self, event: Replayed, ctx: &Context) -> ListenerResult {
        if self.failing.load(Ordering::SeqCst) {
            return Err(format!("refusing {} for now", event.n).into());
        }
        self.seen.record(event, ctx, "");
        Ok(())
    }
}

/// Dead letters can be replayed through the API: a limited number at a time, back
/// onto their queue only, without the dead-letter headers, and then handled.
pub async fn dead_letters_are_replayed(harness: &dyn Harness) {
    let mut env = TestEnv::new(harness);
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let seen = Recorder::new();
    let builder = env.builder("a").listener(ReplayListener {
        failing: Arc::clone(&failing),
        seen: Arc::clone(&seen),
    });
    let manager = env.start(builder).await;
    let queue = format!("suite.{}.Replayed::Replayer", env.env);
    for n in 0..3 {
        manager.send_event(&Replayed { n }).await.expect("send");
    }
    let letters = dead_letters(&manager, &queue, 3).await;
    assert_eq!(letters.len(), 3, "{}: three dead letters", harness.name());
    failing.store(false, Ordering::SeqCst);

    let moved = manager
        .replay_dead_letters(&queue, 2)
        .await
        .expect("replay two");
    assert_eq!(moved, 2, "{}: replays no more than asked", harness.name());
    let got = seen.wait_for(2, WAIT).await;
    assert_eq!(
        got.len(),
        2,
        "{}: the replayed two are handled",
        harness.name()
    );
    let left = dead_letters(&manager, &queue, 1).await;
    assert_eq!(
        left.len(),
        1,
        "{}: one left on the dead-letter queue",
        harness.name()
    );

    let moved = manager
        .replay_dead_letters(&queue, 10)
        .await
        .expect("replay the rest");
    assert_eq!(moved, 1, "{}", harness.name());
    let got = seen.wait_for(3, WAIT).await;
    let mut numbers: Vec<u32> = got.iter().map(|s| s.event.n).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        vec![0, 1, 2],
        "{}: each handled once",
        harness.name()
    );
    for handled in &got {
        for name in header::DEAD_LETTER_HEADERS {
            assert!(
                !handled.headers.contains_key(name),
                "{}: a replayed message still has `{name}`",
                harness.name()
            );
        }
    }
    assert!(
        manager
            .dead_letters(&queue, 10)
            .await
            .expect("list")
            .is_empty(),
        "{}: the dead-letter queue is empty",
        harness.name()
    );
    assert_eq!(
        manager
            .replay_dead_letters(&queue, 10)
            .await
            .expect("replay none"),
        0
    );
    env.finish().await;
}

/// A panic in `on` is caught, retried and dead-lettered; the consumer keeps going.
pub async fn panic_is_retried_then_dead_lettered(harness: &dyn Harness) {
    let mut env = TestEnv::new(harness);
    let (manager, _calls, seen) = start_flaky(&mut env).await;
    manager
        .send_event(&Flaky {
            failures: u32::MAX,
            panic: true,
        })
        .await
        .expect("send");
    let letters = dead_letters(&manager, &flaky_queue(&env), 1).await;
    assert_eq!(
        letters.len(),
        1,
        "{}: the panicking message is dead-lettered",
        harness.name()
    );
    let reason = letters[0]
        .headers
        .get(header::DEAD_LETTER_REASON)
        .unwrap_or("");
    assert!(reason.contains("panicked"), "reason: {reason}");
    manager
        .send_event(&Flaky {
            failures: 0,
            panic: false,
        })
        .await
        .expect("send");
    assert_eq!(
        seen.wait_for(1, WAIT).await.len(),
        1,
        "the consumer survives"
    );
    env.finish().await;
}

/// Sends raw bytes as event `E` through the provider, bypassing serialization.
pub async fn send_raw<E: Event>(
    manager: &EventManager,
    body: &'static [u8],
    event_header: Option<&str>,
) {
    let address = manager.address_of(E::descriptor()).expect("address");
    let mut envelope = Envelope::new(&address, eventing::codec::JSON, Bytes::from_static(body));
    if let Some(event) = event_header {
        envelope.headers.insert(header::EVENT, event);
    }
    let route = Route::new(&address, E::descriptor().durable());
    manager
        .provider()
        .publish(route, envelope)
        .await
        .expect("raw publish");
}

/// A body that does not decode is dead-lettered at once with the decode error.
pub async fn undecodable_body_is_dead_lettered(harness: &dyn Harness) {
    let mut env = TestEnv::new(harness);
    let (manager, calls, seen) = start_flaky(&mut env).await;
    send_raw::<Flaky>(&manager, b"{not json", None).await;
    send_raw::<Flaky>(&manager, b"{\"failures\":\"many\"}", None).await;
    manager
        .send_event(&Flaky {
            failures: 0,
            panic: false,
        })
        .await
        .expect("send");
    assert_eq!(
        seen.wait_for(1, WAIT).await.len(),
        1,
        "the good message is handled"
    );
    let letters = dead_letters(&manager, &flaky_queue(&env), 2).await;
    assert_eq!(
        letters.len(),
        2,
        "{}: both bad bodies are dead-lettered",
        harness.name()
    );
    for letter in &letters {
        let reason = letter.headers.get(header::DEAD_LETTER_REASON).unwrap_or("");
        assert!(reason.starts_with("undecodable body"), "reason: {reason}");
        assert_eq!(letter.headers.get(header::DEAD_LETTER_ATTEMPTS), Some("1"));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "bad bodies never reach the listener"
    );
    env.finish().await;
}

/// A message whose `event` header names another event is dead-lettered, not handled.
pub async fn unknown_event_is_dead_lettered(harness: &dyn Harness) {
    let mut env = TestEnv::new(harness);
    let (manager, calls, _seen) = start_flaky(&mut env).await;
    send_raw::<Flaky>(
        &manager,
        b"{\"failures\":0,\"panic\":false}",
        Some("NoSuchEvent"),
    )
    .await;
    let letters = dead_letters(&manager, &flaky_queue(&env), 1).await;
    assert_eq!(letters.len(), 1, "{}: dead-lettered", harness.name());
    let reason = letters[0]
        .headers
        .get(header::DEAD_LETTER_REASON)
        .unwrap_or("");
    assert!(
        reason.contains("unknown event `NoSuchEvent`"),
        "reason: {reason}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    env.finish().await;
}

// ---------------------------------------------------------------------------------
// shutdown

/// A slow event for shutdown tests.
#[event(name = "suite.{env}.Slow", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slow {
    /// Item number.
    pub n: u32,
}

/// Takes a while per event.
#[event_listener(Slow, name = "Slow")]
pub struct SlowListener {
    /// Calls started.
    pub started: Arc<AtomicU32>,
    /// Calls finished.
    pub seen: Arc<Recorder<Slow>>,
    /// The server name.
    pub server: String,
}

impl EventListener<Slow> for SlowListener {
    async fn on(&self, event: Slow, ctx: &Context) -> ListenerResult {
        self.started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.seen.record(event, ctx, &self.server);
        Ok(())
    }
}

/// Shutdown lets running calls finish and acknowledges them; what was not handled
/// stays on the broker for the next instance. Nothing is lost.
pub async fn shutdown_drains(harness: &dyn Harness) {
    const N: u32 = 12;
    let mut env = TestEnv::new(harness);
    let seen = Recorder::new();
    let started_a = Arc::new(AtomicU32::new(0));
    let a = env
        .start(env.builder("a").listener(SlowListener {
            started: Arc::clone(&started_a),
            seen: Arc::clone(&seen),
            server: "a".into(),
        }))
        .await;
    for n in 0..N {
        a.send_event(&Slow { n }).await.expect("send");
    }
    assert!(
        eventually(WAIT, || started_a.load(Ordering::SeqCst) > 0).await,
        "{}: a starts work",
        harness.name()
    );
    a.shutdown().await.expect("shutdown");
    let started = started_a.load(Ordering::SeqCst);
    let finished_by_a = seen.seen().len() as u32;
    assert_eq!(
        started, finished_by_a,
        "every started call finished before shutdown returned"
    );
    assert!(
        finished_by_a < N,
        "shutdown did not wait for the whole backlog"
    );

    let started_b = Arc::new(AtomicU32::new(0));
    let _b = env
        .start(env.builder("b").listener(SlowListener {
            started: Arc::clone(&started_b),
            seen: Arc::clone(&seen),
            server: "b".into(),
        }))
        .await;
    let got = seen.wait_for(N as usize, WAIT).await;
    let mut numbers: Vec<u32> = got.iter().map(|s| s.event.n).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(
        numbers,
        (0..N).collect::<Vec<_>>(),
        "{}: nothing lost",
        harness.name()
    );
    assert_eq!(
        got.len() as u32,
        N,
        "nothing handled twice after a clean shutdown"
    );
    env.finish().await;
}

//! Fault tests, written once and run on every provider (`faults_tests!`): a broker
//! restart in the middle of a stream, a consumer killed while it holds unacknowledged
//! messages, poison messages, a large backlog drained with bounded memory, and a
//! shutdown in the middle of a stream.
//!
//! Every message carries a unique id in its payload and every test counts each id,
//! then prints one line per provider (run with `--nocapture` to see it):
//!
//! ```text
//! fault <test> <provider>: sent=N handled=N duplicated=N dead_lettered=N lost=N peak_rss_mib=N
//! ```
//!
//! and fails if a message was lost. `handled` counts completed listener calls (a
//! duplicate is a second completed call for one id); `peak_rss_mib` is the test
//! process's peak resident memory during the test. The backlog test adds
//! `drain_growth_mib` (what it checks: growth while the consumer drains, from a
//! baseline taken after the consumer connected) and `connect_mib` (what building
//! the consumer's manager, i.e. connecting, cost).
//!
//! The tests restart the broker and load it heavily, so they must not run alongside
//! anything else that uses it: `faults_tests!` takes a process-wide lock in each test,
//! and cargo runs test binaries one after another.
//!
//! Set `RUST_LOG` (e.g. `RUST_LOG=eventing_tests=info`) to see progress and
//! timings on stderr.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use eventing::{
    Context, Envelope, Error, Event, EventListener, EventManager, ListenerOptions, ListenerResult,
    QueueSpec, RetryPolicy, Route, event, event_listener, header,
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::harness::{Harness, TestEnv};

/// The longest any one fault test may run, cleanup excluded.
pub const CASE_LIMIT: Duration = Duration::from_secs(170);

/// Messages in the restart test's stream.
pub const RESTART_STREAM: u64 = 20_000;
/// Messages in the killed-consumer test.
pub const KILLED_STREAM: u64 = 2_000;
/// Completed calls of the doomed consumer before it is killed.
pub const KILL_AFTER: u64 = 300;
/// Poison messages in the poison test (as many healthy ones are interleaved).
pub const POISON: u64 = 1_000;
/// Messages in the backlog on a broker.
pub const BACKLOG: u64 = 200_000;
/// How much the resident memory may grow while the backlog drains.
pub const BACKLOG_RSS_GROWTH_MIB: u64 = 16;
/// The backlog consumer's prefetch.
pub const BACKLOG_PREFETCH: u16 = 50;
/// Padding per backlog message, so that buffering the backlog would show in memory.
pub const BACKLOG_PAD: usize = 200;
/// The backlog's consumer holds its first calls this long, so the broker could
/// push it as much as it would take (with prefetch ignored, tens of thousands of
/// messages).
pub const BACKLOG_HOLD: Duration = Duration::from_secs(2);
/// Messages in the shutdown test's stream.
pub const SHUTDOWN_STREAM: u64 = 2_000;

// ---------------------------------------------------------------------------------
// running one case

/// What a fault test needs beyond the harness.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The libtest name of the `fault_child` test of this instantiation, which a
    /// test runs in a child process (`current_exe() <name> --exact`).
    pub child_test: String,
}

impl Ctx {
    /// The context for tests generated in the module `module_path`
    /// (`module_path!()` at the `faults_tests!` call).
    pub fn new(module_path: &str) -> Ctx {
        let child_test = match module_path.split_once("::") {
            Some((_crate, module)) => format!("{module}::fault_child"),
            None => "fault_child".to_string(),
        };
        Ctx { child_test }
    }
}

/// Held by each fault test: one at a time in this process.
pub fn serial() -> MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs one case on a fresh two-worker runtime, bounded by [`CASE_LIMIT`] plus time
/// for cleanup.
pub fn block_on(case: &str, body: impl std::future::Future<Output = ()>) {
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let limit = CASE_LIMIT + Duration::from_secs(40);
    let result = runtime.block_on(async { tokio::time::timeout(limit, body).await });
    runtime.shutdown_timeout(Duration::from_secs(5));
    if result.is_err() {
        panic!("fault test {case} timed out after {limit:?}");
    }
}

fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Runs `body` bounded by [`CASE_LIMIT`], then always cleans up, then fails the test
/// if the body did.
async fn guarded<'h>(
    mut env: TestEnv<'h>,
    body: impl AsyncFnOnce(&mut TestEnv<'h>) -> Result<(), String>,
) {
    let result = tokio::time::timeout(CASE_LIMIT, body(&mut env)).await;
    env.finish().await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => panic!("{failure}"),
        Err(_) => panic!("timed out after {CASE_LIMIT:?}"),
    }
}

/// [`guarded`], and then removes `queues` (and their events' addresses) from the
/// broker too: queues of managers the body builds itself rather than with
/// [`TestEnv::start`].
async fn guarded_then<'h>(
    mut env: TestEnv<'h>,
    queues: Vec<QueueSpec>,
    body: impl AsyncFnOnce(&mut TestEnv<'h>) -> Result<(), String>,
) {
    let result = tokio::time::timeout(CASE_LIMIT, body(&mut env)).await;
    let harness = env.harness;
    env.finish().await;
    let mut events: Vec<String> = queues.iter().map(|q| q.event.clone()).collect();
    events.dedup();
    harness.cleanup(&queues, &events).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => panic!("{failure}"),
        Err(_) => panic!("timed out after {CASE_LIMIT:?}"),
    }
}

/// Returns `Err(message)` from the enclosing body unless `cond` holds.
macro_rules! check {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(format!($($message)+));
        }
    };
}

/// True if the harness's broker lives in this process (`memory://`): no other
/// process can reach it.
fn in_process(env: &TestEnv<'_>) -> bool {
    env.harness.url(&env.env).starts_with("memory://")
}

// ---------------------------------------------------------------------------------
// the event, the listener and the counting

/// The one event of the fault tests; `id` is unique per message of a test.
#[event(name = "faults.{env}.Item", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Unique per message.
    pub id: u64,
    /// The listener fails on it, every time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub poison: bool,
    /// Filler.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pad: String,
}

impl Item {
    /// A healthy item.
    pub fn new(id: u64) -> Item {
        Item {
            id,
            poison: false,
            pad: String::new(),
        }
    }
}

/// Counts what it handles by id; fails on poison; optionally slow; optionally
/// journals each completed id to a file (in a child process that may be killed).
#[event_listener(Item, name = "Counter")]
pub struct Counter {
    /// Where to count.
    pub tally: Arc<Tally>,
    /// Time each call takes.
    pub delay: Duration,
    /// Appends `<id>\n` per completed call, before the call returns.
    pub journal: Option<Arc<std::fs::File>>,
    /// Calls wait until this instant before they begin (a consumer that falls
    /// behind, so the broker could push it everything it would take).
    pub hold_until: Option<Instant>,
}

impl Counter {
    /// A listener counting into `tally`, taking `delay` per call.
    pub fn new(tally: &Arc<Tally>, delay: Duration) -> Counter {
        Counter {
            tally: Arc::clone(tally),
            delay,
            journal: None,
            hold_until: None,
        }
    }
}

impl EventListener<Item> for Counter {
    async fn on(&self, item: Item, ctx: &Context) -> ListenerResult {
        if item.poison {
            return Err(format!("poison item {}", item.id).into());
        }
        self.tally.start(item.id);
        if let Some(until) = self.hold_until {
            tokio::time::sleep_until(until).await;
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Some(journal) = &self.journal {
            // One write(2) per line on an O_APPEND file: a line is either there
            // whole or not at all, even under SIGKILL.
            (&**journal).write_all(format!("{}\n", item.id).as_bytes())?;
        }
        self.tally.complete(item.id, ctx.redelivered());
        Ok(())
    }
}

/// Per-id counts of started and completed listener calls.
pub struct Tally {
    started: Box<[AtomicU32]>,
    completed: Box<[AtomicU32]>,
    starts: AtomicU64,
    completions: AtomicU64,
    redelivered: AtomicU64,
    strays: AtomicU64,
}

impl Tally {
    /// Counts for ids `0..n`.
    pub fn new(n: u64) -> Arc<Tally> {
        // Written once here, so the counters' pages are resident from the start
        // (a zeroed allocation may be mapped lazily) and do not show up as growth
        // in the memory measured while messages are counted.
        let zeros = || {
            let counts: Box<[AtomicU32]> = (0..n).map(|_| AtomicU32::new(0)).collect();
            for count in &counts {
                count.store(0, Ordering::Relaxed);
            }
            counts
        };
        Arc::new(Tally {
            started: zeros(),
            completed: zeros(),
            starts: AtomicU64::new(0),
            completions: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            strays: AtomicU64::new(0),
        })
    }

    fn slot(counts: &[AtomicU32], id: u64) -> Option<&AtomicU32> {
        usize::try_from(id).ok().and_then(|i| counts.get(i))
    }

    fn start(&self, id: u64) {
        match Self::slot(&self.started, id) {
            Some(count) => {
                count.fetch_add(1, Ordering::SeqCst);
            }
            None => {
                self.strays.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.starts.fetch_add(1, Ordering::SeqCst);
    }

    fn complete(&self, id: u64, redelivered: bool) {
        if let Some(count) = Self::slot(&self.completed, id) {
            count.fetch_add(1, Ordering::SeqCst);
        }
        if redelivered {
            self.redelivered.fetch_add(1, Ordering::SeqCst);
        }
        self.completions.fetch_add(1, Ordering::SeqCst);
    }

    /// Calls started.
    pub fn starts(&self) -> u64 {
        self.starts.load(Ordering::SeqCst)
    }

    /// Calls completed.
    pub fn completions(&self) -> u64 {
        self.completions.load(Ordering::SeqCst)
    }

    /// Completed calls of messages marked redelivered.
    pub fn redelivered(&self) -> u64 {
        self.redelivered.load(Ordering::SeqCst)
    }

    /// Calls for ids outside `0..n`.
    pub fn strays(&self) -> u64 {
        self.strays.load(Ordering::SeqCst)
    }

    /// Completed calls for `id`.
    pub fn completed(&self, id: u64) -> u32 {
        Self::slot(&self.completed, id).map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// Started calls for `id`.
    pub fn started(&self, id: u64) -> u32 {
        Self::slot(&self.started, id).map_or(0, |c| c.load(Ordering::SeqCst))
    }
}

/// Handled, duplicated and lost among `ids`, over several tallies.
#[derive(Clone, Debug, Default)]
pub struct Count {
    /// Completed calls.
    pub handled: u64,
    /// Completed calls beyond the first per id.
    pub duplicated: u64,
    /// Ids never completed.
    pub lost: u64,
    /// The first few lost ids.
    pub lost_ids: Vec<u64>,
}

impl Count {
    /// The outcome of a test that sent `sent` messages and found `dead_lettered`
    /// in dead-letter queues, with these counts.
    pub fn outcome(&self, sent: u64, dead_lettered: u64, peak_rss_mib: u64) -> Outcome {
        Outcome {
            sent,
            handled: self.handled,
            duplicated: self.duplicated,
            dead_lettered,
            lost: self.lost,
            peak_rss_mib,
        }
    }
}

/// Counts `ids` over `tallies`.
pub fn count(tallies: &[&Tally], ids: impl IntoIterator<Item = u64>) -> Count {
    let mut total = Count::default();
    for id in ids {
        let n: u64 = tallies.iter().map(|t| u64::from(t.completed(id))).sum();
        total.handled += n;
        total.duplicated += n.saturating_sub(1);
        if n == 0 {
            total.lost += 1;
            if total.lost_ids.len() < 10 {
                total.lost_ids.push(id);
            }
        }
    }
    total
}

/// Waits until every id in `ids` was completed at least once (bounded).
async fn all_completed(tallies: &[&Tally], ids: std::ops::Range<u64>, limit: Duration) -> bool {
    // Ids below `done` are known complete; the scan resumes there.
    let mut done = ids.start;
    eventually(limit, Duration::from_millis(20), || {
        while done < ids.end && tallies.iter().any(|t| t.completed(done) > 0) {
            done += 1;
        }
        done == ids.end
    })
    .await
}

/// Polls `check` every `every` until it holds, at most `limit`.
pub async fn eventually(limit: Duration, every: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// The line every fault test prints.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Messages sent (each once, however often its send was retried).
    pub sent: u64,
    /// Completed listener calls.
    pub handled: u64,
    /// Completed calls beyond the first per id.
    pub duplicated: u64,
    /// Poison messages found in the dead-letter queue.
    pub dead_lettered: u64,
    /// Messages neither handled nor dead-lettered.
    pub lost: u64,
    /// Peak resident memory of this process during the test.
    pub peak_rss_mib: u64,
}

impl Outcome {
    /// Prints the `fault <test> <provider>: sent=N ...` line, then `note`.
    pub fn print(&self, test: &str, provider: &str, note: &str) {
        println!(
            "fault {test} {provider}: sent={} handled={} duplicated={} dead_lettered={} lost={} peak_rss_mib={}{note}",
            self.sent,
            self.handled,
            self.duplicated,
            self.dead_lettered,
            self.lost,
            self.peak_rss_mib
        );
    }
}

// ---------------------------------------------------------------------------------
// resident memory

/// `VmRSS` or `VmHWM` of this process in KiB, from `/proc/self/status`.
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Samples this process's resident memory every 10 ms, and resets the kernel's
/// high-water mark (`VmHWM`, via `/proc/self/clear_refs`) so that it covers only
/// the sampling period.
pub struct RssSampler {
    start_kib: u64,
    peak_kib: Arc<AtomicU64>,
    hwm_reset: bool,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl RssSampler {
    /// Starts sampling.
    pub fn start() -> RssSampler {
        let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let start_kib = proc_status_kib("VmRSS").unwrap_or(0);
        let peak_kib = Arc::new(AtomicU64::new(start_kib));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let peak_kib = Arc::clone(&peak_kib);
            let stop = Arc::clone(&stop);
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = proc_status_kib("VmRSS") {
                        peak_kib.fetch_max(rss, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        RssSampler {
            start_kib,
            peak_kib,
            hwm_reset,
            stop,
            task,
        }
    }

    /// Resident memory when sampling started, KiB.
    pub fn start_kib(&self) -> u64 {
        self.start_kib
    }

    /// The peak so far, KiB (samples, and `VmHWM` if it could be reset).
    pub fn peak_kib(&self) -> u64 {
        let sampled = self.peak_kib.load(Ordering::Relaxed);
        let hwm = if self.hwm_reset {
            proc_status_kib("VmHWM").unwrap_or(0)
        } else {
            0
        };
        sampled.max(hwm)
    }

    /// The peak so far in MiB, rounded up.
    pub fn peak_mib(&self) -> u64 {
        self.peak_kib().div_ceil(1024)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------
// sending

/// A message a test sends.
#[derive(Clone, Debug)]
pub enum Outgoing {
    /// An event, through `send_event`.
    Event(Item),
    /// Raw bytes as an `Item`, through `manager.provider().publish`.
    Raw(Bytes),
}

/// How a stream of sends goes.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Sends in flight.
    pub concurrency: usize,
    /// At most this many sends per second (`None`: as fast as they go).
    pub per_second: Option<f64>,
    /// Give up retrying at this instant.
    pub deadline: Instant,
}

/// Sends running in the background.
pub struct SendStream {
    /// Messages sent so far (each once).
    pub sent: Arc<AtomicU64>,
    /// Sends that failed with `Unavailable` or `Timeout` and were retried.
    pub retried: Arc<AtomicU64>,
    /// The longest one send attempt took, in milliseconds.
    pub slowest_ms: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Result<(), String>>>,
}

impl SendStream {
    /// Sends `make(id)` for every id in `ids` from `manager`. A send that fails with
    /// [`Error::Unavailable`] or [`Error::Timeout`] is retried until it succeeds
    /// (bounded by `pace.deadline`); any other error stops that sender.
    pub fn spawn(
        manager: &EventManager,
        ids: std::ops::Range<u64>,
        pace: Pace,
        make: fn(u64) -> Outgoing,
    ) -> SendStream {
        let sent = Arc::new(AtomicU64::new(0));
        let retried = Arc::new(AtomicU64::new(0));
        let slowest_ms = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(ids.start));
        let began = Instant::now();
        let tasks = (0..pace.concurrency.max(1))
            .map(|_| {
                let manager = manager.clone();
                let (sent, retried, next) =
                    (Arc::clone(&sent), Arc::clone(&retried), Arc::clone(&next));
                let slowest_ms = Arc::clone(&slowest_ms);
                let ids = ids.clone();
                tokio::spawn(async move {
                    loop {
                        let id = next.fetch_add(1, Ordering::SeqCst);
                        if id >= ids.end {
                            return Ok(());
                        }
                        if let Some(rate) = pace.per_second {
                            let due =
                                began + Duration::from_secs_f64((id - ids.start) as f64 / rate);
                            tokio::time::sleep_until(due).await;
                        }
                        let message = make(id);
                        loop {
                            let attempt = Instant::now();
                            let result = send_one(&manager, &message).await;
                            let took = u64::try_from(attempt.elapsed().as_millis());
                            slowest_ms.fetch_max(took.unwrap_or(u64::MAX), Ordering::SeqCst);
                            match result {
                                Ok(()) => break,
                                Err(
                                    error @ (Error::Unavailable { .. } | Error::Timeout { .. }),
                                ) => {
                                    if Instant::now() >= pace.deadline {
                                        return Err(format!(
                                            "send of id {id} still failing at the deadline: {error}"
                                        ));
                                    }
                                    tracing::debug!(id, %error, "send failed; retrying");
                                    retried.fetch_add(1, Ordering::SeqCst);
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                                Err(error) => {
                                    return Err(format!("send of id {id} failed: {error:?}"));
                                }
                            }
                        }
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        SendStream {
            sent,
            retried,
            slowest_ms,
            tasks,
        }
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Waits for every sender; the first error, if any.
    pub async fn join(mut self) -> Result<(), String> {
        let mut first = Ok(());
        for task in std::mem::take(&mut self.tasks) {
            let result = task
                .await
                .unwrap_or_else(|e| Err(format!("sender task: {e}")));
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Sends one message.
pub async fn send_one(manager: &EventManager, message: &Outgoing) -> eventing::Result<()> {
    match message {
        Outgoing::Event(item) => manager.send_event(item).await,
        Outgoing::Raw(body) => {
            let address = manager.address_of(Item::descriptor())?;
            let envelope = Envelope::new(&address, eventing::JSON, body.clone());
            let route = Route {
                address: &address,
                durable: Item::descriptor().durable(),
            };
            let limit = Duration::from_secs(10);
            tokio::time::timeout(limit, manager.provider().publish(route, envelope))
                .await
                .map_err(|_| Error::Timeout {
                    operation: "raw publish",
                    after: limit,
                })?
        }
    }
}

fn healthy(id: u64) -> Outgoing {
    Outgoing::Event(Item::new(id))
}

/// The queue of the `Counter` listener in this test.
fn counter_queue(env: &TestEnv<'_>) -> QueueSpec {
    let address = format!("faults.{}.Item", env.env);
    QueueSpec::new(&address, "Counter", true, false, "any")
}

/// Options for a listener: prefetch, concurrency and a fast retry policy.
fn options(prefetch: u16, concurrency: usize) -> ListenerOptions {
    ListenerOptions {
        prefetch,
        concurrency,
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        },
    }
}

// ---------------------------------------------------------------------------------
// 1. broker restart during a stream

/// The sender's `send_timeout` in the restart test.
const RESTART_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A sender streams durable events while a consumer handles them; in the middle
/// the broker restarts. Sends that fail during the outage are retried; every id is
/// handled at least once, the consumer resubscribes by itself and ends healthy.
pub async fn broker_restart_during_stream(harness: &dyn Harness, _ctx: &Ctx) {
    guarded(TestEnv::new(harness), async |env| restart_body(env).await).await;
}

async fn restart_body(env: &mut TestEnv<'_>) -> Result<(), String> {
    const TEST: &str = "broker_restart_during_stream";
    let n = RESTART_STREAM;
    let rss = RssSampler::start();
    let began = Instant::now();
    let tally = Tally::new(n);
    let consumer = env
        .start(
            env.builder("consumer")
                .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(2))
                .listener_options(options(100, 16))
                .listener(Counter::new(&tally, Duration::ZERO)),
        )
        .await;
    let sender = env
        .start(env.builder("sender").send_timeout(RESTART_SEND_TIMEOUT))
        .await;
    // Paced so the stream is still running when the broker goes down and when it
    // is back: 4 s on the in-process broker, 12 s on a real one.
    let stream_secs = if in_process(env) { 4.0 } else { 12.0 };
    let stream = SendStream::spawn(
        &sender,
        0..n,
        Pace {
            concurrency: 16,
            per_second: Some(n as f64 / stream_secs),
            deadline: Instant::now() + Duration::from_secs(120),
        },
        healthy,
    );
    check!(
        eventually(Duration::from_secs(60), Duration::from_millis(5), || {
            stream.sent() >= n / 10
        })
        .await,
        "{TEST}: the stream did not get going ({} sent)",
        stream.sent()
    );
    // Watches the consumer's health through the outage.
    let unhealthy_seen = Arc::new(AtomicBool::new(false));
    let watcher = AbortOnDrop(tokio::spawn({
        let (consumer, seen) = (consumer.clone(), Arc::clone(&unhealthy_seen));
        async move {
            loop {
                if !consumer.health().healthy {
                    seen.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }));
    let sent_before = stream.sent();
    let restart_began = Instant::now();
    let restarted = env.harness.restart_broker().await;
    let outage = restart_began.elapsed();
    let sent_after = stream.sent();
    tracing::info!(
        restarted,
        ?outage,
        sent_before,
        sent_after,
        "broker restart"
    );
    let retried = Arc::clone(&stream.retried);
    let slowest_ms = Arc::clone(&stream.slowest_ms);
    let sent_result = stream.join().await;
    drop(watcher);
    let slowest = Duration::from_millis(slowest_ms.load(Ordering::SeqCst));
    let complete = all_completed(&[&tally], 0..n, Duration::from_secs(90)).await;
    let healthy_again = eventually(Duration::from_secs(30), Duration::from_millis(50), || {
        consumer.health().healthy
    })
    .await;
    // A moment for late duplicates.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let counted = count(&[&tally], 0..n);
    let stats = consumer.stats();
    let outcome = counted.outcome(sender.stats().sent, stats.dead_lettered, rss.peak_mib());
    let note = if restarted {
        ""
    } else {
        " (the harness cannot restart its broker: no restart)"
    };
    outcome.print(TEST, env.harness.name(), note);
    tracing::info!(
        elapsed = ?began.elapsed(),
        ?outage,
        retried_sends = retried.load(Ordering::SeqCst),
        ?slowest,
        reconnects = stats.reconnects,
        ?stats,
        "{TEST} done"
    );
    sent_result.map_err(|e| format!("{TEST}: {e}"))?;
    check!(
        counted.lost == 0 && complete,
        "{TEST}: {} of {n} ids never handled (first: {:?})",
        counted.lost,
        counted.lost_ids
    );
    check!(tally.strays() == 0, "{TEST}: ids that were never sent");
    check!(outcome.sent == n, "{TEST}: sent {} of {n}", outcome.sent);
    if restarted {
        check!(
            sent_before < n && sent_after < n,
            "{TEST}: the restart did not fall in the middle of the stream \
             (sent {sent_before} before it, {sent_after} when the broker was back, of {n})"
        );
        check!(
            stats.reconnects >= 1,
            "{TEST}: the consumer never noticed the restart (reconnects = 0)"
        );
        check!(
            unhealthy_seen.load(Ordering::SeqCst),
            "{TEST}: health() never showed the consumer reconnecting during the outage"
        );
    }
    check!(
        slowest <= RESTART_SEND_TIMEOUT + Duration::from_secs(3),
        "{TEST}: a send took {slowest:?}, past the send timeout of {RESTART_SEND_TIMEOUT:?}"
    );
    check!(
        healthy_again,
        "{TEST}: the consumer is not healthy after the restart: {:?}",
        consumer.health()
    );
    check!(
        stats.dead_lettered == 0,
        "{TEST}: healthy messages were dead-lettered"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 2. a killed consumer

/// Variables that make `fault_child` a consumer (see [`child_main`]).
const CHILD_URL: &str = "EVENTING_FAULT_CHILD_URL";
const CHILD_ENV: &str = "EVENTING_FAULT_CHILD_ENV";
const CHILD_JOURNAL: &str = "EVENTING_FAULT_CHILD_JOURNAL";
const CHILD_IDS: &str = "EVENTING_FAULT_CHILD_IDS";
/// The child exits by itself after this long, in case nobody kills it.
const CHILD_LIFETIME: Duration = Duration::from_secs(90);
/// Time the doomed consumer takes per message.
const DOOMED_DELAY: Duration = Duration::from_millis(10);

/// The body of the `fault_child` test that `faults_tests!` generates: without
/// `EVENTING_FAULT_CHILD_URL` it does nothing; with it, this process is the
/// consumer that `killed_consumer` kills with SIGKILL. It journals every
/// completed id to `EVENTING_FAULT_CHILD_JOURNAL` before acknowledging it.
pub fn child_main() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let env = std::env::var(CHILD_ENV).expect("EVENTING_FAULT_CHILD_ENV");
    let journal = std::env::var(CHILD_JOURNAL).expect("EVENTING_FAULT_CHILD_JOURNAL");
    let ids: u64 = std::env::var(CHILD_IDS)
        .ok()
        .and_then(|n| n.parse().ok())
        .expect("EVENTING_FAULT_CHILD_IDS");
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let journal = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&journal)
            .expect("open the journal");
        let listener = Counter {
            tally: Tally::new(ids),
            delay: DOOMED_DELAY,
            journal: Some(Arc::new(journal)),
            hold_until: None,
        };
        let manager = EventManager::builder()
            .url(url)
            .server_name("doomed-child")
            .var("env", env)
            .only_bound_listeners()
            .listener_options(options(50, 8))
            .listener(listener)
            .build()
            .await
            .expect("build the child's manager");
        manager.start().await.expect("start the child's manager");
        tokio::time::sleep(CHILD_LIFETIME).await;
        eprintln!("fault_child: not killed within {CHILD_LIFETIME:?}");
        std::process::exit(3);
    });
}

/// Kills (SIGKILL) and reaps the child when dropped.
struct ChildGuard(std::process::Child);

impl ChildGuard {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The completed ids in a journal.
fn read_journal(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// The last lines of a file, for failure messages.
fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A consumer holding unacknowledged messages dies without shutdown: SIGKILL of a
/// child process where the broker is reachable from one, otherwise (in-process
/// broker) its manager is dropped, which aborts its tasks. Another instance then
/// handles every message, the dead one's unacknowledged ones redelivered.
pub async fn killed_consumer(harness: &dyn Harness, ctx: &Ctx) {
    guarded(TestEnv::new(harness), async |env| {
        killed_body(env, ctx).await
    })
    .await;
}

async fn killed_body(env: &mut TestEnv<'_>, ctx: &Ctx) -> Result<(), String> {
    const TEST: &str = "killed_consumer";
    let n = KILLED_STREAM;
    let rss = RssSampler::start();
    let sender = env.start(env.builder("sender")).await;
    sender
        .provider()
        .declare(&[counter_queue(env)])
        .await
        .map_err(|e| format!("{TEST}: declare: {e}"))?;
    let pace = Pace {
        concurrency: 16,
        per_second: None,
        deadline: Instant::now() + Duration::from_secs(60),
    };
    SendStream::spawn(&sender, 0..n, pace, healthy)
        .join()
        .await
        .map_err(|e| format!("{TEST}: {e}"))?;

    // The doomed consumer.
    let doomed = Tally::new(n);
    let how;
    if in_process(env) {
        how = "dropped without shutdown";
        let manager = env
            .builder("doomed")
            .listener_options(options(50, 8))
            .listener(Counter::new(&doomed, DOOMED_DELAY))
            .build()
            .await
            .map_err(|e| format!("{TEST}: build: {e}"))?;
        manager
            .start()
            .await
            .map_err(|e| format!("{TEST}: start: {e}"))?;
        check!(
            eventually(Duration::from_secs(30), Duration::from_millis(2), || {
                doomed.completions() >= KILL_AFTER
            })
            .await,
            "{TEST}: the doomed consumer handled only {}",
            doomed.completions()
        );
        // The only handle: dropping it aborts the listener tasks mid-call.
        drop(manager);
    } else {
        how = "child process killed with SIGKILL";
        let journal = std::env::temp_dir().join(format!("eventing-{}.journal", env.env));
        let stderr = std::env::temp_dir().join(format!("eventing-{}.stderr", env.env));
        let _ = std::fs::remove_file(&journal);
        let result = kill_child(env, ctx, n, &journal, &stderr).await;
        for id in read_journal(&journal) {
            doomed.complete(id, false);
        }
        let _ = std::fs::remove_file(&journal);
        let _ = std::fs::remove_file(&stderr);
        result?;
    }
    let killed_after = doomed.completions();
    check!(
        killed_after < n,
        "{TEST}: the doomed consumer finished everything before it was killed"
    );

    let survivor = Tally::new(n);
    let _survivor = env
        .start(
            env.builder("survivor")
                .listener_options(options(50, 8))
                .listener(Counter::new(&survivor, Duration::ZERO)),
        )
        .await;
    let complete = all_completed(&[&doomed, &survivor], 0..n, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counted = count(&[&doomed, &survivor], 0..n);
    counted
        .outcome(sender.stats().sent, 0, rss.peak_mib())
        .print(TEST, env.harness.name(), "");
    tracing::info!(
        how,
        killed_after,
        survivor = survivor.completions(),
        redelivered = survivor.redelivered(),
        "{TEST} done"
    );
    check!(
        counted.lost == 0 && complete,
        "{TEST}: {} of {n} ids never handled (first: {:?})",
        counted.lost,
        counted.lost_ids
    );
    check!(
        survivor.redelivered() > 0,
        "{TEST}: no message came back marked redelivered: the killed consumer \
         held no unacknowledged message ({how} after {killed_after})"
    );
    Ok(())
}

/// Starts the `fault_child` consumer, lets it handle [`KILL_AFTER`] messages, then
/// kills it with SIGKILL.
async fn kill_child(
    env: &TestEnv<'_>,
    ctx: &Ctx,
    n: u64,
    journal: &std::path::Path,
    stderr: &std::path::Path,
) -> Result<(), String> {
    const TEST: &str = "killed_consumer";
    let exe = std::env::current_exe().map_err(|e| format!("{TEST}: current_exe: {e}"))?;
    let stderr_file =
        std::fs::File::create(stderr).map_err(|e| format!("{TEST}: {}: {e}", stderr.display()))?;
    let child = std::process::Command::new(exe)
        .args([ctx.child_test.as_str(), "--exact", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_URL, env.harness.url(&env.env))
        .env(CHILD_ENV, &env.env)
        .env(CHILD_JOURNAL, journal)
        .env(CHILD_IDS, n.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr_file)
        .spawn()
        .map_err(|e| format!("{TEST}: spawn the child: {e}"))?;
    let mut child = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let handled = read_journal(journal).len() as u64;
        if handled >= KILL_AFTER {
            break;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!(
                "{TEST}: the child exited ({status}) after {handled} messages:\n{}",
                tail(stderr)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{TEST}: the child handled only {handled} messages in 60 s:\n{}",
                tail(stderr)
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill();
    Ok(())
}

// ---------------------------------------------------------------------------------
// 3. poison messages

/// Raw poison bodies: not JSON; the id follows the prefix.
const RAW_POISON: &str = "poison-raw ";

/// Even ids are healthy; ids 1 mod 4 are undecodable raw bodies; ids 3 mod 4 are
/// events the listener always fails on.
fn poison_mix(id: u64) -> Outgoing {
    match id % 4 {
        1 => Outgoing::Raw(Bytes::from(format!("{RAW_POISON}{id}"))),
        3 => Outgoing::Event(Item {
            id,
            poison: true,
            pad: String::new(),
        }),
        _ => healthy(id),
    }
}

/// Poison messages (undecodable bodies and events the listener always fails on)
/// interleaved with healthy ones: every poison message ends in the dead-letter
/// queue with its reason, every healthy one is handled.
pub async fn poison_messages(harness: &dyn Harness, _ctx: &Ctx) {
    guarded(TestEnv::new(harness), async |env| poison_body(env).await).await;
}

async fn poison_body(env: &mut TestEnv<'_>) -> Result<(), String> {
    const TEST: &str = "poison_messages";
    let n = 2 * POISON;
    let rss = RssSampler::start();
    let tally = Tally::new(n);
    let consumer = env
        .start(
            env.builder("consumer")
                .listener_options(options(50, 16))
                .listener(Counter::new(&tally, Duration::ZERO)),
        )
        .await;
    let sender = env.start(env.builder("sender")).await;
    let pace = Pace {
        concurrency: 16,
        per_second: None,
        deadline: Instant::now() + Duration::from_secs(60),
    };
    SendStream::spawn(&sender, 0..n, pace, poison_mix)
        .join()
        .await
        .map_err(|e| format!("{TEST}: {e}"))?;
    let healthy_ids = || (0..n).filter(|id| id % 2 == 0);
    let handled = eventually(Duration::from_secs(60), Duration::from_millis(20), || {
        healthy_ids().all(|id| tally.completed(id) > 0)
    })
    .await;
    let moved = eventually(Duration::from_secs(60), Duration::from_millis(50), || {
        consumer.stats().dead_lettered >= POISON
    })
    .await;

    // The listing is bounded: ask for more than can be there, and check it was not cut.
    let queue = counter_queue(env).name;
    let limit = usize::try_from(3 * POISON).unwrap_or(usize::MAX);
    let letters = consumer
        .dead_letters(&queue, limit)
        .await
        .map_err(|e| format!("{TEST}: dead_letters: {e}"))?;
    let mut in_dlq = vec![0u32; usize::try_from(n).unwrap_or(0)];
    let mut bad = Vec::new();
    for letter in &letters {
        let reason = letter.headers.get(header::DEAD_LETTER_REASON).unwrap_or("");
        let body = String::from_utf8_lossy(&letter.body);
        let (id, reason_ok) = if let Some(id) = body.strip_prefix(RAW_POISON) {
            (
                id.parse::<u64>().ok(),
                reason.starts_with("undecodable body"),
            )
        } else {
            let item = serde_json::from_slice::<Item>(&letter.body).ok();
            let ok = reason.contains("listener failed 3 times") && reason.contains("poison item");
            (item.filter(|i| i.poison).map(|i| i.id), ok)
        };
        let queue_ok = letter.headers.get(header::DEAD_LETTER_QUEUE) == Some(queue.as_str());
        match id.and_then(|id| usize::try_from(id).ok()) {
            Some(id) if id < in_dlq.len() && id % 2 == 1 && reason_ok && queue_ok => {
                in_dlq[id] += 1;
            }
            _ => {
                if bad.len() < 5 {
                    bad.push(format!("body {body:?}, reason {reason:?}"));
                }
            }
        }
    }
    let poison_ids = || (0..n).filter(|id| id % 2 == 1);
    let dead_lettered = poison_ids().filter(|&id| in_dlq[id as usize] > 0).count() as u64;
    let dlq_duplicates: u64 = in_dlq.iter().map(|&c| u64::from(c.saturating_sub(1))).sum();
    let missing_poison: Vec<u64> = poison_ids()
        .filter(|&id| in_dlq[id as usize] == 0)
        .collect();
    let counted = count(&[&tally], healthy_ids());
    let outcome = Outcome {
        sent: n,
        handled: counted.handled,
        duplicated: counted.duplicated + dlq_duplicates,
        dead_lettered,
        lost: counted.lost + missing_poison.len() as u64,
        peak_rss_mib: rss.peak_mib(),
    };
    outcome.print(TEST, env.harness.name(), "");
    tracing::info!(listed = letters.len(), stats = ?consumer.stats(), "{TEST} done");
    check!(
        outcome.lost == 0 && handled && moved,
        "{TEST}: lost {} healthy (first {:?}) and {} poison (first {:?})",
        counted.lost,
        counted.lost_ids,
        missing_poison.len(),
        &missing_poison[..missing_poison.len().min(10)]
    );
    check!(
        letters.len() < limit,
        "{TEST}: the listing reached its limit of {limit}; the count may be cut"
    );
    check!(
        bad.is_empty(),
        "{TEST}: dead letters that are not poison or lack their reason: {bad:?}"
    );
    check!(
        tally.starts() == counted.handled && tally.strays() == 0,
        "{TEST}: the listener saw a poison message as healthy"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 4. backlog drain

fn padded(id: u64) -> Outgoing {
    Outgoing::Event(Item {
        id,
        poison: false,
        pad: "p".repeat(BACKLOG_PAD),
    })
}

/// A large backlog waits on the broker before the consumer starts; the consumer
/// drains it with resident memory growing by at most [`BACKLOG_RSS_GROWTH_MIB`]
/// (prefetch bounds what is buffered). The backlog is [`BACKLOG`] messages, or
/// [`eventing::DEFAULT_MAX_QUEUE_LEN`] on the in-process broker (whose queues hold
/// no more).
///
/// The growth is measured from a baseline taken after the consumer's manager is
/// built (its connections are open) and before it starts (subscribes): what a
/// connection costs does not depend on the backlog (lapin's frame buffers, for
/// one, are sized by `frame_max` when the connection opens), while everything a
/// consumer buffers of the backlog arrives after it subscribed. The cost of
/// connecting is printed too (`connect_mib`).
pub async fn backlog_drain(harness: &dyn Harness, _ctx: &Ctx) {
    let env = TestEnv::new(harness);
    // The consumer's manager is not one of `env`'s (see `backlog_body`), so its
    // queue is removed here, whatever happens in the body.
    let queue = counter_queue(&env);
    guarded_then(env, vec![queue], async |env| backlog_body(env).await).await;
}

async fn backlog_body(env: &mut TestEnv<'_>) -> Result<(), String> {
    const TEST: &str = "backlog_drain";
    let n = if in_process(env) {
        eventing::DEFAULT_MAX_QUEUE_LEN as u64
    } else {
        BACKLOG
    };
    let overall = RssSampler::start();
    let began = Instant::now();
    let sender = env
        .start(env.builder("sender").send_timeout(Duration::from_secs(30)))
        .await;
    sender
        .provider()
        .declare(&[counter_queue(env)])
        .await
        .map_err(|e| format!("{TEST}: declare: {e}"))?;
    let pace = Pace {
        concurrency: 256,
        per_second: None,
        deadline: Instant::now() + Duration::from_secs(120),
    };
    let stream = SendStream::spawn(&sender, 0..n, pace, padded);
    let retried = Arc::clone(&stream.retried);
    stream.join().await.map_err(|e| format!("{TEST}: {e}"))?;
    let retried = retried.load(Ordering::SeqCst);
    let published = began.elapsed();

    let tally = Tally::new(n);
    let before_connect_kib = proc_status_kib("VmRSS").unwrap_or(0);
    // Built here rather than with `env.start`, to take the baseline between
    // connecting and subscribing.
    let consumer = env
        .builder("consumer")
        .listener_options(options(BACKLOG_PREFETCH, 8))
        .listener(Counter {
            hold_until: Some(Instant::now() + BACKLOG_HOLD),
            ..Counter::new(&tally, Duration::ZERO)
        })
        .build()
        .await
        .map_err(|e| format!("{TEST}: build the consumer: {e}"))?;
    let drain = RssSampler::start();
    let connect_kib = drain.start_kib().saturating_sub(before_connect_kib);
    let drain_began = Instant::now();
    let drained = async {
        consumer
            .start()
            .await
            .map_err(|e| format!("{TEST}: start the consumer: {e}"))?;
        Ok::<bool, String>(all_completed(&[&tally], 0..n, Duration::from_secs(120)).await)
    }
    .await;
    let drain_took = drain_began.elapsed();
    let growth_kib = drain.peak_kib().saturating_sub(drain.start_kib());
    let stats = consumer.stats();
    if let Err(error) = consumer.shutdown().await {
        tracing::warn!(%error, "{TEST}: shutting the consumer down");
    }
    let complete = drained?;
    let counted = count(&[&tally], 0..n);
    let note = format!(
        " drain_growth_mib={} connect_mib={}",
        growth_kib.div_ceil(1024),
        connect_kib.div_ceil(1024)
    );
    counted
        .outcome(sender.stats().sent, stats.dead_lettered, overall.peak_mib())
        .print(TEST, env.harness.name(), &note);
    tracing::info!(
        n,
        ?published,
        drained = ?drain_took,
        start_rss_mib = drain.start_kib() / 1024,
        growth_kib,
        connect_kib,
        retried,
        ?stats,
        "{TEST} done"
    );
    check!(
        counted.lost == 0 && complete,
        "{TEST}: {} of {n} ids never handled within 120 s (first: {:?})",
        counted.lost,
        counted.lost_ids
    );
    check!(
        growth_kib <= BACKLOG_RSS_GROWTH_MIB * 1024,
        "{TEST}: resident memory grew by {} MiB while draining {n} messages \
         (bound {BACKLOG_RSS_GROWTH_MIB} MiB)",
        growth_kib / 1024
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 5. graceful shutdown during a stream

/// Time the first manager's listener takes per message.
const SLOW: Duration = Duration::from_millis(50);

/// `shutdown()` of a manager with slow listeners in the middle of a stream: every
/// call it started completes before `shutdown()` returns, nothing it had not
/// completed is acknowledged (it comes to the next manager), it takes nothing after
/// shutdown, and a second manager finishes the stream: every id completed, none
/// twice.
pub async fn graceful_shutdown_during_stream(harness: &dyn Harness, _ctx: &Ctx) {
    guarded(TestEnv::new(harness), async |env| shutdown_body(env).await).await;
}

async fn shutdown_body(env: &mut TestEnv<'_>) -> Result<(), String> {
    const TEST: &str = "graceful_shutdown_during_stream";
    let n = SHUTDOWN_STREAM;
    let rss = RssSampler::start();
    let first = Tally::new(n);
    let a = env
        .start(
            env.builder("first")
                .listener_options(options(50, 16))
                .listener(Counter::new(&first, SLOW)),
        )
        .await;
    let sender = env.start(env.builder("sender")).await;
    let stream = SendStream::spawn(
        &sender,
        0..n,
        Pace {
            concurrency: 8,
            per_second: Some(400.0),
            deadline: Instant::now() + Duration::from_secs(60),
        },
        healthy,
    );
    check!(
        eventually(Duration::from_secs(30), Duration::from_millis(5), || {
            first.completions() >= 200
        })
        .await,
        "{TEST}: the first manager handled only {}",
        first.completions()
    );
    let running_at_shutdown = first.starts() - first.completions();
    let shutdown_began = Instant::now();
    a.shutdown()
        .await
        .map_err(|e| format!("{TEST}: shutdown: {e}"))?;
    let shutdown_took = shutdown_began.elapsed();
    let sent_at_shutdown = stream.sent();
    let (started, completed) = (first.starts(), first.completions());
    let acked = a.stats().handled;
    // Nothing new is taken after shutdown() returned.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started_later = first.starts();
    let cut_short: Vec<u64> = (0..n)
        .filter(|&id| first.started(id) != first.completed(id))
        .take(10)
        .collect();

    let second = Tally::new(n);
    let _b = env
        .start(
            env.builder("second")
                .listener_options(options(50, 16))
                .listener(Counter::new(&second, Duration::from_millis(1))),
        )
        .await;
    let sent_result = stream.join().await;
    let complete = all_completed(&[&first, &second], 0..n, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counted = count(&[&first, &second], 0..n);
    counted
        .outcome(sender.stats().sent, 0, rss.peak_mib())
        .print(TEST, env.harness.name(), "");
    tracing::info!(
        running_at_shutdown,
        ?shutdown_took,
        sent_at_shutdown,
        first = completed,
        second = second.completions(),
        "{TEST} done"
    );
    sent_result.map_err(|e| format!("{TEST}: {e}"))?;
    check!(
        counted.lost == 0 && complete,
        "{TEST}: {} of {n} ids never handled (first: {:?})",
        counted.lost,
        counted.lost_ids
    );
    check!(
        sent_at_shutdown < n,
        "{TEST}: the stream was over before shutdown ({sent_at_shutdown} sent)"
    );
    check!(
        started == completed && cut_short.is_empty(),
        "{TEST}: shutdown() returned with calls unfinished: {started} started, \
         {completed} completed (ids {cut_short:?})"
    );
    check!(
        acked == completed,
        "{TEST}: the first manager acknowledged {acked} messages but completed {completed}"
    );
    check!(
        started_later == started,
        "{TEST}: the first manager started {} calls after shutdown() returned",
        started_later - started
    );
    check!(
        counted.duplicated == 0,
        "{TEST}: {} messages handled twice after a clean shutdown",
        counted.duplicated
    );
    Ok(())
}

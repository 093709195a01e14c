//! What the fault tests are built from, for cases of your own as much as for the
//! five of [`cases`](super::cases): the [`Item`] event and its [`Counter`]
//! listener that count every message by id ([`Tally`], [`count`]), the
//! [`Outcome`] line every fault test prints, a paced [`SendStream`] that retries
//! through an outage, resident-memory sampling ([`RssSampler`]), the child process a
//! killed consumer runs in ([`child_main`], [`kill_child`]), and running a case:
//! one at a time ([`serial`]) on its own runtime ([`block_on`]).
//!
//! Every fault test prints one line per provider (run with `--nocapture` to see it):
//!
//! ```text
//! fault <test> <provider>: sent=N handled=N duplicated=N dead_lettered=N lost=N peak_rss_mib=N
//! ```
//!
//! `handled` counts completed listener calls (a duplicate is a second completed call
//! for one id); `peak_rss_mib` is the test process's peak resident memory during the
//! test.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;
use eventing::provider::Route;
use eventing::{
    Context, Envelope, Error, Event, EventListener, EventManager, ListenerOptions, ListenerResult,
    RetryPolicy, event, event_listener,
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::harness::TestEnv;

/// The longest any one fault test may run, cleanup excluded.
pub const CASE_LIMIT: Duration = Duration::from_secs(240);

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

/// Held by each fault test: the kit's lock taken exclusively, so fault tests run one
/// at a time in this process and never alongside a behaviour or features test of
/// the kit (those hold it shared).
pub fn serial() -> RwLockWriteGuard<'static, ()> {
    crate::runner::exclusive()
}

/// Runs one case on a fresh two-worker runtime, bounded by [`CASE_LIMIT`] plus time
/// for cleanup.
pub fn block_on(case: &str, body: impl std::future::Future<Output = ()>) {
    init_tracing();
    let runtime = crate::runner::runtime();
    let limit = CASE_LIMIT + Duration::from_secs(40);
    let result = runtime.block_on(async { tokio::time::timeout(limit, body).await });
    runtime.shutdown_timeout(Duration::from_secs(5));
    if result.is_err() {
        panic!("fault test {case} timed out after {limit:?}");
    }
}

/// Logs to stderr as `RUST_LOG` says, when it is set.
pub(crate) fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
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

    /// Counts a call for `id` as started.
    pub fn start(&self, id: u64) {
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

    /// Counts a call for `id` as completed (`redelivered`: the message was marked
    /// redelivered).
    pub fn complete(&self, id: u64, redelivered: bool) {
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

/// Waits until every id in `ids` was completed at least once, at most `limit`.
pub async fn all_completed(tallies: &[&Tally], ids: std::ops::Range<u64>, limit: Duration) -> bool {
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
            let envelope = Envelope::new(&address, eventing::codec::JSON, body.clone());
            let route = Route::new(&address, Item::descriptor().durable());
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

/// Options for a listener: prefetch, concurrency and a fast retry policy (3
/// attempts, 1 ms backoff doubling to 4 ms).
pub fn options(prefetch: u16, concurrency: usize) -> ListenerOptions {
    ListenerOptions {
        prefetch,
        concurrency,
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            delays: Vec::new(),
        },
    }
}

// ---------------------------------------------------------------------------------
// 2. a killed consumer

// ---------------------------------------------------------------------------------
// the child process of a killed consumer

/// Variables that make `fault_child` a consumer (see [`child_main`]).
const CHILD_URL: &str = "EVENTING_FAULT_CHILD_URL";
const CHILD_ENV: &str = "EVENTING_FAULT_CHILD_ENV";
const CHILD_JOURNAL: &str = "EVENTING_FAULT_CHILD_JOURNAL";
const CHILD_IDS: &str = "EVENTING_FAULT_CHILD_IDS";
/// The child exits by itself after this long, in case nobody kills it.
const CHILD_LIFETIME: Duration = Duration::from_secs(90);
/// Time the doomed consumer takes per message.
pub const DOOMED_DELAY: Duration = Duration::from_millis(10);

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
    let runtime = crate::runner::runtime();
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

/// Kills (SIGKILL) and reaps the child when dropped (also used by the delayed
/// cases' killed consumer).
pub(crate) struct ChildGuard(pub(crate) std::process::Child);

impl ChildGuard {
    pub(crate) fn kill(&mut self) {
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
pub fn read_journal(path: &std::path::Path) -> Vec<u64> {
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

/// Starts the `fault_child` consumer of `env` in a child process (this test binary
/// again, running only `ctx.child_test`) for ids `0..n`, journaling completed ids
/// to `journal` and its stderr to `stderr`; lets it complete `kill_after` messages,
/// then kills it with SIGKILL. The error says why it could not (with the end of
/// the child's stderr).
pub async fn kill_child(
    env: &TestEnv<'_>,
    ctx: &Ctx,
    n: u64,
    kill_after: u64,
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
        if handled >= kill_after {
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

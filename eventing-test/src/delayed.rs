//! Delayed delivery, written once for every provider (`delayed_tests!`, part of
//! `provider_kit!`): the delayed retry stage of [`RetryPolicy::delays`] and
//! scheduled sends (`send_event_after`, `send_event_at`).
//!
//! | case | what it shows |
//! |---|---|
//! | [`delayed_retry_outage`] | 1,000 events, a dependency down for 20 s, delays 2/5/10/20 s: all handled, none dead-lettered, each round waited its delay |
//! | [`delayed_retry_exhausted`] | after the last delay the message goes to `<queue>.dlq` with the full attempt count |
//! | [`delayed_retry_killed_consumer`] | the consumer is killed (SIGKILL) while messages wait in the delay stage; a new one handles all |
//! | [`scheduled_send_on_time`] | scheduled sends arrive no earlier than asked, at most [`SCHEDULE_TOLERANCE`] late, at every listener |
//! | [`scheduled_durable_send_survives_restart`] | durable scheduled sends survive a broker restart |
//! | [`delayed_stage_memory_flat`] | resident memory stays flat while many messages wait in the delay stage |
//!
//! Every case first checks the provider's `delayed` capability: a provider
//! without it fails the case, unless its harness lists the capability as pending
//! ([`Harness::pending`]); then the case prints `pending` and passes. A provider
//! that has it while its harness lists it as pending fails too. The retry and
//! memory cases print `fault <case> <provider>: ...` lines like the fault tests.
//!
//! They measure time and load the broker, so each takes the kit's lock
//! exclusively, as the fault tests do.

use std::io::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use eventing::topology::QueueSpec;
use eventing::{
    Context, Error, EventListener, EventManager, ListenerOptions, ListenerResult, RetryPolicy,
    event, event_listener, header,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::faults::support::ChildGuard;
use crate::faults::{Ctx, RssSampler, Tally, count, eventually};
use crate::harness::{Harness, TestEnv};

/// How late a scheduled send may arrive. Measured on a loaded 2-core machine:
/// RabbitMQ 34-53 ms, NATS 50 ms, Redis 240 ms, ActiveMQ 0.5 s, and up to 2.3 s while
/// its scheduler is still storing and clearing thousands of other jobs.
pub const SCHEDULE_TOLERANCE: Duration = Duration::from_secs(3);
/// Events in the outage case.
pub const OUTAGE_EVENTS: u64 = 1_000;
/// How long the outage case's dependency is down, from the first send.
pub const OUTAGE: Duration = Duration::from_secs(20);
/// The outage case's delays.
pub const OUTAGE_DELAYS: [Duration; 4] = [
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(20),
];
/// Set to `1` to run [`delayed_stage_memory_flat`] with [`SLOW_WAITING`] messages.
pub const SLOW_TESTS: &str = "EVENTING_SLOW_TESTS";
/// Messages waiting in [`delayed_stage_memory_flat`] by default.
pub const WAITING: u64 = 2_500;
/// Messages waiting in [`delayed_stage_memory_flat`] with `EVENTING_SLOW_TESTS=1`.
pub const SLOW_WAITING: u64 = 100_000;
/// How much resident memory may grow while they wait.
pub const WAITING_RSS_GROWTH_MIB: u64 = 16;
/// Padding per waiting message, so holding them in the process would show
/// ([`WAITING`] of them: 20 MiB of bodies alone, over the bound).
pub const WAITING_PAD: usize = 8192;

/// The one event of these cases; `id` is unique per message of a case.
#[event(name = "delayed.{env}.Job", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique per message.
    pub id: u64,
    /// Filler.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pad: String,
}

impl Job {
    /// A job without padding.
    pub fn new(id: u64) -> Job {
        Job {
            id,
            pad: String::new(),
        }
    }
}

/// Every call per id: its `ctx.attempt()` and when it began.
#[derive(Default)]
pub struct Calls {
    by_id: Mutex<Vec<Vec<(u32, Instant, SystemTime)>>>,
}

impl Calls {
    /// Room for ids `0..n`.
    pub fn new(n: u64) -> Arc<Calls> {
        let n = usize::try_from(n).unwrap_or(0);
        Arc::new(Calls {
            by_id: Mutex::new(vec![Vec::new(); n]),
        })
    }

    fn record(&self, id: u64, attempt: u32) {
        let mut by_id = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(calls) = usize::try_from(id).ok().and_then(|i| by_id.get_mut(i)) {
            calls.push((attempt, Instant::now(), SystemTime::now()));
        }
    }

    /// The calls of `id`.
    pub fn of(&self, id: u64) -> Vec<(u32, Instant, SystemTime)> {
        let by_id = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        usize::try_from(id)
            .ok()
            .and_then(|i| by_id.get(i).cloned())
            .unwrap_or_default()
    }
}

/// The listener under test: fails while its dependency is down, or below an
/// attempt number, or always; counts completed calls in `tally`.
#[event_listener(Job, name = "Flaky")]
pub struct Flaky {
    /// Completed calls by id.
    pub tally: Arc<Tally>,
    /// Every call, if recorded.
    pub calls: Option<Arc<Calls>>,
    /// Fails until this instant (the dependency is down).
    pub down_until: Option<Instant>,
    /// Fails while `ctx.attempt()` is below this.
    pub fail_below_attempt: u32,
    /// Fails every call.
    pub always_fail: bool,
    /// The highest `ctx.attempt()` seen.
    pub max_attempt: Arc<AtomicU32>,
    /// Appends `<id>\n` per failed call (a child process that is killed).
    pub journal: Option<Arc<std::fs::File>>,
}

impl Flaky {
    /// Succeeds at once, counting into `tally`.
    pub fn new(tally: &Arc<Tally>) -> Flaky {
        Flaky {
            tally: Arc::clone(tally),
            calls: None,
            down_until: None,
            fail_below_attempt: 0,
            always_fail: false,
            max_attempt: Arc::new(AtomicU32::new(0)),
            journal: None,
        }
    }
}

impl EventListener<Job> for Flaky {
    async fn on(&self, job: Job, ctx: &Context) -> ListenerResult {
        self.tally.start(job.id);
        self.max_attempt.fetch_max(ctx.attempt(), Ordering::SeqCst);
        if let Some(calls) = &self.calls {
            calls.record(job.id, ctx.attempt());
        }
        let down = self.down_until.is_some_and(|until| Instant::now() < until);
        if down || self.always_fail || ctx.attempt() < self.fail_below_attempt {
            if let Some(journal) = &self.journal {
                // One write(2) per line on an O_APPEND file: whole or absent.
                (&**journal).write_all(format!("{}\n", job.id).as_bytes())?;
            }
            return Err(format!("job {}: the dependency is down", job.id).into());
        }
        self.tally.complete(job.id, ctx.redelivered());
        Ok(())
    }
}

/// A second listener of the same event that never fails: a delayed copy must
/// not reach it (copies return to their own queue only).
#[event_listener(Job, name = "Witness")]
pub struct Witness {
    /// Completed calls by id.
    pub tally: Arc<Tally>,
    /// Every call, if recorded.
    pub calls: Option<Arc<Calls>>,
}

impl EventListener<Job> for Witness {
    async fn on(&self, job: Job, ctx: &Context) -> ListenerResult {
        self.tally.start(job.id);
        if let Some(calls) = &self.calls {
            calls.record(job.id, ctx.attempt());
        }
        self.tally.complete(job.id, ctx.redelivered());
        Ok(())
    }
}

/// Listener options with this retry policy (prefetch 100, 16 concurrent calls).
pub fn with_retry(max_attempts: u32, delays: &[Duration]) -> ListenerOptions {
    ListenerOptions {
        prefetch: 100,
        concurrency: 16,
        retry: RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            delays: delays.to_vec(),
        },
    }
}

/// The queue of `listener` in this environment, with these delays.
pub fn job_queue(env: &TestEnv<'_>, listener: &'static str, delays: &[Duration]) -> QueueSpec {
    let address = format!("delayed.{}.Job", env.env);
    QueueSpec::new(&address, listener, true, false, "any").with_retry_delays(delays)
}

// ---------------------------------------------------------------------------------
// running a case

/// Returns `Err(message)` from the enclosing body unless `cond` holds.
macro_rules! check {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(format!($($message)+));
        }
    };
}

/// The longest one case may run, cleanup excluded (the opt-in 100,000-message
/// memory case needs most of it).
pub const CASE_LIMIT: Duration = Duration::from_secs(420);

/// One case of this module, as `delayed_tests!` runs it: alone (the kit's lock,
/// exclusively, as the fault tests take it), on a fresh two-worker runtime,
/// bounded by [`CASE_LIMIT`] plus time for cleanup.
pub fn run_case<H: Harness>(
    case: &'static str,
    module_path: &'static str,
    make: impl FnOnce() -> H,
    run: impl for<'h, 'c> AsyncFnOnce(&'h dyn Harness, &'c Ctx),
) {
    let _one_at_a_time = crate::faults::serial();
    crate::faults::support::init_tracing();
    let ctx = Ctx::new(module_path);
    let runtime = crate::runner::runtime();
    let limit = CASE_LIMIT + Duration::from_secs(40);
    let result = runtime.block_on(async {
        tokio::time::timeout(limit, async {
            let harness = make();
            run(&harness, &ctx).await;
        })
        .await
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    if result.is_err() {
        panic!("{case} timed out after {limit:?}");
    }
}

/// Runs `body` if the provider can (see the module docs), bounded, then cleans up
/// and fails the test if the body did.
async fn gated<'h>(
    harness: &'h dyn Harness,
    case: &str,
    body: impl AsyncFnOnce(&mut TestEnv<'h>) -> Result<(), String>,
) {
    let mut env = TestEnv::new(harness);
    let result = tokio::time::timeout(CASE_LIMIT, async {
        if gate(&mut env, case).await? {
            body(&mut env).await
        } else {
            Ok(())
        }
    })
    .await;
    env.finish().await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => panic!("{failure}"),
        Err(_) => panic!("{case} timed out after {CASE_LIMIT:?}"),
    }
}

/// Whether to run: the provider has the `delayed` capability. Pending (listed by
/// the harness, lacking): prints why and skips. Anything else is a failure.
async fn gate(env: &mut TestEnv<'_>, case: &str) -> Result<bool, String> {
    let probe = env
        .builder("probe")
        .build()
        .await
        .map_err(|e| format!("{case}: build a manager: {e}"))?;
    let has = probe.provider().capabilities().delayed;
    let _ = probe.shutdown().await;
    let provider = env.harness.name();
    match (has, env.harness.pending().delayed) {
        (true, false) => Ok(true),
        (false, true) => {
            println!(
                "delayed {case} {provider}: pending (the harness lists delayed delivery as \
                 not done yet; the case did not run)"
            );
            Ok(false)
        }
        (false, false) => Err(format!(
            "{case}: provider `{provider}` has no delayed delivery (Capabilities::delayed) \
             and its harness does not list it as pending (Harness::pending)"
        )),
        (true, true) => Err(format!(
            "{case}: provider `{provider}` has delayed delivery but its harness still lists \
             it as pending: remove it from Harness::pending"
        )),
    }
}

/// Sends `make(id)` for every id from `manager`, `concurrency` at a time; a send
/// that fails with `Unavailable` or `Timeout` is retried for up to 60 s.
async fn send_all(
    manager: &EventManager,
    ids: std::ops::Range<u64>,
    concurrency: usize,
    make: impl Fn(u64) -> Job + Send + Sync + 'static,
) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(ids.start));
    let make = Arc::new(make);
    let deadline = Instant::now() + Duration::from_secs(60);
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (manager, next, make) = (manager.clone(), Arc::clone(&next), Arc::clone(&make));
            let end = ids.end;
            tokio::spawn(async move {
                loop {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    if id >= end {
                        return Ok(());
                    }
                    let job = make(id);
                    loop {
                        match manager.send_event(&job).await {
                            Ok(()) => break,
                            Err(Error::Unavailable { .. } | Error::Timeout { .. })
                                if Instant::now() < deadline =>
                            {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(error) => return Err(format!("send of job {id}: {error}")),
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await
            .map_err(|e| format!("sender task: {e}"))
            .and_then(|r| r)?;
    }
    Ok(())
}

/// Waits until every id in `ids` was completed at least once in `tallies`.
async fn all_done(tallies: &[&Tally], ids: std::ops::Range<u64>, limit: Duration) -> bool {
    crate::faults::all_completed(tallies, ids, limit).await
}

// ---------------------------------------------------------------------------------
// 1. the outage

/// A listener whose dependency is down for [`OUTAGE`] (it errs until then), 1,000
/// events, immediate retries 2 and delays 2 s, 5 s, 10 s, 20 s: every event is
/// handled once the dependency is back and none is dead-lettered; every round
/// waited at least its delay after the round before; `ctx.attempt()` counted
/// across rounds; a second listener of the event got each event exactly once.
pub async fn delayed_retry_outage(harness: &dyn Harness, _ctx: &Ctx) {
    gated(harness, "delayed_retry_outage", async |env| {
        outage_body(env).await
    })
    .await;
}

async fn outage_body(env: &mut TestEnv<'_>) -> Result<(), String> {
    const TEST: &str = "delayed_retry_outage";
    let n = OUTAGE_EVENTS;
    let max_attempts = 3;
    let rss = RssSampler::start();
    let tally = Tally::new(n);
    let witnessed = Tally::new(n);
    let calls = Calls::new(n);
    let max_attempt = Arc::new(AtomicU32::new(0));
    let began = Instant::now();
    let consumer = env
        .start(
            env.builder("consumer")
                .listener_options(with_retry(max_attempts, &OUTAGE_DELAYS))
                .listener(Flaky {
                    calls: Some(Arc::clone(&calls)),
                    down_until: Some(began + OUTAGE),
                    max_attempt: Arc::clone(&max_attempt),
                    ..Flaky::new(&tally)
                })
                .listener(Witness {
                    tally: Arc::clone(&witnessed),
                    calls: None,
                }),
        )
        .await;
    let sender = env.start(env.builder("sender")).await;
    send_all(&sender, 0..n, 32, Job::new)
        .await
        .map_err(|e| format!("{TEST}: {e}"))?;
    let sent_in = began.elapsed();
    // The last round begins 37 s after a message's first call.
    let complete = all_done(&[&tally], 0..n, Duration::from_secs(100)).await;
    let witnessed_all = all_done(&[&witnessed], 0..n, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = consumer.stats();
    let queue = job_queue(env, "Flaky", &OUTAGE_DELAYS).name;
    let letters = consumer
        .dead_letters(&queue, 10)
        .await
        .map_err(|e| format!("{TEST}: dead_letters: {e}"))?;
    let counted = count(&[&tally], 0..n);
    let witness = count(&[&witnessed], 0..n);
    let outcome = counted.outcome(
        sender.stats().sent,
        stats.dead_lettered.max(letters.len() as u64),
        rss.peak_mib(),
    );
    let note = format!(
        " delayed={} max_attempt={} sent_in_ms={}",
        stats.delayed,
        max_attempt.load(Ordering::SeqCst),
        sent_in.as_millis()
    );
    outcome.print(TEST, env.harness.name(), &note);

    // Each round waited its delay: the first call of round r+1 began at least
    // delays[r] after the last call of round r began.
    let mut short = Vec::new();
    for id in 0..n {
        let mut calls = calls.of(id);
        calls.sort_by_key(|(attempt, at, _)| (*attempt, *at));
        for pair in calls.windows(2) {
            let ((a, a_at, _), (b, b_at, _)) = (pair[0], pair[1]);
            let (round_a, round_b) = ((a - 1) / max_attempts, (b - 1) / max_attempts);
            if round_b == round_a {
                continue;
            }
            let Some(&delay) = usize::try_from(round_a)
                .ok()
                .and_then(|r| OUTAGE_DELAYS.get(r))
            else {
                continue;
            };
            let gap = b_at.saturating_duration_since(a_at);
            if gap + Duration::from_millis(10) < delay && short.len() < 5 {
                short.push(format!(
                    "id {id}: attempt {b} came {gap:?} after attempt {a} (delay {delay:?})"
                ));
            }
        }
    }
    let highest = max_attempt.load(Ordering::SeqCst);
    check!(
        counted.lost == 0 && complete,
        "{TEST}: {} of {n} ids never handled (first: {:?})",
        counted.lost,
        counted.lost_ids
    );
    check!(
        outcome.dead_lettered == 0,
        "{TEST}: {} dead-lettered, though the dependency came back within the delays",
        outcome.dead_lettered
    );
    check!(outcome.sent == n, "{TEST}: sent {} of {n}", outcome.sent);
    check!(
        short.is_empty(),
        "{TEST}: rounds that did not wait their delay: {short:?}"
    );
    check!(
        highest > max_attempts && highest <= max_attempts * 5,
        "{TEST}: ctx.attempt() reached {highest}; expected above {max_attempts} (counting \
         across rounds) and at most {}",
        max_attempts * 5
    );
    check!(
        stats.delayed >= n,
        "{TEST}: only {} deliveries went to the delayed stage",
        stats.delayed
    );
    check!(
        witnessed_all && witness.duplicated == 0 && witness.lost == 0,
        "{TEST}: the other listener of the event got {} calls for {n} events ({} duplicated, \
         {} missing): delayed copies must go to their own queue only",
        witness.handled,
        witness.duplicated,
        witness.lost
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 2. exhausted: after the last delay, the dead-letter queue

/// Events the listener always fails on, 2 calls per round, delays 300 ms and
/// 600 ms: each ends in `<queue>.dlq` with `x-dead-letter-attempts` 6, a reason
/// naming the 6 failures, no `x-retry-*` headers, not before the delays passed.
pub async fn delayed_retry_exhausted(harness: &dyn Harness, _ctx: &Ctx) {
    gated(harness, "delayed_retry_exhausted", async |env| {
        exhausted_body(env).await
    })
    .await;
}

async fn exhausted_body(env: &mut TestEnv<'_>) -> Result<(), String> {
    const TEST: &str = "delayed_retry_exhausted";
    let n = 20;
    let delays = [Duration::from_millis(300), Duration::from_millis(600)];
    let tally = Tally::new(n);
    let calls = Calls::new(n);
    let consumer = env
        .start(
            env.builder("consumer")
                .listener_options(with_retry(2, &delays))
                .listener(Flaky {
                    always_fail: true,
                    calls: Some(Arc::clone(&calls)),
                    ..Flaky::new(&tally)
                }),
        )
        .await;
    let sender = env.start(env.builder("sender")).await;
    let began = Instant::now();
    send_all(&sender, 0..n, 4, Job::new)
        .await
        .map_err(|e| format!("{TEST}: {e}"))?;
    let moved = eventually(Duration::from_secs(30), Duration::from_millis(20), || {
        consumer.stats().dead_lettered >= n
    })
    .await;
    let took = began.elapsed();
    let queue = job_queue(env, "Flaky", &delays).name;
    let letters = consumer
        .dead_letters(&queue, 100)
        .await
        .map_err(|e| format!("{TEST}: dead_letters: {e}"))?;
    println!(
        "delayed {TEST} {}: letters={} took_ms={} calls={}",
        env.harness.name(),
        letters.len(),
        took.as_millis(),
        tally.starts()
    );
    check!(
        moved,
        "{TEST}: {} of {n} dead-lettered",
        consumer.stats().dead_lettered
    );
    check!(
        letters.len() as u64 == n,
        "{TEST}: {} letters listed, {n} expected",
        letters.len()
    );
    for letter in &letters {
        let attempts = letter.headers.get(header::DEAD_LETTER_ATTEMPTS);
        let reason = letter.headers.get(header::DEAD_LETTER_REASON).unwrap_or("");
        check!(
            attempts == Some("6") && reason.contains("failed 6 times"),
            "{TEST}: letter with attempts {attempts:?} and reason {reason:?}"
        );
        for name in header::RETRY_HEADERS {
            check!(
                letter.headers.get(name).is_none(),
                "{TEST}: the letter still has `{name}`"
            );
        }
    }
    for id in 0..n {
        let calls = calls.of(id);
        let attempts: Vec<u32> = calls.iter().map(|(a, _, _)| *a).collect();
        check!(
            attempts.len() == 6 && (1..=6).all(|a| attempts.contains(&a)),
            "{TEST}: id {id} had calls with attempts {attempts:?}, expected 1 to 6"
        );
        let first = calls.iter().map(|(_, at, _)| *at).min();
        let last = calls.iter().map(|(_, at, _)| *at).max();
        if let (Some(first), Some(last)) = (first, last) {
            check!(
                last.saturating_duration_since(first) + Duration::from_millis(10)
                    >= delays[0] + delays[1],
                "{TEST}: id {id}'s six calls took {:?}, less than the delays",
                last.saturating_duration_since(first)
            );
        }
    }
    check!(
        tally.completions() == 0,
        "{TEST}: a call succeeded that must fail"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 3. the consumer killed while messages wait in the delay stage

/// Messages in the killed-consumer case.
pub const KILLED_JOBS: u64 = 500;
/// Its delay.
pub const KILLED_DELAY: Duration = Duration::from_secs(4);

const CHILD_URL: &str = "EVENTING_DELAYED_CHILD_URL";
const CHILD_ENV: &str = "EVENTING_DELAYED_CHILD_ENV";
const CHILD_JOURNAL: &str = "EVENTING_DELAYED_CHILD_JOURNAL";
/// The child exits by itself after this long, in case nobody kills it.
const CHILD_LIFETIME: Duration = Duration::from_secs(90);

/// The body of the `delayed_child` test that `delayed_tests!` generates: without
/// `EVENTING_DELAYED_CHILD_URL` it does nothing; with it, this process is the
/// consumer that [`delayed_retry_killed_consumer`] kills: it fails every call
/// (one per round, delay [`KILLED_DELAY`]) and journals each failed id.
pub fn child_main() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let env = std::env::var(CHILD_ENV).expect("EVENTING_DELAYED_CHILD_ENV");
    let journal = std::env::var(CHILD_JOURNAL).expect("EVENTING_DELAYED_CHILD_JOURNAL");
    crate::faults::support::init_tracing();
    crate::runner::runtime().block_on(async move {
        let journal = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&journal)
            .expect("open the journal");
        let manager = EventManager::builder()
            .url(url)
            .server_name("doomed-child")
            .var("env", env)
            .only_bound_listeners()
            .listener_options(with_retry(1, &[KILLED_DELAY]))
            .listener(Flaky {
                always_fail: true,
                journal: Some(Arc::new(journal)),
                ..Flaky::new(&Tally::new(KILLED_JOBS))
            })
            .build()
            .await
            .expect("build the child's manager");
        manager.start().await.expect("start the child's manager");
        tokio::time::sleep(CHILD_LIFETIME).await;
        eprintln!("delayed_child: not killed within {CHILD_LIFETIME:?}");
        std::process::exit(3);
    });
}

/// The failing consumer dies (SIGKILL of a child process; in-process brokers: its
/// manager dropped) after it handed every message to the delay stage; a fresh
/// consumer then handles every message, most of them coming back from the delay
/// stage (attempt 2): `lost=0`.
pub async fn delayed_retry_killed_consumer(harness: &dyn Harness, ctx: &Ctx) {
    let child_test = match ctx.child_test.rsplit_once("::") {
        Some((module, _)) => format!("{module}::delayed_child"),
        None => "delayed_child".to_string(),
    };
    gated(harness, "delayed_retry_killed_consumer", async |env| {
        killed_body(env, &child_test).await
    })
    .await;
}

async fn killed_body(env: &mut TestEnv<'_>, child_test: &str) -> Result<(), String> {
    const TEST: &str = "delayed_retry_killed_consumer";
    let n = KILLED_JOBS;
    let delays = [KILLED_DELAY];
    let rss = RssSampler::start();
    let sender = env.start(env.builder("sender")).await;
    sender
        .provider()
        .declare(&[job_queue(env, "Flaky", &delays)])
        .await
        .map_err(|e| format!("{TEST}: declare: {e}"))?;
    send_all(&sender, 0..n, 16, Job::new)
        .await
        .map_err(|e| format!("{TEST}: {e}"))?;

    let how;
    let failed_before_kill;
    if env.harness.in_process() {
        how = "manager dropped without shutdown";
        let doomed = Tally::new(n);
        let manager = env
            .builder("doomed")
            .listener_options(with_retry(1, &delays))
            .listener(Flaky {
                always_fail: true,
                ..Flaky::new(&doomed)
            })
            .build()
            .await
            .map_err(|e| format!("{TEST}: build: {e}"))?;
        manager
            .start()
            .await
            .map_err(|e| format!("{TEST}: start: {e}"))?;
        check!(
            eventually(Duration::from_secs(30), Duration::from_millis(5), || {
                manager.stats().delayed >= n
            })
            .await,
            "{TEST}: the doomed consumer moved only {} to the delay stage",
            manager.stats().delayed
        );
        failed_before_kill = doomed.starts();
        drop(manager);
    } else {
        how = "child process killed with SIGKILL";
        let journal = std::env::temp_dir().join(format!("eventing-{}.journal", env.env));
        let stderr = std::env::temp_dir().join(format!("eventing-{}.stderr", env.env));
        let _ = std::fs::remove_file(&journal);
        let result = run_and_kill_child(env, child_test, n, &journal, &stderr).await;
        failed_before_kill = crate::faults::read_journal(&journal).len() as u64;
        let _ = std::fs::remove_file(&journal);
        let _ = std::fs::remove_file(&stderr);
        result?;
    }
    let killed_at = Instant::now();

    let survivor = Tally::new(n);
    let calls = Calls::new(n);
    let _survivor = env
        .start(
            env.builder("survivor")
                .listener_options(with_retry(1, &delays))
                .listener(Flaky {
                    calls: Some(Arc::clone(&calls)),
                    ..Flaky::new(&survivor)
                }),
        )
        .await;
    let complete = all_done(&[&survivor], 0..n, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counted = count(&[&survivor], 0..n);
    let from_delay_stage = (0..n)
        .filter(|&id| calls.of(id).iter().any(|(attempt, _, _)| *attempt == 2))
        .count() as u64;
    counted
        .outcome(sender.stats().sent, 0, rss.peak_mib())
        .print(
            TEST,
            env.harness.name(),
            &format!(
                " failed_before_kill={failed_before_kill} back_from_delay_stage={from_delay_stage}"
            ),
        );
    tracing::info!(how, took = ?killed_at.elapsed(), "{TEST} done");
    check!(
        counted.lost == 0 && complete,
        "{TEST}: {} of {n} ids never handled after the consumer died ({how}; first: {:?})",
        counted.lost,
        counted.lost_ids
    );
    check!(
        from_delay_stage >= n / 2,
        "{TEST}: only {from_delay_stage} of {n} came back from the delay stage (attempt 2): \
         the waiting did not happen on the broker"
    );
    Ok(())
}

/// Starts the failing consumer in a child process, waits until it has failed
/// every id once (so each is in the delay stage or about to be), then kills it.
async fn run_and_kill_child(
    env: &TestEnv<'_>,
    child_test: &str,
    n: u64,
    journal: &std::path::Path,
    stderr: &std::path::Path,
) -> Result<(), String> {
    const TEST: &str = "delayed_retry_killed_consumer";
    let exe = std::env::current_exe().map_err(|e| format!("{TEST}: current_exe: {e}"))?;
    let stderr_file =
        std::fs::File::create(stderr).map_err(|e| format!("{TEST}: {}: {e}", stderr.display()))?;
    let child = std::process::Command::new(exe)
        .args([child_test, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_URL, env.harness.url(&env.env))
        .env(CHILD_ENV, &env.env)
        .env(CHILD_JOURNAL, journal)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr_file)
        .spawn()
        .map_err(|e| format!("{TEST}: spawn the child: {e}"))?;
    let mut child = ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let tail = || {
        let text = std::fs::read_to_string(stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    loop {
        let mut failed = crate::faults::read_journal(journal);
        failed.sort_unstable();
        failed.dedup();
        if failed.len() as u64 >= n {
            break;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!(
                "{TEST}: the child exited ({status}) after failing {} ids:\n{}",
                failed.len(),
                tail()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{TEST}: the child failed only {} ids in 60 s:\n{}",
                failed.len(),
                tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A moment for the last copies to be stored; any not yet stored are still
    // unacknowledged and come back from the queue itself.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(child);
    Ok(())
}

// ---------------------------------------------------------------------------------
// 4. scheduled sends on time

/// Jobs in the on-time case.
pub const SCHEDULED: u64 = 30;

/// 30 jobs scheduled 1 to 3.4 s ahead in mixed order, half by `send_event_after`
/// and half by `send_event_at`: each reaches both listeners of the event no
/// earlier than asked and at most [`SCHEDULE_TOLERANCE`] late; a zero delay is a
/// plain send.
pub async fn scheduled_send_on_time(harness: &dyn Harness, _ctx: &Ctx) {
    gated(harness, "scheduled_send_on_time", async |env| {
        on_time_body(env).await
    })
    .await;
}

fn scheduled_delay(id: u64) -> Duration {
    Duration::from_millis([3000, 1000, 2000][(id % 3) as usize] + (id % 5) * 100)
}

async fn on_time_body(env: &mut TestEnv<'_>) -> Result<(), String> {
    const TEST: &str = "scheduled_send_on_time";
    let n = SCHEDULED;
    let (tally, witnessed) = (Tally::new(n + 1), Tally::new(n + 1));
    let (calls, witness_calls) = (Calls::new(n + 1), Calls::new(n + 1));
    let _consumer = env
        .start(
            env.builder("consumer")
                .listener(Flaky {
                    calls: Some(Arc::clone(&calls)),
                    ..Flaky::new(&tally)
                })
                .listener(Witness {
                    tally: Arc::clone(&witnessed),
                    calls: Some(Arc::clone(&witness_calls)),
                }),
        )
        .await;
    let sender = env.start(env.builder("sender")).await;
    // Asked: the earliest instant (after-sends) or time (at-sends) per id.
    let mut asked: Vec<(Instant, Option<SystemTime>)> = Vec::new();
    for id in 0..n {
        let delay = scheduled_delay(id);
        let job = Job::new(id);
        if id % 2 == 0 {
            let before = Instant::now();
            sender
                .send_event_after(&job, delay)
                .await
                .map_err(|e| format!("{TEST}: send_event_after: {e}"))?;
            asked.push((before + delay, None));
        } else {
            let at = SystemTime::now() + delay;
            let before = Instant::now();
            sender
                .send_event_at(&job, at)
                .await
                .map_err(|e| format!("{TEST}: send_event_at: {e}"))?;
            asked.push((before + delay, Some(at)));
        }
    }
    let now_sent = Instant::now();
    sender
        .send_event_after(&Job::new(n), Duration::ZERO)
        .await
        .map_err(|e| format!("{TEST}: zero delay: {e}"))?;
    let complete = all_done(&[&tally], 0..n + 1, Duration::from_secs(30)).await;
    let witnessed_all = all_done(&[&witnessed], 0..n + 1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut early = Vec::new();
    let mut late = Vec::new();
    let (mut min_margin, mut max_late) = (Duration::MAX, Duration::ZERO);
    for (id, &(earliest, at)) in (0..n).zip(&asked) {
        for (who, record) in [("Flaky", &calls), ("Witness", &witness_calls)] {
            for (_, arrived, arrived_wall) in record.of(id) {
                let too_early = match at {
                    Some(at) => arrived_wall < at,
                    None => arrived < earliest,
                };
                // The instant is taken before the send, so `earliest` is a lower
                // bound of what was asked; lateness is measured from it.
                let lateness = arrived.saturating_duration_since(earliest);
                min_margin = min_margin.min(lateness);
                max_late = max_late.max(lateness);
                if too_early && early.len() < 5 {
                    early.push(format!(
                        "{who} got id {id} {:?} early",
                        earliest.saturating_duration_since(arrived)
                    ));
                }
                if lateness > SCHEDULE_TOLERANCE + Duration::from_millis(100) && late.len() < 5 {
                    late.push(format!("{who} got id {id} {lateness:?} late"));
                }
            }
        }
    }
    let zero_took = calls
        .of(n)
        .first()
        .map(|(_, at, _)| at.saturating_duration_since(now_sent));
    let counted = count(&[&tally], 0..n + 1);
    let witness = count(&[&witnessed], 0..n + 1);
    println!(
        "delayed {TEST} {}: n={n} handled={} witnessed={} max_late_ms={} min_late_ms={} \
         tolerance_ms={} zero_delay_ms={:?}",
        env.harness.name(),
        counted.handled,
        witness.handled,
        max_late.as_millis(),
        if min_margin == Duration::MAX {
            0
        } else {
            min_margin.as_millis()
        },
        SCHEDULE_TOLERANCE.as_millis(),
        zero_took.map(|d| d.as_millis())
    );
    check!(
        complete && witnessed_all && counted.lost == 0 && witness.lost == 0,
        "{TEST}: scheduled sends lost: {} at Flaky (first {:?}), {} at Witness",
        counted.lost,
        counted.lost_ids,
        witness.lost
    );
    check!(early.is_empty(), "{TEST}: arrived early: {early:?}");
    check!(
        late.is_empty(),
        "{TEST}: arrived later than the tolerance of {SCHEDULE_TOLERANCE:?}: {late:?}"
    );
    check!(
        zero_took.is_some_and(|d| d < Duration::from_secs(1)),
        "{TEST}: a zero delay took {zero_took:?}"
    );
    check!(
        counted.duplicated == 0 && witness.duplicated == 0,
        "{TEST}: scheduled sends delivered twice"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 5. a durable scheduled send survives a broker restart

/// Jobs in the restart case.
pub const RESTART_JOBS: u64 = 50;
/// Their delay.
pub const RESTART_DELAY: Duration = Duration::from_secs(3);

/// 50 durable jobs scheduled [`RESTART_DELAY`] ahead, then the broker restarts
/// (the harness's restart hook): every job arrives, none early.
pub async fn scheduled_durable_send_survives_restart(harness: &dyn Harness, _ctx: &Ctx) {
    gated(
        harness,
        "scheduled_durable_send_survives_restart",
        async |env| restart_body(env).await,
    )
    .await;
}

async fn restart_body(env: &mut TestEnv<'_>) -> Result<(), String> {
    const TEST: &str = "scheduled_durable_send_survives_restart";
    let n = RESTART_JOBS;
    let rss = RssSampler::start();
    let tally = Tally::new(n);
    let calls = Calls::new(n);
    let consumer = env
        .start(
            env.builder("consumer")
                .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(2))
                .listener(Flaky {
                    calls: Some(Arc::clone(&calls)),
                    ..Flaky::new(&tally)
                }),
        )
        .await;
    let sender = env.start(env.builder("sender")).await;
    let began = Instant::now();
    for id in 0..n {
        sender
            .send_event_after(&Job::new(id), RESTART_DELAY)
            .await
            .map_err(|e| format!("{TEST}: send_event_after: {e}"))?;
    }
    let sent_in = began.elapsed();
    let restarted = env.harness.restart_broker().await;
    let restart_took = began.elapsed();
    let complete = all_done(&[&tally], 0..n, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let early: Vec<u64> = (0..n)
        .filter(|&id| {
            calls
                .of(id)
                .iter()
                .any(|(_, at, _)| at.saturating_duration_since(began) < RESTART_DELAY)
        })
        .collect();
    let counted = count(&[&tally], 0..n);
    let note = if restarted {
        format!(
            " restart_done_ms={} sent_in_ms={}",
            restart_took.as_millis(),
            sent_in.as_millis()
        )
    } else {
        " (the harness cannot restart its broker: no restart)".to_string()
    };
    counted
        .outcome(
            sender.stats().sent,
            consumer.stats().dead_lettered,
            rss.peak_mib(),
        )
        .print(TEST, env.harness.name(), &note);
    check!(
        counted.lost == 0 && complete,
        "{TEST}: {} of {n} scheduled jobs never arrived (restarted: {restarted}; first {:?})",
        counted.lost,
        counted.lost_ids
    );
    check!(early.is_empty(), "{TEST}: arrived early: {early:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------
// 6. resident memory while many messages wait

/// Many messages wait in the delay stage ([`WAITING`], or [`SLOW_WAITING`] with
/// `EVENTING_SLOW_TESTS=1`; on an in-process broker 10,000, and no memory bound,
/// since that broker holds them in this process): the consumer process's resident
/// memory grows by at most [`WAITING_RSS_GROWTH_MIB`] from before the first send
/// until every message is in the delay stage; then all are handled.
pub async fn delayed_stage_memory_flat(harness: &dyn Harness, _ctx: &Ctx) {
    gated(harness, "delayed_stage_memory_flat", async |env| {
        memory_body(env).await
    })
    .await;
}

async fn memory_body(env: &mut TestEnv<'_>) -> Result<(), String> {
    const TEST: &str = "delayed_stage_memory_flat";
    let slow = std::env::var(SLOW_TESTS).is_ok_and(|v| v == "1");
    let in_process = env.harness.in_process();
    let n = match (in_process, slow) {
        (true, _) => 10_000,
        (false, true) => SLOW_WAITING,
        (false, false) => WAITING,
    };
    // Long enough that every message is waiting before the first comes back
    // (measured on a loaded 2-core machine, debug build: ~650 moved per second).
    let delay = match (in_process, slow) {
        // Handed over in 1-3 s.
        (true, _) => Duration::from_secs(8),
        (false, true) => Duration::from_secs(200),
        (false, false) => Duration::from_secs(12),
    };
    let overall = RssSampler::start();
    let tally = Tally::new(n);
    let consumer = env
        .start(
            env.builder("consumer")
                // Many calls at once: each hand-over to the delay stage waits for
                // the broker's confirmation of the copy.
                .listener_options(ListenerOptions {
                    prefetch: 200,
                    concurrency: 64,
                    ..with_retry(1, &[delay])
                })
                .listener(Flaky {
                    fail_below_attempt: 2,
                    ..Flaky::new(&tally)
                }),
        )
        .await;
    let sender = env
        .start(env.builder("sender").send_timeout(Duration::from_secs(30)))
        .await;
    let waiting = RssSampler::start();
    let began = Instant::now();
    // On a broker 20 MiB of bodies by default; the slow run's 100,000 and the
    // in-process broker's 10,000 (held in this process by nature) 2 KiB each.
    let pad = "w".repeat(if slow || in_process {
        2048
    } else {
        WAITING_PAD
    });
    send_all(&sender, 0..n, 64, move |id| Job {
        id,
        pad: pad.clone(),
    })
    .await
    .map_err(|e| format!("{TEST}: {e}"))?;
    // Every message waits at once only if all were handed over before the first
    // came back.
    let left = delay.saturating_sub(began.elapsed());
    let all_waiting = eventually(left, Duration::from_millis(20), || {
        consumer.stats().delayed >= n
    })
    .await;
    let moved_in = began.elapsed();
    let growth_kib = waiting.peak_kib().saturating_sub(waiting.start_kib());
    let early = tally.completions();
    let complete = all_done(&[&tally], 0..n, delay + Duration::from_secs(60)).await;
    let counted = count(&[&tally], 0..n);
    let note = format!(
        " waiting={n} waiting_growth_mib={} moved_in_ms={} delay_s={}{}",
        growth_kib.div_ceil(1024),
        moved_in.as_millis(),
        delay.as_secs(),
        if in_process {
            " (in-process broker: it holds them here; no bound)"
        } else {
            ""
        }
    );
    counted
        .outcome(
            sender.stats().sent,
            consumer.stats().dead_lettered,
            overall.peak_mib(),
        )
        .print(TEST, env.harness.name(), &note);
    check!(
        all_waiting,
        "{TEST}: only {} of {n} reached the delay stage within {delay:?}",
        consumer.stats().delayed
    );
    check!(
        early == 0,
        "{TEST}: {early} handled before their delay was over"
    );
    check!(
        counted.lost == 0 && complete,
        "{TEST}: {} of {n} never handled (first: {:?})",
        counted.lost,
        counted.lost_ids
    );
    if !in_process {
        check!(
            growth_kib <= WAITING_RSS_GROWTH_MIB * 1024,
            "{TEST}: resident memory grew by {} MiB while {n} messages went to wait \
             (bound {WAITING_RSS_GROWTH_MIB} MiB)",
            growth_kib / 1024
        );
    }
    Ok(())
}

//! The five fault tests, written once and run on every provider
//! (`faults_tests!`): a broker restart in the middle of a stream, a consumer killed
//! while it holds unacknowledged messages, poison messages, a large backlog drained
//! with bounded memory, and a shutdown in the middle of a stream.
//!
//! Every message carries a unique id in its payload and every test counts each id,
//! then prints one `fault <test> <provider>: ...` line (see [`Outcome`]) and fails
//! if a message was lost. The backlog test adds `drain_growth_mib` (what it checks:
//! growth while the consumer drains, from a baseline taken after the consumer
//! connected) and `connect_mib` (what building the consumer's manager, i.e.
//! connecting, cost).
//!
//! The tests restart the broker and load it heavily, so they must not run alongside
//! anything else that uses it: each takes the kit's lock exclusively
//! ([`serial`](super::support::serial)), which every other test the kit's macros
//! generate holds shared, and cargo runs test binaries one after another.
//!
//! Set `RUST_LOG` (e.g. `RUST_LOG=eventing_test=info`) to see progress and timings
//! on stderr.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use eventing::header;
use eventing::topology::QueueSpec;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::support::{
    CASE_LIMIT, Counter, Ctx, DOOMED_DELAY, Item, Outcome, Outgoing, Pace, RssSampler, SendStream,
    Tally, all_completed, count, eventually, kill_child, options, proc_status_kib, read_journal,
};
use crate::harness::{Harness, TestEnv};

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
// running a case

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
    env.harness.in_process()
}

fn healthy(id: u64) -> Outgoing {
    Outgoing::Event(Item::new(id))
}

/// The queue of the `Counter` listener in this test.
fn counter_queue(env: &TestEnv<'_>) -> QueueSpec {
    let address = format!("faults.{}.Item", env.env);
    QueueSpec::new(&address, "Counter", true, false, "any")
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
        let result = kill_child(env, ctx, n, KILL_AFTER, &journal, &stderr).await;
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
/// (prefetch bounds what is buffered). The backlog is [`BACKLOG`] messages (or
/// what the harness's [`Harness::backlog`] says), or
/// [`eventing::memory::DEFAULT_MAX_QUEUE_LEN`] on the in-process broker (whose queues hold
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
        eventing::memory::DEFAULT_MAX_QUEUE_LEN as u64
    } else {
        env.harness.backlog().unwrap_or(BACKLOG)
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

//! The stream bound (`?maxlen=`) on a real redis-server: a stream never holds more
//! than `maxlen` entries, and the provider never trims an entry some consumer group
//! has not acknowledged. Here one group (`Fast`) acknowledges everything at once and
//! another (`Gated`) holds what it reads until the test opens its gate: sends
//! beyond the bound wait for room and then fail with `Error::Unavailable` (the
//! `StreamFull` reason) at the send timeout, nothing the gated group still needs is
//! trimmed, and once it acknowledges, sends succeed again. Every acknowledged send is
//! handled by both groups; a refused send is never handled.
//!
//! `-- --nocapture` shows the `fault stream_bound redis: ...` line.
#![cfg(feature = "redis")]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventing::{Context, Error, Event, EventListener, ListenerResult, event, event_listener};
use eventing_tests::TestEnv;
use eventing_tests::redis::RedisHarness;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The bound under test (the smallest `maxlen` the URL takes is 10).
const MAXLEN: u64 = 20;
/// The sender's send timeout: how long a send at the bound waits for room.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Sends tried while the stream is full (each must be refused).
const OVER: u64 = 3;
/// Sends after the gate opened (more than the bound: the window slides).
const AFTER: u64 = 3 * MAXLEN;

#[event(name = "bound.{env}.Item", durable = true)]
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Item {
    id: u64,
}

type Seen = Arc<Mutex<Vec<u64>>>;

/// Acknowledges at once.
#[event_listener(Item, name = "Fast")]
struct Fast {
    seen: Seen,
}

impl EventListener<Item> for Fast {
    async fn on(&self, item: Item, _: &Context) -> ListenerResult {
        self.seen.lock().expect("lock").push(item.id);
        Ok(())
    }
}

/// Holds every event until the gate opens, then acknowledges it.
#[event_listener(Item, name = "Gated")]
struct Gated {
    seen: Seen,
    gate: watch::Receiver<bool>,
}

impl EventListener<Item> for Gated {
    async fn on(&self, item: Item, _: &Context) -> ListenerResult {
        let mut gate = self.gate.clone();
        // The test opens the gate within its time limit; a dropped sender opens it too.
        let _ = gate.wait_for(|open| *open).await;
        self.seen.lock().expect("lock").push(item.id);
        Ok(())
    }
}

fn unique(seen: &Seen) -> BTreeSet<u64> {
    seen.lock().expect("lock").iter().copied().collect()
}

async fn xlen(connection: &mut redis::aio::MultiplexedConnection, stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(connection)
        .await
        .expect("XLEN")
}

/// How many entries the group has read and not acknowledged.
async fn pending(
    connection: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
) -> u64 {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(connection)
        .await
        .expect("XPENDING");
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        },
        _ => 0,
    }
}

#[test]
fn sends_beyond_the_bound_wait_then_fail_and_nothing_unacknowledged_is_trimmed() {
    eventing_test::run(async {
        tokio::time::timeout(Duration::from_secs(120), scenario())
            .await
            .expect("the stream-bound test timed out after 120 s");
    });
}

async fn scenario() {
    let harness = RedisHarness::from_env();
    let mut env = TestEnv::new(&harness);
    let url = format!("{}&maxlen={MAXLEN}", harness.manager_url());
    let (fast, gated) = (Seen::default(), Seen::default());
    let (open, gate) = watch::channel(false);
    let consumer = env
        .start(
            env.builder("consumer")
                .url(url.clone())
                .listener(Fast {
                    seen: Arc::clone(&fast),
                })
                .listener(Gated {
                    seen: Arc::clone(&gated),
                    gate,
                }),
        )
        .await;
    let sender = env
        .start(
            env.builder("sender")
                .url(url.clone())
                .send_timeout(SEND_TIMEOUT),
        )
        .await;
    let stream = consumer
        .address_of(Item::descriptor())
        .expect("address")
        .to_string();
    let gated_group = format!("{stream}::Gated");
    let mut raw = harness.raw().await;

    let mut sent = Vec::new();
    let mut refused = Vec::new();
    let mut id = 0;
    // Up to the bound: every send is acknowledged at once.
    for _ in 0..MAXLEN {
        sender
            .send_event(&Item { id })
            .await
            .expect("send within the bound");
        sent.push(id);
        id += 1;
    }
    // The fast group has everything; the gated one holds what it read.
    let all: BTreeSet<u64> = sent.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while unique(&fast) != all && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        unique(&fast),
        all,
        "the fast group handled the first {MAXLEN}"
    );

    // Beyond the bound: each send waits for room, then fails with Unavailable.
    for _ in 0..OVER {
        let began = Instant::now();
        let outcome = sender.send_event(&Item { id }).await;
        let waited = began.elapsed();
        match outcome {
            Err(Error::Unavailable { reason, .. }) => {
                assert!(
                    reason.contains("maxlen") && reason.contains("holds"),
                    "the reason names the bound: {reason}"
                );
                assert!(
                    waited >= SEND_TIMEOUT * 3 / 4
                        && waited <= SEND_TIMEOUT + Duration::from_secs(1),
                    "a send at the bound waits about the send timeout ({SEND_TIMEOUT:?}), waited {waited:?}"
                );
                refused.push(id);
            }
            Ok(()) => panic!("send {id} beyond the bound of {MAXLEN} was acknowledged"),
            Err(other) => panic!("send {id} beyond the bound failed otherwise: {other}"),
        }
        id += 1;
    }
    // Nothing was trimmed that the gated group has not acknowledged, and nothing
    // refused was written.
    let length = xlen(&mut raw, &stream).await;
    assert_eq!(length, MAXLEN, "the full stream keeps all {MAXLEN} entries");
    let held = pending(&mut raw, &stream, &gated_group).await;
    assert!(held > 0, "the gated group holds entries unacknowledged");
    assert!(
        gated.lock().expect("lock").is_empty(),
        "the gated group acknowledged nothing yet"
    );

    // Open the gate: the gated group acknowledges, the stream is trimmed, and sends
    // succeed again, well past the bound.
    open.send_replace(true);
    for _ in 0..AFTER {
        let began = Instant::now();
        sender
            .send_event(&Item { id })
            .await
            .expect("send after the group acknowledged");
        assert!(
            began.elapsed() < SEND_TIMEOUT,
            "a send after the gate opened took {:?}",
            began.elapsed()
        );
        sent.push(id);
        id += 1;
    }
    let all: BTreeSet<u64> = sent.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (unique(&fast) != all || unique(&gated) != all) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let length = xlen(&mut raw, &stream).await;
    let (fast_seen, gated_seen) = (unique(&fast), unique(&gated));
    let handled = fast_seen.intersection(&gated_seen).count();
    let lost = all.len() - handled;
    let refused_handled = refused
        .iter()
        .filter(|id| fast_seen.contains(id) || gated_seen.contains(id))
        .count();
    println!(
        "fault stream_bound redis: sent={} handled={handled} refused={} lost={lost} \
         maxlen={MAXLEN} refused_handled={refused_handled} xlen_at_end={length}",
        sent.len(),
        refused.len()
    );
    assert_eq!(lost, 0, "acknowledged sends never handled by both groups");
    assert_eq!(refused_handled, 0, "a refused send was handled");
    assert!(length <= MAXLEN, "the stream holds {length} > {MAXLEN}");
    drop(raw);
    env.finish().await;
}

//! Quorum queues from a `stomp://` URL (`queue_type=quorum&delivery_limit=N`), the
//! rule the AMQP provider applies (`eventing-rabbitmq`): competing queues and their
//! `.dlq` are quorum queues with the delivery limit and broker dead-lettering to
//! `<queue>.dlq`, per-process queues stay classic; events flow through them, a
//! message given back more often than the limit is dead-lettered by the broker and
//! listed with a reason, and dead letters are replayed from the quorum `.dlq`.
//! Needs `rabbitmqctl` (root) for reading queue types.
#![cfg(feature = "stomp")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use eventing::{
    Context, EventListener, EventManager, ListenerOptions, ListenerResult, RetryPolicy, event,
    event_listener, header,
};
use eventing_stomp::frame::{Command, Frame};
use eventing_tests::rabbitmq::queue_types;
use eventing_tests::stomp::{RawStomp, StompHarness};
use serde::{Deserialize, Serialize};

const LIMIT: u32 = 2;

#[event(name = "stompquorum.{env}.Job", durable = true)]
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Job {
    id: u64,
}

type Seen = Arc<Mutex<Vec<u64>>>;

fn len(seen: &Seen) -> usize {
    seen.lock().unwrap_or_else(PoisonError::into_inner).len()
}

/// Competing: records the ids it handles.
#[event_listener(Job, name = "QWorker")]
struct Worker {
    seen: Seen,
}

impl EventListener<Job> for Worker {
    async fn on(&self, job: Job, _: &Context) -> ListenerResult {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(job.id);
        Ok(())
    }
}

/// Per process: records the ids it handles.
#[event_listener(Job, name = "QWatcher", per_process = true)]
struct Watcher {
    seen: Seen,
}

impl EventListener<Job> for Watcher {
    async fn on(&self, job: Job, _: &Context) -> ListenerResult {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(job.id);
        Ok(())
    }
}

/// A manager on the harness's broker with `queue_type=quorum&delivery_limit=LIMIT`.
fn builder(harness: &StompHarness, env: &str, server: &str) -> eventing::EventManagerBuilder {
    let base = harness.broker_url();
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}queue_type=quorum&delivery_limit={LIMIT}");
    EventManager::builder()
        .url(url)
        .server_name(server)
        .var("env", env)
        .only_bound_listeners()
        .shutdown_timeout(Duration::from_secs(10))
        .listener_options(ListenerOptions {
            prefetch: 10,
            concurrency: 4,
            retry: RetryPolicy {
                max_attempts: 2,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(20),
                delays: Vec::new(),
            },
        })
}

async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// Subscribes to `queue` itself and gives every message back (`NACK`, requeued)
/// until the queue stays quiet for 2 s; returns how many deliveries it got.
async fn keep_giving_back(harness: &StompHarness, queue: &str) -> u32 {
    let mut raw = RawStomp::connect(harness).await;
    let subscribe = Frame::new(Command::Subscribe)
        .header("id", "0")
        .header("destination", format!("/amq/queue/{queue}"))
        .header("ack", "client-individual")
        .header("prefetch-count", "1");
    let answer = raw.request(subscribe).await;
    assert_eq!(answer.command, Command::Receipt, "{answer:?}");
    let mut deliveries = 0;
    while deliveries < 50 {
        let Ok(message) = tokio::time::timeout(Duration::from_secs(2), raw.recv()).await else {
            break;
        };
        assert_eq!(message.command, Command::Message, "{message:?}");
        deliveries += 1;
        let ack = message.get("ack").expect("an ack id").to_string();
        raw.send(
            Frame::new(Command::Nack)
                .header("id", ack)
                .header("requeue", "true"),
        )
        .await;
    }
    deliveries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_url_declares_quorum_queues_and_dead_letters_through_them() {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let env = format!(
        "q{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    let address = format!("stompquorum.{env}.Job");
    let competing = format!("{address}::QWorker");
    let per_process = format!("{address}::QWatcher-qa");
    let harness = StompHarness::from_env();
    let body = {
        let (harness, env, competing, per_process) = (
            harness.clone(),
            env.clone(),
            competing.clone(),
            per_process.clone(),
        );
        async move {
            // 1. Events flow through the quorum queue and the classic per-process one.
            let (work, watch): (Seen, Seen) = Default::default();
            let first = builder(&harness, &env, "qa")
                .listener(Worker {
                    seen: Arc::clone(&work),
                })
                .listener(Watcher {
                    seen: Arc::clone(&watch),
                })
                .build()
                .await
                .expect("build");
            first.start().await.expect("start");
            for id in 0..3 {
                first.send_event(&Job { id }).await.expect("send");
            }
            assert!(
                eventually(|| len(&work) == 3 && len(&watch) == 3).await,
                "handled: {} competing, {} per process",
                len(&work),
                len(&watch)
            );

            // 2. As the AMQP provider declares them.
            let queues = queue_types(&env).await;
            println!("queues: {queues:?}");
            let find = |name: &str| {
                queues
                    .iter()
                    .find(|(n, _, _)| n == name)
                    .unwrap_or_else(|| panic!("no queue {name} in {queues:?}"))
                    .clone()
            };
            let (_, kind, arguments) = find(&competing);
            assert_eq!(kind, "quorum", "{competing}: {arguments}");
            for expected in [
                "x-delivery-limit",
                &LIMIT.to_string(),
                "x-dead-letter-exchange",
                "x-dead-letter-routing-key",
                &format!("{competing}.dlq"),
                "at-least-once",
                "reject-publish",
            ] {
                assert!(arguments.contains(expected), "{competing}: {arguments}");
            }
            assert_eq!(find(&format!("{competing}.dlq")).1, "quorum");
            assert_eq!(find(&per_process).1, "classic", "exclusive: classic");
            assert_eq!(find(&format!("{per_process}.dlq")).1, "classic");
            first.shutdown().await.expect("shutdown");

            // 3. A message given back more often than the limit: the broker
            // dead-letters it, and the listing says why. (A manager that is not
            // consuming yet, so the test's own session gets the message.)
            let work: Seen = Default::default();
            let second = builder(&harness, &env, "qb")
                .listener(Worker {
                    seen: Arc::clone(&work),
                })
                .build()
                .await
                .expect("build");
            second.send_event(&Job { id: 100 }).await.expect("send");
            let given_back = keep_giving_back(&harness, &competing).await;
            assert!(given_back > LIMIT, "delivered {given_back} times");
            let letters = second
                .dead_letters(&competing, 10)
                .await
                .expect("list dead letters");
            assert_eq!(letters.len(), 1, "{letters:?}");
            let reason = letters[0]
                .headers
                .get(header::DEAD_LETTER_REASON)
                .unwrap_or_default()
                .to_string();
            assert!(reason.contains("delivery limit"), "{reason}");

            // 4. Replayed from the quorum dead-letter queue, and handled.
            assert_eq!(
                second
                    .replay_dead_letters(&competing, 10)
                    .await
                    .expect("replay"),
                1
            );
            second.start().await.expect("start");
            assert!(eventually(|| len(&work) == 1).await, "the replayed job");
            assert_eq!(work.lock().unwrap_or_else(PoisonError::into_inner)[0], 100);
            assert!(
                second
                    .dead_letters(&competing, 10)
                    .await
                    .expect("list")
                    .is_empty()
            );
            second.shutdown().await.expect("shutdown");
        }
    };
    let result = tokio::spawn(tokio::time::timeout(Duration::from_secs(120), body)).await;
    let queues = [
        competing.clone(),
        format!("{competing}.dlq"),
        format!("{per_process}.dlq"),
    ];
    harness.delete(&queues, &[address]).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("test timed out after 120 s"),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("test task: {error}"),
    }
}

//! Replaying dead letters on RabbitMQ: `replay_dead_letters` moves letters from
//! `<queue>.dlq` back onto that queue only (not onto the other queues bound to the
//! event), persistently and without the `x-dead-letter-*` headers, at most as many
//! as asked; a missing queue is an error that leaves the letters where they are.
//! Needs `rabbitmqctl` (run as root) for inspecting the broker.
#![cfg(feature = "amqp")]

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventing::topology::QueueSpec;
use eventing::{
    Context, EventListener, EventManager, ListenerResult, event, event_listener, header,
};
use eventing_tests::amqp::{AmqpHarness, list_queues};
use eventing_tests::{Harness, TestEnv};
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(20);

/// The event of these tests.
#[event(name = "replay.{env}.Letter", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Letter {
    n: u32,
}

/// What a listener handled: the event's number and its headers.
type Handled = Arc<Mutex<Vec<(u32, Vec<(String, String)>)>>>;

/// Fails every call while `failing` is set, so letters end in its dead-letter queue.
#[event_listener(Letter, name = "Picky")]
struct Picky {
    failing: Arc<AtomicBool>,
    handled: Handled,
}

impl EventListener<Letter> for Picky {
    async fn on(&self, letter: Letter, ctx: &Context) -> ListenerResult {
        if self.failing.load(Ordering::SeqCst) {
            return Err(format!("not letter {} today", letter.n).into());
        }
        let headers = ctx
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.handled.lock().expect("lock").push((letter.n, headers));
        Ok(())
    }
}

/// Another listener of the same event, which must not see replayed letters again.
#[event_listener(Letter, name = "Bystander")]
struct Bystander {
    handled: Handled,
}

impl EventListener<Letter> for Bystander {
    async fn on(&self, letter: Letter, _: &Context) -> ListenerResult {
        self.handled
            .lock()
            .expect("lock")
            .push((letter.n, Vec::new()));
        Ok(())
    }
}

fn count(handled: &Handled) -> usize {
    handled.lock().expect("lock").len()
}

async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("test timed out after 120 s");
}

async fn wait_until(mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// Ready messages in `queue` on the broker (`rabbitmqctl`), `None` if it is missing.
async fn ready(queue: &str) -> Option<u64> {
    list_queues(queue)
        .await
        .into_iter()
        .find(|q| q.name == queue)
        .map(|q| q.ready)
}

/// A manager with both listeners; `failing` decides whether `Picky` fails.
fn builder(
    env: &TestEnv<'_>,
    server: &str,
    failing: &Arc<AtomicBool>,
    picky: &Handled,
    bystander: &Handled,
) -> eventing::EventManagerBuilder {
    env.builder(server)
        .listener(Picky {
            failing: Arc::clone(failing),
            handled: Arc::clone(picky),
        })
        .listener(Bystander {
            handled: Arc::clone(bystander),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_moves_letters_back_onto_their_own_queue_only() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        let mut env = TestEnv::new(&harness);
        let address = format!("replay.{}.Letter", env.env);
        let picky_queue = QueueSpec::new(&address, "Picky", true, false, "any");
        let bystander_queue = QueueSpec::new(&address, "Bystander", true, false, "any");
        let queue = picky_queue.name.clone();
        let dlq = picky_queue.dead_letter_queue();

        // 1. Four letters: the bystander handles them, Picky dead-letters them.
        let failing = Arc::new(AtomicBool::new(true));
        let (picky, bystander): (Handled, Handled) = Default::default();
        let first = env
            .start(builder(&env, "first", &failing, &picky, &bystander))
            .await;
        for n in 0..4 {
            first.send_event(&Letter { n }).await.expect("send");
        }
        assert!(
            wait_until(|| first.stats().dead_lettered == 4 && count(&bystander) == 4).await,
            "four dead letters and four handled by the bystander: {:?}",
            first.stats()
        );
        first.shutdown().await.expect("shutdown");

        // 2. A manager that is not consuming, so the broker's queues can be read.
        failing.store(false, Ordering::SeqCst);
        let second: EventManager = builder(&env, "second", &failing, &picky, &bystander)
            .build()
            .await
            .expect("build");

        // A missing queue: an error, and the letter stays in the dead-letter queue.
        {
            let connection = harness.raw_connection().await;
            let channel = connection.create_channel().await.expect("channel");
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .expect("delete the queue");
            let _ = connection.close(200, "done".into()).await;
        }
        let error = second
            .replay_dead_letters(&queue, 1)
            .await
            .expect_err("replaying into a missing queue fails");
        assert!(
            error.to_string().contains("does not exist"),
            "says why: {error}"
        );
        assert_eq!(ready(&dlq).await, Some(4), "no letter lost to the failure");
        second
            .provider()
            .declare(std::slice::from_ref(&picky_queue))
            .await
            .expect("declare the queue again");

        // 3. Three of four, onto Picky's queue only.
        let moved = second
            .replay_dead_letters(&queue, 3)
            .await
            .expect("replay three");
        assert_eq!(moved, 3, "no more than asked");
        assert_eq!(ready(&queue).await, Some(3), "on the queue");
        assert_eq!(
            ready(&dlq).await,
            Some(1),
            "one left in the dead-letter queue"
        );
        assert_eq!(
            ready(&bystander_queue.name).await,
            Some(0),
            "the other listener's queue does not get them again"
        );

        // As stored: persistent, without the dead-letter headers, with the event's.
        {
            let connection = harness.raw_connection().await;
            let channel = connection.create_channel().await.expect("channel");
            let message = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .expect("basic.get")
                .expect("a message");
            let properties = &message.delivery.properties;
            assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
            let names: Vec<String> = properties
                .headers()
                .as_ref()
                .map(|t| t.inner().keys().map(|k| k.to_string()).collect())
                .unwrap_or_default();
            for name in header::DEAD_LETTER_HEADERS {
                assert!(
                    !names.iter().any(|n| n == name),
                    "`{name}` is gone: {names:?}"
                );
            }
            // The event's name travels in the AMQP `type` property (the lean format).
            assert!(
                properties
                    .kind()
                    .as_ref()
                    .is_some_and(|k| !k.as_str().is_empty()),
                "the event name in `type`: {properties:?}"
            );
            // Not acknowledged: closing the channel puts it back.
            let _ = channel.close(200, "done".into()).await;
            let _ = connection.close(200, "done".into()).await;
        }

        // 4. Consumed and handled once each; the bystander saw nothing new.
        second.start().await.expect("start");
        assert!(wait_until(|| count(&picky) == 3).await, "handled the three");
        let moved = second
            .replay_dead_letters(&queue, 10)
            .await
            .expect("replay the rest");
        assert_eq!(moved, 1, "the one left");
        assert!(
            wait_until(|| count(&picky) == 4).await,
            "handled the fourth"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let handled = picky.lock().expect("lock").clone();
        let mut numbers: Vec<u32> = handled.iter().map(|(n, _)| *n).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, [0, 1, 2, 3], "each once");
        for (n, headers) in &handled {
            for name in header::DEAD_LETTER_HEADERS {
                assert!(
                    !headers.iter().any(|(k, _)| k == name),
                    "letter {n} still carries `{name}`"
                );
            }
        }
        assert_eq!(count(&bystander), 4, "the bystander got no replayed letter");
        assert!(
            second
                .dead_letters(&queue, 10)
                .await
                .expect("list")
                .is_empty(),
            "the dead-letter queue is empty"
        );
        assert_eq!(
            second
                .replay_dead_letters(&queue, 10)
                .await
                .expect("replay none"),
            0
        );
        assert_eq!(second.stats().dead_lettered, 0);

        second.shutdown().await.expect("shutdown");
        harness
            .cleanup(&[picky_queue, bystander_queue], &[address])
            .await;
        env.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_without_a_dead_letter_queue_moves_nothing() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        let mut env = TestEnv::new(&harness);
        let (picky, bystander): (Handled, Handled) = Default::default();
        let failing = Arc::new(AtomicBool::new(false));
        let manager = env
            .start(builder(&env, "only", &failing, &picky, &bystander))
            .await;
        let address = format!("replay.{}.Letter", env.env);
        let spec = QueueSpec::new(&address, "Picky", true, false, "any");
        {
            let connection = harness.raw_connection().await;
            let channel = connection.create_channel().await.expect("channel");
            channel
                .queue_delete(
                    spec.dead_letter_queue().as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await
                .expect("delete the dead-letter queue");
            let _ = connection.close(200, "done".into()).await;
        }
        assert_eq!(
            manager
                .replay_dead_letters(&spec.name, 10)
                .await
                .expect("no dead-letter queue is no dead letter"),
            0
        );
        env.finish().await;
    })
    .await;
}

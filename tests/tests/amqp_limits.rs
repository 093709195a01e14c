//! Size limits on the receiving side over AMQP: a message whose body is over the
//! manager's `max_body_size` reaches the runtime in one piece (lapin reassembles
//! it from frames of the provider's `frame_max`) and is dead-lettered once with
//! the reason, never handed to the listener; the consumer goes on with the next
//! message. Needs `rabbitmqctl` (run as root) for inspecting the broker.
#![cfg(feature = "amqp")]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventing::topology::QueueSpec;
use eventing::{Context, EventListener, ListenerResult, event, event_listener, header};
use eventing_tests::TestEnv;
use eventing_tests::amqp::{AmqpHarness, list_queues};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(30);

/// The event of this test.
#[event(name = "limits.{env}.Blob", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Blob {
    data: String,
}

/// Records the sizes of the blobs it handles.
#[event_listener(Blob, name = "Sink")]
struct Sink {
    sizes: Arc<Mutex<Vec<usize>>>,
}

impl EventListener<Blob> for Sink {
    async fn on(&self, blob: Blob, _: &Context) -> ListenerResult {
        self.sizes.lock().expect("lock").push(blob.data.len());
        Ok(())
    }
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

/// A JSON `Blob` body of at least `size` bytes.
fn blob_body(size: usize) -> Vec<u8> {
    serde_json::to_vec(&Blob {
        data: "x".repeat(size),
    })
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_dead_lettered_with_the_reason() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        let mut env = TestEnv::new(&harness);
        // The default limit, set explicitly; the body is just over it.
        let limit = 8 * 1024 * 1024;
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let manager = env
            .start(env.builder("limits").max_body_size(limit).listener(Sink {
                sizes: Arc::clone(&sizes),
            }))
            .await;
        let address = format!("limits.{}.Blob", env.env);
        let spec = QueueSpec::new(&address, "Sink", true, false, "any");

        // Straight into the listener's queue with raw lapin (default exchange): a
        // body of 9 MiB (hundreds of frames at any frame size), then a small one.
        let huge = blob_body(limit + limit / 8);
        let small = blob_body(16);
        let connection = harness.raw_connection().await;
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(Default::default())
            .await
            .expect("confirms");
        for (id, body) in [("huge", &huge), ("small", &small)] {
            let mut headers = FieldTable::default();
            headers.insert(
                header::EVENT.into(),
                AMQPValue::LongString(LongString::from(address.as_bytes())),
            );
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(ShortString::from(id))
                .with_content_type(ShortString::from("application/json"))
                .with_headers(headers);
            let confirm = channel
                .basic_publish(
                    ShortString::default(),
                    spec.name.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            assert!(confirm.is_ack(), "{id}: the broker took it");
        }
        let _ = connection.close(200, "done".into()).await;

        assert!(
            wait_until(
                || manager.stats().dead_lettered == 1 && !sizes.lock().expect("lock").is_empty()
            )
            .await,
            "one dead letter and the small message handled: {:?}",
            manager.stats()
        );
        let letters = manager
            .dead_letters(&spec.name, 10)
            .await
            .expect("list dead letters");
        assert_eq!(letters.len(), 1, "dead-lettered once");
        let letter = &letters[0];
        assert_eq!(letter.message_id(), "huge");
        assert_eq!(letter.body.len(), huge.len(), "the whole body is kept");
        let reason = letter
            .headers
            .get(header::DEAD_LETTER_REASON)
            .unwrap_or_default();
        assert!(
            reason.contains(&format!("{} bytes", huge.len())) && reason.contains("max_body_size"),
            "the reason names the size and the limit: {reason}"
        );

        // No loop: after a while still one dead letter, nothing left on the queue,
        // and the listener saw only the small body.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(manager.stats().dead_lettered, 1);
        assert_eq!(*sizes.lock().expect("lock"), [16]);
        let queues = list_queues(&spec.name).await;
        let queue = queues
            .iter()
            .find(|q| q.name == spec.name)
            .expect("the queue");
        assert_eq!((queue.ready, queue.unacked), (0, 0), "{queue:?}");
        let dlq = queues
            .iter()
            .find(|q| q.name == spec.dead_letter_queue())
            .expect("the dead-letter queue");
        assert_eq!(dlq.ready, 1, "{dlq:?}");
        env.finish().await;
    })
    .await;
}

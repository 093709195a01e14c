//! AMQP-specific behaviour: what the provider creates on RabbitMQ, interoperation
//! with raw AMQP clients, dead letters, acknowledgements and publisher confirms.
//! Needs `rabbitmqctl` (run as root) for inspecting the broker.
#![cfg(feature = "amqp")]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventing::pipeline::SessionPipeline;
use eventing::provider::Route;
use eventing::topology::QueueSpec;
use eventing::{
    Context, Envelope, Error, Event, EventListener, ListenerResult, event_listener, header,
};
use eventing_test::suite::{
    CacheListener, Flaky, FlakyListener, Ping, PingListener, Pong, PongListener, Recorder, Slow,
    SlowListener, Work, Worker, dead_letters, eventually,
};
use eventing_tests::amqp::{AmqpHarness, list_exchanges, list_queues, tap};
use eventing_tests::{Harness, TestEnv};
use lapin::BasicProperties;
use lapin::Channel;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

const WAIT: Duration = Duration::from_secs(20);

/// Runs a test body with a time limit.
async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("test timed out after 120 s");
}

/// Removes queues of managers that were shut down (their `queues()` is empty by then).
async fn cleanup(harness: &AmqpHarness, queues: &[QueueSpec]) {
    let mut events: Vec<String> = queues.iter().map(|q| q.event.clone()).collect();
    events.dedup();
    harness.cleanup(queues, &events).await;
}

/// The address of a suite event in this test's environment.
fn address<E: Event>(env: &TestEnv<'_>) -> String {
    E::descriptor().name().replace("{env}", &env.env)
}

/// Seconds since the epoch of a `YYYY-MM-DDTHH:MM:SSZ` timestamp.
fn whole_seconds(stamp: &str) -> Option<u64> {
    let b = stamp.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

async fn raw_publish(channel: &Channel, exchange: &str, body: &[u8], properties: BasicProperties) {
    channel
        .basic_publish(
            exchange.into(),
            ShortString::default(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("raw publish")
        .await
        .expect("raw publish written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_names_and_kinds_follow_the_contract() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        let mut env = TestEnv::new(&harness);
        let a = env
            .start(
                env.builder("srv-a")
                    .listener(Worker {
                        seen: Recorder::new(),
                        server: "srv-a".into(),
                    })
                    .listener(CacheListener {
                        seen: Recorder::new(),
                        server: "srv-a".into(),
                    })
                    .listener(PongListener {
                        seen: Recorder::new(),
                    }),
            )
            .await;
        let declared = a.queues();
        let work = address::<Work>(&env);
        let pong = address::<Pong>(&env);

        let queues = list_queues(&env.env).await;
        let mut names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
        names.sort_unstable();
        let mut expected = vec![
            format!("{work}::Worker"),
            format!("{work}::Worker.dlq"),
            format!("{work}::Cache-srv-a"),
            format!("{work}::Cache-srv-a.dlq"),
            format!("{pong}::Recorder"),
            format!("{pong}::Recorder.dlq"),
        ];
        expected.sort_unstable();
        assert_eq!(names, expected, "queue names on the broker");
        let find = |name: String| {
            queues
                .iter()
                .find(|q| q.name == name)
                .cloned()
                .unwrap_or_else(|| panic!("no queue {name}"))
        };
        let worker = find(format!("{work}::Worker"));
        assert!(worker.durable && !worker.exclusive, "competing queue of a durable event: {worker:?}");
        let cache = find(format!("{work}::Cache-srv-a"));
        assert!(cache.exclusive, "per-process queue is exclusive: {cache:?}");
        let pong_queue = find(format!("{pong}::Recorder"));
        assert!(
            pong_queue.durable && !pong_queue.exclusive,
            "every queue is durable or exclusive (RabbitMQ 4), even for a transient event: {pong_queue:?}"
        );
        for dlq in [
            format!("{work}::Worker.dlq"),
            format!("{work}::Cache-srv-a.dlq"),
            format!("{pong}::Recorder.dlq"),
        ] {
            let dlq = find(dlq);
            assert!(dlq.durable && !dlq.exclusive, "dead-letter queues are durable: {dlq:?}");
        }
        let cache_dlq = find(format!("{work}::Cache-srv-a.dlq"));
        assert!(cache_dlq.arguments.contains("x-expires"), "{cache_dlq:?}");

        let mut exchanges = list_exchanges(&env.env).await;
        exchanges.sort();
        let mut expected = vec![(work.clone(), "fanout".to_string(), true), (pong.clone(), "fanout".to_string(), false)];
        expected.sort();
        assert_eq!(exchanges, expected, "one fanout exchange per event, durable like the event");

        // The per-process queue goes away with its manager; the others stay.
        a.shutdown().await.expect("shutdown");
        let after: Vec<String> = list_queues(&env.env).await.into_iter().map(|q| q.name).collect();
        assert!(!after.contains(&format!("{work}::Cache-srv-a")), "per-process queue removed: {after:?}");
        assert!(after.contains(&format!("{work}::Worker")), "{after:?}");
        assert!(after.contains(&format!("{work}::Cache-srv-a.dlq")), "dead letters are kept: {after:?}");
        cleanup(&harness, &declared).await;
        assert!(list_queues(&env.env).await.is_empty(), "cleanup removes every queue");
        env.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_message_without_headers_is_dead_lettered_with_the_reason() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        let mut env = TestEnv::new(&harness);
        let calls = Arc::new(AtomicU32::new(0));
        let manager = env
            .start(env.builder("a").listener(FlakyListener {
                calls: Arc::clone(&calls),
                seen: Recorder::new(),
            }))
            .await;
        let exchange = address::<Flaky>(&env);
        let queue = format!("{exchange}::Flaky");
        let (connection, channel) = harness.raw_channel_with_exchange(&exchange, true).await;
        raw_publish(&channel, &exchange, b"not json", BasicProperties::default()).await;

        let letters = dead_letters(&manager, &queue, 1).await;
        assert_eq!(letters.len(), 1, "dead-lettered");
        let letter = &letters[0];
        assert_eq!(&letter.body[..], b"not json");
        let reason = letter.headers.get(header::DEAD_LETTER_REASON).unwrap_or("");
        assert!(reason.starts_with("undecodable body"), "reason: {reason}");
        assert_eq!(
            letter.headers.get(header::DEAD_LETTER_QUEUE),
            Some(queue.as_str())
        );
        assert_eq!(
            letter.headers.get(header::MESSAGE_ID),
            None,
            "nothing invented"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0, "the listener never saw it");

        // Listing leaves them in place.
        assert_eq!(
            manager.dead_letters(&queue, 10).await.expect("list").len(),
            1
        );
        let dlq = list_queues(&format!("{queue}.dlq")).await;
        assert_eq!(dlq.len(), 1);
        assert_eq!(
            (dlq[0].ready, dlq[0].unacked),
            (1, 0),
            "still in the queue: {dlq:?}"
        );
        let _ = connection.close(200, "done".into()).await;
        env.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_oldest_first_without_removing_them() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        let mut env = TestEnv::new(&harness);
        let manager = env
            .start(env.builder("a").listener(FlakyListener {
                calls: Arc::new(AtomicU32::new(0)),
                seen: Recorder::new(),
            }))
            .await;
        let exchange = address::<Flaky>(&env);
        let queue = format!("{exchange}::Flaky");
        let (connection, channel) = harness.raw_channel_with_exchange(&exchange, true).await;
        for n in 0..3 {
            let body = format!("bad {n}");
            let properties = BasicProperties::default().with_message_id(format!("m{n}").into());
            raw_publish(&channel, &exchange, body.as_bytes(), properties).await;
            // Dead-lettered one after the other, so the order is known.
            dead_letters(&manager, &queue, n + 1).await;
        }
        let bodies = |letters: Vec<Envelope>| -> Vec<String> {
            letters
                .iter()
                .map(|l| String::from_utf8_lossy(&l.body).into_owned())
                .collect()
        };
        let all = manager.dead_letters(&queue, 100).await.expect("list");
        assert_eq!(bodies(all), ["bad 0", "bad 1", "bad 2"]);
        let first_two = manager.dead_letters(&queue, 2).await.expect("list");
        assert_eq!(bodies(first_two), ["bad 0", "bad 1"]);
        let again = manager.dead_letters(&queue, 100).await.expect("list");
        assert_eq!(
            again
                .iter()
                .map(|l| l.message_id().to_string())
                .collect::<Vec<_>>(),
            ["m0", "m1", "m2"],
            "same order after being listed"
        );
        let _ = connection.close(200, "done".into()).await;
        env.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_round_trip_with_raw_amqp_clients() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        let mut env = TestEnv::new(&harness);
        let exchange = address::<Ping>(&env);
        let (connection, channel) = harness.raw_channel_with_exchange(&exchange, true).await;
        let tap = tap(&channel, &exchange, FieldTable::default()).await;

        // eventing -> raw client: standard headers are AMQP properties.
        let pings = Recorder::new();
        let manager = env
            .start(
                env.builder("a")
                    .pipeline(SessionPipeline)
                    .listener(PingListener {
                        seen: Arc::clone(&pings),
                        server: "a".into(),
                    }),
            )
            .await;
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        eventing::pipeline::with_session(
            "s-1",
            manager.send_event(&Ping {
                n: 1,
                text: "x".into(),
            }),
        )
        .await
        .expect("send");
        let message = channel
            .basic_get(tap.clone(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
            .expect("a message on the tap");
        let properties = &message.delivery.properties;
        let message_id = properties
            .message_id()
            .as_ref()
            .expect("message-id property");
        assert_eq!(message_id.as_str().len(), 36);
        assert_eq!(
            properties.content_type().as_ref().map(ShortString::as_str),
            Some(eventing::codec::JSON)
        );
        assert_eq!(
            *properties.delivery_mode(),
            Some(2),
            "durable event: persistent"
        );
        let timestamp = properties.timestamp().expect("timestamp property");
        assert!(
            timestamp >= before && timestamp <= before + 60,
            "seconds since the epoch"
        );
        assert_eq!(
            properties.kind().as_ref().map(ShortString::as_str),
            Some(exchange.as_str()),
            "the event name is the AMQP type"
        );
        // The lean format: only the pipeline's header is in the table.
        let table = properties.headers().as_ref().expect("headers table");
        let keys: Vec<&str> = table.inner().keys().map(ShortString::as_str).collect();
        assert_eq!(keys, [header::SESSION_ID], "nothing else in the table");
        let text = |name: &str| match table.inner().get(name) {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            _ => None,
        };
        assert_eq!(text(header::SESSION_ID).as_deref(), Some("s-1"));
        let body: Ping = serde_json::from_slice(&message.delivery.data).expect("JSON body");
        assert_eq!(body.n, 1);
        let seen = pings.wait_for(1, WAIT).await;
        assert_eq!(seen.len(), 1);
        let stamp = seen[0].headers.get(header::TIMESTAMP).expect("timestamp");
        assert_eq!(
            whole_seconds(stamp),
            Some(timestamp),
            "the timestamp the sender made, whole seconds: {stamp}"
        );
        assert_eq!(
            seen[0].headers.get(header::MESSAGE_ID).map(String::as_str),
            Some(message_id.as_str())
        );
        assert_eq!(seen[0].headers.get(header::EVENT), Some(&exchange));

        // raw client -> eventing: what it sets arrives, nothing else is invented;
        // values that are not strings arrive as readable text.
        let mut nested = FieldTable::default();
        nested.insert("a".into(), AMQPValue::LongInt(1));
        nested.insert("b".into(), AMQPValue::LongString(LongString::from("x")));
        let mut array = lapin::types::FieldArray::default();
        array.push(AMQPValue::LongInt(1));
        array.push(AMQPValue::LongString(LongString::from("two")));
        array.push(AMQPValue::Boolean(false));
        let mut table = FieldTable::default();
        table.insert(
            "x-custom".into(),
            AMQPValue::LongString(LongString::from("a\nb: c")),
        );
        table.insert("x-count".into(), AMQPValue::LongInt(5));
        table.insert("x-big".into(), AMQPValue::LongLongInt(-1 << 40));
        table.insert("x-flag".into(), AMQPValue::Boolean(true));
        table.insert("x-ratio".into(), AMQPValue::Double(0.25));
        table.insert("x-table".into(), AMQPValue::FieldTable(nested));
        table.insert("x-array".into(), AMQPValue::FieldArray(array));
        let properties = BasicProperties::default()
            .with_message_id("raw-1".into())
            .with_content_type("application/json".into())
            .with_headers(table);
        raw_publish(&channel, &exchange, br#"{"n":2,"text":"raw"}"#, properties).await;
        // A raw client naming the event in `type`, with nothing else.
        let typed = BasicProperties::default().with_type(exchange.as_str().into());
        raw_publish(&channel, &exchange, br#"{"n":3,"text":"typed"}"#, typed).await;
        let seen = pings.wait_for(3, WAIT).await;
        let raw = seen
            .iter()
            .find(|s| s.event.n == 2)
            .expect("the raw message is handled");
        let get = |name: &str| raw.headers.get(name).map(String::as_str);
        assert_eq!(get(header::MESSAGE_ID), Some("raw-1"));
        assert_eq!(get("x-custom"), Some("a\nb: c"));
        assert_eq!(get("x-count"), Some("5"));
        assert_eq!(get("x-big"), Some("-1099511627776"));
        assert_eq!(get("x-flag"), Some("true"));
        assert_eq!(get("x-ratio"), Some("0.25"));
        assert_eq!(get("x-table"), Some(r#"{"a":1,"b":"x"}"#));
        assert_eq!(get("x-array"), Some(r#"[1,"two",false]"#));
        assert_eq!(get(header::EVENT), None);
        assert_eq!(get(header::TIMESTAMP), None);
        assert_eq!(raw.session, None);
        let typed = seen
            .iter()
            .find(|s| s.event.n == 3)
            .expect("the typed message is handled");
        assert_eq!(typed.headers.get(header::EVENT), Some(&exchange));
        assert_eq!(
            typed.headers.len(),
            1,
            "only the event: {:?}",
            typed.headers
        );
        let _ = connection.close(200, "done".into()).await;
        env.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_reach_the_broker_without_shutdown() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        const N: u32 = 300;
        let mut env = TestEnv::new(&harness);
        let seen = Recorder::new();
        let manager = env
            .start(env.builder("a").listener(Worker {
                seen: Arc::clone(&seen),
                server: "a".into(),
            }))
            .await;
        let work: Vec<Work> = (0..N).map(|n| Work { n }).collect();
        let sends = work.iter().map(|w| manager.send_event(w));
        for sent in futures_util::future::join_all(sends).await {
            sent.expect("send");
        }
        assert_eq!(seen.wait_for(N as usize, WAIT).await.len(), N as usize);
        // Acks are batched, but none waits for more traffic or for shutdown.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let queue = format!("{}::Worker", address::<Work>(&env));
        let info = list_queues(&queue).await;
        let info = info.iter().find(|q| q.name == queue).expect("queue");
        assert_eq!(
            (info.ready, info.unacked),
            (0, 0),
            "everything acknowledged: {info:?}"
        );
        env.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_manager_leaves_unfinished_messages_for_the_next() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        const N: u32 = 6;
        let mut env = TestEnv::new(&harness);
        let started = Arc::new(AtomicU32::new(0));
        let seen = Recorder::new();
        // Not through `env.start`: the test must hold the only handle.
        let a = env
            .builder("a")
            .listener(SlowListener {
                started: Arc::clone(&started),
                seen: Arc::clone(&seen),
                server: "a".into(),
            })
            .build()
            .await
            .expect("build");
        a.start().await.expect("start");
        for n in 0..N {
            a.send_event(&Slow { n }).await.expect("send");
        }
        assert!(eventually(WAIT, || started.load(Ordering::SeqCst) > 0).await);
        drop(a);

        let _b = env
            .start(env.builder("b").listener(SlowListener {
                started: Arc::new(AtomicU32::new(0)),
                seen: Arc::clone(&seen),
                server: "b".into(),
            }))
            .await;
        let mut got: Vec<u32> = Vec::new();
        assert!(
            eventually(WAIT, || {
                got = seen.seen().iter().map(|s| s.event.n).collect();
                got.sort_unstable();
                got.dedup();
                got.len() == N as usize
            })
            .await,
            "every message handled, some maybe twice: {got:?}"
        );
        env.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_durable_message_is_refused_after_the_send_timeout() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        let mut env = TestEnv::new(&harness);
        let exchange = address::<Ping>(&env);
        let (connection, channel) = harness.raw_channel_with_exchange(&exchange, true).await;
        // A queue that takes one message and nacks publishes beyond that.
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-length".into(), AMQPValue::LongInt(1));
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        tap(&channel, &exchange, arguments).await;
        // A nack is published again (on a new channel) until the send timeout,
        // as a full queue is waited on elsewhere; then it is `Refused`.
        let manager = env
            .start(env.builder("a").send_timeout(Duration::from_secs(2)))
            .await;
        manager
            .send_event(&Ping {
                n: 1,
                text: "fits".into(),
            })
            .await
            .expect("the first message fits");
        let refused = manager
            .send_event(&Ping {
                n: 2,
                text: "full".into(),
            })
            .await;
        match refused {
            Err(Error::Refused {
                provider, address, ..
            }) => {
                assert_eq!(provider, "amqp");
                assert_eq!(address, exchange);
            }
            other => panic!("expected Error::Refused, got {other:?}"),
        }
        // The channel survives a nack.
        let _ = connection.close(200, "done".into()).await;
        manager
            .send_event(&Ping {
                n: 3,
                text: "no queue now".into(),
            })
            .await
            .expect("sending goes on after a nack");
        cleanup(
            &harness,
            &[QueueSpec::new(&exchange, "none", true, false, "a")],
        )
        .await;
        env.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_to_an_event_nobody_listens_to_is_fine() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        let mut env = TestEnv::new(&harness);
        let manager = env.start(env.builder("a")).await;
        for n in 0..3 {
            manager
                .send_event(&Ping {
                    n,
                    text: "nobody".into(),
                })
                .await
                .expect("durable send without queues");
            manager
                .send_event(&Pong::Miss)
                .await
                .expect("transient send without queues");
        }
        let provider = manager.provider();
        let long = "x".repeat(300);
        let route = Route::new(&long, true);
        let too_long = provider.publish(route, Envelope::default()).await;
        assert!(
            matches!(too_long, Err(Error::Provider { .. })),
            "{too_long:?}"
        );
        manager
            .send_event(&Ping {
                n: 9,
                text: "still fine".into(),
            })
            .await
            .expect("send after an error");
        let events = [address::<Ping>(&env), address::<Pong>(&env)];
        harness.delete(&[], &events).await;
        env.finish().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_recovers_when_an_exchange_is_deleted_under_it() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        let mut env = TestEnv::new(&harness);
        let manager = env.start(env.builder("a")).await;
        let ping = |n| Ping {
            n,
            text: "again".into(),
        };
        manager.send_event(&ping(0)).await.expect("first send");
        manager.send_event(&Pong::Miss).await.expect("first send");
        let events = [address::<Ping>(&env), address::<Pong>(&env)];
        // Someone deletes the exchanges; the broker then closes the publishing
        // channels on the next sends to them.
        harness.delete(&[], &events).await;
        for round in 1..=3 {
            let durable = manager.send_event(&ping(round)).await;
            let transient = manager.send_event(&Pong::Miss).await;
            if round == 3 {
                durable.expect("durable sends work again");
                transient.expect("transient sends work again");
            }
        }
        let exchanges: Vec<String> = list_exchanges(&env.env)
            .await
            .into_iter()
            .map(|(name, _, _)| name)
            .collect();
        for event in &events {
            assert!(
                exchanges.contains(event),
                "{event} declared again: {exchanges:?}"
            );
        }
        harness.delete(&[], &events).await;
        env.finish().await;
    })
    .await;
}

/// Takes 0 to 4 ms per event, so acks come out of order; fails every 97th event
/// for good (dead-lettered after retries with backoff, holding a hole in the
/// acknowledgements meanwhile).
#[event_listener(Work, name = "Jitter")]
struct Jitter {
    handled: Arc<std::sync::Mutex<Vec<u32>>>,
}

impl EventListener<Work> for Jitter {
    async fn on(&self, event: Work, _: &Context) -> ListenerResult {
        tokio::time::sleep(Duration::from_millis(u64::from(event.n * 7919 % 5))).await;
        if event.n.is_multiple_of(97) {
            return Err(format!("{} is unlucky", event.n).into());
        }
        self.handled.lock().expect("lock").push(event.n);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_acks_and_dead_letters_never_break_the_channel() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        const N: u32 = 1000;
        let mut env = TestEnv::new(&harness);
        let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
        let manager = env
            .start(env.builder("a").listener(Jitter {
                handled: Arc::clone(&handled),
            }))
            .await;
        let work: Vec<Work> = (0..N).map(|n| Work { n }).collect();
        let sends = work.iter().map(|w| manager.send_event(w));
        for sent in futures_util::future::join_all(sends).await {
            sent.expect("send");
        }
        let unlucky = (0..N).filter(|n| n.is_multiple_of(97)).count();
        let queue = format!("{}::Jitter", address::<Work>(&env));
        let letters = dead_letters(&manager, &queue, unlucky).await;
        assert_eq!(
            letters.len(),
            unlucky,
            "every unlucky event is dead-lettered"
        );
        assert!(
            eventually(WAIT, || handled.lock().expect("lock").len()
                >= N as usize - unlucky)
            .await
        );
        // A rejected ack would close the channel and bring deliveries back: none may
        // come twice.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut numbers = handled.lock().expect("lock").clone();
        numbers.sort_unstable();
        let expected: Vec<u32> = (0..N).filter(|n| !n.is_multiple_of(97)).collect();
        assert_eq!(numbers, expected, "each handled exactly once");
        let info = list_queues(&queue).await;
        let info = info.iter().find(|q| q.name == queue).expect("queue");
        assert_eq!((info.ready, info.unacked), (0, 0), "all settled: {info:?}");
        assert_eq!(manager.stats().dead_lettered, unlucky as u64);
        env.finish().await;
    })
    .await;
}

#[test]
fn whole_seconds_reads_rfc3339() {
    assert_eq!(whole_seconds("2024-05-01T10:00:00Z"), Some(1_714_557_600));
    assert_eq!(whole_seconds("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(whole_seconds("2024-05-01T10:00:00.5Z"), None);
}

/// `send_events`: a durable batch (pipelined, confirms awaited together) and a
/// transient one arrive whole, each event with its own message id, the durable
/// ones persistent; the manager counts every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_events_publishes_every_event_with_its_own_id() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        const N: u32 = 2500;
        let mut env = TestEnv::new(&harness);
        let work_seen = Recorder::new();
        let pongs = Recorder::new();
        let manager = env
            .start(
                env.builder("a")
                    .listener(Worker {
                        seen: Arc::clone(&work_seen),
                        server: "a".into(),
                    })
                    .listener(PongListener {
                        seen: Arc::clone(&pongs),
                    }),
            )
            .await;
        let work: Vec<Work> = (0..N).map(|n| Work { n }).collect();
        manager
            .send_events(&work)
            .await
            .expect("send_events (durable)");
        let scores: Vec<Pong> = (0..100).map(Pong::Score).collect();
        manager
            .send_events(scores.iter().chain([&Pong::Miss]))
            .await
            .expect("send_events (transient)");
        let got = work_seen.wait_for(N as usize, WAIT).await;
        let got_pongs = pongs.wait_for(101, WAIT).await;
        assert_eq!(got.len(), N as usize, "every durable event arrives");
        assert_eq!(got_pongs.len(), 101, "every transient event arrives");
        let mut numbers: Vec<u32> = got.iter().map(|s| s.event.n).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), N as usize, "no event twice, none missing");
        let ids: std::collections::HashSet<&String> = got
            .iter()
            .filter_map(|s| s.headers.get(header::MESSAGE_ID))
            .chain(
                got_pongs
                    .iter()
                    .filter_map(|s| s.headers.get(header::MESSAGE_ID)),
            )
            .collect();
        assert_eq!(ids.len(), N as usize + 101, "one message id each");
        assert_eq!(manager.stats().sent, u64::from(N) + 101);
        env.finish().await;
    })
    .await;
}

//! The behaviour suite on the STOMP provider (RabbitMQ's STOMP plugin), and what is
//! particular to STOMP: queue names on the broker, raw frames, broker errors,
//! heart-beats.
#![cfg(feature = "stomp")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use eventing::provider::{ConsumeOptions, Provider, Route};
use eventing::topology::QueueSpec;
use eventing::{Envelope, Error, header};
use eventing_stomp::StompProvider;
use eventing_stomp::frame::{Command, Frame};
use eventing_test::suite::{
    self, CacheListener, FlakyListener, Ping, PingListener, Recorder, Worker,
};
use eventing_tests::TestEnv;
use eventing_tests::stomp::{FreezingProxy, RawStomp, StompHarness, queue_names, rabbitmqctl};
use futures_util::StreamExt;

eventing_test::conformance_tests!(eventing_tests::stomp::StompHarness::from_env());

/// Runs a test body with a time limit.
async fn bounded(body: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(90), body)
        .await
        .expect("test timed out after 90 s");
}

/// Queues on the broker follow the contract: `<event>::<listener>` for competing
/// listeners, `<event>::<listener>-<server>` for per-process ones, each with its
/// `.dlq`; the event is a durable fanout exchange; the per-process queue goes
/// away with its server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_names_on_the_broker_follow_the_rule() {
    bounded(async {
        let harness = StompHarness::from_env();
        let mut env = TestEnv::new(&harness);
        let seen = Recorder::new();
        let manager = env
            .start(
                env.builder("a")
                    .listener(Worker {
                        seen: Arc::clone(&seen),
                        server: "a".into(),
                    })
                    .listener(CacheListener {
                        seen: Arc::clone(&seen),
                        server: "a".into(),
                    }),
            )
            .await;
        let event = format!("suite.{}.Work", env.env);
        let all = vec![
            format!("{event}::Cache-a"),
            format!("{event}::Cache-a.dlq"),
            format!("{event}::Worker"),
            format!("{event}::Worker.dlq"),
        ];
        assert_eq!(queue_names(&env.env).await, all);
        let exchanges = rabbitmqctl(&[
            "list_exchanges",
            "--no-table-headers",
            "name",
            "type",
            "durable",
        ])
        .await;
        assert!(
            exchanges
                .lines()
                .any(|line| line == format!("{event}\tfanout\ttrue")),
            "{exchanges}"
        );

        manager.shutdown().await.expect("shutdown");
        let mut left = Vec::new();
        for _ in 0..100 {
            left = queue_names(&env.env).await;
            if !left.contains(&all[0]) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            left,
            all[1..],
            "the per-process queue went away with its server"
        );
        harness.delete(&all, &[event]).await;
    })
    .await;
}

/// A frame sent by another STOMP client, with no headers and a body that is not
/// JSON, is dead-lettered with the decode error; the listener never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_raw_send_is_dead_lettered() {
    bounded(async {
        let harness = StompHarness::from_env();
        let mut env = TestEnv::new(&harness);
        let calls = Arc::new(AtomicU32::new(0));
        let manager = env
            .start(env.builder("a").listener(FlakyListener {
                calls: Arc::clone(&calls),
                seen: Recorder::new(),
            }))
            .await;
        let mut raw = RawStomp::connect(&harness).await;
        let answer = raw
            .request(
                Frame::new(Command::Send)
                    .header("destination", format!("/exchange/suite.{}.Flaky", env.env))
                    .with_body("not json"),
            )
            .await;
        assert_eq!(answer.command, Command::Receipt, "{answer:?}");

        let queue = format!("suite.{}.Flaky::Flaky", env.env);
        let letters = suite::dead_letters(&manager, &queue, 1).await;
        assert_eq!(letters.len(), 1, "dead-lettered");
        let letter = &letters[0];
        let reason = letter.headers.get(header::DEAD_LETTER_REASON).unwrap_or("");
        assert!(reason.starts_with("undecodable body"), "reason: {reason}");
        assert_eq!(
            letter.headers.get(header::DEAD_LETTER_QUEUE),
            Some(queue.as_str())
        );
        assert_eq!(&letter.body[..], b"not json");
        assert_eq!(
            letter.headers.get(header::MESSAGE_ID),
            None,
            "nothing invented"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0, "the listener never saw it");
        // Listing left it in place.
        assert_eq!(suite::dead_letters(&manager, &queue, 1).await.len(), 1);
        env.finish().await;
    })
    .await;
}

/// An `ERROR` frame answering a durable send is a typed error with the broker's
/// `message` header and body; the next send opens a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_frame_is_a_typed_error_with_the_broker_message() {
    bounded(async {
        let harness = StompHarness::from_env();
        let mut env = TestEnv::new(&harness);
        let manager = env.start(env.builder("a")).await;
        let address = format!("suite.{}.Ping", env.env);
        let ping = Ping {
            n: 1,
            text: "x".into(),
        };
        manager
            .send_event(&ping)
            .await
            .expect("the first send declares the exchange");

        // Behind the provider's back, the exchange disappears.
        harness.delete(&[], std::slice::from_ref(&address)).await;
        let error = manager.send_event(&ping).await.expect_err("no exchange");
        match &error {
            Error::Refused {
                provider,
                address: refused,
                message_id,
                reason,
            } => {
                assert_eq!(*provider, "stomp");
                assert_eq!(refused, &address);
                assert_eq!(message_id.len(), 36, "the envelope's id");
                assert!(
                    reason.starts_with("not_found: "),
                    "the message header: {reason}"
                );
                assert!(
                    reason.contains(&format!("NOT_FOUND - no exchange '{address}'")),
                    "the body: {reason}"
                );
            }
            other => panic!("expected Error::Refused, got {other:?}"),
        }

        let mut admin = harness.admin().await;
        admin
            .declare_exchange(&address, true)
            .await
            .expect("declare");
        admin.close().await;
        manager
            .send_event(&ping)
            .await
            .expect("the next send works on a new session");
        harness.delete(&[], &[address]).await;
        env.finish().await;
    })
    .await;
}

/// Wrong credentials: a typed error with the broker's words, never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_login_names_the_reason_not_the_password() {
    bounded(async {
        let harness = StompHarness::from_env();
        let mut config = harness.config();
        config.passcode = Some("wrong-secret-42".into());
        let error = StompProvider::with_config(config, "a", Duration::from_secs(5))
            .await
            .expect_err("refused");
        let text = error.to_string();
        assert!(!text.contains("wrong-secret-42"), "{text}");
        assert!(
            !format!("{error:?}").contains("wrong-secret-42"),
            "{error:?}"
        );
        assert!(text.contains("refused the STOMP session"), "{text}");
        assert!(
            text.contains("Access refused"),
            "the broker's words: {text}"
        );
    })
    .await;
}

/// Heart-beats flow both ways: an idle consumer session with a 500 ms period
/// outlives several periods (RabbitMQ closes sessions whose client is silent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_idle_sessions_alive() {
    bounded(async {
        let harness = StompHarness::from_env();
        let mut env = TestEnv::new(&harness);
        let url = harness.broker_url();
        let separator = if url.contains('?') { '&' } else { '?' };
        let seen = Recorder::new();
        let manager = env
            .start(
                env.builder("a")
                    .url(format!("{url}{separator}heartbeat=500"))
                    .listener(PingListener {
                        seen: Arc::clone(&seen),
                        server: "a".into(),
                    }),
            )
            .await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        manager
            .send_event(&Ping {
                n: 1,
                text: "after a quiet while".into(),
            })
            .await
            .expect("send");
        assert_eq!(
            seen.wait_for(1, Duration::from_secs(20)).await.len(),
            1,
            "the idle consumer session is still there"
        );
        env.finish().await;
    })
    .await;
}

/// A broker that goes silent (a network partition) is a lost connection after
/// the heart-beat window: the consumer stream yields `Unavailable` and ends, and
/// sends fail with `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_broker_is_a_lost_connection() {
    bounded(async {
        let harness = StompHarness::from_env();
        let env = TestEnv::new(&harness);
        let mut config = harness.config();
        let proxy = FreezingProxy::start((config.host.clone(), config.port)).await;
        config.host = "127.0.0.1".into();
        config.port = proxy.port;
        config.heartbeat = Duration::from_millis(500);
        config.connect_timeout = Duration::from_millis(1000);
        let provider = StompProvider::with_config(config, "a", Duration::from_secs(4))
            .await
            .expect("connect through the proxy");
        let event = format!("suite.{}.Silence", env.env);
        let queue = QueueSpec::new(&event, "Watcher", false, true, "a");
        provider
            .declare(std::slice::from_ref(&queue))
            .await
            .expect("declare");
        let mut consumer = provider
            .subscribe(&queue, ConsumeOptions::new(10))
            .await
            .expect("subscribe");
        let route = || Route::new(&event, true);
        let envelope = || Envelope::new(&event, eventing::codec::JSON, Bytes::from_static(b"{}"));
        provider
            .publish(route(), envelope())
            .await
            .expect("publish");
        let first = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery within 10 s");
        let delivery = first.expect("stream open").expect("a delivery");
        delivery.acker.ack(delivery.tag);

        proxy.freeze();
        let frozen = tokio::time::Instant::now();
        let next = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("the consumer notices within 10 s");
        assert!(
            matches!(
                next,
                Some(Err(Error::Unavailable {
                    provider: "stomp",
                    ..
                }))
            ),
            "{next:?}"
        );
        let noticed = frozen.elapsed();
        assert!(
            noticed >= Duration::from_millis(900) && noticed < Duration::from_secs(5),
            "noticed after {noticed:?}, the window is 1 s"
        );
        let end = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("the stream ends");
        assert!(end.is_none(), "then the stream ends");

        let error = provider
            .publish(route(), envelope())
            .await
            .expect_err("no broker behind the partition");
        assert!(
            matches!(
                error,
                Error::Unavailable {
                    provider: "stomp",
                    ..
                }
            ),
            "{error:?}"
        );
        drop(consumer);
        let _ = provider.close().await;
        drop(proxy);
        harness
            .delete(&[queue.name.clone(), queue.dead_letter_queue()], &[event])
            .await;
    })
    .await;
}

/// The next delivery of a consumer, within 10 s.
async fn next_delivery(
    consumer: &mut Box<dyn eventing::provider::Consumer>,
) -> eventing::provider::Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("stream open")
        .expect("a delivery")
}

/// Dropping a consumer returns the messages it had not acknowledged to the queue:
/// the next consumer gets them, marked redelivered; the acknowledged one is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_consumer_leaves_unacked_messages_for_redelivery() {
    bounded(async {
        let harness = StompHarness::from_env();
        let env = TestEnv::new(&harness);
        let provider = StompProvider::with_config(harness.config(), "a", Duration::from_secs(10))
            .await
            .expect("connect");
        let event = format!("suite.{}.Keep", env.env);
        let queue = QueueSpec::new(&event, "Keeper", true, false, "a");
        provider
            .declare(std::slice::from_ref(&queue))
            .await
            .expect("declare");
        let mut sent = Vec::new();
        for n in 0..3 {
            let envelope = Envelope::new(
                &event,
                eventing::codec::JSON,
                Bytes::from(format!("{{\"n\":{n}}}")),
            );
            sent.push(envelope.message_id().to_string());
            let route = Route::new(&event, true);
            provider.publish(route, envelope).await.expect("publish");
        }
        let options = || ConsumeOptions::new(10);
        let mut first = provider
            .subscribe(&queue, options())
            .await
            .expect("subscribe");
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(next_delivery(&mut first).await);
        }
        let ids: Vec<&str> = got.iter().map(|d| d.envelope.message_id()).collect();
        assert_eq!(ids, sent, "in order, headers mapped back");
        assert!(got.iter().all(|d| !d.redelivered));
        got[0].acker.ack(got[0].tag);
        drop(got);
        drop(first);

        let mut second = provider
            .subscribe(&queue, options())
            .await
            .expect("subscribe");
        let again = [
            next_delivery(&mut second).await,
            next_delivery(&mut second).await,
        ];
        let ids: Vec<&str> = again.iter().map(|d| d.envelope.message_id()).collect();
        assert_eq!(ids, sent[1..], "the unacknowledged ones come back");
        assert!(again.iter().all(|d| d.redelivered), "marked redelivered");
        for delivery in &again {
            delivery.acker.ack(delivery.tag);
        }
        let nothing = tokio::time::timeout(Duration::from_millis(500), second.next()).await;
        assert!(nothing.is_err(), "the acknowledged one is gone");
        drop(second);
        provider.close().await.expect("close");
        harness
            .delete(&[queue.name.clone(), queue.dead_letter_queue()], &[event])
            .await;
    })
    .await;
}

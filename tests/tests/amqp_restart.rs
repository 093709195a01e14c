//! Broker restarts: durable events and dead letters survive them, and running
//! managers carry on after them. A test binary of its own: it restarts the RabbitMQ
//! application (`rabbitmqctl stop_app` / `start_app`, needs root), which drops every
//! connection to the broker; its tests take turns.
#![cfg(feature = "amqp")]

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use eventing::{Event, header};
use eventing_test::suite::{
    CacheListener, Flaky, FlakyListener, Recorder, Work, Worker, dead_letters, send_raw,
};
use eventing_tests::TestEnv;
use eventing_tests::amqp::{AmqpHarness, list_queues, restart_broker_app};

/// One restart at a time.
static RESTARTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Messages ready in the queue named exactly `queue`.
async fn ready(queue: &str) -> Option<u64> {
    list_queues(queue)
        .await
        .into_iter()
        .find(|q| q.name == queue)
        .map(|q| q.ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_durable_events_survive_a_broker_restart() {
    const N: u32 = 500;
    let _turn = RESTARTS.lock().await;
    let harness = AmqpHarness::from_env();
    let test = async {
        let mut env = TestEnv::new(&harness);
        let seen = Recorder::new();
        let worker = |server: &str| Worker {
            seen: Arc::clone(&seen),
            server: server.into(),
        };
        let calls = Arc::new(AtomicU32::new(0));
        let flaky = || FlakyListener {
            calls: Arc::clone(&calls),
            seen: Recorder::new(),
        };
        let queue = format!(
            "{}::Worker",
            Work::descriptor().name().replace("{env}", &env.env)
        );
        let flaky_queue = format!(
            "{}::Flaky",
            Flaky::descriptor().name().replace("{env}", &env.env)
        );

        // Declare the queue, then send with no consumer running.
        let sender = env
            .builder("sender")
            .listener(worker("sender"))
            .build()
            .await
            .expect("build");
        let queues = sender.topology().expect("topology").queues;
        sender.provider().declare(&queues).await.expect("declare");
        let events: Vec<Work> = (0..N).map(|n| Work { n }).collect();
        let sends = events.iter().map(|event| sender.send_event(event));
        for sent in futures_util::future::join_all(sends).await {
            sent.expect("confirmed by the broker");
        }
        sender.shutdown().await.expect("shutdown");
        assert_eq!(ready(&queue).await, Some(u64::from(N)));

        // And one dead letter, stored before the restart.
        let dead = env.start(env.builder("dead").listener(flaky())).await;
        send_raw::<Flaky>(&dead, b"not json", None).await;
        assert_eq!(dead_letters(&dead, &flaky_queue, 1).await.len(), 1);
        dead.shutdown().await.expect("shutdown");

        restart_broker_app(&harness).await;
        assert_eq!(
            ready(&queue).await,
            Some(u64::from(N)),
            "persistent messages in a durable queue survive"
        );

        let receiver = env
            .start(
                env.builder("receiver")
                    .listener(worker("receiver"))
                    .listener(flaky()),
            )
            .await;
        let got = seen.wait_for(N as usize, Duration::from_secs(30)).await;
        let mut numbers: Vec<u32> = got.iter().map(|s| s.event.n).collect();
        numbers.sort_unstable();
        assert_eq!(
            numbers,
            (0..N).collect::<Vec<_>>(),
            "all handled, once each"
        );

        let letters = dead_letters(&receiver, &flaky_queue, 1).await;
        assert_eq!(letters.len(), 1, "the dead letter survived the restart");
        assert_eq!(&letters[0].body[..], b"not json");
        let reason = letters[0]
            .headers
            .get(header::DEAD_LETTER_REASON)
            .unwrap_or("");
        assert!(reason.starts_with("undecodable body"), "reason: {reason}");
        env.finish().await;
    };
    tokio::time::timeout(Duration::from_secs(240), test)
        .await
        .expect("the restart test timed out after 240 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_manager_carries_on_after_a_broker_restart() {
    const N: u32 = 50;
    let _turn = RESTARTS.lock().await;
    let harness = AmqpHarness::from_env();
    let test = async {
        let mut env = TestEnv::new(&harness);
        let workers = Recorder::new();
        let caches = Recorder::new();
        let manager = env
            .start(
                env.builder("a")
                    .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1))
                    .listener(Worker {
                        seen: Arc::clone(&workers),
                        server: "a".into(),
                    })
                    .listener(CacheListener {
                        seen: Arc::clone(&caches),
                        server: "a".into(),
                    }),
            )
            .await;
        for n in 0..N {
            manager.send_event(&Work { n }).await.expect("send before");
        }
        assert_eq!(
            workers
                .wait_for(N as usize, Duration::from_secs(20))
                .await
                .len(),
            N as usize
        );
        assert_eq!(
            caches
                .wait_for(N as usize, Duration::from_secs(20))
                .await
                .len(),
            N as usize
        );

        restart_broker_app(&harness).await;

        // The listeners subscribe again on their own; the per-process queue, deleted
        // with the old connection, is declared anew. Sends fail while the
        // connection is down, then work again.
        let cache_queue = format!(
            "{}::Cache-a",
            Work::descriptor().name().replace("{env}", &env.env)
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while ready(&cache_queue).await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the per-process queue was not declared again within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut n = N;
        let mut failures = 0;
        while n < 2 * N {
            match manager.send_event(&Work { n }).await {
                Ok(()) => n += 1,
                Err(error) => {
                    failures += 1;
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "sends still fail after 60 s: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        for (recorder, listener) in [(&workers, "competing"), (&caches, "per-process")] {
            let all = recorder
                .wait_for(2 * N as usize, Duration::from_secs(30))
                .await;
            let mut numbers: Vec<u32> = all.iter().map(|s| s.event.n).collect();
            numbers.sort_unstable();
            numbers.dedup();
            assert_eq!(
                numbers,
                (0..2 * N).collect::<Vec<_>>(),
                "the {listener} listener gets every event ({failures} sends failed and were retried)"
            );
        }
        let stats = manager.stats();
        assert!(
            stats.reconnects >= 2,
            "both listeners subscribed again: {stats:?}"
        );
        env.finish().await;
    };
    tokio::time::timeout(Duration::from_secs(240), test)
        .await
        .expect("the restart test timed out after 240 s");
}

//! Durable events survive a broker restart (its own test binary: it restarts the
//! broker application, which drops every connection to it).
#![cfg(feature = "stomp")]

use std::sync::Arc;
use std::time::Duration;

use eventing_test::suite::{Recorder, Work, Worker};
use eventing_tests::TestEnv;
use eventing_tests::stomp::{StompHarness, restart_broker_app};

/// Durable events sent (each confirmed by a RECEIPT) while no consumer runs are
/// all handled by a manager started after `rabbitmqctl stop_app && start_app`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_events_survive_a_broker_restart() {
    const N: u32 = 25;
    let run = async {
        let harness = StompHarness::from_env();
        let mut env = TestEnv::new(&harness);
        let seen = Recorder::new();

        // A server declares its durable queue, then goes away.
        let first = env
            .start(env.builder("a").listener(Worker {
                seen: Arc::clone(&seen),
                server: "a".into(),
            }))
            .await;
        first.shutdown().await.expect("shutdown");

        // Sent with nobody listening; each send returns after the broker's RECEIPT.
        let sender = env.start(env.builder("sender")).await;
        for n in 0..N {
            sender
                .send_event(&Work { n })
                .await
                .expect("receipted send");
        }
        sender.shutdown().await.expect("shutdown");

        restart_broker_app(&harness).await;

        let _second = env
            .start(env.builder("b").listener(Worker {
                seen: Arc::clone(&seen),
                server: "b".into(),
            }))
            .await;
        let got = seen.wait_for(N as usize, Duration::from_secs(60)).await;
        let mut numbers: Vec<u32> = got.iter().map(|s| s.event.n).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (0..N).collect::<Vec<_>>(), "every event, once");
        assert!(got.iter().all(|s| s.server == "b"));
        env.finish().await;
    };
    tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("restart test timed out after 300 s");
}

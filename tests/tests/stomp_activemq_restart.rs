//! ActiveMQ restarted under a backlog: durable events (`persistent:true`, sent with a
//! receipt) survive in their consumer queue; a transient one does not (ActiveMQ
//! keeps non-persistent messages in memory only). Restarts the broker through
//! `scripts/activemq.sh restart`, so it says why and does nothing when the script
//! did not start the broker that runs.
#![cfg(feature = "activemq")]

use std::collections::BTreeSet;
use std::time::Duration;

use eventing::Envelope;
use eventing::provider::{ConsumeOptions, Provider, Route};
use eventing::topology::QueueSpec;
use eventing_stomp::StompProvider;
use eventing_tests::activemq::ActiveMqHarness;
use eventing_tests::{Harness, TestEnv};
use futures_util::StreamExt;

const DURABLE: usize = 50;

#[test]
fn persistent_messages_survive_a_broker_restart() {
    eventing_test::run(async {
        let harness = ActiveMqHarness::from_env();
        let env = TestEnv::new(&harness);
        let connect = || StompProvider::with_config(harness.config(), "a", Duration::from_secs(20));
        let provider = connect().await.expect("connect");
        let event = format!("suite.{}.Kept", env.env);
        let queue = QueueSpec::new(&event, "Keeper", true, false, "a");
        provider
            .declare(std::slice::from_ref(&queue))
            .await
            .expect("declare");
        let mut durable = BTreeSet::new();
        for n in 0..DURABLE {
            let envelope = Envelope::new(
                &event,
                eventing::codec::JSON,
                format!("{{\"n\":{n}}}").into(),
            );
            durable.insert(envelope.message_id().to_string());
            provider
                .publish(Route::new(&event, true), envelope)
                .await
                .expect("durable publish, receipted");
        }
        let transient = Envelope::new(&event, eventing::codec::JSON, "{\"n\":-1}".into());
        let transient_id = transient.message_id().to_string();
        provider
            .publish(Route::new(&event, false), transient)
            .await
            .expect("transient publish");
        // A durable send after the transient one: once its receipt is back, the
        // broker has read the transient one too.
        let last = Envelope::new(&event, eventing::codec::JSON, "{\"n\":50}".into());
        durable.insert(last.message_id().to_string());
        provider
            .publish(Route::new(&event, true), last)
            .await
            .expect("durable publish");
        provider.close().await.expect("close");

        if !harness.restart_broker().await {
            println!("skipped: scripts/activemq.sh did not start the broker on this port");
            return;
        }

        let provider = connect().await.expect("connect after the restart");
        let mut consumer = provider
            .subscribe(&queue, ConsumeOptions::new(100))
            .await
            .expect("subscribe");
        let mut got = BTreeSet::new();
        let mut transient_seen = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while got.len() < durable.len() && tokio::time::Instant::now() < deadline {
            let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
            else {
                break;
            };
            let id = delivery.envelope.message_id().to_string();
            transient_seen |= id == transient_id;
            got.insert(id);
            delivery.acker.ack(delivery.tag);
        }
        // Anything else still queued (the transient one, if it had survived).
        while let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
        {
            transient_seen |= delivery.envelope.message_id() == transient_id;
            delivery.acker.ack(delivery.tag);
        }
        got.remove(&transient_id);
        assert_eq!(got, durable, "every durable event survived the restart");
        assert!(
            !transient_seen,
            "ActiveMQ drops non-persistent messages on restart"
        );
        drop(consumer);
        provider.close().await.expect("close");
        harness.cleanup(&[queue], &[event]).await;
    });
}

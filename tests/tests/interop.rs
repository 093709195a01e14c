//! The AMQP and STOMP providers on one RabbitMQ: an event sent through one arrives
//! at a listener of the other, headers intact.
#![cfg(all(feature = "amqp", feature = "stomp"))]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventing::pipeline::{EnvelopePipeline, SessionPipeline};
use eventing::{BoxError, Envelope, EventDescriptor, EventManagerBuilder};
use eventing_test::suite::{Ping, PingListener, Recorder};
use eventing_tests::amqp::AmqpHarness;
use eventing_tests::stomp::StompHarness;
use eventing_tests::{Harness, TestEnv};

/// Adds headers that need care on both protocols and remembers what it sent.
struct Stamp {
    sent: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

impl EnvelopePipeline for Stamp {
    fn name(&self) -> &'static str {
        "interop-stamp"
    }

    fn send(&self, envelope: &mut Envelope, _: &EventDescriptor) -> Result<(), BoxError> {
        let headers = &mut envelope.headers;
        headers.insert("x-stamp", "line1\nline2:colon\\back\rcr");
        // Names RabbitMQ's STOMP plugin maps to AMQP properties.
        headers.insert("correlation-id", "corr-7");
        headers.insert("reply-to", "nobody");
        headers.insert("empty", "");
        let sent = envelope
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.sent.lock().expect("lock").push(sent);
        Ok(())
    }
}

/// `from` sends a durable event with a session; a listener behind `to` gets
/// exactly the headers that were sent.
async fn headers_cross(from: &str, to: &str) {
    let amqp = AmqpHarness::from_env();
    let stomp = StompHarness::from_env();
    let url = |name: &str| match name {
        "amqp" => amqp.url(""),
        _ => stomp.url(""),
    };
    // Cleanup goes through the STOMP harness (AMQP 0-9-1 deletes), whoever declared.
    let mut env = TestEnv::new(&stomp);
    let seen = Recorder::new();
    let _listener = env
        .start(
            env.builder("listener")
                .url(url(to))
                .pipeline(SessionPipeline)
                .listener(PingListener {
                    seen: Arc::clone(&seen),
                    server: to.into(),
                }),
        )
        .await;
    let sent = Arc::new(Mutex::new(Vec::new()));
    let builder: EventManagerBuilder = env
        .builder("sender")
        .url(url(from))
        .pipeline(SessionPipeline)
        .pipeline(Stamp {
            sent: Arc::clone(&sent),
        });
    let sender = env.start(builder).await;
    eventing::pipeline::with_session("session-42", async {
        sender
            .send_event(&Ping {
                n: 1,
                text: "héllo".into(),
            })
            .await
    })
    .await
    .expect("send");

    let got = seen.wait_for(1, Duration::from_secs(20)).await;
    // Clean up first, so a failed assertion leaves nothing on the broker.
    env.finish().await;

    assert_eq!(got.len(), 1, "{from} -> {to}: the event arrives");
    assert_eq!(got[0].event.text, "héllo");
    let sent = sent.lock().expect("lock")[0].clone();
    let mut expected: Vec<_> = sent.into_iter().collect();
    expected.sort();
    let mut received: Vec<_> = got[0].headers.clone().into_iter().collect();
    received.sort();
    assert_eq!(
        received, expected,
        "{from} -> {to}: the same headers, nothing more"
    );
    assert_eq!(got[0].session.as_deref(), Some("session-42"));
}

/// Sent through the AMQP provider, received by a STOMP listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_to_stomp() {
    tokio::time::timeout(Duration::from_secs(60), headers_cross("amqp", "stomp"))
        .await
        .expect("timed out");
}

/// Sent through the STOMP provider, received by an AMQP listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_to_amqp() {
    tokio::time::timeout(Duration::from_secs(60), headers_cross("stomp", "amqp"))
        .await
        .expect("timed out");
}

/// A default event sent through the STOMP provider reaches a plain AMQP client in
/// the AMQP provider's lean format: the event name in `type`, the timestamp in
/// `timestamp` (whole seconds), the message id in `message_id`, and in the headers
/// table only what a pipeline added; a STOMP listener reads it back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_sends_the_lean_format() {
    use eventing_tests::amqp::tap;
    use lapin::options::BasicGetOptions;
    use lapin::types::{FieldTable, ShortString};

    let test = async {
        let amqp = AmqpHarness::from_env();
        let stomp = StompHarness::from_env();
        let mut env = TestEnv::new(&stomp);
        let exchange = format!("suite.{}.Ping", env.env);
        let (connection, channel) = amqp.raw_channel_with_exchange(&exchange, true).await;
        let tap = tap(&channel, &exchange, FieldTable::default()).await;

        let seen = Recorder::new();
        let manager = env
            .start(
                env.builder("stomp")
                    .url(stomp.url(""))
                    .pipeline(SessionPipeline)
                    .listener(PingListener {
                        seen: Arc::clone(&seen),
                        server: "stomp".into(),
                    }),
            )
            .await;
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        eventing::pipeline::with_session(
            "s-lean",
            manager.send_event(&Ping {
                n: 7,
                text: "lean".into(),
            }),
        )
        .await
        .expect("send");
        // A durable send returns on the broker's receipt; poll briefly anyway.
        let mut message = None;
        for _ in 0..100 {
            message = channel
                .basic_get(tap.clone(), BasicGetOptions { no_ack: true })
                .await
                .expect("get");
            if message.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let message = message.expect("a message on the tap within 5 s");
        let properties = &message.delivery.properties;
        assert_eq!(
            properties.kind().as_ref().map(ShortString::as_str),
            Some(exchange.as_str()),
            "the event name is the AMQP type"
        );
        let timestamp = properties.timestamp().expect("timestamp property");
        assert!(
            timestamp >= before && timestamp <= before + 60,
            "seconds since the epoch: {timestamp}, sent at {before}"
        );
        let message_id = properties.message_id().as_ref().expect("message_id");
        assert_eq!(message_id.as_str().len(), 36);
        assert_eq!(
            properties.content_type().as_ref().map(ShortString::as_str),
            Some(eventing::codec::JSON)
        );
        let mut keys: Vec<String> = properties
            .headers()
            .as_ref()
            .map(|table| table.inner().keys().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        keys.sort();
        // The plugin copies a durable send's `receipt` into the table; no
        // `content-length` (a JSON body has no NUL), no `event`, no timestamp.
        assert_eq!(
            keys,
            ["receipt", eventing::header::SESSION_ID],
            "only the pipeline's header (and the receipt) in the table"
        );

        let got = seen.wait_for(1, Duration::from_secs(20)).await;
        let _ = connection.close(200, "done".into()).await;
        env.finish().await;
        assert_eq!(got.len(), 1);
        let headers = &got[0].headers;
        assert_eq!(headers.get(eventing::header::EVENT), Some(&exchange));
        assert_eq!(
            headers
                .get(eventing::header::MESSAGE_ID)
                .map(String::as_str),
            Some(message_id.as_str())
        );
        let at = std::time::UNIX_EPOCH + Duration::from_secs(timestamp);
        assert_eq!(
            headers.get(eventing::header::TIMESTAMP),
            Some(&eventing::header::rfc3339_seconds(at))
        );
        assert_eq!(got[0].session.as_deref(), Some("s-lean"));
    };
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("timed out");
}

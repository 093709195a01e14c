//! ActiveMQ beyond the kit: interop with a plain STOMP client (stomp.py, in a venv
//! `scripts/activemq.sh python` makes) both ways, the names on the broker, and a
//! `NACK`-free requeue. Skipped, saying why, only when there is no python3.
#![cfg(feature = "activemq")]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use eventing::provider::{ConsumeOptions, Provider, Route};
use eventing::topology::QueueSpec;
use eventing::{Envelope, header};
use eventing_stomp::StompProvider;
use eventing_test::suite::{Ping, PingListener, Recorder};
use eventing_tests::TestEnv;
use eventing_tests::activemq::{ActiveMqHarness, stomp_python};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(20);

/// A plain stomp.py client: `send <port> <destination> <body>` sends one persistent
/// message with a receipt; `receive <port> <destination>` subscribes, prints
/// `ready` once the broker's RECEIPT for the SUBSCRIBE is back, then prints the
/// first message's headers and body as JSON and exits.
const CLIENT: &str = r#"
import json, sys, threading, stomp
mode, port, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conn = stomp.Connection12([("127.0.0.1", port)], heartbeats=(0, 0))
got = threading.Event()
subscribed = threading.Event()
class Listener(stomp.ConnectionListener):
    def on_receipt(self, frame):
        if frame.headers.get("receipt-id") == "subscribed":
            subscribed.set()
    def on_message(self, frame):
        print(json.dumps({"headers": frame.headers, "body": frame.body}), flush=True)
        got.set()
    def on_error(self, frame):
        print(json.dumps({"error": frame.headers, "body": frame.body}), flush=True)
        got.set()
conn.set_listener("", Listener())
conn.connect(wait=True)
if mode == "send":
    conn.send(dest, sys.argv[4], content_type="application/json",
              headers={"persistent": "true", "x-from": "stomp.py"}, receipt="sent")
    print("sent", flush=True)
else:
    # stomp.py does not wait for receipts: wait for the SUBSCRIBE's own, so the
    # broker has made the consumer queue before `ready` lets the test send.
    conn.subscribe(dest, id="plain", ack="client-individual", receipt="subscribed")
    if not subscribed.wait(20):
        print(json.dumps({"error": {"reason": "no RECEIPT for SUBSCRIBE in 20 s"}}), flush=True)
        sys.exit(1)
    print("ready", flush=True)
    got.wait(30)
conn.disconnect()
"#;

/// Runs the client; `None` (after saying why) when there is no python3.
async fn python() -> Option<String> {
    match stomp_python().await {
        Ok(python) => Some(python),
        Err(reason) if reason.contains("python3 is not installed") => {
            println!("skipped: {reason}");
            None
        }
        Err(reason) => panic!("{reason}"),
    }
}

fn port(harness: &ActiveMqHarness) -> String {
    harness.config().port.to_string()
}

fn run<F: std::future::Future>(future: F) -> F::Output {
    eventing_test::run(future)
}

/// A plain stomp.py SEND to the event's address (its virtual topic) reaches an
/// eventing listener, with the sender's header.
#[test]
fn a_plain_stomp_send_reaches_an_eventing_listener() {
    run(async {
        let Some(python) = python().await else {
            return;
        };
        let harness = ActiveMqHarness::from_env();
        let mut env = TestEnv::new(&harness);
        let seen = Recorder::new();
        env.start(env.builder("a").listener(PingListener {
            seen: Arc::clone(&seen),
            server: "a".into(),
        }))
        .await;
        let address =
            eventing_stomp::activemq::event_destination(&format!("suite.{}.Ping", env.env));
        assert!(
            address.starts_with("/topic/VirtualTopic.suite."),
            "{address}"
        );
        let out = tokio::time::timeout(
            WAIT,
            tokio::process::Command::new(&python)
                .args(["-c", CLIENT, "send", &port(&harness), &address])
                .arg(r#"{"n":7,"text":"from stomp.py"}"#)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("stomp.py within 20 s")
        .expect("run stomp.py");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("sent"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = seen.wait_for(1, WAIT).await;
        assert_eq!(got.len(), 1, "the listener got the plain message");
        assert_eq!(
            got[0].event,
            Ping {
                n: 7,
                text: "from stomp.py".into()
            }
        );
        assert_eq!(
            got[0].headers.get("x-from").map(String::as_str),
            Some("stomp.py")
        );
        env.finish().await;
    });
}

/// An event sent by eventing is readable by a plain stomp.py subscriber of its own
/// consumer queue on the event's virtual topic, body and headers as sent.
#[test]
fn an_eventing_event_is_readable_by_a_plain_stomp_subscriber() {
    run(async {
        let Some(python) = python().await else {
            return;
        };
        let harness = ActiveMqHarness::from_env();
        let mut env = TestEnv::new(&harness);
        let manager = env.start(env.builder("a")).await;
        let event = format!("suite.{}.Ping", env.env);
        let queue = format!("/queue/Consumer.plain.VirtualTopic.{event}");
        let mut child = tokio::process::Command::new(&python)
            .args(["-c", CLIENT, "receive", &port(&harness), &queue])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run stomp.py");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("stomp.py ready within 20 s")
            .expect("read")
            .expect("a line");
        assert_eq!(ready, "ready");
        let ping = Ping {
            n: 3,
            text: "to a plain client: a:b\\c".into(),
        };
        manager.send_event(&ping).await.expect("send");
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("a message within 20 s")
            .expect("read")
            .expect("a line");
        let message: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert!(message.get("error").is_none(), "{line}");
        let body = message["body"].as_str().expect("body");
        assert_eq!(serde_json::from_str::<Ping>(body).expect("a Ping"), ping);
        let headers = &message["headers"];
        // The event name is the JMS type; this second's timestamp is the broker's
        // own (JMSTimestamp, milliseconds).
        assert_eq!(headers["type"], event.as_str(), "{line}");
        assert!(headers.get("event").is_none(), "{line}");
        assert!(
            headers["timestamp"]
                .as_str()
                .and_then(|ms| ms.parse::<u64>().ok())
                .is_some(),
            "{line}"
        );
        assert_eq!(headers["content-type"], "application/json", "{line}");
        assert_eq!(
            headers["persistent"], "true",
            "durable events are persistent"
        );
        assert!(
            headers["x-eventing-message-id"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
            "the envelope's message id, escaped (ActiveMQ sets its own `message-id`): {line}"
        );
        let _ = tokio::time::timeout(WAIT, child.wait()).await;
        env.finish().await;
    });
}

/// A requeue never sends `NACK` (ActiveMQ would move the message to `ActiveMQ.DLQ`):
/// the delivery comes again on the same consumer, marked redelivered, and is gone
/// once acknowledged; nothing reaches a broker dead-letter queue.
#[test]
fn requeue_hands_the_message_out_again_without_nack() {
    run(async {
        let harness = ActiveMqHarness::from_env();
        let env = TestEnv::new(&harness);
        let provider = StompProvider::with_config(harness.config(), "a", Duration::from_secs(10))
            .await
            .expect("connect");
        let event = format!("suite.{}.Again", env.env);
        let queue = QueueSpec::new(&event, "Again", true, false, "a");
        provider
            .declare(std::slice::from_ref(&queue))
            .await
            .expect("declare");
        let envelope = Envelope::new(&event, eventing::codec::JSON, "{}".into());
        let id = envelope.message_id().to_string();
        provider
            .publish(Route::new(&event, true), envelope)
            .await
            .expect("publish");
        let mut consumer = provider
            .subscribe(&queue, ConsumeOptions::new(5))
            .await
            .expect("subscribe");
        let next = async |consumer: &mut Box<dyn eventing::provider::Consumer>| {
            tokio::time::timeout(WAIT, consumer.next())
                .await
                .expect("a delivery within 20 s")
                .expect("stream open")
                .expect("a delivery")
        };
        let first = next(&mut consumer).await;
        assert_eq!(first.envelope.message_id(), id);
        assert!(!first.redelivered);
        first.acker.requeue(first.tag);
        let again = next(&mut consumer).await;
        assert_eq!(again.envelope.message_id(), id);
        assert_eq!(
            again.envelope.headers.get(header::EVENT),
            Some(event.as_str())
        );
        assert!(again.redelivered, "marked redelivered");
        again.acker.ack(again.tag);
        let nothing = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
        assert!(nothing.is_err(), "acknowledged: gone");
        drop(consumer);
        assert_eq!(provider.dead_letter_depth(&queue).await.expect("depth"), 0);
        provider.close().await.expect("close");
    });
}

/// The contract's names next to the broker's: `topology()` shows the consumer queue
/// and the topic for each queue.
#[test]
fn topology_shows_the_broker_names() {
    run(async {
        let harness = ActiveMqHarness::from_env();
        let mut env = TestEnv::new(&harness);
        let seen = Recorder::new();
        let manager = env
            .start(env.builder("web.1").listener(PingListener {
                seen: Arc::clone(&seen),
                server: "web.1".into(),
            }))
            .await;
        let shown = manager.topology().expect("topology").to_string();
        let event = format!("suite.{}.Ping", env.env);
        assert!(
            shown.contains(&format!(
                "/queue/Consumer.Recorder.VirtualTopic.{event} fed by /topic/VirtualTopic.{event}"
            )),
            "{shown}"
        );
        env.finish().await;
    });
}

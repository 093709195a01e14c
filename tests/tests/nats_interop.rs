//! NATS beyond the kit: names NATS forbids, mapped on the server; interop with plain
//! async-nats publishers and subscribers.
#![cfg(feature = "nats")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use bytes::Bytes;
use eventing::{Context, Event, EventListener, ListenerResult, event, event_listener, header};
use eventing_nats::names;
use eventing_test::suite::{Ping, PingListener, Recorder, eventually};
use eventing_tests::TestEnv;
use eventing_tests::nats::{NatsHarness, request};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(20);

/// An event whose name holds `.`, `*` and `>`.
#[event(name = "natsnames.{env}.odd*name>x", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OddName {
    n: u32,
}

/// A per-process listener: its queue name holds the server name, with a space.
#[event_listener(OddName, name = "Odd:Listener", per_process = true)]
struct OddListener {
    seen: Arc<Mutex<Vec<u32>>>,
}

impl EventListener<OddName> for OddListener {
    async fn on(&self, event: OddName, _ctx: &Context) -> ListenerResult {
        self.seen.lock().expect("lock").push(event.n);
        Ok(())
    }
}

fn run<F: std::future::Future>(future: F) -> F::Output {
    eventing_test::run(future)
}

#[test]
fn forbidden_names_are_mapped_on_the_server() {
    run(async {
        let harness = NatsHarness::from_env();
        let mut env = TestEnv::new(&harness);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let manager = env
            .start(env.builder("web 1").listener(OddListener {
                seen: Arc::clone(&seen),
            }))
            .await;
        let event = format!("natsnames.{}.odd*name>x", env.env);
        let queue = format!("{event}::Odd:Listener-web 1");
        let topology = manager.topology().expect("topology");
        let shown = topology.to_string();
        assert!(shown.contains(&format!("event {event} durable")), "{shown}");
        assert!(
            shown.contains(&format!(
                "queue {queue} <- listener Odd:Listener (per process)"
            )),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("dead letters {queue}.dlq")),
            "{shown}"
        );

        for n in 0..3 {
            manager.send_event(&OddName { n }).await.expect("send");
        }
        let arrived = eventually(WAIT, || seen.lock().expect("lock").len() >= 3).await;
        assert!(
            arrived,
            "the odd events arrive: {:?}",
            seen.lock().expect("lock")
        );

        // On the server: the stream and the consumer under their mapped names.
        let client = harness.raw_client().await;
        let stream = names::stream(&event).expect("stream name");
        let consumer = names::consumer(&queue).expect("consumer name");
        assert!(names::is_valid_name(&stream) && names::is_valid_name(&consumer));
        // The topology shows the names the server uses beside eventing's.
        assert!(
            shown.contains(&format!(
                "; on the broker: consumer {consumer} on stream {stream}"
            )),
            "{shown}"
        );
        assert_eq!(
            names::event_of_stream(&stream).as_deref(),
            Some(event.as_str())
        );
        assert_eq!(
            names::queue_of_consumer(&consumer).as_deref(),
            Some(queue.as_str())
        );
        let info = request(
            &client,
            format!("$JS.API.STREAM.INFO.{stream}"),
            Bytes::new(),
        )
        .await
        .expect("stream info");
        assert!(info.get("error").is_none(), "stream {stream}: {info}");
        assert_eq!(info["config"]["subjects"][0], names::subject(&event));
        assert_eq!(info["config"]["storage"], "file");
        assert_eq!(info["config"]["retention"], "limits");
        let info = request(
            &client,
            format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
            Bytes::new(),
        )
        .await
        .expect("consumer info");
        assert!(info.get("error").is_none(), "consumer {consumer}: {info}");
        assert_eq!(info["config"]["durable_name"], consumer.as_str());
        assert_eq!(info["config"]["filter_subject"], names::subject(&event));
        assert!(
            info["config"]["inactive_threshold"].as_u64().unwrap_or(0) > 0,
            "a per-process queue goes away with its server: {info}"
        );
        println!(
            "nats names: event {event:?} -> stream {stream:?}, queue {queue:?} -> consumer {consumer:?}"
        );
        env.finish().await;
    });
}

#[test]
fn plain_publish_reaches_a_listener_and_plain_consumer_reads_an_event() {
    run(async {
        let harness = NatsHarness::from_env();
        let mut env = TestEnv::new(&harness);
        let pings = Recorder::new();
        let manager = env
            .start(env.builder("a").listener(PingListener {
                seen: Arc::clone(&pings),
                server: "a".into(),
            }))
            .await;
        let address = manager
            .address_of(Ping::descriptor())
            .expect("address")
            .to_string();
        let js = harness.raw_jetstream().await;

        // A plain consumer of the event's stream, created before the send.
        let stream = names::stream(&address).expect("stream");
        let raw = js
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some(format!("raw-{}", std::process::id())),
                    filter_subject: names::subject(&address),
                    ack_policy: AckPolicy::Explicit,
                    deliver_policy: DeliverPolicy::New,
                    ..Default::default()
                },
                &stream,
            )
            .await
            .expect("raw consumer");

        // eventing -> plain async-nats.
        let sent = Ping {
            n: 7,
            text: "from eventing".into(),
        };
        manager.send_event(&sent).await.expect("send");
        let mut batch = raw
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .expect("fetch");
        let message = tokio::time::timeout(WAIT, batch.next())
            .await
            .expect("a message in time")
            .expect("a message")
            .expect("no error");
        let body: serde_json::Value = serde_json::from_slice(&message.payload).expect("JSON body");
        assert_eq!(body["n"], 7);
        assert_eq!(body["text"], "from eventing");
        // The subject names the event, the body is JSON (the default content
        // type) and JetStream stores the time (the envelope's timestamp is the
        // current second), so none is repeated in headers; the message id is a
        // NATS header.
        assert_eq!(message.subject.as_str(), names::subject(&address));
        let headers = message.headers.as_ref().expect("headers");
        assert!(headers.get(header::EVENT).is_none());
        assert!(headers.get(header::CONTENT_TYPE).is_none());
        let id = headers.get(header::MESSAGE_ID).expect("message-id");
        assert_eq!(id.as_str().len(), 36, "a UUID: {id:?}");
        assert!(headers.get(header::TIMESTAMP).is_none());
        let published = message
            .info()
            .expect("JetStream metadata")
            .published
            .unix_timestamp();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        assert!(
            now.abs_diff(published.unsigned_abs()) < 20,
            "JetStream stored it just now: {published}, now {now}"
        );
        // Without `?dedupe=true` the server does not track message ids.
        assert!(headers.get("Nats-Msg-Id").is_none());
        message.ack().await.expect("ack");

        // plain async-nats -> eventing.
        let ack = js
            .publish(
                names::subject(&address),
                Bytes::from_static(b"{\"n\":42,\"text\":\"from a plain publish\"}"),
            )
            .await
            .expect("publish")
            .await
            .expect("publish ack");
        assert_eq!(ack.stream, stream);
        let got = pings.wait_for(2, WAIT).await;
        let numbers: Vec<u32> = got.iter().map(|s| s.event.n).collect();
        assert!(numbers.contains(&7) && numbers.contains(&42), "{numbers:?}");
        let plain = got.iter().find(|s| s.event.n == 42).expect("the plain one");
        assert_eq!(plain.event.text, "from a plain publish");
        env.finish().await;
    });
}

#[test]
fn dedupe_stores_a_publish_sent_twice_once() {
    use eventing::Envelope;
    use eventing::provider::{Provider, ProviderConfig, Route};
    run(async {
        let harness = NatsHarness::from_env();
        let join = if harness.server_url().contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{join}dedupe=true", harness.server_url());
        let config = ProviderConfig::new(url, "dedupe", Duration::from_secs(10));
        let provider = eventing_nats::NatsProvider::connect(config)
            .await
            .expect("connect");
        let event = format!("natsdedupe.{}.Ping", std::process::id());
        let body = Bytes::from_static(br#"{"n":1,"text":"once"}"#);
        let once = Envelope::new(&event, eventing::codec::JSON, body.clone());
        let other = Envelope::new(&event, eventing::codec::JSON, body);
        // The same message twice (a retry after a lost publish ack), then another.
        for envelope in [&once, &once, &other] {
            provider
                .publish(Route::new(&event, true), envelope.clone())
                .await
                .expect("publish");
        }
        let js = harness.raw_jetstream().await;
        let name = names::stream(&event).expect("stream name");
        let mut stream = js.get_stream(&name).await.expect("stream");
        let stored = stream.info().await.expect("stream info").state.messages;
        let first = stream.get_raw_message(1).await.expect("first message");
        js.delete_stream(&name).await.expect("delete stream");
        assert_eq!(stored, 2, "the repeated message is stored once");
        // The id travels once, as `Nats-Msg-Id` (the receiver restores `message-id`).
        assert_eq!(
            first.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some(once.message_id())
        );
        assert!(first.headers.get(header::MESSAGE_ID).is_none());
    });
}

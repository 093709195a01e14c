//! The NATS JetStream provider under test: a nats-server reached through
//! `EVENTING_NATS_URL` (started by `scripts/nats.sh`), and a raw async-nats
//! connection for what the provider does not do.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use eventing::topology::QueueSpec;
use eventing_nats::names;
use futures_util::future::BoxFuture;

// Links the provider: `nats://` and `tls://` URLs resolve to it.
use eventing_nats as _;

use eventing_test::Harness;

/// The variable with the server URL.
pub const URL_VARIABLE: &str = "EVENTING_NATS_URL";
/// The URL used when the variable is not set.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// nats-server at `EVENTING_NATS_URL` (default [`DEFAULT_URL`]). Every test uses
/// unique event names, so tests share the server and can run in parallel.
#[derive(Clone, Debug)]
pub struct NatsHarness {
    url: String,
}

impl NatsHarness {
    /// The harness for the URL in the environment.
    pub fn from_env() -> Self {
        // `EVENTING_NATS_LOG=<filter>` shows the provider's logs.
        Self {
            url: crate::url_from_env(URL_VARIABLE, DEFAULT_URL, "EVENTING_NATS_LOG"),
        }
    }

    /// The server URL (may hold credentials: do not print it).
    pub fn server_url(&self) -> &str {
        &self.url
    }

    /// A raw async-nats connection to the server.
    pub async fn raw_client(&self) -> async_nats::Client {
        let url = eventing_nats::url::parse(&self.url).expect("EVENTING_NATS_URL is a NATS URL");
        let options = url.options().await.expect("connect options");
        tokio::time::timeout(
            Duration::from_secs(10),
            options.connect(url.servers.clone()),
        )
        .await
        .expect("raw NATS connection timed out")
        .expect("raw NATS connection")
    }

    /// A raw JetStream context.
    pub async fn raw_jetstream(&self) -> jetstream::Context {
        jetstream::new(self.raw_client().await)
    }

    /// Deletes the streams of `events` (and so their consumers), purges the
    /// dead letters of `queues` and removes their delay queues (consumer and
    /// waiting copies in the delay stream).
    pub async fn delete(&self, queues: &[QueueSpec], events: &[String]) {
        let client = self.raw_client().await;
        for event in events {
            let Ok(stream) = names::stream(event) else {
                continue;
            };
            let _ = request(
                &client,
                format!("$JS.API.STREAM.DELETE.{stream}"),
                Bytes::new(),
            )
            .await;
        }
        for queue in queues {
            let subject = names::dead_letter_subject(&queue.dead_letter_queue());
            let body = format!("{{\"filter\":\"{subject}\"}}");
            let _ = request(
                &client,
                format!("$JS.API.STREAM.PURGE.{}", names::DEAD_LETTER_STREAM),
                Bytes::from(body),
            )
            .await;
            // The delay queues: their consumers and what waits on them.
            for delay_queue in queue.delay_queues() {
                if let Ok(consumer) = names::consumer(&delay_queue) {
                    let _ = request(
                        &client,
                        format!("$JS.API.CONSUMER.DELETE.{}.{consumer}", names::DELAY_STREAM),
                        Bytes::new(),
                    )
                    .await;
                }
                let body = format!("{{\"filter\":\"{}\"}}", names::delay_subject(&delay_queue));
                let _ = request(
                    &client,
                    format!("$JS.API.STREAM.PURGE.{}", names::DELAY_STREAM),
                    Bytes::from(body),
                )
                .await;
            }
        }
        let _ = client.flush().await;
    }
}

/// A JetStream API request; the JSON answer.
pub async fn request(
    client: &async_nats::Client,
    subject: String,
    body: Bytes,
) -> Option<serde_json::Value> {
    let answer = tokio::time::timeout(Duration::from_secs(5), client.request(subject, body))
        .await
        .ok()?
        .ok()?;
    serde_json::from_slice(&answer.payload).ok()
}

impl Harness for NatsHarness {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn url(&self, _env: &str) -> String {
        self.url.clone()
    }

    fn cleanup<'a>(&'a self, queues: &'a [QueueSpec], events: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            eventing_test::harness::bounded_cleanup(self.delete(queues, events)).await;
        })
    }

    /// Restarts nats-server through `scripts/nats.sh restart` (same store: durable
    /// streams, consumers and messages survive). False if the script did not start
    /// the server that runs.
    fn restart_broker(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/nats.sh");
            let status = tokio::process::Command::new("bash")
                .arg(script)
                .arg("restart")
                .status()
                .await;
            match status {
                Ok(status) if status.success() => {}
                Ok(_) | Err(_) => return false,
            }
            // Answers (the script waited for /healthz): check JetStream from a client.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < deadline {
                let client = self.raw_client().await;
                if request(&client, "$JS.API.INFO".into(), Bytes::new())
                    .await
                    .is_some_and(|answer| answer.get("error").is_none())
                {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        })
    }
}

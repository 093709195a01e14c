//! Credentials never reach logs, errors or `Debug` output. A test binary of its own:
//! it installs a global TRACE subscriber that records everything, lapin's logs
//! included, and adds a broker user with `rabbitmqctl` (needs root).
#![cfg(feature = "amqp")]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventing::provider::{Provider, ProviderConfig};
use eventing::{EventManager, header};
use eventing_amqp::AmqpProvider;
use eventing_test::suite::{Flaky, FlakyListener, Recorder, dead_letters, send_raw};
use eventing_tests::Harness;
use eventing_tests::TestEnv;
use eventing_tests::amqp::{AmqpHarness, rabbitmqctl};
use tracing_subscriber::fmt::MakeWriter;

/// Everything logged, as text.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_logs_errors_or_debug_output() {
    let logs = Logs::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .init();
    let harness = AmqpHarness::from_env();
    let user = format!("eventing-creds-{}", std::process::id());
    let password = format!("pw-{}-do-not-log", std::process::id());
    rabbitmqctl(&["add_user", &user, &password]).await;
    rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"]).await;
    let host = harness
        .broker_url()
        .rsplit_once('@')
        .map_or("127.0.0.1:5672/%2f", |(_, host)| host)
        .to_string();
    let url = format!("amqp://{user}:{password}@{host}");

    let test = async {
        // A whole round: connect, declare, send, dead-letter, list, shut down.
        let harness = UserHarness(url.clone());
        let mut env = TestEnv::new(&harness);
        let manager = env
            .start(env.builder("creds").listener(FlakyListener {
                calls: Arc::default(),
                seen: Recorder::new(),
            }))
            .await;
        let queue = format!("{}::Flaky", manager.queues()[0].event);
        send_raw::<Flaky>(&manager, b"not json", None).await;
        let letters = dead_letters(&manager, &queue, 1).await;
        assert_eq!(letters.len(), 1);
        assert!(letters[0].headers.get(header::DEAD_LETTER_REASON).is_some());
        env.finish().await;

        // The provider's own Debug output and a wrong password's errors.
        let config = |url: String| ProviderConfig::new(url, "creds", Duration::from_secs(10));
        let provider = AmqpProvider::connect(config(url.clone()))
            .await
            .expect("connect");
        let debug = format!("{provider:?} {:?}", config(url.clone()));
        assert!(debug.contains("***@"), "{debug}");
        assert!(
            !debug.contains(&password) && !debug.contains(&user),
            "{debug}"
        );
        provider.close().await.expect("close");

        let wrong = format!("amqp://{user}:{password}-wrong@{host}");
        let error = AmqpProvider::connect(config(wrong.clone()))
            .await
            .expect_err("wrong password");
        for text in [error.to_string(), format!("{error:?}")] {
            assert!(!text.contains(&password), "{text}");
        }
        let error = EventManager::builder()
            .url(wrong)
            .build()
            .await
            .err()
            .expect("wrong password");
        assert!(!error.to_string().contains(&password), "{error}");
    };
    let outcome = tokio::time::timeout(Duration::from_secs(120), test).await;
    rabbitmqctl(&["delete_user", &user]).await;
    outcome.expect("timed out after 120 s");

    let logs = String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
    assert!(
        logs.contains("connected") && logs.lines().count() > 100,
        "the provider's and lapin's logs were captured"
    );
    assert!(!logs.contains(&password), "the password is in the logs");
    assert!(logs.contains("***@"), "the URL is logged redacted");
}

/// The harness for a URL with this test's user.
struct UserHarness(String);

impl Harness for UserHarness {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn url(&self, _env: &str) -> String {
        self.0.clone()
    }

    fn cleanup<'a>(
        &'a self,
        queues: &'a [eventing::topology::QueueSpec],
        events: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            let harness = AmqpHarness::from_env();
            harness.cleanup(queues, events).await;
        })
    }
}

//! TLS end to end against a real RabbitMQ: the test makes a CA and a server
//! certificate for 127.0.0.1 (rcgen), starts an extra RabbitMQ node on this machine
//! with AMQPS and STOMPS listeners on free loopback ports (see
//! `eventing_tests::nodes`), and then
//!
//! - sends and handles events over `amqps://` (the URL's `tls_ca` trusts the CA),
//!   and checks on the broker that the connections are TLS;
//! - does the same over `stomps://` (the STOMP provider declares its topology over
//!   AMQPS with the same trust), with an `amqps://` sender as well;
//! - checks that clients that do not trust the CA are refused at once with an error
//!   that names the certificate problem, on both providers.
//!
//! Needs the `tls` feature and the rabbitmq-server package (run as root or as a
//! user that may run its scripts):
//! `cargo test -p eventing-tests --features tls --test tls_rabbitmq -- --nocapture`.
#![cfg(feature = "tls")]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use eventing::{
    Context, Error, EventListener, EventManager, ListenerResult, event, event_listener,
};
use eventing_tests::nodes::{Node, NodeOptions};
use eventing_tests::{Harness, TestEnv};
use serde::{Deserialize, Serialize};

// Links both providers.
#[path = "support/pki.rs"]
mod pki;
use pki::make_pki;

use eventing_amqp as _;
use eventing_stomp as _;

/// The whole test may take this long, node start and stop included.
const LIMIT: Duration = Duration::from_secs(240);
/// Events per provider.
const EVENTS: u64 = 200;
/// How long handling them may take.
const WAIT: Duration = Duration::from_secs(30);

#[event(name = "tls.{env}.Greeting", durable = true)]
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Greeting {
    id: u64,
}

/// Records the ids it handles.
#[event_listener(Greeting, name = "Greeter")]
struct Greeter {
    seen: Arc<Mutex<Vec<u64>>>,
}

impl EventListener<Greeting> for Greeter {
    async fn on(&self, greeting: Greeting, _: &Context) -> ListenerResult {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(greeting.id);
        Ok(())
    }
}

/// Managers of one test reach the extra node through this URL.
struct NodeHarness {
    name: &'static str,
    url: String,
}

impl Harness for NodeHarness {
    fn name(&self) -> &'static str {
        self.name
    }

    fn url(&self, _env: &str) -> String {
        self.url.clone()
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "eventing-{label}-{}-{}",
            std::process::id(),
            eventing::header::new_message_id()
        ));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_and_stomps_end_to_end_on_an_extra_node() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let began = tokio::time::Instant::now();
    let certificates = TempDir::new("tls-pki");
    let files = make_pki(&certificates.0);
    let options = NodeOptions {
        tls: Some(files.clone()),
        ..NodeOptions::new("tls")
    };
    let node = Node::start(options)
        .await
        .expect("start a RabbitMQ node with TLS");
    let name = node.name().to_string();
    println!(
        "node {name} up after {:?}: {:?}",
        began.elapsed(),
        node.ports()
    );
    let body = async {
        amqp_over_tls(&node, &files.ca).await;
        stomp_over_tls(&node, &files.ca).await;
        untrusted_clients_are_refused(&node).await;
    };
    let result = tokio::time::timeout(LIMIT, body).await;
    node.stop().await;
    let leftovers = eventing_tests::nodes::leftover_beams(&[&name]);
    assert!(
        leftovers.is_empty(),
        "the node is still running: {leftovers:?}"
    );
    println!("tls_rabbitmq: {:?} in all", began.elapsed());
    result.unwrap_or_else(|_| panic!("the TLS test timed out after {LIMIT:?}"));
}

/// `amqps://` with `tls_ca`: events go through, on TLS connections.
async fn amqp_over_tls(node: &Node, ca: &Path) {
    let amqps = node.ports().amqps.expect("AMQPS port");
    let harness = NodeHarness {
        name: "amqps",
        url: format!(
            "amqps://guest:guest@127.0.0.1:{amqps}/%2f?tls_ca={}",
            ca.display()
        ),
    };
    let mut env = TestEnv::new(&harness);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let _consumer = env
        .start(env.builder("tls-consumer").listener(Greeter {
            seen: Arc::clone(&seen),
        }))
        .await;
    let sender = env.start(env.builder("tls-sender")).await;
    for id in 0..EVENTS {
        sender
            .send_event(&Greeting { id })
            .await
            .expect("send over amqps");
    }
    expect_all(&seen, 0..EVENTS, "amqps").await;
    let connections = node
        .ctl(&[
            "list_connections",
            "--no-table-headers",
            "ssl",
            "client_properties",
        ])
        .await
        .expect("list connections");
    let ours: Vec<&str> = connections
        .lines()
        .filter(|line| line.contains("eventing tls-"))
        .collect();
    assert_eq!(
        ours.len(),
        4,
        "two connections per manager, each over TLS: {connections}"
    );
    for line in &ours {
        assert!(line.starts_with("true"), "not a TLS connection: {line}");
    }
    let names: Vec<&str> = ours
        .iter()
        .filter_map(|line| line.split("\"connection_name\",\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    println!("amqps: {EVENTS} events handled; TLS connections: {names:?}");
    env.finish().await;
}

/// `stomps://` with `tls_ca` (and `amqp_port` at the AMQPS port, for declaring):
/// events sent over STOMPS and over AMQPS are handled by a STOMPS listener.
async fn stomp_over_tls(node: &Node, ca: &Path) {
    let ports = node.ports();
    let (amqps, stomps) = (
        ports.amqps.expect("AMQPS port"),
        ports.stomps.expect("STOMPS port"),
    );
    let harness = NodeHarness {
        name: "stomps",
        url: format!(
            "stomps://guest:guest@127.0.0.1:{stomps}?tls_ca={}&amqp_port={amqps}",
            ca.display()
        ),
    };
    let mut env = TestEnv::new(&harness);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let _consumer = env
        .start(env.builder("tls-consumer").listener(Greeter {
            seen: Arc::clone(&seen),
        }))
        .await;
    let sender = env.start(env.builder("tls-sender")).await;
    let amqp_sender = env
        .start(env.builder("tls-amqp-sender").url(format!(
            "amqps://guest:guest@127.0.0.1:{amqps}/%2f?tls_ca={}",
            ca.display()
        )))
        .await;
    for id in 0..EVENTS {
        sender
            .send_event(&Greeting { id })
            .await
            .expect("send over stomps");
    }
    for id in EVENTS..EVENTS + 10 {
        amqp_sender
            .send_event(&Greeting { id })
            .await
            .expect("send over amqps");
    }
    expect_all(&seen, 0..EVENTS + 10, "stomps").await;
    let connections = node
        .ctl(&["list_stomp_connections", "ssl", "peer_port"])
        .await
        .expect("list STOMP connections");
    let lines: Vec<&str> = connections
        .lines()
        .filter(|l| l.starts_with("true") || l.starts_with("false"))
        .collect();
    assert!(
        lines.len() >= 2,
        "a sending and a consuming STOMP connection: {connections}"
    );
    for line in &lines {
        assert!(line.starts_with("true"), "not a TLS connection: {line}");
    }
    println!(
        "stomps: {} events handled; STOMP connections: {lines:?}",
        EVENTS + 10
    );
    env.finish().await;
}

/// Without `tls_ca` the server's certificate is not trusted: building a manager
/// fails within the send timeout, with the certificate problem in the error.
async fn untrusted_clients_are_refused(node: &Node) {
    let ports = node.ports();
    let (amqps, stomps) = (
        ports.amqps.expect("AMQPS port"),
        ports.stomps.expect("STOMPS port"),
    );
    for url in [
        format!("amqps://guest:guest@127.0.0.1:{amqps}/%2f"),
        format!("stomps://guest:guest@127.0.0.1:{stomps}?amqp_port={amqps}"),
    ] {
        let began = tokio::time::Instant::now();
        let built = tokio::time::timeout(
            Duration::from_secs(30),
            EventManager::builder()
                .url(&url)
                .server_name("tls-untrusted")
                .send_timeout(Duration::from_secs(10))
                .build(),
        )
        .await
        .unwrap_or_else(|_| panic!("{url}: no answer in 30 s (it must fail, not hang)"));
        let error = match built {
            Ok(manager) => {
                // A provider that connects lazily fails on the first use.
                manager
                    .send_event(&Greeting { id: 0 })
                    .await
                    .expect_err("an untrusted server must be refused")
            }
            Err(error) => error,
        };
        let text = error.to_string();
        let scheme = url.split("://").next().unwrap_or("");
        println!(
            "untrusted {scheme}: refused after {:?}: {text}",
            began.elapsed()
        );
        assert!(
            matches!(error, Error::Unavailable { .. } | Error::Provider { .. }),
            "{error:?}"
        );
        assert!(
            text.to_lowercase().contains("certificate"),
            "the error should name the certificate problem: {text}"
        );
        assert!(
            !text.contains("guest:guest"),
            "credentials in the error: {text}"
        );
    }
}

/// Waits until every id in `ids` was handled (at most [`WAIT`]).
async fn expect_all(seen: &Mutex<Vec<u64>>, ids: std::ops::Range<u64>, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut handled = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
        handled.sort_unstable();
        handled.dedup();
        if handled == ids.clone().collect::<Vec<_>>() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} of {} events handled in {WAIT:?}",
            handled.len(),
            ids.end - ids.start
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! Quorum queues (`queue_type=quorum` in the AMQP URL), and RabbitMQ beyond one
//! machine's single node.
//!
//! On the shared broker (a single node hosts quorum queues too):
//! - the URL's option makes competing queues and their `.dlq` quorum queues, with
//!   `x-delivery-limit` and broker dead-lettering to `<queue>.dlq`, while
//!   per-process queues stay classic;
//! - a message that consumers keep requeueing, or keep dying on, is dead-lettered
//!   by the broker past the delivery limit, and listing dead letters gives it a
//!   reason;
//! - a quorum declaration over an existing classic queue (and the reverse) is a
//!   clear error;
//! - with `failover=` naming it, a manager whose URL's host is dead connects to
//!   the shared broker (and without the list it fails with a clear error).
//!
//! On a 3-node cluster that the test starts on this machine (opt-in:
//! `EVENTING_CLUSTER_TESTS=1`), a stream of durable events to a quorum queue keeps
//! flowing while the node hosting the queue's leader is killed; nothing is lost:
//! - `amqp_cluster_node_stop`: the sender and the consumer are on the other nodes;
//! - `amqp_cluster_failover`: both are on the killed node, and fail over to the
//!   others through the URL's `failover=` list.
//!
//! And the node harness itself (`eventing_tests::nodes`): a node is stopped when
//! its test panics, and when its test process dies without unwinding.
//!
//! `cargo test -p eventing-tests --features amqp --test amqp_cluster -- --nocapture`
//! (add `EVENTING_CLUSTER_TESTS=1` for the cluster). Needs `rabbitmqctl` (root).
#![cfg(feature = "amqp")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use eventing::topology::QueueSpec;
use eventing::{
    Context, Error, EventListener, EventManager, ListenerResult, event, event_listener, header,
};
use eventing_test::faults::{Counter, Item, RssSampler, Tally, count, eventually};
use eventing_test::harness::bounded_cleanup;
use eventing_tests::amqp::{AmqpHarness, list_exchanges, list_queues};
use eventing_tests::nodes::{Node, NodeOptions, leftover_beams, new_cookie};
use eventing_tests::rabbitmq::queue_types;
use eventing_tests::{Harness, TestEnv};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The variable that turns the cluster test on.
const CLUSTER_VARIABLE: &str = "EVENTING_CLUSTER_TESTS";

/// Runs `body(tag)` on its own task with a time limit, then always removes the
/// shared broker's queues and exchanges whose names contain `tag` (the test's
/// `{env}`), then fails if the body did.
async fn guarded<F, Fut>(limit: Duration, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tag = format!(
        "quorum-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        eventing::header::new_message_id().get(..8).unwrap_or("")
    );
    let result = tokio::spawn(tokio::time::timeout(limit, body(tag.clone()))).await;
    let queues: Vec<String> = list_queues(&tag)
        .await
        .into_iter()
        .map(|q| q.name)
        .collect();
    let exchanges: Vec<String> = list_exchanges(&tag)
        .await
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    bounded_cleanup(AmqpHarness::from_env().delete(&queues, &exchanges)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("test timed out after {limit:?}"),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("test task: {error}"),
    }
}

/// `base` with `query` appended.
fn with_query(base: &str, query: &str) -> String {
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}{query}")
}

/// The shared broker, reached with extra URL parameters (`queue_type=...`).
struct QueryHarness {
    amqp: AmqpHarness,
    url: String,
}

impl QueryHarness {
    fn new(query: &str) -> QueryHarness {
        let amqp = AmqpHarness::from_env();
        let url = with_query(amqp.broker_url(), query);
        QueryHarness { amqp, url }
    }
}

impl Harness for QueryHarness {
    fn name(&self) -> &'static str {
        "quorum"
    }

    fn url(&self, _env: &str) -> String {
        self.url.clone()
    }

    fn cleanup<'a>(&'a self, queues: &'a [QueueSpec], events: &'a [String]) -> BoxFuture<'a, ()> {
        self.amqp.cleanup(queues, events)
    }
}

#[event(name = "quorum.{env}.Job", durable = true)]
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Job {
    id: u64,
}

/// Competing: records the ids it handles.
#[event_listener(Job, name = "Worker")]
struct Worker {
    seen: Arc<Mutex<Vec<u64>>>,
}

impl EventListener<Job> for Worker {
    async fn on(&self, job: Job, _: &Context) -> ListenerResult {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(job.id);
        Ok(())
    }
}

/// Per process: records the ids it handles.
#[event_listener(Job, name = "Watcher", per_process = true)]
struct Watcher {
    seen: Arc<Mutex<Vec<u64>>>,
}

impl EventListener<Job> for Watcher {
    async fn on(&self, job: Job, _: &Context) -> ListenerResult {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(job.id);
        Ok(())
    }
}

fn recorder() -> Arc<Mutex<Vec<u64>>> {
    Arc::new(Mutex::new(Vec::new()))
}

fn len(seen: &Mutex<Vec<u64>>) -> usize {
    seen.lock().unwrap_or_else(PoisonError::into_inner).len()
}

/// The address of `Job` in `env`.
fn job_address(env: &TestEnv<'_>) -> String {
    format!("quorum.{}.Job", env.env)
}

// ---------------------------------------------------------------------------------
// quorum queues on the shared broker

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_from_the_url() {
    guarded(Duration::from_secs(120), |tag| async move {
        let harness = QueryHarness::new("queue_type=quorum&delivery_limit=7");
        let mut env = TestEnv::new(&harness);
        env.env = tag;
        let (work, watch) = (recorder(), recorder());
        let manager = env
            .start(
                env.builder("quorum-a")
                    .listener(Worker {
                        seen: Arc::clone(&work),
                    })
                    .listener(Watcher {
                        seen: Arc::clone(&watch),
                    }),
            )
            .await;
        for id in 0..20 {
            manager.send_event(&Job { id }).await.expect("send");
        }
        assert!(
            eventually_async(Duration::from_secs(20), || len(&work) >= 20
                && len(&watch) >= 20)
            .await,
            "handled: {} by the competing listener, {} by the per-process one",
            len(&work),
            len(&watch)
        );
        let address = job_address(&env);
        let competing = format!("{address}::Worker");
        let per_process = format!("{address}::Watcher-quorum-a");
        let queues = queue_types(&address).await;
        let find = |name: &str| {
            queues
                .iter()
                .find(|(n, _, _)| n == name)
                .unwrap_or_else(|| panic!("no queue {name} in {queues:?}"))
                .clone()
        };
        let (_, kind, arguments) = find(&competing);
        assert_eq!(kind, "quorum", "{competing}: {arguments}");
        for expected in [
            "x-delivery-limit",
            "7",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            &format!("{competing}.dlq"),
            "at-least-once",
        ] {
            assert!(arguments.contains(expected), "{competing}: {arguments}");
        }
        assert_eq!(find(&format!("{competing}.dlq")).1, "quorum");
        assert_eq!(
            find(&per_process).1,
            "classic",
            "exclusive queues stay classic"
        );
        assert_eq!(find(&format!("{per_process}.dlq")).1, "classic");
        println!("quorum queues: {queues:?}");
        env.finish().await;
    })
    .await;
}

/// How a test consumer gives a delivery back.
#[derive(Clone, Copy, Debug)]
enum GiveBack {
    /// `basic.nack` with `requeue`.
    Requeue,
    /// Closes its channel without settling (a consumer that dies).
    Die,
}

/// Consumes `queue` on the shared broker and gives every delivery back, until the
/// queue stays empty for 2 s (at most 60 deliveries). Returns how many it got.
async fn keep_giving_back(harness: &AmqpHarness, queue: &str, how: GiveBack) -> u32 {
    let connection = harness.raw_connection().await;
    let mut deliveries = 0;
    let mut channel = None;
    'outer: while deliveries < 60 {
        let open = match channel.take() {
            Some(open) => open,
            None => {
                let ch = connection.create_channel().await.expect("channel");
                ch.basic_qos(1, BasicQosOptions::default())
                    .await
                    .expect("qos");
                let consumer = ch
                    .basic_consume(
                        queue.into(),
                        "eventing-test-give-back".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .expect("consume");
                (ch, consumer)
            }
        };
        let (ch, mut consumer) = open;
        match tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                deliveries += 1;
                match how {
                    GiveBack::Requeue => {
                        delivery
                            .nack(BasicNackOptions {
                                requeue: true,
                                multiple: false,
                            })
                            .await
                            .expect("nack");
                        channel = Some((ch, consumer));
                    }
                    GiveBack::Die => {
                        let _ = ch.close(200, "dying".into()).await;
                    }
                }
            }
            Ok(Some(Err(error))) => panic!("consuming {queue}: {error}"),
            Ok(None) => panic!("the broker ended the consumer of {queue}"),
            Err(_) => {
                let _ = ch.close(200, "done".into()).await;
                break 'outer;
            }
        }
    }
    let _ = connection.close(200, "done".into()).await;
    deliveries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_delivery_limit_the_broker_dead_letters_with_a_reason() {
    guarded(Duration::from_secs(120), |tag| async move {
        const LIMIT: u32 = 2;
        let harness = QueryHarness::new(&format!("queue_type=quorum&delivery_limit={LIMIT}"));
        let mut env = TestEnv::new(&harness);
        env.env = tag;
        // Declares the topology, then leaves the queue to the raw consumers.
        let declaring = env
            .builder("quorum-b")
            .listener(Worker { seen: recorder() })
            .build()
            .await
            .expect("build");
        declaring.start().await.expect("start");
        declaring.shutdown().await.expect("shutdown");
        let sender = env.start(env.builder("quorum-sender")).await;
        let queue = format!("{}::Worker", job_address(&env));
        let mut counts = Vec::new();
        for (id, how) in [(1, GiveBack::Requeue), (2, GiveBack::Die)] {
            sender.send_event(&Job { id }).await.expect("send");
            let deliveries = keep_giving_back(&harness.amqp, &queue, how).await;
            println!("{how:?}: delivered {deliveries} times with delivery_limit={LIMIT}");
            assert!(
                (LIMIT..=LIMIT + 1).contains(&deliveries),
                "{how:?}: {deliveries} deliveries with delivery_limit={LIMIT}"
            );
            counts.push(deliveries);
        }
        // Lists them through a manager of the same queue (not started).
        let reader = env
            .builder("quorum-b")
            .listener(Worker { seen: recorder() })
            .build()
            .await
            .expect("build");
        let mut letters = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while letters.len() < 2 && Instant::now() < deadline {
            letters = reader.dead_letters(&queue, 10).await.expect("dead letters");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            letters.len(),
            2,
            "both messages in {queue}.dlq: {letters:?}"
        );
        for (letter, id) in letters.iter().zip([1, 2]) {
            let reason = letter
                .headers
                .get(header::DEAD_LETTER_REASON)
                .unwrap_or_else(|| panic!("no reason: {:?}", letter.headers));
            assert!(reason.contains("delivery limit"), "{reason}");
            assert!(reason.contains("RabbitMQ: delivery_limit"), "{reason}");
            assert_eq!(
                letter.headers.get(header::DEAD_LETTER_QUEUE),
                Some(queue.as_str())
            );
            let job: Job = serde_json::from_slice(&letter.body).expect("the body is a Job");
            assert_eq!(job.id, id);
            println!("dead letter {id}: {reason}");
        }
        let left = queue_ready(&queue).await;
        assert_eq!(left, 0, "nothing left in {queue}");
        let _ = reader.shutdown().await;
        env.finish().await;
    })
    .await;
}

/// Messages ready in a queue of the shared broker.
async fn queue_ready(queue: &str) -> u64 {
    eventing_tests::amqp::list_queues(queue)
        .await
        .into_iter()
        .find(|q| q.name == queue)
        .map_or(0, |q| q.ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_queue_type_of_an_existing_queue_is_a_clear_error() {
    guarded(Duration::from_secs(120), |env| async move {
        let classic = AmqpHarness::from_env();
        let quorum = QueryHarness::new("queue_type=quorum");
        // Both URLs with one `{env}`: the managers name the same queues.
        let builder = |url: String, server: &str| {
            EventManager::builder()
                .url(url)
                .server_name(server)
                .var("env", &env)
                .only_bound_listeners()
                .listener(Worker { seen: recorder() })
        };
        let first = builder(classic.url(&env), "types-a")
            .build()
            .await
            .expect("build");
        first.start().await.expect("a classic queue");
        let queues = first.queues();
        first.shutdown().await.expect("shutdown");
        let queue = &queues[0].name;

        let second = builder(quorum.url(&env), "types-b")
            .build()
            .await
            .expect("build");
        let error = tokio::time::timeout(Duration::from_secs(30), second.start())
            .await
            .expect("no hang")
            .expect_err("a classic queue cannot become a quorum queue");
        let text = error.to_string();
        println!("quorum over classic: {text}");
        assert!(matches!(error, Error::Provider { .. }), "{error:?}");
        assert!(text.contains(queue.as_str()), "{text}");
        assert!(
            text.contains("a classic queue cannot become a quorum queue"),
            "{text}"
        );
        assert!(
            text.contains("PRECONDITION_FAILED") || text.contains("406"),
            "{text}"
        );
        let _ = second.shutdown().await;

        // The other way round: the queue is a quorum queue, the URL says classic.
        classic.cleanup(&queues, &[queues[0].event.clone()]).await;
        let third = builder(quorum.url(&env), "types-c")
            .build()
            .await
            .expect("build");
        third.start().await.expect("a quorum queue");
        third.shutdown().await.expect("shutdown");
        let fourth = builder(classic.url(&env), "types-d")
            .build()
            .await
            .expect("build");
        let error = tokio::time::timeout(Duration::from_secs(30), fourth.start())
            .await
            .expect("no hang")
            .expect_err("a quorum queue declared as classic");
        let text = error.to_string();
        println!("classic over quorum: {text}");
        assert!(text.contains("as a quorum queue has"), "{text}");
        assert!(text.contains("queue_type=quorum"), "{text}");
        let _ = fourth.shutdown().await;
        classic.cleanup(&queues, &[queues[0].event.clone()]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_reaches_the_shared_broker_past_a_dead_host() {
    guarded(Duration::from_secs(120), |tag| async move {
        // The shared broker's `host:port`, listed after a loopback port nobody
        // listens on.
        let shared = AmqpHarness::from_env();
        let base = shared.broker_url().to_string();
        let (scheme_user, rest) = base.rsplit_once('@').expect("a URL with user info");
        let (authority, path) = rest.split_once('/').expect("a URL with a vhost");
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free port");
        let harness = QueryHarness {
            url: format!("{scheme_user}@127.0.0.1:{dead}/{path}?failover={authority}"),
            amqp: shared,
        };
        let mut env = TestEnv::new(&harness);
        env.env = tag;
        let work = recorder();
        let began = Instant::now();
        let manager = env
            .start(env.builder("failover-a").listener(Worker {
                seen: Arc::clone(&work),
            }))
            .await;
        println!("connected past 127.0.0.1:{dead} in {:?}", began.elapsed());
        for id in 0..10 {
            manager.send_event(&Job { id }).await.expect("send");
        }
        assert!(
            eventually_async(Duration::from_secs(20), || len(&work) >= 10).await,
            "handled {} of 10",
            len(&work)
        );
        env.finish().await;
        // Without the list, the dead host alone is an error, not a hang.
        let alone = tokio::time::timeout(
            Duration::from_secs(30),
            EventManager::builder()
                .url(format!("{scheme_user}@127.0.0.1:{dead}/{path}"))
                .send_timeout(Duration::from_secs(2))
                .build(),
        )
        .await
        .expect("no hang");
        let error = match alone {
            Ok(manager) => manager.start().await.expect_err("nothing listens there"),
            Err(error) => error,
        };
        println!("without failover: {error}");
        assert!(
            matches!(error, Error::Unavailable { .. } | Error::Timeout { .. }),
            "{error:?}"
        );
    })
    .await;
}

/// Polls `check` every 20 ms, at most `limit`.
async fn eventually_async(limit: Duration, check: impl FnMut() -> bool) -> bool {
    eventually(limit, Duration::from_millis(20), check).await
}

// ---------------------------------------------------------------------------------
// a 3-node cluster

/// Events in the cluster test's stream.
const CLUSTER_STREAM: u64 = 5_000;
/// Their rate, so the stream is still running when the node dies and after.
const CLUSTER_RATE: f64 = 500.0;

/// Managers of the cluster test reach one node through this URL.
struct NodeHarness {
    url: String,
}

impl Harness for NodeHarness {
    fn name(&self) -> &'static str {
        "cluster"
    }

    fn url(&self, _env: &str) -> String {
        self.url.clone()
    }
}

/// Three nodes, joined into one cluster, stopped when dropped.
async fn start_cluster() -> Vec<Node> {
    let cookie = new_cookie();
    let options = |label: &str| NodeOptions {
        cookie: cookie.clone(),
        ..NodeOptions::new(label)
    };
    let (a, b, c) = tokio::join!(
        Node::start(options("c1")),
        Node::start(options("c2")),
        Node::start(options("c3")),
    );
    // Whatever started is stopped on drop, even if another failed.
    let (a, mut b, mut c) = (
        a.expect("start node 1"),
        b.expect("start node 2"),
        c.expect("start node 3"),
    );
    b.join(&a).await.expect("node 2 joins node 1");
    c.join(&a).await.expect("node 3 joins node 1");
    let running = a.running_nodes().await.expect("cluster status");
    for node in [&a, &b, &c] {
        assert!(
            running.iter().any(|n| n == node.name()),
            "{} is not running in the cluster: {running:?}",
            node.name()
        );
    }
    vec![a, b, c]
}

/// Where the cluster test's sender and consumer are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// The sender on node 1, the consumer on node 2: both survive the kill.
    Survivors,
    /// The sender and the consumer on node 3, the one killed, with
    /// `failover=` naming nodes 1 and 2.
    OnTheKilledNode,
}

impl Layout {
    fn test(self) -> &'static str {
        match self {
            Layout::Survivors => "amqp_cluster_node_stop",
            Layout::OnTheKilledNode => "amqp_cluster_failover",
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_cluster_node_stop() {
    run_cluster_test(Layout::Survivors).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_cluster_failover() {
    run_cluster_test(Layout::OnTheKilledNode).await;
}

/// Starts a cluster (if [`CLUSTER_VARIABLE`] is `1`), runs [`cluster_body`] on
/// it for at most 300 s, and stops every node whatever happened.
async fn run_cluster_test(layout: Layout) {
    let test = layout.test();
    if std::env::var(CLUSTER_VARIABLE).as_deref() != Ok("1") {
        println!("{test}: skipped (set {CLUSTER_VARIABLE}=1 to run it)");
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let began = Instant::now();
    let mut nodes = start_cluster().await;
    let names: Vec<String> = nodes.iter().map(|n| n.name().to_string()).collect();
    let formed = began.elapsed();
    println!("cluster {names:?} formed in {formed:?}");
    let result =
        tokio::time::timeout(Duration::from_secs(300), cluster_body(&mut nodes, layout)).await;
    let stopping = Instant::now();
    let stops: Vec<_> = nodes.into_iter().map(Node::stop).collect();
    futures_util::future::join_all(stops).await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let leftovers = leftover_beams(&refs);
    println!(
        "{test}: {:?} in all (cluster formed in {formed:?}, stopped in {:?})",
        began.elapsed(),
        stopping.elapsed()
    );
    assert!(leftovers.is_empty(), "nodes still running: {leftovers:?}");
    match result {
        Ok(Ok(())) => {}
        Ok(Err(failure)) => panic!("{failure}"),
        Err(_) => panic!("{test} timed out"),
    }
}

/// Returns `Err(message)` from the enclosing body unless `cond` holds.
macro_rules! check {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(format!($($message)+));
        }
    };
}

/// The stream: the queue's leader on node 3, the sender and the consumer where
/// `layout` puts them; node 3 is killed when a third of the stream was sent.
async fn cluster_body(nodes: &mut [Node], layout: Layout) -> Result<(), String> {
    let test = layout.test();
    let n = CLUSTER_STREAM;
    let url = |node: &Node| with_query(&node.amqp_url(), "queue_type=quorum");
    let leader_at = NodeHarness {
        url: url(&nodes[2]),
    };
    let (sender_at, consumer_at) = match layout {
        Layout::Survivors => (
            NodeHarness {
                url: url(&nodes[0]),
            },
            NodeHarness {
                url: url(&nodes[1]),
            },
        ),
        Layout::OnTheKilledNode => {
            let failover = format!(
                "failover=127.0.0.1:{},127.0.0.1:{}",
                nodes[0].ports().amqp,
                nodes[1].ports().amqp
            );
            let on_node_3 = with_query(&leader_at.url, &failover);
            (
                NodeHarness {
                    url: on_node_3.clone(),
                },
                NodeHarness { url: on_node_3 },
            )
        }
    };
    let mut env = TestEnv::new(&consumer_at);
    let rss = RssSampler::start();
    let tally = Tally::new(n);
    // Declared through node 3, so the quorum queue's leader is there.
    let declaring = EventManager::builder()
        .url(leader_at.url(&env.env))
        .server_name("declarer")
        .var("env", &env.env)
        .only_bound_listeners()
        .listener(Counter::new(&tally, Duration::ZERO))
        .build()
        .await
        .map_err(|e| format!("declaring manager: {e}"))?;
    declaring
        .start()
        .await
        .map_err(|e| format!("declaring: {e}"))?;
    let queue = declaring
        .queues()
        .first()
        .map(|q| q.name.clone())
        .ok_or("no queue")?;
    declaring.shutdown().await.map_err(|e| e.to_string())?;
    let placement = nodes[0]
        .ctl(&[
            "list_queues",
            "--no-table-headers",
            "name",
            "type",
            "leader",
            "members",
        ])
        .await?;
    println!("queues: {}", placement.trim());
    check!(
        placement.contains(nodes[2].name()),
        "{test}: the queue's leader is not on node 3: {placement}"
    );

    let consumer = env
        .start(
            env.builder("consumer")
                .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(2))
                .listener(Counter::new(&tally, Duration::ZERO)),
        )
        .await;
    let sender = env
        .start(
            env.builder("sender")
                .url(sender_at.url(&env.env))
                .send_timeout(Duration::from_secs(5)),
        )
        .await;
    let sent = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let stream_began = Instant::now();
    let stream = tokio::spawn(send_stream(
        sender.clone(),
        n,
        Arc::clone(&sent),
        Arc::clone(&retried),
    ));
    check!(
        eventually_async(Duration::from_secs(60), || sent.load(Ordering::SeqCst)
            >= n / 3)
        .await,
        "{test}: the stream did not get going ({} sent)",
        sent.load(Ordering::SeqCst)
    );
    let sent_before = sent.load(Ordering::SeqCst);
    let killed_at = stream_began.elapsed();
    nodes[2].kill();
    println!(
        "killed {} (the queue's leader) after {killed_at:?}, {sent_before} of {n} sent",
        nodes[2].name()
    );
    if layout == Layout::OnTheKilledNode {
        // A fresh channel on node 1, 8 s after the kill, publishes a copy of id 0
        // (one duplicate): whether the broker takes it while the sender's
        // failed-over channel gets nacks tells the two apart.
        tokio::time::sleep(Duration::from_secs(8)).await;
        let exchange = format!("faults.{}.Item", env.env);
        let probe = probe_publish(nodes[0].ports().amqp, &exchange).await;
        println!(
            "{test}: probe on a fresh channel of node 1, 8 s after the kill: {probe} \
             ({} sent by then)",
            sent.load(Ordering::SeqCst)
        );
    }
    let sent_result = stream
        .await
        .map_err(|e| format!("{test}: sender task: {e}"))?;
    let stream_took = stream_began.elapsed();
    let complete = eventually_async(Duration::from_secs(120), || {
        (0..n).all(|id| tally.completed(id) > 0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counted = count(&[&tally], 0..n);
    let dead_letters = consumer
        .dead_letters(&queue, usize::try_from(n).unwrap_or(usize::MAX))
        .await
        .map_err(|e| format!("{test}: listing dead letters: {e}"))?;
    let stats = consumer.stats();
    let placement_after = nodes[0]
        .ctl(&[
            "list_queues",
            "--no-table-headers",
            "name",
            "leader",
            "online",
        ])
        .await
        .unwrap_or_else(|e| e);
    let connections = nodes[0]
        .ctl(&[
            "list_connections",
            "--no-table-headers",
            "name",
            "client_properties",
        ])
        .await
        .unwrap_or_else(|e| e);
    counted
        .outcome(
            sent.load(Ordering::SeqCst),
            dead_letters.len() as u64,
            rss.peak_mib(),
        )
        .print(test, "amqp", "");
    println!(
        "{test}: stream {stream_took:?} ({:.0} ev/s), retried sends {}, consumer reconnects {}, \
         redelivered {}, after the kill: {}",
        n as f64 / stream_took.as_secs_f64(),
        retried.load(Ordering::SeqCst),
        stats.reconnects,
        tally.redelivered(),
        placement_after.trim()
    );
    env.finish().await;
    sent_result?;
    check!(
        counted.lost == 0 && complete,
        "{test}: {} of {n} ids never handled (first: {:?})",
        counted.lost,
        counted.lost_ids
    );
    check!(tally.strays() == 0, "{test}: ids that were never sent");
    check!(
        sent_before < n,
        "{test}: the node died after the stream ended"
    );
    check!(
        dead_letters.is_empty(),
        "{test}: {} healthy events dead-lettered",
        dead_letters.len()
    );
    if layout == Layout::OnTheKilledNode {
        // After the kill, the sender's and the consumer's connections are on the
        // nodes named by `failover=` (the connection's name ends with the
        // broker's port).
        let survivors = [nodes[0].ports().amqp, nodes[1].ports().amqp];
        for role in ["eventing sender (publish)", "eventing consumer (consume)"] {
            let line = connections
                .lines()
                .find(|line| line.contains(role))
                .ok_or_else(|| format!("{test}: no `{role}` connection: {connections}"))?;
            check!(
                survivors
                    .iter()
                    .any(|port| line.contains(&format!("-> 127.0.0.1:{port}"))),
                "{test}: `{role}` is not on node 1 or 2: {line}"
            );
        }
        println!(
            "{test}: connections after the kill:\n{}",
            connections.trim()
        );
    }
    Ok(())
}

/// Publishes `Item { id: 0 }` persistently to `exchange` through a new connection
/// to `127.0.0.1:port`, in confirm mode; says whether the broker acked it.
async fn probe_publish(port: u16, exchange: &str) -> String {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let attempt = async {
        let connection =
            lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let body = serde_json::to_vec(&Item::new(0)).unwrap_or_default();
        let confirm = channel
            .basic_publish(
                exchange.into(),
                "".into(),
                BasicPublishOptions::default(),
                &body,
                lapin::BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await?
            .await?;
        let _ = connection.close(200, "probe".into()).await;
        Ok::<_, lapin::Error>(if confirm.is_ack() { "ack" } else { "nack" })
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(answer)) => answer.to_string(),
        Ok(Err(error)) => format!("error: {error}"),
        Err(_) => "no answer within 10 s".to_string(),
    }
}

/// Sends ids `0..n` at [`CLUSTER_RATE`] from 16 tasks; a send that fails with
/// `Unavailable`, `Timeout` or `Refused` (a nack while the queue elects a new
/// leader) is sent again, for at most 120 s.
async fn send_stream(
    sender: EventManager,
    n: u64,
    sent: Arc<AtomicU64>,
    retried: Arc<AtomicU64>,
) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let deadline = began + Duration::from_secs(120);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (sender, sent, retried, next) = (
                sender.clone(),
                Arc::clone(&sent),
                Arc::clone(&retried),
                Arc::clone(&next),
            );
            tokio::spawn(async move {
                loop {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    if id >= n {
                        return Ok::<(), String>(());
                    }
                    tokio::time::sleep_until(
                        began + Duration::from_secs_f64(id as f64 / CLUSTER_RATE),
                    )
                    .await;
                    loop {
                        match sender.send_event(&Item::new(id)).await {
                            Ok(()) => break,
                            Err(
                                error @ (Error::Unavailable { .. }
                                | Error::Timeout { .. }
                                | Error::Refused { .. }),
                            ) => {
                                if Instant::now() >= deadline {
                                    return Err(format!("send of {id} still failing: {error}"));
                                }
                                retried.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            Err(error) => return Err(format!("send of {id} failed: {error:?}")),
                        }
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| format!("sender task: {e}"))??;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// the node harness

/// The variable that makes `node_child` start a node and abort.
const CHILD_VARIABLE: &str = "EVENTING_NODE_CHILD";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_stopped_when_its_test_panics() {
    let began = Instant::now();
    let task = tokio::spawn(async {
        let node = Node::start(NodeOptions::new("panic"))
            .await
            .expect("start a node");
        let name = node.name().to_string();
        let dir = node.dir().to_path_buf();
        NAMES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name, dir));
        panic!("a failing test");
    });
    let joined = task.await;
    assert!(joined.is_err_and(|e| e.is_panic()), "the task panicked");
    let (name, dir) = NAMES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop()
        .expect("the node started");
    assert!(leftover_beams(&[&name]).is_empty(), "{name} still runs");
    assert!(!dir.exists(), "{} is still there", dir.display());
    println!(
        "{name}: started, panicked and stopped in {:?}",
        began.elapsed()
    );
}

static NAMES: Mutex<Vec<(String, std::path::PathBuf)>> = Mutex::new(Vec::new());

/// Run by `a_node_is_stopped_when_its_test_process_dies` in a child process:
/// starts a node, prints its name and directory, and aborts (no unwinding, no
/// destructors). Does nothing otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_child() {
    if std::env::var_os(CHILD_VARIABLE).is_none() {
        return;
    }
    let node = Node::start(NodeOptions::new("abort"))
        .await
        .expect("start a node");
    println!("NODE {} {}", node.name(), node.dir().display());
    std::process::abort();
}

#[test]
fn a_node_is_stopped_when_its_test_process_dies() {
    let began = std::time::Instant::now();
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["node_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VARIABLE, "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the child");
    assert!(!output.status.success(), "the child aborts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("NODE ").map(|(_, rest)| rest))
        .unwrap_or_else(|| {
            panic!(
                "the child did not start a node: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let (name, dir) = line.split_once(' ').expect("name and directory");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (!leftover_beams(&[name]).is_empty() || std::path::Path::new(dir).exists())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        leftover_beams(&[name]).is_empty(),
        "{name} outlived its process"
    );
    assert!(!std::path::Path::new(dir).exists(), "{dir} is still there");
    println!(
        "{name}: its process aborted; the watchdog stopped it ({:?} in all)",
        began.elapsed()
    );
}

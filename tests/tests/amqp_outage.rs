//! Sends over AMQP while the connection to RabbitMQ is down, without stopping the
//! shared broker: the sending manager reaches it through a TCP relay in this test
//! that can cut every connection and refuse new ones (an outage), come back on the
//! same port, or keep forwarding what the client sends while dropping everything
//! the broker answers (a broker that takes messages but whose confirms never
//! arrive). Listeners connect to the broker directly.
#![cfg(feature = "amqp")]

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventing::{Context, Error, EventListener, ListenerResult, event, event_listener};
use eventing_tests::TestEnv;
use eventing_tests::amqp::AmqpHarness;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The sending manager's send timeout.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(20);

/// The event of these tests.
#[event(name = "outage.{env}.Ping", durable = true)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Ping {
    n: u32,
}

/// Records the numbers it handles.
#[event_listener(Ping, name = "Seen")]
struct Seen {
    seen: Arc<Mutex<Vec<u32>>>,
}

impl EventListener<Ping> for Seen {
    async fn on(&self, ping: Ping, _: &Context) -> ListenerResult {
        self.seen.lock().expect("lock").push(ping.n);
        Ok(())
    }
}

/// A TCP relay from a local port to RabbitMQ's AMQP port.
struct Relay {
    port: u16,
    /// While set, bytes from the broker to the client are dropped.
    mute_broker: Arc<AtomicBool>,
    /// The accepting task and every pumping task.
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    /// Listens on `port` (0: any free port) and relays to 127.0.0.1:5672.
    async fn start(port: u16) -> Relay {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("address").port();
        let mute_broker = Arc::new(AtomicBool::new(false));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let (mute_broker, tasks) = (Arc::clone(&mute_broker), Arc::clone(&tasks));
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(broker) = TcpStream::connect(("127.0.0.1", 5672)).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (broker_read, broker_write) = broker.into_split();
                    let up = tokio::spawn(pump(client_read, broker_write, None));
                    let down = tokio::spawn(pump(
                        broker_read,
                        client_write,
                        Some(Arc::clone(&mute_broker)),
                    ));
                    tasks.lock().expect("lock").extend([up, down]);
                }
            }
        });
        tasks.lock().expect("lock").push(accept);
        Relay {
            port,
            mute_broker,
            tasks,
        }
    }

    /// The URL of the broker through this relay.
    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Closes every relayed connection and stops accepting: the port refuses.
    fn cut(&self) {
        for task in self.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies `from` to `to` until either ends; drops the bytes while `mute` is set.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mute: Option<Arc<AtomicBool>>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if mute.as_ref().is_some_and(|m| m.load(Ordering::SeqCst)) {
            continue;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("test timed out after 120 s");
}

async fn wait_for(seen: &Arc<Mutex<Vec<u32>>>, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = seen.lock().expect("lock").clone();
        if got.len() >= n || Instant::now() >= deadline {
            let mut got = got;
            got.sort_unstable();
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_wait_out_a_short_outage_and_fail_unavailable_after_the_send_timeout() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        let mut env = TestEnv::new(&harness);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let _listener = env
            .start(env.builder("listener").listener(Seen {
                seen: Arc::clone(&seen),
            }))
            .await;
        let relay = Relay::start(0).await;
        let sender = env
            .start(
                env.builder("sender")
                    .url(relay.url())
                    .send_timeout(SEND_TIMEOUT),
            )
            .await;
        sender.send_event(&Ping { n: 1 }).await.expect("send 1");

        // An outage longer than the send timeout: Unavailable, just before it.
        relay.cut();
        let began = Instant::now();
        let error = sender
            .send_event(&Ping { n: 2 })
            .await
            .expect_err("no broker, no success");
        let took = began.elapsed();
        println!("outage: send failed after {took:?}: {error}");
        assert!(
            matches!(error, Error::Unavailable { .. }),
            "typed Unavailable: {error:?}"
        );
        assert!(
            took >= SEND_TIMEOUT * 3 / 4 && took <= SEND_TIMEOUT + Duration::from_millis(500),
            "waited about the send timeout ({SEND_TIMEOUT:?}), not {took:?}"
        );
        let text = error.to_string();
        assert!(
            text.contains("attempts") && !text.contains("guest:guest"),
            "says what was tried, without credentials: {text}"
        );

        // An outage shorter than the send timeout: the send waits it out.
        let port = relay.port;
        let sending = tokio::spawn({
            let sender = sender.clone();
            async move {
                let began = Instant::now();
                (sender.send_event(&Ping { n: 3 }).await, began.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let relay = Relay::start(port).await;
        let (sent, took) = sending.await.expect("send task");
        sent.expect("send 3 succeeds once the broker is reachable again");
        println!("outage: a send across a 500 ms outage took {took:?}");
        assert!(took < SEND_TIMEOUT, "{took:?}");

        assert_eq!(
            wait_for(&seen, 2).await,
            [1, 3],
            "2 never reached the broker"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(seen.lock().expect("lock").len(), 2, "nothing more arrived");
        env.finish().await;
        drop(relay);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_send_is_never_ok_without_the_broker_confirm() {
    let harness = AmqpHarness::from_env();
    bounded(async {
        let mut env = TestEnv::new(&harness);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let _listener = env
            .start(env.builder("listener").listener(Seen {
                seen: Arc::clone(&seen),
            }))
            .await;
        let relay = Relay::start(0).await;
        let sender = env
            .start(
                env.builder("sender")
                    .url(relay.url())
                    .send_timeout(SEND_TIMEOUT),
            )
            .await;
        sender.send_event(&Ping { n: 1 }).await.expect("send 1");

        // The broker takes the message but its confirm never comes back.
        relay.mute_broker.store(true, Ordering::SeqCst);
        let began = Instant::now();
        let error = sender
            .send_event(&Ping { n: 2 })
            .await
            .expect_err("no confirm, no success");
        let took = began.elapsed();
        println!("no confirm: send failed after {took:?}: {error}");
        assert!(
            matches!(error, Error::Timeout { .. } | Error::Unavailable { .. }),
            "{error:?}"
        );
        assert!(
            took >= SEND_TIMEOUT * 3 / 4 && took <= SEND_TIMEOUT + Duration::from_millis(500),
            "{took:?}"
        );
        // At least once: it did reach the queue, though the send reported an error.
        assert_eq!(wait_for(&seen, 2).await, [1, 2]);
        relay.cut();
        env.finish().await;
    })
    .await;
}

//! The STOMP provider under test: RabbitMQ's STOMP plugin reached through
//! `EVENTING_STOMP_URL`, and the raw tools the STOMP-specific tests need.

use std::time::Duration;

use eventing::topology::QueueSpec;
use eventing_stomp::frame::{Command, Frame};
use eventing_stomp::{RabbitAdmin, StompConfig};
use futures_util::future::BoxFuture;

use eventing_test::Harness;

/// The variable with the broker URL.
pub const URL_VARIABLE: &str = "EVENTING_STOMP_URL";
/// The URL used when the variable is not set.
pub const DEFAULT_URL: &str = "stomp://guest:guest@127.0.0.1:61613";

/// RabbitMQ's STOMP plugin at `EVENTING_STOMP_URL` (default [`DEFAULT_URL`]).
/// Every test uses unique event names, so tests share the broker.
#[derive(Clone, Debug)]
pub struct StompHarness {
    url: String,
}

impl StompHarness {
    /// The harness for the URL in the environment.
    pub fn from_env() -> Self {
        Self {
            url: std::env::var(URL_VARIABLE).unwrap_or_else(|_| DEFAULT_URL.to_string()),
        }
    }

    /// The broker URL (with credentials: do not print it).
    pub fn broker_url(&self) -> &str {
        &self.url
    }

    /// The parsed settings of the broker URL.
    pub fn config(&self) -> StompConfig {
        StompConfig::from_url(&self.url).expect("EVENTING_STOMP_URL is a valid stomp:// URL")
    }

    /// An AMQP session for topology the tests create or remove themselves.
    pub async fn admin(&self) -> RabbitAdmin {
        tokio::time::timeout(
            Duration::from_secs(20),
            RabbitAdmin::connect(&self.config()),
        )
        .await
        .expect("AMQP admin connection timed out")
        .expect("AMQP admin connection")
    }

    /// Deletes queues and exchanges, ignoring those that do not exist.
    pub async fn delete(&self, queues: &[String], exchanges: &[String]) {
        let mut admin = self.admin().await;
        for queue in queues {
            if let Err(error) = admin.delete_queue(queue).await {
                tracing::warn!(%queue, %error, "cleanup: cannot delete queue");
            }
        }
        for exchange in exchanges {
            if let Err(error) = admin.delete_exchange(exchange).await {
                tracing::warn!(%exchange, %error, "cleanup: cannot delete exchange");
            }
        }
        admin.close().await;
    }
}

impl Harness for StompHarness {
    fn name(&self) -> &'static str {
        "stomp"
    }

    fn url(&self, _env: &str) -> String {
        self.url.clone()
    }

    fn cleanup<'a>(&'a self, queues: &'a [QueueSpec], events: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let names = eventing_test::harness::with_dead_letter_queues(queues);
            eventing_test::harness::bounded_cleanup(self.delete(&names, events)).await;
        })
    }

    /// `rabbitmqctl stop_app && rabbitmqctl start_app`, then waits until the STOMP
    /// and AMQP ports answer and a STOMP session can be opened (at most 120 s).
    /// False if the broker is not on this machine or `rabbitmqctl` is missing.
    fn restart_broker(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let config = self.config();
            let limit = Duration::from_secs(120);
            let ports = [config.port, config.amqp_port];
            match crate::rabbitmq::restart_rabbitmq_app(&config.host, &ports, limit).await {
                Ok(Some(_)) => {}
                Ok(None) => return false,
                Err(error) => panic!("restarting RabbitMQ failed: {error}"),
            }
            wait_for_stomp(&config, limit).await;
            true
        })
    }
}

/// Waits until a STOMP session can be opened with `config` (at most `limit`).
async fn wait_for_stomp(config: &StompConfig, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let provider = eventing_stomp::StompProvider::with_config(
            config.clone(),
            "restart-probe",
            Duration::from_secs(5),
        )
        .await;
        if let Ok(provider) = provider {
            let _ = eventing::provider::Provider::close(&provider).await;
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "STOMP did not come back within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The names of the broker's queues that contain `filter` (`rabbitmqctl list_queues name`).
pub async fn queue_names(filter: &str) -> Vec<String> {
    let output = rabbitmqctl(&["list_queues", "--no-table-headers", "name"]).await;
    let mut names: Vec<String> = output
        .lines()
        .map(str::trim)
        .filter(|name| name.contains(filter))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

pub use crate::rabbitmq::{port_open, rabbitmqctl};

/// Restarts the broker application (`rabbitmqctl stop_app` then `start_app`, as
/// `scripts/broker.sh restart` does) and returns once STOMP answers a `CONNECT`
/// again: connections drop, durable queues and persistent messages stay.
pub async fn restart_broker_app(harness: &StompHarness) {
    rabbitmqctl(&["stop_app"]).await;
    rabbitmqctl(&["start_app"]).await;
    wait_for_stomp(&harness.config(), Duration::from_secs(120)).await;
}

/// A bare STOMP 1.2 client over TCP (the crate's codec, nothing else), for
/// frames the provider would never send.
pub struct RawStomp {
    read: tokio_util::codec::FramedRead<
        tokio::net::tcp::OwnedReadHalf,
        eventing_stomp::codec::StompCodec,
    >,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl RawStomp {
    /// Connects and logs in with the harness URL's credentials, without heart-beats.
    pub async fn connect(harness: &StompHarness) -> RawStomp {
        let config = harness.config();
        let tcp = tokio::net::TcpStream::connect((config.host.as_str(), config.port))
            .await
            .expect("connect to STOMP");
        let (read, write) = tcp.into_split();
        let mut raw = RawStomp {
            read: tokio_util::codec::FramedRead::new(
                read,
                eventing_stomp::codec::StompCodec::new(),
            ),
            write,
        };
        let mut connect = Frame::new(Command::Connect)
            .header("accept-version", "1.2")
            .header("host", config.vhost.clone())
            .header("heart-beat", "0,0");
        if let Some(login) = &config.login {
            connect.push_header("login", login.clone());
        }
        if let Some(passcode) = &config.passcode {
            connect.push_header("passcode", passcode.clone());
        }
        raw.send(connect).await;
        let connected = raw.recv().await;
        assert_eq!(connected.command, Command::Connected, "{connected:?}");
        raw
    }

    /// Writes one frame.
    pub async fn send(&mut self, frame: Frame) {
        use tokio::io::AsyncWriteExt;
        let mut buf = bytes::BytesMut::new();
        eventing_stomp::codec::StompCodec::new()
            .encode_frame(&frame, &mut buf)
            .expect("encodable frame");
        self.write.write_all(&buf).await.expect("write a frame");
    }

    /// The next frame (heart-beats skipped), waiting at most 20 s.
    pub async fn recv(&mut self) -> Frame {
        use eventing_stomp::codec::Incoming;
        use futures_util::StreamExt;
        let next = async {
            loop {
                match self.read.next().await {
                    Some(Ok(Incoming::Frame(frame))) => return frame,
                    Some(Ok(Incoming::Heartbeat)) => continue,
                    Some(Err(error)) => panic!("bad frame from the broker: {error}"),
                    None => panic!("the broker closed the connection"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), next)
            .await
            .expect("no frame from the broker within 20 s")
    }

    /// Sends `frame` with a receipt and returns the broker's answer (`RECEIPT` or `ERROR`).
    pub async fn request(&mut self, frame: Frame) -> Frame {
        self.send(frame.header("receipt", "raw-1")).await;
        self.recv().await
    }
}

/// A TCP relay to `target` that can be frozen: once frozen it stops forwarding
/// in both directions (and leaves new connections unanswered) while keeping
/// every socket open, as a network partition does.
pub struct FreezingProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    /// Starts relaying from an ephemeral port to `target`.
    pub async fn start(target: (String, u16)) -> FreezingProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&frozen);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let flag = std::sync::Arc::clone(&flag);
                let target = target.clone();
                connections.spawn(async move {
                    while flag.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let Ok(upstream) =
                        tokio::net::TcpStream::connect((target.0.as_str(), target.1)).await
                    else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (upstream_read, upstream_write) = upstream.into_split();
                    tokio::join!(
                        relay(client_read, upstream_write, std::sync::Arc::clone(&flag)),
                        relay(upstream_read, client_write, flag),
                    );
                });
            }
        });
        FreezingProxy { port, frozen, task }
    }

    /// Stops all forwarding from now on.
    pub fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops the JoinSet, which aborts every relay.
        self.task.abort();
    }
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

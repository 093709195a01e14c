//! The AMQP provider under test: a RabbitMQ reached through `EVENTING_AMQP_URL`, and
//! the raw tools the AMQP-specific tests need (a lapin connection, `rabbitmqctl`).

use std::time::Duration;

use eventing::topology::QueueSpec;
use futures_util::future::BoxFuture;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

// Links the provider: `amqp://` URLs resolve to it.
use eventing_amqp as _;

use eventing_test::Harness;

/// The variable with the broker URL.
pub const URL_VARIABLE: &str = "EVENTING_AMQP_URL";
/// The URL used when the variable is not set.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// RabbitMQ at `EVENTING_AMQP_URL` (default [`DEFAULT_URL`]). Every test uses
/// unique event names, so tests share the broker and can run in parallel.
#[derive(Clone, Debug)]
pub struct AmqpHarness {
    url: String,
}

impl AmqpHarness {
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

    /// A raw lapin connection to the broker, for what the provider does not do.
    pub async fn raw_connection(&self) -> Connection {
        tokio::time::timeout(
            Duration::from_secs(20),
            Connection::connect(&self.url, ConnectionProperties::default()),
        )
        .await
        .expect("raw AMQP connection timed out")
        .expect("raw AMQP connection")
    }

    /// A raw channel with the event's fanout exchange `exchange` declared as the
    /// providers declare it (durable for durable events).
    pub async fn raw_channel_with_exchange(
        &self,
        exchange: &str,
        durable: bool,
    ) -> (Connection, Channel) {
        let connection = self.raw_connection().await;
        let channel = connection.create_channel().await.expect("channel");
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
        (connection, channel)
    }

    /// Deletes queues and exchanges, ignoring those that do not exist.
    pub async fn delete(&self, queues: &[String], exchanges: &[String]) {
        let connection = self.raw_connection().await;
        let mut channel = connection.create_channel().await.expect("channel");
        for queue in queues {
            let deleted = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            if let Err(error) = deleted {
                tracing::warn!(%queue, %error, "cleanup: cannot delete queue");
                channel = reopen(&connection, channel).await;
            }
        }
        for exchange in exchanges {
            let deleted = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
            if let Err(error) = deleted {
                tracing::warn!(%exchange, %error, "cleanup: cannot delete exchange");
                channel = reopen(&connection, channel).await;
            }
        }
        let _ = connection.close(200, "cleanup done".into()).await;
    }
}

async fn reopen(connection: &Connection, channel: Channel) -> Channel {
    if channel.status().connected() {
        channel
    } else {
        connection.create_channel().await.expect("channel")
    }
}

impl Harness for AmqpHarness {
    fn name(&self) -> &'static str {
        "amqp"
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

    fn restart_broker(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            restart_broker_app(self).await;
            true
        })
    }
}

/// One row of `rabbitmqctl list_queues`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    /// Queue name.
    pub name: String,
    /// Survives a broker restart.
    pub durable: bool,
    /// Owned by one connection, deleted with it.
    pub exclusive: bool,
    /// Messages ready for delivery.
    pub ready: u64,
    /// Messages delivered and not acknowledged yet.
    pub unacked: u64,
    /// Queue arguments as rabbitmqctl prints them.
    pub arguments: String,
}

/// The broker's queues whose names contain `filter` (runs `rabbitmqctl`).
pub async fn list_queues(filter: &str) -> Vec<QueueInfo> {
    let output = rabbitmqctl(&[
        "list_queues",
        "--no-table-headers",
        "name",
        "durable",
        "exclusive",
        "messages_ready",
        "messages_unacknowledged",
        "arguments",
    ])
    .await;
    output
        .lines()
        .filter_map(|line| {
            let mut columns = line.split('\t');
            let name = columns.next()?.to_string();
            let durable = columns.next()? == "true";
            let exclusive = columns.next()? == "true";
            let ready = columns.next()?.parse().ok()?;
            let unacked = columns.next()?.parse().ok()?;
            let arguments = columns.next().unwrap_or("").to_string();
            Some(QueueInfo {
                name,
                durable,
                exclusive,
                ready,
                unacked,
                arguments,
            })
        })
        .filter(|queue| queue.name.contains(filter))
        .collect()
}

/// The broker's exchanges whose names contain `filter`, as `(name, type, durable)`.
pub async fn list_exchanges(filter: &str) -> Vec<(String, String, bool)> {
    let output = rabbitmqctl(&[
        "list_exchanges",
        "--no-table-headers",
        "name",
        "type",
        "durable",
    ])
    .await;
    output
        .lines()
        .filter_map(|line| {
            let mut columns = line.split('\t');
            let name = columns.next()?.to_string();
            let kind = columns.next()?.to_string();
            let durable = columns.next()? == "true";
            Some((name, kind, durable))
        })
        .filter(|(name, _, _)| name.contains(filter))
        .collect()
}

pub use crate::rabbitmq::{port_open, rabbitmqctl};

/// Restarts the broker application (`rabbitmqctl stop_app` then `start_app`, as
/// `scripts/broker.sh restart` does): connections drop, durable queues and
/// persistent messages stay. Returns once AMQP (and STOMP, if it was up) answer.
pub async fn restart_broker_app(harness: &AmqpHarness) {
    let stomp = port_open(61613).await;
    rabbitmqctl(&["stop_app"]).await;
    rabbitmqctl(&["start_app"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(harness.broker_url(), ConnectionProperties::default()),
        )
        .await;
        if let Ok(Ok(connection)) = connected {
            let _ = connection.close(200, "broker is back".into()).await;
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker did not come back within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    while stomp && !port_open(61613).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "STOMP did not come back within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A tap on `exchange`: an exclusive, server-named queue with `arguments`, bound
/// to it, that a test reads with `basic_get` to see what was published.
pub async fn tap(channel: &Channel, exchange: &str, arguments: FieldTable) -> ShortString {
    let queue = channel
        .queue_declare(
            ShortString::default(),
            QueueDeclareOptions::exclusive(),
            arguments,
        )
        .await
        .expect("tap queue");
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            ShortString::default(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind tap");
    queue.name().clone()
}

//! The Redis Streams provider under test: a redis-server reached through
//! `EVENTING_REDIS_URL` (started by `scripts/redis.sh`), and a raw redis-rs
//! connection for what the provider does not do.

use std::time::Duration;

use eventing::topology::QueueSpec;
use futures_util::future::BoxFuture;

// Links the provider: `redis://` URLs resolve to it.
use eventing_redis as _;

use eventing_test::Harness;

/// The variable with the server URL.
pub const URL_VARIABLE: &str = "EVENTING_REDIS_URL";
/// The URL used when the variable is not set (the port scripts/redis.sh uses).
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6390";
/// How long an entry may stay idle in a consumer before another claims it, in the
/// tests (the provider's default is 15 s): the killed-consumer test waits for it.
pub const TEST_CLAIM_IDLE_SECS: u32 = 3;

/// redis-server at `EVENTING_REDIS_URL` (default [`DEFAULT_URL`]). Every test uses
/// unique event names, so tests share the server and can run in parallel.
#[derive(Clone, Debug)]
pub struct RedisHarness {
    url: String,
}

impl RedisHarness {
    /// The harness for the URL in the environment.
    pub fn from_env() -> Self {
        // `EVENTING_REDIS_LOG=<filter>` shows the provider's logs.
        Self {
            url: crate::url_from_env(URL_VARIABLE, DEFAULT_URL, "EVENTING_REDIS_LOG"),
        }
    }

    /// The server URL as given (may hold credentials: do not print it).
    pub fn server_url(&self) -> &str {
        &self.url
    }

    /// The URL managers connect to: the server's, with the tests' `claim_idle`.
    pub fn manager_url(&self) -> String {
        if self.url.contains("claim_idle=") {
            return self.url.clone();
        }
        let joiner = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{joiner}claim_idle={TEST_CLAIM_IDLE_SECS}", self.url)
    }

    /// A raw redis-rs connection to the server.
    pub async fn raw(&self) -> ::redis::aio::MultiplexedConnection {
        let client = ::redis::Client::open(self.url.as_str()).expect("EVENTING_REDIS_URL");
        tokio::time::timeout(
            Duration::from_secs(10),
            client.get_multiplexed_async_connection(),
        )
        .await
        .expect("raw Redis connection timed out")
        .expect("raw Redis connection")
    }

    /// Deletes the streams of `events` and their schedules, the dead-letter
    /// streams and delay queues of `queues` and the bookkeeping keys of
    /// per-process queues.
    pub async fn delete(&self, queues: &[QueueSpec], events: &[String]) {
        let mut connection = self.raw().await;
        let mut keys: Vec<String> = Vec::new();
        for event in events {
            keys.push(event.clone());
            keys.push(format!("eventing:per-process:{event}"));
            keys.push(format!("eventing:schedule:{event}"));
        }
        for queue in queues {
            keys.push(queue.dead_letter_queue());
            keys.push(format!("eventing:alive:{}", queue.name));
            keys.extend(queue.delay_queues());
        }
        for chunk in keys.chunks(100) {
            let _: Result<i64, _> = ::redis::cmd("DEL")
                .arg(chunk)
                .query_async(&mut connection)
                .await;
        }
    }

    /// Answers PING.
    pub async fn ping(&self) -> bool {
        let Ok(client) = ::redis::Client::open(self.url.as_str()) else {
            return false;
        };
        let Ok(Ok(mut connection)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            return false;
        };
        ::redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .is_ok()
    }
}

/// Runs `scripts/redis.sh <action>`; true if it succeeded.
pub async fn script(action: &str) -> bool {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/redis.sh");
    matches!(
        tokio::process::Command::new("bash")
            .arg(script)
            .arg(action)
            .status()
            .await,
        Ok(status) if status.success()
    )
}

impl Harness for RedisHarness {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn url(&self, _env: &str) -> String {
        self.manager_url()
    }

    fn cleanup<'a>(&'a self, queues: &'a [QueueSpec], events: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            eventing_test::harness::bounded_cleanup(self.delete(queues, events)).await;
        })
    }

    /// Restarts redis-server through `scripts/redis.sh restart` (same data dir: the
    /// AOF is replayed, so streams, groups and pending entries survive). False if
    /// the script did not start the server that runs.
    fn restart_broker(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            if !script("restart").await {
                return false;
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < deadline {
                if self.ping().await {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        })
    }
}

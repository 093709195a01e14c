//! One broker connection, opened again on demand after it was lost.
//!
//! lapin's own recovery replays topology and consumers but not `basic.qos`, and
//! it cannot tell the runtime what it lost; instead a lost connection ends its
//! consumers' streams, the runtime subscribes again with backoff, and the next
//! declaration, subscription or publish here opens a fresh connection.
//!
//! With the URL's `failover` hosts, opening a connection tries the hosts in
//! turn: first the one that worked last, then the others in the URL's order. Each
//! attempt gets an equal share of the connect timeout (at least
//! [`MIN_ATTEMPT`]), so a host that does not answer at all cannot use up the
//! whole round.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use eventing::{Error, Result};
use lapin::tcp::OwnedTLSConfig;
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use parking_lot::{Mutex, RwLock};

use crate::error::PROVIDER;

/// How long a failed attempt to connect answers for every caller, so an outage
/// costs one attempt per interval rather than one per send.
const RETRY_AFTER: Duration = Duration::from_millis(250);
/// How long `close` waits for the broker.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The least time one host gets in a round over several hosts.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);
/// The largest frame asked for when the URL does not set `frame_max`.
///
/// lapin keeps a receive and a send buffer of 32 frames for each connection. Left
/// to the broker (RabbitMQ: 128 KiB), it grows them to 4 MiB each when the
/// connection is tuned, writing zeros, so every connection holds 8 MiB of resident
/// memory (16 MiB for a provider's two). At 32 KiB they take at most 2 MiB per
/// connection, paged in as they are used; larger bodies are split into more
/// frames. (With a broker that leaves frame_max unlimited, lapin would size the
/// buffers for 4 GiB frames.)
pub(crate) const DEFAULT_FRAME_MAX: u32 = 32 * 1024;

/// One host a link may connect to.
struct Host {
    uri: AMQPUri,
    /// `host:port`, for logs.
    address: String,
}

/// A connection slot.
pub(crate) struct Link {
    /// The URL's host first, then its `failover` hosts; never empty.
    hosts: Vec<Host>,
    /// The index in `hosts` of the host that worked last.
    preferred: AtomicUsize,
    /// Extra trusted certificates for `amqps://` (the URL's `tls_ca`).
    tls: OwnedTLSConfig,
    /// The URL without credentials.
    url: String,
    /// The connection's name on the broker.
    name: String,
    timeout: Duration,
    current: RwLock<Arc<Connection>>,
    reopening: tokio::sync::Mutex<()>,
    last_failure: Mutex<Option<(Instant, String)>>,
    closed: AtomicBool,
}

impl Link {
    /// Connects to the first of `hosts` that answers (the URL's host, then its
    /// `failover` hosts), each attempt bounded by its share of `timeout`.
    pub(crate) async fn open(
        hosts: Vec<AMQPUri>,
        tls: OwnedTLSConfig,
        url: String,
        name: String,
        timeout: Duration,
    ) -> Result<Self> {
        let hosts: Vec<Host> = hosts
            .into_iter()
            .map(|uri| Host {
                address: address(&uri),
                uri: with_default_frame_max(uri),
            })
            .collect();
        if hosts.is_empty() {
            return Err(Error::InvalidUrl {
                reason: format!("`{url}`: no host to connect to"),
            });
        }
        let preferred = AtomicUsize::new(0);
        let connection = connect_any(&hosts, &preferred, &tls, &url, &name, timeout).await?;
        Ok(Self {
            hosts,
            preferred,
            tls,
            url,
            name,
            timeout,
            current: RwLock::new(Arc::new(connection)),
            reopening: tokio::sync::Mutex::new(()),
            last_failure: Mutex::new(None),
            closed: AtomicBool::new(false),
        })
    }

    /// The connection, connecting again if it was lost.
    pub(crate) async fn get(&self) -> Result<Arc<Connection>> {
        let current = self.current();
        if current.status().connected() {
            return Ok(current);
        }
        let _reopening = self.reopening.lock().await;
        let current = self.current();
        if current.status().connected() {
            return Ok(current);
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Unavailable {
                provider: PROVIDER,
                reason: "the provider is closed".into(),
            });
        }
        if let Some((at, reason)) = &*self.last_failure.lock()
            && at.elapsed() < RETRY_AFTER
        {
            return Err(Error::Unavailable {
                provider: PROVIDER,
                reason: reason.clone(),
            });
        }
        let connecting = connect_any(
            &self.hosts,
            &self.preferred,
            &self.tls,
            &self.url,
            &self.name,
            self.timeout,
        );
        match connecting.await {
            Ok(connection) => {
                let host = &self.hosts[self.preferred.load(Ordering::SeqCst) % self.hosts.len()];
                tracing::info!(url = %self.url, connection = %self.name, host = %host.address, "reconnected");
                let connection = Arc::new(connection);
                *self.current.write() = Arc::clone(&connection);
                *self.last_failure.lock() = None;
                Ok(connection)
            }
            Err(error) => {
                tracing::warn!(url = %self.url, connection = %self.name, %error, "cannot reconnect");
                // Kept as the bare reason: callers get it in an `Unavailable` again.
                let reason = match &error {
                    Error::Unavailable { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                *self.last_failure.lock() = Some((Instant::now(), reason));
                Err(error)
            }
        }
    }

    /// The connection as it is, without connecting again.
    pub(crate) fn current(&self) -> Arc<Connection> {
        Arc::clone(&self.current.read())
    }

    /// Closes the connection for good.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _reopening = self.reopening.lock().await;
        let connection = self.current();
        if !connection.status().connected() {
            return;
        }
        let closing = connection.close(200, "eventing: shutdown".into());
        match tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(connection = %self.name, %error, "closing"),
            Err(_) => tracing::warn!(connection = %self.name, "the broker did not confirm closing"),
        }
    }
}

/// `uri` asking for [`DEFAULT_FRAME_MAX`] unless it sets `frame_max` itself.
fn with_default_frame_max(mut uri: AMQPUri) -> AMQPUri {
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(DEFAULT_FRAME_MAX);
    }
    uri
}

/// `host:port` of `uri`, never its credentials.
fn address(uri: &AMQPUri) -> String {
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

/// How long one attempt of a round over `count` hosts may take: an equal share
/// of `timeout`, at least [`MIN_ATTEMPT`], at most `timeout`.
fn attempt_limit(timeout: Duration, count: usize) -> Duration {
    if count <= 1 {
        return timeout;
    }
    let share = timeout / u32::try_from(count).unwrap_or(u32::MAX);
    share.max(MIN_ATTEMPT).min(timeout)
}

/// The order of a round over `count` hosts: `preferred` first, then the others
/// in the URL's order after it, wrapping around.
fn round(preferred: usize, count: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |step| (preferred + step) % count.max(1))
}

/// One round over `hosts` (never empty), starting with `preferred`, which is set
/// to the host that answers; the connection, or the last host's error (each
/// failure is logged when there are several hosts).
async fn connect_any(
    hosts: &[Host],
    preferred: &AtomicUsize,
    tls: &OwnedTLSConfig,
    url: &str,
    name: &str,
    timeout: Duration,
) -> Result<Connection> {
    let count = hosts.len();
    let limit = attempt_limit(timeout, count);
    let first = preferred.load(Ordering::SeqCst) % count.max(1);
    let mut last_error = None;
    for index in round(first, count) {
        let host = &hosts[index];
        match connect(&host.uri, tls, url, &host.address, name, limit).await {
            Ok(connection) => {
                if index != first {
                    tracing::warn!(
                        url = %url,
                        connection = %name,
                        from = %hosts[first].address,
                        to = %host.address,
                        "failed over to another host"
                    );
                }
                preferred.store(index, Ordering::SeqCst);
                return Ok(connection);
            }
            Err(error) => {
                if count > 1 {
                    tracing::warn!(
                        url = %url,
                        connection = %name,
                        host = %host.address,
                        %error,
                        "cannot connect to this host"
                    );
                }
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| Error::Unavailable {
        provider: PROVIDER,
        reason: format!("cannot connect to {url}: no host"),
    }))
}

/// Connects to one host (`address`, for messages) of the URL `url` (redacted).
async fn connect(
    uri: &AMQPUri,
    tls: &OwnedTLSConfig,
    url: &str,
    address: &str,
    name: &str,
    timeout: Duration,
) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime().map_err(|error| Error::Unavailable {
        provider: PROVIDER,
        reason: format!("cannot connect to {url} ({address}): {error}"),
    })?;
    let connecting =
        Connection::connect_uri_with_config(uri.clone(), properties, tls.clone(), runtime);
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(Error::Timeout {
            operation: "connecting to the AMQP broker",
            after: timeout,
        }),
        Ok(Err(error)) => Err(Error::Unavailable {
            provider: PROVIDER,
            reason: format!("cannot connect to {url} ({address}): {error}"),
        }),
        Ok(Ok(connection)) => Ok(connection),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_small_unless_the_url_says_otherwise() {
        let uri: AMQPUri = "amqp://127.0.0.1:5672/%2f".parse().expect("uri");
        assert_eq!(
            with_default_frame_max(uri).query.frame_max,
            Some(DEFAULT_FRAME_MAX)
        );
        let uri: AMQPUri = "amqp://127.0.0.1:5672/%2f?frame_max=131072"
            .parse()
            .expect("uri");
        assert_eq!(with_default_frame_max(uri).query.frame_max, Some(131_072));
    }

    #[test]
    fn a_round_starts_with_the_preferred_host_and_visits_each_once() {
        assert_eq!(round(0, 3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(round(1, 3).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(round(2, 3).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(round(0, 1).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn each_host_gets_a_share_of_the_timeout() {
        let five = Duration::from_secs(5);
        assert_eq!(attempt_limit(five, 1), five);
        assert_eq!(attempt_limit(five, 2), Duration::from_millis(2500));
        assert_eq!(attempt_limit(five, 20), MIN_ATTEMPT);
        let short = Duration::from_millis(300);
        assert_eq!(
            attempt_limit(short, 3),
            short,
            "never more than the timeout"
        );
    }

    #[tokio::test]
    async fn a_round_fails_over_to_the_host_that_answers_and_remembers_it() {
        // Two closed loopback ports around the shared broker (if it runs).
        let closed = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port")
        };
        let (dead_a, dead_b) = (closed(), closed());
        let uri = |port: u16| -> AMQPUri {
            format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
                .parse()
                .expect("uri")
        };
        let hosts: Vec<Host> = [dead_a, dead_b]
            .into_iter()
            .map(|port| Host {
                uri: uri(port),
                address: format!("127.0.0.1:{port}"),
            })
            .collect();
        let preferred = AtomicUsize::new(1);
        let error = connect_any(
            &hosts,
            &preferred,
            &OwnedTLSConfig::default(),
            "amqp://***@127.0.0.1/%2f",
            "test",
            Duration::from_secs(2),
        )
        .await
        .expect_err("nothing listens");
        assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
        // The last host of the round (starting at 1) is 0.
        assert!(
            error.to_string().contains(&format!(":{dead_a})")),
            "{error}"
        );
        assert_eq!(preferred.load(Ordering::SeqCst), 1, "unchanged on failure");
    }

    #[test]
    fn a_host_is_logged_as_host_and_port() {
        let uri: AMQPUri = "amqp://u:p@rabbit-1.example:5673/%2f".parse().expect("uri");
        assert_eq!(address(&uri), "rabbit-1.example:5673");
    }
}

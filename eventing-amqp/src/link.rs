//! One broker connection, opened again on demand after it was lost.
//!
//! lapin's own recovery replays topology and consumers but not `basic.qos`, and
//! it cannot tell the runtime what it lost; instead a lost connection ends its
//! consumers' streams, the runtime subscribes again with backoff, and the next
//! declaration, subscription or publish here opens a fresh connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// A connection slot.
pub(crate) struct Link {
    uri: AMQPUri,
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
    /// Connects, waiting at most `timeout`.
    pub(crate) async fn open(
        uri: AMQPUri,
        tls: OwnedTLSConfig,
        url: String,
        name: String,
        timeout: Duration,
    ) -> Result<Self> {
        let uri = with_default_frame_max(uri);
        let connection = connect(&uri, &tls, &url, &name, timeout).await?;
        Ok(Self {
            uri,
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
        match connect(&self.uri, &self.tls, &self.url, &self.name, self.timeout).await {
            Ok(connection) => {
                tracing::info!(url = %self.url, connection = %self.name, "reconnected");
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

async fn connect(
    uri: &AMQPUri,
    tls: &OwnedTLSConfig,
    url: &str,
    name: &str,
    timeout: Duration,
) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime().map_err(|error| Error::Unavailable {
        provider: PROVIDER,
        reason: format!("cannot connect to {url}: {error}"),
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
            reason: format!("cannot connect to {url}: {error}"),
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
}

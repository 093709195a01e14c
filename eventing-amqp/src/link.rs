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
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use parking_lot::{Mutex, RwLock};

use crate::error::PROVIDER;

/// How long a failed attempt to connect answers for every caller, so an outage
/// costs one attempt per interval rather than one per send.
const RETRY_AFTER: Duration = Duration::from_millis(250);
/// How long `close` waits for the broker.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection slot.
pub(crate) struct Link {
    uri: AMQPUri,
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
        url: String,
        name: String,
        timeout: Duration,
    ) -> Result<Self> {
        let connection = connect(&uri, &url, &name, timeout).await?;
        Ok(Self {
            uri,
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
        match connect(&self.uri, &self.url, &self.name, self.timeout).await {
            Ok(connection) => {
                tracing::info!(url = %self.url, connection = %self.name, "reconnected");
                let connection = Arc::new(connection);
                *self.current.write() = Arc::clone(&connection);
                *self.last_failure.lock() = None;
                Ok(connection)
            }
            Err(error) => {
                tracing::warn!(url = %self.url, connection = %self.name, %error, "cannot reconnect");
                *self.last_failure.lock() = Some((Instant::now(), error.to_string()));
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

async fn connect(uri: &AMQPUri, url: &str, name: &str, timeout: Duration) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connecting = Connection::connect_uri(uri.clone(), properties);
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

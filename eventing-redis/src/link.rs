//! Connections: one shared multiplexed connection for sends, acks and admin
//! commands (re-made after it fails), and a dedicated one per consumer (its
//! blocking `XREADGROUP` would hold up everything queued behind it on a shared one).
//!
//! With `redis+sentinel://` every new connection asks the sentinels for the current
//! master first, so a reconnect after a failover reaches the new master.

use std::time::Duration;

use eventing::Result;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::error::{from_redis, unavailable};
use crate::url::{RedisUrl, Servers};

/// How to reach the server.
pub(crate) struct Link {
    url: RedisUrl,
    /// `redis+sentinel://`: asks the sentinels for the master.
    sentinel: Option<tokio::sync::Mutex<redis::sentinel::SentinelClient>>,
    /// The shared connection, once made; `None` after it failed.
    shared: Mutex<Option<MultiplexedConnection>>,
    /// One connect at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Connect and response timeout of the shared connection.
    timeout: Duration,
}

fn redis_info(url: &RedisUrl) -> redis::RedisConnectionInfo {
    let mut info = redis::RedisConnectionInfo::default().set_db(url.db);
    if let Some(user) = &url.user {
        info = info.set_username(user);
    }
    if let Some(password) = &url.password {
        info = info.set_password(password);
    }
    info.set_lib_name("eventing-redis", env!("CARGO_PKG_VERSION"))
}

#[cfg(feature = "rustls")]
fn certificates(url: &RedisUrl) -> Result<Option<redis::TlsCertificates>> {
    let Some(path) = &url.tls_ca else {
        return Ok(None);
    };
    let root_cert = std::fs::read(path).map_err(|e| eventing::Error::InvalidUrl {
        reason: format!("cannot read the tls_ca file {}: {e}", path.display()),
    })?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    }))
}

impl Link {
    /// A link for `url`; nothing is connected yet.
    pub(crate) fn new(url: RedisUrl, timeout: Duration) -> Result<Self> {
        let sentinel = match &url.servers {
            Servers::Direct(..) => None,
            Servers::Sentinel { sentinels, master } => {
                let addrs: Vec<ConnectionInfo> = sentinels
                    .iter()
                    .map(|(host, port)| {
                        let addr = if url.tls {
                            ConnectionAddr::TcpTls {
                                host: host.clone(),
                                port: *port,
                                insecure: false,
                                tls_params: None,
                            }
                        } else {
                            ConnectionAddr::Tcp(host.clone(), *port)
                        };
                        addr.into_connection_info()
                    })
                    .collect::<redis::RedisResult<_>>()
                    .map_err(|e| from_redis("reading the sentinel addresses", &e))?;
                let mut node = redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(redis_info(&url));
                if url.tls {
                    node = node.set_tls_mode(redis::TlsMode::Secure);
                }
                let client = redis::sentinel::SentinelClient::build(
                    addrs,
                    master.clone(),
                    Some(node),
                    redis::sentinel::SentinelServerType::Master,
                )
                .map_err(|e| from_redis("setting up Sentinel", &e))?;
                Some(tokio::sync::Mutex::new(client))
            }
        };
        Ok(Self {
            url,
            sentinel,
            shared: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            timeout,
        })
    }

    /// The parsed URL.
    pub(crate) fn url(&self) -> &RedisUrl {
        &self.url
    }

    /// A client for the server (the master, with Sentinel).
    async fn client(&self) -> Result<Client> {
        if let Some(sentinel) = &self.sentinel {
            let mut sentinel = sentinel.lock().await;
            return tokio::time::timeout(self.timeout, sentinel.async_get_client())
                .await
                .map_err(|_| unavailable("asking the sentinels for the master timed out"))?
                .map_err(|e| from_redis("asking the sentinels for the master", &e));
        }
        let Servers::Direct(host, port) = &self.url.servers else {
            return Err(unavailable("no server address"));
        };
        let addr = if self.url.tls {
            ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(host.clone(), *port)
        };
        let info = addr
            .into_connection_info()
            .map_err(|e| from_redis("reading the server address", &e))?
            .set_redis_settings(redis_info(&self.url));
        #[cfg(feature = "rustls")]
        if let Some(certs) = certificates(&self.url)? {
            return Client::build_with_tls(info, certs)
                .map_err(|e| from_redis("setting up TLS", &e));
        }
        Client::open(info).map_err(|e| from_redis("opening a client", &e))
    }

    /// A new connection of its own, whose replies may take `response_timeout`.
    pub(crate) async fn dedicated(
        &self,
        response_timeout: Duration,
    ) -> Result<MultiplexedConnection> {
        let client = self.client().await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(response_timeout));
        tokio::time::timeout(
            self.timeout + Duration::from_millis(100),
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| unavailable("connecting timed out"))?
        .map_err(|e| from_redis("connecting", &e))
    }

    /// The shared connection, made if there is none.
    pub(crate) async fn shared(&self) -> Result<MultiplexedConnection> {
        if let Some(connection) = self.shared.lock().clone() {
            return Ok(connection);
        }
        let _one = self.connecting.lock().await;
        if let Some(connection) = self.shared.lock().clone() {
            return Ok(connection);
        }
        let connection = self.dedicated(self.timeout).await?;
        tracing::debug!("connected to Redis");
        *self.shared.lock() = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets the shared connection after `error`, if the error means it is broken
    /// (the next [`shared`](Self::shared) connects again).
    pub(crate) fn failed(&self, error: &redis::RedisError) {
        if crate::error::transient(error) {
            self.shared.lock().take();
        }
    }

    /// Runs `cmd` on the shared connection; a transient failure drops the
    /// connection (the next command connects again) and is [`eventing::Error::Unavailable`].
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        let mut connection = self.shared().await?;
        match cmd.query_async::<T>(&mut connection).await {
            Ok(value) => Ok(value),
            Err(error) => {
                self.failed(&error);
                Err(from_redis(operation, &error))
            }
        }
    }

    /// Runs `pipe` on the shared connection (as [`query`](Self::query)).
    pub(crate) async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T> {
        let mut connection = self.shared().await?;
        match pipe.query_async::<T>(&mut connection).await {
            Ok(value) => Ok(value),
            Err(error) => {
                self.failed(&error);
                Err(from_redis(operation, &error))
            }
        }
    }
}

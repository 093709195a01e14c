//! TCP and TLS byte streams, split into a read half and a write half.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::StompConfig;
use crate::error::StompError;

/// The read half of a connection.
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a connection.
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Opens TCP connections, with TLS when the URL says `stomps://`.
#[derive(Clone)]
pub(crate) struct Transport {
    #[cfg(feature = "rustls")]
    tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
    connect_timeout: Duration,
}

impl Transport {
    /// Prepares TLS (trust roots) once for all connections of a provider.
    pub(crate) fn new(config: &StompConfig) -> Result<Transport, StompError> {
        #[cfg(feature = "rustls")]
        {
            let tls = if config.tls {
                Some(tls::client_config(config)?)
            } else {
                None
            };
            Ok(Transport {
                tls,
                connect_timeout: config.connect_timeout,
            })
        }
        #[cfg(not(feature = "rustls"))]
        {
            if config.tls {
                return Err(StompError::TlsNotBuilt);
            }
            Ok(Transport {
                connect_timeout: config.connect_timeout,
            })
        }
    }

    /// Connects to `host:port` (TLS if configured), within the connect timeout.
    pub(crate) async fn open(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(ReadHalf, WriteHalf), StompError> {
        let endpoint = endpoint(host, port);
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| StompError::Connect {
                endpoint: endpoint.clone(),
                reason: format!("no answer within {:?}", self.connect_timeout),
            })?
            .map_err(|e| StompError::Connect {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            })?;
        // Frames are batched by the writer task; do not delay small writes.
        let _ = tcp.set_nodelay(true);
        #[cfg(feature = "rustls")]
        if let Some(tls) = &self.tls {
            let stream = tls::handshake(tls, host, tcp, self.connect_timeout, &endpoint).await?;
            let (read, write) = tokio::io::split(stream);
            return Ok((Box::new(read), Box::new(write)));
        }
        let (read, write) = tcp.into_split();
        Ok((Box::new(read), Box::new(write)))
    }
}

/// `host:port`, with brackets around IPv6 addresses.
pub(crate) fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(feature = "rustls")]
mod tls {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

    use crate::config::StompConfig;
    use crate::error::StompError;

    /// Trusts the webpki roots, the system's certificates and the `tls_ca` file.
    pub(super) fn client_config(config: &StompConfig) -> Result<Arc<ClientConfig>, StompError> {
        let fail = |reason: String| StompError::Tls {
            endpoint: config.endpoint(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::debug!(%error, "skipping a system certificate store");
        }
        let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
        if let Some(path) = &config.tls_ca {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| fail(format!("cannot read tls_ca {path}: {e}")))?;
            let mut count = 0;
            for cert in certs {
                let cert =
                    cert.map_err(|e| fail(format!("bad certificate in tls_ca {path}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| fail(format!("unusable certificate in tls_ca {path}: {e}")))?;
                count += 1;
            }
            if count == 0 {
                return Err(fail(format!("no certificate in tls_ca {path}")));
            }
        }
        let client =
            ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| fail(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Arc::new(client))
    }

    pub(super) async fn handshake(
        config: &Arc<ClientConfig>,
        host: &str,
        tcp: TcpStream,
        timeout: Duration,
        endpoint: &str,
    ) -> Result<TlsStream<TcpStream>, StompError> {
        let fail = |reason: String| StompError::Tls {
            endpoint: endpoint.to_string(),
            reason,
        };
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| fail(format!("invalid server name: {e}")))?;
        let connector = TlsConnector::from(Arc::clone(config));
        tokio::time::timeout(timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| fail(format!("no handshake within {timeout:?}")))?
            .map_err(|e| fail(e.to_string()))
    }
}

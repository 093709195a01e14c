//! `stomps://` end to end against a small TLS STOMP server in the test (no broker
//! needed): the handshake, certificate checks against `tls_ca`, and frames over TLS.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use eventing::Envelope;
use eventing::provider::{Provider, ProviderConfig, Route};
use eventing_stomp::StompProvider;
use eventing_stomp::codec::{Incoming, StompCodec};
use eventing_stomp::frame::{Command, Frame};
use futures_util::StreamExt;
use parking_lot::Mutex;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::codec::FramedRead;

/// A CA, and a server certificate for `localhost` signed by it.
struct Pki {
    ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .expect("server params")
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server certificate");
    Pki {
        ca_pem: ca.pem(),
        server_cert: server.der().clone(),
        server_key: server_key.serialize_der(),
    }
}

/// Serves STOMP over TLS on an ephemeral port: answers CONNECT, receipts and
/// DISCONNECT, and records every frame it gets.
async fn serve(pki: &Pki) -> (u16, Arc<Mutex<Vec<Frame>>>) {
    let config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![pki.server_cert.clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone())),
    )
    .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let frames = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&frames);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (read, mut write) = tokio::io::split(tls);
                let mut read = FramedRead::new(read, StompCodec::new());
                let codec = StompCodec::new();
                while let Some(Ok(item)) = read.next().await {
                    let Incoming::Frame(frame) = item else {
                        continue;
                    };
                    let reply = match frame.command {
                        Command::Connect => Some(
                            Frame::new(Command::Connected)
                                .header("version", "1.2")
                                .header("heart-beat", "0,0"),
                        ),
                        _ => frame
                            .get("receipt")
                            .map(|id| Frame::new(Command::Receipt).header("receipt-id", id)),
                    };
                    let last = frame.command == Command::Disconnect;
                    seen.lock().push(frame);
                    if let Some(reply) = reply {
                        let mut buf = BytesMut::new();
                        codec.encode_frame(&reply, &mut buf).expect("encode");
                        if write.write_all(&buf).await.is_err() {
                            return;
                        }
                    }
                    if last {
                        return;
                    }
                }
            });
        }
    });
    (port, frames)
}

fn provider_config(url: String) -> ProviderConfig {
    ProviderConfig::new(url, "tls-test", Duration::from_secs(5))
}

#[tokio::test]
async fn stomps_with_a_trusted_ca() {
    let pki = pki();
    let ca_file =
        std::env::temp_dir().join(format!("eventing-stomp-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &pki.ca_pem).expect("write CA file");
    let (port, frames) = serve(&pki).await;
    let url = format!(
        "stomps://guest:guest@localhost:{port}?declare=none&tls_ca={}",
        ca_file.display()
    );
    let provider = tokio::time::timeout(
        Duration::from_secs(10),
        StompProvider::connect(provider_config(url)),
    )
    .await
    .expect("connect in time")
    .expect("TLS session");
    let envelope = Envelope::new(
        "tls.Event",
        eventing::codec::JSON,
        Bytes::from_static(b"{\"n\":1}"),
    );
    let route = Route::new("tls.Event", true);
    provider
        .publish(route, envelope.clone())
        .await
        .expect("receipted send over TLS");
    provider.close().await.expect("close");
    let _ = std::fs::remove_file(&ca_file);

    let frames = frames.lock().clone();
    let commands: Vec<Command> = frames.iter().map(|f| f.command).collect();
    assert_eq!(
        commands,
        [Command::Connect, Command::Send, Command::Disconnect]
    );
    let connect = &frames[0];
    assert_eq!(connect.get("accept-version"), Some("1.2"));
    assert_eq!(connect.get("login"), Some("guest"));
    let send = &frames[1];
    assert_eq!(send.get("destination"), Some("/exchange/tls.Event"));
    assert_eq!(send.get("persistent"), Some("true"));
    assert!(send.get("receipt").is_some());
    assert_eq!(send.get("amqp-message-id"), Some(envelope.message_id()));
    assert_eq!(send.body, envelope.body);
}

#[tokio::test]
async fn stomps_refuses_an_unknown_issuer() {
    let pki = pki();
    let (port, _frames) = serve(&pki).await;
    let url = format!("stomps://guest:secret-pass@localhost:{port}?declare=none");
    let error = StompProvider::connect(provider_config(url))
        .await
        .expect_err("the test CA is not trusted");
    let text = error.to_string();
    assert!(text.contains("TLS with localhost"), "{text}");
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert!(!text.contains("secret-pass"), "{text}");
}

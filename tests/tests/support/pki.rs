//! A test PKI for the TLS tests (`tls_rabbitmq`, `nats_auth`): a CA and a server
//! certificate it signed, as PEM files. Included with `#[path]` by each test file.

use std::path::Path;

use eventing_tests::nodes::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// A CA and a server certificate for `127.0.0.1` and `localhost` signed by it,
/// written as PEM files under `dir`.
pub(crate) fn make_pki(dir: &Path) -> TlsFiles {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "eventing test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server parameters");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server_key = KeyPair::generate().expect("server key");
    let server = server_params
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server certificate");
    std::fs::create_dir_all(dir).expect("pki dir");
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
    };
    std::fs::write(&files.ca, ca.pem()).expect("write CA");
    std::fs::write(&files.cert, server.pem()).expect("write server certificate");
    std::fs::write(&files.key, server_key.serialize_pem()).expect("write server key");
    files
}

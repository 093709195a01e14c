//! NATS URLs with credentials, against nats-servers of the test's own (child
//! processes on loopback ports of their own, stopped at the end): user and password,
//! token, NKey seed file, a `.creds` file (operator/account/user JWTs), TLS with the
//! URL's `tls_ca`; a wrong password or an untrusted server is
//! refused without the URL's secret in the error.
#![cfg(feature = "nats")]

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use eventing::Error;
use eventing_test::suite::{Ping, PingListener, Recorder};
use eventing_tests::TestEnv;
use eventing_tests::nats::NatsHarness;

#[path = "support/pki.rs"]
mod pki;
use pki::make_pki;

const WAIT: Duration = Duration::from_secs(20);

/// A nats-server child with JetStream on `port`, its store in a temp dir.
struct Server {
    child: tokio::process::Child,
    dir: std::path::PathBuf,
}

impl Server {
    async fn start(port: u16, auth: &[&str]) -> Option<Self> {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let dir =
            std::env::temp_dir().join(format!("eventing-nats-auth-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let child = tokio::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .args(auth)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn nats-server");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server on {port} did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(Self { child, dir })
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await; // SIGKILL and wait (reaped: no zombie)
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn round_trip(url: String) {
    let harness = NatsHarness::from_env();
    let mut env = TestEnv::new(&harness);
    let pings = Recorder::new();
    let manager = env
        .start(env.builder("a").url(url).listener(PingListener {
            seen: Arc::clone(&pings),
            server: "a".into(),
        }))
        .await;
    manager
        .send_event(&Ping {
            n: 1,
            text: "authenticated".into(),
        })
        .await
        .expect("send");
    assert_eq!(pings.wait_for(1, WAIT).await.len(), 1, "the ping arrives");
    env.finish().await;
}

#[test]
fn user_password_and_token() {
    eventing_test::run(async {
        let Some(server) = Server::start(14231, &["--user", "eve", "--pass", "s3cr:t@x"]).await
        else {
            println!("nats-server is not installed: skipped");
            return;
        };
        round_trip("nats://eve:s3cr%3At%40x@127.0.0.1:14231".into()).await;

        let refused = eventing::EventManager::builder()
            .url("nats://eve:wrong-secret@127.0.0.1:14231")
            .send_timeout(Duration::from_secs(3))
            .build()
            .await
            .err()
            .expect("a wrong password is refused");
        let text = refused.to_string();
        assert!(!text.contains("wrong-secret"), "the secret leaked: {text}");
        assert!(
            matches!(refused, Error::Provider { .. } | Error::Unavailable { .. }),
            "{refused:?}"
        );
        server.stop().await;

        let Some(server) = Server::start(14232, &["--auth", "t0ken"]).await else {
            return;
        };
        round_trip("nats://t0ken@127.0.0.1:14232".into()).await;
        server.stop().await;
    });
}

/// The test PKI as path strings: (ca, cert, key).
fn make_pki_paths(dir: &Path) -> (String, String, String) {
    let files = make_pki(dir);
    let text = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    (text(files.ca), text(files.cert), text(files.key))
}

#[test]
fn tls_with_the_urls_ca() {
    eventing_test::run(async {
        let dir = std::env::temp_dir().join(format!("eventing-nats-pki-{}", std::process::id()));
        let (ca, cert, key) = make_pki_paths(&dir);
        let Some(server) =
            Server::start(14233, &["--tls", "--tlscert", &cert, "--tlskey", &key]).await
        else {
            println!("nats-server is not installed: skipped");
            return;
        };
        round_trip(format!("tls://127.0.0.1:14233?tls_ca={ca}")).await;
        // Without the CA the server is not trusted.
        let refused = eventing::EventManager::builder()
            .url("tls://127.0.0.1:14233")
            .send_timeout(Duration::from_secs(3))
            .build()
            .await
            .err()
            .expect("an untrusted server is refused");
        println!("without tls_ca: {refused}");
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// The user NKey pair of the NATS documentation's NKey example (public, not a secret).
const NKEY_PUBLIC: &str = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4";
const NKEY_SEED: &str = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY";

#[test]
fn nkey_seed_file() {
    eventing_test::run(async {
        let dir = std::env::temp_dir().join(format!("eventing-nats-nkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let conf = dir.join("nkey.conf");
        std::fs::write(
            &conf,
            format!("authorization {{ users = [ {{ nkey: \"{NKEY_PUBLIC}\" }} ] }}\n"),
        )
        .expect("config");
        let seed = dir.join("user.nk");
        std::fs::write(&seed, format!("{NKEY_SEED}\n")).expect("seed");
        let conf = conf.to_string_lossy().into_owned();
        let Some(server) = Server::start(14234, &["-c", &conf]).await else {
            println!("nats-server is not installed: skipped");
            return;
        };
        round_trip(format!(
            "nats://127.0.0.1:14234?nkey_seed_file={}",
            seed.display()
        ))
        .await;
        let refused = eventing::EventManager::builder()
            .url("nats://127.0.0.1:14234")
            .send_timeout(Duration::from_secs(3))
            .build()
            .await
            .err()
            .expect("no credentials: refused");
        println!("without the nkey: {refused}");
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// A NATS JWT (`ed25519-nkey`) for `subject`, signed by `issuer`, with `nats` as its
/// NATS claims. The server checks the signature and the issuer chain, not `jti`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = serde_json::json!({
        "jti": eventing::header::new_message_id().replace('-', "").to_uppercase(),
        "iat": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        b64.encode(claims.to_string())
    );
    let signature = issuer.sign(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", b64.encode(signature))
}

/// An account JWT without limits, signed by `operator`; JetStream on if `jetstream`
/// (the server refuses it on the system account).
fn account_jwt(
    operator: &nkeys::KeyPair,
    account: &nkeys::KeyPair,
    name: &str,
    jetstream: bool,
) -> String {
    let storage = if jetstream { -1 } else { 0 };
    let limits = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": storage, "disk_storage": storage, "streams": storage, "consumer": storage,
    });
    nats_jwt(
        operator,
        &account.public_key(),
        name,
        serde_json::json!({ "limits": limits, "type": "account", "version": 2 }),
    )
}

/// A `.creds` file's text: the user JWT and the user's seed.
fn creds(user_jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

/// Decentralized (JWT) auth: a nats-server in operator mode with a memory resolver
/// trusts an operator, which signed an account, which signed a user; the URL's
/// `credentials` file (user JWT + seed) connects. A user signed by an account the
/// server does not know is refused, without the seed in the error; a missing file is
/// a clear error naming the parameter.
#[test]
fn credentials_file() {
    eventing_test::run(async {
        let dir = std::env::temp_dir().join(format!("eventing-nats-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let operator = nkeys::KeyPair::new_operator();
        let system = nkeys::KeyPair::new_account();
        let account = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let operator_jwt = nats_jwt(
            &operator,
            &operator.public_key(),
            "eventing-test",
            serde_json::json!({ "type": "operator", "version": 2 }),
        );
        let conf = dir.join("operator.conf");
        std::fs::write(
            &conf,
            format!(
                "operator: \"{operator_jwt}\"\nsystem_account: {sys}\nresolver: MEMORY\n\
                 resolver_preload: {{\n  {sys}: \"{sys_jwt}\"\n  {app}: \"{app_jwt}\"\n}}\n",
                sys = system.public_key(),
                sys_jwt = account_jwt(&operator, &system, "SYS", false),
                app = account.public_key(),
                app_jwt = account_jwt(&operator, &account, "APP", true),
            ),
        )
        .expect("config");
        let user_jwt = nats_jwt(
            &account,
            &user.public_key(),
            "eventing-user",
            serde_json::json!({
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2,
            }),
        );
        let seed = user.seed().expect("seed");
        let file = dir.join("user.creds");
        std::fs::write(&file, creds(&user_jwt, &seed)).expect("creds");
        let conf = conf.to_string_lossy().into_owned();
        let Some(server) = Server::start(14235, &["-c", &conf]).await else {
            println!("nats-server is not installed: skipped");
            return;
        };
        round_trip(format!(
            "nats://127.0.0.1:14235?credentials={}",
            file.display()
        ))
        .await;

        // A user of an account the operator never signed (unknown to the server).
        let stranger = nkeys::KeyPair::new_account();
        let other = nkeys::KeyPair::new_user();
        let other_jwt = nats_jwt(
            &stranger,
            &other.public_key(),
            "stranger",
            serde_json::json!({ "pub": {}, "sub": {}, "type": "user", "version": 2 }),
        );
        let other_seed = other.seed().expect("seed");
        let bad = dir.join("stranger.creds");
        std::fs::write(&bad, creds(&other_jwt, &other_seed)).expect("creds");
        let refused = eventing::EventManager::builder()
            .url(format!(
                "nats://127.0.0.1:14235?credentials={}",
                bad.display()
            ))
            .send_timeout(Duration::from_secs(3))
            .build()
            .await
            .err()
            .expect("an unknown account's user is refused");
        let text = refused.to_string();
        println!("stranger's credentials: {text}");
        assert!(!text.contains(&other_seed), "the seed leaked: {text}");
        assert!(
            matches!(refused, Error::Provider { .. } | Error::Unavailable { .. }),
            "{refused:?}"
        );

        let missing = eventing::EventManager::builder()
            .url(format!(
                "nats://127.0.0.1:14235?credentials={}",
                dir.join("no-such.creds").display()
            ))
            .send_timeout(Duration::from_secs(3))
            .build()
            .await
            .err()
            .expect("a missing credentials file is an error");
        println!("missing credentials file: {missing}");
        assert!(
            missing.to_string().contains("credentials"),
            "the error names the parameter: {missing}"
        );
        server.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn unknown_parameters_are_invalid_urls() {
    eventing_test::run(async {
        let error = eventing::EventManager::builder()
            .url("nats://u:topsecret@127.0.0.1:4222?no_such=1")
            .build()
            .await
            .err()
            .expect("refused");
        assert!(matches!(error, Error::InvalidUrl { .. }), "{error:?}");
        assert!(!error.to_string().contains("topsecret"));
    });
}

//! NATS URLs with credentials, against nats-servers of the test's own (child
//! processes on loopback ports of their own, stopped at the end): user and password,
//! token, TLS with the URL's `tls_ca`; a wrong password or an untrusted server is
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

//! Redis beyond the kit: interop with a plain Python `redis` client (its `XADD` of
//! a JSON body reaches an eventing listener; an eventing event read with `XRANGE`
//! is JSON), and bad input written to a stream by hand (an unparseable body, an
//! unknown event, a foreign entry without a body) dead-lettered with its reason.
//!
//! The Python client lives in a venv `scripts/redis.sh python` makes (pip install
//! redis). Without python3 the interop test prints why and does nothing else.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::Duration;

use eventing::{Event, header};
use eventing_test::suite::{Ping, PingListener, Recorder, dead_letters};
use eventing_tests::TestEnv;
use eventing_tests::redis::RedisHarness;

const WAIT: Duration = Duration::from_secs(20);

fn run<F: std::future::Future>(future: F) -> F::Output {
    eventing_test::run(future)
}

/// The Python with the `redis` package, or `None` (printed) if there is no python3.
async fn python() -> Option<String> {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("redis interop: SKIPPED, python3 is not installed");
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/redis.sh");
    let output = tokio::process::Command::new("bash")
        .arg(script)
        .arg("python")
        .output()
        .await
        .expect("run scripts/redis.sh python");
    assert!(
        output.status.success(),
        "scripts/redis.sh python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(!path.is_empty(), "scripts/redis.sh python printed no path");
    Some(path)
}

/// XADDs a JSON body to the stream, then finds the entry eventing sent (n = 7) with
/// XRANGE and prints it as JSON: {"event", "content-type", "message-id", "body"}.
const PYTHON: &str = r#"
import json, os, sys, time
import redis
r = redis.Redis.from_url(os.environ["REDIS_URL"])
stream = os.environ["STREAM"]
r.xadd(stream, {"body": json.dumps({"n": 42, "text": "from python"}), "content-type": "application/json"})
deadline = time.time() + 10
while time.time() < deadline:
    for entry_id, fields in r.xrange(stream, "-", "+"):
        fields = {k.decode(): v for k, v in fields.items()}
        body = json.loads(fields["body"])
        if body.get("n") == 7:
            print(json.dumps({
                "event": fields.get("event", b"").decode(),
                "content-type": fields.get("content-type", b"").decode(),
                "message-id": fields.get("message-id", b"").decode(),
                "body": body,
            }))
            sys.exit(0)
    time.sleep(0.05)
sys.exit("the eventing entry was not found with XRANGE")
"#;

#[test]
fn python_xadd_reaches_a_listener_and_xrange_reads_an_event_as_json() {
    run(async {
        let Some(python) = python().await else {
            return;
        };
        let harness = RedisHarness::from_env();
        let mut env = TestEnv::new(&harness);
        let pings = Recorder::new();
        let manager = env
            .start(env.builder("a").listener(PingListener {
                seen: Arc::clone(&pings),
                server: "a".into(),
            }))
            .await;
        let address = manager
            .address_of(Ping::descriptor())
            .expect("address")
            .to_string();

        // eventing -> the stream (read by Python below).
        manager
            .send_event(&Ping {
                n: 7,
                text: "from eventing".into(),
            })
            .await
            .expect("send");

        let output = tokio::time::timeout(
            WAIT,
            tokio::process::Command::new(&python)
                .arg("-c")
                .arg(PYTHON)
                .env("REDIS_URL", harness.server_url())
                .env("STREAM", &address)
                .output(),
        )
        .await
        .expect("python in time")
        .expect("run python");
        assert!(
            output.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let read: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("python printed JSON");
        assert_eq!(read["event"], address.as_str());
        assert_eq!(read["content-type"], "application/json");
        assert!(!read["message-id"].as_str().unwrap_or("").is_empty());
        assert_eq!(read["body"]["n"], 7);
        assert_eq!(read["body"]["text"], "from eventing");
        println!("redis interop: XRANGE of an eventing event: {read}");

        // Python's XADD -> the eventing listener.
        let got = pings.wait_for(2, WAIT).await;
        let numbers: Vec<u32> = got.iter().map(|s| s.event.n).collect();
        assert!(numbers.contains(&7) && numbers.contains(&42), "{numbers:?}");
        let plain = got.iter().find(|s| s.event.n == 42).expect("python's");
        assert_eq!(plain.event.text, "from python");
        env.finish().await;
    });
}

#[test]
fn bad_entries_are_dead_lettered_with_their_reason() {
    run(async {
        let harness = RedisHarness::from_env();
        let mut env = TestEnv::new(&harness);
        let pings = Recorder::new();
        let manager = env
            .start(env.builder("a").listener(PingListener {
                seen: Arc::clone(&pings),
                server: "a".into(),
            }))
            .await;
        let address = manager
            .address_of(Ping::descriptor())
            .expect("address")
            .to_string();
        let queue = format!("{address}::Recorder");
        let mut raw = harness.raw().await;
        let xadd = |fields: &[(&str, &str)]| {
            let mut cmd = ::redis::cmd("XADD");
            cmd.arg(&address).arg("*");
            for (k, v) in fields {
                cmd.arg(*k).arg(*v);
            }
            cmd
        };
        for fields in [
            &[("body", "{not json")][..],
            &[
                ("event", "NoSuchEvent"),
                ("body", "{\"n\":1,\"text\":\"x\"}"),
            ][..],
            &[("foo", "bar"), ("n", "3")][..],
            &[("body", "{\"n\":4,\"text\":\"healthy\"}")][..],
        ] {
            let _: String = xadd(fields).query_async(&mut raw).await.expect("raw XADD");
        }
        let got = pings.wait_for(1, WAIT).await;
        assert_eq!(got.len(), 1, "only the healthy entry reaches the listener");
        assert_eq!(got[0].event.n, 4);

        let letters = dead_letters(&manager, &queue, 3).await;
        assert_eq!(letters.len(), 3, "three dead letters");
        let reasons: Vec<&str> = letters
            .iter()
            .map(|l| l.headers.get(header::DEAD_LETTER_REASON).unwrap_or(""))
            .collect();
        println!("redis bad input: dead-letter reasons {reasons:?}");
        assert!(reasons[0].starts_with("undecodable body"), "{reasons:?}");
        assert!(
            reasons[1].contains("unknown event `NoSuchEvent`"),
            "{reasons:?}"
        );
        assert!(reasons[2].starts_with("undecodable body"), "{reasons:?}");
        // The foreign entry's fields are kept as headers, for whoever looks.
        assert_eq!(letters[2].headers.get("foo"), Some("bar"));
        let depth: u64 = ::redis::cmd("XLEN")
            .arg(format!("{queue}.dlq"))
            .query_async(&mut raw)
            .await
            .expect("XLEN");
        assert_eq!(depth, 3, "the dead-letter stream `{queue}.dlq`");
        env.finish().await;
    });
}

//! The command-line tool, driven through `cli::run_args`.

use std::time::Duration;

use eventing::{Context, EventListener, EventManager, ListenerResult, cli, event, event_listener};
use serde::{Deserialize, Serialize};

/// An event for the tool.
#[event(name = "orders.{env}.Shipped", durable = true, version = "2.0")]
#[derive(Serialize, Deserialize)]
pub struct Shipped {
    /// Order id.
    pub id: u64,
}

/// Fails every call, so messages end as dead letters.
#[event_listener(Shipped, name = "Mailer")]
pub struct Mailer;

impl EventListener<Shipped> for Mailer {
    async fn on(&self, _: Shipped, _: &Context) -> ListenerResult {
        Err("mail server down".into())
    }
}

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

#[tokio::test]
async fn registry_topology_send_dead_letters_and_replay() {
    let registry = cli::run_args(args("registry")).await.expect("registry");
    assert!(
        registry.contains("event orders.{env}.Shipped durable v2.0.0 (cli::Shipped)"),
        "{registry}"
    );
    assert!(
        registry.contains("listener Mailer of orders.{env}.Shipped (competing)"),
        "{registry}"
    );

    let topology = cli::run_args(args("topology --server web-1 --var env=prod"))
        .await
        .expect("topology");
    assert!(
        topology.contains("queue orders.prod.Shipped::Mailer <- listener Mailer"),
        "{topology}"
    );

    // A manager runs the failing listener on a named in-process broker.
    let manager = EventManager::builder()
        .url("memory://cli-test")
        .var("env", "prod")
        .listener_options(eventing::ListenerOptions {
            retry: eventing::RetryPolicy {
                max_attempts: 1,
                ..Default::default()
            },
            ..Default::default()
        })
        .build()
        .await
        .expect("build");
    manager.start().await.expect("start");

    let common = "--url memory://cli-test --var env=prod";
    let sent = cli::run_args(args(&format!(
        "send --event orders.{{env}}.Shipped --json {{\"id\":7}} {common}"
    )))
    .await
    .expect("send");
    assert!(
        sent.starts_with("sent orders.prod.Shipped message-id "),
        "{sent}"
    );
    let error = cli::run_args(args(&format!(
        "send --event Shipped --json {{id:7}} {common}"
    )))
    .await
    .expect_err("not JSON");
    assert!(error.to_string().contains("cannot decode"), "{error}");

    for _ in 0..200 {
        if manager.stats().dead_lettered == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let listed = cli::run_args(args(&format!(
        "dead-letters --queue orders.prod.Shipped::Mailer {common}"
    )))
    .await
    .expect("dead letters");
    assert!(
        listed.contains(
            "x-dead-letter-reason: listener failed 1 times; last error: mail server down"
        ),
        "{listed}"
    );
    assert!(listed.contains("body: {\"id\":7}"), "{listed}");

    let replayed = cli::run_args(args(&format!(
        "replay --queue orders.prod.Shipped::Mailer {common}"
    )))
    .await
    .expect("replay");
    assert_eq!(
        replayed,
        "replayed 1 message(s) onto orders.prod.Shipped::Mailer\n"
    );
    for _ in 0..200 {
        if manager.stats().dead_lettered == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        manager.stats().dead_lettered,
        2,
        "the replayed message ran again"
    );

    let error = cli::run_args(args("frobnicate"))
        .await
        .expect_err("unknown command");
    assert!(error.to_string().contains("unknown command `frobnicate`"));
    manager.shutdown().await.expect("shutdown");
}

/// An event whose name needs no `{placeholder}` (named to sort after
/// `orders.{env}.Shipped`, so the registry lists the templated event first).
#[event(name = "shop.PlainNote")]
#[derive(Serialize, Deserialize)]
pub struct PlainNote {
    /// Text.
    pub text: String,
}

/// Handles notes.
#[event_listener(PlainNote, name = "Keeper")]
pub struct Keeper;

impl EventListener<PlainNote> for Keeper {
    async fn on(&self, _: PlainNote, _: &Context) -> ListenerResult {
        Ok(())
    }
}

#[tokio::test]
async fn queues_of_plain_events_need_no_vars() {
    // Another registered event (`orders.{env}.Shipped`) needs `--var env=...`; a
    // queue of an event without placeholders does not.
    let listed = cli::run_args(args(
        "dead-letters --queue shop.PlainNote::Keeper --url memory://cli-plain",
    ))
    .await
    .expect("no --var needed");
    assert!(!listed.contains("x-dead-letter-reason"), "{listed}");
    let error = cli::run_args(args(
        "dead-letters --queue orders.prod.Shipped::Mailer --url memory://cli-plain",
    ))
    .await
    .expect_err("the templated queue cannot be found without --var env=prod");
    assert!(error.to_string().contains("{env}"), "{error}");
}

//! `TestBus`: what it records, how its waits end, and what its errors say.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventing::provider::Route;
use eventing::{
    Context, Envelope, Event, EventListener, EventManager, ListenerOptions, ListenerResult,
    RetryPolicy, event, event_listener, header,
};
use eventing_test::bus::Record;
use eventing_test::{TestBus, TestError};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(10);

#[event(name = "bus-test.Greeted")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Greeted {
    name: String,
}

#[event(name = "bus-test.Answered")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Answered {
    to: String,
}

#[event(name = "bus-test.Packed", codec = "msgpack")]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Packed {
    bytes: Vec<u8>,
}

/// Handles every greeting.
#[event_listener(Greeted, name = "Greeter")]
#[event_listener(Packed, name = "Greeter")]
struct Greeter;

impl EventListener<Greeted> for Greeter {
    async fn on(&self, _: Greeted, _: &Context) -> ListenerResult {
        Ok(())
    }
}

impl EventListener<Packed> for Greeter {
    async fn on(&self, _: Packed, _: &Context) -> ListenerResult {
        Ok(())
    }
}

/// Fails on a name starting with `x`, panics on `panic`.
#[event_listener(Greeted, name = "Picky")]
struct Picky;

impl EventListener<Greeted> for Picky {
    async fn on(&self, greeted: Greeted, _: &Context) -> ListenerResult {
        if greeted.name == "panic" {
            panic!("asked to panic");
        }
        if greeted.name.starts_with('x') {
            return Err(format!("no greeting for {}", greeted.name).into());
        }
        Ok(())
    }
}

/// Answers every greeting with an `Answered` through its manager.
#[event_listener(Greeted, name = "Answerer")]
struct Answerer {
    manager: Arc<OnceLock<EventManager>>,
}

impl EventListener<Greeted> for Answerer {
    async fn on(&self, greeted: Greeted, _: &Context) -> ListenerResult {
        let manager = self.manager.get().ok_or("no manager yet")?;
        manager.send_event(&Answered { to: greeted.name }).await?;
        Ok(())
    }
}

fn fast_retries() -> ListenerOptions {
    ListenerOptions {
        prefetch: 16,
        concurrency: 4,
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            delays: Vec::new(),
        },
    }
}

fn greeted(name: &str) -> Greeted {
    Greeted {
        name: name.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handled_events_are_recorded_in_order_and_decoded() -> Result<(), TestError> {
    let bus = TestBus::with(|b| b.listener_type::<Greeter>()).await?;
    for name in ["ada", "grace"] {
        bus.send(&greeted(name)).await?;
    }
    let packed = Packed {
        bytes: (0..=255).collect(),
    };
    bus.send(&packed).await?;

    let mut got = bus.wait_handled::<Greeted>("Greeter", 2, WAIT).await?;
    got.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(got, [greeted("ada"), greeted("grace")]);
    let handled = bus.wait_handled::<Packed>("Greeter", 1, WAIT).await?;
    assert!(
        handled == [packed.clone()],
        "a MessagePack body decodes by its content type"
    );
    assert_eq!(
        bus.published::<Greeted>(),
        [greeted("ada"), greeted("grace")]
    );
    assert_eq!(bus.published::<Packed>(), [packed]);
    assert!(bus.published::<Answered>().is_empty());
    assert!(bus.failed::<Greeted>("Greeter").is_empty());

    // Every handled message was published before, with the same id and headers.
    let records = bus.records();
    for (i, record) in records.iter().enumerate() {
        if let Record::Handled {
            listener,
            attempt,
            message,
        } = record
        {
            assert_eq!((*listener, *attempt), ("Greeter", 1));
            let sent = records[..i].iter().any(|earlier| {
                matches!(earlier, Record::Published(p) if p.message_id() == message.message_id())
            });
            assert!(sent, "handled before published: {record:?}");
            assert_eq!(
                message.header(header::EVENT),
                Some(message.address()),
                "{record:?}"
            );
        }
    }
    assert_eq!(records.len(), 6, "3 published + 3 handled: {records:?}");
    bus.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_listener_is_reported_failed_then_dead_lettered() -> Result<(), TestError> {
    let bus =
        TestBus::with(|b| b.listener_type::<Picky>().listener_options(fast_retries())).await?;
    bus.send(&greeted("xavier")).await?;
    bus.send(&greeted("yves")).await?;

    let failures = bus.wait_failed::<Greeted>("Picky", 3, WAIT).await?;
    let attempts: Vec<u32> = failures.iter().map(|f| f.attempt).collect();
    assert_eq!(attempts, [1, 2, 3], "{failures:?}");
    for failure in &failures {
        assert_eq!(failure.error, "no greeting for xavier");
        assert_eq!(failure.event, Some(greeted("xavier")));
    }
    let letters = bus.wait_dead_lettered::<Greeted>("Picky", 1, WAIT).await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.event, Some(greeted("xavier")));
    assert_eq!(letter.attempts, Some(3));
    assert!(
        letter.reason.contains("no greeting for xavier"),
        "{}",
        letter.reason
    );
    assert_eq!(letter.queue, "bus-test.Greeted::Picky");
    assert_eq!(
        letter.message.message_id(),
        failures[0].message.message_id()
    );
    // The healthy one is handled, the failed one never is.
    assert_eq!(
        bus.wait_handled::<Greeted>("Picky", 1, WAIT).await?,
        [greeted("yves")]
    );
    assert_eq!(bus.failed::<Greeted>("Picky").len(), 3, "no fourth call");
    bus.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_and_an_undecodable_body_are_failures_with_their_reason() -> Result<(), TestError> {
    let bus =
        TestBus::with(|b| b.listener_type::<Picky>().listener_options(fast_retries())).await?;
    bus.send(&greeted("panic")).await?;
    // A body that is not a `Greeted`, straight through the provider.
    let manager = bus.manager();
    let address = manager.address_of(Greeted::descriptor())?;
    let envelope = Envelope::new(
        &address,
        eventing::codec::JSON,
        Bytes::from_static(b"{\"nom\":1}"),
    );
    manager
        .provider()
        .publish(Route::new(&address, false), envelope)
        .await?;

    let failures = bus.wait_failed::<Greeted>("Picky", 4, WAIT).await?;
    let panics = failures
        .iter()
        .filter(|f| f.error == "listener panicked: asked to panic")
        .count();
    assert_eq!(panics, 3, "{failures:?}");
    let undecodable: Vec<_> = failures.iter().filter(|f| f.event.is_none()).collect();
    assert_eq!(undecodable.len(), 1, "one call, not retried: {failures:?}");
    assert!(
        undecodable[0].error.starts_with("undecodable body"),
        "{}",
        undecodable[0].error
    );
    let letters = bus.wait_dead_lettered::<Greeted>("Picky", 2, WAIT).await?;
    let mut attempts: Vec<Option<u32>> = letters.iter().map(|l| l.attempts).collect();
    attempts.sort();
    assert_eq!(attempts, [Some(1), Some(3)], "{letters:?}");
    assert!(letters.iter().any(|l| l.event.is_none()));
    bus.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_what_never_comes_times_out_within_its_bound() -> Result<(), TestError> {
    let bus = TestBus::with(|b| b.listener_type::<Greeter>()).await?;
    let limit = Duration::from_millis(200);
    let began = Instant::now();
    let error = bus
        .wait_handled::<Greeted>("Greeter", 1, limit)
        .await
        .expect_err("nothing was sent");
    let took = began.elapsed();
    assert!(
        took >= limit && took < limit + Duration::from_secs(2),
        "the wait took {took:?}"
    );
    match &error {
        TestError::Timeout {
            wanted,
            seen,
            seen_instead,
            ..
        } => {
            assert_eq!((*wanted, *seen), (1, 0));
            assert_eq!(seen_instead, "nothing");
        }
        other => panic!("not a timeout: {other:?}"),
    }
    let text = error.to_string();
    assert!(
        text.contains("waiting for 1 handled by `Greeter` of `bus-test.Greeted`"),
        "{text}"
    );

    let began = Instant::now();
    let error = bus
        .wait_dead_lettered::<Greeted>("Greeter", 1, limit)
        .await
        .expect_err("nothing was dead-lettered");
    assert!(began.elapsed() < limit + Duration::from_secs(2));
    assert!(
        matches!(error, TestError::Timeout { seen: 0, .. }),
        "{error}"
    );
    bus.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_says_what_the_bus_saw_instead() -> Result<(), TestError> {
    let bus =
        TestBus::with(|b| b.listener_type::<Picky>().listener_options(fast_retries())).await?;
    bus.send(&greeted("xena")).await?;
    bus.wait_dead_lettered::<Greeted>("Picky", 1, WAIT).await?;
    let error = bus
        .wait_handled::<Greeted>("Picky", 1, Duration::from_millis(100))
        .await
        .expect_err("the only greeting fails");
    let text = error.to_string();
    for part in [
        "saw 0",
        "published 1 `bus-test.Greeted`",
        "`Picky` of `bus-test.Greeted` handled 0 failed 3 (last error: no greeting for xena)",
        "1 dead-lettered from `bus-test.Greeted::Picky` (last reason: listener failed 3 times; last error: no greeting for xena)",
    ] {
        assert!(text.contains(part), "`{part}` missing from: {text}");
    }
    bus.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_does_not_run_is_an_error_at_once() -> Result<(), TestError> {
    let bus = TestBus::with(|b| b.listener_type::<Greeter>()).await?;
    let began = Instant::now();
    let error = bus
        .wait_handled::<Greeted>("Picky", 1, WAIT)
        .await
        .expect_err("Picky is not selected");
    assert!(began.elapsed() < Duration::from_secs(1));
    match error {
        TestError::NoSuchListener {
            event,
            listener,
            running,
        } => {
            assert_eq!(
                (event.as_str(), listener.as_str()),
                ("bus-test.Greeted", "Picky")
            );
            assert!(
                running.contains(&"Greeter of bus-test.Greeted".to_string()),
                "{running:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        bus.wait_failed::<Answered>("Greeter", 1, WAIT).await,
        Err(TestError::NoSuchListener { .. })
    ));
    bus.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_listener_publishing_is_recorded_and_buses_are_isolated() -> Result<(), TestError> {
    let cell = Arc::new(OnceLock::new());
    let bus = TestBus::with(|b| {
        b.only_bound_listeners().listener(Answerer {
            manager: Arc::clone(&cell),
        })
    })
    .await?;
    cell.set(bus.manager().clone()).ok();
    // Another bus at the same time: its own broker, its own records.
    let other = TestBus::with(|b| b.listener_type::<Greeter>()).await?;
    assert_ne!(bus.url(), other.url());

    bus.send(&greeted("ada")).await?;
    let answers = bus.wait_published::<Answered>(1, WAIT).await?;
    assert_eq!(
        answers,
        [Answered {
            to: "ada".to_string()
        }]
    );
    assert_eq!(
        bus.wait_handled::<Greeted>("Answerer", 1, WAIT).await?,
        [greeted("ada")]
    );
    assert!(other.published::<Greeted>().is_empty());
    assert!(matches!(
        other
            .wait_handled::<Greeted>("Greeter", 1, Duration::from_millis(100))
            .await,
        Err(TestError::Timeout { seen: 0, .. })
    ));
    other.shutdown().await?;
    bus.shutdown().await
}

#[test]
fn run_drives_a_bus_from_a_plain_test() {
    let handled = eventing_test::run(async {
        let bus = TestBus::with(|b| b.listener_type::<Greeter>()).await?;
        bus.send(&greeted("plain")).await?;
        let handled = bus.wait_handled::<Greeted>("Greeter", 1, WAIT).await?;
        bus.shutdown().await?;
        Ok::<_, TestError>(handled)
    })
    .expect("bus");
    assert_eq!(handled, [greeted("plain")]);
}

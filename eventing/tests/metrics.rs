//! Counters and histograms reach the installed `metrics` recorder.
#![cfg(feature = "metrics")]

use std::time::Duration;

use eventing::memory::MemoryProvider;
use eventing::{Context, EventListener, EventManager, ListenerResult, event, event_listener};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde::{Deserialize, Serialize};

/// The event.
#[event(name = "Measured")]
#[derive(Serialize, Deserialize)]
pub struct Measured {
    /// Fail the call.
    pub fail: bool,
}

/// Fails on request, without retries.
#[event_listener(Measured, name = "Meter")]
pub struct Meter;

impl EventListener<Measured> for Meter {
    async fn on(&self, event: Measured, _: &Context) -> ListenerResult {
        if event.fail {
            return Err("asked to fail".into());
        }
        Ok(())
    }
}

#[tokio::test]
async fn counters_and_histograms_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let manager = EventManager::builder()
        .provider(MemoryProvider::new())
        .listener_options(eventing::ListenerOptions {
            // One call per round and one delayed round: a failing message is
            // handed to the delayed stage once, then dead-lettered.
            retry: eventing::RetryPolicy {
                max_attempts: 1,
                ..Default::default()
            }
            .with_delays([Duration::from_millis(20)]),
            ..Default::default()
        })
        .build()
        .await
        .expect("build");
    manager.start().await.expect("start");
    for fail in [false, false, true] {
        manager.send_event(&Measured { fail }).await.expect("send");
    }
    for _ in 0..200 {
        let stats = manager.stats();
        if stats.handled == 2 && stats.dead_lettered == 1 && stats.delayed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    manager.shutdown().await.expect("shutdown");

    let mut seen = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        seen.insert((key.key().name().to_string(), labels.join(",")), value);
    }
    let counter = |name: &str, labels: &str| match seen.get(&(name.to_string(), labels.to_string()))
    {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}{{{labels}}}: {other:?} in {seen:?}"),
    };
    assert_eq!(counter("eventing_sent_total", "event=Measured"), 3);
    assert_eq!(
        counter("eventing_handled_total", "event=Measured,listener=Meter"),
        2
    );
    assert_eq!(
        counter("eventing_failed_total", "event=Measured,listener=Meter"),
        2
    );
    assert_eq!(
        counter("eventing_delayed_total", "event=Measured,listener=Meter"),
        1
    );
    assert_eq!(
        counter(
            "eventing_dead_lettered_total",
            "event=Measured,listener=Meter"
        ),
        1
    );
    match seen.get(&(
        "eventing_handling_seconds".to_string(),
        "event=Measured,listener=Meter".to_string(),
    )) {
        Some(DebugValue::Histogram(values)) => assert_eq!(values.len(), 2),
        other => panic!("histogram: {other:?}"),
    }
}

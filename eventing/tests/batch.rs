//! `EventManager::send_events` on the in-process provider (the provider contract's
//! default `publish_batch`): every event runs the send pipelines and gets its own
//! message id, in order, across chunks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventing::pipeline::EnvelopePipeline;
use eventing::{
    BoxError, Context, Envelope, Error, EventDescriptor, EventListener, EventManager,
    ListenerOptions, ListenerResult, event, event_listener,
};
use serde::{Deserialize, Serialize};

#[event(name = "batch.tests.Tick")]
#[derive(Serialize, Deserialize)]
struct Tick {
    n: u32,
}

/// What the listener saw of one event: its number, message id, `x-seen` header.
type Handled = (u32, String, Option<String>);

#[event_listener(Tick, name = "BatchCounter")]
struct Counter(Arc<Mutex<Vec<Handled>>>);

impl EventListener<Tick> for Counter {
    async fn on(&self, tick: Tick, context: &Context) -> ListenerResult {
        let id = context.message_id().to_string();
        let seen = context.headers().get("x-seen").map(String::from);
        self.0.lock().expect("lock").push((tick.n, id, seen));
        Ok(())
    }
}

/// Counts the sends it sees and marks each envelope.
struct Seen(Arc<Mutex<u32>>);

impl EnvelopePipeline for Seen {
    fn name(&self) -> &'static str {
        "seen"
    }

    fn send(&self, envelope: &mut Envelope, _: &EventDescriptor) -> Result<(), BoxError> {
        *self.0.lock().expect("lock") += 1;
        envelope.headers.insert("x-seen", "1");
        Ok(())
    }
}

#[tokio::test]
async fn every_event_runs_the_pipelines_and_gets_its_own_id_in_order() {
    let handled = Arc::new(Mutex::new(Vec::new()));
    let pipeline_calls = Arc::new(Mutex::new(0));
    let manager = EventManager::builder()
        .url("memory://batch-tests")
        .only_bound_listeners()
        .listener(Counter(Arc::clone(&handled)))
        .listener_options(ListenerOptions {
            concurrency: 1,
            ..ListenerOptions::default()
        })
        .pipeline(Seen(Arc::clone(&pipeline_calls)))
        .build()
        .await
        .expect("build");
    manager.start().await.expect("start");
    // More than one chunk (1024), from a slice and from an iterator.
    let n: u32 = 1500;
    let ticks: Vec<Tick> = (0..n).map(|n| Tick { n }).collect();
    manager.send_events(&ticks[..1000]).await.expect("a slice");
    manager
        .send_events(ticks[1000..].iter())
        .await
        .expect("an iterator");
    manager
        .send_events(std::iter::empty::<&Tick>())
        .await
        .expect("nothing to send");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handled.lock().expect("lock").len() < n as usize && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    manager.shutdown().await.expect("shutdown");
    let handled = handled.lock().expect("lock").clone();
    assert_eq!(handled.len(), n as usize);
    let order: Vec<u32> = handled.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(order, (0..n).collect::<Vec<_>>(), "in order");
    let ids: std::collections::HashSet<&str> =
        handled.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), n as usize, "one message id each");
    assert!(
        handled
            .iter()
            .all(|(_, _, seen)| seen.as_deref() == Some("1"))
    );
    assert_eq!(*pipeline_calls.lock().expect("lock"), n);
    assert_eq!(manager.stats().sent, u64::from(n));
    let after = manager.send_events(&ticks[..1]).await;
    assert!(matches!(after, Err(Error::ShutDown { .. })), "{after:?}");
}

//! The event log: call chains across a chain of events, and auto-captured entries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventing::eventlog::{
    CALL_CHAIN, CALL_ID, EVENT_TYPE, EventLogConfig, EventLogEntry, EventLogPipeline, SERVICE,
};
use eventing::memory::MemoryProvider;
use eventing::{Context, EventListener, EventManager, ListenerResult, event, event_listener};
use serde::{Deserialize, Serialize};

/// A chain step.
#[event(name = "Step")]
#[derive(Serialize, Deserialize)]
pub struct Step {
    /// Steps left.
    pub n: u32,
}

type Chains = Arc<Mutex<Vec<(String, String, String, String)>>>;

/// Records the event-log headers and sends the next step.
#[event_listener(Step, name = "Stepper")]
pub struct Stepper {
    seen: Chains,
    next: Arc<tokio::sync::OnceCell<EventManager>>,
}

impl EventListener<Step> for Stepper {
    async fn on(&self, step: Step, ctx: &Context) -> ListenerResult {
        let get = |name| ctx.header(name).unwrap_or("").to_string();
        self.seen.lock().map_err(|_| "poisoned")?.push((
            get(SERVICE),
            get(EVENT_TYPE),
            get(CALL_ID),
            get(CALL_CHAIN),
        ));
        if step.n == 0 {
            return Err("the last step fails on purpose".into());
        }
        if let Some(manager) = self.next.get() {
            manager.send_event(&Step { n: step.n - 1 }).await?;
        }
        Ok(())
    }
}

/// Also listens to `Step`, but is excluded from capture.
#[event_listener(Step, name = "Quiet")]
pub struct Quiet;

impl EventListener<Step> for Quiet {
    async fn on(&self, _: Step, _: &Context) -> ListenerResult {
        Ok(())
    }
}

/// Collects log entries.
#[event_listener(EventLogEntry, name = "Collector")]
pub struct Collector {
    entries: Arc<Mutex<Vec<EventLogEntry>>>,
}

impl EventListener<EventLogEntry> for Collector {
    async fn on(&self, entry: EventLogEntry, _: &Context) -> ListenerResult {
        self.entries.lock().map_err(|_| "poisoned")?.push(entry);
        Ok(())
    }
}

#[tokio::test]
async fn call_chains_follow_a_chain_and_invocations_are_captured() {
    let seen: Chains = Arc::default();
    let entries = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(tokio::sync::OnceCell::new());
    let config = EventLogConfig {
        service: "shop".into(),
        auto_capture: true,
        exclude: vec!["Quiet".into()],
    };
    let manager = EventManager::builder()
        .provider(MemoryProvider::new())
        .var("eventlog", "audit.log")
        .pipeline(EventLogPipeline::new(config))
        .only_bound_listeners()
        .listener(Stepper {
            seen: Arc::clone(&seen),
            next: Arc::clone(&next),
        })
        .listener_type::<Quiet>()
        .listener(Collector {
            entries: Arc::clone(&entries),
        })
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
    next.set(manager.clone()).ok();
    let queues: Vec<String> = manager
        .topology()
        .expect("topology")
        .queues
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert!(
        queues.contains(&"audit.log::Collector".to_string()),
        "{queues:?}"
    );
    manager.start().await.expect("start");
    manager.send_event(&Step { n: 2 }).await.expect("send");

    for _ in 0..300 {
        if entries.lock().expect("lock").len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3);
    let mut previous: Vec<String> = Vec::new();
    for (service, event_type, call_id, chain) in &seen {
        assert_eq!(service, "shop");
        assert_eq!(event_type, "Step");
        let chain: Vec<String> = chain.split(',').map(String::from).collect();
        assert_eq!(chain.last(), Some(call_id), "the chain ends with this call");
        assert_eq!(
            chain[..chain.len() - 1],
            previous[..],
            "and starts with the one before"
        );
        assert!(call_id.starts_with("shop."));
        previous = chain;
    }
    assert_eq!(previous.len(), 3, "A -> B -> C");

    let entries = entries.lock().expect("lock").clone();
    assert_eq!(
        entries.len(),
        3,
        "one entry per Stepper call, none for Quiet or Collector: {entries:?}"
    );
    assert!(
        entries
            .iter()
            .all(|e| e.service == "shop" && e.listener == "Stepper" && e.event == "Step")
    );
    let failed: Vec<&EventLogEntry> = entries.iter().filter(|e| e.outcome != "ok").collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].outcome.contains("the last step fails on purpose"),
        "{:?}",
        failed[0]
    );
    assert_eq!(failed[0].call_chain.len(), 3);
    manager.shutdown().await.expect("shutdown");
}

#[test]
fn config_reads_from_a_file_format_and_the_environment() {
    let config: EventLogConfig =
        serde_json::from_str(r#"{"service":"billing","auto_capture":true,"exclude":["Noisy"]}"#)
            .expect("json");
    assert_eq!(config.exclude, ["Noisy"]);
    assert_eq!(
        EventLogConfig::from_env().auto_capture,
        std::env::var("EVENTING_EVENTLOG_CAPTURE").is_ok_and(|v| v == "1" || v == "true")
    );
}

//! The quick-start example: one event, two listeners, a session id that travels with
//! the event. Runs on the in-process provider by default; set `EVENTING_URL` (and
//! build with the provider's feature) to run it on a broker:
//!
//! ```text
//! cargo run --example hello
//! EVENTING_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example hello --features amqp
//! EVENTING_URL=stomp://guest:guest@127.0.0.1:61613 cargo run --example hello --features stomp
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eventing::pipeline::SessionPipeline;
use eventing::{Context, EventListener, EventManager, ListenerResult, event, event_listener};
use serde::{Deserialize, Serialize};

// Link the broker providers the build enables; their schemes register themselves.
#[cfg(feature = "amqp")]
use eventing_amqp as _;
#[cfg(feature = "nats")]
use eventing_nats as _;
#[cfg(feature = "redis")]
use eventing_redis as _;
#[cfg(feature = "stomp")]
use eventing_stomp as _;

/// The event: its name (and address) is `HelloEvent`.
#[event(durable = true)]
#[derive(Debug, Serialize, Deserialize)]
struct HelloEvent {
    world: String,
}

/// A stateless listener: the runtime constructs it. Instances compete for events.
#[event_listener(HelloEvent, per_process = false)]
struct HelloListener;

impl EventListener<HelloEvent> for HelloListener {
    async fn on(&self, event: HelloEvent, ctx: &Context) -> ListenerResult {
        println!(
            "HelloListener got {event:?} (message-id {}, session {})",
            ctx.message_id(),
            eventing::pipeline::current_session().unwrap_or_default()
        );
        Ok(())
    }
}

/// A listener with state, bound as an instance; every server gets every event.
#[event_listener(HelloEvent, name = "HelloCounter", per_process = true)]
struct HelloCounter {
    seen: Arc<AtomicUsize>,
}

impl EventListener<HelloEvent> for HelloCounter {
    async fn on(&self, event: HelloEvent, _: &Context) -> ListenerResult {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        println!("HelloCounter saw hello #{n}, to {}", event.world);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let seen = Arc::new(AtomicUsize::new(0));
    let manager = EventManager::builder()
        .url_from_env()
        .server_name("hello-server")
        .pipeline(SessionPipeline)
        .listener(HelloCounter {
            seen: Arc::clone(&seen),
        })
        .build()
        .await?;
    print!("{}", manager.topology()?);
    manager.start().await?;

    eventing::pipeline::with_session("session-1", async {
        manager
            .send_event(&HelloEvent {
                world: "world".into(),
            })
            .await
    })
    .await?;

    // Wait (bounded) until both listeners handled it, or for Ctrl-C; then shut down
    // cleanly: stop taking messages, finish running calls, acknowledge them.
    let handled = async {
        for _ in 0..100 {
            if manager.stats().handled >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        () = handled => {}
        _ = tokio::signal::ctrl_c() => println!("Ctrl-C: shutting down"),
    }
    manager.shutdown().await?;
    println!("done: {} event(s) handled", manager.stats().handled);
    Ok(())
}

//! `#[event_listener]` on `async fn`s: every parameter form and option.

use eventing::{Context, EventManager, ListenerResult, State, event, event_listener};
use serde::{Deserialize, Serialize};

#[event]
#[derive(Serialize, Deserialize)]
struct Paid {
    cents: u64,
}

#[derive(Clone)]
struct Db;

#[event_listener(Paid)]
async fn only_event(paid: Paid) -> ListenerResult {
    let _ = paid.cents;
    Ok(())
}

#[event_listener(Paid, name = "with-context", per_process = true)]
async fn with_context(_paid: Paid, ctx: &Context) -> ListenerResult {
    let _ = ctx.message_id();
    Ok(())
}

#[event_listener(Paid, name = "with-state", version = "<2.0")]
async fn with_state(_paid: Paid, State(db): State<Db>, ctx: eventing::Context) -> ListenerResult {
    let _: Db = db;
    let _ = ctx.attempt();
    Ok(())
}

#[event_listener(Paid, name = "singleton", singleton = true, crate = "::eventing")]
pub(crate) async fn singleton(
    _: Paid,
    _: &Context,
    _: eventing::State<Db>,
) -> eventing::ListenerResult {
    Err("not today".into())
}

fn main() {
    // Still an ordinary function.
    let _future = only_event(Paid { cents: 1 });
    // Selected by passing it.
    let _ = EventManager::builder()
        .only_bound_listeners()
        .listener(with_context)
        .state(Db);
    let names: Vec<&str> = eventing::registry::listeners()
        .iter()
        .map(|l| l.name())
        .collect();
    assert!(names.contains(&"only_event") && names.contains(&"with-state"));
}

use eventing::{event, event_listener, ListenerResult};
use serde::{Deserialize, Serialize};

#[event]
#[derive(Serialize, Deserialize)]
struct Paid;

#[event]
#[derive(Serialize, Deserialize)]
struct Refunded;

/// The attribute's event is not the parameter's.
#[event_listener(Paid)]
async fn wrong_event(_: Refunded) -> ListenerResult {
    Ok(())
}

/// The result is not a `ListenerResult`.
#[event_listener(Paid)]
async fn wrong_result(_: Paid) -> Result<(), String> {
    Ok(())
}

/// The future is not `Send`.
#[event_listener(Paid)]
async fn not_send(_: Paid) -> ListenerResult {
    let rc = std::rc::Rc::new(1);
    std::future::ready(()).await;
    let _ = rc;
    Ok(())
}

fn main() {}

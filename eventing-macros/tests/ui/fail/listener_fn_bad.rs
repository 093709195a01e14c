use eventing::{event, event_listener, Context, ListenerResult, State};
use serde::{Deserialize, Serialize};

#[event]
#[derive(Serialize, Deserialize)]
struct Paid;

#[event_listener(Paid)]
fn not_async(_: Paid) -> ListenerResult {
    Ok(())
}

#[event_listener(Paid)]
async fn generic<T>(_: Paid) -> ListenerResult {
    Ok(())
}

#[event_listener(Paid)]
async fn no_result(_: Paid) {}

#[event_listener(Paid)]
async fn nothing() -> ListenerResult {
    Ok(())
}

#[event_listener(Paid, per_proces = true)]
async fn odd_params(_: Paid, _: u32, _: &Context, _: &Context, _: State<u8>, _: State<u16>) -> ListenerResult {
    Ok(())
}

fn main() {}

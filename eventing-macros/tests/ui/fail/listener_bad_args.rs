use eventing::{event, event_listener};
use serde::{Deserialize, Serialize};

#[event]
#[derive(Serialize, Deserialize)]
struct Hello;

#[event_listener]
struct NoEvent;

#[event_listener(Hello, per_proces = true, name = "a", name = "b")]
struct Typo;

#[event_listener(Hello)]
enum NotAStruct {
    A,
}

fn main() {}

use eventing::event;
use serde::{Deserialize, Serialize};

#[event]
#[derive(Serialize, Deserialize)]
struct Generic<T> {
    t: T,
}

#[event]
union Raw {
    a: u32,
}

fn main() {}

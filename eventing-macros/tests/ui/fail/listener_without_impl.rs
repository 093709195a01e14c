use eventing::{event, event_listener};
use serde::{Deserialize, Serialize};

#[event]
#[derive(Serialize, Deserialize)]
struct Hello;

#[event_listener(Hello)]
struct Forgot;

fn main() {}

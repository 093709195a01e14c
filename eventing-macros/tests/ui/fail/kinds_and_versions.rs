use eventing::{event, event_listener};
use serde::{Deserialize, Serialize};

#[event(version = "one")]
#[derive(Serialize, Deserialize)]
struct BadVersion;

#[event(version = "1.2")]
#[derive(Serialize, Deserialize)]
struct Hello;

#[event_listener(Hello, per_process = true, singleton = true)]
struct Both;

#[event_listener(Hello, version = "less than two")]
struct BadRange;

fn main() {}

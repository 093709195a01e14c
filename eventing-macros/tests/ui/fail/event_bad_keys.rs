use eventing::event;
use serde::{Deserialize, Serialize};

#[event(nme = "x", durable = true, durable = false)]
#[derive(Serialize, Deserialize)]
struct Typo;

#[event(name = "")]
#[derive(Serialize, Deserialize)]
struct Empty;

#[event(durable = "yes")]
#[derive(Serialize, Deserialize)]
struct NotABool;

fn main() {}

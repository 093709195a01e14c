use eventing::event;
use serde::{Deserialize, Serialize};

#[event(codec = "xml")]
#[derive(Serialize, Deserialize)]
struct Xml;

fn main() {}

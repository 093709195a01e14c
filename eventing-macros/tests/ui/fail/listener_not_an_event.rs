use eventing::event_listener;

#[event_listener(String)]
struct Listener;

fn main() {}

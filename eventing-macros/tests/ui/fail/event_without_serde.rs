use eventing::event;

#[event]
struct NoSerde {
    x: u32,
}

fn main() {}

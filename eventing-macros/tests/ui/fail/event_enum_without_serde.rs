use eventing::event;

#[event]
enum Status {
    Up,
    Down,
}

fn main() {}

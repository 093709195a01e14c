// A mistake in `#[event]` on a type without serde's derives: only the mistake is
// reported; the stand-in `impl Event` does not demand serde at the attribute.
use eventing::event;

#[event(nme = "x")]
struct NoSerde {
    x: u32,
}

fn main() {}

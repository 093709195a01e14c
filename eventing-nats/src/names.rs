//! How eventing's names become NATS names, reversibly.
//!
//! NATS forbids `.`, `*`, `>`, whitespace, `/` and `\` in stream and consumer names,
//! and `*`, `>` and whitespace in subject tokens (`.` separates tokens). Event names
//! such as `orders.created` and queue names such as `orders.created::billing` therefore
//! go through one reversible escape ([`escape`]): ASCII letters, digits and `-`,
//! `_`, `:`, `@` stay as they are (so `orders::billing` is its own NATS name); every
//! other byte, `=` included, becomes `=XX` (upper-case hex of the UTF-8 byte, as in
//! quoted-printable). The result is one valid subject token and a valid stream or
//! consumer name, and [`unescape`] gives the original back.
//!
//! Not `%XX`: nats-server 2.9.10 builds a consumer's ack subjects with `Sprintf`
//! from a template that holds the stream and consumer names, so a `%` in either
//! corrupts every ack subject (`$JS.ACK.ev-a%!E(uint64= 1)...`) and clients drop
//! the connection on the malformed message.
//!
//! | eventing | NATS |
//! |---|---|
//! | event `orders.created` | stream `ev-orders=2Ecreated`, subject `ev.orders=2Ecreated` |
//! | queue `orders.created::billing` | durable consumer `orders=2Ecreated::billing` on that stream |
//! | dead-letter queue `orders.created::billing.dlq` | subject `dlq.orders=2Ecreated::billing=2Edlq` of stream `eventing-dlq` |
//! | delay queue `orders.created::billing.delay.5000` | subject `delay.orders=2Ecreated::billing=2Edelay=2E5000` of stream `eventing-delay`, drained by the durable consumer `orders=2Ecreated::billing=2Edelay=2E5000` |
//! | scheduled sends of `orders.created` | subject `sched.orders=2Ecreated` of stream `eventing-delay`, drained by the durable consumer `eventing-schedule` |

use eventing::{Error, Result};

/// The longest stream or consumer name nats-server accepts.
pub const MAX_NAME: usize = 255;

/// The stream that holds every dead letter (one subject per dead-letter queue).
pub const DEAD_LETTER_STREAM: &str = "eventing-dlq";

/// The subjects of [`DEAD_LETTER_STREAM`].
pub const DEAD_LETTER_SUBJECTS: &str = "dlq.>";

/// The work-queue stream that holds what waits: retry copies in the delayed
/// stage (subjects [`DELAY_SUBJECTS`]) and scheduled sends ([`SCHEDULE_SUBJECTS`]).
pub const DELAY_STREAM: &str = "eventing-delay";

/// The subjects of the delay queues in [`DELAY_STREAM`].
pub const DELAY_SUBJECTS: &str = "delay.>";

/// The subjects of scheduled sends in [`DELAY_STREAM`].
pub const SCHEDULE_SUBJECTS: &str = "sched.>";

/// The durable consumer of [`DELAY_STREAM`] that moves due scheduled sends to
/// their events (every provider that consumes competes on it).
pub const SCHEDULE_CONSUMER: &str = "eventing-schedule";

fn kept(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b':' | b'@')
}

/// Escapes `name` into a string valid as a NATS subject token, stream name and
/// consumer name (if not empty and not too long).
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &byte in name.as_bytes() {
        if kept(byte) {
            out.push(char::from(byte));
        } else {
            out.push('=');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// Decodes `=XX` escapes; `None` if an escape is malformed or the bytes are not UTF-8.
pub fn unescape(escaped: &str) -> Option<String> {
    decode(escaped, b'=')
}

/// Decodes `<marker>XX` escapes.
pub(crate) fn decode(escaped: &str, marker: u8) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == marker {
            let high = hex(*bytes.get(i + 1)?)?;
            let low = hex(*bytes.get(i + 2)?)?;
            out.push(high << 4 | low);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// True if `name` is a valid stream or consumer name for nats-server 2.9 (and has no
/// `%`, which 2.9.10 mistakes for a format directive in ack subjects).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\' | '%'))
}

/// True if `token` is a valid literal subject token.
pub fn is_valid_token(token: &str) -> bool {
    !token.is_empty()
        && !token
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>'))
}

fn checked(kind: &str, original: &str, name: String) -> Result<String> {
    if original.is_empty() {
        return Err(Error::Provider {
            provider: crate::NAME,
            source: format!("an empty {kind} name cannot be mapped to NATS").into(),
        });
    }
    if name.len() > MAX_NAME {
        return Err(Error::Provider {
            provider: crate::NAME,
            source: format!(
                "{kind} `{original}` maps to the NATS name `{name}`, {} bytes, over the limit of {MAX_NAME}",
                name.len()
            )
            .into(),
        });
    }
    Ok(name)
}

/// The stream of event `event`: `ev-<escaped event>`.
pub fn stream(event: &str) -> Result<String> {
    checked("event", event, format!("ev-{}", escape(event)))
}

/// The subject events of `event` are published to: `ev.<escaped event>`.
pub fn subject(event: &str) -> String {
    format!("ev.{}", escape(event))
}

/// The durable consumer of queue `queue`: the escaped queue name.
pub fn consumer(queue: &str) -> Result<String> {
    checked("queue", queue, escape(queue))
}

/// The subject of the dead-letter queue `dead_letter_queue` (`<queue>.dlq`) in
/// [`DEAD_LETTER_STREAM`]: `dlq.<escaped name>`.
pub fn dead_letter_subject(dead_letter_queue: &str) -> String {
    format!("dlq.{}", escape(dead_letter_queue))
}

/// The subject of the delay queue `delay_queue` (`<queue>.delay.<ms>`) in
/// [`DELAY_STREAM`]: `delay.<escaped name>`. Its consumer is [`consumer`] of the
/// same name.
pub fn delay_subject(delay_queue: &str) -> String {
    format!("delay.{}", escape(delay_queue))
}

/// The subject scheduled sends of `event` wait on in [`DELAY_STREAM`]:
/// `sched.<escaped event>`.
pub fn schedule_subject(event: &str) -> String {
    format!("sched.{}", escape(event))
}

/// The event a scheduled send's subject names (the inverse of [`schedule_subject`]).
pub fn event_of_schedule_subject(subject: &str) -> Option<String> {
    unescape(subject.strip_prefix("sched.")?)
}

/// The queue a consumer name stands for (the inverse of [`consumer`]).
pub fn queue_of_consumer(consumer: &str) -> Option<String> {
    unescape(consumer)
}

/// The event a stream name stands for (the inverse of [`stream`]).
pub fn event_of_stream(stream: &str) -> Option<String> {
    unescape(stream.strip_prefix("ev-")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(escape("orders::billing"), "orders::billing");
        assert_eq!(escape("orders.created"), "orders=2Ecreated");
        assert_eq!(escape("a b*c>d/e\\f%="), "a=20b=2Ac=3Ed=2Fe=5Cf=25=3D");
        assert_eq!(escape("é"), "=C3=A9");
        assert_eq!(stream("orders.created").unwrap(), "ev-orders=2Ecreated");
        assert_eq!(subject("orders.created"), "ev.orders=2Ecreated");
        assert_eq!(
            consumer("orders.created::billing").unwrap(),
            "orders=2Ecreated::billing"
        );
        assert_eq!(dead_letter_subject("E::L.dlq"), "dlq.E::L=2Edlq");
        assert_eq!(unescape("=zz"), None);
        assert_eq!(unescape("=2"), None);
        assert!(stream("").is_err());
        assert!(consumer(&"x".repeat(300)).is_err());
        assert_eq!(event_of_stream("ev-a=2Eb").as_deref(), Some("a.b"));
        assert_eq!(
            delay_subject("E::L.delay.5000"),
            "delay.E::L=2Edelay=2E5000"
        );
        assert_eq!(schedule_subject("a.b"), "sched.a=2Eb");
        assert_eq!(
            event_of_schedule_subject("sched.a=2Eb").as_deref(),
            Some("a.b")
        );
        assert_eq!(event_of_schedule_subject("ev.a"), None);
    }

    proptest! {
        #[test]
        fn round_trip(name in "\\PC*") {
            prop_assert_eq!(unescape(&escape(&name)), Some(name.clone()));
        }

        #[test]
        fn any_string_round_trips(name in any::<String>()) {
            prop_assert_eq!(unescape(&escape(&name)), Some(name.clone()));
        }

        #[test]
        fn escaped_names_are_valid(name in any::<String>()) {
            prop_assume!(!name.is_empty());
            let escaped = escape(&name);
            prop_assert!(is_valid_token(&escaped), "token {}", escaped);
            if escaped.len() <= MAX_NAME {
                prop_assert!(is_valid_name(&escaped), "name {}", escaped);
            }
            let subject = subject(&name);
            prop_assert_eq!(subject.split('.').count(), 2);
        }

        #[test]
        fn distinct_names_stay_distinct(a in any::<String>(), b in any::<String>()) {
            prop_assume!(a != b);
            prop_assert_ne!(escape(&a), escape(&b));
        }
    }
}

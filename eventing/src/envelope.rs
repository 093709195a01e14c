//! Envelopes: a body and string headers.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use smallvec::SmallVec;

/// Names of the standard headers every envelope carries, and of the ones the runtime adds.
pub mod header {
    pub use super::{
        current_second, is_current_second, new_message_id, now_rfc3339, rfc3339_seconds,
    };

    /// A unique id per message.
    pub const MESSAGE_ID: &str = "message-id";
    /// The event name (its address).
    pub const EVENT: &str = "event";
    /// When the event was sent, RFC 3339 in UTC.
    pub const TIMESTAMP: &str = "timestamp";
    /// The body's media type (`application/json`).
    pub const CONTENT_TYPE: &str = "content-type";
    /// The event's schema version (`#[event(version = "1.2")]`), as `1.2.0`.
    pub const EVENT_VERSION: &str = "event-version";
    /// The session of the sending task (set by [`SessionPipeline`](crate::pipeline::SessionPipeline)).
    pub const SESSION_ID: &str = "session-id";
    /// Why a message was dead-lettered.
    pub const DEAD_LETTER_REASON: &str = "x-dead-letter-reason";
    /// How many times the listener was called before the message was dead-lettered.
    pub const DEAD_LETTER_ATTEMPTS: &str = "x-dead-letter-attempts";
    /// The queue the message was dead-lettered from.
    pub const DEAD_LETTER_QUEUE: &str = "x-dead-letter-queue";
    /// The listener that gave up on the message.
    pub const DEAD_LETTER_LISTENER: &str = "x-dead-letter-listener";
    /// The headers dead-lettering adds, which a replay removes.
    pub const DEAD_LETTER_HEADERS: [&str; 4] = [
        DEAD_LETTER_REASON,
        DEAD_LETTER_ATTEMPTS,
        DEAD_LETTER_QUEUE,
        DEAD_LETTER_LISTENER,
    ];
    /// On a message coming back from the delayed retry stage: how many times the
    /// listener was called in earlier rounds (so `Context::attempt` counts across
    /// both stages).
    pub const RETRY_ATTEMPTS: &str = "x-retry-attempts";
    /// On a message coming back from the delayed retry stage: how many delays of
    /// the listener's `RetryPolicy::delays` it has waited (1 after the first).
    pub const RETRY_STAGE: &str = "x-retry-stage";
    /// The headers the delayed retry stage adds, which dead-lettering removes.
    pub const RETRY_HEADERS: [&str; 2] = [RETRY_ATTEMPTS, RETRY_STAGE];
}

/// One header's place in the shared text buffer.
#[derive(Clone, Copy, Debug)]
struct Entry {
    start: u32,
    name_len: u32,
    value_len: u32,
}

#[derive(Clone, Default)]
struct Table {
    text: String,
    entries: SmallVec<[Entry; 8]>,
}

impl Table {
    fn name(&self, e: &Entry) -> &str {
        let start = e.start as usize;
        &self.text[start..start + e.name_len as usize]
    }

    fn value(&self, e: &Entry) -> &str {
        let start = (e.start + e.name_len) as usize;
        &self.text[start..start + e.value_len as usize]
    }

    /// Whether entry `e` is called `name`: lengths first, then bytes (no
    /// char-boundary checks).
    fn is(&self, e: &Entry, name: &str) -> bool {
        let start = e.start as usize;
        e.name_len as usize == name.len()
            && self.text.as_bytes().get(start..start + name.len()) == Some(name.as_bytes())
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| self.is(e, name))
    }

    fn push(&mut self, name: &str, value: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        self.text.push_str(value);
        self.entries.push(Entry {
            start: start as u32,
            name_len: name.len() as u32,
            value_len: value.len() as u32,
        });
    }

    /// Appends a header whose value `write` produces in place.
    fn push_with(&mut self, name: &str, write: impl FnOnce(&mut String)) {
        let start = self.text.len();
        self.text.push_str(name);
        let value_start = self.text.len();
        write(&mut self.text);
        self.entries.push(Entry {
            start: start as u32,
            name_len: name.len() as u32,
            value_len: (self.text.len() - value_start) as u32,
        });
    }

    /// Rebuilds the buffer without entry `index`.
    fn remove(&mut self, index: usize) -> String {
        let removed = self.value(&self.entries[index]).to_string();
        let mut rebuilt = Table {
            text: String::with_capacity(self.text.len()),
            entries: SmallVec::new(),
        };
        for (i, e) in self.entries.iter().enumerate() {
            if i != index {
                rebuilt.push(self.name(e), self.value(e));
            }
        }
        *self = rebuilt;
        removed
    }
}

/// String headers in insertion order, kept in one shared buffer: cloning is a
/// reference-count increment, and a message's headers cost two allocations in all.
#[derive(Clone, Default)]
pub struct Headers {
    table: Arc<Table>,
}

impl Headers {
    /// Empty headers with room for about `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            table: Arc::new(Table {
                text: String::with_capacity(n * 24),
                entries: SmallVec::new(),
            }),
        }
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        let table = &*self.table;
        table
            .entries
            .iter()
            .find(|e| table.is(e, name))
            .map(|e| table.value(e))
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn insert(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) {
        let (name, value) = (name.as_ref(), value.as_ref());
        let table = Arc::make_mut(&mut self.table);
        if let Some(index) = table.position(name) {
            if table.value(&table.entries[index]) == value {
                return;
            }
            table.remove(index);
        }
        table.push(name, value);
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let index = self.table.position(name)?;
        Some(Arc::make_mut(&mut self.table).remove(index))
    }

    /// Iterates over `(name, value)` pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let table = &*self.table;
        table
            .entries
            .iter()
            .map(|e| (table.name(e), table.value(e)))
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.table.entries.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.table.entries.is_empty()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Eq for Headers {}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut headers = Headers::default();
        for (k, v) in iter {
            headers.insert(k, v);
        }
        headers
    }
}

/// A message as it travels: the serialized event and its headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Headers, standard ones included.
    pub headers: Headers,
    /// The serialized event.
    pub body: Bytes,
}

impl Envelope {
    /// An envelope with the standard headers set: a fresh `message-id`, `event`,
    /// `timestamp` (now, in whole seconds: `YYYY-MM-DDTHH:MM:SSZ`) and `content-type`.
    ///
    /// Whole seconds, because the timestamp says when an event was sent, for people
    /// and logs (ordering and latency come from the queue and from tracing), and
    /// because that is what AMQP's `timestamp` property holds: the AMQP provider
    /// then carries it in that property, with nothing in the headers table.
    pub fn new(event: &str, content_type: &'static str, body: Bytes) -> Self {
        let mut table = Table {
            text: String::with_capacity(160 + event.len()),
            entries: SmallVec::new(),
        };
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        table.push(
            header::MESSAGE_ID,
            uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id),
        );
        table.push(header::EVENT, event);
        table.push_with(header::TIMESTAMP, |out| {
            write_rfc3339_now(out, false);
        });
        table.push(header::CONTENT_TYPE, content_type);
        Self {
            headers: Headers {
                table: Arc::new(table),
            },
            body,
        }
    }

    /// The `message-id` header, or `""`.
    pub fn message_id(&self) -> &str {
        self.headers.get(header::MESSAGE_ID).unwrap_or("")
    }

    /// The `event` header, or `""`.
    pub fn event(&self) -> &str {
        self.headers.get(header::EVENT).unwrap_or("")
    }
}

/// A new unique message id (a UUID v4).
pub fn new_message_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// The current time as RFC 3339 in UTC, with microseconds.
pub fn now_rfc3339() -> String {
    let mut out = String::with_capacity(27);
    write_rfc3339_now(&mut out, true);
    out
}

/// Calls `f` with `YYYY-MM-DDTHH:MM:SS` (no `Z`) of `secs` since the Unix epoch,
/// formatted once per second per thread: senders stamp, and receivers of a
/// provider that stores the time (JetStream) rebuild, mostly the current second.
fn with_second<R>(secs: u64, f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != secs {
            let full = humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            )
            .to_string();
            // "YYYY-MM-DDTHH:MM:SSZ" without the Z.
            *prefix = full.trim_end_matches('Z').to_string();
            *cached = secs;
        }
        f(prefix)
    })
}

fn since_epoch(time: SystemTime) -> std::time::Duration {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// `time` to the second as the envelope stamps it (`YYYY-MM-DDTHH:MM:SSZ`), for
/// a provider that carries the timestamp in the broker's own field.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
/// assert_eq!(eventing::header::rfc3339_seconds(at), "2023-11-14T22:13:20Z");
/// ```
pub fn rfc3339_seconds(time: SystemTime) -> String {
    let mut out = String::with_capacity(20);
    with_second(since_epoch(time).as_secs(), |prefix| out.push_str(prefix));
    out.push('Z');
    out
}

/// Whether `value` is the current second in the envelope's own form
/// (`YYYY-MM-DDTHH:MM:SSZ`, as [`Envelope::new`] stamps it): a provider whose
/// broker stores the time of every message can leave such a timestamp out and
/// give it back from the stored time.
///
/// ```
/// let now = eventing::header::rfc3339_seconds(std::time::SystemTime::now());
/// // Unless the second turned just now.
/// # let now = eventing::header::rfc3339_seconds(std::time::SystemTime::now());
/// assert!(eventing::header::is_current_second(&now));
/// assert!(!eventing::header::is_current_second("2023-11-14T22:13:20Z"));
/// ```
pub fn is_current_second(value: &str) -> bool {
    current_second(value).is_some()
}

/// The current second since the Unix epoch if `value` is it in the envelope's own
/// form (see [`is_current_second`]), read from the same clock reading: a provider
/// that carries whole seconds (AMQP's `timestamp`) gets them without parsing.
///
/// ```
/// let now = eventing::header::rfc3339_seconds(std::time::SystemTime::now());
/// # let now = eventing::header::rfc3339_seconds(std::time::SystemTime::now());
/// assert!(eventing::header::current_second(&now).is_some_and(|secs| secs > 1_700_000_000));
/// assert_eq!(eventing::header::current_second("2023-11-14T22:13:20Z"), None);
/// ```
pub fn current_second(value: &str) -> Option<u64> {
    let stamp = value.strip_suffix('Z')?;
    let secs = since_epoch(SystemTime::now()).as_secs();
    with_second(secs, |prefix| prefix == stamp).then_some(secs)
}

/// Appends the current time as `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`, or without the
/// fraction if not `micros`.
fn write_rfc3339_now(out: &mut String, micros: bool) {
    let now = since_epoch(SystemTime::now());
    with_second(now.as_secs(), |prefix| out.push_str(prefix));
    if !micros {
        out.push('Z');
        return;
    }
    let mut digits = [b'0'; 6];
    let mut value = now.subsec_micros();
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
    // ASCII pushed as chars: no UTF-8 validation of the digits.
    out.push('.');
    out.extend(digits.iter().map(|&digit| char::from(digit)));
    out.push('Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_headers_are_set() {
        let envelope = Envelope::new("Hello", "application/json", Bytes::from_static(b"{}"));
        assert_eq!(envelope.event(), "Hello");
        assert_eq!(envelope.message_id().len(), 36);
        assert!(
            envelope
                .headers
                .get(header::TIMESTAMP)
                .unwrap()
                .ends_with('Z')
        );
        assert_eq!(
            envelope.headers.get(header::CONTENT_TYPE),
            Some("application/json")
        );
        let other = Envelope::new("Hello", "application/json", Bytes::new());
        assert_ne!(envelope.message_id(), other.message_id());
        let stamp = envelope.headers.get(header::TIMESTAMP).unwrap();
        let parsed = humantime::parse_rfc3339(stamp).expect("valid RFC 3339");
        let age = SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(age.as_secs() < 5, "{stamp} is now");
        assert_eq!(stamp.len(), "2026-01-01T00:00:00Z".len(), "whole seconds");
        assert_eq!(now_rfc3339().len(), "2026-01-01T00:00:00.000000Z".len());
    }

    #[test]
    fn insert_replaces_and_clones_stay_apart() {
        let mut a: Headers = [("k", "1")].into_iter().collect();
        let b = a.clone();
        a.insert("k", "2");
        a.insert("j", "3");
        assert_eq!(a.get("k"), Some("2"));
        assert_eq!(b.get("k"), Some("1"));
        assert_eq!(a.len(), 2);
        assert_eq!(a.remove("j").as_deref(), Some("3"));
        assert_eq!(b.get("j"), None);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![("k", "2")]);
        let c: Headers = [("x", "1"), ("k", "2")].into_iter().collect();
        let mut d: Headers = [("k", "2")].into_iter().collect();
        assert_ne!(c, d);
        d.insert("x", "1");
        assert_eq!(c, d, "equality ignores order");
    }
}

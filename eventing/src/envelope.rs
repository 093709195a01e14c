//! Envelopes: a body and string headers.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

/// Names of the standard headers every envelope carries, and of the ones the runtime adds.
pub mod header {
    /// A unique id per message.
    pub const MESSAGE_ID: &str = "message-id";
    /// The event name (its address).
    pub const EVENT: &str = "event";
    /// When the event was sent, RFC 3339 in UTC.
    pub const TIMESTAMP: &str = "timestamp";
    /// The body's media type (`application/json`).
    pub const CONTENT_TYPE: &str = "content-type";
    /// The session of the sending task (set by [`SessionPipeline`](crate::SessionPipeline)).
    pub const SESSION_ID: &str = "session-id";
    /// Why a message was dead-lettered.
    pub const DEAD_LETTER_REASON: &str = "x-dead-letter-reason";
    /// How many times the listener was called before the message was dead-lettered.
    pub const DEAD_LETTER_ATTEMPTS: &str = "x-dead-letter-attempts";
    /// The queue the message was dead-lettered from.
    pub const DEAD_LETTER_QUEUE: &str = "x-dead-letter-queue";
    /// The listener that gave up on the message.
    pub const DEAD_LETTER_LISTENER: &str = "x-dead-letter-listener";
}

/// Header name: static for the well-known ones, owned for the rest.
pub type HeaderName = Cow<'static, str>;

/// String headers in insertion order. Cloning is cheap (shared until written).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Arc<Vec<(HeaderName, String)>>,
}

impl Headers {
    /// Empty headers with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            entries: Arc::new(Vec::with_capacity(n)),
        }
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Sets `name` to `value`, replacing an earlier value.
    pub fn insert(&mut self, name: impl Into<HeaderName>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        let entries = Arc::make_mut(&mut self.entries);
        match entries.iter_mut().find(|(key, _)| *key == name) {
            Some(entry) => entry.1 = value,
            None => entries.push((name, value)),
        }
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let position = self.entries.iter().position(|(key, _)| key == name)?;
        Some(Arc::make_mut(&mut self.entries).remove(position).1)
    }

    /// Iterates over `(name, value)` pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v.as_str()))
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<HeaderName>, V: Into<String>> FromIterator<(K, V)> for Headers {
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
    /// `timestamp` (now) and `content-type`.
    pub fn new(event: &str, content_type: &'static str, body: Bytes) -> Self {
        let mut headers = Headers::with_capacity(6);
        headers.insert(header::MESSAGE_ID, new_message_id());
        headers.insert(header::EVENT, event);
        headers.insert(header::TIMESTAMP, now_rfc3339());
        headers.insert(header::CONTENT_TYPE, content_type);
        Self { headers, body }
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
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_headers_are_set() {
        let envelope = Envelope::new("Hello", "application/json", Bytes::from_static(b"{}"));
        assert_eq!(envelope.event(), "Hello");
        assert_eq!(envelope.message_id().len(), 36);
        assert!(envelope.headers.get(header::TIMESTAMP).unwrap().ends_with('Z'));
        assert_eq!(
            envelope.headers.get(header::CONTENT_TYPE),
            Some("application/json")
        );
        let other = Envelope::new("Hello", "application/json", Bytes::new());
        assert_ne!(envelope.message_id(), other.message_id());
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
    }
}

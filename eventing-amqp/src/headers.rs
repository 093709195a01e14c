//! Envelope headers as AMQP properties, and back.
//!
//! `message-id` and `content-type` travel as the properties of the same name,
//! `timestamp` as the AMQP timestamp property (whole seconds, for other clients) and,
//! exactly as sent, in the headers table; every other header is a long string in the
//! headers table. Field tables are length-prefixed, so no value can forge another
//! header. A message from another client that lacks some of these simply lacks
//! those headers.
//!
//! Header names that RabbitMQ's STOMP plugin reserves (STOMP 1.2's own headers, the
//! names it turns into AMQP properties, such as `reply-to` and `timestamp`) go into
//! the table as [`ESCAPE_PREFIX`]`<name>`, and names already starting with the
//! prefix get it once more; on receipt the prefix is taken off once. This is the
//! convention of eventing-stomp's RabbitMQ dialect, so an event sent through one
//! provider reaches a listener of the other with the same headers, and no header
//! can change how the STOMP plugin treats a message. The frame headers the plugin
//! copies into the table (`content-length`, `receipt`) are not envelope headers
//! and are dropped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use eventing::{Envelope, Error, Headers, header};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::error::short;

/// AMQP `delivery_mode` of messages that survive a broker restart.
pub(crate) const PERSISTENT: u8 = 2;
/// AMQP `delivery_mode` of messages kept in memory only.
pub(crate) const TRANSIENT: u8 = 1;

/// The prefix of a header whose name is reserved (shared with eventing-stomp);
/// whether a name is; the STOMP frame headers that are not envelope headers.
pub(crate) use eventing_rabbitmq::wire::{ESCAPE_PREFIX, STOMP_FRAME_ONLY, reserved};

/// The AMQP properties that carry `envelope`'s headers.
pub(crate) fn to_properties(
    envelope: &Envelope,
    persistent: bool,
) -> Result<BasicProperties, Error> {
    let mut table = FieldTable::default();
    let mut properties = BasicProperties::default().with_delivery_mode(if persistent {
        PERSISTENT
    } else {
        TRANSIENT
    });
    for (name, value) in envelope.headers.iter() {
        match name {
            header::MESSAGE_ID if value.len() <= usize::from(u8::MAX) => {
                properties = properties.with_message_id(ShortString::from(value.to_string()));
                continue;
            }
            header::CONTENT_TYPE if value.len() <= usize::from(u8::MAX) => {
                properties = properties.with_content_type(ShortString::from(value.to_string()));
                continue;
            }
            header::TIMESTAMP => {
                if let Ok(time) = humantime::parse_rfc3339_weak(value) {
                    let seconds = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    properties = properties.with_timestamp(seconds);
                }
            }
            _ => {}
        }
        let key = if reserved(name) {
            short("header name", &format!("{ESCAPE_PREFIX}{name}"))?
        } else {
            short("header name", name)?
        };
        table.insert(
            key,
            AMQPValue::LongString(LongString::from(value.as_bytes())),
        );
    }
    Ok(properties.with_headers(table))
}

/// The standard headers, which come first and in this order.
const STANDARD: [&str; 4] = [
    header::MESSAGE_ID,
    header::EVENT,
    header::TIMESTAMP,
    header::CONTENT_TYPE,
];

/// Rebuilds the envelope of a delivery: the headers that were sent, in the
/// standard order first.
pub(crate) fn to_envelope(properties: &BasicProperties, body: Vec<u8>) -> Envelope {
    let table = properties.headers().as_ref();
    let entries = || {
        table
            .into_iter()
            .flat_map(|t| t.inner())
            .map(|(key, value)| (key.as_str(), value))
            .filter(|(key, _)| !STOMP_FRAME_ONLY.contains(key))
            .map(|(key, value)| (key.strip_prefix(ESCAPE_PREFIX).unwrap_or(key), value))
    };
    let from_table = |name: &str| entries().find(|(n, _)| *n == name).map(|(_, v)| text(v));
    let count = table.map_or(0, |t| t.inner().len()) + 2;
    let mut headers = Headers::with_capacity(count);
    let message_id = properties.message_id().as_ref().map(|id| id.to_string());
    if let Some(id) = message_id.or_else(|| from_table(header::MESSAGE_ID)) {
        headers.insert(header::MESSAGE_ID, id);
    }
    if let Some(event) = from_table(header::EVENT) {
        headers.insert(header::EVENT, event);
    }
    let seconds = || {
        properties
            .timestamp()
            .map(|s| rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)))
    };
    if let Some(timestamp) = from_table(header::TIMESTAMP).or_else(seconds) {
        headers.insert(header::TIMESTAMP, timestamp);
    }
    let content_type = properties.content_type().as_ref().map(|t| t.to_string());
    if let Some(content_type) = content_type.or_else(|| from_table(header::CONTENT_TYPE)) {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    for (name, value) in entries() {
        if !STANDARD.contains(&name) {
            headers.insert(name, text(value));
        }
    }
    Envelope {
        headers,
        body: Bytes::from(body),
    }
}

fn rfc3339_seconds(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// A header value as text; other clients may send numbers, booleans or tables.
fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Void => String::new(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(envelope: &Envelope) -> Envelope {
        let properties = to_properties(envelope, true).expect("encodable");
        to_envelope(&properties, envelope.body.to_vec())
    }

    #[test]
    fn headers_come_back_identical() {
        let mut envelope = Envelope::new("Ping", eventing::codec::JSON, Bytes::from_static(b"{}"));
        envelope
            .headers
            .insert("x-stamp", "line1\nline2:colon\\back\rcr\0nul");
        envelope.headers.insert(header::SESSION_ID, "session-42");
        envelope.headers.insert("empty", "");
        let back = round_trip(&envelope);
        assert_eq!(sorted(&back), sorted(&envelope), "the same headers");
        assert_eq!(back.body, envelope.body);
        let standard: Vec<&str> = back.headers.iter().take(4).map(|(name, _)| name).collect();
        assert_eq!(
            standard,
            [
                header::MESSAGE_ID,
                header::EVENT,
                header::TIMESTAMP,
                header::CONTENT_TYPE
            ],
            "standard headers first"
        );
    }

    fn sorted(envelope: &Envelope) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = envelope
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        headers.sort();
        headers
    }

    #[test]
    fn standard_headers_use_amqp_properties() {
        let envelope = Envelope::new("Ping", eventing::codec::JSON, Bytes::new());
        let properties = to_properties(&envelope, true).expect("encodable");
        assert_eq!(
            properties.message_id().as_ref().map(ShortString::as_str),
            Some(envelope.message_id())
        );
        assert_eq!(
            properties.content_type().as_ref().map(ShortString::as_str),
            Some(eventing::codec::JSON)
        );
        assert_eq!(*properties.delivery_mode(), Some(PERSISTENT));
        let sent = humantime::parse_rfc3339(envelope.headers.get(header::TIMESTAMP).unwrap())
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(*properties.timestamp(), Some(sent));
        let table = properties.headers().as_ref().expect("a table");
        assert!(!table.contains_key(header::MESSAGE_ID));
        assert!(
            table.contains_key("x-eventing-timestamp"),
            "the exact timestamp, escaped"
        );
        assert!(table.contains_key(header::EVENT));
    }

    #[test]
    fn long_values_and_odd_timestamps_still_round_trip() {
        let mut envelope = Envelope::default();
        envelope.headers.insert(header::MESSAGE_ID, "m".repeat(300));
        envelope.headers.insert(header::TIMESTAMP, "yesterday");
        envelope
            .headers
            .insert(header::CONTENT_TYPE, "t".repeat(256));
        let properties = to_properties(&envelope, false).expect("encodable");
        assert_eq!(*properties.delivery_mode(), Some(TRANSIENT));
        assert_eq!(*properties.timestamp(), None);
        let back = round_trip(&envelope);
        for (name, value) in envelope.headers.iter() {
            assert_eq!(back.headers.get(name), Some(value), "{name}");
        }
        assert_eq!(back.headers.len(), envelope.headers.len());
    }

    #[test]
    fn reserved_names_are_escaped_and_come_back() {
        let mut envelope = Envelope::new("Ping", eventing::codec::JSON, Bytes::new());
        for name in [
            "reply-to",
            "correlation-id",
            "receipt",
            "x-eventing-odd",
            "session-id",
        ] {
            envelope.headers.insert(name, format!("{name} value"));
        }
        let properties = to_properties(&envelope, true).expect("encodable");
        let table = properties.headers().as_ref().expect("a table");
        for key in [
            "x-eventing-reply-to",
            "x-eventing-correlation-id",
            "x-eventing-receipt",
            "x-eventing-x-eventing-odd",
            "session-id",
            "event",
        ] {
            assert!(table.contains_key(key), "{key} in {table:?}");
        }
        assert!(!table.contains_key("reply-to") && !table.contains_key("receipt"));
        assert_eq!(sorted(&round_trip(&envelope)), sorted(&envelope));
    }

    #[test]
    fn stomp_frame_headers_copied_by_the_plugin_are_dropped() {
        let mut table = FieldTable::default();
        let long = |s: &str| AMQPValue::LongString(LongString::from(s));
        table.insert("content-length".into(), long("23"));
        table.insert("receipt".into(), long("1"));
        table.insert(
            "x-eventing-timestamp".into(),
            long("2024-05-01T10:00:00.123456Z"),
        );
        table.insert("x-eventing-reply-to".into(), long("nobody"));
        table.insert("event".into(), long("E"));
        let properties = BasicProperties::default()
            .with_message_id("id-1".into())
            .with_timestamp(1)
            .with_headers(table);
        let envelope = to_envelope(&properties, Vec::new());
        let expected: Headers = [
            ("message-id", "id-1"),
            ("event", "E"),
            ("timestamp", "2024-05-01T10:00:00.123456Z"),
            ("reply-to", "nobody"),
        ]
        .into_iter()
        .collect();
        assert_eq!(envelope.headers, expected);
    }

    #[test]
    fn overlong_header_names_are_errors() {
        let mut envelope = Envelope::default();
        envelope.headers.insert("n".repeat(256), "v");
        assert!(to_properties(&envelope, true).is_err());
    }

    #[test]
    fn foreign_messages_have_only_what_was_sent() {
        let bare = to_envelope(&BasicProperties::default(), b"not json".to_vec());
        assert!(bare.headers.is_empty());
        assert_eq!(&bare.body[..], b"not json");

        let mut table = FieldTable::default();
        table.insert("count".into(), AMQPValue::LongInt(-3));
        table.insert("flag".into(), AMQPValue::Boolean(true));
        let properties = BasicProperties::default()
            .with_timestamp(0)
            .with_headers(table);
        let foreign = to_envelope(&properties, Vec::new());
        assert_eq!(
            foreign.headers.get(header::TIMESTAMP),
            Some("1970-01-01T00:00:00Z")
        );
        assert_eq!(foreign.headers.get("count"), Some("-3"));
        assert_eq!(foreign.headers.get("flag"), Some("true"));
        assert_eq!(foreign.headers.get(header::MESSAGE_ID), None);
    }
}

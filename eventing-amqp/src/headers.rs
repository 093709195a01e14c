//! Envelope headers as AMQP properties, and back.
//!
//! What every envelope carries travels in the protocol's own fields, so a default
//! event has no headers table at all: `message-id` as `message_id`, `event` as
//! `type`, `content-type` as `content_type`, `correlation-id` (when set) as
//! `correlation_id`, and `timestamp` as the AMQP `timestamp` (whole seconds since
//! the epoch, which is what the property holds and what every other client reads).
//! A value a property cannot hold exactly goes into the headers table instead: a
//! name or id over 255 bytes, and a timestamp that is not whole seconds in the
//! form `YYYY-MM-DDTHH:MM:SSZ` (it travels exactly in the table and, when it is
//! RFC 3339, also truncated in the property for other clients). So nothing is
//! lost, and the envelope's own timestamps, which are whole seconds, cost nothing
//! in the table. Every other header is a long string in the headers table; field
//! tables are length-prefixed, so no value can forge another header.
//!
//! On receipt a standard header comes from the table if it is there (eventing
//! writes it there only when the property cannot hold it, and older versions of
//! eventing always did), else from the property. A message from another client that
//! lacks some of these simply lacks those headers; its `type` is read as the event
//! name. Non-string values in its table arrive as text: numbers and booleans as
//! written, a timestamp as seconds, tables and arrays as JSON.
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

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

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

/// The envelope header carried by the AMQP `correlation_id` property.
const CORRELATION_ID: &str = "correlation-id";

/// The AMQP properties that carry `envelope`'s headers.
pub(crate) fn to_properties(
    envelope: &Envelope,
    persistent: bool,
) -> Result<BasicProperties, Error> {
    let mut table: Option<FieldTable> = None;
    let mut properties = BasicProperties::default().with_delivery_mode(if persistent {
        PERSISTENT
    } else {
        TRANSIENT
    });
    for (name, value) in envelope.headers.iter() {
        let property = || ShortString::try_new(value).ok();
        match name {
            header::MESSAGE_ID => {
                if let Some(id) = property() {
                    properties = properties.with_message_id(id);
                    continue;
                }
            }
            header::EVENT => {
                if let Some(event) = property() {
                    properties = properties.with_type(event);
                    continue;
                }
            }
            header::CONTENT_TYPE => {
                if let Some(content_type) = property() {
                    properties = properties.with_content_type(content_type);
                    continue;
                }
            }
            CORRELATION_ID => {
                if let Some(id) = property() {
                    properties = properties.with_correlation_id(id);
                    continue;
                }
            }
            header::TIMESTAMP => match timestamp_seconds(value) {
                Some((seconds, true)) => {
                    properties = properties.with_timestamp(seconds);
                    continue;
                }
                // Not whole seconds: other clients get the seconds, eventing the
                // exact text from the table.
                Some((seconds, false)) => properties = properties.with_timestamp(seconds),
                None => {}
            },
            _ => {}
        }
        let key = if reserved(name) {
            short("header name", &format!("{ESCAPE_PREFIX}{name}"))?
        } else {
            short("header name", name)?
        };
        table.get_or_insert_with(FieldTable::default).insert(
            key,
            AMQPValue::LongString(LongString::from(value.as_bytes())),
        );
    }
    Ok(match table {
        Some(table) => properties.with_headers(table),
        None => properties,
    })
}

/// Seconds since the epoch of an RFC 3339 `value`, and whether the AMQP property
/// restores it exactly (it is `YYYY-MM-DDTHH:MM:SSZ`).
fn timestamp_seconds(value: &str) -> Option<(u64, bool)> {
    // What nearly every send carries: the envelope's own stamp of this second
    // (compared with the per-thread text of this second, not parsed).
    if let Some(now) = header::current_second(value) {
        return Some((now, true));
    }
    let time = humantime::parse_rfc3339_weak(value).ok()?;
    let seconds = time.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let exact = value.len() == "YYYY-MM-DDTHH:MM:SSZ".len()
        && value.ends_with('Z')
        && header::rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds)) == value;
    Some((seconds, exact))
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
    let in_table = table.is_some_and(|t| !t.inner().is_empty());
    let from_table = |name: &str| {
        if !in_table {
            return None;
        }
        entries()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| Cow::Owned(text(v)))
    };
    // Borrowed: the envelope's table copies them once.
    fn property(p: &Option<ShortString>) -> Option<Cow<'_, str>> {
        p.as_ref().map(|s| Cow::Borrowed(s.as_str()))
    }
    let count = table.map_or(0, |t| t.inner().len()) + 5;
    let mut headers = Headers::with_capacity(count);
    let standard = [
        (header::MESSAGE_ID, property(properties.message_id())),
        (header::EVENT, property(properties.kind())),
        (
            header::TIMESTAMP,
            properties
                .timestamp()
                .map(|s| Cow::Owned(header::rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)))),
        ),
        (header::CONTENT_TYPE, property(properties.content_type())),
        (CORRELATION_ID, property(properties.correlation_id())),
    ];
    for (name, from_property) in standard {
        if let Some(value) = from_table(name).or(from_property) {
            headers.insert(name, value);
        }
    }
    if in_table {
        for (name, value) in entries() {
            if !STANDARD.contains(&name) && name != CORRELATION_ID {
                headers.insert(name, text(value));
            }
        }
    }
    Envelope {
        headers,
        body: Bytes::from(body),
    }
}

/// A header value as text; other clients may send numbers, booleans, timestamps
/// (seconds), tables and arrays (as JSON).
fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        AMQPValue::Void => String::new(),
        AMQPValue::FieldTable(_) | AMQPValue::FieldArray(_) => json(value).to_string(),
        scalar => match json(scalar) {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        },
    }
}

/// An AMQP value as JSON: strings (bytes read as UTF-8, lossily), numbers,
/// booleans, `null` for void, timestamps as seconds, decimals as exact decimal
/// text (a string), tables as objects, arrays as arrays. A float that JSON cannot
/// hold (NaN, infinite) is a string.
fn json(value: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    let float = |f: f64| {
        serde_json::Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number)
    };
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(n) => (*n).into(),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => Value::String(decimal(d.value, d.scale)),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::FieldArray(items) => Value::Array(items.as_slice().iter().map(json).collect()),
        AMQPValue::FieldTable(table) => Value::Object(
            table
                .inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), json(v)))
                .collect(),
        ),
        AMQPValue::Void => Value::Null,
    }
}

/// `value / 10^scale` written exactly (`314`, scale 2: `3.14`).
fn decimal(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{whole}.{fraction}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(envelope: &Envelope) -> Envelope {
        let properties = to_properties(envelope, true).expect("encodable");
        to_envelope(&properties, envelope.body.to_vec())
    }

    /// An envelope as the runtime makes one, with a whole-seconds timestamp.
    fn event(name: &str) -> Envelope {
        let mut envelope = Envelope::new(name, eventing::codec::JSON, Bytes::from_static(b"{}"));
        envelope
            .headers
            .insert(header::TIMESTAMP, "2026-12-03T10:00:00Z");
        envelope
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
    fn headers_come_back_identical() {
        for stamp in ["2026-12-03T10:00:00Z", "2026-12-03T10:00:00.123456Z"] {
            let mut envelope = event("Ping");
            envelope.headers.insert(header::TIMESTAMP, stamp);
            envelope
                .headers
                .insert("x-stamp", "line1\nline2:colon\\back\rcr\0nul");
            envelope.headers.insert(header::SESSION_ID, "session-42");
            envelope.headers.insert(CORRELATION_ID, "corr-1");
            envelope.headers.insert("empty", "");
            let back = round_trip(&envelope);
            assert_eq!(sorted(&back), sorted(&envelope), "the same headers");
            assert_eq!(back.body, envelope.body);
            let standard: Vec<&str> = back.headers.iter().take(4).map(|(name, _)| name).collect();
            assert_eq!(standard, STANDARD, "standard headers first");
        }
    }

    #[test]
    fn a_default_event_travels_in_properties_without_a_table() {
        let envelope = event("shop.Order");
        let properties = to_properties(&envelope, true).expect("encodable");
        let text = |p: &Option<ShortString>| p.as_ref().map(|s| s.as_str().to_string());
        assert_eq!(
            text(properties.message_id()).as_deref(),
            Some(envelope.message_id())
        );
        assert_eq!(text(properties.kind()).as_deref(), Some("shop.Order"));
        assert_eq!(
            text(properties.content_type()).as_deref(),
            Some(eventing::codec::JSON)
        );
        assert_eq!(*properties.timestamp(), Some(1_796_292_000));
        assert_eq!(*properties.delivery_mode(), Some(PERSISTENT));
        assert_eq!(*properties.correlation_id(), None);
        assert!(properties.headers().is_none(), "{:?}", properties.headers());
        assert_eq!(round_trip(&envelope), envelope);
    }

    #[test]
    fn the_runtime_timestamp_needs_no_table_entry() {
        let envelope = Envelope::new("Ping", eventing::codec::JSON, Bytes::new());
        let stamp = envelope
            .headers
            .get(header::TIMESTAMP)
            .expect("a timestamp");
        let properties = to_properties(&envelope, false).expect("encodable");
        assert!(properties.timestamp().is_some());
        let exact = timestamp_seconds(stamp).expect("RFC 3339").1;
        assert_eq!(
            properties.headers().is_none(),
            exact,
            "the table is empty exactly when the timestamp is whole seconds: {stamp}"
        );
        assert_eq!(round_trip(&envelope), envelope);
    }

    #[test]
    fn a_finer_timestamp_travels_exactly_in_the_table_and_truncated_as_the_property() {
        let mut envelope = event("Ping");
        envelope
            .headers
            .insert(header::TIMESTAMP, "2024-05-01T10:00:00.123456Z");
        let properties = to_properties(&envelope, true).expect("encodable");
        assert_eq!(*properties.timestamp(), Some(1_714_557_600));
        let table = properties.headers().as_ref().expect("a table");
        assert_eq!(
            table
                .inner()
                .keys()
                .map(ShortString::as_str)
                .collect::<Vec<_>>(),
            ["x-eventing-timestamp"]
        );
        assert_eq!(round_trip(&envelope), envelope);
        // With an offset: also not restorable from seconds.
        envelope
            .headers
            .insert(header::TIMESTAMP, "2024-05-01T12:00:00+02:00");
        assert_eq!(round_trip(&envelope), envelope);
    }

    #[test]
    fn long_values_and_odd_timestamps_still_round_trip() {
        let mut envelope = Envelope::default();
        envelope.headers.insert(header::MESSAGE_ID, "m".repeat(300));
        envelope.headers.insert(header::EVENT, "e".repeat(256));
        envelope.headers.insert(header::TIMESTAMP, "yesterday");
        envelope
            .headers
            .insert(header::CONTENT_TYPE, "t".repeat(256));
        envelope.headers.insert(CORRELATION_ID, "c".repeat(256));
        let properties = to_properties(&envelope, false).expect("encodable");
        assert_eq!(*properties.delivery_mode(), Some(TRANSIENT));
        assert_eq!(*properties.timestamp(), None);
        assert_eq!(*properties.kind(), None);
        assert_eq!(*properties.correlation_id(), None);
        let back = round_trip(&envelope);
        for (name, value) in envelope.headers.iter() {
            assert_eq!(back.headers.get(name), Some(value), "{name}");
        }
        assert_eq!(back.headers.len(), envelope.headers.len());
    }

    #[test]
    fn reserved_names_are_escaped_and_come_back() {
        let mut envelope = event("Ping");
        for name in [
            "reply-to",
            "correlation-id",
            "receipt",
            "type",
            "x-eventing-odd",
            "session-id",
        ] {
            envelope.headers.insert(name, format!("{name} value"));
        }
        let properties = to_properties(&envelope, true).expect("encodable");
        let table = properties.headers().as_ref().expect("a table");
        let mut keys: Vec<&str> = table.inner().keys().map(ShortString::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "session-id",
                "x-eventing-receipt",
                "x-eventing-reply-to",
                "x-eventing-type",
                "x-eventing-x-eventing-odd",
            ]
        );
        assert_eq!(
            properties
                .correlation_id()
                .as_ref()
                .map(ShortString::as_str),
            Some("correlation-id value")
        );
        assert_eq!(
            properties.kind().as_ref().map(ShortString::as_str),
            Some("Ping")
        );
        assert_eq!(sorted(&round_trip(&envelope)), sorted(&envelope));
    }

    #[test]
    fn the_previous_format_and_stomp_frame_headers_are_read() {
        let mut table = FieldTable::default();
        let long = |s: &str| AMQPValue::LongString(LongString::from(s));
        table.insert("content-length".into(), long("23"));
        table.insert("receipt".into(), long("1"));
        table.insert(
            "x-eventing-timestamp".into(),
            long("2024-05-01T10:00:00.123456Z"),
        );
        table.insert("x-eventing-reply-to".into(), long("nobody"));
        table.insert("x-eventing-correlation-id".into(), long("corr-9"));
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
            ("correlation-id", "corr-9"),
            ("reply-to", "nobody"),
        ]
        .into_iter()
        .collect();
        assert_eq!(envelope.headers, expected);
        let standard: Vec<&str> = envelope
            .headers
            .iter()
            .take(3)
            .map(|(name, _)| name)
            .collect();
        assert_eq!(standard, ["message-id", "event", "timestamp"]);
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

        let properties = BasicProperties::default()
            .with_timestamp(0)
            .with_type("shop.Order".into())
            .with_correlation_id("c-1".into())
            .with_headers(FieldTable::default());
        let foreign = to_envelope(&properties, Vec::new());
        let expected: Headers = [
            ("event", "shop.Order"),
            ("timestamp", "1970-01-01T00:00:00Z"),
            ("correlation-id", "c-1"),
        ]
        .into_iter()
        .collect();
        assert_eq!(foreign.headers, expected);
    }

    #[test]
    fn other_clients_values_arrive_as_readable_text() {
        let mut nested = FieldTable::default();
        nested.insert("a".into(), AMQPValue::LongInt(1));
        nested.insert("s".into(), AMQPValue::LongString("x \"q\"".into()));
        nested.insert("v".into(), AMQPValue::Void);
        let mut array = lapin::types::FieldArray::default();
        array.push(AMQPValue::ShortShortInt(-1));
        array.push(AMQPValue::LongString("two".into()));
        array.push(AMQPValue::Boolean(false));
        array.push(AMQPValue::FieldTable(nested.clone()));
        let mut table = FieldTable::default();
        let values = [
            ("count", AMQPValue::LongInt(-3)),
            ("big", AMQPValue::LongLongInt(i64::MAX)),
            ("small", AMQPValue::ShortShortUInt(7)),
            ("flag", AMQPValue::Boolean(true)),
            ("ratio", AMQPValue::Double(1.5)),
            ("nan", AMQPValue::Float(f32::NAN)),
            (
                "price",
                AMQPValue::DecimalValue(lapin::types::DecimalValue {
                    scale: 2,
                    value: 314,
                }),
            ),
            (
                "cents",
                AMQPValue::DecimalValue(lapin::types::DecimalValue { scale: 3, value: 5 }),
            ),
            ("at", AMQPValue::Timestamp(1_714_557_600)),
            ("nothing", AMQPValue::Void),
            ("bytes", AMQPValue::ByteArray(b"raw".to_vec().into())),
            ("short", AMQPValue::ShortString("s".into())),
            ("table", AMQPValue::FieldTable(nested)),
            ("array", AMQPValue::FieldArray(array)),
        ];
        for (name, value) in values {
            table.insert(name.into(), value);
        }
        let properties = BasicProperties::default().with_headers(table);
        let foreign = to_envelope(&properties, Vec::new());
        let get = |name: &str| foreign.headers.get(name).unwrap_or("<missing>");
        assert_eq!(get("count"), "-3");
        assert_eq!(get("big"), "9223372036854775807");
        assert_eq!(get("small"), "7");
        assert_eq!(get("flag"), "true");
        assert_eq!(get("ratio"), "1.5");
        assert_eq!(get("nan"), "NaN");
        assert_eq!(get("price"), "3.14");
        assert_eq!(get("cents"), "0.005");
        assert_eq!(get("at"), "1714557600");
        assert_eq!(get("nothing"), "");
        assert_eq!(get("bytes"), "raw");
        assert_eq!(get("short"), "s");
        assert_eq!(get("table"), r#"{"a":1,"s":"x \"q\"","v":null}"#);
        assert_eq!(
            get("array"),
            r#"[-1,"two",false,{"a":1,"s":"x \"q\"","v":null}]"#
        );
        assert_eq!(foreign.headers.len(), 14);
    }
}

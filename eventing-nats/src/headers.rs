//! Envelope headers as NATS headers, binary-safe.
//!
//! NATS header names are printable ASCII without `:`; values cannot hold CR or LF,
//! and the client trims the whitespace around them. async-nats *panics* on invalid
//! names or values given as strings (since 0.47), so every name and value goes
//! through the fallible `FromStr` here. A header that would not arrive identical is
//! sent escaped, name and value both as `%XX` (`%`,
//! `:`, `,`, controls, whitespace and non-ASCII bytes of the name; `%`, controls and
//! whitespace other than an inner space of the value), and its (escaped) name is
//! listed in the header [`ESCAPED`]; the receiver decodes exactly the listed ones.
//! Names that NATS itself interprets (`Nats-*`) or that this provider uses
//! (`Eventing-Nats-*`) are escaped too, so a user header never steers the server.
//! Headers a plain NATS publisher sends arrive unchanged (it lists nothing).

use std::str::FromStr;
use std::time::SystemTime;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use eventing::{Envelope, Error, Headers, Result, header};

/// Lists the headers sent escaped (comma-separated escaped names).
pub const ESCAPED: &str = "Eventing-Nats-Escaped";

/// On a message put onto one queue alone (replay): the queue it is for. Other
/// queues of the event acknowledge and skip it.
pub const TARGET_QUEUE: &str = "Eventing-Nats-Queue";

/// On a message waiting in the delay stream (a retry copy or a scheduled send):
/// when it is due, in milliseconds since the Unix epoch.
pub const DUE: &str = "Eventing-Nats-Due";

/// JetStream's message id: a publish with the id of one stored within the
/// stream's duplicate window is not stored again.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// The first value of header `name` in `map`, found by comparing names. A message
/// carries a few headers at most, and `HeaderMap::get` would copy the name into a
/// new allocation and hash it for every lookup.
pub fn find<'a>(map: &'a HeaderMap, name: &str) -> Option<&'a HeaderValue> {
    map.iter()
        .find(|(candidate, _)| AsRef::<str>::as_ref(*candidate) == name)
        .and_then(|(_, values)| values.first())
}

/// On a scheduled send: `true` if its event is durable (the event's stream is
/// created with file storage if the send is the first to it).
pub const DURABLE: &str = "Eventing-Nats-Durable";

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, byte: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0xf)]));
}

fn reserved(name: &str) -> bool {
    let starts = |prefix: &str| {
        name.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    starts("nats-") || starts("eventing-nats-")
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b':' | b'%' | b','))
        && !reserved(name)
}

fn value_ok(value: &str) -> bool {
    let bytes = value.as_bytes();
    if bytes.is_ascii() {
        // Printable ASCII and inner spaces: the common case, without char decoding.
        return bytes.iter().all(|&b| b.is_ascii_graphic() || b == b' ')
            && bytes.first() != Some(&b' ')
            && bytes.last() != Some(&b' ');
    }
    !value.chars().any(|c| c.is_control())
        && value.trim() == value
        && !value.chars().any(|c| c.is_whitespace() && c != ' ')
}

fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 3);
    for (i, &byte) in name.as_bytes().iter().enumerate() {
        // The first byte of a reserved name is escaped, so the wire name is not reserved.
        if !byte.is_ascii_graphic()
            || matches!(byte, b'%' | b':' | b',')
            || (i == 0 && reserved(name))
        {
            push_escaped(&mut out, byte);
        } else {
            out.push(char::from(byte));
        }
    }
    out
}

fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    let mut buf = [0u8; 4];
    for c in value.chars() {
        if c == '%' || c.is_control() || c.is_whitespace() {
            for &byte in c.encode_utf8(&mut buf).as_bytes() {
                push_escaped(&mut out, byte);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn invalid(name: &str, what: &str) -> Error {
    Error::Provider {
        provider: crate::NAME,
        source: format!(
            "header `{}` cannot be sent as a NATS header: {what}",
            name.escape_debug()
        )
        .into(),
    }
}

/// The names this provider and the runtime send most, made without parsing or
/// copying them (`HeaderName::from_str` validates the name and copies it).
fn known_name(name: &str) -> Option<HeaderName> {
    Some(HeaderName::from_static(match name {
        header::MESSAGE_ID => header::MESSAGE_ID,
        header::EVENT => header::EVENT,
        header::TIMESTAMP => header::TIMESTAMP,
        header::CONTENT_TYPE => header::CONTENT_TYPE,
        MSG_ID => MSG_ID,
        ESCAPED => ESCAPED,
        TARGET_QUEUE => TARGET_QUEUE,
        DUE => DUE,
        DURABLE => DURABLE,
        _ => return None,
    }))
}

fn insert(map: &mut HeaderMap, name: &str, value: &str) -> Result<()> {
    let header = match known_name(name) {
        Some(known) => known,
        None => HeaderName::from_str(name).map_err(|_| invalid(name, "invalid name"))?,
    };
    let value = HeaderValue::from_str(value).map_err(|_| invalid(name, "invalid value"))?;
    map.insert(header, value);
    Ok(())
}

/// The NATS headers of `envelope`, plus `extra` (provider headers, sent as they are).
pub fn to_nats(headers: &Headers, extra: &[(&str, &str)]) -> Result<HeaderMap> {
    encode(headers, extra, |_, _| false)
}

/// The NATS headers of an event published to its own subject: as [`to_nats`],
/// without what the receiver knows anyway, which [`to_envelope`] puts back: the
/// `event` header when it names `event` (the subject does), a JSON
/// `content-type` (the default), a `timestamp` of the current second (JetStream
/// stores the time of every message), and with `dedupe` the `message-id` (it
/// travels as `Nats-Msg-Id`). Fewer header bytes are less work for the server,
/// which parses and stores them with every message: in the bench, raw async-nats
/// publishing two headers ran at about 0.75x of itself without them, and with one
/// at about 0.9x.
pub fn event_to_nats(
    headers: &Headers,
    event: &str,
    dedupe: bool,
    extra: &[(&str, &str)],
) -> Result<HeaderMap> {
    encode(headers, extra, |name, value| match name {
        header::EVENT => value == event,
        header::CONTENT_TYPE => value == eventing::codec::JSON,
        header::TIMESTAMP => header::is_current_second(value),
        header::MESSAGE_ID => dedupe,
        _ => false,
    })
}

fn encode(
    headers: &Headers,
    extra: &[(&str, &str)],
    implied: impl Fn(&str, &str) -> bool,
) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    let mut escaped = Vec::new();
    for (name, value) in headers.iter() {
        if implied(name, value) {
            continue;
        }
        if name.is_empty() {
            return Err(invalid(name, "empty name"));
        }
        if name_ok(name) && value_ok(value) {
            insert(&mut map, name, value)?;
        } else {
            let wire = escape_name(name);
            insert(&mut map, &wire, &escape_value(value))?;
            escaped.push(wire);
        }
    }
    if !escaped.is_empty() {
        insert(&mut map, ESCAPED, &escaped.join(","))?;
    }
    for (name, value) in extra {
        insert(&mut map, name, value)?;
    }
    Ok(map)
}

/// The envelope of a NATS message: its headers (escaped ones decoded; this
/// provider's own and `Nats-*` ones left out) and its payload as the body. A
/// malformed escape is kept as it came.
///
/// With `event` (a message on the subject of that event), what
/// [`event_to_nats`] leaves out is put back where missing: `event`, a JSON
/// `content-type`, `message-id` from `Nats-Msg-Id`, and the `timestamp` from
/// `stored`, the time JetStream stored the message (to the second).
pub fn to_envelope(
    headers: Option<&HeaderMap>,
    payload: bytes::Bytes,
    event: Option<&str>,
    stored: Option<SystemTime>,
) -> Envelope {
    let mut out = Headers::with_capacity(headers.map_or(0, HeaderMap::len) + 2);
    if let Some(map) = headers {
        let escaped: Vec<&str> = find(map, ESCAPED)
            .map(|v| v.as_str().split(',').collect())
            .unwrap_or_default();
        for (name, values) in map.iter() {
            let name: &str = name.as_ref();
            if reserved(name) {
                continue;
            }
            let Some(value) = values.last() else { continue };
            let value = value.as_str();
            if escaped.contains(&name) {
                match (
                    crate::names::decode(name, b'%'),
                    crate::names::decode(value, b'%'),
                ) {
                    (Some(name), Some(value)) => out.insert(name, value),
                    _ => out.insert(name, value),
                }
            } else {
                out.insert(name, value);
            }
        }
    }
    if let Some(event) = event {
        if out.get(header::MESSAGE_ID).is_none()
            && let Some(id) = headers.and_then(|map| find(map, MSG_ID))
        {
            out.insert(header::MESSAGE_ID, id.as_str());
        }
        if out.get(header::EVENT).is_none() {
            out.insert(header::EVENT, event);
        }
        if out.get(header::CONTENT_TYPE).is_none() {
            out.insert(header::CONTENT_TYPE, eventing::codec::JSON);
        }
        if let Some(stored) = stored
            && out.get(header::TIMESTAMP).is_none()
        {
            out.insert(header::TIMESTAMP, header::rfc3339_seconds(stored));
        }
    }
    Envelope {
        headers: out,
        body: payload,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use proptest::prelude::*;

    fn round_trip(pairs: &[(String, String)]) -> Vec<(String, String)> {
        let mut headers = Headers::with_capacity(pairs.len());
        for (k, v) in pairs {
            headers.insert(k, v);
        }
        let map = to_nats(&headers, &[(TARGET_QUEUE, "q")]).expect("to nats");
        let envelope = to_envelope(Some(&map), bytes::Bytes::new(), None, None);
        let mut got: Vec<(String, String)> = envelope
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        got.sort();
        got
    }

    #[test]
    fn awkward_headers_arrive_identical() {
        let pairs = vec![
            (
                "x-stamp".to_string(),
                "line1\nline2:colon\\back\rcr".to_string(),
            ),
            ("plain".to_string(), "value with spaces".to_string()),
            ("Nats-Rollup".to_string(), "all".to_string()),
            ("na:me é".to_string(), " padded ".to_string()),
            ("pct".to_string(), "100%".to_string()),
        ];
        let mut want = pairs.clone();
        want.sort();
        assert_eq!(round_trip(&pairs), want);
    }

    #[test]
    fn what_the_subject_implies_is_left_out_and_put_back() {
        let envelope = Envelope::new("Orders", eventing::codec::JSON, bytes::Bytes::new());
        let id = envelope.message_id().to_string();
        for dedupe in [false, true] {
            let extra = [(MSG_ID, id.as_str())];
            let extra: &[(&str, &str)] = if dedupe { &extra } else { &[] };
            let map = event_to_nats(&envelope.headers, "Orders", dedupe, extra).unwrap();
            assert!(map.get(header::EVENT).is_none());
            assert!(map.get(header::CONTENT_TYPE).is_none());
            assert!(map.get(header::TIMESTAMP).is_none(), "the current second");
            assert_eq!(map.get(header::MESSAGE_ID).is_none(), dedupe);
            // JetStream's store time, a moment later, gives the second back.
            let stamp = envelope.headers.get(header::TIMESTAMP).unwrap();
            let stored = humantime::parse_rfc3339(stamp).unwrap() + Duration::from_millis(3);
            let back = to_envelope(
                Some(&map),
                bytes::Bytes::new(),
                Some("Orders"),
                Some(stored),
            );
            let mut want: Vec<_> = envelope.headers.iter().collect();
            let mut got: Vec<_> = back.headers.iter().collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "dedupe {dedupe}");
        }
        // Another event's header, or another content type, is sent.
        let other = Envelope::new("Other", eventing::codec::MSGPACK, bytes::Bytes::new());
        let map = event_to_nats(&other.headers, "Orders", false, &[]).unwrap();
        assert_eq!(map.get(header::EVENT).map(|v| v.as_str()), Some("Other"));
        assert_eq!(
            map.get(header::CONTENT_TYPE).map(|v| v.as_str()),
            Some(eventing::codec::MSGPACK)
        );
        let back = to_envelope(Some(&map), bytes::Bytes::new(), Some("Orders"), None);
        assert_eq!(back.event(), "Other");
    }

    #[test]
    fn a_timestamp_other_than_the_current_second_is_sent() {
        let stored = SystemTime::now();
        for stamp in [
            "2024-05-01T10:00:00Z",
            "2024-05-01T10:00:00.123456Z",
            "2099-01-01T00:00:00Z",
            "yesterday",
        ] {
            let mut envelope = Envelope::new("Orders", eventing::codec::JSON, bytes::Bytes::new());
            envelope.headers.insert(header::TIMESTAMP, stamp);
            let map = event_to_nats(&envelope.headers, "Orders", false, &[]).unwrap();
            assert_eq!(map.get(header::TIMESTAMP).map(|v| v.as_str()), Some(stamp));
            let back = to_envelope(
                Some(&map),
                bytes::Bytes::new(),
                Some("Orders"),
                Some(stored),
            );
            assert_eq!(back.headers.get(header::TIMESTAMP), Some(stamp));
        }
    }

    #[test]
    fn plain_headers_are_sent_unchanged() {
        let mut headers = Headers::with_capacity(1);
        headers.insert("message-id", "abc");
        let map = to_nats(&headers, &[]).unwrap();
        assert_eq!(map.get("message-id").map(|v| v.as_str()), Some("abc"));
        assert!(map.get(ESCAPED).is_none());
    }

    proptest! {
        #[test]
        fn any_header_round_trips(pairs in proptest::collection::btree_map("[^\u{0}]{1,12}", any::<String>(), 0..6)) {
            let pairs: Vec<(String, String)> = pairs.into_iter().collect();
            let mut want = pairs.clone();
            want.sort();
            prop_assert_eq!(round_trip(&pairs), want);
        }
    }
}

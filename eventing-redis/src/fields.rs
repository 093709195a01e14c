//! Envelopes as stream entries, binary-safe.
//!
//! An entry is a list of field/value pairs; Redis keeps both as byte strings, so
//! nothing needs escaping for the server. The body is the field [`BODY`] (its
//! bytes as they are), each header a field of its own with the header's name, so
//! that a plain `XADD stream * body '{"n":1}' content-type application/json`
//! from any client is an envelope, and `XRANGE` shows an eventing event as readable
//! fields. The provider's own field [`TARGET_QUEUE`] marks a message put onto one
//! queue alone (a replay). A header whose name would be mistaken for one of
//! these (`body`, `eventing.queue`) or starts with the escape `\` is stored with
//! one more `\` in front, and loses it on the way back.

use bytes::Bytes;
use eventing::{Envelope, Headers};

/// The field holding the body.
pub const BODY: &str = "body";

/// On a message put onto one queue alone (replay): the queue it is for. The other
/// queues of the event acknowledge and skip it.
pub const TARGET_QUEUE: &str = "eventing.queue";

const ESCAPE: char = '\\';

fn needs_escape(name: &str) -> bool {
    name == BODY || name == TARGET_QUEUE || name.starts_with(ESCAPE)
}

/// The fields of an entry for `envelope` (plus the target queue, if any), in XADD
/// order: the headers first, the body last.
pub fn to_fields(envelope: &Envelope, target: Option<&str>) -> Vec<(Bytes, Bytes)> {
    let mut fields = Vec::with_capacity(envelope.headers.len() + 2);
    for (name, value) in envelope.headers.iter() {
        let name = if needs_escape(name) {
            Bytes::from(format!("{ESCAPE}{name}"))
        } else {
            Bytes::copy_from_slice(name.as_bytes())
        };
        fields.push((name, Bytes::copy_from_slice(value.as_bytes())));
    }
    if let Some(queue) = target {
        fields.push((
            Bytes::from_static(TARGET_QUEUE.as_bytes()),
            Bytes::copy_from_slice(queue.as_bytes()),
        ));
    }
    fields.push((Bytes::from_static(BODY.as_bytes()), envelope.body.clone()));
    fields
}

/// An entry read back.
#[derive(Debug)]
pub struct Entry {
    /// The envelope (headers and body); an entry without [`BODY`] has an empty body.
    pub envelope: Envelope,
    /// The queue it was put onto alone, if any.
    pub target: Option<String>,
    /// Whether the entry had a [`BODY`] field.
    pub has_body: bool,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The envelope of an entry's fields (name, value, name, value, ...). Names and
/// values that are not UTF-8 (headers are text) are decoded lossily; the body is
/// taken as it is. A repeated field keeps its last value.
pub fn from_fields(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Entry {
    let mut headers = Headers::with_capacity(pairs.len());
    let mut body = None;
    let mut target = None;
    for (name, value) in pairs {
        match name.as_slice() {
            b"body" => body = Some(Bytes::from(value)),
            b"eventing.queue" => target = Some(text(&value)),
            _ => {
                let name = text(&name);
                let name = name.strip_prefix(ESCAPE).unwrap_or(&name);
                headers.insert(name, text(&value));
            }
        }
    }
    Entry {
        has_body: body.is_some(),
        envelope: Envelope {
            headers,
            body: body.unwrap_or_default(),
        },
        target,
    }
}

/// A message waiting in a schedule (a sorted set, see the crate docs) as one
/// member: a MessagePack array of byte strings, a unique id first (two waiting
/// copies of one message stay two members), then the entry's fields as
/// [`to_fields`] gives them, name and value alternating. The server's move
/// script decodes it with `cmsgpack.unpack` and passes the fields to `XADD` as
/// they are. Every element is a `str 32` (binary-safe in Lua).
pub fn pack_waiting(id: &str, fields: &[(Bytes, Bytes)]) -> Vec<u8> {
    let count = 1 + 2 * fields.len();
    let size: usize = id.len() + fields.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(5 + 5 * count + size);
    out.push(0xdd); // array 32
    out.extend_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_be_bytes());
    let mut push = |bytes: &[u8]| {
        out.push(0xdb); // str 32
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    push(id.as_bytes());
    for (name, value) in fields {
        push(name);
        push(value);
    }
    out
}

/// Field name/value pairs as read back.
pub type RawFields = Vec<(Vec<u8>, Vec<u8>)>;

/// The inverse of [`pack_waiting`]: the id and the fields; `None` if `member` is
/// not one.
pub fn unpack_waiting(member: &[u8]) -> Option<(String, RawFields)> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        *rest = tail;
        Some(head)
    }
    fn len32(rest: &mut &[u8]) -> Option<usize> {
        let bytes: [u8; 4] = take(rest, 4)?.try_into().ok()?;
        usize::try_from(u32::from_be_bytes(bytes)).ok()
    }
    fn string<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
        if take(rest, 1)? != [0xdb] {
            return None;
        }
        let n = len32(rest)?;
        take(rest, n)
    }
    let mut rest = member;
    if take(&mut rest, 1)? != [0xdd] {
        return None;
    }
    let count = len32(&mut rest)?;
    if count % 2 == 0 {
        return None;
    }
    let id = String::from_utf8_lossy(string(&mut rest)?).into_owned();
    let mut fields = Vec::with_capacity(count / 2);
    for _ in 0..count / 2 {
        let name = string(&mut rest)?.to_vec();
        let value = string(&mut rest)?.to_vec();
        fields.push((name, value));
    }
    rest.is_empty().then_some((id, fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(pairs: &[(String, String)], body: &[u8]) -> (Vec<(String, String)>, Bytes) {
        let mut headers = Headers::with_capacity(pairs.len());
        for (k, v) in pairs {
            headers.insert(k, v);
        }
        let envelope = Envelope {
            headers,
            body: Bytes::copy_from_slice(body),
        };
        let fields = to_fields(&envelope, Some("q::l"));
        let entry = from_fields(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect(),
        );
        assert_eq!(entry.target.as_deref(), Some("q::l"));
        let mut got: Vec<(String, String)> = entry
            .envelope
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        got.sort();
        (got, entry.envelope.body)
    }

    #[test]
    fn awkward_headers_and_binary_bodies_arrive_identical() {
        let pairs = vec![
            ("body".to_string(), "a header called body".to_string()),
            ("eventing.queue".to_string(), "not ours".to_string()),
            ("\\x".to_string(), "escaped".to_string()),
            ("x\r\n".to_string(), "line1\nline2\0".to_string()),
        ];
        let mut want = pairs.clone();
        want.sort();
        let body = [0u8, 255, 10, 13, b'b', b'o', b'd', b'y'];
        let (got, got_body) = round_trip(&pairs, &body);
        assert_eq!(got, want);
        assert_eq!(&got_body[..], &body);
    }

    #[test]
    fn a_foreign_entry_is_an_envelope() {
        let entry = from_fields(vec![
            (b"content-type".to_vec(), b"application/json".to_vec()),
            (b"body".to_vec(), b"{\"n\":1}".to_vec()),
        ]);
        assert!(entry.has_body && entry.target.is_none());
        assert_eq!(&entry.envelope.body[..], b"{\"n\":1}");
        assert_eq!(
            entry.envelope.headers.get("content-type"),
            Some("application/json")
        );
        let odd = from_fields(vec![(b"foo".to_vec(), b"bar".to_vec())]);
        assert!(!odd.has_body && odd.envelope.body.is_empty());
    }

    #[test]
    fn waiting_members_round_trip() {
        let mut headers = Headers::with_capacity(1);
        headers.insert("x-retry-stage", "1");
        let envelope = Envelope {
            headers,
            body: Bytes::from_static(&[0, 1, 255]),
        };
        let fields = to_fields(&envelope, Some("E::L"));
        let member = pack_waiting("id-1", &fields);
        assert_eq!(member[0], 0xdd);
        let (id, back) = unpack_waiting(&member).expect("a member");
        assert_eq!(id, "id-1");
        let entry = from_fields(back);
        assert_eq!(entry.target.as_deref(), Some("E::L"));
        assert_eq!(entry.envelope.headers.get("x-retry-stage"), Some("1"));
        assert_eq!(&entry.envelope.body[..], &[0, 1, 255]);
        assert!(unpack_waiting(b"junk").is_none());
        assert!(unpack_waiting(&member[..member.len() - 1]).is_none());
    }

    proptest! {
        #[test]
        fn any_header_round_trips(
            pairs in proptest::collection::btree_map(".{1,12}", any::<String>(), 0..6),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let pairs: Vec<(String, String)> = pairs.into_iter().collect();
            let mut want = pairs.clone();
            want.sort();
            let (got, got_body) = round_trip(&pairs, &body);
            prop_assert_eq!(got, want);
            prop_assert_eq!(&got_body[..], &body[..]);
        }
    }
}

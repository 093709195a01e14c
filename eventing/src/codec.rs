//! Body encoding. JSON is the format on the wire.

use bytes::Bytes;

use crate::envelope::{Envelope, header};
use crate::error::{Error, Result};
use crate::event::Event;

/// The media type of JSON bodies.
pub const JSON: &str = "application/json";

pub(crate) fn encode<E: Event>(event: &E, address: &str) -> Result<Bytes> {
    let mut body = Vec::with_capacity(128);
    serde_json::to_writer(&mut body, event).map_err(|source| Error::Encode {
        event: address.to_string(),
        source: source.into(),
    })?;
    Ok(Bytes::from(body))
}

pub(crate) fn decode<E: Event>(envelope: &Envelope) -> Result<E> {
    let content_type = envelope.headers.get(header::CONTENT_TYPE).unwrap_or(JSON);
    let decode_error = |reason: String| Error::Decode {
        event: E::descriptor().name().to_string(),
        content_type: content_type.to_string(),
        reason,
    };
    // Accept parameters such as `; charset=utf-8`.
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case(JSON) {
        return Err(decode_error(format!(
            "unsupported content type `{content_type}`; this binary reads {JSON}"
        )));
    }
    serde_json::from_slice(&envelope.body).map_err(|error| decode_error(error.to_string()))
}

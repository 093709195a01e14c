//! Body encodings. JSON is the default; MessagePack and CBOR come with the cargo
//! features `msgpack` and `cbor`. The `content-type` header tells the receiver which
//! one a body uses, so a listener reads whatever its senders chose.

use bytes::Bytes;

use crate::envelope::{Envelope, header};
use crate::error::{Error, Result};
use crate::event::{Event, EventDescriptor};

/// The media type of JSON bodies.
pub const JSON: &str = "application/json";
/// The media type of MessagePack bodies.
pub const MSGPACK: &str = "application/msgpack";
/// The media type of CBOR bodies.
pub const CBOR: &str = "application/cbor";

/// A body encoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// JSON (`application/json`), always available.
    #[default]
    Json,
    /// MessagePack (`application/msgpack`), with the `msgpack` feature.
    MessagePack,
    /// CBOR (`application/cbor`), with the `cbor` feature.
    Cbor,
}

impl Codec {
    /// The codec for a `#[event(codec = "...")]` name: `json`, `msgpack` or `cbor`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Self::Json),
            "msgpack" => Some(Self::MessagePack),
            "cbor" => Some(Self::Cbor),
            _ => None,
        }
    }

    /// The codec of a `content-type` value (parameters such as `; charset` ignored).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        // The usual case: exactly what a sender of this crate writes.
        match content_type {
            JSON => return Some(Self::Json),
            MSGPACK => return Some(Self::MessagePack),
            CBOR => return Some(Self::Cbor),
            _ => {}
        }
        let media = content_type.split(';').next().unwrap_or("").trim();
        [Self::Json, Self::MessagePack, Self::Cbor]
            .into_iter()
            .find(|c| media.eq_ignore_ascii_case(c.content_type()))
    }

    /// Its media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => JSON,
            Self::MessagePack => MSGPACK,
            Self::Cbor => CBOR,
        }
    }

    /// Serializes `event`.
    pub fn encode<E: Event>(self, event: &E, address: &str) -> Result<Bytes> {
        let mut body = Vec::with_capacity(128);
        let result: std::result::Result<(), crate::BoxError> = match self {
            Self::Json => serde_json::to_writer(&mut body, event).map_err(Into::into),
            #[cfg(feature = "msgpack")]
            Self::MessagePack => {
                rmp_serde::encode::write_named(&mut body, event).map_err(Into::into)
            }
            #[cfg(feature = "cbor")]
            Self::Cbor => ciborium::into_writer(event, &mut body).map_err(Into::into),
            #[allow(unreachable_patterns)]
            other => Err(format!(
                "{} needs the `{}` feature of eventing",
                other.content_type(),
                other.feature()
            )
            .into()),
        };
        result.map_err(|source| Error::Encode {
            event: address.to_string(),
            source,
        })?;
        Ok(Bytes::from(body))
    }

    fn feature(self) -> &'static str {
        match self {
            Self::Json => "default",
            Self::MessagePack => "msgpack",
            Self::Cbor => "cbor",
        }
    }

    fn decode<E: Event>(self, body: &[u8]) -> std::result::Result<E, String> {
        match self {
            Self::Json => serde_json::from_slice(body).map_err(|e| e.to_string()),
            #[cfg(feature = "msgpack")]
            Self::MessagePack => rmp_serde::from_slice(body).map_err(|e| e.to_string()),
            #[cfg(feature = "cbor")]
            Self::Cbor => ciborium::from_reader(body).map_err(|e| e.to_string()),
            #[allow(unreachable_patterns)]
            other => Err(format!(
                "this binary cannot read {}: build eventing with the `{}` feature",
                other.content_type(),
                other.feature()
            )),
        }
    }
}

pub(crate) fn decode<E: Event>(envelope: &Envelope) -> Result<E> {
    let content_type = envelope.headers.get(header::CONTENT_TYPE).unwrap_or(JSON);
    let decode_error = |reason: String| Error::Decode {
        event: E::descriptor().name().to_string(),
        content_type: content_type.to_string(),
        reason,
    };
    let codec = Codec::from_content_type(content_type).ok_or_else(|| {
        decode_error(format!(
            "unsupported content type `{content_type}`; known: {JSON}, {MSGPACK}, {CBOR}"
        ))
    })?;
    codec.decode(&envelope.body).map_err(decode_error)
}

impl EventDescriptor {
    /// The codec chosen with `#[event(codec = "...")]`, if any (else the manager's).
    pub fn codec(&self) -> Option<Codec> {
        self.codec.and_then(Codec::from_name)
    }
}

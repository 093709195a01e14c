//! Feeds arbitrary bytes to the STOMP decoder in chunks chosen by the input.
//!
//! Run with `cargo +nightly fuzz run decode` from `eventing-stomp/`.

#![no_main]

use bytes::BytesMut;
use eventing_stomp::codec::{CodecLimits, Incoming, StompCodec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

const LIMITS: CodecLimits = CodecLimits {
    max_frame_bytes: 4096,
    max_header_bytes: 1024,
    max_headers: 16,
};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, the rest is the stream.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut codec = StompCodec::with_limits(LIMITS);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    'feed: for part in stream.chunks(chunk) {
        buf.extend_from_slice(part);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Incoming::Frame(frame))) => frames.push(frame),
                Ok(Some(Incoming::Heartbeat)) => {}
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    // Whatever was decoded respects the limits and encodes again.
    for frame in frames {
        assert!(frame.headers.len() <= LIMITS.max_headers);
        assert!(frame.body.len() < LIMITS.max_frame_bytes);
        let mut out = BytesMut::new();
        let _ = StompCodec::new().encode(frame, &mut out);
    }
});

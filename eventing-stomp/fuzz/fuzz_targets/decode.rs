//! Feeds arbitrary bytes to the STOMP decoder in chunks chosen by the input.
//!
//! Run with `cargo +nightly fuzz run decode` from `eventing-stomp/`.
//!
//! The first byte picks the chunk size (its low 7 bits) and the decoder: the
//! strict one, or (top bit set) the recovering one, which reads past `MESSAGE`
//! frames over the limits.

#![no_main]

use bytes::BytesMut;
use eventing_stomp::codec::{CodecLimits, Incoming, Received, StompCodec};
use eventing_stomp::frame::{Command, Frame};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

const LIMITS: CodecLimits = CodecLimits {
    max_frame_bytes: 4096,
    max_header_bytes: 1024,
    max_headers: 16,
};

/// Header names the recovering decoder may keep past the limits.
const ESSENTIAL: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first & 0x7f).max(1);
    let mut frames = Vec::new();
    let mut buf = BytesMut::new();
    if first & 0x80 == 0 {
        let mut codec = StompCodec::with_limits(LIMITS);
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
    } else {
        let mut codec = StompCodec::with_limits(LIMITS).recovering();
        'feed: for part in stream.chunks(chunk) {
            buf.extend_from_slice(part);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(Received::Frame(frame))) => frames.push(frame),
                    Ok(Some(Received::Rejected(rejected))) => {
                        let frame = rejected.frame;
                        assert_eq!(frame.command, Command::Message);
                        assert!(frame.headers.len() <= LIMITS.max_headers + ESSENTIAL);
                        assert!(frame.body.len() < LIMITS.max_frame_bytes);
                        assert!(!rejected.problems.is_empty());
                        assert_eq!(
                            rejected.body_dropped,
                            rejected.size > LIMITS.max_frame_bytes
                        );
                    }
                    Ok(Some(Received::Heartbeat)) => {}
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
            // Memory stays bounded: at most one frame within the limit plus
            // one read is ever buffered.
            assert!(buf.len() <= LIMITS.max_frame_bytes + chunk);
        }
    }
    // Whatever was decoded respects the limits and encodes again.
    for frame in frames {
        check(&frame);
    }
});

fn check(frame: &Frame) {
    assert!(frame.headers.len() <= LIMITS.max_headers);
    assert!(frame.body.len() < LIMITS.max_frame_bytes);
    let mut out = BytesMut::new();
    let _ = StompCodec::new().encode(frame.clone(), &mut out);
}

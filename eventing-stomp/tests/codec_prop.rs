//! Property tests of the STOMP codec: arbitrary input never panics or breaks
//! the limits, and encoded frames decode back to themselves however the bytes
//! are split. The same for the recovering decoder, which also never buffers
//! more than the limits allow and agrees with the strict one wherever the
//! strict one succeeds.

use bytes::{Bytes, BytesMut};
use eventing_stomp::codec::{
    CONTENT_LENGTH, CodecLimits, Incoming, Outgoing, Received, RecoveringCodec, StompCodec,
};
use eventing_stomp::frame::{Command, Frame};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

const LIMITS: CodecLimits = CodecLimits {
    max_frame_bytes: 512,
    max_header_bytes: 160,
    max_headers: 6,
};

/// Splits `input` at the given points (taken modulo its length, in order).
fn chunks(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut % (input.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for point in points.into_iter().chain([input.len()]) {
        out.push(input[start..point].to_vec());
        start = point;
    }
    out
}

/// Feeds `parts` one after the other, decoding after each; stops at the first
/// error. Returns the items and whether the input ended in an error.
fn feed(codec: &mut StompCodec, parts: &[Vec<u8>]) -> (Vec<Incoming>, bool) {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for part in parts {
        buf.extend_from_slice(part);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(_) => return (items, true),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, false),
            Err(_) => return (items, true),
        }
    }
}

/// Like [`feed`] for a recovering decoder; also returns the largest buffer
/// left after a decode.
fn feed_recovering(codec: &mut RecoveringCodec, parts: &[Vec<u8>]) -> (Vec<Received>, bool, usize) {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut peak = 0;
    for part in parts {
        buf.extend_from_slice(part);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(_) => return (items, true, peak),
            }
        }
        peak = peak.max(buf.len());
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, false, peak),
            Err(_) => return (items, true, peak),
        }
    }
}

/// Bytes shaped like STOMP frames, with the odd mistake, so that decoding gets
/// past the command line often.
fn stompish() -> impl Strategy<Value = Vec<u8>> {
    stompish_with(0)
}

/// [`stompish`] with `MESSAGE` as the command of about `messages` in 10 frames
/// more, and bodies up to twice the frame limit.
fn stompish_with(messages: u32) -> impl Strategy<Value = Vec<u8>> {
    let eol = prop::sample::select(vec![&b"\n"[..], b"\n", b"\n", b"\r\n", b"\r"]);
    let command = prop_oneof![
        8 => prop::sample::select(Command::ALL.to_vec())
            .prop_map(|command| command.as_str().as_bytes().to_vec()),
        messages => Just(b"MESSAGE".to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..14),
    ];
    let words = vec![
        &b"a"[..],
        b"id",
        b"content-length",
        b"x-y",
        "é".as_bytes(),
        b"",
    ];
    let specials = vec![
        &b":"[..],
        b"\\c",
        b"\\n",
        b"\\\\",
        b"\\",
        b"\\t",
        b"\0",
        b"\r",
        b"\xff",
    ];
    let piece = prop_oneof![
        4 => prop::sample::select(words).prop_map(<[u8]>::to_vec),
        2 => (0u32..600).prop_map(|n| n.to_string().into_bytes()),
        2 => prop::sample::select(specials).prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>(), 0..4),
    ];
    let line = (prop::collection::vec(piece, 0..5), eol.clone())
        .prop_map(|(pieces, eol)| [pieces.concat(), eol.to_vec()].concat());
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        (0usize..600).prop_map(|n| vec![b'b'; n]),
        (0usize..1100).prop_map(|n| vec![b'c'; n]),
    ];
    let frame = (
        prop::collection::vec(eol.clone(), 0..3),
        command,
        eol.clone(),
        prop::collection::vec(line, 0..8),
        eol,
        body,
        prop::option::weighted(0.9, Just(0u8)),
    )
        .prop_map(|(beats, command, eol1, lines, eol2, body, nul)| {
            let mut out = beats.concat();
            out.extend_from_slice(&command);
            out.extend_from_slice(eol1);
            out.extend(lines.concat());
            out.extend_from_slice(eol2);
            out.extend(body);
            out.extend(nul);
            out
        });
    prop::collection::vec(frame, 0..4).prop_map(|frames| frames.concat())
}

/// Valid encoded frames with a few bytes overwritten or the end cut off.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(outgoing(), 1..4),
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        any::<usize>(),
    )
        .prop_map(|(items, flips, cut)| {
            let mut wire = BytesMut::new();
            let mut codec = StompCodec::new();
            for item in items {
                // Over-limit frames are fine here: skip whatever does not encode.
                let _ = codec.encode(item, &mut wire);
            }
            let mut wire = wire.to_vec();
            if !wire.is_empty() {
                for (at, byte) in flips {
                    let len = wire.len();
                    wire[at % len] = byte;
                }
            }
            wire.truncate(cut % (wire.len() + 1) + wire.len() / 2);
            wire
        })
}

fn command() -> impl Strategy<Value = Command> {
    prop::sample::select(Command::ALL.to_vec())
}

/// Header text; unescaped frames cannot carry CR or LF (nor `:` in names).
fn text(escaped: bool, name: bool) -> BoxedStrategy<String> {
    let forbidden: &'static [char] = match (escaped, name) {
        (true, _) => &[],
        (false, true) => &['\n', '\r', ':'],
        (false, false) => &['\n', '\r'],
    };
    let special = prop::sample::select(vec!['\n', '\r', ':', '\\', '\0']);
    let ch = prop_oneof![3 => any::<char>(), 1 => special]
        .prop_map(move |ch| if forbidden.contains(&ch) { '_' } else { ch });
    prop::collection::vec(ch, 0..6)
        .prop_map(|chars| chars.into_iter().collect())
        .boxed()
}

fn frame() -> impl Strategy<Value = Frame> {
    command().prop_flat_map(|command| {
        let escaped = command.escapes_headers();
        // The encoder writes content-length itself and drops any other one.
        let header = (text(escaped, true), text(escaped, false)).prop_map(|(name, value)| {
            let name = if name == CONTENT_LENGTH {
                format!("x-{name}")
            } else {
                name
            };
            (name, value)
        });
        (
            prop::collection::vec(header, 0..4),
            prop_oneof![
                4 => prop::collection::vec(any::<u8>(), 0..64),
                1 => prop::collection::vec(any::<u8>(), 0..4096),
            ],
        )
            .prop_map(move |(headers, body)| Frame {
                command,
                headers,
                body: Bytes::from(body),
            })
    })
}

/// An item to send: mostly frames, some heart-beats.
fn outgoing() -> impl Strategy<Value = Outgoing> {
    prop_oneof![4 => frame().prop_map(Outgoing::Frame), 1 => Just(Outgoing::Heartbeat)]
}

/// What decoding an encoded item gives back.
fn expected(item: &Outgoing) -> Incoming {
    match item {
        Outgoing::Heartbeat => Incoming::Heartbeat,
        Outgoing::Frame(frame) => {
            let mut frame = frame.clone();
            if !frame.body.is_empty() {
                frame.push_header(CONTENT_LENGTH, frame.body.len().to_string());
            }
            Incoming::Frame(frame)
        }
    }
}

/// Header names the recovering decoder keeps past the limits (at most one each).
const ESSENTIAL: usize = 8;

/// What the recovering decoder yields respects [`LIMITS`]; a rejected message
/// may keep up to [`ESSENTIAL`] more headers.
fn check_recovered(item: &Received) -> Result<(), TestCaseError> {
    match item {
        Received::Frame(frame) => check_limits(frame),
        Received::Heartbeat => Ok(()),
        Received::Rejected(rejected) => {
            let frame = &rejected.frame;
            prop_assert_eq!(frame.command, Command::Message);
            prop_assert!(frame.headers.len() <= LIMITS.max_headers + ESSENTIAL);
            prop_assert!(frame.body.len() < LIMITS.max_frame_bytes);
            prop_assert_eq!(
                rejected.body_dropped,
                rejected.size > LIMITS.max_frame_bytes
            );
            if rejected.body_dropped {
                prop_assert!(frame.body.is_empty());
            }
            prop_assert!(!rejected.problems.is_empty());
            prop_assert!(!rejected.to_string().is_empty());
            Ok(())
        }
    }
}

/// A decoded frame respects [`LIMITS`]. Unescaped text is never longer than
/// its escaped form, so `name:value\n` bounds each header line from below.
fn check_limits(frame: &Frame) -> Result<(), TestCaseError> {
    prop_assert!(frame.headers.len() <= LIMITS.max_headers);
    let header_bytes: usize = frame
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 2)
        .sum();
    prop_assert!(header_bytes <= LIMITS.max_header_bytes);
    prop_assert!(frame.body.len() < LIMITS.max_frame_bytes);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_input_never_panics_nor_exceeds_limits(
        input in prop_oneof![prop::collection::vec(any::<u8>(), 0..600), stompish(), mutated()],
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut codec = StompCodec::with_limits(LIMITS);
        let (items, _) = feed(&mut codec, &chunks(&input, &cuts));
        for item in items {
            if let Incoming::Frame(frame) = item {
                check_limits(&frame)?;
            }
        }
    }

    #[test]
    fn split_input_decodes_like_whole_input(
        input in prop_oneof![stompish(), mutated()],
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = feed(&mut StompCodec::with_limits(LIMITS), std::slice::from_ref(&input));
        let split = feed(&mut StompCodec::with_limits(LIMITS), &chunks(&input, &cuts));
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn recovering_never_panics_nor_exceeds_limits(
        input in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..600),
            stompish_with(24),
            mutated(),
        ],
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut codec = StompCodec::with_limits(LIMITS).recovering();
        let (items, _, peak) = feed_recovering(&mut codec, &chunks(&input, &cuts));
        for item in &items {
            check_recovered(item)?;
        }
        // What stays buffered is one frame within the limit, or one header
        // line within its limit, plus the last read.
        let longest_part = chunks(&input, &cuts).iter().map(Vec::len).max().unwrap_or(0);
        prop_assert!(peak <= LIMITS.max_frame_bytes + longest_part);
    }

    #[test]
    fn recovering_split_input_decodes_like_whole_input(
        input in prop_oneof![stompish_with(24), mutated()],
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = feed_recovering(
            &mut StompCodec::with_limits(LIMITS).recovering(),
            std::slice::from_ref(&input),
        );
        let split = feed_recovering(
            &mut StompCodec::with_limits(LIMITS).recovering(),
            &chunks(&input, &cuts),
        );
        prop_assert_eq!((whole.0, whole.1), (split.0, split.1));
    }

    #[test]
    fn recovering_agrees_with_strict_where_strict_succeeds(
        input in prop_oneof![stompish_with(24), mutated()],
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let parts = chunks(&input, &cuts);
        let (strict, strict_failed) = feed(&mut StompCodec::with_limits(LIMITS), &parts);
        let (recovered, recovered_failed, _) =
            feed_recovering(&mut StompCodec::with_limits(LIMITS).recovering(), &parts);
        let strict: Vec<Received> = strict.into_iter().map(Received::from).collect();
        if strict_failed {
            // Up to the strict error, the same items.
            prop_assert!(recovered.len() >= strict.len());
            prop_assert_eq!(&recovered[..strict.len()], &strict[..]);
        } else {
            prop_assert!(!recovered_failed);
            prop_assert_eq!(recovered, strict);
        }
    }

    #[test]
    fn oversized_messages_are_skipped_and_the_stream_goes_on(
        body in 0usize..3000,
        with_length in any::<bool>(),
        ack in "[a-z0-9@_-]{1,20}",
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut wire = format!("MESSAGE\nsubscription:0\nack:{ack}\n").into_bytes();
        if with_length {
            wire.extend_from_slice(format!("content-length:{body}\n").as_bytes());
        }
        wire.push(b'\n');
        wire.extend(std::iter::repeat_n(b'p', body));
        wire.push(0);
        let size = wire.len();
        wire.extend_from_slice(b"\nMESSAGE\nsubscription:0\nack:next\n\nok\0");
        let (items, failed, _) = feed_recovering(
            &mut StompCodec::with_limits(LIMITS).recovering(),
            &chunks(&wire, &cuts),
        );
        prop_assert!(!failed);
        prop_assert_eq!(items.len(), 3, "{:?}", items);
        match &items[0] {
            Received::Frame(frame) => {
                prop_assert!(size <= LIMITS.max_frame_bytes);
                prop_assert_eq!(frame.body.len(), body);
            }
            Received::Rejected(rejected) => {
                prop_assert!(size > LIMITS.max_frame_bytes);
                prop_assert_eq!(rejected.size, size);
                prop_assert!(rejected.body_dropped);
                prop_assert_eq!(rejected.frame.get("ack"), Some(ack.as_str()));
            }
            Received::Heartbeat => prop_assert!(false, "not a heart-beat"),
        }
        prop_assert_eq!(&items[1], &Received::Heartbeat);
        match &items[2] {
            Received::Frame(frame) => prop_assert_eq!(frame.get("ack"), Some("next")),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn encoded_frames_decode_to_themselves(
        items in prop::collection::vec(outgoing(), 0..6),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut codec = StompCodec::new();
        let mut wire = BytesMut::new();
        for item in &items {
            codec.encode(item.clone(), &mut wire).expect("valid frames are encodable");
        }
        let (decoded, failed) = feed(&mut codec, &chunks(&wire, &cuts));
        prop_assert!(!failed);
        let expected: Vec<Incoming> = items.iter().map(expected).collect();
        prop_assert_eq!(decoded, expected);
    }
}

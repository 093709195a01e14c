//! Reading past `MESSAGE` frames the client cannot take whole: the
//! [`RecoveringCodec`] and what it reports ([`Received`], [`Rejected`],
//! [`Rejection`]).
//!
//! A recovered `MESSAGE` is read line by line, each header line taken off the
//! buffer once read, and a body over the frame limit is dropped as it arrives,
//! so memory stays bounded by the limits; the decoder in the parent module
//! drives [`Recovery`] through the header section and the body.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use super::{
    CONTENT_LENGTH, CodecLimits, FrameError, Incoming, StompCodec, find, parse_header, slice,
    strip_cr,
};
use crate::frame::{EscapeError, Frame};

/// An item read by a [`RecoveringCodec`]: what [`StompCodec`] reads, or a
/// `MESSAGE` it could not take whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A complete frame.
    Frame(Frame),
    /// A heart-beat.
    Heartbeat,
    /// A `MESSAGE` over the limits or with malformed header lines, read past.
    Rejected(Rejected),
}

impl From<Incoming> for Received {
    fn from(item: Incoming) -> Self {
        match item {
            Incoming::Frame(frame) => Received::Frame(frame),
            Incoming::Heartbeat => Received::Heartbeat,
        }
    }
}

/// A `MESSAGE` frame the decoder could not take whole, as far as it was read.
///
/// ```
/// use bytes::BytesMut;
/// use eventing_stomp::codec::{CodecLimits, Received, StompCodec};
/// use tokio_util::codec::Decoder;
///
/// let limits = CodecLimits { max_frame_bytes: 64, ..CodecLimits::default() };
/// let mut codec = StompCodec::with_limits(limits).recovering();
/// let mut buf = BytesMut::from(&b"MESSAGE\nack:7\ncontent-length:100\n\n"[..]);
/// buf.extend_from_slice(&[b'x'; 100]);
/// buf.extend_from_slice(b"\0");
/// let Some(Received::Rejected(rejected)) = codec.decode(&mut buf)? else { unreachable!() };
/// assert_eq!(rejected.frame.get("ack"), Some("7"));
/// assert!(rejected.body_dropped && rejected.frame.body.is_empty());
/// assert_eq!(
///     rejected.to_string(),
///     "frame of 135 bytes exceeds the client's limit of 64 bytes; body dropped"
/// );
/// # Ok::<(), eventing_stomp::codec::FrameError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejected {
    /// The command (`MESSAGE`), the header lines that could be read within the
    /// limits (plus those that route, settle and identify a message, such as
    /// `subscription`, `ack` and `message-id`, even past the limits), and the
    /// body unless [`body_dropped`](Self::body_dropped).
    pub frame: Frame,
    /// The whole frame's size on the wire, final NUL included.
    pub size: usize,
    /// The frame was over [`CodecLimits::max_frame_bytes`]: its body was
    /// skipped and `frame.body` is empty.
    pub body_dropped: bool,
    /// What was wrong: limits first, then malformed header lines (at most
    /// eight of those are listed).
    pub problems: Vec<Rejection>,
    /// How many header lines are not in `frame`.
    pub headers_dropped: usize,
}

impl std::fmt::Display for Rejected {
    /// The problems, separated by `; `, e.g. `frame of 20971620 bytes exceeds
    /// the client's limit of 16777216 bytes; body dropped`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        let listed = self
            .problems
            .iter()
            .filter(|problem| problem.line().is_some())
            .count();
        if self.headers_dropped > listed {
            if !self.problems.is_empty() {
                f.write_str("; ")?;
            }
            write!(f, "{} header line(s) left out", self.headers_dropped)?;
        }
        Ok(())
    }
}

/// One reason why a `MESSAGE` became [`Received::Rejected`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The frame is over [`CodecLimits::max_frame_bytes`]; its body was dropped.
    #[error("frame of {size} bytes exceeds the client's limit of {limit} bytes; body dropped")]
    FrameTooLarge {
        /// The frame's size on the wire.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The header section is over [`CodecLimits::max_header_bytes`]; header
    /// lines past the limit were left out.
    #[error("header section of {size} bytes exceeds the client's limit of {limit} bytes")]
    HeadersTooLarge {
        /// The header section's size on the wire.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// More header lines than [`CodecLimits::max_headers`]; those past the
    /// limit were left out.
    #[error("{count} header lines exceed the client's limit of {limit}")]
    TooManyHeaders {
        /// How many header lines the frame has.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// One header line is longer than [`CodecLimits::max_header_bytes`]; it was
    /// skipped without being buffered.
    #[error("header line {line} of {size} bytes exceeds the client's limit of {limit} bytes")]
    LineTooLong {
        /// Line number within the frame (the command is line 1).
        line: usize,
        /// The line's length.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A header line without `:`; left out.
    #[error("header line {line} has no ':' separator")]
    MissingColon {
        /// Line number within the frame.
        line: usize,
    },
    /// A header line with an escape sequence STOMP 1.2 does not define; left out.
    #[error("header line {line}: {source}")]
    InvalidEscape {
        /// Line number within the frame.
        line: usize,
        /// The offending sequence.
        source: EscapeError,
    },
    /// A header line that is not UTF-8; left out.
    #[error("header line {line} is not valid UTF-8")]
    InvalidUtf8 {
        /// Line number within the frame.
        line: usize,
    },
}

impl From<Rejection> for FrameError {
    /// The error the same problem is without recovery.
    fn from(rejection: Rejection) -> FrameError {
        match rejection {
            Rejection::FrameTooLarge { size, limit } => FrameError::FrameTooLarge { limit, size },
            Rejection::HeadersTooLarge { size, limit }
            | Rejection::LineTooLong { size, limit, .. } => {
                FrameError::HeadersTooLarge { limit, size }
            }
            Rejection::TooManyHeaders { count, limit } => {
                FrameError::TooManyHeaders { limit, count }
            }
            Rejection::MissingColon { line } => FrameError::MissingColon { line },
            Rejection::InvalidEscape { line, source } => FrameError::InvalidEscape { line, source },
            Rejection::InvalidUtf8 { line } => FrameError::InvalidUtf8 { line },
        }
    }
}

impl Rejection {
    /// The header line the problem is about, if it is about one line.
    pub fn line(&self) -> Option<usize> {
        match self {
            Rejection::LineTooLong { line, .. }
            | Rejection::MissingColon { line }
            | Rejection::InvalidEscape { line, .. }
            | Rejection::InvalidUtf8 { line } => Some(*line),
            Rejection::FrameTooLarge { .. }
            | Rejection::HeadersTooLarge { .. }
            | Rejection::TooManyHeaders { .. } => None,
        }
    }
}

/// A STOMP decoder that reads past `MESSAGE` frames it cannot take whole (see
/// [`StompCodec::recovering`]); frames to send are encoded as by [`StompCodec`].
///
/// ```
/// use bytes::BytesMut;
/// use eventing_stomp::codec::{CodecLimits, Received, StompCodec};
/// use tokio_util::codec::Decoder;
///
/// let limits = CodecLimits { max_frame_bytes: 1024, ..CodecLimits::default() };
/// let mut codec = StompCodec::with_limits(limits).recovering();
/// // Not UTF-8: the line is left out, the rest of the message is kept.
/// let mut buf = BytesMut::from(&b"MESSAGE\nack:1\nx-bad:\xff\n\nbody\0\n"[..]);
/// let Some(Received::Rejected(rejected)) = codec.decode(&mut buf)? else { unreachable!() };
/// assert_eq!(rejected.frame.headers, [("ack".to_string(), "1".to_string())]);
/// assert_eq!(&rejected.frame.body[..], b"body");
/// assert_eq!(rejected.to_string(), "header line 3 is not valid UTF-8");
/// assert_eq!(codec.decode(&mut buf)?, Some(Received::Heartbeat));
/// # Ok::<(), eventing_stomp::codec::FrameError>(())
/// ```
#[derive(Debug)]
pub struct RecoveringCodec {
    codec: StompCodec,
}

impl RecoveringCodec {
    pub(super) fn new(codec: StompCodec) -> RecoveringCodec {
        RecoveringCodec { codec }
    }

    /// The limits in force.
    pub fn limits(&self) -> &CodecLimits {
        self.codec.limits()
    }

    /// Appends `frame` to `dst`, as [`StompCodec::encode_frame`] does.
    pub fn encode_frame(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.codec.encode_frame(frame, dst)
    }
}

impl Decoder for RecoveringCodec {
    type Item = Received;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Received>, FrameError> {
        self.codec.decode_item(src)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Received>, FrameError> {
        self.codec.decode_item_eof(buf)
    }
}

/// Header names a recovered `MESSAGE` keeps even past the limits: those that
/// route, settle and identify it (STOMP's, RabbitMQ's `redelivered` and
/// `amqp-message-id`). At most one of each, so the extra memory is bounded.
const ESSENTIAL: &[&str] = &[
    "subscription",
    "ack",
    "message-id",
    "destination",
    "redelivered",
    CONTENT_LENGTH,
    "content-type",
    "amqp-message-id",
];

/// How many problems with single header lines a [`Rejected`] lists.
const MAX_LINE_PROBLEMS: usize = 8;

/// The progress of a `MESSAGE` read with recovery.
#[derive(Debug, Default)]
pub(super) struct Recovery {
    /// Bytes of the frame already taken off the buffer.
    pub(super) consumed: usize,
    /// Header lines read (the command is line 1, so line numbers are one more).
    lines: usize,
    /// Wire bytes of the command line, the kept header lines and the blank line:
    /// header lines are kept while this stays within the header section limit.
    kept_bytes: usize,
    /// Header lines left out.
    dropped: usize,
    /// The first problems with single header lines.
    problems: Vec<Rejection>,
    /// The length so far of a header line over the limit being skipped.
    skipping: Option<usize>,
    /// The size of the header section, once read.
    head_size: usize,
}

impl Recovery {
    /// Starts reading a `MESSAGE` with recovery: takes its command line
    /// (`command_line` bytes, LF included) off the buffer.
    pub(super) fn start(src: &mut BytesMut, command_line: usize) -> Recovery {
        let mut recovery = Recovery {
            // The command line and the blank line that ends the headers.
            kept_bytes: command_line + 1,
            ..Recovery::default()
        };
        recovery.take(src, command_line);
        recovery
    }

    /// Takes `n` bytes of the frame off the buffer.
    pub(super) fn take(&mut self, src: &mut BytesMut, n: usize) {
        src.advance(n);
        self.consumed += n;
    }

    /// Leaves a header line out, noting why.
    fn drop_line(&mut self, problem: Option<Rejection>) {
        self.dropped += 1;
        if let Some(problem) = problem {
            if self.problems.len() < MAX_LINE_PROBLEMS {
                self.problems.push(problem);
            }
        }
    }

    /// With the current line (from the start of `src`, no LF yet) over the
    /// limit, starts skipping it: drops what is buffered. Returns whether it did.
    pub(super) fn start_skipping(&mut self, src: &mut BytesMut, limits: &CodecLimits) -> bool {
        if src.len() <= limits.max_header_bytes {
            return false;
        }
        let len = src.len();
        self.take(src, len);
        self.skipping = Some(len);
        true
    }

    /// Skips the rest of a line over the limit, if one is being skipped.
    /// Returns false while its end has not arrived.
    pub(super) fn skip_long_line(&mut self, src: &mut BytesMut, limits: &CodecLimits) -> bool {
        let Some(so_far) = self.skipping else {
            return true;
        };
        let Some(lf) = find(src, 0, b'\n') else {
            let len = src.len();
            self.take(src, len);
            self.skipping = Some(so_far + len);
            return false;
        };
        self.take(src, lf + 1);
        self.skipping = None;
        self.lines += 1;
        let line = self.lines + 1;
        self.drop_line(Some(Rejection::LineTooLong {
            line,
            size: so_far + lf,
            limit: limits.max_header_bytes,
        }));
        true
    }

    /// Reads the header line that ends at `lf` (the line starts the buffer) and
    /// takes it off the buffer. Returns true for the blank line that ends the
    /// header section.
    pub(super) fn read_line(
        &mut self,
        src: &mut BytesMut,
        lf: usize,
        escaped: bool,
        headers: &mut Vec<(String, String)>,
        limits: &CodecLimits,
    ) -> bool {
        let line = strip_cr(slice(src, 0, lf));
        if line.is_empty() {
            self.take(src, lf + 1);
            self.head_size = self.consumed;
            return true;
        }
        self.lines += 1;
        let line_no = self.lines + 1;
        if lf > limits.max_header_bytes {
            // Arrived whole in one read: the same verdict as when it is skipped.
            self.drop_line(Some(Rejection::LineTooLong {
                line: line_no,
                size: lf,
                limit: limits.max_header_bytes,
            }));
        } else {
            match parse_header(line, escaped) {
                Err(error) => self.drop_line(Some(error.rejection(line_no))),
                Ok((name, value)) => {
                    let cost = lf + 1;
                    if headers.len() < limits.max_headers
                        && self.kept_bytes + cost <= limits.max_header_bytes
                    {
                        self.kept_bytes += cost;
                        headers.push((name, value));
                    } else if ESSENTIAL.contains(&name.as_str())
                        && !headers.iter().any(|(kept, _)| *kept == name)
                    {
                        headers.push((name, value));
                    } else {
                        self.drop_line(None);
                    }
                }
            }
        }
        self.take(src, lf + 1);
        false
    }

    /// The item for a finished frame: `tail` bytes of it were still buffered.
    pub(super) fn finish(
        self,
        frame: Frame,
        tail: usize,
        body_dropped: bool,
        limits: &CodecLimits,
    ) -> Received {
        let size = self.consumed + tail;
        let mut problems = Vec::new();
        if body_dropped {
            problems.push(Rejection::FrameTooLarge {
                size,
                limit: limits.max_frame_bytes,
            });
        }
        if self.head_size > limits.max_header_bytes {
            problems.push(Rejection::HeadersTooLarge {
                size: self.head_size,
                limit: limits.max_header_bytes,
            });
        }
        if self.lines > limits.max_headers {
            problems.push(Rejection::TooManyHeaders {
                count: self.lines,
                limit: limits.max_headers,
            });
        }
        problems.extend(self.problems);
        if problems.is_empty() && self.dropped == 0 {
            return Received::Frame(frame);
        }
        Received::Rejected(Rejected {
            frame,
            size,
            body_dropped,
            problems,
            headers_dropped: self.dropped,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;
    use crate::codec::Incoming;
    use crate::frame::Command;

    fn encode(frame: &Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        StompCodec::new()
            .encode_frame(frame, &mut buf)
            .expect("encodable frame");
        buf
    }

    fn decode_all_with(mut codec: StompCodec, input: &[u8]) -> Result<Vec<Incoming>, FrameError> {
        let mut buf = BytesMut::from(input);
        let mut items = Vec::new();
        while let Some(item) = codec.decode_eof(&mut buf)? {
            items.push(item);
        }
        Ok(items)
    }

    fn one_frame(input: &[u8]) -> Frame {
        match decode_all_with(StompCodec::new(), input)
            .expect("valid input")
            .as_slice()
        {
            [Incoming::Frame(frame)] => frame.clone(),
            other => panic!("expected one frame, got {other:?}"),
        }
    }

    fn recovering(limits: CodecLimits) -> RecoveringCodec {
        StompCodec::with_limits(limits).recovering()
    }

    fn recover_limits() -> CodecLimits {
        CodecLimits {
            max_frame_bytes: 1024,
            max_header_bytes: 256,
            max_headers: 4,
        }
    }

    /// Feeds `parts` one after the other to a recovering decoder, decoding after
    /// each; returns the items, and the largest buffer seen after a decode.
    fn feed_recovering(
        codec: &mut RecoveringCodec,
        parts: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<(Vec<Received>, usize), FrameError> {
        let mut buf = BytesMut::new();
        let mut items = Vec::new();
        let mut peak = 0;
        for part in parts {
            buf.extend_from_slice(&part);
            while let Some(item) = codec.decode(&mut buf)? {
                items.push(item);
            }
            peak = peak.max(buf.len());
        }
        while let Some(item) = codec.decode_eof(&mut buf)? {
            items.push(item);
        }
        Ok((items, peak))
    }

    fn rejected(item: &Received) -> &Rejected {
        match item {
            Received::Rejected(rejected) => rejected,
            other => panic!("expected a rejected message, got {other:?}"),
        }
    }

    const NEXT: &[u8] = b"MESSAGE\nsubscription:0\nack:2\ncontent-length:2\n\nok\0";

    fn next_frame(item: &Received) {
        match item {
            Received::Frame(frame) => {
                assert_eq!(frame.get("ack"), Some("2"));
                assert_eq!(&frame.body[..], b"ok");
            }
            other => panic!("expected the next message, got {other:?}"),
        }
    }

    #[test]
    fn oversized_content_length_body_is_skipped_in_chunks() {
        let head = b"MESSAGE\nsubscription:0\nack:1\nmessage-id:m1\ncontent-length:10485760\n\n";
        let chunk = vec![b'x'; 4096];
        let mut parts = vec![head.to_vec()];
        parts.extend(std::iter::repeat_n(chunk, 10 * 256));
        parts.push(vec![0]);
        parts.push(NEXT.to_vec());
        let mut codec = recovering(recover_limits());
        let (items, peak) = feed_recovering(&mut codec, parts).expect("recovered");
        assert_eq!(items.len(), 2, "{items:?}");
        let rejected = rejected(&items[0]);
        let size = head.len() + 10 * 1024 * 1024 + 1;
        assert_eq!(rejected.size, size);
        assert!(rejected.body_dropped);
        assert!(rejected.frame.body.is_empty());
        assert_eq!(rejected.frame.command, Command::Message);
        assert_eq!(rejected.frame.get("ack"), Some("1"));
        assert_eq!(rejected.frame.get("message-id"), Some("m1"));
        assert_eq!(
            rejected.problems,
            [Rejection::FrameTooLarge { size, limit: 1024 }]
        );
        assert_eq!(rejected.headers_dropped, 0);
        assert_eq!(
            rejected.to_string(),
            format!("frame of {size} bytes exceeds the client's limit of 1024 bytes; body dropped")
        );
        next_frame(&items[1]);
        // Nothing of the body stayed buffered: every chunk was dropped as it came.
        assert!(peak <= 4096, "peak buffer {peak}");
    }

    #[test]
    fn oversized_body_without_content_length_is_skipped_up_to_the_nul() {
        let head = b"MESSAGE\nsubscription:0\nack:1\n\n";
        let mut parts = vec![head.to_vec()];
        parts.extend(std::iter::repeat_n(vec![b'y'; 1000], 3000));
        // The NUL arrives with the next frame in one read.
        parts.push([&b"tail\0"[..], NEXT].concat());
        let mut codec = recovering(recover_limits());
        let (items, peak) = feed_recovering(&mut codec, parts).expect("recovered");
        assert_eq!(items.len(), 2, "{items:?}");
        let rejected = rejected(&items[0]);
        let size = head.len() + 3000 * 1000 + 5;
        assert_eq!(rejected.size, size);
        assert!(rejected.body_dropped);
        assert_eq!(rejected.frame.get("ack"), Some("1"));
        assert_eq!(
            rejected.problems,
            [Rejection::FrameTooLarge { size, limit: 1024 }]
        );
        next_frame(&items[1]);
        assert!(peak <= 1024 + 1000, "peak buffer {peak}");
    }

    #[test]
    fn oversized_body_arriving_whole_is_dropped() {
        for content_length in [true, false] {
            let mut wire = b"MESSAGE\nack:1\n".to_vec();
            if content_length {
                wire.extend_from_slice(b"content-length:5000\n");
            }
            wire.push(b'\n');
            wire.extend_from_slice(&[b'z'; 5000]);
            wire.push(0);
            let size = wire.len();
            wire.extend_from_slice(NEXT);
            let mut codec = recovering(recover_limits());
            let (items, _) = feed_recovering(&mut codec, [wire]).expect("recovered");
            assert_eq!(items.len(), 2, "{items:?}");
            assert_eq!(rejected(&items[0]).size, size);
            assert!(rejected(&items[0]).body_dropped);
            next_frame(&items[1]);
        }
    }

    #[test]
    fn body_at_the_frame_limit_is_kept() {
        let head = b"MESSAGE\nack:1\n\n";
        let mut wire = head.to_vec();
        wire.extend_from_slice(&vec![b'b'; 1024 - head.len() - 1]);
        wire.push(0);
        assert_eq!(wire.len(), 1024);
        let mut codec = recovering(recover_limits());
        let (items, _) = feed_recovering(&mut codec, [wire.clone()]).expect("fits");
        assert_eq!(items, [Received::Frame(one_frame(&wire))]);
    }

    #[test]
    fn a_header_line_over_the_limit_is_skipped_without_buffering() {
        // Default limits: 64 KiB of headers. A 1 MiB line arrives in 1 KiB reads.
        let mut parts = vec![b"MESSAGE\nsubscription:0\nack:1\nx-long:".to_vec()];
        parts.extend(std::iter::repeat_n(vec![b'l'; 1024], 1024));
        parts.push(b"\nx-after:kept\ncontent-length:4\n\nbody\0".to_vec());
        parts.push(NEXT.to_vec());
        let mut codec = StompCodec::new().recovering();
        let (items, peak) = feed_recovering(&mut codec, parts).expect("recovered");
        assert_eq!(items.len(), 2, "{items:?}");
        let rejected = rejected(&items[0]);
        assert!(!rejected.body_dropped);
        assert_eq!(&rejected.frame.body[..], b"body");
        assert_eq!(rejected.frame.get("ack"), Some("1"));
        assert_eq!(rejected.frame.get("x-after"), Some("kept"));
        assert_eq!(rejected.frame.get("x-long"), None);
        assert_eq!(rejected.headers_dropped, 1);
        let head_size = rejected.size - 5;
        assert_eq!(
            rejected.problems,
            [
                Rejection::HeadersTooLarge {
                    size: head_size,
                    limit: 64 * 1024
                },
                Rejection::LineTooLong {
                    line: 4,
                    size: 7 + 1024 * 1024,
                    limit: 64 * 1024
                }
            ]
        );
        next_frame(&items[1]);
        assert!(peak <= 64 * 1024 + 1024, "peak buffer {peak}");
    }

    #[test]
    fn headers_past_the_limits_are_left_out_but_essential_ones_kept() {
        let mut wire = b"MESSAGE\n".to_vec();
        for i in 0..10 {
            wire.extend_from_slice(format!("x-h{i}:v\n").as_bytes());
        }
        wire.extend_from_slice(b"subscription:0\nack:9\nx-late:gone\ncontent-length:3\n\nabc\0");
        let mut codec = recovering(recover_limits());
        let (items, _) = feed_recovering(&mut codec, [wire]).expect("recovered");
        let rejected = rejected(&items[0]);
        let names: Vec<&str> = rejected
            .frame
            .headers
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "x-h0",
                "x-h1",
                "x-h2",
                "x-h3",
                "subscription",
                "ack",
                CONTENT_LENGTH
            ]
        );
        assert_eq!(&rejected.frame.body[..], b"abc");
        assert_eq!(rejected.headers_dropped, 7);
        assert_eq!(
            rejected.problems,
            [Rejection::TooManyHeaders {
                count: 14,
                limit: 4
            }]
        );
        assert_eq!(
            rejected.to_string(),
            "14 header lines exceed the client's limit of 4; 7 header line(s) left out"
        );
    }

    #[test]
    fn malformed_header_lines_are_left_out_and_listed() {
        let wire = b"MESSAGE\nack:1\nx-bad:\xff\xfe\nx-tab:a\\tb\nnocolon\nx-ok:\\c\n\nbody\0";
        let mut codec = recovering(CodecLimits {
            max_headers: 5,
            ..recover_limits()
        });
        let (items, _) =
            feed_recovering(&mut codec, [wire.to_vec(), NEXT.to_vec()]).expect("recovered");
        let rejected = rejected(&items[0]);
        assert_eq!(
            rejected.frame.headers,
            [
                ("ack".to_string(), "1".to_string()),
                ("x-ok".to_string(), ":".to_string())
            ]
        );
        assert_eq!(&rejected.frame.body[..], b"body");
        assert!(!rejected.body_dropped);
        assert_eq!(rejected.headers_dropped, 3);
        assert_eq!(
            rejected.to_string(),
            "header line 3 is not valid UTF-8; \
             header line 4: undefined escape sequence `\\t` at byte 1; \
             header line 5 has no ':' separator"
        );
        next_frame(&items[1]);
    }

    #[test]
    fn recovering_decodes_split_input_like_whole_input() {
        let mut wire = b"MESSAGE\nack:1\nx-bad:\xff\ncontent-length:2000\n\n".to_vec();
        wire.extend_from_slice(&[b'q'; 2000]);
        wire.push(0);
        wire.extend_from_slice(b"\n\r\nMESSAGE\nack:2\n");
        wire.extend_from_slice(&[b'h'; 300]);
        wire.extend_from_slice(b":v\n\n");
        wire.extend_from_slice(&[b'r'; 1500]);
        wire.push(0);
        wire.extend_from_slice(NEXT);
        wire.extend_from_slice(b"RECEIPT\nreceipt-id:7\n\n\0");
        let whole = feed_recovering(&mut recovering(recover_limits()), [wire.clone()])
            .expect("recovered")
            .0;
        assert_eq!(whole.len(), 6, "{whole:?}");
        for size in [1, 2, 3, 7, 64, 333] {
            let parts = wire.chunks(size).map(<[u8]>::to_vec);
            let split = feed_recovering(&mut recovering(recover_limits()), parts)
                .expect("recovered")
                .0;
            assert_eq!(split, whole, "chunks of {size}");
        }
    }

    #[test]
    fn recovering_agrees_with_strict_decoding_on_valid_frames() {
        let frames = [
            Frame::new(Command::Message)
                .header("subscription", "0")
                .header("ack", "a:b\nc")
                .with_body(vec![0u8; 900]),
            Frame::new(Command::Receipt).header("receipt-id", "1"),
            Frame::new(Command::Message).header("ack", "x"),
        ];
        let mut wire = BytesMut::new();
        for frame in &frames {
            wire.extend_from_slice(&encode(frame));
            wire.put_u8(b'\n');
        }
        let strict = decode_all_with(StompCodec::with_limits(recover_limits()), &wire)
            .expect("valid")
            .into_iter()
            .map(Received::from)
            .collect::<Vec<_>>();
        let (recovered, _) =
            feed_recovering(&mut recovering(recover_limits()), [wire.to_vec()]).expect("valid");
        assert_eq!(recovered, strict);
        assert_eq!(recovered.len(), 6);
    }

    #[test]
    fn recovery_is_for_message_frames_only() {
        let mut wire = b"ERROR\ncontent-length:5000\n\n".to_vec();
        wire.extend_from_slice(&[b'e'; 5000]);
        wire.push(0);
        let err = feed_recovering(&mut recovering(recover_limits()), [wire]).expect_err("strict");
        assert!(matches!(err, FrameError::FrameTooLarge { .. }), "{err:?}");
        let err = feed_recovering(
            &mut recovering(recover_limits()),
            [b"RECEIPT\nreceipt-id:\xff\n\n\0".to_vec()],
        )
        .expect_err("strict");
        assert!(
            matches!(err, FrameError::InvalidUtf8 { line: 2 }),
            "{err:?}"
        );
    }

    #[test]
    fn recovery_still_fails_when_frame_boundaries_are_lost() {
        for (input, what) in [
            (&b"MESSAGE\ncontent-length:abc\n\nx\0"[..], "content-length"),
            (b"MESSAGE\ncontent-length:2000\n\n", "missing NUL"),
        ] {
            let mut input = input.to_vec();
            if what == "missing NUL" {
                input.extend_from_slice(&[b'x'; 2001]);
            }
            let err = feed_recovering(&mut recovering(recover_limits()), [input]).expect_err(what);
            assert!(
                matches!(
                    err,
                    FrameError::InvalidContentLength { .. }
                        | FrameError::MissingNul {
                            content_length: 2000,
                            found: b'x'
                        }
                ),
                "{what}: {err:?}"
            );
        }
    }

    #[test]
    fn eof_while_skipping_is_an_error_counting_what_was_read() {
        let mut input = b"MESSAGE\nack:1\n\n".to_vec();
        input.extend_from_slice(&[b'x'; 3000]);
        let mut codec = recovering(recover_limits());
        let mut buf = BytesMut::from(&input[..]);
        assert_eq!(codec.decode(&mut buf).expect("partial"), None);
        assert!(buf.is_empty(), "the body was dropped as it came");
        let err = codec.decode_eof(&mut buf).expect_err("truncated");
        assert!(
            matches!(err, FrameError::UnexpectedEof { buffered } if buffered == input.len()),
            "{err:?}"
        );
    }

    #[test]
    fn rejections_map_to_the_strict_errors() {
        let line = Rejection::LineTooLong {
            line: 3,
            size: 10,
            limit: 5,
        };
        assert_eq!(line.line(), Some(3));
        assert!(matches!(
            FrameError::from(line),
            FrameError::HeadersTooLarge { limit: 5, size: 10 }
        ));
        let frame = Rejection::FrameTooLarge { size: 9, limit: 8 };
        assert_eq!(frame.line(), None);
        assert!(matches!(
            FrameError::from(frame),
            FrameError::FrameTooLarge { limit: 8, size: 9 }
        ));
    }
}

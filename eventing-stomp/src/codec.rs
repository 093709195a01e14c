//! A `tokio_util` codec for STOMP 1.2 frames.
//!
//! [`StompCodec`] decodes bytes into [`Incoming`] items (frames and heart-beats)
//! and encodes [`Frame`]s and [`Outgoing`] items. Both directions enforce the
//! same [`CodecLimits`], so whatever the encoder accepts, a decoder with the same
//! limits accepts too.
//!
//! Decoding follows STOMP 1.2:
//!
//! - lines end with LF or CRLF; a bare end of line between frames is a
//!   heart-beat ([`Incoming::Heartbeat`]);
//! - header names and values are unescaped (`\\`, `\n`, `\r`, `\c`; anything
//!   else after a backslash is an error), except in `CONNECT` and `CONNECTED`
//!   frames; repeated headers are all kept, and the first occurrence wins;
//! - with a `content-length` header the body is exactly that many bytes (NUL
//!   bytes included) and must be followed by a NUL; without one the body runs
//!   to the first NUL.
//!
//! The decoder is incremental: it returns `Ok(None)` until a whole item is
//! buffered and remembers how far it has looked, so a large body is scanned
//! once. It never reserves more than [`CodecLimits::max_frame_bytes`] for a
//! frame. Any error leaves the stream in an unknown position: close the
//! connection (a STOMP server sends `ERROR` and closes).
//!
//! A client cannot close the connection over a `MESSAGE` it cannot read: the
//! broker would deliver the same message again, forever. A [`RecoveringCodec`]
//! ([`StompCodec::recovering`]) reads past such a message instead, as long as
//! its frame boundaries are sound (a known command, a well-formed
//! `content-length`, the final NUL): header lines that are malformed or past
//! the limits are left out (the ones that route, settle and identify a message
//! are kept even past the limits), a body over [`CodecLimits::max_frame_bytes`]
//! is skipped as it arrives, never buffered, and it yields a
//! [`Received::Rejected`] that says what was wrong, so the caller can
//! dead-letter and acknowledge the message.

use std::borrow::Cow;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{self, Command, EscapeError, Frame};

mod recovery;

use recovery::Recovery;
pub use recovery::{Received, RecoveringCodec, Rejected, Rejection};

/// The header that gives the length of the body in bytes.
pub const CONTENT_LENGTH: &str = "content-length";

/// How many bytes of offending input an error message quotes at most.
const SNIPPET_LEN: usize = 32;

/// Size limits applied by [`StompCodec`] in both directions.
///
/// ```
/// use eventing_stomp::codec::{CodecLimits, StompCodec};
///
/// let codec = StompCodec::with_limits(CodecLimits {
///     max_frame_bytes: 1024 * 1024,
///     ..CodecLimits::default()
/// });
/// assert_eq!(codec.limits().max_headers, 128);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecLimits {
    /// Largest frame as it is on the wire: command line, headers, blank line,
    /// body and the final NUL. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// Largest header section as it is on the wire (escaped): command line,
    /// header lines and the blank line that ends them. Default 64 KiB.
    pub max_header_bytes: usize,
    /// Most header lines in a frame, `content-length` included. Default 128.
    pub max_headers: usize,
}

impl CodecLimits {
    /// The default limits: 16 MiB frames, 64 KiB header sections, 128 headers.
    pub const DEFAULT: CodecLimits = CodecLimits {
        max_frame_bytes: 16 * 1024 * 1024,
        max_header_bytes: 64 * 1024,
        max_headers: 128,
    };
}

impl Default for CodecLimits {
    fn default() -> Self {
        CodecLimits::DEFAULT
    }
}

/// An item read from a STOMP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A complete frame.
    Frame(Frame),
    /// A bare end of line (LF or CRLF) between frames: a heart-beat.
    Heartbeat,
}

impl From<Frame> for Incoming {
    fn from(frame: Frame) -> Self {
        Incoming::Frame(frame)
    }
}

/// An item to write to a STOMP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A frame.
    Frame(Frame),
    /// A heart-beat, written as a single LF.
    Heartbeat,
}

impl From<Frame> for Outgoing {
    fn from(frame: Frame) -> Self {
        Outgoing::Frame(frame)
    }
}

/// Why a frame could not be decoded or encoded.
///
/// Line numbers count from 1 within the frame: the command is line 1, the first
/// header line 2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Reading or writing the connection failed.
    #[error("STOMP connection I/O failed")]
    Io(#[from] std::io::Error),
    /// The command line is not one of the STOMP 1.2 commands.
    #[error("unknown STOMP command {command:?}")]
    UnknownCommand {
        /// The start of the command line, lossily decoded.
        command: String,
    },
    /// A header line has no `:` between name and value.
    #[error("header line {line} has no ':' separator")]
    MissingColon {
        /// Line number within the frame.
        line: usize,
    },
    /// A header uses an escape sequence that STOMP 1.2 does not define.
    #[error("header line {line}: {source}")]
    InvalidEscape {
        /// Line number within the frame.
        line: usize,
        /// The offending sequence.
        source: EscapeError,
    },
    /// A header name or value is not UTF-8.
    #[error("header line {line} is not valid UTF-8")]
    InvalidUtf8 {
        /// Line number within the frame.
        line: usize,
    },
    /// The `content-length` header is not a decimal byte count.
    #[error("invalid content-length {value:?}")]
    InvalidContentLength {
        /// The start of the header value.
        value: String,
    },
    /// The byte after a `content-length` body is not the NUL that ends frames.
    #[error(
        "expected NUL after a body of content-length {content_length}, found byte {found:#04x}"
    )]
    MissingNul {
        /// The declared body length.
        content_length: usize,
        /// The byte found instead of NUL.
        found: u8,
    },
    /// The frame is larger than [`CodecLimits::max_frame_bytes`].
    #[error("frame of {size} bytes or more exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The limit.
        limit: usize,
        /// The size of the frame, or a lower bound when it is still incomplete.
        size: usize,
    },
    /// The header section is larger than [`CodecLimits::max_header_bytes`].
    #[error("header section of {size} bytes or more exceeds the limit of {limit} bytes")]
    HeadersTooLarge {
        /// The limit.
        limit: usize,
        /// The size of the header section, or a lower bound when incomplete.
        size: usize,
    },
    /// The frame has more header lines than [`CodecLimits::max_headers`].
    #[error("{count} headers or more exceed the limit of {limit}")]
    TooManyHeaders {
        /// The limit.
        limit: usize,
        /// How many headers were seen (a lower bound when decoding).
        count: usize,
    },
    /// A `CONNECT` or `CONNECTED` header cannot be written without escaping:
    /// its name contains CR, LF or `:`, or its value CR or LF.
    #[error("header {name:?} cannot be written unescaped in a {command} frame")]
    UnencodableHeader {
        /// The frame's command.
        command: Command,
        /// The start of the header name.
        name: String,
    },
    /// The connection ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    UnexpectedEof {
        /// How many bytes of the unfinished frame were buffered.
        buffered: usize,
    },
}

/// The STOMP 1.2 codec, for [`tokio_util::codec::Framed`] and friends.
///
/// ```
/// use bytes::BytesMut;
/// use eventing_stomp::codec::{Incoming, Outgoing, StompCodec};
/// use eventing_stomp::frame::{Command, Frame};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = StompCodec::new();
/// let mut buf = BytesMut::new();
/// codec.encode(Outgoing::Heartbeat, &mut buf)?;
/// codec.encode(Frame::new(Command::Disconnect).header("receipt", "77"), &mut buf)?;
/// assert_eq!(&buf[..], b"\nDISCONNECT\nreceipt:77\n\n\0");
///
/// assert_eq!(codec.decode(&mut buf)?, Some(Incoming::Heartbeat));
/// let Some(Incoming::Frame(frame)) = codec.decode(&mut buf)? else { unreachable!() };
/// assert_eq!(frame.get("receipt"), Some("77"));
/// assert_eq!(codec.decode(&mut buf)?, None);
/// # Ok::<(), eventing_stomp::codec::FrameError>(())
/// ```
#[derive(Debug, Default)]
pub struct StompCodec {
    limits: CodecLimits,
    state: State,
    recover: bool,
    /// Write `content-length` only for bodies that hold a NUL byte.
    length_when_needed: bool,
}

impl StompCodec {
    /// A codec with the default [`CodecLimits`].
    pub fn new() -> StompCodec {
        StompCodec::default()
    }

    /// A codec with the given limits.
    pub fn with_limits(limits: CodecLimits) -> StompCodec {
        StompCodec {
            limits,
            state: State::default(),
            recover: false,
            length_when_needed: false,
        }
    }

    /// This codec writing `content-length` only when the body holds a NUL byte:
    /// STOMP 1.2 ends a body without one at the first NUL, so the header is needed
    /// only then. For RabbitMQ, whose STOMP plugin copies every `SEND` header it
    /// does not map into the AMQP headers table, where the broker stores it and
    /// every AMQP consumer reads it. Not for ActiveMQ, which makes a `SEND`
    /// without `content-length` a JMS `TextMessage` (a body that is not UTF-8
    /// would not survive it).
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use eventing_stomp::codec::StompCodec;
    /// use eventing_stomp::frame::{Command, Frame};
    ///
    /// let codec = StompCodec::new().length_when_needed();
    /// let mut buf = BytesMut::new();
    /// let text = Frame::new(Command::Send).header("destination", "/queue/a").with_body("hi");
    /// codec.encode_frame(&text, &mut buf)?;
    /// assert_eq!(&buf[..], b"SEND\ndestination:/queue/a\n\nhi\0");
    /// buf.clear();
    /// let binary = Frame::new(Command::Send).header("destination", "/queue/a").with_body(&b"a\0b"[..]);
    /// codec.encode_frame(&binary, &mut buf)?;
    /// assert_eq!(&buf[..], b"SEND\ndestination:/queue/a\ncontent-length:3\n\na\0b\0");
    /// # Ok::<(), eventing_stomp::codec::FrameError>(())
    /// ```
    pub fn length_when_needed(mut self) -> StompCodec {
        self.length_when_needed = true;
        self
    }

    /// This codec as a decoder that reads past a `MESSAGE` it cannot take
    /// whole and yields it as [`Received::Rejected`], instead of failing.
    ///
    /// A `MESSAGE` over [`CodecLimits::max_frame_bytes`] has its body skipped
    /// as it arrives (by its `content-length`, or up to its NUL) without
    /// buffering it; a header line longer than [`CodecLimits::max_header_bytes`]
    /// is skipped the same way; malformed header lines (no `:`, an undefined
    /// escape, not UTF-8) and lines past [`CodecLimits::max_headers`] or the
    /// header section limit are left out, except those that route, settle and
    /// identify the message. Memory stays bounded by the limits. Errors that
    /// lose the frame boundaries (an unknown command, an invalid
    /// `content-length`, no NUL after the body) are still errors, and other
    /// commands are decoded as by [`StompCodec`].
    pub fn recovering(mut self) -> RecoveringCodec {
        self.recover = true;
        self.state = State::default();
        RecoveringCodec::new(self)
    }

    /// The limits in force.
    pub fn limits(&self) -> &CodecLimits {
        &self.limits
    }

    /// Appends `frame` to `dst`.
    ///
    /// Header names and values are escaped unless the command is `CONNECT` or
    /// `CONNECTED`. Any `content-length` header in the frame is ignored: when
    /// the body is not empty the encoder writes the right one after the other
    /// headers (with [`length_when_needed`](Self::length_when_needed), only when
    /// the body holds a NUL byte). On error `dst` is left as it was.
    pub fn encode_frame(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let command = frame.command;
        let escaped = command.escapes_headers();
        if !escaped {
            if let Some((name, _)) = frame.headers.iter().find(|(name, value)| {
                name.contains(['\n', '\r', ':']) || value.contains(['\n', '\r'])
            }) {
                return Err(FrameError::UnencodableHeader {
                    command,
                    name: snippet(name.as_bytes()),
                });
            }
        }
        let headers = frame
            .headers
            .iter()
            .filter(|(name, _)| name != CONTENT_LENGTH);
        let body_len = frame.body.len();
        let length =
            body_len > 0 && (!self.length_when_needed || memchr::memchr(0, &frame.body).is_some());
        let count = headers.clone().count() + usize::from(length);
        if count > self.limits.max_headers {
            return Err(FrameError::TooManyHeaders {
                limit: self.limits.max_headers,
                count,
            });
        }

        let start = dst.len();
        dst.put_slice(command.as_str().as_bytes());
        dst.put_u8(b'\n');
        for (name, value) in headers {
            put_text(dst, name, escaped);
            dst.put_u8(b':');
            put_text(dst, value, escaped);
            dst.put_u8(b'\n');
        }
        if length {
            dst.put_slice(CONTENT_LENGTH.as_bytes());
            dst.put_u8(b':');
            dst.put_slice(body_len.to_string().as_bytes());
            dst.put_u8(b'\n');
        }
        dst.put_u8(b'\n');

        let head_len = dst.len() - start;
        let size = head_len.saturating_add(body_len).saturating_add(1);
        let too_large = if head_len > self.limits.max_header_bytes {
            Some(FrameError::HeadersTooLarge {
                limit: self.limits.max_header_bytes,
                size: head_len,
            })
        } else if size > self.limits.max_frame_bytes {
            Some(FrameError::FrameTooLarge {
                limit: self.limits.max_frame_bytes,
                size,
            })
        } else {
            None
        };
        if let Some(error) = too_large {
            dst.truncate(start);
            return Err(error);
        }
        dst.reserve(body_len + 1);
        dst.put_slice(&frame.body);
        dst.put_u8(0);
        Ok(())
    }

    /// One decoding step; on error the caller resets the state.
    fn decode_step(&mut self, src: &mut BytesMut) -> Result<Option<Received>, FrameError> {
        let limits = self.limits;
        loop {
            match &mut self.state {
                State::Command { scanned } => {
                    if *scanned == 0 {
                        match src.first() {
                            None => return Ok(None),
                            Some(b'\n') => {
                                src.advance(1);
                                return Ok(Some(Received::Heartbeat));
                            }
                            Some(b'\r') => match src.get(1) {
                                None => return Ok(None),
                                Some(b'\n') => {
                                    src.advance(2);
                                    return Ok(Some(Received::Heartbeat));
                                }
                                Some(_) => {}
                            },
                            Some(_) => {}
                        }
                    }
                    let Some(lf) = find(src, *scanned, b'\n') else {
                        *scanned = src.len().max(*scanned);
                        // "UNSUBSCRIBE\r" is the longest valid command line.
                        if src.len() > Command::MAX_LEN + 1 {
                            return Err(unknown_command(src));
                        }
                        check_head_size(src.len(), &limits)?;
                        return Ok(None);
                    };
                    let line = strip_cr(slice(src, 0, lf));
                    let command = Command::from_bytes(line).ok_or_else(|| unknown_command(line))?;
                    check_head_size(lf + 1, &limits)?;
                    // A recovered MESSAGE is read line by line, each line taken
                    // off the buffer once read, so nothing of it piles up.
                    let recovery = (self.recover && command == Command::Message)
                        .then(|| Recovery::start(src, lf + 1));
                    let start = if recovery.is_some() { 0 } else { lf + 1 };
                    self.state = State::Headers(Headers {
                        command,
                        // Room for a typical MESSAGE without regrowing.
                        headers: Vec::with_capacity(16),
                        line_start: start,
                        scanned: start,
                        recovery,
                    });
                }
                State::Headers(head) => {
                    if let Some(recovery) = &mut head.recovery {
                        if !recovery.skip_long_line(src, &limits) {
                            return Ok(None);
                        }
                    }
                    let Some(lf) = find(src, head.scanned, b'\n') else {
                        head.scanned = src.len().max(head.scanned);
                        match &mut head.recovery {
                            None => check_head_size(src.len(), &limits)?,
                            Some(recovery) => {
                                if recovery.start_skipping(src, &limits) {
                                    head.scanned = 0;
                                }
                            }
                        }
                        return Ok(None);
                    };
                    if let Some(recovery) = &mut head.recovery {
                        let escaped = head.command.escapes_headers();
                        let blank =
                            recovery.read_line(src, lf, escaped, &mut head.headers, &limits);
                        head.scanned = 0;
                        if blank {
                            let headers = std::mem::take(&mut head.headers);
                            let recovery = head.recovery.take();
                            let body = Body::new(head.command, headers, 0, recovery, &limits)?;
                            self.state = State::Body(body);
                        }
                        continue;
                    }
                    check_head_size(lf + 1, &limits)?;
                    let line = strip_cr(slice(src, head.line_start, lf));
                    head.line_start = lf + 1;
                    head.scanned = lf + 1;
                    if line.is_empty() {
                        let headers = std::mem::take(&mut head.headers);
                        let body = Body::new(head.command, headers, lf + 1, None, &limits)?;
                        self.state = State::Body(body);
                    } else {
                        let count = head.headers.len() + 1;
                        if count > limits.max_headers {
                            return Err(FrameError::TooManyHeaders {
                                limit: limits.max_headers,
                                count,
                            });
                        }
                        let line_no = count + 1;
                        let header = parse_header(line, head.command.escapes_headers())
                            .map_err(|error| error.at(line_no))?;
                        head.headers.push(header);
                    }
                }
                State::Body(body) => {
                    let end = match body.step(src, &limits)? {
                        BodyStep::Pending => return Ok(None),
                        BodyStep::End(nul) => Some(nul),
                        BodyStep::Skipped => None,
                    };
                    let command = body.command;
                    let headers = std::mem::take(&mut body.headers);
                    let head_len = body.head_len;
                    let recovery = body.recovery.take();
                    self.state = State::default();
                    let (body, tail) = match end {
                        Some(nul) => {
                            let raw = src.split_to(nul + 1).freeze();
                            (raw.slice(head_len..nul), nul + 1)
                        }
                        None => (Bytes::new(), 0),
                    };
                    let frame = Frame {
                        command,
                        headers,
                        body,
                    };
                    return Ok(Some(match recovery {
                        None => Received::Frame(frame),
                        Some(recovery) => recovery.finish(frame, tail, end.is_none(), &limits),
                    }));
                }
            }
        }
    }

    /// Bytes of the unfinished item: those buffered plus those of a recovered
    /// `MESSAGE` already read past.
    fn unfinished(&self, buf: &BytesMut) -> usize {
        let consumed = match &self.state {
            State::Command { .. } => 0,
            State::Headers(head) => head.recovery.as_ref().map_or(0, |r| r.consumed),
            State::Body(body) => body.recovery.as_ref().map_or(0, |r| r.consumed),
        };
        consumed + buf.len()
    }
}

impl StompCodec {
    /// One decoding step; resets the state on error.
    fn decode_item(&mut self, src: &mut BytesMut) -> Result<Option<Received>, FrameError> {
        let result = self.decode_step(src);
        if result.is_err() {
            self.state = State::default();
        }
        result
    }

    /// As [`Decoder::decode_eof`]: input that ends inside an item is an error.
    fn decode_item_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Received>, FrameError> {
        match self.decode_item(buf)? {
            Some(item) => Ok(Some(item)),
            None if buf.is_empty() && matches!(self.state, State::Command { .. }) => Ok(None),
            None => {
                let buffered = self.unfinished(buf);
                self.state = State::default();
                Err(FrameError::UnexpectedEof { buffered })
            }
        }
    }
}

/// Without recovery (the only way a [`StompCodec`] decodes) nothing is
/// rejected; a rejected item would be the error of its first problem.
fn strict(item: Option<Received>) -> Result<Option<Incoming>, FrameError> {
    match item {
        None => Ok(None),
        Some(Received::Frame(frame)) => Ok(Some(Incoming::Frame(frame))),
        Some(Received::Heartbeat) => Ok(Some(Incoming::Heartbeat)),
        Some(Received::Rejected(rejected)) => Err(rejected.problems.into_iter().next().map_or(
            FrameError::HeadersTooLarge {
                limit: 0,
                size: rejected.size,
            },
            FrameError::from,
        )),
    }
}

impl Decoder for StompCodec {
    type Item = Incoming;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        strict(self.decode_item(src)?)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        strict(self.decode_item_eof(buf)?)
    }
}

impl Encoder<Frame> for StompCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_frame(&frame, dst)
    }
}

impl Encoder<&Frame> for StompCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_frame(frame, dst)
    }
}

impl Encoder<Outgoing> for StompCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Outgoing, dst: &mut BytesMut) -> Result<(), FrameError> {
        match item {
            Outgoing::Frame(frame) => self.encode_frame(&frame, dst),
            Outgoing::Heartbeat => {
                dst.put_u8(b'\n');
                Ok(())
            }
        }
    }
}

/// Where the decoder is within the current item. Offsets count from the start
/// of the buffer, which holds the current frame from its first byte.
#[derive(Debug)]
enum State {
    /// Between frames: skipping heart-beats, then reading the command line.
    Command {
        /// Bytes of the command line already searched for LF.
        scanned: usize,
    },
    /// Reading header lines.
    Headers(Headers),
    /// Reading the body.
    Body(Body),
}

impl Default for State {
    fn default() -> Self {
        State::Command { scanned: 0 }
    }
}

#[derive(Debug)]
struct Headers {
    command: Command,
    headers: Vec<(String, String)>,
    /// Start of the header line being read.
    line_start: usize,
    /// Bytes already searched for LF.
    scanned: usize,
    /// Set for a `MESSAGE` read with recovery: then each line is taken off the
    /// buffer once read, and `line_start` stays 0.
    recovery: Option<Recovery>,
}

#[derive(Debug)]
struct Body {
    command: Command,
    headers: Vec<(String, String)>,
    /// Where the body starts in the buffer: after the header section, or 0 when
    /// a recovered `MESSAGE`'s header section was already taken off.
    head_len: usize,
    end: BodyEnd,
    recovery: Option<Recovery>,
}

#[derive(Debug)]
enum BodyEnd {
    /// `content-length` was given.
    Length(usize),
    /// No `content-length`: the body ends at the first NUL.
    Nul {
        /// Bytes already searched for NUL.
        scanned: usize,
    },
    /// Skipping the body of a recovered `MESSAGE` over the frame limit, as
    /// given by its `content-length`; the NUL follows.
    SkipLength {
        /// The `content-length`.
        length: usize,
        /// Body bytes still to skip.
        remaining: usize,
    },
    /// Skipping the body of a recovered `MESSAGE` over the frame limit up to
    /// its NUL.
    SkipNul,
}

/// Where the body of the current frame stands.
enum BodyStep {
    /// More input is needed.
    Pending,
    /// The frame ends with the NUL at this offset of the buffer.
    End(usize),
    /// A recovered `MESSAGE`'s body was skipped, NUL included.
    Skipped,
}

impl Body {
    fn new(
        command: Command,
        headers: Vec<(String, String)>,
        head_len: usize,
        recovery: Option<Recovery>,
        limits: &CodecLimits,
    ) -> Result<Body, FrameError> {
        let content_length = headers
            .iter()
            .find(|(name, _)| name == CONTENT_LENGTH)
            .map(|(_, value)| parse_content_length(value))
            .transpose()?;
        let consumed = recovery.as_ref().map_or(0, |r| r.consumed);
        let end = match content_length {
            Some(len) => {
                let size = consumed
                    .saturating_add(head_len)
                    .saturating_add(len)
                    .saturating_add(1);
                if size <= limits.max_frame_bytes {
                    BodyEnd::Length(len)
                } else if recovery.is_some() {
                    BodyEnd::SkipLength {
                        length: len,
                        remaining: len,
                    }
                } else {
                    return Err(FrameError::FrameTooLarge {
                        limit: limits.max_frame_bytes,
                        size,
                    });
                }
            }
            None => BodyEnd::Nul { scanned: head_len },
        };
        Ok(Body {
            command,
            headers,
            head_len,
            end,
            recovery,
        })
    }

    /// Takes `n` bytes of a recovered frame off the buffer.
    fn take(&mut self, src: &mut BytesMut, n: usize) {
        match &mut self.recovery {
            Some(recovery) => recovery.take(src, n),
            None => src.advance(n),
        }
    }

    /// Bytes of the frame already taken off the buffer.
    fn consumed(&self) -> usize {
        self.recovery.as_ref().map_or(0, |r| r.consumed)
    }

    /// Looks for the end of the body in what is buffered.
    fn step(&mut self, src: &mut BytesMut, limits: &CodecLimits) -> Result<BodyStep, FrameError> {
        let consumed = self.consumed();
        match self.end {
            BodyEnd::Length(len) => {
                // Checked against max_frame_bytes in `Body::new`, cannot overflow.
                let nul = self.head_len + len;
                match src.get(nul) {
                    None => {
                        src.reserve(nul + 1 - src.len());
                        Ok(BodyStep::Pending)
                    }
                    Some(0) => Ok(BodyStep::End(nul)),
                    Some(&found) => Err(FrameError::MissingNul {
                        content_length: len,
                        found,
                    }),
                }
            }
            BodyEnd::Nul { scanned } => match find(src, scanned, 0) {
                Some(nul) if consumed + nul >= limits.max_frame_bytes => {
                    if self.recovery.is_none() {
                        return Err(FrameError::FrameTooLarge {
                            limit: limits.max_frame_bytes,
                            size: nul + 1,
                        });
                    }
                    self.take(src, nul + 1);
                    Ok(BodyStep::Skipped)
                }
                Some(nul) => Ok(BodyStep::End(nul)),
                None if consumed + src.len() >= limits.max_frame_bytes => {
                    if self.recovery.is_none() {
                        return Err(FrameError::FrameTooLarge {
                            limit: limits.max_frame_bytes,
                            size: src.len() + 1,
                        });
                    }
                    let len = src.len();
                    self.take(src, len);
                    self.end = BodyEnd::SkipNul;
                    Ok(BodyStep::Pending)
                }
                None => {
                    self.end = BodyEnd::Nul {
                        scanned: src.len().max(scanned),
                    };
                    Ok(BodyStep::Pending)
                }
            },
            BodyEnd::SkipLength { length, remaining } => {
                let skip = remaining.min(src.len());
                self.take(src, skip);
                let remaining = remaining - skip;
                self.end = BodyEnd::SkipLength { length, remaining };
                if remaining > 0 {
                    return Ok(BodyStep::Pending);
                }
                match src.first() {
                    None => Ok(BodyStep::Pending),
                    Some(0) => {
                        self.take(src, 1);
                        Ok(BodyStep::Skipped)
                    }
                    Some(&found) => Err(FrameError::MissingNul {
                        content_length: length,
                        found,
                    }),
                }
            }
            BodyEnd::SkipNul => match find(src, 0, 0) {
                Some(nul) => {
                    self.take(src, nul + 1);
                    Ok(BodyStep::Skipped)
                }
                None => {
                    let len = src.len();
                    self.take(src, len);
                    Ok(BodyStep::Pending)
                }
            },
        }
    }
}

/// The offset of the first `byte` at or after `from`.
fn find(src: &[u8], from: usize, byte: u8) -> Option<usize> {
    let rest = src.get(from..)?;
    memchr::memchr(byte, rest).map(|i| from + i)
}

/// `src[start..end]`, or nothing if the range is out of bounds (which only
/// happens if the caller shrank the buffer between calls).
fn slice(src: &[u8], start: usize, end: usize) -> &[u8] {
    src.get(start..end).unwrap_or_default()
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn check_head_size(size: usize, limits: &CodecLimits) -> Result<(), FrameError> {
    if size > limits.max_header_bytes {
        return Err(FrameError::HeadersTooLarge {
            limit: limits.max_header_bytes,
            size,
        });
    }
    Ok(())
}

fn unknown_command(line: &[u8]) -> FrameError {
    FrameError::UnknownCommand {
        command: snippet(line),
    }
}

/// The start of some offending input, for error messages.
fn snippet(bytes: &[u8]) -> String {
    let end = bytes.len().min(SNIPPET_LEN);
    let mut text = String::from_utf8_lossy(slice(bytes, 0, end)).into_owned();
    if bytes.len() > end {
        text.push('…');
    }
    text
}

/// What is wrong with one header line.
enum HeaderError {
    MissingColon,
    InvalidUtf8,
    InvalidEscape(EscapeError),
}

impl HeaderError {
    /// The decoding error for line number `line`.
    fn at(self, line: usize) -> FrameError {
        match self {
            HeaderError::MissingColon => FrameError::MissingColon { line },
            HeaderError::InvalidUtf8 => FrameError::InvalidUtf8 { line },
            HeaderError::InvalidEscape(source) => FrameError::InvalidEscape { line, source },
        }
    }

    /// The same, for a recovered `MESSAGE`.
    fn rejection(self, line: usize) -> Rejection {
        match self {
            HeaderError::MissingColon => Rejection::MissingColon { line },
            HeaderError::InvalidUtf8 => Rejection::InvalidUtf8 { line },
            HeaderError::InvalidEscape(source) => Rejection::InvalidEscape { line, source },
        }
    }
}

fn parse_header(line: &[u8], escaped: bool) -> Result<(String, String), HeaderError> {
    let colon = memchr::memchr(b':', line).ok_or(HeaderError::MissingColon)?;
    // One UTF-8 check for the line; `:` is ASCII, so both parts are valid too.
    let text = std::str::from_utf8(line).map_err(|_| HeaderError::InvalidUtf8)?;
    let (name, value) = (
        text.get(..colon).unwrap_or_default(),
        text.get(colon + 1..).unwrap_or_default(),
    );
    Ok((header_text(name, escaped)?, header_text(value, escaped)?))
}

fn header_text(text: &str, escaped: bool) -> Result<String, HeaderError> {
    if !escaped {
        return Ok(text.to_owned());
    }
    frame::unescape(text)
        .map(Cow::into_owned)
        .map_err(HeaderError::InvalidEscape)
}

fn parse_content_length(value: &str) -> Result<usize, FrameError> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(len) = value.parse() {
            return Ok(len);
        }
    }
    Err(FrameError::InvalidContentLength {
        value: snippet(value.as_bytes()),
    })
}

/// Writes a header name or value, escaped if `escaped`.
fn put_text(dst: &mut BytesMut, text: &str, escaped: bool) {
    let bytes = text.as_bytes();
    if !escaped || !bytes.iter().any(|&b| frame::needs_escape(b)) {
        dst.put_slice(bytes);
        return;
    }
    let mut run = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        if let Some(sequence) = frame::escape_sequence(byte) {
            dst.put_slice(slice(bytes, run, i));
            dst.put_slice(sequence.as_bytes());
            run = i + 1;
        }
    }
    dst.put_slice(slice(bytes, run, bytes.len()));
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn small_limits() -> CodecLimits {
        CodecLimits {
            max_frame_bytes: 64,
            max_header_bytes: 32,
            max_headers: 3,
        }
    }

    fn encode(frame: &Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        StompCodec::new()
            .encode_frame(frame, &mut buf)
            .expect("encodable frame");
        buf
    }

    /// Decodes everything in `input` at once.
    fn decode_all(input: &[u8]) -> Result<Vec<Incoming>, FrameError> {
        decode_all_with(StompCodec::new(), input)
    }

    fn decode_all_with(mut codec: StompCodec, input: &[u8]) -> Result<Vec<Incoming>, FrameError> {
        let mut buf = BytesMut::from(input);
        let mut items = Vec::new();
        while let Some(item) = codec.decode_eof(&mut buf)? {
            items.push(item);
        }
        Ok(items)
    }

    /// Decodes `input` fed one byte at a time.
    fn decode_bytewise(input: &[u8]) -> Result<Vec<Incoming>, FrameError> {
        let mut codec = StompCodec::new();
        let mut buf = BytesMut::new();
        let mut items = Vec::new();
        for &byte in input {
            buf.put_u8(byte);
            while let Some(item) = codec.decode(&mut buf)? {
                items.push(item);
            }
        }
        while let Some(item) = codec.decode_eof(&mut buf)? {
            items.push(item);
        }
        Ok(items)
    }

    fn one_frame(input: &[u8]) -> Frame {
        match decode_all(input).expect("valid input").as_slice() {
            [Incoming::Frame(frame)] => frame.clone(),
            other => panic!("expected one frame, got {other:?}"),
        }
    }

    fn decode_err(input: &[u8]) -> FrameError {
        decode_all(input).expect_err("invalid input")
    }

    #[test]
    fn encodes_the_wire_format() {
        let frame = Frame::new(Command::Send)
            .header("destination", "/queue/a")
            .with_body("hello");
        assert_eq!(
            &encode(&frame)[..],
            b"SEND\ndestination:/queue/a\ncontent-length:5\n\nhello\0"
        );
        let empty = Frame::new(Command::Disconnect).header("receipt", "1");
        assert_eq!(&encode(&empty)[..], b"DISCONNECT\nreceipt:1\n\n\0");
    }

    #[test]
    fn round_trips_every_command() {
        for command in Command::ALL {
            let frame = Frame::new(command)
                .header("id", "7")
                .header("id", "8")
                .with_body("payload");
            let decoded = one_frame(&encode(&frame));
            assert_eq!(decoded.command, command);
            assert_eq!(decoded.get("id"), Some("7"));
            assert_eq!(decoded.get_all("id").collect::<Vec<_>>(), ["7", "8"]);
            assert_eq!(decoded.get(CONTENT_LENGTH), Some("7"));
            assert_eq!(decoded.body, frame.body);
        }
    }

    #[test]
    fn body_without_content_length_runs_to_first_nul() {
        let frame = one_frame(b"MESSAGE\nsubscription:0\n\nhello world\0");
        assert_eq!(frame.command, Command::Message);
        assert_eq!(frame.body, Bytes::from_static(b"hello world"));
        assert_eq!(frame.get(CONTENT_LENGTH), None);

        let items = decode_all(b"SEND\n\nab\0SEND\n\n\0").expect("two frames");
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn nul_bytes_in_body_with_content_length() {
        let body = Bytes::from_static(b"\0a\0\0b\0");
        let frame = Frame::new(Command::Send).with_body(body.clone());
        let wire = encode(&frame);
        assert!(wire.starts_with(b"SEND\ncontent-length:6\n\n"));
        assert_eq!(one_frame(&wire).body, body);
        assert_eq!(
            decode_bytewise(&wire).expect("valid"),
            [Incoming::Frame(one_frame(&wire))]
        );
    }

    #[test]
    fn first_content_length_wins() {
        let frame = one_frame(b"SEND\ncontent-length:2\ncontent-length:5\n\nab\0");
        assert_eq!(frame.body, Bytes::from_static(b"ab"));
    }

    #[test]
    fn encoder_replaces_a_user_content_length() {
        let frame = Frame::new(Command::Send)
            .header(CONTENT_LENGTH, "1")
            .header("a", "b")
            .with_body("abc");
        assert_eq!(&encode(&frame)[..], b"SEND\na:b\ncontent-length:3\n\nabc\0");
        let empty = Frame::new(Command::Send).header(CONTENT_LENGTH, "9");
        assert_eq!(&encode(&empty)[..], b"SEND\n\n\0");
    }

    #[test]
    fn crlf_line_endings() {
        let frame = one_frame(b"SEND\r\ndestination:/q\r\ncontent-length:2\r\n\r\nhi\0");
        assert_eq!(frame.command, Command::Send);
        assert_eq!(
            frame.headers,
            [
                ("destination".into(), "/q".into()),
                (CONTENT_LENGTH.into(), "2".into())
            ]
        );
        assert_eq!(frame.body, Bytes::from_static(b"hi"));
        // A lone CR before LF is always part of the line ending.
        let frame = one_frame(b"CONNECT\r\nhost:h\r\n\r\n\0");
        assert_eq!(frame.get("host"), Some("h"));
    }

    #[test]
    fn heartbeats_between_frames() {
        let input = b"\n\r\nSEND\n\n\0\n\r\n\nRECEIPT\nreceipt-id:1\n\n\0\r\n";
        let expected_kinds = ["hb", "hb", "frame", "hb", "hb", "hb", "frame", "hb"];
        for items in [decode_all(input), decode_bytewise(input)] {
            let kinds: Vec<_> = items
                .expect("valid")
                .iter()
                .map(|item| match item {
                    Incoming::Heartbeat => "hb",
                    Incoming::Frame(_) => "frame",
                })
                .collect();
            assert_eq!(kinds, expected_kinds);
        }
    }

    #[test]
    fn a_lone_cr_waits_for_more_input() {
        let mut codec = StompCodec::new();
        let mut buf = BytesMut::from(&b"\r"[..]);
        assert_eq!(codec.decode(&mut buf).expect("partial"), None);
        buf.put_u8(b'\n');
        assert_eq!(
            codec.decode(&mut buf).expect("heartbeat"),
            Some(Incoming::Heartbeat)
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn escaped_values_cannot_inject_headers_or_end_the_frame() {
        let nasty = "a\nforged:1\r\n\nb:c\\d\\t\0e";
        let frame = Frame::new(Command::Send)
            .header("x", nasty)
            .header("na:me\n", "v")
            .header("after", "ok")
            .with_body("body");
        let wire = encode(&frame);
        let head: &[u8] = b"SEND\n\
            x:a\\nforged\\c1\\r\\n\\nb\\cc\\\\d\\\\t\0e\n\
            na\\cme\\n:v\n\
            after:ok\n\
            content-length:4\n\n";
        assert!(wire.starts_with(head), "{wire:?}");
        let decoded = one_frame(&wire);
        assert_eq!(decoded.get("x"), Some(nasty));
        assert_eq!(decoded.get("na:me\n"), Some("v"));
        assert_eq!(decoded.get("forged"), None);
        assert_eq!(decoded.get("after"), Some("ok"));
        assert_eq!(decoded.body, frame.body);
    }

    #[test]
    fn raw_colon_in_value_is_accepted() {
        let frame = one_frame(b"MESSAGE\nurl:http://x\n\n\0");
        assert_eq!(frame.get("url"), Some("http://x"));
    }

    #[test]
    fn connect_frames_are_not_escaped() {
        let frame = Frame::new(Command::Connect)
            .header("passcode", "a\\cb:c")
            .header("accept-version", "1.2");
        let wire = encode(&frame);
        assert_eq!(
            &wire[..],
            b"CONNECT\npasscode:a\\cb:c\naccept-version:1.2\n\n\0"
        );
        assert_eq!(one_frame(&wire), frame);

        let connected = one_frame(b"CONNECTED\nserver:a\\tb\n\n\0");
        assert_eq!(connected.get("server"), Some("a\\tb"));
    }

    #[test]
    fn connect_headers_that_need_escaping_are_refused() {
        let codec = StompCodec::new();
        for (name, value) in [("a", "b\nc"), ("a", "b\r"), ("a:b", "c"), ("a\n", "b")] {
            let frame = Frame::new(Command::Connected).header(name, value);
            let mut buf = BytesMut::from(&b"keep"[..]);
            let err = codec.encode_frame(&frame, &mut buf).expect_err("refused");
            assert!(
                matches!(
                    err,
                    FrameError::UnencodableHeader {
                        command: Command::Connected,
                        ..
                    }
                ),
                "{err:?}"
            );
            assert_eq!(&buf[..], b"keep");
            // The same header is fine in an escaped frame.
            let frame = Frame::new(Command::Send).header(name, value);
            assert_eq!(one_frame(&encode(&frame)), frame);
        }
    }

    #[test]
    fn partial_input_resumes() {
        let frames = [
            Frame::new(Command::Send)
                .header("destination", "/queue/a")
                .with_body(vec![0u8; 300]),
            Frame::new(Command::Begin).header("transaction", "t\\1"),
            Frame::new(Command::Error)
                .header("message", "bad")
                .with_body("details"),
        ];
        let mut wire = BytesMut::new();
        for frame in &frames {
            wire.extend_from_slice(&encode(frame));
            wire.put_u8(b'\n');
        }
        let whole = decode_all(&wire).expect("valid");
        assert_eq!(whole.len(), 6);
        assert_eq!(decode_bytewise(&wire).expect("valid"), whole);
    }

    #[test]
    fn large_body_without_content_length_arrives_in_chunks() {
        let mut codec = StompCodec::new();
        let mut buf = BytesMut::from(&b"SEND\n\n"[..]);
        let chunk = [b'x'; 1024];
        for _ in 0..1024 {
            buf.extend_from_slice(&chunk);
            assert_eq!(codec.decode(&mut buf).expect("partial"), None);
        }
        buf.put_u8(0);
        let Some(Incoming::Frame(frame)) = codec.decode(&mut buf).expect("frame") else {
            panic!("expected a frame");
        };
        assert_eq!(frame.body.len(), 1024 * 1024);
        assert!(buf.is_empty());
    }

    #[test]
    fn unknown_commands() {
        for input in [
            &b"send\n\n\0"[..],
            b"SEND \n\n\0",
            b"FOO\n\n\0",
            b"\rSEND\n\n\0",
            b"\xff\n\n\0",
        ] {
            assert!(
                matches!(decode_err(input), FrameError::UnknownCommand { .. }),
                "{input:?}"
            );
        }
        // Garbage without a line end fails as soon as it is longer than any command.
        let mut codec = StompCodec::new();
        let mut buf = BytesMut::from(&b"UNSUBSCRIBE\r"[..]);
        assert_eq!(codec.decode(&mut buf).expect("partial"), None);
        buf.put_u8(b'x');
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::UnknownCommand { .. })
        ));
    }

    #[test]
    fn header_errors() {
        assert!(matches!(
            decode_err(b"SEND\na:b\nnocolon\n\n\0"),
            FrameError::MissingColon { line: 3 }
        ));
        assert!(matches!(
            decode_err(b"SEND\nv:tab\\t\n\n\0"),
            FrameError::InvalidEscape {
                line: 2,
                source: EscapeError::Undefined {
                    sequence: 't',
                    offset: 3
                }
            }
        ));
        assert!(matches!(
            decode_err(b"SEND\nv\\:x\n\n\0"),
            FrameError::InvalidEscape {
                line: 2,
                source: EscapeError::Dangling
            }
        ));
        assert!(matches!(
            decode_err(b"SEND\nv:\xc3\x28\n\n\0"),
            FrameError::InvalidUtf8 { line: 2 }
        ));
        assert!(matches!(
            decode_err(b"CONNECT\n\xff:x\n\n\0"),
            FrameError::InvalidUtf8 { line: 2 }
        ));
    }

    #[test]
    fn bad_content_length() {
        for value in [
            "",
            "abc",
            "-1",
            "+1",
            " 1",
            "1 ",
            "0x10",
            "99999999999999999999999999",
        ] {
            let input = format!("SEND\ncontent-length:{value}\n\nx\0");
            let err = decode_err(input.as_bytes());
            assert!(
                matches!(err, FrameError::InvalidContentLength { .. }),
                "{value:?}: {err:?}"
            );
        }
    }

    #[test]
    fn missing_nul_after_content_length_body() {
        let err = decode_err(b"SEND\ncontent-length:2\n\nabc\0");
        assert!(matches!(
            err,
            FrameError::MissingNul {
                content_length: 2,
                found: b'c'
            }
        ));
        assert!(err.to_string().contains("0x63"), "{err}");
    }

    #[test]
    fn truncated_input_at_eof() {
        for input in [
            &b"SEN"[..],
            b"SEND\na:b",
            b"SEND\n\nbody",
            b"SEND\ncontent-length:4\n\nab",
            b"\r",
        ] {
            let err = decode_err(input);
            assert!(
                matches!(err, FrameError::UnexpectedEof { buffered } if buffered == input.len()),
                "{input:?}: {err:?}"
            );
        }
        assert_eq!(decode_all(b"").expect("empty"), []);
    }

    #[test]
    fn content_length_over_limit_is_refused_before_buffering() {
        let mut codec = StompCodec::with_limits(small_limits());
        let mut buf = BytesMut::from(&b"SEND\ncontent-length:999999999\n\n"[..]);
        let capacity = buf.capacity();
        let err = codec.decode(&mut buf).expect_err("too large");
        assert!(
            matches!(
                err,
                FrameError::FrameTooLarge { limit: 64, size } if size == 31 + 999_999_999 + 1
            ),
            "{err:?}"
        );
        assert_eq!(buf.capacity(), capacity);
    }

    #[test]
    fn content_length_within_limit_reserves_once() {
        let mut codec = StompCodec::with_limits(small_limits());
        let mut buf = BytesMut::from(&b"SEND\ncontent-length:20\n\n"[..]);
        assert_eq!(codec.decode(&mut buf).expect("partial"), None);
        assert!(buf.capacity() >= 24 + 21);
        buf.extend_from_slice(&[b'y'; 20]);
        buf.put_u8(0);
        let Some(Incoming::Frame(frame)) = codec.decode(&mut buf).expect("frame") else {
            panic!("expected a frame");
        };
        assert_eq!(frame.body.len(), 20);
    }

    #[test]
    fn body_without_content_length_over_limit() {
        let limits = small_limits();
        // 6 bytes of head + 57 of body + NUL = 64 bytes: exactly the limit.
        let mut ok = b"SEND\n\n".to_vec();
        ok.extend_from_slice(&[b'z'; 57]);
        ok.push(0);
        assert_eq!(
            decode_all_with(StompCodec::with_limits(limits), &ok)
                .expect("fits")
                .len(),
            1
        );

        // One more byte and no NUL yet: refused without waiting for the NUL.
        let mut codec = StompCodec::with_limits(limits);
        let mut buf = BytesMut::from(&ok[..63]);
        assert_eq!(codec.decode(&mut buf).expect("partial"), None);
        buf.put_u8(b'z');
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::FrameTooLarge {
                limit: 64,
                size: 65
            })
        ));

        // The NUL arriving together with too many bytes is refused too.
        let mut big = b"SEND\n\n".to_vec();
        big.extend_from_slice(&[b'z'; 58]);
        big.push(0);
        assert!(matches!(
            decode_all_with(StompCodec::with_limits(limits), &big),
            Err(FrameError::FrameTooLarge {
                limit: 64,
                size: 65
            })
        ));
    }

    #[test]
    fn header_section_over_limit() {
        let err = decode_all_with(
            StompCodec::with_limits(small_limits()),
            b"SEND\nlong:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        )
        .expect_err("too large");
        assert!(
            matches!(err, FrameError::HeadersTooLarge { limit: 32, .. }),
            "{err:?}"
        );

        // 32 bytes exactly is fine.
        let ok = b"SEND\na:bbbbbbbbbbbbbbbbbbbbbbb\n\n\0";
        assert_eq!(ok.len() - 1, 32);
        assert!(decode_all_with(StompCodec::with_limits(small_limits()), ok).is_ok());
    }

    #[test]
    fn too_many_headers() {
        let ok = b"SEND\na:1\nb:2\nc:3\n\n\0";
        assert!(decode_all_with(StompCodec::with_limits(small_limits()), ok).is_ok());
        let err = decode_all_with(
            StompCodec::with_limits(small_limits()),
            b"SEND\na:1\nb:2\nc:3\nd:4\n\n\0",
        )
        .expect_err("too many");
        assert!(
            matches!(err, FrameError::TooManyHeaders { limit: 3, count: 4 }),
            "{err:?}"
        );
    }

    #[test]
    fn encoder_enforces_limits_and_leaves_dst_alone() {
        let codec = StompCodec::with_limits(small_limits());
        let mut buf = BytesMut::from(&b"prefix"[..]);

        let big = Frame::new(Command::Send).with_body(vec![1u8; 64]);
        let err = codec.encode_frame(&big, &mut buf).expect_err("too large");
        assert!(
            matches!(err, FrameError::FrameTooLarge { limit: 64, .. }),
            "{err:?}"
        );

        // content-length counts as a header.
        let many = Frame::new(Command::Send)
            .header("a", "1")
            .header("b", "2")
            .header("c", "3")
            .with_body("x");
        let err = codec.encode_frame(&many, &mut buf).expect_err("too many");
        assert!(
            matches!(err, FrameError::TooManyHeaders { limit: 3, count: 4 }),
            "{err:?}"
        );

        let long = Frame::new(Command::Send).header("h", "v".repeat(40));
        let err = codec.encode_frame(&long, &mut buf).expect_err("too long");
        assert!(
            matches!(err, FrameError::HeadersTooLarge { limit: 32, .. }),
            "{err:?}"
        );

        assert_eq!(&buf[..], b"prefix");
    }

    #[test]
    fn encoded_frames_at_the_limits_decode_with_the_same_limits() {
        let limits = small_limits();
        let frame = Frame::new(Command::Send)
            .header("a", "1")
            .header("b", "2")
            .with_body(vec![b'q'; 64 - 32 - 1]);
        let mut buf = BytesMut::new();
        StompCodec::with_limits(limits)
            .encode_frame(&frame, &mut buf)
            .expect("fits");
        assert_eq!(buf.len(), 64);
        assert_eq!(
            decode_all_with(StompCodec::with_limits(limits), &buf)
                .expect("fits")
                .len(),
            1
        );
    }

    #[test]
    fn heartbeat_encoding() {
        let mut codec = StompCodec::new();
        let mut buf = BytesMut::new();
        codec
            .encode(Outgoing::Heartbeat, &mut buf)
            .expect("heartbeat");
        codec
            .encode(
                Outgoing::from(Frame::new(Command::Ack).header("id", "1")),
                &mut buf,
            )
            .expect("frame");
        codec
            .encode(&Frame::new(Command::Nack), &mut buf)
            .expect("frame");
        assert_eq!(&buf[..], b"\nACK\nid:1\n\n\0NACK\n\n\0");
    }

    #[test]
    fn decoder_recovers_state_after_an_error() {
        let mut codec = StompCodec::new();
        let mut buf = BytesMut::from(&b"SEND\nbad\n\n\0"[..]);
        assert!(codec.decode(&mut buf).is_err());
        let mut fresh = BytesMut::from(&b"SEND\n\n\0"[..]);
        assert!(matches!(
            codec.decode(&mut fresh),
            Ok(Some(Incoming::Frame(_)))
        ));
    }

    #[test]
    fn error_messages_carry_context() {
        let err = FrameError::FrameTooLarge {
            limit: 10,
            size: 11,
        };
        assert_eq!(
            err.to_string(),
            "frame of 11 bytes or more exceeds the limit of 10 bytes"
        );
        let err = decode_err(b"SEND\nv:\\x\n\n\0");
        assert_eq!(
            err.to_string(),
            "header line 2: undefined escape sequence `\\x` at byte 0"
        );
        let err = decode_err(b"UNSUBSCRIBEXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX");
        assert!(
            err.to_string()
                .starts_with("unknown STOMP command \"UNSUBSCRIBEX"),
            "{err}"
        );
    }
}

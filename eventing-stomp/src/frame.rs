//! The STOMP 1.2 frame model and header escaping.
//!
//! A [`Frame`] is a [`Command`], an ordered list of headers and a body. Headers
//! keep the order and the repetitions they had on the wire; [`Frame::get`]
//! returns the first occurrence, as the specification requires.
//!
//! Header names and values are escaped on the wire (`\\`, `\n`, `\r`, `\c`),
//! except in `CONNECT` and `CONNECTED` frames ([`Command::escapes_headers`]).
//! [`escape`] and [`unescape`] implement those rules; the codec applies them, so
//! the strings held in a [`Frame`] are always the unescaped ones.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

/// A STOMP 1.2 command: the first line of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `CONNECT` (client): opens a session.
    Connect,
    /// `STOMP` (client): opens a session, the STOMP 1.1+ spelling of `CONNECT`.
    Stomp,
    /// `CONNECTED` (server): the session is open.
    Connected,
    /// `SEND` (client): sends a message to a destination.
    Send,
    /// `SUBSCRIBE` (client): registers a subscription to a destination.
    Subscribe,
    /// `UNSUBSCRIBE` (client): removes a subscription.
    Unsubscribe,
    /// `ACK` (client): acknowledges a message.
    Ack,
    /// `NACK` (client): rejects a message.
    Nack,
    /// `BEGIN` (client): starts a transaction.
    Begin,
    /// `COMMIT` (client): commits a transaction.
    Commit,
    /// `ABORT` (client): rolls back a transaction.
    Abort,
    /// `DISCONNECT` (client): closes the session gracefully.
    Disconnect,
    /// `MESSAGE` (server): delivers a message of a subscription.
    Message,
    /// `RECEIPT` (server): confirms that the server processed a client frame.
    Receipt,
    /// `ERROR` (server): reports an error; the server then closes the connection.
    Error,
}

impl Command {
    /// Every command, client commands first.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The length of the longest command name (`UNSUBSCRIBE`, `DISCONNECT` are 11
    /// and 10 bytes).
    pub(crate) const MAX_LEN: usize = 11;

    /// The command as it is written on the wire, e.g. `"SEND"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Connected => "CONNECTED",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Parses a command line (without its end of line). Commands are
    /// case-sensitive; anything else than the exact name gives `None`.
    pub fn from_bytes(name: &[u8]) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|command| command.as_str().as_bytes() == name)
    }

    /// Whether header names and values of this command are escaped on the wire.
    ///
    /// STOMP 1.2 escapes headers in every frame except `CONNECT` and `CONNECTED`,
    /// for compatibility with STOMP 1.0 peers during negotiation.
    pub const fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Connected)
    }

    /// Whether servers send this command (`CONNECTED`, `MESSAGE`, `RECEIPT`,
    /// `ERROR`); every other command is sent by clients.
    pub const fn is_server_command(self) -> bool {
        matches!(
            self,
            Command::Connected | Command::Message | Command::Receipt | Command::Error
        )
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One STOMP frame: a command, ordered headers and a body.
///
/// Header strings are stored unescaped. Repeated headers are kept; per the
/// specification only the first occurrence counts, which is what [`Frame::get`]
/// returns.
///
/// ```
/// use eventing_stomp::frame::{Command, Frame};
///
/// let frame = Frame::new(Command::Send)
///     .header("destination", "/queue/a")
///     .header("destination", "/queue/ignored")
///     .with_body("hi");
/// assert_eq!(frame.get("destination"), Some("/queue/a"));
/// assert_eq!(frame.get_all("destination").count(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command.
    pub command: Command,
    /// The headers in wire order, unescaped, repetitions included.
    pub headers: Vec<(String, String)>,
    /// The body; may contain NUL bytes (the codec always sends `content-length`).
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and an empty body.
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Appends a header and returns the frame (builder style).
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.push_header(name, value);
        self
    }

    /// Appends a header. An existing header of the same name still wins, since
    /// the first occurrence counts.
    pub fn push_header(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.headers.push((name.into(), value.into()));
    }

    /// Replaces the body and returns the frame (builder style).
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The value of the first header called `name` (names are case-sensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The values of every header called `name`, in wire order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An escape sequence in a header that STOMP 1.2 does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EscapeError {
    /// A backslash followed by something else than `\`, `n`, `r` or `c`.
    #[error("undefined escape sequence `\\{sequence}` at byte {offset}")]
    Undefined {
        /// The character that followed the backslash.
        sequence: char,
        /// Byte offset of the backslash in the escaped text.
        offset: usize,
    },
    /// A backslash at the very end of the text.
    #[error("dangling backslash at the end of the text")]
    Dangling,
}

/// Escapes a header name or value per STOMP 1.2: `\` becomes `\\`, LF `\n`,
/// CR `\r` and `:` `\c`. Borrows when nothing needs escaping.
///
/// ```
/// use eventing_stomp::frame::escape;
///
/// assert_eq!(escape("a:b\nc"), "a\\cb\\nc");
/// assert_eq!(escape("plain"), "plain");
/// ```
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.bytes().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for ch in text.chars() {
        match u8::try_from(ch).ok().and_then(escape_sequence) {
            Some(seq) => out.push_str(seq),
            None => out.push(ch),
        }
    }
    Cow::Owned(out)
}

/// Reverses [`escape`]. Any other backslash sequence, or a trailing backslash,
/// is an error, as STOMP 1.2 requires. Borrows when there is nothing to undo.
///
/// ```
/// use eventing_stomp::frame::unescape;
///
/// assert_eq!(unescape("a\\cb\\nc").unwrap(), "a:b\nc");
/// assert!(unescape("tab\\t").is_err());
/// ```
pub fn unescape(text: &str) -> Result<Cow<'_, str>, EscapeError> {
    if !text.contains('\\') {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices();
    while let Some((offset, ch)) = chars.next() {
        if ch != '\\' {
            out.push(ch);
            continue;
        }
        match chars.next() {
            Some((_, '\\')) => out.push('\\'),
            Some((_, 'n')) => out.push('\n'),
            Some((_, 'r')) => out.push('\r'),
            Some((_, 'c')) => out.push(':'),
            Some((_, sequence)) => return Err(EscapeError::Undefined { sequence, offset }),
            None => return Err(EscapeError::Dangling),
        }
    }
    Ok(Cow::Owned(out))
}

/// Whether a byte of UTF-8 text is one that [`escape`] rewrites.
pub(crate) const fn needs_escape(byte: u8) -> bool {
    escape_sequence(byte).is_some()
}

/// The escape sequence for `byte`, if it needs one.
pub(crate) const fn escape_sequence(byte: u8) -> Option<&'static str> {
    match byte {
        b'\\' => Some("\\\\"),
        b'\n' => Some("\\n"),
        b'\r' => Some("\\r"),
        b':' => Some("\\c"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_round_trip() {
        for command in Command::ALL {
            assert_eq!(
                Command::from_bytes(command.as_str().as_bytes()),
                Some(command)
            );
            assert_eq!(command.to_string(), command.as_str());
            assert!(command.as_str().len() <= Command::MAX_LEN);
        }
        assert_eq!(Command::from_bytes(b"send"), None);
        assert_eq!(Command::from_bytes(b"SEND "), None);
        assert_eq!(Command::from_bytes(b""), None);
    }

    #[test]
    fn only_connect_and_connected_are_unescaped() {
        for command in Command::ALL {
            let unescaped = matches!(command, Command::Connect | Command::Connected);
            assert_eq!(command.escapes_headers(), !unescaped, "{command}");
        }
        assert!(Command::Stomp.escapes_headers());
    }

    #[test]
    fn server_commands() {
        let server: Vec<_> = Command::ALL
            .into_iter()
            .filter(|c| c.is_server_command())
            .collect();
        assert_eq!(
            server,
            [
                Command::Connected,
                Command::Message,
                Command::Receipt,
                Command::Error
            ]
        );
    }

    #[test]
    fn builder_and_first_header_wins() {
        let mut frame = Frame::new(Command::Message)
            .header("a", "1")
            .header("b", "2")
            .header("a", "3")
            .with_body(&b"body"[..]);
        frame.push_header("c", "4");
        assert_eq!(frame.get("a"), Some("1"));
        assert_eq!(frame.get_all("a").collect::<Vec<_>>(), ["1", "3"]);
        assert_eq!(frame.get("c"), Some("4"));
        assert_eq!(frame.get("A"), None);
        assert_eq!(frame.body, Bytes::from_static(b"body"));
    }

    #[test]
    fn escape_each_special_character() {
        assert_eq!(escape("\\"), "\\\\");
        assert_eq!(escape("\n"), "\\n");
        assert_eq!(escape("\r"), "\\r");
        assert_eq!(escape(":"), "\\c");
        assert_eq!(escape("a\tb é"), "a\tb é");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn unescape_reverses_escape() {
        for text in ["", "plain", "a:b", "x\\y", "l1\nl2\r\n", "\\c", "é:ü\\n"] {
            let escaped = escape(text);
            assert!(!escaped.contains(['\n', '\r', ':']), "{escaped:?}");
            assert_eq!(unescape(&escaped).as_deref(), Ok(text));
        }
    }

    #[test]
    fn unescape_rejects_undefined_sequences() {
        assert_eq!(
            unescape("ab\\t"),
            Err(EscapeError::Undefined {
                sequence: 't',
                offset: 2
            })
        );
        assert_eq!(
            unescape("\\é"),
            Err(EscapeError::Undefined {
                sequence: 'é',
                offset: 0
            })
        );
        assert_eq!(unescape("ab\\"), Err(EscapeError::Dangling));
        assert_eq!(unescape("\\\\\\"), Err(EscapeError::Dangling));
        assert_eq!(unescape("\\\\t").as_deref(), Ok("\\t"));
    }

    #[test]
    fn escape_sequence_matches_escape() {
        for byte in 0..=127u8 {
            let text = char::from(byte).to_string();
            let expected = escape(&text);
            assert_eq!(needs_escape(byte), matches!(expected, Cow::Owned(_)));
            match escape_sequence(byte) {
                Some(seq) => assert_eq!(seq, expected),
                None => assert_eq!(text, expected),
            }
        }
    }
}

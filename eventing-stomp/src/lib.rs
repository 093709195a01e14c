//! STOMP 1.2 provider for `eventing`.
//!
//! The [`frame`] module holds the frame model (commands, headers, body) and the
//! STOMP 1.2 header escaping rules; [`codec`] turns frames into bytes and back
//! as a [`tokio_util::codec`] `Decoder`/`Encoder` with size limits.
//!
//! ```
//! use bytes::BytesMut;
//! use eventing_stomp::codec::{Incoming, StompCodec};
//! use eventing_stomp::frame::{Command, Frame};
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = StompCodec::new();
//! let mut buf = BytesMut::new();
//! let frame = Frame::new(Command::Send)
//!     .header("destination", "/queue/a")
//!     .with_body("hello");
//! codec.encode(frame.clone(), &mut buf)?;
//!
//! let Some(Incoming::Frame(decoded)) = codec.decode(&mut buf)? else {
//!     panic!("expected a frame");
//! };
//! assert_eq!(decoded.get("destination"), Some("/queue/a"));
//! assert_eq!(decoded.get("content-length"), Some("5"));
//! assert_eq!(decoded.body, frame.body);
//! # Ok::<(), eventing_stomp::codec::FrameError>(())
//! ```

pub mod codec;
pub mod frame;

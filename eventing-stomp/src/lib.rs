//! STOMP 1.2 provider for [`eventing`].
//!
//! Linking this crate registers the `stomp://` and `stomps://` schemes, so a
//! manager picks it by URL. Reference the crate once so that it is linked:
//!
//! ```no_run
//! use eventing::{event, event_listener, Context, EventListener, EventManager, ListenerResult};
//! use eventing_stomp as _;
//! use serde::{Deserialize, Serialize};
//!
//! #[event(name = "shop.OrderPlaced", durable = true)]
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { id: u64 }
//!
//! #[event_listener(OrderPlaced, name = "Billing")]
//! struct Billing;
//!
//! impl EventListener<OrderPlaced> for Billing {
//!     async fn on(&self, order: OrderPlaced, _: &Context) -> ListenerResult {
//!         println!("bill order {}", order.id);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> eventing::Result<()> {
//! let manager = EventManager::builder()
//!     .url("stomp://guest:guest@127.0.0.1:61613?vhost=/&heartbeat=10000")
//!     .build()
//!     .await?;
//! manager.start().await?;
//! // Durable: returns once the broker's RECEIPT has arrived.
//! manager.send_event(&OrderPlaced { id: 7 }).await?;
//! manager.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # How it maps onto STOMP
//!
//! - One session sends (`SEND`, durable events with `persistent:true` and a
//!   `receipt`, awaited up to the manager's send timeout); each listener's queue
//!   gets its own session (`SUBSCRIBE` with `ack:client-individual` and
//!   `prefetch-count`; one `ACK`/`NACK` frame per message, without receipts).
//!   Every session has one writer task fed by a bounded channel and one reader
//!   task; heart-beats are negotiated (`heartbeat` URL parameter) and sent both
//!   ways, and a broker silent for twice its period counts as lost.
//! - Destinations, queue names and header mapping depend on the broker:
//!   [`Dialect::RabbitMq`], [`Dialect::ActiveMq`] (ActiveMQ Classic, virtual
//!   topics: [`activemq`]) or [`Dialect::Artemis`], chosen by `?broker=` or else
//!   by the `server` header of the broker's `CONNECTED` frame.
//!   On RabbitMQ each event is a fanout exchange named by the event, shared with
//!   the AMQP provider; since the STOMP plugin cannot declare exchanges, they
//!   (and the competing and dead-letter queues) are declared over AMQP 0-9-1 by
//!   [`RabbitAdmin`], on the broker's AMQP port with the same credentials
//!   (`?declare=none` if they are provisioned otherwise).
//! - `Consumer::cancel` ends the stream after what it buffered; `UNSUBSCRIBE`
//!   and `DISCONNECT` follow when the consumer is dropped, because RabbitMQ
//!   refuses `ACK`s of a subscription after its `UNSUBSCRIBE` and the runtime
//!   still acknowledges what its listeners finish after cancelling.
//! - Envelope headers arrive as they were sent, including values with line
//!   breaks, `:` and `\`; names the broker reserves travel escaped
//!   ([`ESCAPE_PREFIX`]).
//! - A lost session makes consumer streams yield an error and end, and sends
//!   fail with [`eventing::Error::Unavailable`]; the next send reopens the
//!   sending session. Unacknowledged messages of a lost or dropped consumer are
//!   redelivered, so listeners must tolerate duplicates.
//!
//! The [`frame`] and [`codec`] modules hold the STOMP 1.2 frame model and a
//! [`tokio_util::codec`] codec with size limits:
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

pub mod activemq;
pub mod codec;
pub mod frame;

mod admin;
mod config;
mod connection;
mod consumer;
mod dead_letters;
mod dialect;
mod error;
mod provider;
mod publish;
mod shared;
mod topology;
mod transport;

pub use admin::RabbitAdmin;
pub use config::{DEFAULT_PORT, DEFAULT_TLS_PORT, StompConfig};
pub use dialect::{Dialect, ESCAPE_PREFIX};
pub use error::{BrokerError, StompError};
pub use eventing_rabbitmq::PER_PROCESS_DEAD_LETTER_TTL;
pub use provider::StompProvider;

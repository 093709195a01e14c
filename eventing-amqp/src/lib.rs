//! AMQP 0-9-1 provider for [`eventing`], on [lapin](https://docs.rs/lapin) and tokio;
//! tested against RabbitMQ.
//!
//! Link the crate once and pick it by URL: it registers the `amqp` and `amqps`
//! schemes.
//!
//! ```no_run
//! use eventing::{event, event_listener, Context, EventListener, EventManager, ListenerResult};
//! use eventing_amqp as _; // links the provider: `amqp://` URLs now work
//! use serde::{Deserialize, Serialize};
//!
//! #[event(durable = true)]
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { id: u64 }
//!
//! #[event_listener(OrderPlaced)]
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
//!     .url("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .build()
//!     .await?;
//! manager.start().await?;
//! // Returns once RabbitMQ confirmed the persistent message.
//! manager.send_event(&OrderPlaced { id: 7 }).await?;
//! manager.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # On the broker
//!
//! Each event is a fanout exchange named by its address; each listener's queue
//! (`<event>::<listener>`, or `<event>::<listener>-<server>` for per-process
//! listeners) is bound to it, with a durable `<queue>.dlq` beside it. Durable events
//! use durable exchanges and queues and persistent messages, and `send_event`
//! returns only after the broker's publisher confirm (a nack is
//! [`Error::Refused`](eventing::Error::Refused), no confirm in time is
//! [`Error::Timeout`](eventing::Error::Timeout)). Per-process queues are exclusive:
//! the broker deletes them when their manager's connection closes. Competing queues
//! of non-durable events are durable queues holding transient messages (RabbitMQ 4
//! deprecates transient non-exclusive queues).
//!
//! Headers travel as AMQP properties (`message-id`, `content-type`, `timestamp` in
//! seconds) and a headers table of long strings (every other header, and the exact
//! `timestamp`); a message from another client without them is still consumed.
//! Names that RabbitMQ's STOMP plugin reserves (`reply-to`, `timestamp`, `receipt`,
//! ...) are stored as `x-eventing-<name>`, as eventing-stomp does, so the two
//! providers can share a broker and exchange events.
//!
//! # Connections
//!
//! A provider opens two connections, one for publishing and one for consuming:
//! RabbitMQ stops reading from a connection that publishes faster than its queues
//! take messages, and on a shared connection that would also hold back the
//! consumers' acknowledgements until their prefetch windows fill and they stall.
//!
//! # Delivery
//!
//! Prefetch is `basic.qos` on each consumer's channel. Acknowledgements are batched
//! into `basic.ack(multiple)` frames, sent when a batch fills, when the consumer has
//! no delivery waiting, or within 5 ms. A message is acknowledged only after its
//! listener succeeded; if the process dies first, or the connection drops, the broker
//! delivers it again, so listeners must tolerate duplicates. Dead letters are stored
//! persistently in `<queue>.dlq` and confirmed before the original is acknowledged.
//!
//! A lost connection ends the consumers' streams (the runtime subscribes again, with
//! backoff); the next declaration, subscription or send opens a new connection.
//! Sends while the broker is away fail with
//! [`Error::Unavailable`](eventing::Error::Unavailable) (at most one connection
//! attempt per 250 ms is made for all of them) and can be retried. Messages of a
//! per-process queue sent while its server was disconnected are lost with the
//! exclusive queue; competing queues keep theirs.
//!
//! # Features
//!
//! - `rustls`: `amqps://` through rustls (ring, the system's root certificates).

mod ack;
mod consume;
mod error;
mod headers;
mod link;
mod provider;
mod publish;
mod topology;
mod url;

pub use error::AmqpError;
pub use provider::AmqpProvider;
pub use topology::PER_PROCESS_DEAD_LETTER_TTL;

use std::sync::Arc;

use eventing::{BoxFuture, Provider, ProviderConfig, Result};

fn connect(config: ProviderConfig) -> BoxFuture<'static, Result<Arc<dyn Provider>>> {
    Box::pin(async move {
        let provider = AmqpProvider::connect(config).await?;
        Ok(Arc::new(provider) as Arc<dyn Provider>)
    })
}

eventing::register_provider!(["amqp", "amqps"], connect);

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
//! returns only after the broker's publisher confirm (a nacked message is
//! published again on a new channel until the send timeout, then it is
//! [`Error::Refused`](eventing::Error::Refused); a connected broker that gives no
//! confirm within the send timeout is [`Error::Timeout`](eventing::Error::Timeout);
//! never `Ok` without the confirm). Per-process queues are exclusive:
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
//! Unless the URL sets `frame_max`, the provider asks for 32 KiB frames rather
//! than RabbitMQ's 128 KiB: lapin keeps a receive and a send buffer of 32 frames
//! per connection, so that is at most 2 MiB per connection instead of 8 MiB (which
//! lapin fills with zeros as soon as it learns the broker's frame size, making it
//! resident at once). Larger bodies travel as more frames.
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
//!
//! A send (and a dead letter) that fails because the connection or its channel went
//! away (I/O errors, a missed heartbeat, the broker closing the connection, as with
//! 320 CONNECTION_FORCED when it shuts down, a channel closed under the publish, or
//! an exchange deleted under it) is made again on a new channel or connection,
//! with exponential backoff from 20 ms to 1 s and jitter, for as long as the send
//! timeout ([`ProviderConfig::send_timeout`](eventing::provider::ProviderConfig), set with
//! `EventManagerBuilder::send_timeout`) allows, less a small margin; then it fails
//! with [`Error::Unavailable`](eventing::Error::Unavailable) and the last reason.
//! While the broker is away, at most one connection attempt per 250 ms is made for
//! all of them. Errors that would come back the same (access refused, a message
//! over the broker's size limit, a name too long) fail at once. A publish whose
//! confirm was lost with the connection may have reached the broker, so a send
//! retried here or by the caller can be stored twice: at least once, as everywhere
//! else. Messages of a per-process queue sent while its server was disconnected are
//! lost with the exclusive queue; competing queues keep theirs.
//!
//! # Dead letters
//!
//! `dead_letters` reads `<queue>.dlq` with `basic.get` and puts the messages back
//! unacknowledged, so the listing leaves the queue as it was.
//!
//! Replaying them is the runtime's (`EventManager::replay_dead_letters`), over three
//! primitives: the depth of `<queue>.dlq` (a passive `queue.declare`; a missing
//! queue is [`Error::QueueNotFound`](eventing::Error::QueueNotFound), a missing
//! dead-letter queue holds none), a consumer of `<queue>.dlq` (`basic.consume`
//! with `basic.qos` = the replay's window; acknowledgements given before it is
//! cancelled reach the broker before the cancel, the rest return to the
//! dead-letter queue when its channel closes) and a send to the queue alone
//! (persistent, `mandatory`, through the default exchange with the queue's name
//! as routing key, confirmed; a returned message is `QueueNotFound`).
//!
//! A received body over the manager's `max_body_size` is dead-lettered by the
//! runtime with the reason, before decoding; lapin reassembles a message of any
//! size the broker accepts (RabbitMQ's `max_message_size`, 128 MiB by default).
//!
//! # Quorum queues
//!
//! `?queue_type=quorum` declares competing queues and their `<queue>.dlq` as
//! RabbitMQ quorum queues (replicated in a cluster) with `x-delivery-limit`
//! (`?delivery_limit=N`, default 20): past it the broker dead-letters the message
//! to `<queue>.dlq` itself, and listing dead letters gives the reason. Per-process
//! queues stay classic (quorum queues cannot be exclusive).
//!
//! # Clusters: failover
//!
//! `?failover=host:port,host:port` lists other nodes of a RabbitMQ cluster (as
//! Spring AMQP's `addresses`): the same credentials, vhost, scheme and TLS
//! settings apply to them. Each connection (the publishing and the consuming one
//! separately) that must be opened again tries the hosts in turn: first the one
//! that worked last, then the others in the URL's order (the URL's own host
//! first). Each attempt has an equal share of the send timeout (at least 500 ms),
//! so a node that does not answer cannot use up the round; a round that reaches
//! no host fails like a lost broker (at most one round per 250 ms, sends retried
//! until the send timeout). Each host that fails and each failover is logged at
//! `warn` with the redacted URL and the `host:port`. An entry that is not
//! `host:port` (a host name or IPv4 address and a port from 1 to 65535), an empty
//! or repeated entry, an IPv6 literal, or more than 32 hosts is
//! [`Error::InvalidUrl`](eventing::Error::InvalidUrl).
//!
//! A publish the broker nacks is made again on a new channel, with backoff,
//! until the send timeout: on RabbitMQ 3.10, a publishing channel opened while a
//! quorum queue elects a new leader (which is what failing over after a node dies
//! does) was seen to be nacked on every publish afterwards, while a new channel on
//! the same node was acknowledged. A queue that keeps refusing (a full queue with
//! `x-overflow: reject-publish`) makes the send wait up to the send timeout, then
//! fail with [`Error::Refused`](eventing::Error::Refused).
//!
//! # Features
//!
//! - `rustls`: `amqps://` through rustls (ring, the system's root certificates;
//!   `?tls_ca=<pem file>` adds a private CA).

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
pub use eventing_rabbitmq::PER_PROCESS_DEAD_LETTER_TTL;
pub use provider::AmqpProvider;

use eventing::provider::{ConnectFuture, Provider, ProviderConfig};

fn connect(config: ProviderConfig) -> ConnectFuture {
    Box::pin(async move { Ok(AmqpProvider::connect(config).await?.into_dyn()) })
}

eventing::register_provider!(["amqp", "amqps"], connect);

//! A subscription as a [`Consumer`], and its [`Acker`].
//!
//! Each consumer has its own STOMP session, so that dropping it (or losing its
//! connection) returns exactly its unacknowledged messages to the queue, and a
//! per-process queue (exclusive to that session) disappears with it.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use eventing::{Acker, BoxFuture, Consumer, Delivery, Envelope, QueueSpec};
use futures_util::Stream;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::connection::Connection;
use crate::dialect::Dialect;
use crate::error::StompError;
use crate::frame::{Command, Frame};
use crate::provider::Inner;

/// The subscription id of a consumer's session (one subscription per session).
pub(crate) const SUBSCRIPTION_ID: &str = "0";

/// The consumer of one queue.
pub(crate) struct StompConsumer {
    rx: mpsc::Receiver<Frame>,
    settle: Arc<Settle>,
    acker: Arc<dyn Acker>,
    dialect: Dialect,
    next_tag: u64,
    cancelled: bool,
    reported: bool,
}

/// What the acker needs; shared by the consumer and its deliveries.
struct Settle {
    conn: Connection,
    provider: Arc<Inner>,
    queue: QueueSpec,
    /// Delivery tag -> the MESSAGE's `ack` header.
    pending: Mutex<HashMap<u64, String>>,
    cancelled: AtomicBool,
}

impl StompConsumer {
    pub(crate) fn new(
        conn: Connection,
        rx: mpsc::Receiver<Frame>,
        provider: Arc<Inner>,
        queue: QueueSpec,
    ) -> StompConsumer {
        let dialect = provider.dialect();
        let settle = Arc::new(Settle {
            conn,
            provider,
            queue,
            pending: Mutex::new(HashMap::new()),
            cancelled: AtomicBool::new(false),
        });
        StompConsumer {
            rx,
            acker: Arc::new(StompAcker(Arc::clone(&settle))),
            settle,
            dialect,
            next_tag: 0,
            cancelled: false,
            reported: false,
        }
    }
}

impl Stream for StompConsumer {
    type Item = eventing::Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match ready!(this.rx.poll_recv(cx)) {
                Some(frame) => {
                    let Some(ack) = frame.get("ack").map(str::to_owned) else {
                        tracing::error!(
                            queue = %this.settle.queue.name,
                            "MESSAGE without an `ack` header; it cannot be settled"
                        );
                        continue;
                    };
                    let redelivered = frame.get("redelivered") == Some("true");
                    this.next_tag += 1;
                    let tag = this.next_tag;
                    this.settle.pending.lock().insert(tag, ack);
                    let delivery = Delivery {
                        envelope: this.dialect.envelope_of(frame),
                        tag,
                        redelivered,
                        acker: Arc::clone(&this.acker),
                    };
                    return Poll::Ready(Some(Ok(delivery)));
                }
                None if !this.cancelled && !this.reported => {
                    // The session ended under us: say why once, then end.
                    this.reported = true;
                    let error = this
                        .settle
                        .conn
                        .close_reason()
                        .unwrap_or(StompError::Closed {
                            reason: "subscription ended".into(),
                        });
                    tracing::warn!(
                        event = %this.settle.queue.event,
                        queue = %this.settle.queue.name,
                        %error,
                        "STOMP consumer lost its connection"
                    );
                    return Poll::Ready(Some(Err(error.into_eventing())));
                }
                None => return Poll::Ready(None),
            }
        }
    }
}

impl Consumer for StompConsumer {
    /// Stops handing out messages: the stream yields what it has buffered and
    /// ends. The subscription itself ends (`UNSUBSCRIBE`, `DISCONNECT`) when the
    /// consumer is dropped, because RabbitMQ refuses `ACK`s of a subscription
    /// after its `UNSUBSCRIBE` ("Subscription not found"), and the runtime still
    /// acknowledges the messages its listeners are finishing. Messages the
    /// broker pushes meanwhile are left unacknowledged and return to the queue
    /// when the session closes.
    fn cancel(&mut self) -> BoxFuture<'_, eventing::Result<()>> {
        self.cancelled = true;
        self.settle.cancelled.store(true, Ordering::Relaxed);
        self.rx.close();
        tracing::debug!(queue = %self.settle.queue.name, "consumer cancelled");
        Box::pin(std::future::ready(Ok(())))
    }
}

impl Drop for StompConsumer {
    fn drop(&mut self) {
        self.settle.cancelled.store(true, Ordering::Relaxed);
        let unsubscribe = Frame::new(Command::Unsubscribe).header("id", SUBSCRIPTION_ID);
        self.settle.conn.close_soon(Some(unsubscribe));
    }
}

/// Settles deliveries by their `ack` id: `ACK`, `NACK`, or a dead letter sent
/// with a receipt before the `ACK`. Acknowledgements carry no receipt.
struct StompAcker(Arc<Settle>);

impl Settle {
    fn ack(&self, tag: u64) {
        if let Some(id) = self.pending.lock().remove(&tag) {
            self.conn
                .send_now(&Frame::new(Command::Ack).header("id", id));
        }
    }
}

impl Acker for StompAcker {
    fn ack(&self, tag: u64) {
        self.0.ack(tag);
    }

    fn requeue(&self, tag: u64) {
        let Some(id) = self.0.pending.lock().remove(&tag) else {
            return;
        };
        if self.0.cancelled.load(Ordering::Relaxed) {
            // A NACK now would hand the message straight back to this still
            // subscribed session; closing the session returns it instead.
            return;
        }
        self.0.conn.send_now(
            &Frame::new(Command::Nack)
                .header("id", id)
                .header("requeue", "true"),
        );
    }

    fn dead_letter(
        &self,
        tag: u64,
        envelope: Envelope,
    ) -> BoxFuture<'static, eventing::Result<()>> {
        let settle = Arc::clone(&self.0);
        Box::pin(async move {
            // Sent on the provider's publishing session: its receipt cannot be
            // held up by this consumer's back-pressure.
            settle
                .provider
                .send_dead_letter(&settle.queue, &envelope)
                .await?;
            settle.ack(tag);
            Ok(())
        })
    }
}

//! A subscription as a [`Consumer`], and its [`Acker`].
//!
//! Each consumer has its own STOMP session, so that dropping it (or losing its
//! connection) returns exactly its unacknowledged messages to the queue, and a
//! per-process queue (exclusive to that session) disappears with it.
//!
//! # Messages the client cannot read
//!
//! A `MESSAGE` over the frame limit (`max_frame`), with a header section over
//! its limits or with malformed header lines (such as a header that is not
//! UTF-8, which RabbitMQ passes through from other clients) reaches the
//! consumer as [`Inbound::Rejected`]: the decoder skipped what it could not
//! take, bounded in memory. Closing the session over it would only make the
//! broker deliver it again, forever, so instead:
//!
//! - with its `ack` header readable (always the case on RabbitMQ, which writes
//!   it among the first lines), it is dead-lettered to `<queue>.dlq` with the
//!   headers that could be read, the body unless the frame was too large, and
//!   `x-dead-letter-reason` (e.g. `frame of 20971620 bytes exceeds the client's
//!   limit of 16777216 bytes; body dropped`), `x-dead-letter-attempts: 0`,
//!   `x-dead-letter-queue` and `x-dead-letter-listener`; after the broker's
//!   receipt it is acknowledged. Sending is retried with backoff while the
//!   session lasts. The runtime never sees it, so it is not in the manager's
//!   counters: [`StompProvider::unreadable_dead_lettered`](crate::StompProvider::unreadable_dead_lettered)
//!   counts it, and each one is logged at error level;
//! - without a readable `ack` header (and so a readable `MESSAGE` without one)
//!   it can be neither acknowledged nor dead-lettered: it stays unacknowledged
//!   on its session (so it is not lost, and the broker takes it back when the
//!   session ends), logged at error level and counted by
//!   [`StompProvider::unreadable_held`](crate::StompProvider::unreadable_held).
//!   Other messages go on. Once such messages hold every prefetch slot the
//!   session can make no progress: it ends with an error, and the provider
//!   refuses to subscribe to that queue again for a growing while (1 s,
//!   doubling, at most 5 min), so the listener stays `Reconnecting` in
//!   `EventManager::health()` and every attempt logs why, until a session of
//!   the queue receives a readable message again. An operator has to remove
//!   those messages (or raise the limits).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use eventing::backoff::Backoff;
use eventing::provider::{Acker, Consumer, Delivery};
use eventing::topology::QueueSpec;
use eventing::{BoxFuture, Envelope, header};
use futures_util::Stream;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::codec::{CodecLimits, FrameError, Rejected, StompCodec};
use crate::connection::{Connection, Inbound, Options};
use crate::dialect::Dialect;
use crate::error::StompError;
use crate::frame::{Command, Frame};
use crate::shared::Shared;

/// The subscription id of a consumer's session (one subscription per session).
const SUBSCRIPTION_ID: &str = "0";

/// The header a listed dead letter gets when this client could not read it
/// whole: why (the letter's body is empty when it was too large).
pub(crate) const UNREADABLE: &str = "x-stomp-unreadable";

/// The wait between attempts to dead-letter an unreadable message: 500 ms
/// doubling up to 30 s, with jitter.
const DEAD_LETTER_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// The consumer of one queue, or of one dead-letter queue (for a replay).
pub(crate) struct StompConsumer {
    rx: mpsc::Receiver<Inbound>,
    kind: Kind,
    settle: Arc<Settle>,
    acker: Arc<dyn Acker>,
    dialect: Dialect,
    next_tag: u64,
    cancelled: bool,
    /// `UNSUBSCRIBE` was sent already (a dead-letter consumer's `cancel`).
    unsubscribed: bool,
    reported: bool,
    /// The subscription's prefetch.
    prefetch: usize,
    /// Unreadable messages without an `ack` id held unacknowledged.
    held: usize,
    /// This session received a readable message.
    progressed: bool,
    /// Held messages filled the prefetch window: the stream has ended.
    stuck: bool,
}

/// What a consumer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A listener's queue: unreadable messages are dead-lettered, a requeue is
    /// a `NACK`.
    Queue,
    /// A dead-letter queue: unreadable letters and requeued ones stay where they
    /// are (unacknowledged, they return when the session closes), nothing is
    /// dead-lettered again, and `cancel` waits until the broker has the `ACK`s.
    DeadLetters,
}

/// What the acker needs; shared by the consumer and its deliveries.
struct Settle {
    kind: Kind,
    conn: Connection,
    shared: Arc<Shared>,
    queue: QueueSpec,
    /// Delivery tag -> the MESSAGE's `ack` header (and, where a requeue is not a
    /// `NACK`, the envelope to hand out again).
    pending: Mutex<HashMap<u64, Pending>>,
    /// Requeued deliveries to hand out again (ActiveMQ), and the waker of the
    /// stream waiting for one.
    requeued: Mutex<(VecDeque<Pending>, Option<Waker>)>,
    cancelled: AtomicBool,
}

/// An unsettled delivery.
struct Pending {
    /// The `ack` header of its `MESSAGE`.
    ack: String,
    /// Its envelope, kept where a requeue hands it out again.
    envelope: Option<Envelope>,
}

impl StompConsumer {
    /// Subscribes to `queue` (a listener's queue) on a session of its own,
    /// `prefetch` unacknowledged at a time.
    pub(crate) async fn subscribe(
        shared: Arc<Shared>,
        queue: &QueueSpec,
        prefetch: u16,
    ) -> Result<StompConsumer, StompError> {
        let frame = shared.dialect().subscribe_frame_with(
            queue,
            SUBSCRIPTION_ID,
            prefetch.max(1),
            shared.config.queue_type,
        );
        StompConsumer::open(Kind::Queue, shared, queue, prefetch, frame).await
    }

    /// Takes `queue`'s dead letters (a client-individual subscription to its
    /// dead-letter queue) on a session of its own, `prefetch` at a time: an ack
    /// removes one, the rest return when the consumer is dropped. `None` if there
    /// is no dead-letter queue.
    pub(crate) async fn take_dead_letters(
        shared: Arc<Shared>,
        queue: &QueueSpec,
        prefetch: u16,
    ) -> Result<Option<StompConsumer>, StompError> {
        let frame =
            shared
                .dialect()
                .dead_letter_take_frame(queue, SUBSCRIPTION_ID, prefetch.max(1));
        match StompConsumer::open(Kind::DeadLetters, shared, queue, prefetch, frame).await {
            Ok(consumer) => Ok(Some(consumer)),
            Err(StompError::Broker(error)) if error.message == "not_found" => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Opens a session and sends `subscribe` on it.
    async fn open(
        kind: Kind,
        shared: Arc<Shared>,
        queue: &QueueSpec,
        prefetch: u16,
        subscribe: Frame,
    ) -> Result<StompConsumer, StompError> {
        let prefetch = prefetch.max(1);
        // At most `prefetch` deliveries are unsettled, so at most that many ACK
        // or NACK frames wait for the writer: it never makes an acker wait.
        let options = Options {
            role: match kind {
                Kind::Queue => "consumer",
                Kind::DeadLetters => "dead-letter reader",
            },
            capacity: 2 * usize::from(prefetch) + 16,
        };
        let conn = shared.session(options).await?;
        let rx = conn.subscription(SUBSCRIPTION_ID, usize::from(prefetch) + 16);
        if let Err(error) = conn
            .request(subscribe, shared.send_timeout, "SUBSCRIBE")
            .await
        {
            conn.close().await;
            return Err(error);
        }
        Ok(StompConsumer::of(
            kind,
            conn,
            rx,
            shared,
            queue.clone(),
            prefetch,
        ))
    }

    /// Whether a requeue hands the delivery out again here rather than
    /// sending `NACK` (ActiveMQ, a listener's queue).
    fn local_requeue(&self) -> bool {
        self.kind == Kind::Queue && !self.dialect.nack_requeues()
    }

    /// A requeued delivery to hand out again, if any (the waker is kept for the
    /// next requeue otherwise). None once the session is over: the broker gives
    /// the message to another consumer then.
    fn requeued(&self, waker: &Waker) -> Option<Pending> {
        if self.local_requeue() && !self.settle.conn.is_closed() {
            self.settle.requeued_or_wait(waker)
        } else {
            None
        }
    }

    /// The consumer's session.
    pub(crate) fn session(&self) -> &Connection {
        &self.settle.conn
    }

    fn of(
        kind: Kind,
        conn: Connection,
        rx: mpsc::Receiver<Inbound>,
        shared: Arc<Shared>,
        queue: QueueSpec,
        prefetch: u16,
    ) -> StompConsumer {
        let dialect = shared.dialect();
        let settle = Arc::new(Settle {
            kind,
            conn,
            shared,
            queue,
            pending: Mutex::new(HashMap::new()),
            requeued: Mutex::new((VecDeque::new(), None)),
            cancelled: AtomicBool::new(false),
        });
        StompConsumer {
            rx,
            kind,
            acker: Arc::new(StompAcker(Arc::clone(&settle))),
            settle,
            dialect,
            next_tag: 0,
            cancelled: false,
            unsubscribed: false,
            reported: false,
            prefetch: usize::from(prefetch.max(1)),
            held: 0,
            progressed: false,
            stuck: false,
        }
    }

    /// Dead-letters and acknowledges a message the decoder could not take
    /// whole, or holds it if it has no `ack` id. Returns an error when held
    /// messages fill the prefetch window: the session can do nothing more.
    fn reject(&mut self, rejected: Rejected) -> Option<StompError> {
        let settle = &self.settle;
        let queue = &settle.queue;
        if self.kind == Kind::DeadLetters {
            // It cannot be sent again as it was: it stays in the dead-letter queue
            // (unacknowledged, it returns there when the session closes).
            tracing::warn!(
                queue = %queue.name,
                size = rejected.size,
                reason = %rejected,
                "a dead letter this client cannot read whole is left in place"
            );
            return None;
        }
        let Unreadable {
            ack,
            stomp_id,
            size,
            reason,
            letter,
        } = Unreadable::new(self.dialect, queue, rejected);
        let Some(ack) = ack else {
            return self.hold(letter.message_id(), &stomp_id, size, &reason);
        };
        tracing::error!(
            event = %queue.event,
            queue = %queue.name,
            listener = queue.listener,
            message_id = %letter.message_id(),
            %stomp_id,
            size,
            %reason,
            "received a message this client cannot read whole; dead-lettering it"
        );
        let letter = fit_dead_letter(settle.conn.limits(), self.dialect, queue, letter, &reason);
        tokio::spawn(dead_letter_unreadable(Arc::clone(settle), ack, letter));
        None
    }

    /// Leaves a message without a readable `ack` id unacknowledged on this
    /// session. Returns an error when such messages fill the prefetch window.
    fn hold(
        &mut self,
        message_id: &str,
        stomp_id: &str,
        size: usize,
        reason: &str,
    ) -> Option<StompError> {
        let settle = &self.settle;
        let queue = &settle.queue;
        if self.kind == Kind::DeadLetters {
            tracing::warn!(
                queue = %queue.name,
                %message_id,
                %stomp_id,
                size,
                %reason,
                "a dead letter without a readable `ack` header is left in place"
            );
            return None;
        }
        self.held += 1;
        settle.shared.count_unreadable_held();
        tracing::error!(
            event = %queue.event,
            queue = %queue.name,
            listener = queue.listener,
            %message_id,
            %stomp_id,
            size,
            %reason,
            held = self.held,
            prefetch = self.prefetch,
            "received a message without a readable `ack` header: it can be neither \
             acknowledged nor dead-lettered, so it stays unacknowledged on this session \
             and returns to the queue when the session ends"
        );
        if self.held < self.prefetch {
            return None;
        }
        let wait = settle.shared.hold_queue(&queue.name);
        let error = StompError::Closed {
            reason: format!(
                "all {} prefetch slots of queue `{}` are held by messages this client can \
                 neither acknowledge nor dead-letter; closing the session (the broker takes \
                 them back) and not subscribing again for {wait:?}",
                self.prefetch, queue.name
            ),
        };
        tracing::error!(queue = %queue.name, %error, "STOMP consumer stuck");
        Some(error)
    }

    /// Ends the stream after `error`: the session closes and the broker takes
    /// the held messages (and whatever else was buffered) back.
    fn end_stuck(&mut self, error: StompError) -> Poll<Option<eventing::Result<Delivery>>> {
        self.stuck = true;
        self.rx.close();
        self.settle.cancelled.store(true, Ordering::Relaxed);
        let unsubscribe = Frame::new(Command::Unsubscribe).header("id", SUBSCRIPTION_ID);
        self.settle.conn.close_soon(Some(unsubscribe));
        Poll::Ready(Some(Err(error.into_eventing())))
    }
}

/// A message the decoder could not take whole, made ready for its dead letter.
struct Unreadable {
    /// Its `ack` id, if that header could be read.
    ack: Option<String>,
    /// The broker's `message-id`, for the logs (the envelope's may be missing).
    stomp_id: String,
    /// Its size on the wire.
    size: usize,
    /// What was wrong.
    reason: String,
    /// The envelope as far as it could be read, with the dead-letter headers:
    /// the reason, 0 attempts (the listener never saw it), queue and listener.
    letter: Envelope,
}

impl Unreadable {
    fn new(dialect: Dialect, queue: &QueueSpec, rejected: Rejected) -> Unreadable {
        let reason = rejected.to_string();
        let ack = rejected.frame.get("ack").map(str::to_owned);
        let stomp_id = rejected.frame.get("message-id").unwrap_or("").to_owned();
        let size = rejected.size;
        let mut letter = dialect.envelope_of(rejected.frame);
        let headers = &mut letter.headers;
        headers.insert(header::DEAD_LETTER_REASON, &reason);
        headers.insert(header::DEAD_LETTER_ATTEMPTS, "0");
        headers.insert(header::DEAD_LETTER_QUEUE, &queue.name);
        headers.insert(header::DEAD_LETTER_LISTENER, queue.listener);
        Unreadable {
            ack,
            stomp_id,
            size,
            reason,
            letter,
        }
    }
}

/// Sends the dead letter of an unreadable message and then acknowledges the
/// message, retrying with backoff while its session lasts (afterwards the
/// broker delivers the message again, to be dead-lettered then).
async fn dead_letter_unreadable(settle: Arc<Settle>, ack: String, letter: Envelope) {
    let queue = &settle.queue;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match settle.shared.publisher.dead_letter(queue, &letter).await {
            Ok(()) => {
                settle
                    .conn
                    .send_now(&Frame::new(Command::Ack).header("id", ack));
                settle.shared.count_unreadable_dead_lettered();
                tracing::info!(
                    queue = %queue.name,
                    message_id = %letter.message_id(),
                    "unreadable message dead-lettered and acknowledged"
                );
                return;
            }
            Err(error) => {
                if settle.conn.is_closed() {
                    tracing::error!(
                        queue = %queue.name,
                        message_id = %letter.message_id(),
                        %error,
                        "dead-lettering an unreadable message failed and its session is over; \
                         the broker delivers it again"
                    );
                    return;
                }
                let wait = DEAD_LETTER_BACKOFF.delay(attempt);
                tracing::error!(
                    queue = %queue.name,
                    message_id = %letter.message_id(),
                    %error,
                    retry_in = ?wait,
                    "dead-lettering an unreadable message failed; it stays unacknowledged"
                );
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = settle.conn.closed() => {}
                }
            }
        }
    }
}

/// Room left in a dead letter for the headers the broker adds when it delivers
/// it (RabbitMQ: `subscription`, `message-id`, `redelivered`, `ack`), so this
/// client can read its own dead letters back.
const BROKER_HEADROOM: (usize, usize) = (16, 1024);

/// Makes the dead letter of an unreadable message sendable with the session's
/// limits, and readable again with room for what the broker adds: headers past
/// that are left out (the standard and dead-letter headers stay), then the
/// body if it is still too large, and the reason says so.
fn fit_dead_letter(
    limits: CodecLimits,
    dialect: Dialect,
    queue: &QueueSpec,
    mut letter: Envelope,
    reason: &str,
) -> Envelope {
    const KEEP: [&str; 8] = [
        header::MESSAGE_ID,
        header::EVENT,
        header::TIMESTAMP,
        header::CONTENT_TYPE,
        header::DEAD_LETTER_REASON,
        header::DEAD_LETTER_ATTEMPTS,
        header::DEAD_LETTER_QUEUE,
        header::DEAD_LETTER_LISTENER,
    ];
    let (headers, bytes) = BROKER_HEADROOM;
    let codec = StompCodec::with_limits(CodecLimits {
        max_frame_bytes: limits.max_frame_bytes.saturating_sub(bytes).max(bytes),
        max_header_bytes: limits.max_header_bytes.saturating_sub(bytes).max(bytes),
        max_headers: limits
            .max_headers
            .saturating_sub(headers)
            .max(KEEP.len() + 8),
    });
    let mut left_out = 0usize;
    let mut body_dropped = false;
    let mut scratch = bytes::BytesMut::new();
    loop {
        if left_out > 0 || body_dropped {
            let mut text = reason.to_string();
            if left_out > 0 {
                text.push_str(&format!(
                    "; {left_out} more header(s) left out of the dead letter to fit the limits"
                ));
            }
            if body_dropped {
                text.push_str("; body left out of the dead letter to fit the frame limit");
            }
            letter.headers.insert(header::DEAD_LETTER_REASON, text);
        }
        let mut frame = dialect.dead_letter_frame(queue, &letter);
        let unsendable = dialect.unsendable(&frame).is_some();
        // As `Connection::request` will add it.
        frame.push_header("receipt", u64::MAX.to_string());
        scratch.clear();
        let too_large = match codec.encode_frame(&frame, &mut scratch) {
            Ok(()) if !unsendable => break,
            Ok(()) => false,
            Err(error) => matches!(error, FrameError::FrameTooLarge { .. }),
        };
        if too_large && !letter.body.is_empty() {
            letter.body = bytes::Bytes::new();
            body_dropped = true;
            continue;
        }
        // The last header that may go; with a name RabbitMQ cannot store first.
        let names: Vec<String> = letter
            .headers
            .iter()
            .map(|(name, _)| name.to_string())
            .filter(|name| !KEEP.contains(&name.as_str()))
            .collect();
        let victim = names
            .iter()
            .find(|name| unsendable && name.len() > 200)
            .or_else(|| names.last());
        let Some(victim) = victim else {
            // Nothing more to leave out: sending reports the error.
            break;
        };
        letter.headers.remove(victim);
        left_out += 1;
    }
    letter
}

/// A dead letter listed by this client that it could not read whole: the
/// headers it could read, the body unless it was too large, and [`UNREADABLE`]
/// saying why.
pub(crate) fn unreadable_letter(dialect: Dialect, rejected: Rejected) -> Envelope {
    let reason = rejected.to_string();
    tracing::error!(%reason, size = rejected.size, "a dead letter this client cannot read whole");
    let mut letter = dialect.envelope_of(rejected.frame);
    letter.headers.insert(UNREADABLE, reason);
    letter
}

impl Stream for StompConsumer {
    type Item = eventing::Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.stuck || (this.cancelled && this.kind == Kind::DeadLetters) {
            // What was buffered goes back to the broker with the session (the
            // subscription of dead letters is over: they could not be acknowledged).
            return Poll::Ready(None);
        }
        loop {
            if let Some(again) = this.requeued(cx.waker()) {
                this.next_tag += 1;
                let tag = this.next_tag;
                let envelope = again.envelope.clone().unwrap_or_default();
                this.settle.pending.lock().insert(tag, again);
                let acker = Arc::clone(&this.acker);
                let delivery = Delivery::new(envelope, tag, acker).redelivered(true);
                return Poll::Ready(Some(Ok(delivery)));
            }
            match ready!(this.rx.poll_recv(cx)) {
                Some(Inbound::Rejected(rejected)) => {
                    if let Some(error) = this.reject(rejected) {
                        return this.end_stuck(error);
                    }
                }
                Some(Inbound::Message(frame)) => {
                    let Some(ack) = frame.get("ack").map(str::to_owned) else {
                        let stomp_id = frame.get("message-id").unwrap_or("").to_owned();
                        let size = frame.body.len();
                        let envelope = this.dialect.envelope_of(frame);
                        let reason = "MESSAGE without an `ack` header";
                        if let Some(error) =
                            this.hold(envelope.message_id(), &stomp_id, size, reason)
                        {
                            return this.end_stuck(error);
                        }
                        continue;
                    };
                    if !this.progressed && this.kind == Kind::Queue {
                        this.progressed = true;
                        this.settle.shared.release_queue(&this.settle.queue.name);
                    }
                    let redelivered = frame.get("redelivered") == Some("true");
                    this.next_tag += 1;
                    let tag = this.next_tag;
                    let envelope = this.dialect.envelope_of(frame);
                    let kept = this.local_requeue().then(|| envelope.clone());
                    let pending = Pending {
                        ack,
                        envelope: kept,
                    };
                    this.settle.pending.lock().insert(tag, pending);
                    let acker = Arc::clone(&this.acker);
                    let delivery = Delivery::new(envelope, tag, acker).redelivered(redelivered);
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
        let first = !std::mem::replace(&mut self.cancelled, true);
        self.settle.cancelled.store(true, Ordering::Relaxed);
        self.rx.close();
        tracing::debug!(queue = %self.settle.queue.name, "consumer cancelled");
        if !first || self.kind == Kind::Queue || self.settle.conn.is_closed() {
            return Box::pin(std::future::ready(Ok(())));
        }
        // A replay acknowledges nothing after this: `UNSUBSCRIBE` now, and its
        // receipt says the broker has every `ACK` sent before it.
        Box::pin(async move {
            self.unsubscribed = true;
            let unsubscribe = Frame::new(Command::Unsubscribe).header("id", SUBSCRIPTION_ID);
            let wait = self.settle.shared.send_timeout;
            self.settle
                .conn
                .request(unsubscribe, wait, "UNSUBSCRIBE from dead letters")
                .await
                .map_err(StompError::into_eventing)
        })
    }
}

impl Drop for StompConsumer {
    fn drop(&mut self) {
        self.settle.cancelled.store(true, Ordering::Relaxed);
        let unsubscribe = (!self.unsubscribed)
            .then(|| Frame::new(Command::Unsubscribe).header("id", SUBSCRIPTION_ID));
        self.settle.conn.close_soon(unsubscribe);
    }
}

/// A consumer of nothing: the stream ends at once (a dead-letter queue that does
/// not exist holds no letters).
pub(crate) struct Finished;

impl Stream for Finished {
    type Item = eventing::Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(None)
    }
}

impl Consumer for Finished {
    fn cancel(&mut self) -> BoxFuture<'_, eventing::Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Settles deliveries by their `ack` id: `ACK`, `NACK`, or a dead letter sent
/// with a receipt before the `ACK`. Acknowledgements carry no receipt.
struct StompAcker(Arc<Settle>);

impl Settle {
    fn ack(&self, tag: u64) {
        if let Some(pending) = self.pending.lock().remove(&tag) {
            self.conn
                .send_now(&Frame::new(Command::Ack).header("id", pending.ack));
        }
    }

    /// The next requeued delivery, or none, and then the stream's waker is kept
    /// to be woken by the next requeue.
    fn requeued_or_wait(&self, waker: &Waker) -> Option<Pending> {
        let mut requeued = self.requeued.lock();
        let next = requeued.0.pop_front();
        if next.is_none() && !requeued.1.as_ref().is_some_and(|w| w.will_wake(waker)) {
            requeued.1 = Some(waker.clone());
        }
        next
    }
}

impl Acker for StompAcker {
    fn ack(&self, tag: u64) {
        self.0.ack(tag);
    }

    /// A `NACK` with `requeue:true`; on ActiveMQ, whose `NACK` moves the message
    /// to the broker's dead-letter queue, the delivery is handed out again by
    /// this consumer instead (it stays unacknowledged on the broker, which
    /// gives it to another consumer if this session ends first).
    fn requeue(&self, tag: u64) {
        let Some(pending) = self.0.pending.lock().remove(&tag) else {
            return;
        };
        if self.0.kind == Kind::DeadLetters || self.0.cancelled.load(Ordering::Relaxed) {
            // A NACK now would hand the message straight back to this still
            // subscribed session; closing the session returns it instead (a
            // dead letter to its place in the dead-letter queue).
            return;
        }
        if pending.envelope.is_some() {
            let waker = {
                let mut requeued = self.0.requeued.lock();
                requeued.0.push_back(pending);
                requeued.1.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
            return;
        }
        self.0.conn.send_now(
            &Frame::new(Command::Nack)
                .header("id", pending.ack)
                .header("requeue", "true"),
        );
    }

    fn dead_letter(
        &self,
        tag: u64,
        envelope: Envelope,
    ) -> BoxFuture<'static, eventing::Result<()>> {
        if self.0.kind == Kind::DeadLetters {
            // A letter of a dead-letter queue is not moved to another one.
            return Box::pin(std::future::ready(Err(eventing::Error::Unsupported {
                provider: crate::error::PROVIDER,
                operation: "dead-lettering a message of a dead-letter queue",
            })));
        }
        let settle = Arc::clone(&self.0);
        Box::pin(async move {
            // Sent on the provider's publishing session: its receipt cannot be
            // held up by this consumer's back-pressure.
            settle
                .shared
                .publisher
                .dead_letter(&settle.queue, &envelope)
                .await?;
            settle.ack(tag);
            Ok(())
        })
    }

    /// Sends the copy with a receipt so that it reaches this queue alone after
    /// `delay` (RabbitMQ: through `<queue>.delay.<ms>`), then `ACK`s.
    fn delay(
        &self,
        tag: u64,
        delay: std::time::Duration,
        envelope: Envelope,
    ) -> BoxFuture<'static, eventing::Result<()>> {
        let settle = Arc::clone(&self.0);
        let dialect = settle.shared.dialect();
        let frame = match (
            &settle.kind,
            dialect.delay_frame(&settle.queue, delay, &envelope),
        ) {
            (Kind::Queue, Some(frame)) => frame,
            _ => {
                return Box::pin(std::future::ready(Err(eventing::Error::Unsupported {
                    provider: crate::error::PROVIDER,
                    operation: "delayed redelivery on this broker or queue",
                })));
            }
        };
        Box::pin(async move {
            // A per-process queue's delay queues expire when unused: declared
            // again before use (see eventing_rabbitmq::topology).
            let on_demand = (dialect == crate::dialect::Dialect::RabbitMq
                && eventing_rabbitmq::topology::delay_queue_on_demand(&settle.queue))
            .then(|| eventing_rabbitmq::topology::delay_queue(&settle.queue, delay));
            settle
                .shared
                .publisher
                .to_waiting(frame, on_demand.as_ref(), &settle.queue.name, &envelope)
                .await?;
            settle.ack(tag);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use tokio_util::codec::Decoder;

    use super::*;
    use crate::codec::Received;

    fn queue() -> QueueSpec {
        QueueSpec::new("shop.Order", "Billing", true, false, "web-1")
    }

    /// Decodes one `MESSAGE` the decoder rejects.
    fn rejected(wire: &[u8], limits: CodecLimits) -> Rejected {
        let mut codec = StompCodec::with_limits(limits).recovering();
        let mut buf = BytesMut::from(wire);
        match codec.decode(&mut buf) {
            Ok(Some(Received::Rejected(rejected))) => rejected,
            other => panic!("expected a rejected message, got {other:?}"),
        }
    }

    #[test]
    fn an_oversized_message_becomes_a_dead_letter_with_the_reason() {
        let mut wire = b"MESSAGE\nsubscription:0\ndestination:/exchange/shop.Order\n\
            message-id:T_0@@session-x@@7\nredelivered:false\nack:T_0@@session-x@@7\n\
            amqp-message-id:m-1\nevent:shop.Order\nx-eventing-timestamp:2026-01-01T00:00:00Z\n\
            content-type:application/json\nsession-id:s-1\ncontent-length:5000\n\n"
            .to_vec();
        wire.extend_from_slice(&[b'x'; 5000]);
        wire.push(0);
        let limits = CodecLimits {
            max_frame_bytes: 2048,
            ..CodecLimits::default()
        };
        let unreadable = Unreadable::new(Dialect::RabbitMq, &queue(), rejected(&wire, limits));
        assert_eq!(unreadable.ack.as_deref(), Some("T_0@@session-x@@7"));
        assert_eq!(unreadable.stomp_id, "T_0@@session-x@@7");
        assert_eq!(unreadable.size, wire.len());
        let reason = format!(
            "frame of {} bytes exceeds the client's limit of 2048 bytes; body dropped",
            wire.len()
        );
        assert_eq!(unreadable.reason, reason);
        let letter = &unreadable.letter;
        assert!(letter.body.is_empty());
        let headers: Vec<(&str, &str)> = letter.headers.iter().collect();
        assert_eq!(
            headers,
            [
                (header::MESSAGE_ID, "m-1"),
                (header::EVENT, "shop.Order"),
                (header::TIMESTAMP, "2026-01-01T00:00:00Z"),
                (header::CONTENT_TYPE, "application/json"),
                ("session-id", "s-1"),
                (header::DEAD_LETTER_REASON, reason.as_str()),
                (header::DEAD_LETTER_ATTEMPTS, "0"),
                (header::DEAD_LETTER_QUEUE, "shop.Order::Billing"),
                (header::DEAD_LETTER_LISTENER, "Billing"),
            ]
        );
        // Small enough already: fitting leaves it as it is.
        let fitted = fit_dead_letter(
            limits,
            Dialect::RabbitMq,
            &queue(),
            letter.clone(),
            &unreadable.reason,
        );
        assert_eq!(&fitted, letter);
    }

    #[test]
    fn a_message_without_a_readable_ack_has_no_ack_id() {
        let limits = CodecLimits::default();
        let unreadable = Unreadable::new(
            Dialect::RabbitMq,
            &queue(),
            rejected(b"MESSAGE\nsubscription:0\nack:\xff\n\n\0", limits),
        );
        assert_eq!(unreadable.ack, None);
        assert_eq!(unreadable.reason, "header line 3 is not valid UTF-8");
    }

    #[test]
    fn fitting_leaves_out_headers_past_the_limits_but_keeps_the_standard_ones() {
        let mut letter = Envelope::new(
            "shop.Order",
            eventing::codec::JSON,
            Bytes::from_static(b"{}"),
        );
        for i in 0..200 {
            letter.headers.insert(format!("x-h{i}"), "v");
        }
        for (name, value) in [
            (header::DEAD_LETTER_REASON, "200 header lines"),
            (header::DEAD_LETTER_ATTEMPTS, "0"),
            (header::DEAD_LETTER_QUEUE, "q"),
            (header::DEAD_LETTER_LISTENER, "Billing"),
        ] {
            letter.headers.insert(name, value);
        }
        let limits = CodecLimits::default();
        let fitted = fit_dead_letter(
            limits,
            Dialect::RabbitMq,
            &queue(),
            letter,
            "200 header lines",
        );
        // Sendable with room for the receipt and what the broker adds.
        let mut frame = Dialect::RabbitMq.dead_letter_frame(&queue(), &fitted);
        frame.push_header("receipt", "1");
        for _ in 0..BROKER_HEADROOM.0 {
            frame.push_header("broker", "x");
        }
        StompCodec::with_limits(limits)
            .encode_frame(&frame, &mut BytesMut::new())
            .expect("fits with the broker's headers");
        assert_eq!(&fitted.body[..], b"{}");
        assert!(fitted.headers.get(header::MESSAGE_ID).is_some());
        assert_eq!(
            fitted.headers.get(header::DEAD_LETTER_LISTENER),
            Some("Billing")
        );
        let kept = fitted
            .headers
            .iter()
            .filter(|(name, _)| name.starts_with("x-h"))
            .count();
        let reason = fitted
            .headers
            .get(header::DEAD_LETTER_REASON)
            .expect("reason");
        assert_eq!(
            reason,
            format!(
                "200 header lines; {} more header(s) left out of the dead letter to fit the limits",
                200 - kept
            )
        );
        // The first ones stay.
        assert_eq!(fitted.headers.get("x-h0"), Some("v"));
        assert!(kept > 90, "{kept}");
    }

    #[test]
    fn fitting_leaves_out_a_body_too_large_for_the_dead_letter() {
        let limits = CodecLimits {
            max_frame_bytes: 4096,
            ..CodecLimits::default()
        };
        let mut letter = Envelope::new(
            "shop.Order",
            eventing::codec::JSON,
            Bytes::from(vec![b'b'; 4000]),
        );
        letter
            .headers
            .insert(header::DEAD_LETTER_REASON, "bad header");
        let fitted = fit_dead_letter(limits, Dialect::RabbitMq, &queue(), letter, "bad header");
        assert!(fitted.body.is_empty());
        assert_eq!(
            fitted.headers.get(header::DEAD_LETTER_REASON),
            Some("bad header; body left out of the dead letter to fit the frame limit")
        );
    }
}

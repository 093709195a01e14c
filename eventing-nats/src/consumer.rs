//! Consuming a JetStream pull consumer: the pull loop, the deliveries it yields and
//! how they are settled.
//!
//! The loop sends its own pull requests (`$JS.API.CONSUMER.MSG.NEXT`) to an inbox of
//! its own rather than using async-nats's `messages()`, to keep what is in flight at
//! this instance within its prefetch (requests ask for `prefetch - unsettled -
//! already requested`), and to stop cleanly on cancel: no new requests, what
//! arrives later is NAKed at once (it goes back to the queue for other instances)
//! instead of waiting out the ack wait in a buffer nobody reads.
//!
//! Status messages: `100` (heartbeat) is ignored, `404`/`408` end a request,
//! `409 Consumer Deleted` and `503` (no consumer answers) end the stream, so the
//! runtime declares and subscribes again with backoff. So does a lost connection
//! (the runtime shows it in `health()` and counts the reconnect; the server may have
//! restarted and forgotten our pull requests); deliveries already handed out are
//! still settled through the client once it is back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_nats::connection::State;
use async_nats::{StatusCode, Subject};
use bytes::Bytes;
use eventing::provider::{Acker, ChannelConsumer, Consumer, Delivery};
use eventing::topology::QueueSpec;
use eventing::{BoxFuture, Envelope, Result};
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::Inner;
use crate::delayed::{self, Job};

/// How long one pull request waits at the server.
const EXPIRES: Duration = Duration::from_secs(3);
/// After its expiry, how long a request is still counted (its 408 may be late).
const GRACE: Duration = Duration::from_millis(500);
/// At most how many messages that already arrived are handled per wake-up.
const DRAIN: usize = 64;
/// After cancel, how long late arrivals are NAKed before the inbox is closed.
const LINGER: Duration = Duration::from_millis(250);

/// What is consumed.
#[derive(Clone)]
pub(crate) enum Kind {
    /// A queue: messages put onto another queue alone (header
    /// [`crate::headers::TARGET_QUEUE`]) are acknowledged and skipped.
    Queue {
        /// The event of the queue: its messages leave out what the subject says
        /// (see [`crate::headers::event_to_nats`]).
        event: String,
        /// The escaped queue name this consumer's target header must carry.
        target: String,
        /// A per-process queue: its consumer is deleted when the subscription is
        /// cancelled or dropped (its server goes away), as RabbitMQ drops an
        /// exclusive queue with its connection.
        per_process: bool,
        /// The queue: where [`Acker::delay`] puts retry copies.
        queue: QueueSpec,
        /// Its delay queues, whose movers run while the subscription does
        /// ([`crate::delayed`]).
        waiting: Vec<Job>,
    },
    /// The dead letters of a queue: an ack deletes the letter from the dead-letter
    /// stream (it keeps messages until deleted); the consumer is deleted at the end.
    Letters,
}

pub(crate) struct Spec {
    pub(crate) stream: String,
    pub(crate) consumer: String,
    pub(crate) prefetch: usize,
    pub(crate) kind: Kind,
}

struct Pending {
    reply: Subject,
    stream_sequence: u64,
}

/// Settles the deliveries of one subscription.
pub(crate) struct Settle {
    inner: Arc<Inner>,
    stream: String,
    kind: Kind,
    pending: Arc<Mutex<FxHashMap<u64, Pending>>>,
    next_tag: AtomicU64,
    settled: Arc<Notify>,
    /// The pull loop is woken by an ack (or requeue) that leaves at most this many
    /// deliveries unsettled (-1: by none): the loop sets it to where it would send
    /// its next pull request, so a busy consumer wakes it once per request instead
    /// of once per message.
    wake_at: AtomicIsize,
    /// The dead-letter subject of the queue.
    dead_letter_subject: String,
}

impl Settle {
    fn take(&self, tag: u64) -> Option<Pending> {
        let (pending, left) = {
            let mut map = self.pending.lock();
            (map.remove(&tag), map.len())
        };
        if isize::try_from(left).unwrap_or(isize::MAX) <= self.wake_at.load(Ordering::Acquire) {
            self.settled.notify_one();
        }
        pending
    }

    fn unsettled(&self) -> usize {
        self.pending.lock().len()
    }
}

impl Acker for Settle {
    fn ack(&self, tag: u64) {
        let Some(pending) = self.take(tag) else {
            return;
        };
        if !matches!(self.kind, Kind::Letters) {
            self.inner.acks.send(pending.reply, b"");
            return;
        }
        let inner = Arc::clone(&self.inner);
        let stream = self.stream.clone();
        self.inner.acks.tasks.spawn(async move {
            // The dead-letter stream keeps messages: removing a letter is deleting it.
            inner.delete_message(&stream, pending.stream_sequence).await;
            inner.send_ack(pending.reply, b"").await;
        });
    }

    fn requeue(&self, tag: u64) {
        let Some(pending) = self.take(tag) else {
            return;
        };
        self.inner.acks.send(pending.reply, b"-NAK");
    }

    fn dead_letter(&self, tag: u64, letter: Envelope) -> BoxFuture<'static, Result<()>> {
        let reply = self.pending.lock().get(&tag).map(|p| p.reply.clone());
        let inner = Arc::clone(&self.inner);
        let subject = self.dead_letter_subject.clone();
        let pending = Arc::clone(&self.pending);
        let settled = Arc::clone(&self.settled);
        Box::pin(async move {
            let Some(reply) = reply else {
                return Ok(()); // settled already
            };
            // The letter is stored (publish ack) before the original is acknowledged;
            // if that fails the original stays unsettled and the runtime requeues it.
            inner.store_dead_letter(&subject, &letter).await?;
            pending.lock().remove(&tag);
            settled.notify_one();
            inner.confirm_ack(reply).await
        })
    }

    /// Stores a copy on the subject of the queue's delay queue for `delay` (see
    /// [`crate::delayed`]), then acknowledges the original.
    fn delay(
        &self,
        tag: u64,
        delay: Duration,
        envelope: Envelope,
    ) -> BoxFuture<'static, Result<()>> {
        let Kind::Queue { queue, .. } = &self.kind else {
            return Box::pin(std::future::ready(Err(eventing::Error::Unsupported {
                provider: crate::NAME,
                operation: "delaying a dead letter",
            })));
        };
        let subject = crate::names::delay_subject(&queue.delay_queue(delay));
        let reply = self.pending.lock().get(&tag).map(|p| p.reply.clone());
        let inner = Arc::clone(&self.inner);
        let pending = Arc::clone(&self.pending);
        let settled = Arc::clone(&self.settled);
        Box::pin(async move {
            let Some(reply) = reply else {
                return Ok(()); // settled already
            };
            let due = delayed::due_after(delay);
            // Stored before the original is acknowledged; if that fails the
            // original stays unsettled and the runtime decides.
            inner
                .store_waiting(subject, &envelope.headers, envelope.body, due, None)
                .await?;
            pending.lock().remove(&tag);
            settled.notify_one();
            // Not a confirmed ack: the copy is stored, and an ack lost on the way
            // only brings the original back after ack_wait (a duplicate, never a
            // loss), while waiting for a confirmation would halve how many
            // messages a consumer can move into the delay stage per second.
            inner.acks.send(reply, b"");
            Ok(())
        })
    }
}

/// Starts consuming `spec`.
pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    spec: Spec,
    dead_letter_subject: String,
) -> Result<Box<dyn Consumer>> {
    let inbox = inner.client.new_inbox();
    let subscriber = inner
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| crate::unavailable(format!("cannot subscribe to an inbox: {e}")))?;
    let settle = Arc::new(Settle {
        inner: Arc::clone(&inner),
        stream: spec.stream.clone(),
        kind: spec.kind.clone(),
        pending: Arc::new(Mutex::new(FxHashMap::default())),
        next_tag: AtomicU64::new(1),
        settled: Arc::new(Notify::new()),
        wake_at: AtomicIsize::new(isize::MAX),
        dead_letter_subject,
    });
    let (consumer, feed) = ChannelConsumer::new();
    let (tx, cancelled) = (feed.deliveries, feed.cancelled);
    if let Kind::Queue { waiting, .. } = &spec.kind {
        delayed::spawn_movers(&inner, waiting, &cancelled);
    }
    let mut disconnects = inner.disconnects.subscribe();
    disconnects.mark_unchanged();
    let pull = Pull {
        ack_prefix: format!("$JS.ACK.{}.{}.", spec.stream, spec.consumer),
        disconnects,
        inner,
        spec,
        inbox,
        subscriber,
        settle,
        tx,
        cancelled,
        requests: VecDeque::new(),
    };
    tokio::spawn(pull.run());
    Ok(Box::new(consumer))
}

struct Pull {
    /// Changes when the connection is lost: the stream then ends, so the runtime
    /// notices (health, reconnect count) and declares and subscribes again.
    disconnects: watch::Receiver<u64>,
    inner: Arc<Inner>,
    spec: Spec,
    inbox: String,
    subscriber: async_nats::Subscriber,
    settle: Arc<Settle>,
    tx: mpsc::UnboundedSender<Delivery>,
    cancelled: watch::Receiver<bool>,
    /// Requests in flight: (counted until, messages still owed).
    requests: VecDeque<(Instant, usize)>,
    /// `$JS.ACK.<stream>.<consumer>.`, how this consumer's ack subjects start
    /// (in the 2.9 form).
    ack_prefix: String,
}

enum Step {
    Go,
    /// The consumer or the connection is gone: end the stream.
    End(&'static str),
}

impl Pull {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        // One timer for the oldest request's expiry, moved only when that changes.
        let mut expiry = Box::pin(tokio::time::sleep(EXPIRES));
        let mut armed = None;
        let why = 'pull: loop {
            if *self.cancelled.borrow() || self.tx.is_closed() {
                break "cancelled";
            }
            self.request_more().await;
            let until = self.requests.front().map(|(until, _)| *until);
            if until != armed || expiry.is_elapsed() {
                expiry
                    .as_mut()
                    .reset(until.unwrap_or_else(|| Instant::now() + EXPIRES));
                armed = until;
            }
            tokio::select! {
                _ = self.cancelled.changed() => {}
                message = self.subscriber.next() => match message {
                    None => break "the connection closed",
                    Some(message) => {
                        if let Step::End(why) = self.on_message(message).await {
                            break why;
                        }
                        // What else has arrived already, without going round the
                        // select (and its timers) for each message.
                        for _ in 0..DRAIN {
                            let Some(Some(message)) = self.subscriber.next().now_or_never() else {
                                break;
                            };
                            if let Step::End(why) = self.on_message(message).await {
                                break 'pull why;
                            }
                        }
                    }
                },
                _ = self.settle.settled.notified() => {}
                _ = expiry.as_mut() => {
                    self.requests.pop_front();
                }
                _ = self.disconnects.changed() => break "the connection was lost",
                _ = tick.tick() => {
                    // Events can be dropped under load: look at the state too.
                    if self.inner.client.connection_state() == State::Disconnected {
                        break "the connection was lost";
                    }
                }
            }
        };
        tracing::debug!(consumer = %self.spec.consumer, why, "pull loop ends");
        // No more deliveries: the stream ends after what it holds.
        let Self {
            inner,
            spec,
            mut subscriber,
            tx,
            ..
        } = self;
        drop(tx);
        if why == "cancelled" {
            // What the server sent before it saw us go back to the queue at once.
            let deadline = Instant::now() + LINGER;
            while let Ok(Some(message)) = tokio::time::timeout_at(deadline, subscriber.next()).await
            {
                if message.status.is_none()
                    && let Some(reply) = message.reply
                {
                    inner.send_ack(reply, b"-NAK").await;
                }
            }
        }
        let _ = subscriber.unsubscribe().await;
        let owned = match &spec.kind {
            Kind::Letters => true,
            Kind::Queue { per_process, .. } => *per_process && why == "cancelled",
        };
        if owned {
            inner.delete_consumer(&spec.stream, &spec.consumer).await;
            if let Kind::Queue { waiting, .. } = &spec.kind {
                // A per-process queue's waiting retries go with it.
                inner.drop_jobs(waiting).await;
            }
        }
    }

    /// Asks for what this instance may take: its prefetch minus what it holds and
    /// what it asked for already; then tells [`Settle`] when to wake the loop for
    /// the next request.
    async fn request_more(&mut self) {
        let prefetch = self.spec.prefetch;
        // Small requests only when nothing is asked for, so a busy consumer sends
        // few requests.
        let smallest = |asked: usize| if asked > 0 { prefetch.div_ceil(4) } else { 1 };
        let mut asked: usize = self.requests.iter().map(|(_, n)| n).sum();
        let want = prefetch.saturating_sub(self.settle.unsettled() + asked);
        let mut failed = false;
        if want > 0 && want >= smallest(asked) {
            let body = format!("{{\"batch\":{want},\"expires\":{}}}", EXPIRES.as_nanos());
            let subject = format!(
                "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
                self.spec.stream, self.spec.consumer
            );
            match self
                .inner
                .client
                .publish_with_reply(subject, self.inbox.clone(), Bytes::from(body))
                .await
            {
                Ok(()) => {
                    self.requests
                        .push_back((Instant::now() + EXPIRES + GRACE, want));
                    asked += want;
                }
                Err(error) => {
                    tracing::debug!(%error, "pull request not sent");
                    failed = true;
                }
            }
        }
        // The next request goes out once prefetch - (unsettled + asked) reaches the
        // smallest request: wake at that many unsettled. Requests that end or
        // expire wake the loop by themselves.
        let limit = |n: usize| isize::try_from(n).unwrap_or(isize::MAX);
        let wake_at = limit(prefetch) - limit(asked) - limit(smallest(asked));
        let wake_at = wake_at.max(-1);
        self.settle.wake_at.store(wake_at, Ordering::Release);
        // An ack between the count above and this store would not have woken us
        // (after a failed request, the next tick tries again).
        if !failed && limit(self.settle.unsettled()) <= wake_at {
            self.settle.settled.notify_one();
        }
    }

    fn owed_one(&mut self) {
        if let Some((_, n)) = self.requests.front_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.requests.pop_front();
            }
        }
    }

    async fn on_message(&mut self, message: async_nats::Message) -> Step {
        if let Some(status) = message.status {
            let description = message.description.as_deref().unwrap_or("");
            return match status {
                StatusCode::IDLE_HEARTBEAT => Step::Go,
                StatusCode::NOT_FOUND | StatusCode::TIMEOUT => {
                    self.requests.pop_front();
                    Step::Go
                }
                StatusCode::NO_RESPONDERS => Step::End("no responders: the consumer is gone"),
                StatusCode::REQUEST_TERMINATED
                    if description.to_ascii_lowercase().contains("deleted") =>
                {
                    Step::End("the consumer was deleted")
                }
                _ => {
                    tracing::debug!(%status, description, consumer = %self.spec.consumer, "pull request ended");
                    self.requests.pop_front();
                    Step::Go
                }
            };
        }
        self.owed_one();
        let Some(reply) = message.reply.clone() else {
            return Step::Go;
        };
        let info = ack_info_after(&self.ack_prefix, &reply);
        let (delivered, stream_sequence) = info.map_or((1, 0), |i| (i.delivered, i.sequence));
        if let Kind::Queue { target, .. } = &self.spec.kind {
            let for_other = message
                .headers
                .as_ref()
                .and_then(|h| crate::headers::find(h, crate::headers::TARGET_QUEUE))
                .is_some_and(|q| q.as_str() != target);
            if for_other {
                // Put onto another queue of the event alone (a replay): not ours.
                self.inner.send_ack(reply, b"").await;
                return Step::Go;
            }
        }
        let event = match &self.spec.kind {
            Kind::Queue { event, .. } => Some(event.as_str()),
            Kind::Letters => None,
        };
        let envelope = crate::headers::to_envelope(
            message.headers.as_ref(),
            message.payload,
            event,
            info.map(|i| i.stored),
        );
        let tag = self.settle.next_tag.fetch_add(1, Ordering::Relaxed);
        self.settle.pending.lock().insert(
            tag,
            Pending {
                reply,
                stream_sequence,
            },
        );
        let acker: Arc<dyn Acker> = Arc::clone(&self.settle) as Arc<dyn Acker>;
        let delivery = Delivery::new(envelope, tag, acker).redelivered(delivered > 1);
        if self.tx.send(delivery).is_err() {
            // Nobody reads any more: give it back.
            let pending = self.settle.pending.lock().remove(&tag);
            if let Some(pending) = pending {
                self.inner.send_ack(pending.reply, b"-NAK").await;
            }
        }
        Step::Go
    }
}

/// What a JetStream ack subject tells about its message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct AckInfo {
    /// How many times it was delivered, this time included.
    pub(crate) delivered: u64,
    /// Its sequence in the stream.
    pub(crate) sequence: u64,
    /// When the stream stored it.
    pub(crate) stored: SystemTime,
}

/// The [`AckInfo`] of a JetStream ack subject, in the 2.9 form
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` or the
/// newer one with domain and account hash in front (`<ts>` in nanoseconds since
/// the Unix epoch).
pub(crate) fn ack_info(reply: &str) -> Option<AckInfo> {
    let rest = reply.strip_prefix("$JS.ACK.")?.as_bytes();
    // Stream and consumer names hold no dots: the 2.9 form has 6 after the
    // prefix, the newer one 9 or more. (A fold, which compiles to vector code.)
    let dots = rest.iter().fold(0usize, |n, &b| n + usize::from(b == b'.'));
    let skip = match dots {
        0..6 => return None,
        6 => 1,
        _ => 2,
    };
    // From the end: `<pending>` (and the newer form's token) come after the numbers.
    let mut tokens = rest.rsplit(|&b| b == b'.').skip(skip);
    let nanos = number(tokens.next()?)?;
    let _consumer_sequence = tokens.next()?;
    let sequence = number(tokens.next()?)?;
    let delivered = number(tokens.next()?)?;
    Some(AckInfo {
        delivered,
        sequence,
        stored: SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos),
    })
}

/// As [`ack_info`], for the messages of one consumer, whose ack subjects in the
/// 2.9 form start with `prefix` (`$JS.ACK.<stream>.<consumer>.`): the five numbers
/// after it are read forwards, without scanning the names; a reply in another
/// form goes to [`ack_info`].
pub(crate) fn ack_info_after(prefix: &str, reply: &str) -> Option<AckInfo> {
    let fast = reply.strip_prefix(prefix).and_then(|rest| {
        let mut tokens = rest.as_bytes().split(|&b| b == b'.');
        let delivered = number(tokens.next()?)?;
        let sequence = number(tokens.next()?)?;
        let _consumer_sequence = number(tokens.next()?)?;
        let nanos = number(tokens.next()?)?;
        let _pending = number(tokens.next()?)?;
        tokens.next().is_none().then(|| AckInfo {
            delivered,
            sequence,
            stored: SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos),
        })
    });
    fast.or_else(|| ack_info(reply))
}

/// A decimal number of ASCII digits (ack subjects carry one per message).
fn number(digits: &[u8]) -> Option<u64> {
    let digit = |d: u8| d.checked_sub(b'0').filter(|&d| d < 10).map(u64::from);
    match digits.len() {
        0 => None,
        // Up to 19 digits cannot overflow: no checked arithmetic per digit.
        1..=19 => digits
            .iter()
            .try_fold(0u64, |n, &d| Some(n * 10 + digit(d)?)),
        _ => digits
            .iter()
            .try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(digit(d)?)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::{AckInfo, ack_info, ack_info_after, number};

    #[test]
    fn ack_subjects_of_one_consumer() {
        let prefix = "$JS.ACK.s.c.";
        for reply in [
            "$JS.ACK.s.c.3.17.9.1700000000123456789.4",
            "$JS.ACK.dom.hash.s.c.2.40.9.1700000000.4.tok",
            // The prefix as domain and account hash: the newer form still.
            "$JS.ACK.s.c.s.c.2.40.9.1700000000.4.tok",
            "$JS.ACK.s.c.3.17.9.soon.4",
            "$JS.ACK.s.c.3.17.9.4",
            "$JS.ACK.s.c.3.17.9.1.4.5",
            "$JS.ACK.other.c.3.17.9.1.4",
            "_INBOX.x",
        ] {
            assert_eq!(ack_info_after(prefix, reply), ack_info(reply), "{reply}");
        }
        assert!(ack_info_after(prefix, "$JS.ACK.s.c.3.17.9.1.4").is_some());
    }

    #[test]
    fn numbers() {
        assert_eq!(number(b"0"), Some(0));
        assert_eq!(
            number(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(number(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(number(b"18446744073709551616"), None, "overflows");
        assert_eq!(number(b"00000000000000000000042"), Some(42));
        for bad in [&b""[..], b"+1", b"-1", b"1a", b" 1", b"1/"] {
            assert_eq!(number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ack_subjects() {
        let at = |nanos| SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos);
        assert_eq!(
            ack_info("$JS.ACK.s.c.3.17.9.1700000000123456789.4"),
            Some(AckInfo {
                delivered: 3,
                sequence: 17,
                stored: at(1_700_000_000_123_456_789)
            })
        );
        assert_eq!(
            ack_info("$JS.ACK.dom.hash.s.c.2.40.9.1700000000.4.tok"),
            Some(AckInfo {
                delivered: 2,
                sequence: 40,
                stored: at(1_700_000_000)
            })
        );
        assert_eq!(ack_info("$JS.ACK.s.c.3.17.9.soon.4"), None);
        assert_eq!(ack_info("$JS.ACK.s.c.3.17.9.4"), None, "a number short");
        assert_eq!(ack_info("$JS.ACK.s.c.3.+17.9.1.4"), None);
        assert_eq!(ack_info("_INBOX.x"), None);
    }
}
